import contextlib
import math

import pytest
import torch
import torch.nn as nn

from reallm_cli.train.schedule import (
    OptimConfig,
    ScheduleError,
    autocast,
    build_adamw,
    build_scheduler,
    clip_gradients,
    lr_multiplier,
)


def test_warmup_then_cosine_shape():
    cfg = OptimConfig(lr=2e-3, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    model = nn.Linear(3, 3)
    opt = build_adamw(model, cfg)
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(130):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2e-3 / 10)
    assert lrs[9] == pytest.approx(2e-3)  # peak at the end of warm-up
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))
    assert lrs[60] == pytest.approx(2e-3 * (0.1 + 0.9 * 0.5))  # half way through the cosine
    assert lrs[110] == pytest.approx(2e-4) and lrs[-1] == pytest.approx(2e-4)  # floor, then flat
    assert lr_multiplier(0, 0, 10) == 1.0


def test_adamw_decays_matrices_only_and_scheduler_state_round_trips():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    cfg = OptimConfig(weight_decay=0.1, warmup_steps=2, total_steps=20)
    opt = build_adamw(model, cfg)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}
    sched = build_scheduler(opt, cfg)
    for _ in range(5):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_adamw(model, cfg)
    sched2 = build_scheduler(opt2, cfg)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 5 and sched2.get_last_lr() == sched.get_last_lr()
    with pytest.raises(ScheduleError):
        build_adamw(model, OptimConfig(lr=0))


def test_clip_gradients_matches_torch_and_reports_nonfinite():
    torch.manual_seed(0)
    a, b = nn.Linear(5, 5), nn.Linear(5, 5)
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 5)
    (a(x) ** 2).sum().backward()
    (b(x) ** 2).sum().backward()
    ours = clip_gradients(a, 0.5)
    ref = float(torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5))
    assert ours == pytest.approx(ref, rel=1e-5) and ours > 0.5
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6)
    total = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in a.parameters()))
    assert total == pytest.approx(0.5, rel=1e-4)
    a.weight.grad[0, 0] = float("nan")
    before = a.bias.grad.clone()
    assert not math.isfinite(clip_gradients(a, 0.5))
    assert torch.equal(a.bias.grad, before)  # nothing scaled by a NaN


def test_autocast_off_on_cpu_unless_asked():
    assert isinstance(autocast("cpu"), contextlib.nullcontext)
    with autocast("cpu", enabled=True):
        y = nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    with autocast("cpu"):
        y = nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.float32
