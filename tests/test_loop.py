"""run_loop: exact resume after a kill (list API), what a checkpoint holds, progress on stderr, bf16 flag."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from reallm_cli.train.loop import LoopConfig, load_loop_checkpoint, run_loop, step_seed


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 1))


def _data():
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(40, 4, generator=g)
    return xs, xs.sum(1, keepdim=True)


def _epoch_batches(epoch: int) -> list[list[int]]:
    order = torch.randperm(40, generator=torch.Generator().manual_seed(epoch)).tolist()
    return [order[i : i + 8] for i in range(0, 40, 8)]  # 5 batches an epoch: 12 steps cross 2 epochs


def _loss_fn(model, die_at: int | None = None):
    xs, ys = _data()
    calls = []

    def loss_fn(idx, gen):
        calls.append(1)
        if die_at is not None and len(calls) == die_at:
            raise KeyboardInterrupt
        noise = torch.randn(len(idx), 1, generator=gen) * 0.01  # uses the step's generator
        return ((model(xs[idx]) - ys[idx] - noise) ** 2).mean(), {"audio_s": 1.0 * len(idx)}

    return loss_fn


CFG = LoopConfig(total_steps=12, lr=1e-2, warmup_steps=2, checkpoint_minutes=1e-9, log_every=4, progress=False)


def test_killed_run_resumes_exactly(tmp_path):
    straight = _model()
    out = run_loop(straight, _loss_fn(straight), _epoch_batches, lambda b: b, CFG, tmp_path / "a.ckpt", log=lambda m: None)
    assert out["steps"] == 12 and out["epochs"] == 2 and out["audio_s"] == 12 * 8

    killed = _model()
    with pytest.raises(KeyboardInterrupt):
        run_loop(killed, _loss_fn(killed, die_at=8), _epoch_batches, lambda b: b, CFG, tmp_path / "b.ckpt", log=lambda m: None)
    assert load_loop_checkpoint(tmp_path / "b.ckpt")["step"] == 7
    resumed, msgs = _model(), []
    run_loop(resumed, _loss_fn(resumed), _epoch_batches, lambda b: b, CFG, tmp_path / "b.ckpt", log=msgs.append)
    assert any("resumed" in m and "step 7" in m for m in msgs)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    # And training did something: the weights left their initial values.
    assert not torch.equal(straight[0].weight, _model()[0].weight)


def test_a_finished_run_leaves_its_checkpoint_alone(tmp_path):
    """Rerunning a finished stage takes no step and does not rewrite the checkpoint, whose time stamp tells
    the recipe's later stages (the alignment after the teacher) whether they are up to date."""
    ckpt = tmp_path / "a.ckpt"
    model = _model()
    run_loop(model, _loss_fn(model), _epoch_batches, lambda b: b, CFG, ckpt, log=lambda m: None)
    stamp = ckpt.stat().st_mtime_ns
    again = _model()
    out = run_loop(again, _loss_fn(again), _epoch_batches, lambda b: b, CFG, ckpt, log=lambda m: None)
    assert out["steps"] == 12 and ckpt.stat().st_mtime_ns == stamp
    assert torch.equal(again[0].weight, model[0].weight)  # the trained weights were loaded
    # given more steps, it trains on and saves
    more = _model()
    out = run_loop(more, _loss_fn(more), _epoch_batches, lambda b: b, replace(CFG, total_steps=14), ckpt,
                   log=lambda m: None)
    assert out["steps"] == 14 and load_loop_checkpoint(ckpt)["step"] == 14


def test_checkpoint_holds_what_a_run_needs(tmp_path):
    model = _model()
    run_loop(model, _loss_fn(model), _epoch_batches, lambda b: b, CFG, tmp_path / "c.ckpt", log=lambda m: None,
             extra_state={"configs": {"kind": "test"}, "tokenizer": b"proto"})
    ck = load_loop_checkpoint(tmp_path / "c.ckpt")
    assert ck["step"] == 12 and ck["loop_config"]["total_steps"] == 12
    assert ck["configs"] == {"kind": "test"} and ck["tokenizer"] == b"proto"
    assert set(ck["model"]) == set(model.state_dict()) and ck["optimizer"]["state"]


def test_step_seeds_differ_by_step_and_rank():
    seeds = {step_seed(0, s, r) for s in range(50) for r in range(4)}
    assert len(seeds) == 200 and step_seed(0, 3, 1) == step_seed(0, 3, 1)


def test_progress_bar_and_bf16_flag(tmp_path, capsys):
    model = _model()
    cfg = LoopConfig(total_steps=3, lr=1e-2, warmup_steps=1, progress=True, bf16=True, log_every=100)
    out = run_loop(model, _loss_fn(model), _epoch_batches, lambda b: b, cfg, tmp_path / "d.ckpt", log=lambda m: None)
    assert out["steps"] == 3 and out["loss"] == out["loss"]  # finite under bf16 autocast
    err = capsys.readouterr().err
    assert "audio-s/s" in err and "3/3" in err


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    from reallm_cli.train.checkpoint import CheckpointError

    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    model = _model()
    with pytest.raises(CheckpointError, match="not a readable"):
        run_loop(model, _loss_fn(model), _epoch_batches, lambda b: b, CFG, tmp_path / "bad.ckpt", log=lambda m: None)


def test_resumes_a_checkpoint_of_the_previous_loop_format(tmp_path):
    # recipes/default/train.py runs for hours; its checkpoints from before the loop used schedule.py
    # (one AdamW parameter group, a lambda schedule) must still resume.
    from reallm_cli.train.loop import warmup_cosine

    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 2, 12))
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "generator": torch.Generator().get_state(), "step": 5, "epoch": 1, "batch_idx": 0, "loop_config": {}},
               tmp_path / "old.ckpt")
    msgs = []
    out = run_loop(model, _loss_fn(model), _epoch_batches, lambda b: b, CFG, tmp_path / "old.ckpt", log=msgs.append)
    assert "step 5" in msgs[0] and out["steps"] == 12 and out["audio_s"] == 7 * 8
    assert torch.load(tmp_path / "old.ckpt", weights_only=False)["step"] == 12
