"""Interleaved speech slots and word pieces, by hand-made cases."""

from __future__ import annotations

import pytest
import torch

from reallm_cli.model.interleave import (
    IGNORE,
    AlignmentError,
    assemble_decoder_inputs,
    build_interleaved,
    collate_interleaved,
    even_alignment,
)

B = 0  # BLANK id for these tests
S = -1  # marks a speech slot in the expected layouts below


def layout(it) -> tuple[list[int], list[int]]:
    inputs = [S if s else int(t) for s, t in zip(it.is_speech, it.input_tokens)]
    return inputs, it.targets.tolist()


def test_empty_chunk_and_chunk_with_several_pieces():
    it = build_interleaved(4, [10, 11, 12], [1, 1, 3], blank=B)
    assert layout(it) == ([S, S, 10, 11, S, S, 12], [B, 10, 11, B, B, 12, B])
    assert it.speech_index.tolist() == [0, 1, -1, -1, 2, 3, -1]


def test_word_split_across_pieces_and_chunks():
    # "▁hel" "lo" in chunk 0, "▁wor" in 1, "ld" in 2: pieces of a word may straddle chunks.
    it = build_interleaved(3, [5, 6, 7, 8], [0, 0, 1, 2], blank=B)
    assert layout(it) == ([S, 5, 6, S, 7, S, 8], [5, 6, B, 7, B, 8, B])


def test_all_tokens_in_last_chunk_and_no_tokens():
    it = build_interleaved(3, [4, 5], [2, 2], blank=B)
    assert layout(it) == ([S, S, S, 4, 5], [B, B, 4, 5, B])
    empty = build_interleaved(2, [], [], blank=B)
    assert layout(empty) == ([S, S], [B, B])


def test_several_slots_per_chunk_only_the_last_decides():
    it = build_interleaved(2, [10], [1], blank=B, slots=2)
    assert layout(it) == ([S, S, S, S, 10], [IGNORE, B, IGNORE, 10, B])
    assert it.speech_index.tolist() == [0, 1, 2, 3, -1]
    three = build_interleaved(3, [4, 5], [0, 2], blank=B, slots=3)
    assert three.speech_index[three.is_speech].tolist() == list(range(9))
    assert three.targets.tolist().count(B) == 3  # still one BLANK per chunk
    with pytest.raises(ValueError):
        build_interleaved(2, [10], [1], blank=B, slots=0)


def test_blank_is_a_target_never_an_input():
    it = build_interleaved(5, [3, 4, 9], [0, 2, 4], blank=7)
    assert not bool(((~it.is_speech) & (it.input_tokens == 7)).any())
    assert int((it.targets == 7).sum()) == 5  # one BLANK closes every chunk


@pytest.mark.parametrize(
    "n_chunks, tokens, chunks",
    [(3, [1, 2], [1, 0]), (3, [1, 2], [0, 3]), (3, [1], [-1]), (3, [1, 2], [0]), (0, [1], [0])],
    ids=["decreasing", "past-end", "negative", "length-mismatch", "no-chunks"],
)
def test_invalid_alignments_raise(n_chunks, tokens, chunks):
    with pytest.raises(ValueError):
        build_interleaved(n_chunks, tokens, chunks, blank=B)


def test_blank_in_transcript_raises():
    with pytest.raises(AlignmentError, match="BLANK"):
        build_interleaved(2, [1, B], [0, 1], blank=B)


def test_collate_pads_with_ignored_targets():
    a = build_interleaved(2, [5], [1], blank=B)  # L = 3
    b = build_interleaved(3, [5, 6, 7], [0, 0, 2], blank=B)  # L = 6
    batch = collate_interleaved([a, b], pad_target=-100)
    assert batch.lengths.tolist() == [3, 6]
    assert batch.n_slots.tolist() == [2, 3]
    assert batch.targets[0].tolist() == [B, 5, B, -100, -100, -100]
    assert batch.is_speech[0, 3:].tolist() == [False] * 3
    assert batch.speech_index[0, 3:].tolist() == [-1] * 3
    assert torch.equal(batch.targets[1], b.targets)


def test_assemble_matches_a_loop():
    torch.manual_seed(0)
    items = [build_interleaved(3, [5, 6], [0, 2], B), build_interleaved(4, [7], [1], B)]
    batch = collate_interleaved(items)
    speech = torch.randn(2, 4, 8)  # (B, N, D)
    tok = torch.randn(2, batch.targets.shape[1], 8)
    x = assemble_decoder_inputs(speech, tok, batch.is_speech, batch.speech_index)
    for b in range(2):
        for pos in range(tok.shape[1]):
            want = speech[b, batch.speech_index[b, pos]] if batch.is_speech[b, pos] else tok[b, pos]
            assert torch.equal(x[b, pos], want)
    with pytest.raises(ValueError, match="embeddings"):
        assemble_decoder_inputs(speech[:, :2], tok, batch.is_speech, batch.speech_index)


def test_even_alignment():
    assert even_alignment(5, 3) == [0, 1, 1, 2, 2]
    assert even_alignment(2, 6) == [2, 5]
    assert even_alignment(0, 4) == []
    # speech from chunk 2 for 4 chunks, emitted 3 chunks late, but never past the last chunk
    assert even_alignment(3, 4, first_chunk=2, n_chunks=8, delay_chunks=3) == [6, 7, 7]
    for n_tok, n_sp in [(1, 1), (7, 3), (3, 11), (40, 40)]:
        al = even_alignment(n_tok, n_sp)
        assert al == sorted(al) and al[-1] == n_sp - 1 and al[0] >= 0
        build_interleaved(n_sp, list(range(1, n_tok + 1)), al, blank=B)  # accepted as valid
    with pytest.raises(ValueError):
        even_alignment(3, 0)
