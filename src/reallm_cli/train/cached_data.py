"""Batches of cached encoder frames with their token sequences (and, for ReaLLM, alignments)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reallm_cli.train.feature_cache import FeatureStore


@dataclass
class FrameBatch:
    frames: torch.Tensor  # (B, T, C) float32, zero-padded
    frame_lengths: torch.Tensor  # (B,) long
    tokens: list[list[int]]  # per utterance, word-piece ids (no BLANK)
    indices: list[int]  # positions in the store


def make_batch(store: FeatureStore, indices: list[int], token_lists: list[list[int]]) -> FrameBatch:
    arrays = [store.frames(i) for i in indices]
    t_max = max(a.shape[0] for a in arrays)
    frames = np.zeros((len(arrays), t_max, store.dim), dtype=np.float32)
    for b, a in enumerate(arrays):
        frames[b, : a.shape[0]] = a
    return FrameBatch(
        frames=torch.from_numpy(frames),
        frame_lengths=torch.tensor([a.shape[0] for a in arrays]),
        tokens=[token_lists[i] for i in indices],
        indices=list(indices),
    )


def time_mask(frames: torch.Tensor, lengths: torch.Tensor, rng: torch.Generator, n_masks: int = 2,
              max_width: int = 10) -> torch.Tensor:
    """SpecAugment-style time masks on encoder frames (B, T, C): zeroes a few short spans per utterance."""
    out = frames.clone()
    for b in range(frames.shape[0]):
        t = int(lengths[b])
        for _ in range(n_masks):
            w = int(torch.randint(0, max_width + 1, (1,), generator=rng))
            if w == 0 or t <= w:
                continue
            s = int(torch.randint(0, t - w, (1,), generator=rng))
            out[b, s : s + w] = 0
    return out
