r"""`python -m bench.profile` (`bench/profile.py`): every target runs at a tiny size and writes
its trace, table, CSV and JSON; each emdm region is counted as often as the algorithm calls it;
the self time of a region is its total minus its nested regions; bad input stops before work."""

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.profile import TARGETS, main, region_summary, write_trace
from emdm.profiling import (
    BACKWARD,
    FORWARD,
    LOSS,
    OPERATOR,
    OPTIMIZER,
    REGIONS,
    SOLVE,
    VJP,
    region,
)
from reproduce.fig3 import QUICK as FIG3
from reproduce.table1 import QUICK as TABLE1

ROOT = Path(__file__).resolve().parent.parent


def steps(target: str) -> int:
    r"""Iterations profiled: 2; 1 on images, whose U-Net makes many events to parse."""
    return 1 if target.endswith("-image") else 2


@pytest.fixture(scope="module")
def profiles(tmp_path_factory) -> Path:
    r"""Every target profiled once (batch 4, no warm-up), into one folder."""
    out = tmp_path_factory.mktemp("profile")
    # in a process of its own: --threads 1 (threads that share 2 busy cores wait for each other
    # at every op) changes torch's thread count, after which MKL's batched linalg can fail
    # (tests/test_bench.py) in the tests that run after these
    code = (
        "import sys\n"
        "from bench.profile import main\n"
        "for target, steps in zip(sys.argv[2::2], sys.argv[3::2]):\n"
        "    main([target, '--steps', steps, '--warmup', '0', '--batch', '4', '--threads', '1',\n"
        "          '--quiet', '--out', sys.argv[1]])\n"
    )
    args = [str(arg) for target in TARGETS for arg in (target, steps(target))]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code, str(out), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    return out


def calls(sampler: str, steps: int) -> int:
    r"""The posterior denoiser's calls of a sampler run: `pc` predicts and corrects once per
    step, `ddpm` steps once; both end with one more call."""
    return {"pc": 2, "ddpm": 1}[sampler] * steps + 1


def expected(target: str) -> dict[str, int]:
    r"""The calls of each region in `steps(target)` iterations of `target`, from the
    algorithm: an MMPS call runs one forward, its solve (CG: one VJP per iteration; the dense
    solve of the manifold's 2 observed values: one VJP each) and one final VJP, one A in the
    residual and one Aᵀ in the correction; an Adam step one loss, backward and optimizer
    step."""
    em = TABLE1.em if target.endswith("-image") else FIG3.em
    part, k = target.removesuffix("-image"), steps(target)
    train = {LOSS: k, BACKWARD: k, OPTIMIZER: k}
    if part == "mstep":
        return train
    if part == "mmps":  # CG always
        n, solve_vjps = k, em.cg_iterations
    else:  # e_step uses the preset's solver, the sampler target CG
        n = calls(em.sampler, k)
        dense = em.solver == "dense" and part in ("estep", "lap")
        solve_vjps = 2 if dense else em.cg_iterations
    mmps = {FORWARD: n, VJP: n * (solve_vjps + 1), SOLVE: n, OPERATOR: 2 * n}
    return {**train, **mmps} if part == "lap" else mmps


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_writes_its_files_and_counts_each_region(profiles, target):
    name = f"{target}_cpu"
    for suffix in (".txt", ".csv", ".json"):
        assert (profiles / f"{name}{suffix}").stat().st_size > 0
    meta = json.loads((profiles / f"{name}.json").read_text())
    trace = profiles / meta["extra"]["trace"]
    opened = gzip.open(trace, "rt") if trace.suffix == ".gz" else open(trace)
    with opened as f:
        events = json.load(f)["traceEvents"]
    assert {e.get("name") for e in events} >= {r for r, n in expected(target).items() if n}
    assert "Self CPU" in (profiles / f"{name}.txt").read_text()

    regions, want = meta["extra"]["regions"], expected(target)
    assert {r: regions[r]["calls"] for r in REGIONS} == {r: want.get(r, 0) for r in REGIONS}
    for r in REGIONS:
        total, own = regions[r]["total_ms"], regions[r]["self_ms"]
        assert 0 <= own <= total + 1e-9 and (total > 0) == (want.get(r, 0) > 0)
    if want.get(SOLVE):  # the VJPs inside the solve are not its self time
        assert regions[SOLVE]["self_ms"] < regions[SOLVE]["total_ms"]

    frame = pd.read_csv(profiles / f"{name}.csv")
    assert set(frame.target) == {target} and set(frame.steps) == {steps(target)}
    assert set(frame.batch) == {4} and set(frame.threads) == {1}
    value = frame.set_index(["region", "metric"]).value
    wall = value["wall", "total_ms"]
    assert wall == pytest.approx(meta["extra"]["wall_ms"])
    assert value["wall", "total_ms_per_step"] == pytest.approx(wall / steps(target))
    floor = regions[FORWARD]["total_ms"] + regions[VJP]["total_ms"]
    assert value["floor", "total_ms"] == pytest.approx(floor)
    selfs = sum(regions[r]["self_ms"] for r in REGIONS)
    assert value["outside", "self_ms"] == pytest.approx(wall - selfs)
    assert 0 <= value["outside", "self_share"] < 1
    for r in REGIONS:
        assert value[r, "calls"] == want.get(r, 0)
        assert value[r, "share"] == pytest.approx(regions[r]["total_ms"] / wall)
    assert meta["config"]["target"] == target
    assert {"before", "after"} <= set(meta["extra"]["conditions"])


