"""On-the-fly augmentation: SpecAugment on log-mel features, speed perturbation and additive noise on waveforms.

Everything takes an explicit ``numpy.random.Generator`` so a resumed run (which restores its
generators from the checkpoint) augments exactly as the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import soxr
import torch

from reallm_cli.errors import ReallmError
from reallm_cli.timebase import SAMPLE_RATE


class AugmentError(ReallmError):
    """Augmentation settings or inputs that make no sense."""


# --- SpecAugment -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecAugmentConfig:
    n_freq_masks: int = 2
    min_freq_width: int = 0  # mel bins
    max_freq_width: int = 27  # the LibriSpeech "LD" policy of the SpecAugment paper
    n_time_masks: int = 2
    min_time_width_frames: int = 0
    max_time_width_frames: int = 40  # 400 ms of 10 ms frames
    max_time_share: float = 0.2  # no time mask longer than this share of the utterance
    fill: float = 0.0  # features are normalised to zero mean, so 0 is "average", not "silence"


@dataclass(frozen=True)
class SpecMask:
    axis: Literal["time", "freq"]
    start: int
    width: int


def sample_spec_masks(n_frames: int, n_bins: int, config: SpecAugmentConfig, rng: np.random.Generator) -> list[SpecMask]:
    """Draw the masks for one (n_frames, n_bins) feature matrix; widths uniform in [min, max]."""
    if config.min_freq_width > config.max_freq_width or config.min_time_width_frames > config.max_time_width_frames:
        raise AugmentError("a SpecAugment minimum width exceeds its maximum")
    masks = []
    max_f = min(config.max_freq_width, n_bins)
    for _ in range(config.n_freq_masks):
        width = int(rng.integers(min(config.min_freq_width, max_f), max_f + 1))
        masks.append(SpecMask("freq", int(rng.integers(0, n_bins - width + 1)), width))
    max_t = min(config.max_time_width_frames, int(config.max_time_share * n_frames))
    for _ in range(config.n_time_masks):
        width = int(rng.integers(min(config.min_time_width_frames, max_t), max_t + 1))
        masks.append(SpecMask("time", int(rng.integers(0, n_frames - width + 1)), width))
    return masks


def apply_spec_masks(features: torch.Tensor, masks: Sequence[SpecMask], fill: float = 0.0) -> torch.Tensor:
    """A copy of (T, F) ``features`` with the masked time frames / frequency bins set to ``fill``."""
    out = features.clone()
    for m in masks:
        if m.axis == "time":
            out[m.start : m.start + m.width, :] = fill
        else:
            out[:, m.start : m.start + m.width] = fill
    return out


def spec_augment(
    features: torch.Tensor, config: SpecAugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, list[SpecMask]]:
    """SpecAugment one utterance's (T, F) features; returns the masked copy and the masks used."""
    if features.ndim != 2:
        raise AugmentError(f"spec_augment expects (T, F) features, got shape {tuple(features.shape)}")
    masks = sample_spec_masks(features.shape[0], features.shape[1], config, rng)
    return apply_spec_masks(features, masks, config.fill), masks


def spec_augment_batch(
    features: torch.Tensor, lengths: torch.Tensor, config: SpecAugmentConfig, rng: np.random.Generator
) -> torch.Tensor:
    """SpecAugment a padded batch (B, T, F); time masks stay inside each item's ``lengths`` frames."""
    if features.ndim != 3:
        raise AugmentError(f"spec_augment_batch expects (B, T, F) features, got shape {tuple(features.shape)}")
    out = features.clone()
    for b, n in enumerate(lengths.tolist()):
        masks = sample_spec_masks(int(n), features.shape[2], config, rng)
        out[b, :n] = apply_spec_masks(features[b, :n], masks, config.fill)
    return out


# --- waveform level ------------------------------------------------------------------------------


def speed_perturb(wave: np.ndarray, factor: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play ``wave`` ``factor`` times faster (tempo and pitch, like tape): about len/factor samples out."""
    if not 0.5 <= factor <= 2.0:
        raise AugmentError(f"speed factor must lie in [0.5, 2], got {factor}")
    wave = np.asarray(wave, dtype=np.float32)
    if factor == 1.0:
        return wave.copy()
    # Declaring the input to be sampled factor times faster and resampling to the true rate
    # yields the same sounds in 1/factor of the time.
    return soxr.resample(wave, sample_rate * factor, sample_rate, quality="HQ").astype(np.float32)


def random_speed_factor(rng: np.random.Generator, low: float = 0.9, high: float = 1.1, choices: Sequence[float] | None = None) -> float:
    """A speed factor: one of ``choices`` (e.g. Kaldi's 0.9/1.0/1.1) when given, else uniform in [low, high]."""
    if choices is not None:
        return float(choices[int(rng.integers(0, len(choices)))])
    return float(rng.uniform(low, high))


def add_noise(
    wave: np.ndarray, snr_db: float, rng: np.random.Generator, noise: np.ndarray | None = None
) -> np.ndarray:
    """``wave`` plus noise scaled to the asked signal-to-noise ratio (white Gaussian noise if none given).

    A noise recording shorter than the speech is looped; a random stretch of it is used. The SNR
    is measured over the whole utterance (speech power includes its pauses).
    """
    wave = np.asarray(wave, dtype=np.float32)
    n = len(wave)
    if n == 0:
        return wave.copy()
    if noise is None:
        segment = rng.standard_normal(n)
    else:
        noise = np.asarray(noise, dtype=np.float64)
        if noise.ndim != 1 or len(noise) == 0:
            raise AugmentError("noise must be a non-empty mono waveform")
        if len(noise) < n:
            noise = np.tile(noise, -(-n // len(noise)))
        offset = int(rng.integers(0, len(noise) - n + 1))
        segment = noise[offset : offset + n]
    signal_power = float(np.mean(wave.astype(np.float64) ** 2))
    noise_power = float(np.mean(segment**2))
    if noise_power == 0.0:
        raise AugmentError("the noise is silent; it cannot set an SNR")
    if signal_power == 0.0:
        return wave.copy()  # silence has no SNR; leave it alone
    scale = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (wave + scale * segment).astype(np.float32)


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Measured SNR of ``noisy`` against the ``clean`` signal it was made from."""
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(noisy, dtype=np.float64) - clean
    return float(10.0 * np.log10(np.sum(clean**2) / np.sum(noise**2)))
