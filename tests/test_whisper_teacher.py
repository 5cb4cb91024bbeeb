"""Offline Whisper as a soft-label teacher (recipes/default/whisper_teacher.py) and the distillation loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from reallm_cli.train.reallm_loss import reallm_loss
from whisper_teacher import GAP_S, SoftLabels, WhisperDecoder, pack


def test_pack_keeps_order_and_fits_each_window():
    durations = [10.0, 10.0, 10.0, 40.0, 5.0, 5.0, 2.0]
    pieces = [20, 20, 20, 20, 300, 200, 10]
    groups = pack(durations, pieces, max_s=29.0, max_pieces=440)
    assert groups == [[0, 1], [2, 4], [5, 6]]  # 3 is longer than a window: left out
    for g in groups:
        assert sum(durations[i] + GAP_S for i in g) <= 29.0
        assert sum(pieces[i] for i in g) <= 440


def test_decoder_head_over_a_subset_equals_those_columns_of_the_full_head():
    torch.manual_seed(0)
    dec = WhisperDecoder(vocab=50, n_pos=16, d=32, heads=4, ffn=64, layers=2).eval()
    tokens, audio = torch.randint(0, 50, (1, 7)), torch.randn(1, 30, 32)
    ids = torch.tensor([3, 17, 42])
    with torch.no_grad():
        full, part = dec(tokens, audio), dec(tokens, audio, head_ids=ids)
    torch.testing.assert_close(part, full[..., ids])
    # causal: a later token does not change earlier outputs
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 50
    with torch.no_grad():
        torch.testing.assert_close(dec(changed, audio)[:, :-1], full[:, :-1])


def _batch(vocab=20):
    model = tiny_model(vocab, seed=1)
    torch.manual_seed(2)
    frames = torch.randn(2, 100, 64)  # encoder output frames (the tiny Conformer: d 64)
    lengths = torch.tensor([100, 80])
    tokens = [[3, 4, 5], [7, 8]]
    chunks = [[0, 1, 1], [0, 2]]
    return model, frames, lengths, tokens, chunks


def test_soft_labels_that_are_the_transcript_give_the_plain_loss():
    model, frames, lengths, tokens, chunks = _batch()
    torch.manual_seed(0)
    plain, _ = reallm_loss(model, frames, lengths, tokens, chunks, blank=0)
    one_hot = [SoftLabels(np.array([[t, 1] for t in ts], np.int32), np.array([[1, 0]] * len(ts), np.float16))
               for ts in tokens]
    torch.manual_seed(0)
    same, _ = reallm_loss(model, frames, lengths, tokens, chunks, blank=0, soft=one_hot, soft_weight=0.7)
    torch.testing.assert_close(same, plain)


def test_soft_weight_mixes_the_teachers_distribution_into_each_piece_target():
    model, frames, lengths, tokens, chunks = _batch()
    model.eval()  # no dropout: the three losses below see the same logits
    teacher = [SoftLabels(np.array([[9, 10]] * len(ts), np.int32), np.array([[0.75, 0.25]] * len(ts), np.float16))
               for ts in tokens]
    teacher[1] = None  # an utterance without soft labels keeps its plain targets
    w = 0.5
    mixed, _ = reallm_loss(model, frames, lengths, tokens, chunks, blank=0, soft=teacher, soft_weight=w)
    plain, _ = reallm_loss(model, frames, lengths, tokens, chunks, blank=0)

    # the same by hand, from the decoder's logits at the trained positions
    from reallm_cli.model.interleave import IGNORE, build_interleaved, collate_interleaved

    speech = model.speech_embeddings(frames)
    n_chunks = model.chunk_lengths(lengths).tolist()
    batch = collate_interleaved([build_interleaved(n, t, c, 0, 1) for n, t, c in zip(n_chunks, tokens, chunks)],
                                pad_target=IGNORE)
    from reallm_cli.model.interleave import assemble_decoder_inputs

    x = assemble_decoder_inputs(speech, model.decoder.embed(batch.input_tokens), batch.is_speech, batch.speech_index)
    trained = batch.targets != IGNORE
    with torch.no_grad():
        logits = model.decoder(x, outputs=trained)
    targets = batch.targets[trained]
    ce = F.cross_entropy(logits, targets, reduction="none")
    first_row_pieces = [i for i in range(int(trained[0].sum())) if targets[i] != 0]
    logq = torch.log_softmax(logits, -1)
    soft_ce = -(0.75 * logq[first_row_pieces, 9] + 0.25 * logq[first_row_pieces, 10])
    expect = ce.clone()
    expect[first_row_pieces] = (1 - w) * ce[first_row_pieces] + w * soft_ce
    torch.testing.assert_close(mixed, expect.mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain, ce.mean(), rtol=1e-4, atol=1e-5)


def test_soft_labels_must_match_the_transcript_length():
    model, frames, lengths, tokens, chunks = _batch()
    wrong = [SoftLabels(np.zeros((2, 1), np.int32), np.ones((2, 1), np.float16)), None]  # 3 pieces in utterance 0
    with pytest.raises(ValueError, match="soft labels for 2 pieces"):
        reallm_loss(model, frames, lengths, tokens, chunks, blank=0, soft=wrong, soft_weight=0.5)


@pytest.mark.slow
def test_offline_tiny_en_teacher_agrees_with_a_real_transcript(shared_data, tmp_path):
    """Whisper tiny.en from its registry package, read by our code, teacher-forced on jfk and a librivox
    clip in one window: its most likely piece is the transcript's at nearly every position."""
    import json
    import re

    from reallm_cli.audio.source import load_audio
    from reallm_cli.model.whisper_file import load_whisper_encoder
    from reallm_cli.model.whisper_import import convert_installed_whisper, find_installed_whisper
    from reallm_cli.text import normalize_text
    from reallm_cli.tokenizer import whisper_bpe_subset
    from whisper_teacher import WhisperTeacher, load_whisper_decoder

    try:
        paths = find_installed_whisper("tiny.en")
    except Exception as exc:  # the registry package is a test dependency
        pytest.skip(f"Whisper tiny.en not installed: {exc}")
    rows = [json.loads(line) for line in (shared_data / "dev-real" / "manifest.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["id"] == "jfk" or "librivox" in r["audio"]][:2]
    texts = [normalize_text(r["text"]) for r in rows]
    tok = whisper_bpe_subset((paths[0].parent / "tokenizer.json").read_text(), texts)
    convert_installed_whisper("tiny.en", tmp_path / "enc.safetensors")
    allowed = [t for t in range(1, tok.vocab_size) if re.fullmatch(r"[ a-z0-9']+", tok.decode([t]))]
    teacher = WhisperTeacher(load_whisper_encoder(tmp_path / "enc.safetensors"), load_whisper_decoder(paths),
                             tok.keep_ids, allowed, k=4)
    utts = [(load_audio(shared_data / "dev-real" / r["audio"]), tok.encode(t)) for r, t in zip(rows, texts)]
    labels = teacher.soft_labels(utts)
    n = agree = 0
    for (_, pieces), sl in zip(utts, labels):
        assert sl.ids.shape == sl.probs.shape == (len(pieces), 4)
        assert np.allclose(sl.probs.astype(np.float32).sum(1), 1.0, atol=1e-2)
        assert set(sl.ids.ravel().tolist()) <= set(allowed)
        n += len(pieces)
        agree += int((sl.ids[:, 0] == np.array(pieces)).sum())
    assert agree >= 0.85 * n, f"teacher's top piece is the transcript's at {agree} of {n} positions"
