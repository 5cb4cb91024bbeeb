"""Moving a teacher alignment from SentencePiece pieces to Whisper's BPE tokens."""

from __future__ import annotations

import pytest

from reallm_cli.align.retokenize import byte_level_bytes, sentencepiece_bytes, transfer_chunks


def test_each_token_takes_the_chunk_of_its_last_byte():
    # " hello world": source pieces " hel" | "lo" | " world" in chunks 1, 2, 4
    src = sentencepiece_bytes(["\u2581hel", "lo", "\u2581world"])
    assert src == [4, 2, 6]
    dst = byte_level_bytes(["\u0120hello", "\u0120wor", "ld"])
    assert dst == [6, 4, 2]
    assert transfer_chunks(src, [1, 2, 4], dst) == [2, 4, 4]


def test_finer_targets_split_a_piece_and_chunks_never_decrease():
    src = sentencepiece_bytes(["\u2581a", "bc", "\u2581de"])
    dst = byte_level_bytes(["\u0120", "a", "b", "c", "\u0120d", "e"])
    out = transfer_chunks(src, [0, 3, 3], dst)
    assert out == [0, 0, 3, 3, 3, 3]
    assert out == sorted(out)


def test_non_ascii_counts_bytes():
    assert sentencepiece_bytes(["\u2581caf\u00e9"]) == [6]


def test_mismatched_tokenizations_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        transfer_chunks([3, 2], [0, 1], [4])
    with pytest.raises(ValueError, match="chunks"):
        transfer_chunks([3, 2], [0], [5])
