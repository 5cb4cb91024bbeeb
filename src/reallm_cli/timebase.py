"""Every unit of time in the project, named once; everything else is derived from these."""

SAMPLE_RATE = 16_000  # Hz; all audio is resampled to this, mono float32
HOP_SAMPLES = 160  # 10 ms between log-mel frames
WIN_SAMPLES = 400  # 25 ms analysis window (= n_fft)
N_FFT = 400
N_MELS = 80
MEL_FRAME_MS = 1000 * HOP_SAMPLES // SAMPLE_RATE  # 10
DEFAULT_CHUNK_MS = 240  # one speech embedding every 240 ms, as in the paper


def exact_div(a: int, b: int) -> int:
    """a / b, refusing silently truncated units (e.g. a chunk that is not a whole number of frames)."""
    if a % b:
        raise ValueError(f"{a} is not a multiple of {b}")
    return a // b


def ms_to_mel_frames(ms: int) -> int:
    return exact_div(ms, MEL_FRAME_MS)


def samples_to_s(n_samples: int) -> float:
    return n_samples / SAMPLE_RATE
