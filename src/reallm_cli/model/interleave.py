"""The interleaved sequence Speech ReaLLM is trained on: speech slots and word pieces, with BLANK targets.

For every chunk c the sequence holds the slot of speech embedding c, then the pieces emitted after it.
Every position's target is the next piece of the same chunk, else BLANK. Four chunks, pieces a b c
aligned to chunks 1, 1, 3:

    input   S0  S1  a  b   S2  S3  c
    target  B   a   b  B   B   c   B

BLANK is only ever a target, never an input: at inference it means "stop, feed the next embedding",
and the next embedding takes the place BLANK would have had.

A model may read a chunk as several speech slots (``slots`` > 1, each from a slice of the chunk's
frames). Only the chunk's last slot decides; the slots before it have no target (IGNORE). Two slots:

    input   S0a S0b  S1a S1b  a
    target  -   B    -   a    B
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from reallm_cli.errors import ReallmError


IGNORE = -100  # a target that is not trained on (padding, and speech slots that are not a chunk's last)


class AlignmentError(ReallmError, ValueError):
    """A token-to-chunk alignment that is not non-decreasing or points outside the speech."""


@dataclass(frozen=True)
class Interleaved:
    """One utterance laid out for the decoder; L = n_chunks * slots + n_tokens."""

    is_speech: torch.Tensor  # (L,) bool: True at speech-embedding slots
    speech_index: torch.Tensor  # (L,) long: embedding index (chunk * slots + slot) at speech slots, -1 at token slots
    input_tokens: torch.Tensor  # (L,) long: piece id at token slots, ``blank`` (never read) at speech slots
    targets: torch.Tensor  # (L,) long: next piece of the same chunk, else blank; IGNORE before a chunk's last slot

    @property
    def length(self) -> int:
        return int(self.targets.shape[0])


@dataclass(frozen=True)
class InterleavedBatch:
    """Right-padded batch of ``Interleaved``; padding is neither speech nor a target."""

    is_speech: torch.Tensor  # (B, L) bool, False on padding
    speech_index: torch.Tensor  # (B, L) long, -1 at token slots and padding
    input_tokens: torch.Tensor  # (B, L) long, 0 on padding
    targets: torch.Tensor  # (B, L) long, pad_target on padding
    lengths: torch.Tensor  # (B,) long: real positions per item
    n_slots: torch.Tensor  # (B,) long: speech slots per item


def check_alignment(n_chunks: int, n_tokens: int, token_chunks: Sequence[int]) -> None:
    """Raise AlignmentError unless token_chunks is non-decreasing, one per token, each in [0, n_chunks)."""
    if n_chunks < 0:
        raise AlignmentError(f"n_chunks must be >= 0, got {n_chunks}")
    if len(token_chunks) != n_tokens:
        raise AlignmentError(f"{n_tokens} tokens but {len(token_chunks)} chunk indices")
    prev = 0
    for i, c in enumerate(token_chunks):
        if not 0 <= c < n_chunks:
            raise AlignmentError(f"token {i} is aligned to chunk {c}, outside 0..{n_chunks - 1}")
        if c < prev:
            raise AlignmentError(f"token {i} is aligned to chunk {c}, before token {i - 1}'s chunk {prev}")
        prev = c


def build_interleaved(n_chunks: int, tokens: Sequence[int], token_chunks: Sequence[int], blank: int,
                      slots: int = 1) -> Interleaved:
    """Lay out chunks of ``slots`` speech slots each and tokens (token i emitted after chunk
    ``token_chunks[i]``) with their targets."""
    tokens = [int(t) for t in tokens]
    token_chunks = [int(c) for c in token_chunks]
    check_alignment(n_chunks, len(tokens), token_chunks)
    if blank in tokens:
        raise AlignmentError(f"BLANK ({blank}) cannot be a transcript token")
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    is_speech: list[bool] = []
    speech_index: list[int] = []
    input_tokens: list[int] = []
    targets: list[int] = []
    i = 0
    for c in range(n_chunks):
        chunk_tokens = []
        while i < len(tokens) and token_chunks[i] == c:
            chunk_tokens.append(tokens[i])
            i += 1
        # Inputs: the chunk's slots, then its tokens; from the last slot on, each position predicts the
        # next of these tokens, then BLANK.
        is_speech += [True] * slots + [False] * len(chunk_tokens)
        speech_index += list(range(c * slots, (c + 1) * slots)) + [-1] * len(chunk_tokens)
        input_tokens += [blank] * slots + chunk_tokens
        targets += [IGNORE] * (slots - 1) + chunk_tokens + [blank]
    return Interleaved(
        is_speech=torch.tensor(is_speech, dtype=torch.bool),
        speech_index=torch.tensor(speech_index, dtype=torch.long),
        input_tokens=torch.tensor(input_tokens, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
    )


def collate_interleaved(items: Sequence[Interleaved], pad_target: int = IGNORE) -> InterleavedBatch:
    """Right-pad a list of ``Interleaved`` to one batch."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    lengths = torch.tensor([it.length for it in items], dtype=torch.long)
    B, L = len(items), int(lengths.max())
    is_speech = torch.zeros(B, L, dtype=torch.bool)
    speech_index = torch.full((B, L), -1, dtype=torch.long)
    input_tokens = torch.zeros(B, L, dtype=torch.long)
    targets = torch.full((B, L), pad_target, dtype=torch.long)
    for b, it in enumerate(items):
        n = it.length
        is_speech[b, :n] = it.is_speech
        speech_index[b, :n] = it.speech_index
        input_tokens[b, :n] = it.input_tokens
        targets[b, :n] = it.targets
    return InterleavedBatch(
        is_speech=is_speech,
        speech_index=speech_index,
        input_tokens=input_tokens,
        targets=targets,
        lengths=lengths,
        n_slots=is_speech.sum(dim=1),
    )


