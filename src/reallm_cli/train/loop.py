"""A small training loop: AdamW, warm-up + cosine decay, clipping, timed checkpoints, exact resume.

The data order is a pure function of (seed, epoch), and the checkpoint records (epoch, batch index)
and the RNG state, so a run killed at any point continues with the very batches it would have seen.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn


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


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.05) -> float:
    """LR multiplier: linear warm-up, then cosine decay to ``floor`` of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def run_loop(
    model: nn.Module,
    loss_fn: Callable[[object, torch.Generator], tuple[torch.Tensor, dict]],
    epoch_batches: Callable[[int], list],
    make_batch: Callable[[object], object],
    cfg: LoopConfig,
    checkpoint: str | Path,
    log: Callable[[str], None] = print,
    extra_state: dict | None = None,
) -> dict:
    """Train ``model`` for ``cfg.total_steps`` steps; resumes from ``checkpoint`` when it exists."""
    checkpoint = Path(checkpoint)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg.warmup_steps, cfg.total_steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    step, epoch, batch_idx = 0, 0, 0
    if checkpoint.exists():
        ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        gen.set_state(ck["generator"])
        step, epoch, batch_idx = ck["step"], ck["epoch"], ck["batch_idx"]
        log(f"resumed from {checkpoint} at step {step} (epoch {epoch}, batch {batch_idx})")

    def save() -> None:
        _save(checkpoint, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "generator": gen.get_state(), "step": step, "epoch": epoch, "batch_idx": batch_idx,
            "loop_config": asdict(cfg), **(extra_state or {}),
        })

    model.train()
    last_save = time.monotonic()
    t0, seen, run_loss, run_n, stats_acc = time.perf_counter(), 0.0, 0.0, 0, {}
    batches = epoch_batches(epoch)
    while step < cfg.total_steps:
        if batch_idx >= len(batches):
            epoch, batch_idx = epoch + 1, 0
            batches = epoch_batches(epoch)
        batch = make_batch(batches[batch_idx])
        loss, stats = loss_fn(batch, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        step += 1
        batch_idx += 1
        run_loss += float(loss)
        run_n += 1
        seen += stats.get("audio_s", 0.0)
        if step % cfg.log_every == 0 or step == cfg.total_steps:
            el = time.perf_counter() - t0
            log(f"step {step}/{cfg.total_steps} epoch {epoch} loss {run_loss / run_n:.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} {seen / el:.1f} audio-s/s")
            run_loss, run_n = 0.0, 0
        if time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
            save()
            last_save = time.monotonic()
    save()
    model.eval()
    return {"steps": step, "epochs": epoch}
