"""Whisper's log-mel front end, offline and streaming, shared by both encoders.

Pipeline (as openai/whisper ``log_mel_spectrogram``): periodic Hann window of N_FFT samples, hop
HOP_SAMPLES, STFT with ``center=True`` and reflect padding, power spectrum, the last STFT frame dropped
(so T = n_samples // HOP_SAMPLES), Slaney mel filterbank, log10 of max(x, 1e-10), floor at max - 8,
then (x + 4) / 4.

The clip-wide max of the original floor is not causal, so the streaming front end floors at the
running max over the frames so far instead (``floor="running"``); ``whisper_log_mel`` offers both so
that a model can be run on exactly what the stream will feed it.

Both paths cut the padded signal into frames and call the same ``_log_mel_of_frames``, so the
streaming output equals the offline one up to float rounding of batched matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

from reallm_cli.timebase import HOP_SAMPLES, N_FFT, N_MELS, SAMPLE_RATE, WIN_SAMPLES

PAD_SAMPLES = N_FFT // 2  # center=True: frame i is centred on sample i * HOP_SAMPLES
LOG_FLOOR_DB = 8.0  # whisper keeps 8 decades (80 dB) below the max
FloorMode = Literal["clip", "running"]

if WIN_SAMPLES != N_FFT:  # whisper's window spans the whole FFT; nothing here pads the window
    raise ImportError("features.py assumes WIN_SAMPLES == N_FFT")


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's htk=False)."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3  # Hz per mel in the linear part
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mel = hz / f_sp
    above = hz >= min_log_hz
    mel[above] = min_log_mel + np.log(hz[above] / min_log_hz) / logstep
    return mel


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    hz = mel * f_sp
    above = mel >= min_log_mel
    hz[above] = min_log_hz * np.exp(logstep * (mel[above] - min_log_mel))
    return hz


@lru_cache(maxsize=4)
def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Slaney-normalised triangular mel filters, (n_mels, n_fft // 2 + 1) float32, as librosa's default."""
    fft_hz = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    # n_mels + 2 edges equally spaced in mel between 0 Hz and Nyquist; filter m spans edges m..m+2
    edges_hz = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(np.array([0.0]))[0],
                                             _hz_to_mel_slaney(np.array([sr / 2]))[0], n_mels + 2))
    widths_hz = np.diff(edges_hz)  # (n_mels + 1,)
    dist = edges_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, n_bins)
    rising = -dist[:-2] / widths_hz[:-1, None]
    falling = dist[2:] / widths_hz[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # "slaney" norm: each triangle has unit area, so wide high-frequency bands are not louder
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=1)
def _constants() -> tuple[np.ndarray, np.ndarray]:
    # periodic Hann, as torch.hann_window(N_FFT) (whisper's window)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # (N_FFT,)
    filters_t = np.ascontiguousarray(mel_filterbank().T)  # (n_bins, N_MELS)
    return window, filters_t


def _log_mel_of_frames(frames: np.ndarray) -> torch.Tensor:
    """(t, N_FFT) raw padded-signal frames -> (t, N_MELS) log10 mel power, not yet floored or scaled.

    numpy, not torch: torch's multi-threaded rfft and matmul on a few frames are up to 50x slower on a
    busy 2-core machine, and this runs every few milliseconds in a live stream.
    """
    window, filters_t = _constants()
    spec = np.fft.rfft(frames * window, axis=-1)  # (t, n_bins) complex
    power = (spec.real.astype(np.float32) ** 2 + spec.imag.astype(np.float32) ** 2)  # (t, n_bins)
    mel = power @ filters_t  # (t, N_MELS)
    return torch.from_numpy(np.log10(np.maximum(mel, np.float32(1e-10))))


def _reflect_pad(x: np.ndarray, left: int, right: int) -> np.ndarray:
    """Reflect padding as torch's center=True; for signals shorter than the pad it keeps reflecting
    (numpy's rule) instead of failing, so tiny clips still give frames."""
    if len(x) == 1:  # a single sample has nothing to reflect about: repeat it
        return np.pad(x, (left, right), mode="edge")
    return np.pad(x, (left, right), mode="reflect")


def _frames_of(padded: np.ndarray, n_frames: int) -> np.ndarray:
    """The first n_frames analysis frames of a padded signal, (n_frames, N_FFT), a strided view."""
    return np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_SAMPLES][:n_frames]


def _apply_floor(log_mel: torch.Tensor, floor_at: torch.Tensor) -> torch.Tensor:
    """(t, N_MELS) log mel, (t, 1) or scalar max -> whisper-normalised features."""
    return (torch.maximum(log_mel, floor_at - LOG_FLOOR_DB) + 4.0) / 4.0


def _running_max(frame_max: torch.Tensor, start: float) -> torch.Tensor:
    """(t,) per-frame maxima -> (t,) max over all frames so far, starting from `start`."""
    return torch.cummax(torch.clamp(frame_max, min=start), dim=0).values


