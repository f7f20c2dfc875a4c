"""A 2-process EM run (gloo on CPU) equals the 1-process run of the same config."""

import os
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp

from emdm import DenseOperator, EDMDenoiser, VESchedule
from emdm.distributed import Context, init
from emdm.em import EMConfig, run_em
from emdm.errors import UserError
from emdm.nn import TimeMLP
from emdm.observation import Observation
from emdm.provenance import provenance
from emdm.threads import set_threads

SCHEDULE = VESchedule(1e-3, 10.0)
# 3 E-step batches (the last one short), so that the ranks hold different numbers of them
CFG = EMConfig(
    iterations=2,
    train_steps=12,
    batch_size=32,
    steps=6,
    sample_batch=80,
    seed=5,
    seeding="batch",
    ema=0.9,
    mean_samples=100,
)


def toy(n=200):
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n, 2), generator=g) @ torch.tensor([[1.0, 0.0], [0.8, 0.3]]).T
    A = torch.randn((n, 1, 2), generator=g)
    A = A / A.norm(dim=-1, keepdim=True)
    y = (A @ x[..., None])[..., 0] + 0.05 * torch.randn((n, 1), generator=g)
    return Observation(DenseOperator(A), y, 0.05**2), torch.randn((n, 2), generator=g)


def model():
    torch.manual_seed(0)
    return EDMDenoiser(TimeMLP(2, emb_features=16, hidden_features=(32, 32)), emb_features=16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, world, port, out, fail_rank, full_disk=False):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    set_threads(1)
    ctx = init("gloo", timeout=60)
    obs, q0 = toy()
    denoiser = model()
    if rank == fail_rank:
        denoiser.network.forward = None  # this rank dies at its first M-step
    if full_disk:  # every rank sees 1 kB free: rank 0 refuses, and every rank must stop
        usage = shutil.disk_usage(out.parent)
        shutil.disk_usage = lambda path: usage._replace(free=1000)
        try:
            run_em(denoiser, obs, q0, CFG, SCHEDULE, directory=out, ctx=ctx)
        except UserError as error:
            (out.parent / f"refused{rank}.txt").write_text(str(error))
        return
    samples = run_em(denoiser, obs, q0, CFG, SCHEDULE, directory=out, ctx=ctx)
    torch.save({"samples": samples, "model": denoiser.state_dict()}, out / f"rank{rank}.pt")


def group_of_one(rank, out):
    os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()), EMDM_PROCESS_GROUP="1")  # fmt: skip
    set_threads(1)
    ctx = init("gloo", timeout=60)
    assert ctx.active and ctx.world == 1
    denoiser = model()
    samples = run_em(denoiser, *toy(), CFG, SCHEDULE, directory=out, ctx=ctx)
    processes = provenance()["processes"]
    torch.save({"samples": samples, "model": denoiser.state_dict(), "processes": processes},
               out / "rank0.pt")  # fmt: skip


def test_a_group_of_one_goes_through_the_collectives_and_equals_no_group(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    set_threads(1)  # as the worker: the same matrix products to the bit
    try:
        single = model()
        reference = run_em(single, *toy(), CFG, SCHEDULE, directory=tmp_path / "plain")
    finally:
        set_threads(threads)  # not torch's setter: it breaks MKL's LU (see emdm.threads)
    mp.start_processes(group_of_one, (tmp_path / "group",), nprocs=1, start_method="spawn")
    state = torch.load(tmp_path / "group" / "rank0.pt", weights_only=True)
    assert state["processes"] == {"world": 1, "backend": "gloo"}  # recorded with each result
    torch.testing.assert_close(state["samples"], reference, rtol=0, atol=0)
    for key, value in single.state_dict().items():
        torch.testing.assert_close(state["model"][key], value, rtol=0, atol=0)
    monkeypatch.setenv("EMDM_PROCESS_GROUP", "yes")
    with pytest.raises(UserError, match=r"\$EMDM_PROCESS_GROUP must be 0 or 1, got 'yes'"):
        init("gloo")
    monkeypatch.setenv("EMDM_PROCESS_GROUP", "1")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(UserError, match=r"needs RANK, MASTER_ADDR, MASTER_PORT.*torchrun"):
        init("gloo")


def test_two_gloo_processes_agree_with_one(tmp_path):
    obs, q0 = toy()
    single = model()
    reference = run_em(single, obs, q0, CFG, SCHEDULE, directory=tmp_path / "one")

    out = tmp_path / "two"
    mp.start_processes(worker, (2, free_port(), out, -1), nprocs=2, start_method="spawn")
    for rank in range(2):
        state = torch.load(out / f"rank{rank}.pt", weights_only=True)
        # the same draws; only the order of the gradients' floating-point sums differs
        torch.testing.assert_close(state["samples"], reference, rtol=1e-4, atol=1e-4)
        for key, value in single.state_dict().items():
            torch.testing.assert_close(state["model"][key], value, rtol=1e-4, atol=1e-5)
    assert (out / "last.pt").exists() and (out / "config.json").exists()


def test_a_dying_rank_stops_the_others(tmp_path):
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(target=worker, args=(rank, 2, port, tmp_path, 1), daemon=True)
        for rank in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p.is_alive() for p in procs]
    for p in procs:
        p.kill()
    assert alive == [False, False], "a rank hung after its peer died"
    assert all(p.exitcode != 0 for p in procs)


def test_every_rank_stops_when_rank_0s_disk_is_too_small(tmp_path):
    mp.start_processes(worker, (2, free_port(), tmp_path / "run", -1, True), nprocs=2,
                       start_method="spawn")  # fmt: skip
    assert "has 1 kB free" in (tmp_path / "refused0.txt").read_text()
    assert "rank 0 refused the run" in (tmp_path / "refused1.txt").read_text()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_context_shards_and_splits():
    ctx = Context(rank=1, world=3)
    assert list(ctx.shard(8)) == [1, 4, 7]
    assert ctx.split(12) == slice(4, 8)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        ctx.split(10)
    with pytest.raises(ValueError, match="seeding='batch'"):
        obs, q0 = toy()
        cfg = EMConfig(iterations=1, train_steps=1, batch_size=2, steps=2)
        run_em(model(), obs, q0, cfg, SCHEDULE, ctx=Context(0, 2))
