"""Encoder adaptation by distillation: it trains only the top blocks, it learns, and the cached re-run of
the adapted blocks gives what the adapted encoder gives from audio."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reallm_cli.model.whisper_encoder import WhisperEncoderConfig, WhisperStreamingEncoder
from encoder_adapt import (distill_loss, encode_full_attention, encode_hidden, make_distill_batch,
                                            relative_error, rerun_top)
from reallm_cli.train.feature_cache import FeatureStore, build_cache, encode_audio

torch.set_num_threads(1)


def small() -> WhisperStreamingEncoder:
    torch.manual_seed(0)
    cfg = WhisperEncoderConfig(d_model=32, n_heads=4, n_layers=3, ffn_dim=64, lookahead_ms=240)
    return WhisperStreamingEncoder(cfg).eval()


@pytest.fixture
def caches(tmp_path):
    rng = np.random.default_rng(0)
    entries = []
    for i, seconds in enumerate([1.3, 2.0, 0.7, 2.9]):
        path = tmp_path / f"u{i}.npy"
        np.save(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32))
        entries.append({"id": f"u{i}", "audio": str(path), "text": "x", "duration": seconds})
    return tmp_path, entries


def test_distillation_trains_top_blocks_only_and_lowers_the_error(caches, monkeypatch):
    tmp, entries = caches
    import reallm_cli.train.feature_cache as fc

    monkeypatch.setattr(fc, "load_audio", lambda p: np.load(p))
    enc = small()
    build_cache(entries, enc, tmp / "hid", shard_size=2, encode=lambda a: encode_hidden(enc, a, 2), log=lambda m: None)
    build_cache(entries, enc, tmp / "tgt", shard_size=3, encode=lambda a: encode_full_attention(enc, a),
                log=lambda m: None)
    hid, tgt = FeatureStore([tmp / "hid"]), FeatureStore([tmp / "tgt"])
    pairs = [(i, i) for i in range(4)]
    batch = make_distill_batch(hid, tgt, pairs)
    assert batch.hidden.shape == batch.target.shape and batch.lengths.tolist() == [65, 100, 35, 145]

    before = {k: v.clone() for k, v in enc.state_dict().items()}
    err0 = relative_error(enc, np.load(entries[3]["audio"]))
    enc.requires_grad_(False)
    for m in (enc.blocks[2], enc.ln_post):
        m.requires_grad_(True)
    opt = torch.optim.Adam([p for p in enc.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(60):
        loss, stats = distill_loss(enc, 2, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert 0 < stats["rel_err"] and stats["audio_s"] == pytest.approx(6.9, abs=0.05)
    changed = {k for k, v in enc.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("blocks.2.", "ln_post.")) for k in changed)
    assert relative_error(enc.eval(), np.load(entries[3]["audio"])) < err0  # also through the whole encoder

    # the cached re-run equals the adapted encoder's own pass from audio
    rerun_top(enc, 2, tmp / "hid", tmp / "out", batch_frames=150)
    out = FeatureStore([tmp / "out"])
    assert [u.id for u in out.items] == [u.id for u in hid.items]
    for i, e in enumerate(entries):
        direct = encode_audio(enc, np.load(e["audio"])).numpy()
        assert np.abs(out.frames(i).astype(np.float32) - direct).max() < 2e-2  # fp16 storage
    assert json.loads((tmp / "out" / "shard_00000.jsonl").read_text().splitlines()[0])["id"] == "u0"


def test_mismatched_caches_are_refused(caches, monkeypatch):
    tmp, entries = caches
    import reallm_cli.train.feature_cache as fc

    monkeypatch.setattr(fc, "load_audio", lambda p: np.load(p))
    enc = small()
    build_cache(entries, enc, tmp / "hid", encode=lambda a: encode_hidden(enc, a, 1), log=lambda m: None)
    hid = FeatureStore([tmp / "hid"])
    with pytest.raises(ValueError, match="differ"):
        make_distill_batch(hid, hid, [(0, 1)])
