import numpy as np
import pytest
import torch
import torch.nn as nn

from reallm_cli.train.batching import DurationBatchSampler
from reallm_cli.train.checkpoint import (
    CheckpointError,
    CheckpointTimer,
    TrainPosition,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from reallm_cli.train.schedule import OptimConfig, build_adamw, build_scheduler, clip_gradients

N_ITEMS = 40
TOTAL_STEPS = 23  # crosses epoch boundaries (about 7 batches an epoch)
OPTIM = OptimConfig(lr=3e-3, warmup_steps=5, total_steps=TOTAL_STEPS)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))

    def forward(self, x):
        return self.net(x)


def _data():
    g = torch.Generator().manual_seed(42)
    x = torch.randn(N_ITEMS, 6, generator=g)
    y = (x[:, 0] > 0).long()
    durations = (1.0 + torch.rand(N_ITEMS, generator=g) * 4).tolist()
    return x, y, durations


def _train(ckpt_path, stop_at_step=None, resume=False, init_seed=0, restore_rng=True):
    """Train to TOTAL_STEPS; with ``stop_at_step`` save there and return None (the "kill")."""
    x, y, durations = _data()
    torch.manual_seed(init_seed)
    model = Tiny()
    opt = build_adamw(model, OPTIM)
    sched = build_scheduler(opt, OPTIM)
    sampler = DurationBatchSampler(durations, max_batch_s=30.0, seed=11)
    aug_rng = np.random.default_rng(5)  # stands in for on-the-fly augmentation
    torch.manual_seed(1234)  # dropout draws from the global torch RNG
    pos = TrainPosition()
    if resume:
        pos = restore_checkpoint(load_checkpoint(ckpt_path), model, opt, sched,
                                 generators={"aug": aug_rng}, restore_rng=restore_rng)
    step, epoch, bi = pos.step, pos.epoch, pos.batch_index
    while step < TOTAL_STEPS:
        batches = sampler.batches(epoch)
        if bi >= len(batches):
            epoch, bi = epoch + 1, 0
            continue
        if step == stop_at_step:
            save_checkpoint(ckpt_path, model=model, optimizer=opt, scheduler=sched,
                            position=TrainPosition(step, epoch, bi), configs={"optim": {"lr": OPTIM.lr}},
                            tokenizer_bytes=b"\x00spm-proto", generators={"aug": aug_rng})
            return None
        idx = batches[bi]
        noise = torch.from_numpy(aug_rng.normal(scale=0.1, size=(len(idx), 6))).float()
        loss = nn.functional.cross_entropy(model(x[idx] + noise), y[idx])
        opt.zero_grad()
        loss.backward()
        clip_gradients(model, OPTIM.grad_clip)
        opt.step()
        sched.step()
        step, bi = step + 1, bi + 1
    return model, opt


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    ref_model, ref_opt = _train(None)
    ckpt = tmp_path / "run" / "last.pt"
    assert _train(ckpt, stop_at_step=9) is None
    torch.manual_seed(999)  # a new process: different global RNG, different initial weights
    np.random.seed(3)
    model, opt = _train(ckpt, resume=True, init_seed=77)
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(ref_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    # and the comparison can fail: a resume that forgets the RNG states (dropout, augmentation) drifts
    drifted, _ = _train(ckpt, resume=True, init_seed=77, restore_rng=False)
    assert not torch.equal(drifted.net[0].weight, ref_model.net[0].weight)


def test_checkpoint_contents_and_errors(tmp_path):
    path = tmp_path / "c.pt"
    _train(path, stop_at_step=4)
    ck = load_checkpoint(path)
    assert ck.position == TrainPosition(step=4, epoch=0, batch_index=4)
    assert ck.tokenizer == b"\x00spm-proto" and ck.configs == {"optim": {"lr": OPTIM.lr}}
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind

    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    torch.save({"weights": torch.zeros(2)}, junk)
    with pytest.raises(CheckpointError, match="not a reallm training checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        restore_checkpoint(ck, nn.Linear(2, 2), restore_rng=False)


def test_a_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    model = nn.Linear(2, 2)
    save_checkpoint(path, model=model, position=TrainPosition(step=1))

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, position=TrainPosition(step=2))
    monkeypatch.undo()
    assert load_checkpoint(path).position.step == 1
    assert list(tmp_path.iterdir()) == [path]


def test_checkpoint_timer():
    now = [100.0]
    timer = CheckpointTimer(interval_minutes=5, clock=lambda: now[0])
    assert not timer.due()
    now[0] += 299
    assert not timer.due()
    now[0] += 1
    assert timer.due()
    timer.reset()
    assert not timer.due()
    with pytest.raises(CheckpointError):
        CheckpointTimer(0)
