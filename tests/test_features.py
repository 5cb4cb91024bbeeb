"""Whisper log-mel front end: matches the original, and streaming equals offline."""

from pathlib import Path

import numpy as np
import pytest
import torch

from reallm_cli.audio.features import StreamingLogMel, mel_filterbank, whisper_log_mel
from reallm_cli.timebase import HOP_SAMPLES, N_FFT, N_MELS, SAMPLE_RATE

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
JFK = SHARED / "data" / "dev-real" / "jfk.flac"
GOLDEN_MEL = SHARED / "golden" / "jfk_whisper_logmel.npy"


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")


def _speechlike(n: int, seed: int = 0) -> np.ndarray:
    """Faint noise with a loud tone in the middle, so the running max rises by far more than the
    80 dB floor during the clip."""
    rng = np.random.default_rng(seed)
    x = 1e-5 * rng.standard_normal(n).astype(np.float32)
    t = np.arange(n) / SAMPLE_RATE
    mid = slice(n // 3, 2 * n // 3)
    x[mid] += 0.5 * np.sin(2 * np.pi * 440 * t[mid]).astype(np.float32)
    return x


def _whisper_reference(x: np.ndarray) -> torch.Tensor:
    """openai/whisper's formula with torch.stft, written independently of features.py."""
    audio = torch.from_numpy(x)
    stft = torch.stft(audio, N_FFT, HOP_SAMPLES, window=torch.hann_window(N_FFT), center=True,
                      pad_mode="reflect", return_complex=True)
    power = stft[..., :-1].abs() ** 2  # (n_bins, T)
    mel = torch.from_numpy(mel_filterbank().copy()) @ power  # (N_MELS, T)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).T


def test_mel_filterbank_shape_and_slaney_scale():
    fb = mel_filterbank()
    assert fb.shape == (N_MELS, N_FFT // 2 + 1) and fb.dtype == np.float32
    assert (fb >= 0).all() and (fb.sum(axis=1) > 0).all()
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()
    # Slaney scale is linear below 1 kHz: low filters are evenly spaced in Hz (bins of 40 Hz)
    assert np.all(np.diff(peaks[:10]) <= 2)
    # and logarithmic above: the top filters are much wider than the bottom ones
    assert (fb[-1] > 0).sum() > 5 * (fb[5] > 0).sum()


def test_mel_filterbank_matches_faster_whisper():
    fe = pytest.importorskip("faster_whisper.feature_extractor", reason="faster-whisper (test extra) not installed")
    ref = fe.FeatureExtractor().mel_filters  # an independent librosa-style implementation
    np.testing.assert_allclose(mel_filterbank(), ref, atol=1e-7, rtol=1e-5)


def test_clip_floor_equals_torch_stft_reference():
    x = _speechlike(SAMPLE_RATE * 2 + 77)
    ours = whisper_log_mel(x, floor="clip")
    ref = _whisper_reference(x)
    assert ours.shape == ref.shape == (len(x) // HOP_SAMPLES, N_MELS)
    assert (ours - ref).abs().max().item() < 1e-4


def test_golden_jfk_with_reference_decoder():
    """Same decoded samples as the golden was made from -> float32 agreement."""
    _need(JFK)
    _need(GOLDEN_MEL)
    fw_audio = pytest.importorskip("faster_whisper.audio", reason="faster-whisper (test extra) not installed")
    golden = np.load(GOLDEN_MEL)  # (80, 1100)
    audio = fw_audio.decode_audio(str(JFK))
    mel = whisper_log_mel(audio, floor="clip").numpy().T
    assert mel.shape == golden.shape
    assert np.abs(mel - golden).max() < 1e-4


def test_golden_jfk_with_our_loader():
    """Our soxr resampler differs slightly from the golden's decoder; only quiet bins may move."""
    _need(JFK)
    _need(GOLDEN_MEL)
    from reallm_cli.audio.source import load_audio

    golden = np.load(GOLDEN_MEL)
    mel = whisper_log_mel(load_audio(JFK), floor="clip").numpy().T
    diff = np.abs(mel - golden)
    assert mel.shape == golden.shape
    assert diff.mean() < 1e-3
    assert np.percentile(diff, 99.9) < 0.01


def test_accepts_tensor_and_array_alike():
    x = _speechlike(5000)
    a = whisper_log_mel(x)
    b = whisper_log_mel(torch.from_numpy(x))
    assert a.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("n", [0, 1, 2, 159, 160, 161, 200, 201, 320, 401])
def test_frame_count_is_samples_over_hop(n):
    x = _speechlike(n)
    for floor in ("clip", "running"):
        mel = whisper_log_mel(x, floor=floor)
        assert mel.shape == (n // HOP_SAMPLES, N_MELS)
        assert torch.isfinite(mel).all()


def test_running_floor_is_causal_and_never_above_clip():
    x = _speechlike(SAMPLE_RATE * 3)
    clip = whisper_log_mel(x, floor="clip")
    running = whisper_log_mel(x, floor="running")
    assert (running <= clip + 1e-7).all()
    # quiet start: floored much lower than the clip-wide rule would (the loud part is not known yet)
    assert (running[:50] < clip[:50] - 0.1).any()
    # once the loudest frame has passed, both rules are identical
    loudest = int(clip.amax(dim=1).argmax())
    assert (running[loudest:] - clip[loudest:]).abs().max() < 1e-6
    # causality: a prefix's running-floored frames do not change when more audio follows
    prefix = whisper_log_mel(x[:SAMPLE_RATE], floor="running")
    assert (prefix[:-2] - running[: len(prefix) - 2]).abs().max() < 1e-6


def test_bad_floor_and_shape_rejected():
    with pytest.raises(ValueError):
        whisper_log_mel(np.zeros(1000, np.float32), floor="global")
    with pytest.raises(ValueError):
        whisper_log_mel(np.zeros((2, 1000), np.float32))


def _stream(x: np.ndarray, sizes) -> tuple[torch.Tensor, StreamingLogMel, int]:
    s = StreamingLogMel()
    outs, i, max_buf = [], 0, 0
    for n in sizes:
        out = s.push(x[i:i + n])
        assert out.shape[1] == N_MELS
        outs.append(out)
        i += n
        max_buf = max(max_buf, s.buffered_samples - n)
        if i >= len(x):
            break
    outs.append(s.push(x[i:]))
    outs.append(s.flush())
    return torch.cat(outs), s, max_buf


@pytest.mark.parametrize("seed", range(4))
def test_streaming_equals_offline_running(seed):
    rng = np.random.default_rng(seed)
    x = _speechlike(int(SAMPLE_RATE * 1.5) + seed * 37, seed)
    sizes = rng.choice([0, 1, 2, 3, 159, 160, 161, 199, 200, 201, 500, 1600, 4000], size=10_000)
    streamed, s, max_buf = _stream(x, sizes)
    offline = whisper_log_mel(x, floor="running")
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max().item() <= 1e-6
    assert s.frames_emitted == len(x) // HOP_SAMPLES
    assert max_buf <= N_FFT  # besides the newest block, never more than one window is held


@pytest.mark.parametrize("n", [0, 1, 2, 100, 159, 160, 161, 199, 200, 201, 202, 359, 360, 361, 555])
def test_streaming_short_audio(n):
    x = _speechlike(n, seed=n)
    for sizes in ([1] * (n + 1), [7] * (n + 1), [n + 1]):
        streamed, s, _ = _stream(x, sizes)
        offline = whisper_log_mel(x, floor="running")
        assert streamed.shape == offline.shape == (n // HOP_SAMPLES, N_MELS)
        assert (streamed - offline).abs().max().item() <= 1e-6 if n >= HOP_SAMPLES else True


def test_frames_are_emitted_as_soon_as_their_window_is_complete():
    x = _speechlike(2000)
    s = StreamingLogMel()
    emitted_at = []  # number of samples pushed when each frame came out
    for k in range(len(x)):
        out = s.push(x[k:k + 1])
        emitted_at += [k + 1] * out.shape[0]
    # frame i spans samples up to i*HOP + N_FFT/2 - 1, and the left padding needs N_FFT/2 + 1 samples
    expected = [max(i * HOP_SAMPLES + N_FFT // 2, N_FFT // 2 + 1) for i in range(len(emitted_at))]
    assert emitted_at == expected
    assert len(emitted_at) == (len(x) - N_FFT // 2) // HOP_SAMPLES + 1
    tail = s.flush()
    assert s.frames_emitted == len(emitted_at) + tail.shape[0] == len(x) // HOP_SAMPLES


def test_push_after_flush_needs_reset():
    s = StreamingLogMel()
    s.push(np.zeros(1000, np.float32))
    s.flush()
    assert s.flush().shape == (0, N_MELS)
    with pytest.raises(RuntimeError):
        s.push(np.zeros(10, np.float32))
    s.reset()
    assert s.frames_emitted == 0 and s.push(np.zeros(1000, np.float32)).shape[0] == (1000 - 200) // 160 + 1


def test_long_stream_state_stays_bounded():
    """Five minutes in 0.24 s blocks: the buffer never grows and the running max carries over."""
    s = StreamingLogMel()
    block = _speechlike(3840, seed=3)
    n_frames = 0
    for _ in range(1250):
        n_frames += s.push(block).shape[0]
        assert s.buffered_samples <= N_FFT + len(block)
    n_frames += s.flush().shape[0]
    assert n_frames == s.frames_emitted == 1250 * 3840 // HOP_SAMPLES
