"""Move a word-piece alignment from one tokenization of a text to another.

The CTC teacher is trained on a small SentencePiece vocabulary (cheap to train, its pieces short enough
for 20 ms frames); a decoder initialised from Whisper reads Whisper's BPE tokens. Both spell the same
normalised text, so each byte of the text inherits the chunk of the teacher piece that spells it, and
a BPE token goes in the chunk of its last byte: it can be written once all of it has been heard.
Teacher chunks never decrease along the text, so neither do the new ones.
"""

from __future__ import annotations

from collections.abc import Sequence


def transfer_chunks(src_bytes: Sequence[int], src_chunks: Sequence[int], dst_bytes: Sequence[int]) -> list[int]:
    """Chunks for the ``dst`` tokens, given each token's length in bytes of the same text.

    ``src_bytes[i]`` bytes of the text belong to source token i, aligned to chunk ``src_chunks[i]``.
    Raises ValueError when the two tokenizations do not cover the same number of bytes.
    """
    if len(src_bytes) != len(src_chunks):
        raise ValueError(f"{len(src_bytes)} source tokens but {len(src_chunks)} chunks")
    if sum(src_bytes) != sum(dst_bytes):
        raise ValueError(f"tokenizations differ in length: {sum(src_bytes)} vs {sum(dst_bytes)} bytes")
    byte_chunk: list[int] = []
    for n, c in zip(src_bytes, src_chunks):
        byte_chunk.extend([c] * n)
    out, end = [], 0
    for n in dst_bytes:
        end += n
        # a zero-length token (none in practice) takes the chunk of the byte before it
        out.append(byte_chunk[max(end - 1, 0)] if byte_chunk else 0)
    return out


def sentencepiece_bytes(pieces: Sequence[str]) -> list[int]:
    """UTF-8 length of each SentencePiece piece, its word-boundary mark counting as one space."""
    return [len(p.replace("\u2581", " ").encode("utf-8")) for p in pieces]


def byte_level_bytes(pieces: Sequence[str]) -> list[int]:
    """Length in bytes of each byte-level BPE piece (one character per byte by construction)."""
    return [len(p) for p in pieces]
