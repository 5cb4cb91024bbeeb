"""Audio files (and WAV on stdin) as streams of 16 kHz mono float32 blocks, in bounded memory.

Any format libsndfile reads (WAV, FLAC, OGG/Vorbis, MP3, ...), any sample rate and channel count.
Channels are averaged, then resampled with soxr's streaming resampler, so a three-hour file is never
held whole and block-wise output equals one-shot resampling.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from reallm_cli.audio.errors import AudioError
from reallm_cli.timebase import SAMPLE_RATE

__all__ = ["AudioError", "FileSource", "StreamResampler", "load_audio", "open_audio", "to_mono"]

STDIN_NAME = "-"
_PROBE_FRAMES = 4096  # decoded at open time so that corrupt data fails before any real work


def to_mono(x: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float32, channels averaged."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x
    if x.shape[1] == 1:
        return x[:, 0]
    return x.mean(axis=1, dtype=np.float32)


class StreamResampler:
    """Mono float32 stream at rate_in -> SAMPLE_RATE, block by block (also for microphones)."""

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE, quality: str = "HQ") -> None:
        if rate_in <= 0:
            raise AudioError(f"invalid sample rate {rate_in} Hz")
        self.rate_in = rate_in
        self.rate_out = rate_out
        self._stream = (None if rate_in == rate_out
                        else soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality=quality))

    def push(self, x: np.ndarray) -> np.ndarray:
        """(n,) samples at rate_in -> the resampled samples that are ready, (m,) float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._stream is None:
            return x
        return self._stream.resample_chunk(x)

    def flush(self) -> np.ndarray:
        """End of stream: the samples soxr still holds back for its filter delay."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


@dataclass(frozen=True)
class FileSource:
    """A validated audio input; ``iter_blocks`` can be called more than once."""

    name: str  # the path as given, or "<stdin>", for messages
    sample_rate_in: int  # Hz, of the file
    channels_in: int
    n_samples_in: int  # frames at sample_rate_in, as the file header reports
    format: str  # libsndfile's name, e.g. "WAV", "FLAC", "OGG", "MP3"
    _path: Path | None = None
    _data: bytes | None = field(default=None, repr=False)  # stdin contents

    @property
    def duration_s(self) -> float:
        return self.n_samples_in / self.sample_rate_in

    def _open(self) -> sf.SoundFile:
        try:
            if self._data is not None:
                return sf.SoundFile(io.BytesIO(self._data))
            return sf.SoundFile(str(self._path))
        except (sf.LibsndfileError, OSError) as e:
            raise AudioError(f"{self.name}: cannot open audio: {_reason(e)}") from None

    def iter_blocks(self, block_samples: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
        """Yield (block_samples,) float32 mono 16 kHz blocks; only the last may be shorter.

        Damaged data mid-file: every sample that decodes is yielded first, then ``AudioError`` says
        where decoding stopped, so a caller keeps the transcript of the part before the damage.
        """
        if block_samples <= 0:
            raise ValueError(f"block_samples must be positive, got {block_samples}")
        # read about one output block's worth of input at a time
        read_frames = max(1, math.ceil(block_samples * self.sample_rate_in / SAMPLE_RATE))
        resampler = StreamResampler(self.sample_rate_in)
        pending: list[np.ndarray] = []  # resampled samples not yet yielded; under 2 blocks in total
        n_pending = 0
        damage: str | None = None
        frames_read = 0
        with self._open() as f:
            while True:
                x, damage = (_read(f, read_frames) if damage is None else (np.zeros((0, self.channels_in), np.float32), damage))
                frames_read += len(x)
                last = len(x) == 0
                y = resampler.flush() if last else resampler.push(to_mono(x))
                if len(y):
                    pending.append(y)
                    n_pending += len(y)
                if n_pending >= block_samples or (last and n_pending):
                    joined = np.concatenate(pending)
                    n_full = len(joined) // block_samples * block_samples
                    for start in range(0, n_full, block_samples):
                        yield joined[start:start + block_samples]
                    rest = joined[n_full:]
                    if last and len(rest):
                        yield rest
                        rest = rest[:0]
                    pending, n_pending = ([rest], len(rest)) if len(rest) else ([], 0)
                if last:
                    if damage is not None:
                        at_s = frames_read / self.sample_rate_in
                        raise AudioError(f"{self.name}: damaged audio, decoding stopped at {at_s:.1f} s "
                                         f"of {self.duration_s:.1f} s ({damage})")
                    return


def _read(f: sf.SoundFile, frames: int) -> tuple[np.ndarray, str | None]:
    """Up to ``frames`` (n, channels) samples and None, or on damaged data the samples before it and the reason."""
    pos = f.tell()
    try:
        return f.read(frames, dtype="float32", always_2d=True), None
    except (sf.LibsndfileError, RuntimeError) as e:
        reason = _reason(e)
    # The failed read returned nothing; re-read its part in small steps to keep what still decodes.
    parts = []
    try:
        f.seek(pos)
        while sum(len(p) for p in parts) < frames:
            part = f.read(min(1024, frames), dtype="float32", always_2d=True)
            if not len(part):
                break
            parts.append(part)
    except (sf.LibsndfileError, RuntimeError):
        pass
    return (np.concatenate(parts) if parts else np.zeros((0, f.channels), np.float32)), reason


def _reason(e: BaseException) -> str:
    """libsndfile's own short reason ('Format not recognised.'), without its repeated file name."""
    text = getattr(e, "error_string", None) or getattr(e, "strerror", None) or str(e)
    return " ".join(str(text).split()).rstrip(".")


def open_audio(path: str | Path, stdin: BinaryIO | None = None) -> FileSource:
    """Validate an audio file (or "-" for a whole audio file on stdin) and describe it; raises AudioError."""
    data: bytes | None = None
    file_path: Path | None = None
    if str(path) == STDIN_NAME:
        name = "<stdin>"
        stream = stdin if stdin is not None else sys.stdin.buffer
        data = stream.read()
        if not data:
            raise AudioError("no audio on standard input (0 bytes)")
    else:
        name = str(path)
        file_path = Path(path)
        if not file_path.exists():
            raise AudioError(f"audio file not found: {name}")
        if file_path.is_dir():
            raise AudioError(f"{name} is a directory, not an audio file")
        try:
            if file_path.stat().st_size == 0:
                raise AudioError(f"{name} is empty (0 bytes)")
            with open(file_path, "rb"):
                pass
        except PermissionError:
            raise AudioError(f"cannot read {name}: permission denied") from None
    try:
        f = sf.SoundFile(io.BytesIO(data)) if data is not None else sf.SoundFile(str(file_path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{name} is not a readable audio file ({_reason(e)})") from None
    with f:
        if f.samplerate <= 0 or f.channels <= 0:
            raise AudioError(f"{name} has an invalid header ({f.samplerate} Hz, {f.channels} channels)")
        try:
            probe = f.read(_PROBE_FRAMES, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(f"{name} is corrupt: {_reason(e)}") from None
        if f.frames <= 0 or len(probe) == 0:
            raise AudioError(f"{name} contains no audio (0 samples)")
        return FileSource(name=name, sample_rate_in=f.samplerate, channels_in=f.channels,
                          n_samples_in=f.frames, format=f.format, _path=file_path, _data=data)


def load_audio(path: str | Path) -> np.ndarray:
    """A whole file as (n,) float32 mono at 16 kHz; for short files and tests (streams use iter_blocks)."""
    blocks = list(open_audio(path).iter_blocks(block_samples=10 * SAMPLE_RATE))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
