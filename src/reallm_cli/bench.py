"""Real-time factor and latency of the streaming engine, measured the way a live stream uses it.

Audio is pushed one chunk at a time (as a microphone would deliver it), after a warm-up; every push is
timed with ``perf_counter``. Real-time factor = compute seconds / audio seconds (below 1 is faster than
real time).
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from reallm_cli.engine import Recognizer
from reallm_cli.model.quantize import parameter_count
from reallm_cli.timebase import SAMPLE_RATE


@dataclass(frozen=True)
class BenchResult:
    model: str
    chunk_ms: int
    threads: int
    audio_s: float
    compute_s: float
    rtf: float
    chunk_p50_ms: float
    chunk_p95_ms: float
    chunk_p99_ms: float
    chunk_max_ms: float
    load_s: float
    first_word_s: float | None  # stream time at which the first word was shown (None: no word)
    pieces_per_chunk: float
    peak_rss_mb: float
    n_params: int
    wer: float | None = None
    delay_p50_s: float | None = None
    delay_p95_s: float | None = None
    text: str = ""
    precision: str = ""
    extra: dict = field(default_factory=dict)


def synthetic_audio(duration_s: float, seed: int = 0) -> np.ndarray:
    """Speech-like test signal: harmonic bursts with a moving pitch and pauses, plus a little noise."""
    rng = np.random.default_rng(seed)
    n = int(duration_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = (np.sin(2 * np.pi * 1.9 * t) > -0.3).astype(np.float32)
    x = 0.2 * voiced * envelope + 0.01 * rng.standard_normal(n)
    return x.astype(np.float32)


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def run_bench(
    recognizer: Recognizer,
    audio: np.ndarray,
    name: str,
    load_s: float,
    warmup_s: float = 2.0,
) -> BenchResult:
    """Push ``audio`` chunk by chunk through a fresh session; time every push."""
    chunk_ms = recognizer.model.chunk_ms
    block = SAMPLE_RATE * chunk_ms // 1000
    warm = recognizer.session()
    for i in range(0, int(warmup_s * SAMPLE_RATE), block):
        warm.push(audio[i : i + block])
    warm.flush()

    session = recognizer.session()
    push_s: list[float] = []
    first_word_s = None
    words = []
    for i in range(0, len(audio), block):
        t0 = time.perf_counter()
        event = session.push(audio[i : i + block])
        push_s.append(time.perf_counter() - t0)
        if first_word_s is None and (event.final or event.partial):
            first_word_s = session.audio_s
        words.extend(event.final)
    words.extend(session.flush().final)
    lat = np.array(push_s) * 1000
    audio_s = len(audio) / SAMPLE_RATE
    return BenchResult(
        model=name,
        chunk_ms=chunk_ms,
        threads=torch.get_num_threads(),
        audio_s=round(audio_s, 3),
        compute_s=round(session.compute_s, 3),
        rtf=round(session.compute_s / audio_s, 4),
        chunk_p50_ms=round(float(np.percentile(lat, 50)), 2),
        chunk_p95_ms=round(float(np.percentile(lat, 95)), 2),
        chunk_p99_ms=round(float(np.percentile(lat, 99)), 2),
        chunk_max_ms=round(float(lat.max()), 2),
        load_s=round(load_s, 3),
        first_word_s=first_word_s,
        pieces_per_chunk=round(len(session.tokens) / max(1, session.chunks_done), 2),
        peak_rss_mb=round(peak_rss_mb(), 1),
        n_params=parameter_count(recognizer.model),
        text=" ".join(w.text for w in words),
        precision=recognizer.precision,
    )
