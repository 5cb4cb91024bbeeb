import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from reallm_cli.train.distributed import (
    DistInfo,
    DistributedError,
    all_reduce_mean,
    broadcast_object,
    cleanup,
    init_distributed,
    wrap_model,
)

WORLD = 2
STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    env = {"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    info = init_distributed(env=env, timeout_s=60)
    assert info.enabled and info.backend == "gloo" and info.rank == rank
    torch.manual_seed(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = wrap_model(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)), info)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(rank)  # each rank sees different data
    losses = []
    for _ in range(STEPS):
        x = torch.randn(8, 4, generator=g)
        loss = ((model(x).squeeze(1) - x.sum(1)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(all_reduce_mean(loss, info))
    run_name = broadcast_object(f"run-from-rank-{rank}", info)
    torch.save({"params": [p.detach().clone() for p in model.module.parameters()], "losses": losses,
                "run_name": run_name}, f"{out_dir}/rank{rank}.pt")
    cleanup(info)


def test_two_cpu_processes_keep_identical_parameters(tmp_path):
    # spawn, not fork: forking a process whose torch thread pools already ran (earlier tests) can
    # deadlock the children; that was seen here in the full suite.
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)
    assert r0["losses"] == r1["losses"]  # the all-reduced loss is the same number everywhere
    assert r0["run_name"] == r1["run_name"] == "run-from-rank-0"
    # training really happened (rank 0's initial weights moved) ...
    torch.manual_seed(100)
    init = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    assert not torch.equal(init[0].weight, r0["params"][0])


def test_single_process_is_a_no_op():
    info = init_distributed(env={})
    assert info == DistInfo() and not info.enabled and info.is_main
    model = nn.Linear(2, 2)
    assert wrap_model(model, info) is model
    assert all_reduce_mean(torch.tensor(2.5), info) == 2.5
    assert broadcast_object({"a": 1}, info) == {"a": 1}
    assert init_distributed(env={"WORLD_SIZE": "1", "RANK": "0"}) == DistInfo()


def test_bad_environment_is_refused():
    with pytest.raises(DistributedError, match="MASTER_ADDR"):
        init_distributed(env={"WORLD_SIZE": "2", "RANK": "0"})
    with pytest.raises(DistributedError, match="does not fit"):
        init_distributed(env={"WORLD_SIZE": "2", "RANK": "5"})
    with pytest.raises(DistributedError, match="not an integer"):
        init_distributed(env={"WORLD_SIZE": "two"})
