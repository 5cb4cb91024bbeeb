import itertools

import numpy as np
import pytest
import torch

from reallm_cli.align.ctc import (
    AlignmentError,
    AlignmentImpossibleError,
    ctc_forced_align,
    ctc_forced_align_batch,
    ctc_greedy_decode,
    min_frames_for,
    token_chunks_from_frames,
)


def _random_logp(rng, n_frames, vocab):
    x = rng.normal(scale=2.0, size=(n_frames, vocab))
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _collapse(labels, blank):
    out, prev = [], None
    for k in labels:
        if k != prev and k != blank:
            out.append(k)
        prev = k
    return out


def _brute_force(logp, tokens, blank):
    """Best (score, frame label sequence) over every label sequence that collapses to ``tokens``."""
    n_frames, vocab = logp.shape
    best = (-np.inf, None)
    for labels in itertools.product(range(vocab), repeat=n_frames):
        if _collapse(labels, blank) != list(tokens):
            continue
        score = sum(logp[t, k] for t, k in enumerate(labels))
        if score > best[0]:
            best = (score, labels)
    return best


def _labels_of(alignment, blank):
    return tuple(blank if u < 0 else alignment.tokens[u] for u in alignment.frame_labels)


def test_viterbi_matches_brute_force_on_small_random_cases():
    rng = np.random.default_rng(0)
    n_checked = n_impossible = 0
    for _ in range(300):
        n_frames = int(rng.integers(1, 7))
        vocab = int(rng.integers(2, 5))
        blank = int(rng.integers(0, vocab))
        non_blank = [k for k in range(vocab) if k != blank]
        n_tokens = int(rng.integers(0, 4))
        tokens = [int(rng.choice(non_blank)) for _ in range(n_tokens)]
        logp = _random_logp(rng, n_frames, vocab)
        score, labels = _brute_force(logp, tokens, blank)
        if labels is None:
            n_impossible += 1
            with pytest.raises(AlignmentImpossibleError):
                ctc_forced_align(logp, tokens, blank)
            continue
        al = ctc_forced_align(logp, tokens, blank)
        assert al.score == pytest.approx(score, abs=1e-9)
        assert _labels_of(al, blank) == labels
        # spans agree with the frame labels and the first frames strictly increase
        for u, (start, end) in enumerate(al.token_spans):
            assert all(al.frame_labels[t] == u for t in range(start, end))
        assert all(a < b for a, b in zip(al.token_frames, al.token_frames[1:]))
        n_checked += 1
    assert n_checked > 150 and n_impossible > 10  # both branches really exercised


def test_batched_alignment_equals_single():
    rng = np.random.default_rng(1)
    vocab, blank = 6, 0
    lengths = [9, 4, 12, 2, 7]
    tokens = [[1, 2, 2], [3, 3, 3], [5, 1, 4, 4, 2], [1, 2, 3], []]
    logp = np.stack([_random_logp(rng, 12, vocab) for _ in lengths])
    out = ctc_forced_align_batch(torch.from_numpy(logp).float(), lengths, tokens, blank)
    for b, (n, toks) in enumerate(zip(lengths, tokens)):
        if n < min_frames_for(toks):
            assert isinstance(out[b], AlignmentImpossibleError)
            continue
        single = ctc_forced_align(torch.from_numpy(logp[b, :n]).float(), toks, blank)
        assert out[b].frame_labels == single.frame_labels
        assert out[b].score == pytest.approx(single.score, abs=1e-6)
    assert isinstance(out[1], AlignmentImpossibleError)  # 3 repeats need 5 frames, only 4


def test_spikes_land_on_peaky_posteriors():
    vocab, blank, n_frames = 5, 0, 30
    logp = np.full((n_frames, vocab), np.log(0.01))
    logp[:, blank] = np.log(0.96)
    for frame, tok in [(4, 2), (11, 3), (12, 3), (25, 1)]:
        logp[frame] = np.log(0.01)
        logp[frame, tok] = np.log(0.96)
    al = ctc_forced_align(logp, [2, 3, 1], blank)
    assert al.token_frames == (4, 11, 25)
    assert al.token_spans[1] == (11, 13)
    assert ctc_greedy_decode(logp, blank) == [2, 3, 1]


