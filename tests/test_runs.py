import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import emdm.runs as runs
from emdm.errors import UserError
from emdm.publish import _complete, _locked, file_hash
from emdm.runs import RunFolder

ROOT = Path(__file__).resolve().parent.parent
IDENTITY = {"steps": 4, "name": "x"}


def test_a_new_folder_records_identity_and_segment(tmp_path):
    with RunFolder(tmp_path / "run", IDENTITY, resume=False) as run:
        assert not run.resuming
        run.log([{"metric": "a", "value": 1.0}])
        run.finish()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["identity"] == IDENTITY and record["finished"]
    (segment,) = record["segments"]
    assert segment["pid"] == os.getpid() and segment["wall_s"] >= 0
    assert {"commit", "dirty", "diff", "started"} <= set(segment)


def test_a_second_process_is_refused_naming_the_first(tmp_path):
    with RunFolder(tmp_path, IDENTITY, resume=False):
        # a second open file description conflicts, as another process's would
        with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
            RunFolder(tmp_path, IDENTITY, resume=True)
    RunFolder(tmp_path, IDENTITY, resume=True).close()  # released with the first


def test_a_folder_holding_a_run_is_refused_without_resume(tmp_path):
    RunFolder(tmp_path, IDENTITY, resume=False).close()
    with pytest.raises(UserError, match=r"holds a run already .an unfinished run.*--resume"):
        RunFolder(tmp_path, IDENTITY, resume=False)
    with RunFolder(tmp_path, IDENTITY, resume=True) as run:
        run.finish()
    with pytest.raises(UserError, match=r"finished at .*re-report"):
        RunFolder(tmp_path, IDENTITY, resume=False)
    with RunFolder(tmp_path, IDENTITY, resume=True) as run:
        assert run.resuming and run.finished and len(run.segments) == 3


def test_a_resume_with_another_config_names_the_keys(tmp_path):
    RunFolder(tmp_path, IDENTITY, resume=False).close()
    with pytest.raises(UserError, match="differing keys: steps"):
        RunFolder(tmp_path, {**IDENTITY, "steps": 8}, resume=True)


