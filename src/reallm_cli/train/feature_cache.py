"""Frozen-encoder features cached on disk, so that heads and decoders train without re-running the encoder.

Layout of a cache folder: ``shard_NNNNN.npy`` (all frames of a shard's utterances, concatenated,
(sum T, C) float16) and ``shard_NNNNN.jsonl`` (one line per utterance: id, text, duration, offset,
n_frames). Shards are written atomically, so a killed run resumes by skipping finished shards.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reallm_cli.audio.features import whisper_log_mel
from reallm_cli.audio.source import load_audio


@dataclass(frozen=True)
class CachedUtterance:
    id: str
    text: str
    duration: float
    shard: int
    offset: int
    n_frames: int


def stream_mel(audio: np.ndarray) -> torch.Tensor:
    """(1, T, 80) log-mel of one utterance, as the live stream feeds the encoder (running floor)."""
    return whisper_log_mel(audio, floor="running")[None]


def encode_audio(encoder, audio: np.ndarray) -> torch.Tensor:
    """Whole-utterance parallel encoder pass on the streaming front end's features: (T_out, C)."""
    mel = stream_mel(audio)
    with torch.inference_mode():
        frames, _ = encoder.forward(mel, torch.tensor([mel.shape[1]]))
    return frames[0]


def build_cache(entries: list[dict], encoder, out_dir: str | Path, shard_size: int = 200,
                log: Callable[[str], None] = print) -> None:
    """Encode every manifest entry (dicts with id, audio, text, duration) into shards under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = (len(entries) + shard_size - 1) // shard_size
    t_start = time.perf_counter()
    audio_done = 0.0
    for s in range(n_shards):
        npy, idx = out / f"shard_{s:05d}.npy", out / f"shard_{s:05d}.jsonl"
        if npy.exists() and idx.exists():
            continue
        rows, arrays, offset = [], [], 0
        for e in entries[s * shard_size : (s + 1) * shard_size]:
            audio = load_audio(e["audio"])
            frames = encode_audio(encoder, audio).to(torch.float16).numpy()
            arrays.append(frames)
            rows.append({"id": e["id"], "text": e["text"], "duration": len(audio) / 16000,
                         "offset": offset, "n_frames": int(frames.shape[0])})
            offset += frames.shape[0]
            audio_done += len(audio) / 16000
        atomic_save_npy(npy, np.concatenate(arrays, 0))
        atomic_write_text(idx, "".join(json.dumps(r) + "\n" for r in rows))
        el = time.perf_counter() - t_start
        log(f"shard {s + 1}/{n_shards}: {audio_done / 3600:.2f} h encoded in {el / 60:.1f} min "
            f"(RTF {el / max(audio_done, 1e-9):.4f})")


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class FeatureStore:
    """Read-only view of a cache folder; frames come from memory-mapped shards."""

    def __init__(self, dirs: Iterable[str | Path]):
        self.items: list[CachedUtterance] = []
        self._shards: list[np.ndarray] = []
        for d in dirs:
            for idx in sorted(Path(d).glob("shard_*.jsonl")):
                npy = idx.with_suffix(".npy")
                if not npy.exists():
                    continue
                shard = len(self._shards)
                self._shards.append(np.load(npy, mmap_mode="r"))
                for line in idx.read_text().splitlines():
                    r = json.loads(line)
                    self.items.append(CachedUtterance(r["id"], r["text"], r["duration"], shard, r["offset"], r["n_frames"]))

    def __len__(self) -> int:
        return len(self.items)

    def frames(self, i: int) -> np.ndarray:
        """(T, C) float16 frames of utterance ``i``."""
        u = self.items[i]
        return self._shards[u.shard][u.offset : u.offset + u.n_frames]

    @property
    def dim(self) -> int:
        return int(self._shards[0].shape[1])
