"""bench/gpu_all.sh, the one device script, as far as a CPU can check it: its syntax, its dry
mode (every command printed, every entry point imported and its flags parsed), that the dry
mode fails on a missing module or a refused flag, the real mode's bookkeeping on stand-in
steps, and `python -m reproduce smoke`, which it runs, without the heavy presets."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

import reproduce.__main__ as runner
from emdm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["bench/gpu_all.sh", "bench/gpu_check.sh", "bench/gpu_core.sh"]


def gpu_all(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_ALL_", "DRY_RUN"))}
    environ.pop("OUT", None)
    environ |= {"PYTHON": sys.executable, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(["bash", "bench/gpu_all.sh", *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_syntax(script):
    assert subprocess.run(["bash", "-n", script], cwd=ROOT).returncode == 0


def test_dry_run_lists_and_checks_every_step(tmp_path):
    done = gpu_all("--dry-run", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    expected = {
        "1": "-m pytest -q -p no:cacheprovider tests",
        "2": "-m bench.gpu_check --out",
        "3": "-m bench.em_cost --measure --device cuda --batch 256",
        "4a": "-m reproduce smoke --device cuda",
        "4b": "-m reproduce smoke table1 fig6 --device cuda --torchrun 1",
        "5a": "-m bench.mmps_cost --device cuda --repeats 200",
        "5b": "-m bench.mmps_cost --device cuda --batch 16384",
        "6a": "-m emdm mmps-check --device cuda --samples 4096",
        "6b": "reproduce/fig3.py --quick --device cuda --em-iterations 1 --compare",
    }
    if (ROOT / "bench/memory.py").exists():
        expected["7"] = "-m bench.memory --device cuda"
    for step, command in expected.items():
        assert any(line.startswith(f"[{step}] ") and command in line
                   for line in out.splitlines()), (step, out)  # fmt: skip
    checked = [line for line in out.splitlines() if line.startswith("ok ")]
    assert len(checked) == len(expected) and "FAILED" not in out
    assert "every command checked" in out and not any(tmp_path.iterdir())  # nothing written


def test_dry_run_fails_on_a_missing_module_or_a_refused_flag():
    python = sys.executable
    extra = f"{python} -m bench.no_such_module\n{python} -m bench.mmps_cost --no-such-flag"
    done = gpu_all("--dry-run", GPU_ALL_STEPS="2 x1 x2", GPU_ALL_EXTRA=extra)
    assert done.returncode != 0
    lines = done.stdout.splitlines()
    assert any(line.startswith("ok ") and "bench.gpu_check" in line for line in lines)
    assert any(line.startswith("FAILED") and "no_such_module" in line for line in lines)
    assert any(line.startswith("FAILED") and "--no-such-flag" in line for line in lines)
    assert "ModuleNotFoundError" in done.stdout and "unrecognized arguments" in done.stdout
    assert "[1]" not in done.stdout  # GPU_ALL_STEPS selects


def test_steps_are_guarded_timed_and_archived(tmp_path):
    # stand-in steps on the CPU: a failing one does not stop the next; the exit status says so
    work = tmp_path / "work"
    extra = f"bash -c 'exit 3'\nmkdir -p {work}\ntouch {work}/result.csv"
    done = gpu_all(str(tmp_path), PYTHON="false", GPU_ALL_STEPS="x1 x2 x3",
                   GPU_ALL_EXTRA=extra, GPU_ALL_WORK=str(work))  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    steps = pd.read_csv(tmp_path / "gpu_all_no-cuda.csv", dtype={"step": str})
    assert list(steps.step) == ["x1", "x2", "x3"]
    assert list(steps.status) == ["failed", "passed", "passed"]
    assert list(steps.exit_code) == [3, 0, 0] and (steps.wall_s >= 0).all()
    assert "[x1] failed (exit code 3)" in (tmp_path / "gpu_all_no-cuda.log").read_text()
    with tarfile.open(tmp_path / "gpu_all_no-cuda.tar.gz") as archive:
        assert archive.getnames() == ["./result.csv"]
    # a spent budget skips the steps left and names the command that runs them
    done = gpu_all(str(tmp_path), PYTHON="false", GPU_ALL_STEPS="x1", GPU_ALL_BUDGET="0",
                   GPU_ALL_EXTRA="true", GPU_ALL_WORK=str(work))  # fmt: skip
    assert done.returncode == 1 and 'GPU_ALL_STEPS="x1"' in done.stdout


def test_reproduce_smoke_lists_the_presets_commands(tmp_path, capsys):
    items = runner.smoke_items()
    assert "table1" in items and "mmps_check" not in items and "fig1" not in items
    args = ["smoke", "--list", "--device", "cuda", "--out", str(tmp_path / "out")]
    assert runner.main([*args, "--data", str(tmp_path / "data"), "--torchrun", "1"]) == 0
    listed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert list(listed) == items
    table1 = listed["table1"].split()
    assert table1[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    assert table1[5].endswith("reproduce/table1.py") and table1[6] == "--smoke"
    assert f"--data-dir {tmp_path / 'data' / 'cifar'}" in listed["table1"]
    assert "--device cuda" in listed["table1"] and not (tmp_path / "data").exists()
    assert runner.main(["smoke", "table1", "--list"]) == 0  # the preset's device, no torchrun
    line = capsys.readouterr().out
    assert "--device" not in line and "torch.distributed.run" not in line
    with pytest.raises(UserError, match=r"no smoke preset for \['fig1'\]"):
        runner.main(["smoke", "fig1", "--list"])
    with pytest.raises(UserError, match="for 'smoke' only"):
        runner.main(["fig1", "--device", "cuda", "--list"])


def test_reproduce_smoke_runs_every_item_then_names_the_failures(tmp_path, monkeypatch, capsys):
    ran = []

    def smoke_command(item, out, quiet, device, data, torchrun=0):
        ran.append((item, device))
        return [sys.executable, "-c", f"raise SystemExit({4 if item == 'fig3' else 0})"]

    monkeypatch.setattr(runner, "smoke_command", smoke_command)
    monkeypatch.setattr(runner, "smoke_items", lambda: ["fig3", "fig2"])
    monkeypatch.setattr(runner, "smoke_preset", lambda item: object())
    monkeypatch.setattr(runner, "SMOKE_DATA", {})
    with pytest.raises(UserError, match=r"smoke items failed: fig3 \(exit status 4\)"):
        runner.main(["smoke", "--device", "cuda", "--out", str(tmp_path)])
    assert ran == [("fig3", "cuda"), ("fig2", "cuda")]  # the failure did not stop fig2
    frame = pd.read_csv(tmp_path / "reproduce_smoke.csv")
    status = frame[frame.metric == "exit_status"].set_index("item").value
    assert status.to_dict() == {"fig3": 4, "fig2": 0}


def test_fake_data_is_written_once_in_the_real_format(tmp_path):
    from emdm.data import load_cifar10

    folder = runner.fake_data("cifar", tmp_path)
    assert load_cifar10(folder).shape == (50, 3, 32, 32)
    assert load_cifar10(folder, "test").shape == (10, 3, 32, 32)
    stamp = (folder / "cifar-10-batches-py" / "test_batch").stat().st_mtime_ns
    assert runner.fake_data("cifar", tmp_path) == folder  # reused, not rewritten
    assert (folder / "cifar-10-batches-py" / "test_batch").stat().st_mtime_ns == stamp
    (tmp_path / "fastmri").mkdir()  # left half-written by a killed writer
    with pytest.raises(UserError, match="incomplete"):
        runner.fake_data("fastmri", tmp_path)
