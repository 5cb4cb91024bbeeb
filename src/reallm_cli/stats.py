"""Statistics of an endless stream in fixed memory: running sums and counters, and a sample reservoir.

A stream may run for days, so nothing here keeps one entry per chunk or per piece. ``Reservoir`` holds a
uniform sample of at most ``capacity`` values (Vitter's algorithm R, seeded, so a run is repeatable):
while fewer values than that were added it holds them all and its percentiles are exact; after that
they are estimates from a uniform sample of the whole stream (4096 values put p99 within about half a
percentile point). Count, sum and maximum are always exact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np


class Reservoir:
    """Count, sum, maximum and a fixed-size uniform sample of a stream of floats (for p50/p95/p99)."""

    def __init__(self, capacity: int = 4096, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._sample = np.zeros(capacity, np.float64)  # allocated once; the first ``held`` slots are in use
        self._rng = random.Random(seed)
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    @property
    def capacity(self) -> int:
        return self._sample.shape[0]

    @property
    def held(self) -> int:
        return min(self.count, self.capacity)

    def add(self, value: float) -> None:
        value = float(value)
        if self.count < self.capacity:
            self._sample[self.count] = value
        else:
            j = self._rng.randrange(self.count + 1)  # value i survives with probability capacity / i
            if j < self.capacity:
                self._sample[j] = value
        self.max = value if self.count == 0 else max(self.max, value)
        self.count += 1
        self.total += value

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentile(self, q: float) -> float:
        """The q-th percentile (numpy's linear interpolation) of the values held; 0.0 when empty."""
        return float(np.percentile(self._sample[: self.held], q)) if self.count else 0.0


@dataclass
class SessionStats:
    """What one ``engine.Session`` measured so far; its size does not depend on the stream's length."""

    compute_s: float = 0.0  # wall time inside push/flush, the lead-in included (real-time factor: / audio_s)
    chunks: int = 0  # chunks decoded, the lead-in's included
    pieces: int = 0  # word pieces emitted after the lead-in
    words: int = 0  # words made final
    restarts: int = 0  # decoder context restarts
    chunk_decode_s: Reservoir = field(default_factory=Reservoir)  # decode time of each chunk (encoder excluded)

    @property
    def pieces_per_chunk(self) -> float:
        return self.pieces / max(1, self.chunks)
