"""Audio training data: the engine's front end, reproducible augmentation, alignments that follow speed changes."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from reallm_cli.align.ctc import token_chunks_from_frames
from reallm_cli.audio.features import StreamingLogMel, whisper_log_mel
from reallm_cli.train.audio_data import NO_AUGMENT, AudioDataset, AugmentConfig, Utterance, collate, scaled_chunks
from reallm_cli.train.batching import DurationBatchSampler
from reallm_cli.train.manifest import ManifestEntry


@pytest.fixture
def utts(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for i, n in enumerate((16000, 24000, 20000)):
        path = tmp_path / f"{i}.wav"
        t = np.arange(n) / 16000
        wave = (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) * (1 + 0.5 * rng.standard_normal(n) * 0.1)).astype("float32")
        sf.write(path, wave, 16000)
        entry = ManifestEntry(audio=path, text="a b", duration_s=n / 16000, id=str(i))
        out.append(Utterance(entry, (5, 6, 7), token_frames=(6, 17, 29), token_chunks=(0, 1, 3)))
    return out


def test_features_are_the_streaming_engines(utts):
    ds = AudioDataset(utts, NO_AUGMENT, chunk_ms=240)
    item = ds[(0, 1)]
    wave, _ = sf.read(utts[1].entry.audio, dtype="float32")
    torch.testing.assert_close(item["mel"], whisper_log_mel(wave, floor="running"))
    fe = StreamingLogMel()  # what a live session computes from the same samples, in blocks
    streamed = torch.cat([fe.push(wave[i : i + 1234]) for i in range(0, len(wave), 1234)] + [fe.flush()])
    torch.testing.assert_close(item["mel"], streamed[: item["mel"].shape[0]], atol=1e-4, rtol=0)
    assert item["audio_s"] == pytest.approx(1.5, abs=0.011)
    # Without speed change the emission chunks are the alignment's own.
    assert item["token_chunks"] == token_chunks_from_frames([6, 17, 29], 40, 240, n_chunks=item["token_chunks"][-1] + 10)


def test_augmentation_is_a_function_of_seed_epoch_and_index(utts):
    aug = AugmentConfig(noise_prob=1.0)
    a = AudioDataset(utts, aug, seed=7, chunk_ms=240)
    b = AudioDataset(utts, aug, seed=7, chunk_ms=240)
    for key in [(0, 0), (3, 2), (1, 1)]:
        torch.testing.assert_close(a[key]["mel"], b[key]["mel"], atol=0, rtol=0)
    epochs = [a[(e, 1)]["mel"] for e in range(4)]
    assert any(x.shape != epochs[0].shape or not torch.equal(x, epochs[0]) for x in epochs[1:])
    clean = AudioDataset(utts, NO_AUGMENT, chunk_ms=240)[(0, 1)]["mel"]
    assert not all(x.shape == clean.shape and torch.equal(x, clean) for x in epochs)


def test_alignment_follows_speed_perturbation(utts):
    u = utts[1]
    # Faster audio: every token is heard earlier, never later; slower: later, never earlier.
    base = scaled_chunks(u, 1.0, 100, frame_ms=40, chunk_ms=240)
    fast = scaled_chunks(u, 1.1, 100, frame_ms=40, chunk_ms=240)
    slow = scaled_chunks(u, 0.9, 100, frame_ms=40, chunk_ms=240)
    assert all(f <= b <= s for f, b, s in zip(fast, base, slow)) and fast != slow
    # Frame 6 is heard at 280 ms (chunk 1, 240-480 ms); 1.1x faster at 240 ms: chunk 0.
    assert base[0] == 1 and fast[0] == 0
    # Frame 17 (720 ms, chunk 2) 0.9x slower is heard at 800 ms: chunk 3; frame 29 (1200 ms) at 1320 ms: chunk 5.
    assert base[1:] == [2, 4] and slow[1:] == [3, 5]
    # Clamped inside the stream, and non-decreasing.
    assert scaled_chunks(u, 0.9, 2, frame_ms=40, chunk_ms=240) == [1, 1, 1]
    # Records without spike frames scale their chunks instead.
    no_frames = Utterance(u.entry, u.tokens, token_frames=None, token_chunks=(0, 1, 3))
    assert scaled_chunks(no_frames, 1.0, 100, frame_ms=40, chunk_ms=240) == [0, 1, 3]
    assert scaled_chunks(no_frames, 0.9, 100, frame_ms=40, chunk_ms=240) == [1, 2, 4]


def test_items_fit_the_encoder_and_collate_pads(utts):
    ds = AudioDataset(utts, AugmentConfig(), seed=1, chunk_ms=240)
    items = [ds[(2, i)] for i in range(3)]
    for it in items:
        n_chunks = -(-(it["mel"].shape[0] // 4) // 6)
        assert max(it["token_chunks"]) < n_chunks  # reallm_loss would refuse an alignment past the end
    batch = collate(items + [None])  # an unreadable item is left out
    assert batch.mel.shape[0] == 3 and batch.mel.shape[1] == max(it["mel"].shape[0] for it in items)
    assert torch.equal(batch.mel[0, : items[0]["mel"].shape[0]], items[0]["mel"])
    assert batch.audio_s == pytest.approx(sum(it["audio_s"] for it in items))


def test_unreadable_audio_mid_run_is_skipped_with_a_message(utts, capsys):
    utts[2].entry.audio.write_bytes(b"garbage")  # broken after the manifest was checked
    ds = AudioDataset(utts, NO_AUGMENT, cache_audio=False)
    assert ds[(0, 2)] is None
    assert "cannot read" in capsys.readouterr().err
    sampler = DurationBatchSampler(ds.durations_s, 10.0, shuffle=False)
    from reallm_cli.train.audio_data import make_batch_iter

    batches = list(make_batch_iter(ds, sampler)(0, 0))
    assert sum(b.mel.shape[0] for b in batches) == 2 and sorted(i for b in batches for i in b.ids) == ["0", "1"]
    # A batch whose every file fails is empty rather than an error: the run goes on.
    assert collate([None]).ids == [] and collate([None]).mel.shape == (0, 0, 80)