def whisper_log_mel(audio: np.ndarray | torch.Tensor, floor: FloorMode = "clip") -> torch.Tensor:
    """16 kHz mono audio (n,) -> normalised log-mel (n // HOP_SAMPLES, N_MELS) float32."""
    if floor not in ("clip", "running"):
        raise ValueError(f"floor must be 'clip' or 'running', not {floor!r}")
    x = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    x = x.astype(np.float32, copy=False)
    if x.ndim != 1:
        raise ValueError(f"expected mono audio of shape (n,), got {x.shape}")
    n_frames = len(x) // HOP_SAMPLES
    if n_frames == 0:
        return torch.zeros(0, N_MELS)
    padded = _reflect_pad(x, PAD_SAMPLES, PAD_SAMPLES)
    log_mel = _log_mel_of_frames(_frames_of(padded, n_frames))  # (T, N_MELS)
    if floor == "clip":
        return _apply_floor(log_mel, log_mel.max())
    return _apply_floor(log_mel, _running_max(log_mel.amax(dim=1), -np.inf)[:, None])


@dataclass
class _StreamState:
    n_samples_in: int = 0  # samples pushed so far
    started: bool = False  # left padding built (needs PAD_SAMPLES + 1 samples)
    # padded-signal samples from padded index buf_start_padded on; bounded by N_FFT + one block
    buf: np.ndarray = None  # type: ignore[assignment]  # (n_buf,) float32
    buf_start_padded: int = 0
    running_max: float = -np.inf  # max log10 mel over emitted frames


class StreamingLogMel:
    """Causal whisper log-mel: push audio blocks of any size, get the frames that became complete.

    Frame i is centred on sample i * HOP_SAMPLES and is emitted once sample i * HOP_SAMPLES + 199 has
    arrived (and, for the left reflect padding, at least 201 samples). Concatenated ``push`` and
    ``flush`` outputs equal ``whisper_log_mel(audio, floor="running")``. Memory is bounded whatever the
    stream length.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self._s = _StreamState(buf=np.zeros(0, dtype=np.float32))
        self.frames_emitted = 0
        self._flushed = False

    @property
    def n_samples_in(self) -> int:
        return self._s.n_samples_in

    @property
    def buffered_samples(self) -> int:
        """Samples held between calls: at most N_FFT + the last block, however long the stream."""
        return len(self._s.buf)

    def push(self, samples: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Add 16 kHz mono samples (n,); return the newly complete frames (t, N_MELS)."""
        if self._flushed:
            raise RuntimeError("StreamingLogMel.push after flush; call reset() first")
        x = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
        x = x.astype(np.float32, copy=False).reshape(-1)
        s = self._s
        s.n_samples_in += len(x)
        if not s.started:
            s.buf = np.concatenate([s.buf, x])
            if len(s.buf) <= PAD_SAMPLES:
                return torch.zeros(0, N_MELS)
            # left reflect padding: samples PAD_SAMPLES..1 mirrored in front of sample 0
            s.buf = np.concatenate([s.buf[PAD_SAMPLES:0:-1], s.buf])
            s.buf_start_padded = 0
            s.started = True
        elif len(x):
            s.buf = np.concatenate([s.buf, x])
        # frame i needs padded samples [i*HOP, i*HOP + N_FFT), i.e. audio up to i*HOP + PAD - 1
        n_ready = (s.n_samples_in - PAD_SAMPLES) // HOP_SAMPLES + 1
        return self._emit(n_ready)

    def flush(self) -> torch.Tensor:
        """End of stream: return the remaining frames (right reflect padding, as center=True)."""
        if self._flushed:
            return torch.zeros(0, N_MELS)
        self._flushed = True
        s = self._s
        n_total = s.n_samples_in // HOP_SAMPLES  # whisper drops the last STFT frame
        if not s.started:  # under PAD_SAMPLES + 1 samples: the whole clip is still here
            if n_total == 0:
                return torch.zeros(0, N_MELS)
            padded = _reflect_pad(s.buf, PAD_SAMPLES, PAD_SAMPLES)
            s.buf, s.buf_start_padded = padded, 0
            return self._emit(n_total)
        # the buffer always keeps the last PAD_SAMPLES + 1 audio samples (see _emit), enough to mirror
        tail = s.buf[-PAD_SAMPLES - 1:-1][::-1]
        s.buf = np.concatenate([s.buf, tail])
        return self._emit(n_total)

    def _emit(self, n_ready: int) -> torch.Tensor:
        s = self._s
        first = self.frames_emitted
        if n_ready <= first:
            return torch.zeros(0, N_MELS)
        offset = first * HOP_SAMPLES - s.buf_start_padded
        frames = _frames_of(s.buf[offset:], n_ready - first)  # (t, N_FFT)
        log_mel = _log_mel_of_frames(frames)  # (t, N_MELS)
        running = _running_max(log_mel.amax(dim=1), s.running_max)  # (t,)
        s.running_max = float(running[-1])
        self.frames_emitted = n_ready
        # keep what the next frame needs, and always the last PAD_SAMPLES + 1 samples for the right
        # reflect padding at flush, so the buffer never grows with the stream
        padded_len = s.buf_start_padded + len(s.buf)
        keep_from = min(n_ready * HOP_SAMPLES, padded_len - (PAD_SAMPLES + 1))
        drop = max(0, keep_from - s.buf_start_padded)
        if drop:
            s.buf = s.buf[drop:].copy()
            s.buf_start_padded += drop
        return _apply_floor(log_mel, running[:, None])
