"""The training loop every stage shares: AdamW, warm-up + cosine, clipping, timed checkpoints, exact resume.

Exact resume needs no RNG state from the checkpoint: the data order is a pure function of (seed,
epoch) (see ``batching``), and the random state of every step (dropout, masks drawn from ``gen``)
is re-seeded from (seed, step, rank) before the step runs. So (step, epoch, batch index) is all a
resumed run needs, on every rank of a data-parallel run alike, even though only rank 0 saves.

Data parallel: under torchrun every rank runs this same loop on its own share of the batches;
gradients are averaged across ranks after ``backward`` (rank 0's weights are broadcast first), so
every rank keeps identical weights without wrapping the model in DDP (the loss functions call
sub-modules directly, which DDP's forward hooks would miss). Rank 0 alone logs and saves.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn as nn

from reallm_cli.train.checkpoint import CheckpointError, CheckpointTimer, atomic_torch_save, unwrap_model
from reallm_cli.train.distributed import DistInfo, all_reduce_mean
from reallm_cli.train.schedule import (
    OptimConfig,
    WarmupCosine,
    autocast,
    build_adamw,
    build_scheduler,
    clip_gradients,
    lr_multiplier,
)

LOOP_FORMAT = "reallm-loop-checkpoint/1"


@dataclass(frozen=True)
class LoopConfig:
    total_steps: int
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_minutes: float = 5.0
    log_every: int = 50
    seed: int = 0
    min_lr_ratio: float = 0.05  # the cosine decays to this share of the peak
    bf16: bool | None = None  # bf16 autocast: None = where native (CUDA with bf16), False = never, True = always
    progress: bool | None = None  # Rich progress bar on stderr: None = when stderr is a terminal

    def optim_config(self) -> OptimConfig:
        return OptimConfig(lr=self.lr, weight_decay=self.weight_decay, warmup_steps=self.warmup_steps,
                           total_steps=self.total_steps, min_lr_ratio=self.min_lr_ratio, grad_clip=self.grad_clip)


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.05) -> float:
    """LR multiplier: linear warm-up, then cosine decay to ``floor`` of the peak (see ``schedule``)."""
    return lr_multiplier(step, warmup, total, floor)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of one training step on one rank: independent streams, reproducible from the numbers alone."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _save(path: Path, state: dict) -> None:
    atomic_torch_save(path, state)


def load_loop_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by ``run_loop`` (a dict with model, optimizer, step, epoch, batch_idx, ...)."""
    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or foreign files raise many kinds
        raise CheckpointError(f"{path}: not a readable training checkpoint ({type(exc).__name__})") from None
    if not isinstance(ck, dict) or not {"model", "optimizer", "step", "epoch", "batch_idx"} <= set(ck):
        raise CheckpointError(f"{path}: not a reallm training checkpoint")
    return ck


