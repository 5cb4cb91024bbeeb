"""Training checkpoints that resume exactly: weights, optimiser, scheduler, data position and every RNG.

A file is written to a temporary name in the same folder and renamed over the old one, so a run
killed mid-save leaves the previous checkpoint intact. The data order is a pure function of
(seed, epoch) (see ``batching``), so (epoch, batch index) plus the RNG states is all a resumed
run needs to replay the very same steps bit for bit.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from reallm_cli.errors import ReallmError

FORMAT = "reallm-train-checkpoint"
FORMAT_VERSION = 1

Generators = Mapping[str, "torch.Generator | np.random.Generator"]


class CheckpointError(ReallmError):
    """A training checkpoint that is missing, corrupt or not a training checkpoint."""


@dataclass(frozen=True)
class TrainPosition:
    step: int = 0  # optimiser steps done
    epoch: int = 0
    batch_index: int = 0  # index (in this rank's batch list of ``epoch``) of the next batch to run


@dataclass(frozen=True)
class TrainCheckpoint:
    model: dict
    position: TrainPosition
    optimizer: dict | None = None
    scheduler: dict | None = None
    rng: dict | None = None
    configs: dict = field(default_factory=dict)  # name -> asdict(config), to rebuild the model
    tokenizer: bytes | None = None  # the SentencePiece model proto
    extra: dict = field(default_factory=dict)  # anything else JSON-like (metrics, run name, ...)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or similar) wrapper."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def capture_rng_state(generators: Generators | None = None) -> dict:
    """Global torch / numpy / python RNG states, plus those of named generators."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
        "generators": {},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, gen in (generators or {}).items():
        if isinstance(gen, torch.Generator):
            state["generators"][name] = {"kind": "torch", "state": gen.get_state()}
        elif isinstance(gen, np.random.Generator):
            state["generators"][name] = {"kind": "numpy", "state": gen.bit_generator.state}
        else:
            raise TypeError(f"generator {name!r} is a {type(gen).__name__}, not a torch or numpy generator")
    return state


def restore_rng_state(state: dict, generators: Generators | None = None) -> None:
    """Put back what ``capture_rng_state`` saved (named generators are restored in place)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in (generators or {}).items():
        saved = state["generators"].get(name)
        if saved is None:
            raise CheckpointError(f"the checkpoint has no state for the generator {name!r}")
        if isinstance(gen, torch.Generator):
            gen.set_state(saved["state"])
        else:
            gen.bit_generator.state = saved["state"]


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    position: TrainPosition,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    configs: Mapping[str, dict] | None = None,
    tokenizer_bytes: bytes | None = None,
    extra: Mapping | None = None,
    generators: Generators | None = None,
    save_rng: bool = True,
) -> Path:
    """Write a training checkpoint atomically (temp file, fsync, rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "position": {"step": position.step, "epoch": position.epoch, "batch_index": position.batch_index},
        "rng": capture_rng_state(generators) if save_rng else None,
        "configs": dict(configs or {}),
        "tokenizer": bytes(tokenizer_bytes) if tokenizer_bytes is not None else None,
        "extra": dict(extra or {}),
    }
    atomic_torch_save(path, payload)
    return path


def atomic_torch_save(path: Path, obj: object) -> None:
    """Temp file in the same folder, fsync, rename: a kill mid-save keeps the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> TrainCheckpoint:
    """Read a training checkpoint (tensors only, no arbitrary code: ``weights_only`` loading)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        d = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many kinds for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a reallm training checkpoint")
    if d.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {d.get('version')}, this program reads {FORMAT_VERSION}")
    return TrainCheckpoint(
        model=d["model"],
        position=TrainPosition(**d["position"]),
        optimizer=d["optimizer"],
        scheduler=d["scheduler"],
        rng=d["rng"],
        configs=d["configs"],
        tokenizer=d["tokenizer"],
        extra=d["extra"],
    )


def restore_checkpoint(
    checkpoint: TrainCheckpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    *,
    generators: Generators | None = None,
    restore_rng: bool = True,
) -> TrainPosition:
    """Load a checkpoint's states into freshly built objects; returns where training continues."""
    try:
        unwrap_model(model).load_state_dict(checkpoint.model)
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint does not fit this model: {str(exc).splitlines()[0]}") from None
    if optimizer is not None:
        if checkpoint.optimizer is None:
            raise CheckpointError("the checkpoint has no optimiser state")
        optimizer.load_state_dict(checkpoint.optimizer)
    if scheduler is not None:
        if checkpoint.scheduler is None:
            raise CheckpointError("the checkpoint has no scheduler state")
        scheduler.load_state_dict(checkpoint.scheduler)
    if restore_rng:
        if checkpoint.rng is None:
            raise CheckpointError("the checkpoint was saved without RNG states")
        restore_rng_state(checkpoint.rng, generators)
    return checkpoint.position


class CheckpointTimer:
    """Says when a checkpoint is due: every ``interval_minutes`` of wall time since the last save."""

    def __init__(self, interval_minutes: float, clock: Callable[[], float] = time.monotonic):
        if interval_minutes <= 0:
            raise CheckpointError(f"checkpoint interval must be positive, got {interval_minutes} minutes")
        self.interval_s = 60.0 * interval_minutes
        self.clock = clock
        self.last_s = clock()

    def due(self) -> bool:
        return self.clock() - self.last_s >= self.interval_s

    def reset(self) -> None:
        """Call after saving."""
        self.last_s = self.clock()
