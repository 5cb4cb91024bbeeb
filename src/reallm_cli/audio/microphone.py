"""Microphone capture with sounddevice (PortAudio): blocks of float32 mono 16 kHz audio.

The PortAudio callback runs on a real-time thread and must never block, print or allocate much: it
only copies the block into a bounded queue and counts trouble (overflows reported by PortAudio,
blocks dropped because the queue was full). Resampling (when the device cannot record at 16 kHz)
happens in the reader's thread.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np

from reallm_cli.errors import ReallmError
from reallm_cli.timebase import SAMPLE_RATE


class DeviceError(ReallmError):
    """No such input device, or it could not be opened."""


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # the PortAudio shared library itself is missing
        raise DeviceError(f"cannot use audio input: {exc} (install PortAudio, e.g. `apt install libportaudio2`)") from exc
    return sounddevice


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    hostapi: str
    max_input_channels: int
    default_samplerate: float
    is_default: bool


def list_input_devices() -> list[InputDevice]:
    """Every device with at least one input channel."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_in = sd.default.device[0]
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot list audio devices: {exc}") from exc
    out = []
    for i, d in enumerate(devices):
        if d["max_input_channels"] > 0:
            out.append(
                InputDevice(
                    index=i,
                    name=d["name"],
                    hostapi=hostapis[d["hostapi"]]["name"],
                    max_input_channels=int(d["max_input_channels"]),
                    default_samplerate=float(d["default_samplerate"]),
                    is_default=i == default_in,
                )
            )
    return out


def find_input_device(spec: str | int | None) -> InputDevice:
    """``--device``: None (system default), an index, an exact name, or a unique part of a name."""
    devices = list_input_devices()
    hint = "see `reallm listen --list-devices`"
    if not devices:
        raise DeviceError("no audio input device found (no microphone, or no sound server such as PulseAudio/PipeWire running)")
    if spec is None or str(spec).strip() == "":
        for d in devices:
            if d.is_default:
                return d
        return devices[0]
    text = str(spec).strip()
    if text.isdigit():
        for d in devices:
            if d.index == int(text):
                return d
        raise DeviceError(f"no input device with index {text}; {hint}")
    exact = [d for d in devices if d.name.lower() == text.lower()]
    if exact:
        return exact[0]
    partial = [d for d in devices if text.lower() in d.name.lower()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        names = ", ".join(f"{d.index}: {d.name}" for d in partial)
        raise DeviceError(f"device name {text!r} is ambiguous ({names}); give the index")
    raise DeviceError(f"no input device matches {text!r}; {hint}")


class Microphone:
    """An open input stream; ``read`` returns 16 kHz float32 mono blocks in capture order.

    Use as a context manager. ``stop`` ends capture but keeps the queued blocks readable, so the
    last words can still be decoded.
    """

    def __init__(self, device: str | int | None = None, block_ms: int = 100, max_queue_s: float = 120.0) -> None:
        self.device = find_input_device(device)
        self.sample_rate = SAMPLE_RATE
        self.block_ms = block_ms
        self.overflows = 0  # PortAudio says input was lost (we were too slow to take it)
        self.dropped_blocks = 0  # our queue was full (decoding fell more than max_queue_s behind)
        self._captured_frames = 0  # device-rate frames delivered by the callback
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=max(1, int(max_queue_s * 1000 / block_ms)))
        self._stream = None
        self._resampler = None
        self._resampler_drained = False
        self._stopped = threading.Event()
        self.device_rate = self._pick_rate()

    def _pick_rate(self) -> int:
        sd = _sounddevice()
        try:
            sd.check_input_settings(device=self.device.index, samplerate=SAMPLE_RATE, channels=1, dtype="float32")
            return SAMPLE_RATE
        except Exception:  # noqa: BLE001 - PortAudio reports an unsupported rate in several ways
            return int(self.device.default_samplerate)

    # The callback runs on PortAudio's thread: copy, count, return. Nothing else.
    def _callback(self, indata, frames, time_info, status) -> None:  # noqa: ARG002
        if status.input_overflow:
            self.overflows += 1
        self._captured_frames += frames
        try:
            self._queue.put_nowait(indata[:, 0].copy())
        except queue.Full:
            self.dropped_blocks += 1

    def start(self) -> "Microphone":
        sd = _sounddevice()
        if self.device_rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(self.device_rate, SAMPLE_RATE, 1, dtype="float32")
        try:
            self._stream = sd.InputStream(
                device=self.device.index,
                samplerate=self.device_rate,
                channels=1,
                dtype="float32",
                blocksize=int(self.device_rate * self.block_ms / 1000),
                callback=self._callback,
            )
            self._stream.start()
        except sd.PortAudioError as exc:
            self._stream = None
            raise DeviceError(f"cannot open input device {self.device.index} ({self.device.name}): {exc}") from exc
        return self

    def stop(self) -> None:
        """Stop capturing; blocks already queued can still be read."""
        self._stopped.set()
        if self._stream is not None:
            try:
                self._stream.stop()
                self._stream.close()
            except Exception:  # noqa: BLE001 - closing a vanished device must not hide the transcript
                pass
            self._stream = None

    def __enter__(self) -> "Microphone":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def active(self) -> bool:
        """Still capturing (False after ``stop`` or when the device went away)."""
        return self._stream is not None and bool(self._stream.active)

    @property
    def finished(self) -> bool:
        """Nothing more will ever be read: not capturing and the queue is empty."""
        return not self.active and self._queue.empty() and (self._resampler is None or self._resampler_drained)

    @property
    def captured_s(self) -> float:
        """Audio captured so far (queued or already read)."""
        return self._captured_frames / self.device_rate

    @property
    def queued_s(self) -> float:
        return self._queue.qsize() * self.block_ms / 1000

    def read(self, timeout_s: float = 0.1) -> np.ndarray | None:
        """The next block (float32 mono 16 kHz), or None if none arrived within ``timeout_s``."""
        try:
            block = self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            if self._stopped.is_set() and self._resampler is not None and not self._resampler_drained:
                # Capture is over: release the samples the resampler's filter still holds (~20 ms).
                self._resampler_drained = True
                tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
                return tail if len(tail) else None
            return None
        if self._resampler is not None:
            block = self._resampler.resample_chunk(block, last=False)
        return block