def test_impossible_and_bad_inputs_are_refused():
    logp = np.log(np.full((3, 4), 0.25))
    with pytest.raises(AlignmentImpossibleError, match="need at least 4 frames"):
        ctc_forced_align(logp, [1, 1, 2], blank=0)  # 1 _ 1 2 needs 4 frames
    assert ctc_forced_align(logp, [1, 2, 3], blank=0).token_frames == (0, 1, 2)
    with pytest.raises(AlignmentError, match="blank"):
        ctc_forced_align(logp, [0, 1], blank=0)
    with pytest.raises(AlignmentError, match="vocabulary|lie in"):
        ctc_forced_align(logp, [7], blank=0)
    zero = logp.copy()
    zero[:, 2] = -np.inf  # token 2 can never be emitted
    with pytest.raises(AlignmentImpossibleError, match="probability zero"):
        ctc_forced_align(zero, [2], blank=0)
    assert issubclass(AlignmentImpossibleError, ValueError)


def test_greedy_decode_merges_repeats_but_keeps_blank_separated_ones():
    ids = [0, 1, 1, 0, 1, 2, 2, 0, 0, 3]
    logp = np.log(np.full((len(ids), 4), 0.01))
    logp[np.arange(len(ids)), ids] = 0.0
    assert ctc_greedy_decode(logp, blank=0) == [1, 1, 2, 3]


def test_token_chunks_from_frames():
    # 40 ms frames, 240 ms chunks: frames 0..5 are chunk 0, 6..11 chunk 1
    assert token_chunks_from_frames([0, 5, 6, 11, 12], 40, 240) == [0, 0, 1, 1, 2]
    # with 80 ms look-ahead, chunk 0's embedding has heard up to 320 ms, i.e. frames 0..7
    assert token_chunks_from_frames([7, 8], 40, 240, wait_ms=80) == [0, 1]
    # an extra delay pushes tokens later; clamping to the last chunk; monotone output
    assert token_chunks_from_frames([5], 40, 240, delay_ms=40) == [1]
    assert token_chunks_from_frames([30, 40], 40, 240, n_chunks=3) == [2, 2]
    assert token_chunks_from_frames([9, 3], 40, 240) == [1, 1]
    with pytest.raises(AlignmentError):
        token_chunks_from_frames([1], 0, 240)


# --- alignment files -------------------------------------------------------------------------


def test_alignment_file_round_trip_and_report(tmp_path):
    from reallm_cli.align.alignment_file import align_record, alignment_report, read_alignments, write_alignments

    vocab, blank = 5, 0
    logp = np.full((30, vocab), np.log(0.01))
    logp[:, blank] = np.log(0.96)
    for frame, tok in [(4, 2), (11, 3), (25, 1)]:
        logp[frame] = np.log(0.01)
        logp[frame, tok] = np.log(0.96)
    ok = align_record("a", logp, [2, 3, 1], blank, frame_ms=40, chunk_ms=240)
    bad = align_record("b", logp[:2], [2, 3, 1], blank, frame_ms=40, chunk_ms=240)
    assert ok.ok and ok.token_frames == (4, 11, 25) and ok.token_chunks == (0, 1, 4)
    assert not bad.ok and "frames" in bad.error

    path = tmp_path / "align.jsonl"
    assert write_alignments(path, [ok, bad]) == 2
    back = read_alignments(path)
    assert back == [ok, bad]

    rep = alignment_report(back, frame_ms=40, chunk_ms=240)
    assert rep.n_utterances == 2 and rep.n_failed == 1 and rep.failed_share == 0.5
    # heard at 200, 480, 1040 ms; embeddings ready at 240, 480, 1200 ms -> delays 40, 0, 160
    assert rep.n_tokens == 3
    assert rep.mean_delay_ms == pytest.approx(200 / 3)
    assert rep.median_delay_ms == 40 and rep.max_delay_ms == 160
    assert "50.0%" in rep.summary()


def test_alignment_file_errors_name_the_line(tmp_path):
    from reallm_cli.align.alignment_file import AlignmentFileError, read_alignments

    path = tmp_path / "a.jsonl"
    path.write_text('{"id": "x", "tokens": [1, 2], "token_chunks": [0, 1]}\n{"id": "y", "tokens": [1], "token_chunks": [0, 1]}\n')
    with pytest.raises(AlignmentFileError, match=r"a\.jsonl:2: 1 tokens but 2"):
        read_alignments(path)
    path.write_text('{"id": "x", "tokens": [1, 2], "token_chunks": [1, 0]}\n')
    with pytest.raises(AlignmentFileError, match=r":1: token_chunks must be"):
        read_alignments(path)
    path.write_text("{oops\n")
    with pytest.raises(AlignmentFileError, match=r":1: invalid JSON"):
        read_alignments(path)