def test_a_resume_with_other_code_is_refused(tmp_path, monkeypatch):
    RunFolder(tmp_path, IDENTITY, resume=False).close()
    version = runs.code_version()
    other = {**version, "commit": "f" * 40}
    monkeypatch.setattr(runs, "code_version", lambda: other)
    with pytest.raises(UserError, match=r"started with the code at .*now at ffffffffffff"):
        RunFolder(tmp_path, IDENTITY, resume=True)
    dirty = {**version, "diff": "0" * 64}
    monkeypatch.setattr(runs, "code_version", lambda: dirty)
    with pytest.raises(UserError, match="uncommitted changes"):
        RunFolder(tmp_path, IDENTITY, resume=True)


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint", "truncated"])
def test_a_damaged_checkpoint_is_named_before_any_work(tmp_path, content):
    RunFolder(tmp_path, IDENTITY, resume=False).close()
    torch.save({"w": torch.randn(1000)}, tmp_path / "last.pt")
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(
        data[: len(data) // 2] if content == "truncated" else content
    )
    with pytest.raises(UserError, match=r"checkpoint .*last\.pt is damaged.*delete it"):
        RunFolder(tmp_path, IDENTITY, resume=True)


def test_a_new_run_that_fails_before_making_anything_leaves_nothing_to_resume(tmp_path):
    path = tmp_path / "out" / "run"
    with pytest.raises(FileNotFoundError), RunFolder(path, IDENTITY, resume=False):
        raise FileNotFoundError("data set missing")
    assert not (tmp_path / "out").exists()  # no trace of it
    RunFolder(path, IDENTITY, resume=False).close()  # not refused


def test_rows_keep_the_last_of_a_redone_lap_and_skip_a_cut_line(tmp_path):
    with RunFolder(tmp_path, IDENTITY, resume=False) as run:
        run.log([{"em_iteration": 1, "metric": "a", "value": 1.0}])
        run.log([{"em_iteration": 2, "metric": "a", "value": 2.0}])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"em_iteration": 2, "metric": "a", "val')  # killed mid-write
    with RunFolder(tmp_path, IDENTITY, resume=True) as run:
        assert [r["value"] for r in run.rows()] == [1.0, 2.0]
        run.log([{"em_iteration": 2, "metric": "a", "value": 3.0}])  # the lap redone
        assert [r["value"] for r in run.rows()] == [1.0, 3.0]
        assert run.wall_time == pytest.approx(sum(s["wall_s"] for s in run.segments))


# --- the whole script: Figure 3 at a tiny size, one E-step (--compare empty), in and out of
# process

TINY = ["--quick", "--observations", "256", "--start-iterations", "1", "--start-steps",
        "4", "--em-iterations", "2", "--em-train-steps", "16", "--em-batch-size", "64",
        "--em-steps", "4", "--ot-samples", "64", "--em-sample-batch", "64",
        "--net-hidden-features", "32", "32", "--compare", "--quiet"]  # fmt: skip
RESULT = ["fig3_quick.csv", "fig3_quick.png", "fig3_quick_score.png", "fig3_quick_q1.npy",
          "fig3_quick_q2.npy"]  # fmt: skip


def _fig3(out, *extra, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "reproduce" / "fig3.py"), *TINY, "--out", str(out), *extra],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_a_rerun_never_destroys_a_finished_run(tmp_path):
    from reproduce import fig3

    argv = [*TINY, "--out", str(tmp_path)]
    assert fig3.main(argv) == 0
    before = {name: file_hash(tmp_path / name) for name in RESULT}
    log = (tmp_path / "fig3_quick_run" / "metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match="holds a run already"):
        fig3.main(argv)  # refused, touching nothing
    assert (tmp_path / "fig3_quick_run" / "metrics.jsonl").read_bytes() == log
    assert fig3.main([*argv, "--resume"]) == 0  # re-reports the whole run
    lines = (tmp_path / "fig3_quick.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 + 2 * 4  # header, q_0 and floor, 4 metrics for each of 2 laps
    assert {name: file_hash(tmp_path / name) for name in RESULT} == before
    meta = json.loads((tmp_path / "fig3_quick.json").read_text())
    assert len(meta["segments"]) == 2
    assert meta["wall_time_s"] == pytest.approx(sum(s["wall_s"] for s in meta["segments"]))


def _watch(out: Path, stop: threading.Event, seen: list) -> None:
    r"""Reads the result as a reader would, under the lock, as often as it can: every file
    that the JSON lists must be there with its hash, and no result file without the JSON."""
    while not stop.is_set():
        with _locked(out):
            _complete(out)
            js = out / "fig3_quick.json"
            present = sorted(n for n in RESULT if (out / n).exists())
            if js.exists():
                files = json.loads(js.read_text())["files"]
                assert sorted(files) == sorted(RESULT) == present
                assert all(file_hash(out / n) == h for n, h in files.items())
                seen.append(files["fig3_quick.csv"])
            else:
                assert present == []
        time.sleep(0.002)


def test_killed_in_every_phase_and_resumed_gives_the_same_bytes(tmp_path):
    reference = tmp_path / "reference"
    assert _fig3(reference).returncode == 0
    out = tmp_path / "killed"
    out.mkdir()
    stop, seen, errors = threading.Event(), [], []

    def watch():
        try:
            _watch(out, stop, seen)
        except AssertionError as error:
            errors.append(error)

    watcher = threading.Thread(target=watch)
    watcher.start()
    # a random point of each phase, twice; the calls each process makes: 16 Adam steps a lap,
    # 4 E-step batches, 2 points in each of a lap's 2 checkpoint writes (its prior's snapshot,
    # then last.pt), 6 in a publication
    rng = random.Random(os.environ.get("EMDM_FAULT_SEED", "0"))
    phases = [("m-step", 16), ("e-step", 4), ("checkpoint", 4)] * 2 + [("publish", 6)] * 2
    try:
        for i, (phase, calls) in enumerate(phases):
            n = rng.randint(1, calls)
            run = _fig3(out, *(["--resume"] if i else []), env={"EMDM_FAULT": f"{phase}:{n}"})
            assert run.returncode == -9, f"{phase}:{n} did not kill the run: {run.stderr}"
        assert _fig3(out, "--resume").returncode == 0
    finally:
        stop.set()
        watcher.join()
    assert not errors, errors[0]
    for name in RESULT:
        assert file_hash(out / name) == file_hash(reference / name), name
    meta = json.loads((out / "fig3_quick.json").read_text())
    assert len(meta["segments"]) == len(phases) + 1
    assert seen, "the watcher never saw the result"


def test_two_runs_into_one_folder_one_refuses(tmp_path):
    # this process holds the folder (deterministic: a real first run might end before the
    # second has imported torch); the script in another process must refuse, naming it
    with RunFolder(tmp_path / "fig3_quick_run", {}, resume=False):
        second = _fig3(tmp_path, "--resume")
    assert second.returncode == 2
    assert f"in use by process {os.getpid()}" in second.stderr
    assert "Traceback" not in second.stderr
    assert not (tmp_path / "fig3_quick.csv").exists()


def test_a_moved_run_folder_can_be_resumed(tmp_path):
    import dataclasses

    from emdm.config import run_identity

    @dataclasses.dataclass
    class Config:
        steps: int = 4
        out: str = "a"
        resume: bool = False

    RunFolder(tmp_path / "a" / "run", run_identity(Config(out=str(tmp_path / "a"))),
              resume=False).close()  # fmt: skip
    (tmp_path / "a").rename(tmp_path / "b")
    identity = run_identity(Config(out=str(tmp_path / "b"), resume=True))
    with RunFolder(tmp_path / "b" / "run", identity, resume=True) as run:
        assert run.resuming