def assemble_decoder_inputs(
    speech: torch.Tensor, token_embeddings: torch.Tensor, is_speech: torch.Tensor, speech_index: torch.Tensor
) -> torch.Tensor:
    """speech (B, N, D), token embeddings (B, L, D), is_speech (B, L), speech_index (B, L) -> (B, L, D).

    Speech slots take ``speech[b, speech_index[b, l]]``, every other slot its token embedding.
    """
    B, N, D = speech.shape
    if token_embeddings.shape[:2] != is_speech.shape or token_embeddings.shape[-1] != D:
        raise ValueError(f"token embeddings {tuple(token_embeddings.shape)} do not fit is_speech "
                         f"{tuple(is_speech.shape)} and speech dim {D}")
    if bool(is_speech.any()) and int(speech_index[is_speech].max()) >= N:
        raise ValueError(f"speech_index refers to chunk {int(speech_index[is_speech].max())} but only {N} embeddings given")
    index = speech_index.clamp(min=0).unsqueeze(-1).expand(-1, -1, D)  # (B, L, D)
    gathered = torch.gather(speech, 1, index)  # (B, L, D)
    return torch.where(is_speech.unsqueeze(-1), gathered, token_embeddings)


def even_alignment(n_tokens: int, n_speech_chunks: int, first_chunk: int = 0, n_chunks: int | None = None,
                   delay_chunks: int = 0) -> list[int]:
    """A rough alignment: tokens spread evenly over ``n_speech_chunks`` chunks starting at ``first_chunk``.

    Token i occupies the time span [i, i+1) * n_speech_chunks / n_tokens of the speech and is emitted after
    the chunk in which that span ends, plus ``delay_chunks``, capped at the last chunk (``n_chunks - 1``,
    default the end of the speech).
    """
    if n_chunks is None:
        n_chunks = first_chunk + n_speech_chunks
    if n_tokens and (n_speech_chunks < 1 or first_chunk < 0 or first_chunk + n_speech_chunks > n_chunks):
        raise AlignmentError(f"cannot spread {n_tokens} tokens over {n_speech_chunks} chunks from "
                             f"chunk {first_chunk} within {n_chunks}")
    out = []
    for i in range(n_tokens):
        end = -(-(i + 1) * n_speech_chunks // n_tokens) - 1  # ceil((i+1) * n / n_tokens) - 1
        out.append(min(first_chunk + end + delay_chunks, n_chunks - 1))
    return out
