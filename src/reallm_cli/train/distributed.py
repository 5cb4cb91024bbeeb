"""Data-parallel training from torchrun's environment; a no-op when run as one plain process.

``torchrun --nproc_per_node=N script.py`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; ``init_distributed`` reads them, joins the process group (gloo on CPU, NCCL on GPUs)
and returns a ``DistInfo``. Without them (or with WORLD_SIZE=1) nothing is initialised and every
helper here does the single-process thing, so one training script serves both cases.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

from reallm_cli.errors import ReallmError
from reallm_cli.train.checkpoint import unwrap_model

__all__ = [
    "DistInfo", "DistributedError", "init_distributed", "wrap_model", "unwrap_model",
    "barrier", "all_reduce_mean", "broadcast_object", "log_main", "cleanup",
]


class DistributedError(ReallmError):
    """A distributed launch with missing or inconsistent settings."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None when not distributed

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 logs, evaluates and saves checkpoints."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(
    backend: str | None = None, env: Mapping[str, str] | None = None, timeout_s: float = 600.0
) -> DistInfo:
    """Join the process group described by torchrun's variables; one process -> ``DistInfo()`` and no group."""
    env = os.environ if env is None else env
    world_size = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local_rank = _env_int(env, "LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedError(f"RANK={rank} does not fit WORLD_SIZE={world_size}")
    if world_size == 1:
        return DistInfo()
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise DistributedError(f"WORLD_SIZE={world_size} but {' and '.join(missing)} unset; launch with torchrun")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def wrap_model(model: nn.Module, info: DistInfo, **ddp_kwargs) -> nn.Module:
    """DistributedDataParallel around ``model`` when distributed (rank 0's weights are broadcast), else ``model``."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if info.backend == "nccl":
        model = model.to(info.device)
        return DistributedDataParallel(model, device_ids=[info.local_rank], **ddp_kwargs)
    return DistributedDataParallel(model, **ddp_kwargs)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (e.g. while rank 0 writes a checkpoint the others will read)."""
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: float | torch.Tensor, info: DistInfo) -> float:
    """Mean of a scalar over ranks (for logging losses); the value itself when not distributed."""
    t = value.detach().float().reshape(()) if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    if not info.enabled:
        return float(t)
    t = t.to(info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t) / info.world_size


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Rank ``src``'s picklable object on every rank (e.g. a run folder name chosen by rank 0)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def log_main(info: DistInfo, message: str) -> None:
    """Progress to stderr, from rank 0 only, so N processes do not print N copies."""
    if info.is_main:
        print(message, file=sys.stderr, flush=True)


def cleanup(info: DistInfo) -> None:
    """Leave the process group (call at the end of training, on every rank).

    A barrier first: a rank that tears its connections down while another is still inside the last
    collective (a broadcast it already sent) can make the other abort with SIGABRT; this was seen once
    in a full test run with gloo."""
    if info.enabled and dist.is_initialized():
        barrier(info)
        dist.destroy_process_group()
