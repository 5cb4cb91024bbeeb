"""Duration-bucketed batches: similar lengths together (little padding), a cap on padded seconds.

The batches of an epoch are a pure function of (durations, seed, epoch), so a run resumed from
(epoch, batch index) sees exactly the batches it would have seen, and every DDP rank can compute
the same list and take its own share without talking to the others.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from reallm_cli.errors import ReallmError


class BatchingError(ReallmError):
    """Impossible batching settings."""


def padded_seconds(batch: Sequence[int], durations_s: Sequence[float]) -> float:
    """What a batch costs once padded to its longest item: size x longest duration."""
    return len(batch) * max(durations_s[i] for i in batch) if batch else 0.0


def padding_ratio(batches: Sequence[Sequence[int]], durations_s: Sequence[float]) -> float:
    """Share of padded batch time that is padding (0 = none)."""
    total = sum(padded_seconds(b, durations_s) for b in batches)
    real = sum(durations_s[i] for b in batches for i in b)
    return 1.0 - real / total if total else 0.0


class DurationBatchSampler:
    """Batch sampler (``DataLoader(batch_sampler=...)``) over items of known duration.

    Items are split into ``n_buckets`` groups of equal count by duration; each bucket is shuffled
    and packed greedily while ``batch size x longest item <= max_batch_s`` (an item longer than
    that gets a batch of its own); then the batch order is shuffled. With ``world_size > 1`` the
    batch list is cut to a multiple of ``world_size`` (every rank must run the same number of
    steps) and rank r takes batches r, r + world_size, ...
    """

    def __init__(
        self,
        durations_s: Sequence[float],
        max_batch_s: float,
        *,
        max_batch_size: int | None = None,
        n_buckets: int = 20,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if max_batch_s <= 0:
            raise BatchingError(f"max_batch_s must be positive, got {max_batch_s}")
        if max_batch_size is not None and max_batch_size < 1:
            raise BatchingError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if n_buckets < 1:
            raise BatchingError(f"n_buckets must be at least 1, got {n_buckets}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise BatchingError(f"rank {rank} is not valid for world size {world_size}")
        self.durations_s = np.asarray(durations_s, dtype=np.float64)
        if self.durations_s.ndim != 1 or len(self.durations_s) == 0:
            raise BatchingError("need a non-empty list of durations")
        if not np.all(np.isfinite(self.durations_s)) or np.any(self.durations_s <= 0):
            raise BatchingError("every duration must be a positive number of seconds")
        self.max_batch_s = float(max_batch_s)
        self.max_batch_size = max_batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        # Buckets depend on the data only (stable sort: ties keep index order), never on the epoch.
        order = np.argsort(self.durations_s, kind="stable")
        self._buckets = [b for b in np.array_split(order, min(n_buckets, len(order))) if len(b)]
        self.epoch = 0
        self.start_batch = 0

    def _pack(self, indices: np.ndarray) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0.0
        for i in indices.tolist():
            d = self.durations_s[i]
            fits = (len(current) + 1) * max(longest, d) <= self.max_batch_s
            full = self.max_batch_size is not None and len(current) >= self.max_batch_size
            if current and (not fits or full):
                batches.append(current)
                current, longest = [], 0.0
            current.append(i)
            longest = max(longest, d)
        if current:
            batches.append(current)
        return batches

    def all_batches(self, epoch: int) -> list[list[int]]:
        """Every batch of an epoch, before sharding across ranks."""
        rng = np.random.default_rng([self.seed, epoch])
        batches: list[list[int]] = []
        for bucket in self._buckets:
            batches.extend(self._pack(rng.permutation(bucket) if self.shuffle else bucket))
        if self.shuffle:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        return batches

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of an epoch, in order."""
        all_b = self.all_batches(epoch)
        usable = len(all_b) - len(all_b) % self.world_size
        return all_b[self.rank : usable : self.world_size]

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch that ``__iter__`` yields, starting at this rank's batch ``start_batch`` (to resume)."""
        if start_batch < 0:
            raise BatchingError(f"start_batch must be non-negative, got {start_batch}")
        self.epoch = epoch
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches(self.epoch)[self.start_batch :]

    def __len__(self) -> int:
        return max(0, len(self.batches(self.epoch)) - self.start_batch)
