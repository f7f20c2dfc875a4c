r"""The thread policy (`emdm.threads`): the specs accepted and refused, the count "auto" takes
from fake `/proc/stat` snapshots, and `--threads` of every entry point (`emdm.experiment`).

torch's thread count is faked in-process: thread counts are process-wide, and with torch 2.14.1
+ MKL a `torch.set_num_threads(n)` with n >= 2 (even to the count in use) breaks later LU
factorizations (see `emdm.threads`), which would break the tests that run after these. The
tests of the real count run in processes of their own."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emdm import threads
from emdm.threads import Snapshot, free_threads, read_snapshot

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fake_count(monkeypatch):
    r"""torch's thread count, faked (2, as on two cores): set and read through this dict; the
    module's memory (torch's default, the spec applied) starts afresh."""
    count = {"n": 2, "sets": 0}

    def set_num_threads(n):
        count["n"], count["sets"] = n, count["sets"] + 1

    monkeypatch.setattr(torch, "set_num_threads", set_num_threads)
    monkeypatch.setattr(torch, "get_num_threads", lambda: count["n"])
    monkeypatch.setattr(threads, "_openmp", lambda: None)  # set_threads: the faked setter
    monkeypatch.setitem(threads._state, "default", None)
    monkeypatch.setitem(threads._state, "applied", None)
    monkeypatch.delenv(threads.ENV, raising=False)
    real = torch._C.get_num_threads()
    yield count
    assert torch._C.get_num_threads() == real  # the real count never moved


def stat(*cores: tuple[int, ...]) -> str:
    r"""A `/proc/stat` text with one `cpuN` line per tuple of ticks (user nice system idle
    iowait irq softirq steal), and the aggregate line and others that the parser skips."""
    lines = ["cpu  " + " ".join(str(sum(c)) for c in zip(*cores, strict=True)) + " 0 0"]
    lines += [f"cpu{i} " + " ".join(map(str, c)) + " 0 0" for i, c in enumerate(cores)]
    return "\n".join([*lines, "intr 1 2 3", "ctxt 99", "btime 0", "processes 7"]) + "\n"


def own(ticks: int, utime_share: int = 0) -> str:
    r"""A `/proc/self/stat` text with `ticks` of user + system time and a name with spaces and
    parentheses."""
    rest = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(utime_share),
            str(ticks - utime_share), "0", "0", "20", "0", "1", "0"]  # fmt: skip
    return "4242 (py (thr) x) " + " ".join(rest) + "\n"


def snapshot(tmp_path, name, cores, ticks=0) -> Snapshot:
    (tmp_path / f"{name}.stat").write_text(stat(*cores))
    (tmp_path / f"{name}.self").write_text(own(ticks, utime_share=ticks // 2))
    return read_snapshot(tmp_path / f"{name}.stat", tmp_path / f"{name}.self")


IDLE = (100, 0, 10, 1000, 5, 0, 1, 0)  # a core's ticks since boot


def after(core, busy=0, idle=0, steal=0, iowait=0):
    u, n, s, i, w, q, sq, st = core
    return (u + busy, n, s, i + idle, w + iowait, q, sq, st + steal)


@pytest.mark.parametrize(
    "core0, core1, own_ticks, cores, limit, expected",
    [
        ({"idle": 20}, {"idle": 20}, 0, {0, 1}, 2, 2),  # idle cores: torch's default
        ({"busy": 20}, {"idle": 20}, 0, {0, 1}, 2, 1),  # one core busy: one thread
        ({"busy": 20}, {"busy": 20}, 0, {0, 1}, 2, 1),  # both busy: at least one
        ({"busy": 10, "idle": 10}, {"busy": 10, "idle": 10}, 0, {0, 1}, 2, 1),  # migrating job
        ({"busy": 20}, {"idle": 20}, 20, {0, 1}, 2, 2),  # the busy one is this process
        ({"busy": 8, "idle": 12}, {"idle": 20}, 0, {0, 1}, 2, 2),  # 0.4 core: rounds to 2
        ({"busy": 12, "idle": 8}, {"idle": 20}, 0, {0, 1}, 2, 1),  # 0.6 core: rounds to 1
        ({"steal": 20}, {"idle": 20}, 0, {0, 1}, 2, 1),  # another VM's time is lost to us
        ({"iowait": 20}, {"idle": 20}, 0, {0, 1}, 2, 2),  # waiting for a disk is idle
        ({"busy": 20}, {"idle": 20}, 0, {1}, 1, 1),  # affinity: core 0 is not ours
        ({"idle": 20}, {"idle": 20}, 0, {0, 1}, 1, 1),  # never above torch's default
        ({"idle": 20}, {"idle": 20}, 0, {0, 1}, 4, 4),  # T > C (hyperthreads): scaled
        ({"busy": 20}, {"idle": 20}, 0, {0, 1}, 4, 2),
        ({}, {}, 0, {0, 1}, 2, 2),  # no tick passed: torch's default
        ({"busy": 20}, {"idle": 20}, 0, {5, 6}, 2, 2),  # none of ours listed: the default
    ],
)
def test_auto_counts_the_cores_other_processes_leave_idle(
    tmp_path, core0, core1, own_ticks, cores, limit, expected
):
    before = snapshot(tmp_path, "before", (IDLE, IDLE), ticks=50)
    later = snapshot(tmp_path, "after", (after(IDLE, **core0), after(IDLE, **core1)),
                     ticks=50 + own_ticks)  # fmt: skip
    assert free_threads(before, later, cores, limit) == expected


def test_snapshots_parse_the_proc_formats(tmp_path):
    snap = snapshot(tmp_path, "s", ((1, 2, 3, 4, 5, 6, 7, 8), (10, 0, 0, 90, 0, 0, 0, 0)), 37)
    # busy: user nice system irq softirq steal; total adds idle and iowait
    assert snap.cores == {0: (1 + 2 + 3 + 6 + 7 + 8, 36), 1: (10, 100)}
    assert snap.own == 37
    assert read_snapshot(tmp_path / "missing", tmp_path / "s.self") is None
    (tmp_path / "bad.self").write_text("4242 (no fields)\n")
    assert read_snapshot(tmp_path / "s.stat", tmp_path / "bad.self") is None
    if Path("/proc/stat").exists():  # the real files, where there are
        real = read_snapshot()
        assert real is not None and set(os.sched_getaffinity(0)) <= set(real.cores)


def test_resolve_auto_from_two_snapshots(tmp_path, monkeypatch, fake_count):
    busy = [snapshot(tmp_path, "a", (IDLE, IDLE)),
            snapshot(tmp_path, "b", (after(IDLE, busy=20), after(IDLE, idle=20)))]  # fmt: skip
    monkeypatch.setattr(threads, "read_snapshot", lambda: busy.pop(0))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    monkeypatch.setattr(threads, "_cores", lambda: {0, 1})
    assert threads.resolve("auto") == 1 and not busy
    monkeypatch.setattr(threads, "read_snapshot", lambda: None)  # no /proc/stat
    assert threads.resolve("auto") == 2  # torch's default
    assert fake_count["sets"] == 0  # resolve sets nothing


@pytest.mark.parametrize(
    "spec, env, expected",
    [
        (3, None, 3),
        ("1", None, 1),
        (" 4 ", None, 4),
        (0, None, 2),  # torch's default (the fake's 2)
        ("0", None, 2),
        (None, "1", 1),  # no spec: EMDM_THREADS
        ("", "5", 5),
        (2, "1", 2),  # a spec overrides EMDM_THREADS
    ],
)
def test_resolve_each_accepted_form(spec, env, expected, monkeypatch):
    if env is not None:
        monkeypatch.setenv(threads.ENV, env)
    assert threads.resolve(spec) == expected


def test_effective_spec_and_default(monkeypatch):
    assert threads.effective() == threads.DEFAULT == "auto"
    assert threads.effective("AUTO") == "auto" and threads.effective(0) == "0"
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.effective() == "3" and threads.effective("") == "3"
    assert threads.effective("auto") == "auto"


@pytest.mark.parametrize("bad", ["-1", "1.5", "two", "", -1, 1.5, True, [2]])
def test_bad_specs_are_refused_before_any_measurement(bad, monkeypatch):
    def no_measurement(*args, **kwargs):
        raise AssertionError("measured a bad spec")

    monkeypatch.setattr(threads, "read_snapshot", no_measurement)
    if bad == "":  # empty means "none given": only EMDM_THREADS can be bad then
        monkeypatch.setenv(threads.ENV, "lots")
        with pytest.raises(ValueError, match=r"\$EMDM_THREADS must be 'auto', 0 .*'lots'"):
            threads.apply(bad)
        return
    with pytest.raises(ValueError, match=r"threads must be 'auto', 0 \(torch's default\)") as e:
        threads.apply(bad)
    assert repr(bad) in str(e.value)


def test_apply_sets_only_a_changed_count_and_refresh_follows_auto(monkeypatch, fake_count):
    assert threads.apply(2) == 2 and fake_count["sets"] == 0  # 2 in use: no set_num_threads
    assert threads.apply("1") == 1 and fake_count == {"n": 1, "sets": 1}
    assert threads.refresh() == 1 and fake_count["sets"] == 1  # not auto: nothing measured
    assert threads.apply(0) == 2 and fake_count["n"] == 2  # torch's default, from before
    counts = iter([1, 2])
    monkeypatch.setattr(threads, "resolve", lambda spec, interval: next(counts))
    assert threads.apply("auto") == 1 and fake_count["n"] == 1
    assert threads.refresh() == 2 and fake_count == {"n": 2, "sets": 4}  # the job ended


def test_threads_flag_of_an_entry_point_is_applied_and_saved(tmp_path, capsys, fake_count):
    from reproduce import fig7

    assert fig7.main(["--quick", "--threads", "1", "--samples", "16", "--quiet",
                      "--out", str(tmp_path)]) == 0  # fmt: skip
    assert fake_count["n"] == 1
    saved = json.loads((tmp_path / "fig7_quick.json").read_text())
    assert saved["config"]["threads"] == "1"
    assert fig7.main(["--quick", "--threads", "1", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["threads"] == "1"
    with pytest.raises(SystemExit) as exit:
        fig7.main(["--quick", "--threads", "many", "--out", str(tmp_path)])
    assert exit.value.code == 2
    assert "threads must be 'auto', 0" in capsys.readouterr().err


def test_environment_spec_is_recorded_and_a_bad_one_refused(tmp_path, capsys, monkeypatch):
    from reproduce import fig7

    monkeypatch.setenv(threads.ENV, "1")
    assert fig7.main(["--quick", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["threads"] == "1"  # the spec in force
    monkeypatch.setenv(threads.ENV, "-2")
    with pytest.raises(SystemExit) as exit:
        fig7.main(["--quick", "--dry-run"])
    assert exit.value.code == 2 and "$EMDM_THREADS must be" in capsys.readouterr().err


def test_parse_run_sets_torch_threads_in_a_fresh_process():
    code = (
        "import torch\n"
        "from emdm.experiment import DeviceRun, parse_run\n"
        "cfg = parse_run(DeviceRun, ['--threads', '1'], quick=DeviceRun(), paper=DeviceRun(),"
        " prog='t')\n"
        "print(torch.get_num_threads(), cfg.threads)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "1"]


def test_set_threads_moves_the_real_count_and_leaves_lu_factorizations_whole():
    # torch.set_num_threads(2) here made the inverse print "oneMKL ERROR: Parameter 6 was
    # incorrect on entry to SLASWP" and never return; a 1 -> 2 refresh of --threads auto did so
    code = (
        "import time, torch\n"
        "from emdm.threads import set_threads\n"
        "A = torch.randn(2, 300, 300) + 300 * torch.eye(300)\n"
        "for n in (1, 2, 1, 2):\n"
        "    set_threads(n)\n"
        "    error = (A @ torch.linalg.inv(A) - torch.eye(300)).abs().max().item()\n"
        "    print(torch.get_num_threads(), error < 1e-4)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0 and "oneMKL ERROR" not in run.stderr, run.stderr
    assert run.stdout.split() == ["1", "True", "2", "True", "1", "True", "2", "True"]
    with pytest.raises(ValueError, match="count must be >= 1, got 0"):
        threads.set_threads(0)
