"""Audio files as 16 kHz mono float32 blocks: formats, rates, channels, errors, bounded memory."""

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from reallm_cli.audio.source import AudioError, StreamResampler, load_audio, open_audio, to_mono
from reallm_cli.timebase import SAMPLE_RATE

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FSDD = SHARED / "data" / "dev-real" / "fsdd"


def _tone(sr: int, seconds: float, hz: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()])


# (extension, format, subtype, sample rate, channels); MP3 and OGG are lossy, so they get looser checks
FORMATS = [
    ("wav", "WAV", "PCM_16", 8_000, 2),
    ("wav", "WAV", "FLOAT", 16_000, 1),
    ("wav", "WAV", "PCM_24", 48_000, 3),
    ("flac", "FLAC", "PCM_16", 44_100, 2),
    ("ogg", "OGG", "VORBIS", 44_100, 2),
    ("mp3", "MP3", "MPEG_LAYER_III", 44_100, 2),
    ("mp3", "MP3", "MPEG_LAYER_III", 8_000, 1),
]


@pytest.mark.parametrize("ext,fmt,subtype,sr,channels", FORMATS)
def test_formats_rates_channels(tmp_path, ext, fmt, subtype, sr, channels):
    seconds, hz = 1.5, 1000.0
    tone = _tone(sr, seconds, hz)
    # channels get different gains, so the averaged mono tone has amplitude 0.5 * mean(gains)
    gains = np.linspace(1.0, 0.25, channels, dtype=np.float32)
    path = tmp_path / f"tone.{ext}"
    sf.write(path, tone[:, None] * gains[None, :], sr, format=fmt, subtype=subtype)

    src = open_audio(path)
    assert src.sample_rate_in == sr and src.channels_in == channels and src.format == fmt
    lossy = fmt in ("OGG", "MP3")
    assert src.duration_s == pytest.approx(seconds, abs=0.1 if lossy else 1e-9)

    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == pytest.approx(src.duration_s * SAMPLE_RATE, abs=2 if not lossy else 0.1 * SAMPLE_RATE)
    # the 1 kHz tone stays at 1 kHz whatever the input rate (a wrong rate would shift it)
    assert _peak_hz(x) == pytest.approx(hz, abs=5)
    mid = x[len(x) // 4: 3 * len(x) // 4]
    expected_amp = 0.5 * float(gains.mean())
    assert np.abs(mid).max() == pytest.approx(expected_amp, rel=0.05 if not lossy else 0.2)


def test_8khz_tone_keeps_its_frequency(tmp_path):
    """An 8 kHz file (like the spoken digits) upsampled to 16 kHz: 440 Hz stays 440 Hz."""
    path = tmp_path / "low.wav"
    sf.write(path, _tone(8_000, 2.0, 440.0), 8_000)
    x = load_audio(path)
    assert len(x) == 2 * SAMPLE_RATE
    assert _peak_hz(x) == pytest.approx(440.0, abs=1)
    # nothing above the input's Nyquist is invented by the resampler
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    assert spec[freqs > 4_100].sum() < 1e-6 * spec.sum()


def test_fsdd_digits_open_and_resample():
    if not FSDD.exists():
        pytest.skip(f"shared data not found: {FSDD}")
    files = sorted(FSDD.glob("*.wav"))[::30]
    assert files
    for f in files:
        src = open_audio(f)
        assert src.sample_rate_in == 8_000
        x = load_audio(f)
        assert abs(len(x) - src.duration_s * SAMPLE_RATE) <= 2
        assert 0.001 < np.abs(x).max() <= 1.0


def test_blocks_equal_one_shot_resampling(tmp_path):
    rng = np.random.default_rng(0)
    stereo = (0.3 * rng.standard_normal((44_100 * 3 + 123, 2))).astype(np.float32)
    path = tmp_path / "noise.wav"
    sf.write(path, stereo, 44_100, subtype="FLOAT")
    one_shot = soxr.resample(stereo.mean(axis=1), 44_100, SAMPLE_RATE)
    for block in (1, 999, 16_000, 10**6):
        blocks = list(open_audio(path).iter_blocks(block_samples=block)) if block != 1 else None
        if blocks is None:  # 1-sample blocks: check only the first 5000 for speed
            it = open_audio(path).iter_blocks(block_samples=1)
            blocks = [next(it) for _ in range(5000)]
            np.testing.assert_allclose(np.concatenate(blocks), one_shot[:5000], atol=1e-5)
            continue
        assert all(len(b) == block for b in blocks[:-1]) and 0 < len(blocks[-1]) <= block
        streamed = np.concatenate(blocks)
        assert len(streamed) == len(one_shot)
        np.testing.assert_allclose(streamed, one_shot, atol=1e-5)


def test_16khz_mono_is_passed_through_exactly(tmp_path):
    x = _tone(SAMPLE_RATE, 1.0, 300.0)
    path = tmp_path / "a.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    assert np.array_equal(load_audio(path), x)
    assert [len(b) for b in open_audio(path).iter_blocks(6000)] == [6000, 6000, 4000]


def test_long_file_streams_in_bounded_memory(tmp_path):
    """Two minutes of 44.1 kHz stereo (42 MB as float32) stream with a peak of a few blocks."""
    path = tmp_path / "long.wav"
    sr, seconds = 44_100, 120
    chunk = np.tile(_tone(sr, 1.0, 500.0)[:, None], (1, 2))
    with sf.SoundFile(path, "w", sr, 2, subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write(chunk)
    src = open_audio(path)
    assert src.duration_s == pytest.approx(seconds)
    block = 16_000
    tracemalloc.start()
    n_total, n_blocks = 0, 0
    try:
        for b in src.iter_blocks(block_samples=block):
            n_blocks += 1
            assert b.dtype == np.float32 and b.ndim == 1
            assert len(b) == block or n_total + len(b) == seconds * SAMPLE_RATE
            n_total += len(b)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n_total == seconds * SAMPLE_RATE and n_blocks == seconds
    whole_file_bytes = seconds * sr * 2 * 4
    assert peak < 2_000_000, f"peak {peak} bytes while streaming a {whole_file_bytes}-byte file"


def test_stdin(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, _tone(22_050, 1.0, 700.0), 22_050, format="WAV")
    src = open_audio("-", stdin=io.BytesIO(buf.getvalue()))
    assert src.name == "<stdin>" and src.sample_rate_in == 22_050
    x = np.concatenate(list(src.iter_blocks()))
    assert len(x) == SAMPLE_RATE and _peak_hz(x) == pytest.approx(700.0, abs=2)
    # a stdin source can be read more than once (the bytes are kept)
    assert np.array_equal(np.concatenate(list(src.iter_blocks())), x)
    with pytest.raises(AudioError, match="standard input"):
        open_audio("-", stdin=io.BytesIO(b""))
    with pytest.raises(AudioError, match="<stdin> is not a readable audio file"):
        open_audio("-", stdin=io.BytesIO(b"hello, this is not a wav file" * 10))


def _error(path) -> str:
    with pytest.raises(AudioError) as e:
        open_audio(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_errors(tmp_path):
    assert "not found" in _error(tmp_path / "missing.wav")
    assert "directory" in _error(tmp_path)
    (tmp_path / "zero.wav").write_bytes(b"")
    assert "empty" in _error(tmp_path / "zero.wav")
    (tmp_path / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    assert "not a readable audio file" in _error(tmp_path / "garbage.wav")
    (tmp_path / "text.mp3").write_text("just some text\n" * 100)
    assert "not a readable audio file" in _error(tmp_path / "text.mp3")
    sf.write(tmp_path / "nosamples.wav", np.zeros((0, 1), np.float32), 16_000)
    assert "no audio (0 samples)" in _error(tmp_path / "nosamples.wav")
    assert issubclass(AudioError, Exception) and not issubclass(AudioError, (OSError, RuntimeError))


def test_truncated_file_gives_what_is_there(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, _tone(SAMPLE_RATE, 1.0, 300.0), SAMPLE_RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    x = load_audio(path)
    assert 0.4 * SAMPLE_RATE < len(x) <= 0.5 * SAMPLE_RATE + 1


def test_stream_resampler_and_to_mono():
    x = _tone(48_000, 1.0, 440.0)
    r = StreamResampler(48_000)
    y = np.concatenate([r.push(x[i:i + 480]) for i in range(0, len(x), 480)] + [r.flush()])
    np.testing.assert_allclose(y, soxr.resample(x, 48_000, SAMPLE_RATE), atol=1e-6)
    same = StreamResampler(SAMPLE_RATE)
    assert np.array_equal(same.push(x[:100]), x[:100]) and len(same.flush()) == 0
    assert np.array_equal(to_mono(np.array([[1.0, 3.0], [2.0, -2.0]])), np.array([2.0, 0.0], np.float32))
    with pytest.raises(AudioError):
        StreamResampler(0)
