"""Training data from audio: waveform -> augmentation -> streaming log-mel -> SpecAugment -> padded batches.

Features are made exactly as the streaming engine makes them (``whisper_log_mel(floor="running")``),
so a model never sees at run time a front end it was not trained on.

Every random choice for an utterance comes from a generator seeded by (seed, epoch, index), so
augmentation is a pure function of those numbers: the same in any DataLoader worker, on any rank,
and after a resume. Batches are lists of ``(epoch, index)`` keys, which is how the epoch reaches
``__getitem__`` through an ordinary DataLoader.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from reallm_cli.align.ctc import token_chunks_from_frames
from reallm_cli.audio.errors import AudioError
from reallm_cli.audio.features import whisper_log_mel
from reallm_cli.audio.source import load_audio
from reallm_cli.errors import ReallmError
from reallm_cli.timebase import MEL_FRAME_MS, N_MELS
from reallm_cli.train.augment import SpecAugmentConfig, add_noise, random_speed_factor, spec_augment, speed_perturb
from reallm_cli.train.batching import DurationBatchSampler
from reallm_cli.train.manifest import ManifestEntry

# Keep decoded audio in memory when the whole corpus is this small (tests, small fine-tuning sets).
CACHE_AUDIO_MAX_S = 3600.0


class AudioDataError(ReallmError):
    """An utterance whose audio cannot be read during training."""


@dataclass(frozen=True)
class AugmentConfig:
    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)  # Kaldi's three-way speed perturbation
    noise_prob: float = 0.3  # share of utterances that get white noise
    snr_db_range: tuple[float, float] = (10.0, 30.0)
    spec_augment: SpecAugmentConfig | None = field(default_factory=SpecAugmentConfig)


NO_AUGMENT = AugmentConfig(speed_factors=(1.0,), noise_prob=0.0, spec_augment=None)


@dataclass(frozen=True)
class Utterance:
    """One training item: its manifest entry, word pieces and (for ReaLLM) where each piece is emitted."""

    entry: ManifestEntry
    tokens: tuple[int, ...]
    token_frames: tuple[int, ...] | None = None  # teacher frame of each piece's CTC spike
    token_chunks: tuple[int, ...] | None = None  # chunk after which each piece is emitted (speed 1)


@dataclass
class AudioBatch:
    mel: torch.Tensor  # (B, T_mel, 80) zero-padded
    mel_lengths: torch.Tensor  # (B,) long
    tokens: list[list[int]]  # per item, word pieces (no BLANK)
    token_chunks: list[list[int]] | None  # per item, chunk index of each piece, or None (CTC only)
    audio_s: float  # seconds of (speed-perturbed) audio in the batch
    ids: list[str]


def scaled_chunks(
    utt: Utterance, speed: float, n_chunks: int, *, frame_ms: int, chunk_ms: int
) -> list[int]:
    """The emission chunks of an utterance played ``speed`` times faster, inside ``n_chunks``."""
    if utt.token_frames is not None:
        # A spike heard at (f + 1) * frame_ms is heard at that time / speed in the faster audio.
        frames = [max(0, round((f + 1) / speed) - 1) for f in utt.token_frames]
        return token_chunks_from_frames(frames, frame_ms, chunk_ms, n_chunks=n_chunks)
    assert utt.token_chunks is not None
    out, floor = [], 0
    for c in utt.token_chunks:
        c2 = min(n_chunks - 1, max(0, math.ceil((c + 1) / speed) - 1))
        floor = max(floor, c2)
        out.append(floor)
    return out


class AudioDataset(Dataset):
    """``dataset[(epoch, i)]`` -> dict with the augmented log-mel of utterance i and its targets."""

    def __init__(
        self,
        utterances: Sequence[Utterance],
        augment: AugmentConfig = NO_AUGMENT,
        *,
        seed: int = 0,
        encoder_frame_ms: int = 40,
        chunk_ms: int | None = None,
        cache_audio: bool | None = None,
    ):
        if not utterances:
            raise AudioDataError("no utterances to train on")
        self.utterances = list(utterances)
        self.augment = augment
        self.seed = seed
        self.encoder_frame_ms = encoder_frame_ms
        self.chunk_ms = chunk_ms
        total_s = sum(u.entry.duration_s for u in self.utterances)
        self.cache_audio = total_s <= CACHE_AUDIO_MAX_S if cache_audio is None else cache_audio
        self._cache: dict[int, np.ndarray] = {}
        # Without waveform augmentation the log-mel is the same every epoch: keep it instead.
        self._same_wave = tuple(augment.speed_factors) == (1.0,) and augment.noise_prob == 0
        self._mel_cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def durations_s(self) -> list[float]:
        return [u.entry.duration_s for u in self.utterances]

    def _audio(self, i: int) -> np.ndarray:
        if i in self._cache:
            return self._cache[i]
        entry = self.utterances[i].entry
        try:
            audio = load_audio(entry.audio)
        except (AudioError, OSError) as exc:
            raise AudioDataError(f"utterance {entry.id!r}: cannot read {entry.audio}: {str(exc).splitlines()[0]}") from None
        if self.cache_audio:
            self._cache[i] = audio
        return audio

    def __getitem__(self, key: tuple[int, int]) -> dict | None:
        """The item, or None (reported on stderr) when its audio cannot be decoded; ``collate`` drops it."""
        try:
            return self._item(key)
        except AudioDataError as exc:
            print(f"skipping in epoch {key[0]}: {exc}", file=sys.stderr, flush=True)
            return None

    def _item(self, key: tuple[int, int]) -> dict:
        epoch, i = key
        utt = self.utterances[i]
        rng = np.random.default_rng([self.seed, epoch, i])
        aug = self.augment
        speed = random_speed_factor(rng, choices=aug.speed_factors)
        if self._same_wave and i in self._mel_cache:
            mel = self._mel_cache[i]
        else:
            wave = self._audio(i)
            if speed != 1.0:
                wave = speed_perturb(wave, speed)
            if aug.noise_prob > 0 and rng.random() < aug.noise_prob:
                wave = add_noise(wave, float(rng.uniform(*aug.snr_db_range)), rng)
            mel = whisper_log_mel(wave, floor="running")  # (T_mel, 80)
            if self._same_wave and self.cache_audio:
                self._mel_cache[i] = mel
                self._cache.pop(i, None)
        if aug.spec_augment is not None and mel.shape[0] > 0:
            mel, _ = spec_augment(mel, aug.spec_augment, rng)
        audio_s = mel.shape[0] * MEL_FRAME_MS / 1000  # the audio the model saw (after speed perturbation)
        item = {"mel": mel, "tokens": list(utt.tokens), "audio_s": audio_s, "id": utt.entry.id,
                "token_chunks": None}
        if self.chunk_ms is not None:
            n_frames = mel.shape[0] * MEL_FRAME_MS // self.encoder_frame_ms
            frames_per_chunk = self.chunk_ms // self.encoder_frame_ms
            n_chunks = max(1, -(-n_frames // frames_per_chunk))
            item["token_chunks"] = scaled_chunks(utt, speed, n_chunks, frame_ms=self.encoder_frame_ms, chunk_ms=self.chunk_ms)
        return item


def collate(items: list[dict | None]) -> AudioBatch:
    """Right-pad log-mels to one (B, T_max, 80) batch (items whose audio failed to decode are left out)."""
    items = [it for it in items if it is not None]
    if not items:  # every file of the batch failed: an empty batch keeps the step count (and the ranks) in step
        return AudioBatch(mel=torch.zeros(0, 0, N_MELS), mel_lengths=torch.zeros(0, dtype=torch.long), tokens=[],
                          token_chunks=[], audio_s=0.0, ids=[])
    t_max = max(it["mel"].shape[0] for it in items)
    mel = torch.zeros(len(items), t_max, N_MELS)
    for b, it in enumerate(items):
        mel[b, : it["mel"].shape[0]] = it["mel"]
    chunks = [it["token_chunks"] for it in items]
    return AudioBatch(
        mel=mel,
        mel_lengths=torch.tensor([it["mel"].shape[0] for it in items], dtype=torch.long),
        tokens=[it["tokens"] for it in items],
        token_chunks=None if any(c is None for c in chunks) else chunks,
        audio_s=float(sum(it["audio_s"] for it in items)),
        ids=[it["id"] for it in items],
    )


class _EpochKeys:
    """Batch sampler that tags every index with the epoch (DataLoader passes keys to ``__getitem__`` as is)."""

    def __init__(self, sampler: DurationBatchSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        e = self.sampler.epoch
        for batch in self.sampler:
            yield [(e, i) for i in batch]

    def __len__(self) -> int:
        return len(self.sampler)


def make_batch_iter(dataset: AudioDataset, sampler: DurationBatchSampler, workers: int = 0):
    """``(epoch, start_batch) -> iterable of AudioBatch`` for ``run_loop(batch_iter=...)``, via a DataLoader."""

    def batch_iter(epoch: int, start_batch: int):
        sampler.set_epoch(epoch, start_batch)
        return DataLoader(dataset, batch_sampler=_EpochKeys(sampler), collate_fn=collate, num_workers=workers,
                          persistent_workers=False)

    return batch_iter