def _average_gradients(params: list[nn.Parameter], info: DistInfo) -> None:
    """Mean gradient over ranks, in one flat all-reduce (a parameter without a gradient counts as zero)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(info.device)
    torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.device)
        offset += n


def _broadcast_parameters(model: nn.Module, info: DistInfo) -> None:
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            torch_dist.broadcast(t.data, src=0)


class _Progress:
    """A Rich progress bar on stderr (rank 0), showing loss, learning rate and audio seconds per second."""

    def __init__(self, total: int, start: int, description: str):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[speed]} audio-s/s"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        self.task = self.progress.add_task(description, total=total, completed=start, loss="-", lr="-", speed="-")
        self.progress.start()

    def update(self, step: int, loss: float, lr: float, speed: float) -> None:
        self.progress.update(self.task, completed=step, loss=f"{loss:.3f}", lr=f"{lr:.1e}", speed=f"{speed:.0f}")

    def close(self) -> None:
        self.progress.stop()


def run_loop(
    model: nn.Module,
    loss_fn: Callable[[object, torch.Generator], tuple[torch.Tensor, dict]],
    epoch_batches: Callable[[int], list] | None,
    make_batch: Callable[[object], object] | None,
    cfg: LoopConfig,
    checkpoint: str | Path,
    log: Callable[[str], None] = print,
    extra_state: dict | None = None,
    *,
    dist: DistInfo | None = None,
    batch_iter: Callable[[int, int], Iterable] | None = None,
    description: str = "training",
) -> dict:
    """Train ``model`` for ``cfg.total_steps`` steps; resumes from ``checkpoint`` when it exists.

    Batches come either from ``epoch_batches(epoch)`` (a list of batch descriptions, each turned
    into a batch by ``make_batch``), or from ``batch_iter(epoch, start_batch)`` (an iterable of
    ready batches from that position on, e.g. a DataLoader). ``loss_fn(batch, gen)`` returns the
    loss and a stats dict; its ``audio_s`` (seconds of audio in the batch) gives the throughput.
    The checkpoint holds the model, optimiser, scheduler, position, this config and ``extra_state``
    (e.g. the model's configs and tokenizer); it is written every ``cfg.checkpoint_minutes`` and at
    the end. Returns ``{"steps", "epochs", "loss", "audio_s", "wall_s", "audio_s_per_s"}``.
    """
    if (batch_iter is None) == (epoch_batches is None or make_batch is None):
        raise ValueError("pass either batch_iter or both epoch_batches and make_batch")
    info = dist or DistInfo()
    checkpoint = Path(checkpoint)
    core = unwrap_model(model)
    params = [p for p in core.parameters() if p.requires_grad]
    ocfg = cfg.optim_config()
    opt = build_adamw(core, ocfg)
    sched = build_scheduler(opt, ocfg)
    gen = torch.Generator()
    step, epoch, batch_idx = 0, 0, 0
    if checkpoint.exists():
        ck = load_loop_checkpoint(checkpoint)
        try:
            core.load_state_dict(ck["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{checkpoint} does not fit this model: {str(exc).splitlines()[0]}") from None
        if len(ck["optimizer"]["param_groups"]) != len(opt.param_groups):
            # Written before weight decay was split into groups: rebuild the optimiser the old way.
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=ocfg.betas)
            sched = build_scheduler(opt, ocfg)
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        # The schedule follows this run's config (a resumed run may be given more steps).
        sched.lr_lambdas[0] = WarmupCosine(cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)
        step, epoch, batch_idx = ck["step"], ck["epoch"], ck["batch_idx"]
        for group, base in zip(opt.param_groups, sched.base_lrs):
            group["lr"] = base * sched.lr_lambdas[0](step)
        if info.is_main:
            log(f"resumed from {checkpoint} at step {step} (epoch {epoch}, batch {batch_idx})")
    if info.enabled:
        _broadcast_parameters(core, info)

    def save() -> None:
        if not info.is_main:
            return
        _save(checkpoint, {
            "format": LOOP_FORMAT, "model": core.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "generator": gen.get_state(), "step": step, "epoch": epoch,
            "batch_idx": batch_idx, "loop_config": asdict(cfg), **(extra_state or {}),
        })

    def batches_from(ep: int, start: int):
        if batch_iter is not None:
            return iter(batch_iter(ep, start))
        return (make_batch(b) for b in epoch_batches(ep)[start:])

    show_bar = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    bar = _Progress(cfg.total_steps, step, description) if (show_bar and info.is_main and step < cfg.total_steps) else None
    device = next(core.parameters()).device
    model.train()
    timer = CheckpointTimer(cfg.checkpoint_minutes)
    t0 = time.perf_counter()
    seen_s = win_s = 0.0
    win_loss, win_n, skipped, last_loss = 0.0, 0, 0, math.nan
    win_t0 = t0
    it = batches_from(epoch, batch_idx)
    empty_epochs = 0
    start_step = step
    try:
        while step < cfg.total_steps:
            batch = next(it, None)
            if batch is None:
                if batch_idx == 0:
                    empty_epochs += 1
                    if empty_epochs > 1:
                        raise CheckpointError("the data gives no batches (is the manifest or this rank's share empty?)")
                epoch, batch_idx = epoch + 1, 0
                it = batches_from(epoch, 0)
                continue
            empty_epochs = 0
            s = step_seed(cfg.seed, step, info.rank)
            torch.manual_seed(s)
            gen.manual_seed(s)
            with autocast(device, cfg.bf16):
                loss, stats = loss_fn(batch, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if info.enabled:
                _average_gradients(params, info)
            norm = clip_gradients(params, cfg.grad_clip)
            if math.isfinite(norm):
                opt.step()
            else:  # every rank sees the same averaged gradient, so all skip together
                skipped += 1
            sched.step()
            step += 1
            batch_idx += 1
            win_loss += float(loss.detach())
            win_n += 1
            win_s += float(stats.get("audio_s", 0.0))
            if bar is not None:  # rank 0's own share of the audio, scaled: a live estimate without a collective
                speed = (seen_s + win_s * info.world_size) / max(time.perf_counter() - t0, 1e-9)
                bar.update(step, win_loss / win_n, sched.get_last_lr()[0], speed)
            if step % cfg.log_every == 0 or step == cfg.total_steps:
                # Collective calls: every rank reaches them at the same steps.
                last_loss = all_reduce_mean(win_loss / win_n, info)
                win_total_s = all_reduce_mean(win_s, info) * info.world_size
                seen_s += win_total_s
                el = time.perf_counter() - win_t0
                if info.is_main:
                    log(f"step {step}/{cfg.total_steps} epoch {epoch} loss {last_loss:.4f} "
                        f"lr {sched.get_last_lr()[0]:.2e} {win_total_s / max(el, 1e-9):.1f} audio-s/s"
                        + (f" ({skipped} steps skipped: non-finite gradients)" if skipped else ""))
                win_loss, win_n, win_s, win_t0 = 0.0, 0, 0.0, time.perf_counter()
            if info.is_main and timer.due():
                save()
                timer.reset()
        if step > start_step or not checkpoint.exists():  # a finished checkpoint keeps its time stamp
            save()
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    wall_s = time.perf_counter() - t0
    return {"steps": step, "epochs": epoch, "loss": last_loss, "audio_s": seen_s, "wall_s": wall_s,
            "audio_s_per_s": seen_s / max(wall_s, 1e-9)}