def test_self_time_is_total_minus_the_nested_regions():
    def sleep(ms):
        time.sleep(ms / 1e3)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        with region(SOLVE):
            sleep(30)
            with region(VJP):
                sleep(20)
            with torch.profiler.record_function("not emdm's"):  # between SOLVE and a VJP
                with region(VJP):
                    sleep(10)
        with region(OPERATOR):
            sleep(5)
        wall_ms = 1e3 * (time.perf_counter() - start)
    summary = region_summary(prof.events(), wall_ms)
    solve, vjp, operator = summary[SOLVE], summary[VJP], summary[OPERATOR]
    assert (solve["calls"], vjp["calls"], operator["calls"], summary[LOSS]["calls"]) == (
        1,
        2,
        1,
        0,
    )
    assert vjp["total_ms"] >= 30 and vjp["self_ms"] == vjp["total_ms"]
    assert solve["total_ms"] >= vjp["total_ms"] + 30
    assert solve["self_ms"] == pytest.approx(solve["total_ms"] - vjp["total_ms"])
    assert operator["self_ms"] == operator["total_ms"] >= 5
    assert solve["share"] == pytest.approx(solve["total_ms"] / wall_ms)
    assert solve["share"] + operator["share"] <= 1


def test_trace_is_gzipped_above_the_threshold_and_replaces_the_other_form(tmp_path, monkeypatch):
    import bench.profile

    def profiled():  # a profile exports its trace once
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            with region(FORWARD):
                torch.ones(3).sum()
        return prof

    plain, packed = tmp_path / "t.trace.json", tmp_path / "t.trace.json.gz"
    assert write_trace(profiled(), tmp_path, "t") == plain and not packed.exists()
    assert FORWARD in {e.get("name") for e in json.loads(plain.read_text())["traceEvents"]}
    monkeypatch.setattr(bench.profile, "GZIP_BYTES", plain.stat().st_size // 2)
    assert write_trace(profiled(), tmp_path, "t") == packed and not plain.exists()
    with gzip.open(packed, "rt") as f:
        assert FORWARD in {e.get("name") for e in json.load(f)["traceEvents"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == [packed.name]  # no temporary left


def test_bad_input_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        (["nope", "--out", str(out)], "invalid choice: 'nope'"),
        (["mstep", "--steps", "0", "--out", str(out)], "steps must be a finite number > 0, got 0"),
        (["mmps", "--warmup", "-1", "--out", str(out)], "warmup must be a finite number >= 0"),
    ]
    if not torch.cuda.is_available():
        cases.append((["mmps", "--device", "cuda", "--out", str(out)], "torch sees no CUDA"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2
        assert message in capsys.readouterr().err
    assert not out.exists()


def test_dry_run_prints_the_resolved_config(tmp_path, capsys):
    assert main(["sampler-image", "--dry-run", "--out", str(tmp_path / "out")]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["target"] == "sampler-image" and config["batch"] == 256
    assert config["threads"] == torch.get_num_threads()
    assert not (tmp_path / "out").exists()
