"""Optimiser, learning-rate schedule, gradient clipping and mixed precision, configured by one dataclass."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn

from reallm_cli.errors import ReallmError


class ScheduleError(ReallmError):
    """Optimiser or schedule settings that make no sense."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_steps: int = 500
    total_steps: int = 10_000
    min_lr_ratio: float = 0.05  # the cosine decays to this share of the peak
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping


def build_adamw(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: biases and norm gains are not pulled towards zero."""
    if config.lr <= 0:
        raise ScheduleError(f"learning rate must be positive, got {config.lr}")
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ScheduleError("the model has no trainable parameters")
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=config.lr, betas=config.betas, eps=config.eps
    )


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Share of the peak LR at ``step`` (0-based): linear warm-up to 1, then cosine down to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """``lr_multiplier`` as a picklable object, so LambdaLR can save it in its state dict."""

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0):
        if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ScheduleError(
                f"need warmup_steps >= 0, total_steps >= 1 and 0 <= min_lr_ratio <= 1; "
                f"got {warmup_steps}, {total_steps}, {min_lr_ratio}"
            )
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, self.warmup_steps, self.total_steps, self.min_lr_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine schedule; call ``scheduler.step()`` once after every ``optimizer.step()``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(config.warmup_steps, config.total_steps, config.min_lr_ratio)
    )


def clip_gradients(parameters: Iterable[torch.Tensor] | nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm to ``max_norm`` (0 = only measure); returns the norm before clipping.

    A non-finite norm is returned as is (and nothing is scaled) so the caller can skip that step.
    """
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    grads = [p for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.detach(), 2.0) for p in grads]), 2.0)
    norm_f = float(norm)
    if max_norm > 0 and math.isfinite(norm_f) and norm_f > max_norm:
        scale = max_norm / (norm_f + 1e-6)
        for p in grads:
            p.grad.detach().mul_(scale)
    return norm_f


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 autocast is native (and fast) on this device; CPU counts as no."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return False


def autocast(device: torch.device | str, enabled: bool | None = None, dtype: torch.dtype = torch.bfloat16):
    """Mixed-precision context: on by default where bf16 is native, off on CPU unless ``enabled=True``.

    CPU bf16 autocast works in torch but is often slower than fp32 on laptop CPUs, hence opt-in.
    """
    device = torch.device(device)
    if enabled is None:
        enabled = bf16_supported(device)
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
