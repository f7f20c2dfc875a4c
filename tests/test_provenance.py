import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emdm.provenance import provenance, write_results
from emdm.publish import file_hash


def test_provenance_keys():
    info = provenance("cpu")
    for key in ("commit", "dirty", "python", "torch", "numpy", "emdm", "device_name", "utc"):
        assert key in info
    assert info["commit"] is None or len(info["commit"]) == 40
    assert info["processes"] == {"world": 1, "backend": None}  # no process group
    json.dumps(info)


def test_provenance_without_git(monkeypatch):
    import emdm.provenance as module

    def missing(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(module.subprocess, "run", missing)
    info = provenance()
    assert info["commit"] is None and info["dirty"] is None


def test_write_results(tmp_path):
    rows = [
        {"method": "a", "steps": 8, "metric": "error", "value": 0.5},
        {"method": "b", "steps": None, "metric": "error", "value": 0.25},
    ]
    out = tmp_path / "nested"
    csv, js = write_results(
        "run", rows, {"seed": 1}, wall_time=2.0, out_dir=out, quick=True, extra={"k": 1}
    )
    assert csv == out / "run.csv" and js == out / "run.json"
    frame = pd.read_csv(csv)
    assert list(frame.columns) == ["method", "steps", "metric", "value"]
    assert frame["value"].tolist() == [0.5, 0.25]
    assert csv.read_text().splitlines()[1] == "a,8,error,0.5"
    meta = json.loads(js.read_text())
    assert "commit" in meta["provenance"]
    assert meta["config"] == {"seed": 1}
    assert meta["scale"] == "quick"
    assert meta["wall_time_s"] == 2.0
    assert meta["extra"] == {"k": 1}
    # no temporary files; the lock of the publications stays
    assert sorted(p.name for p in out.iterdir()) == [".publish.lock", "run.csv", "run.json"]
    assert json.loads(js.read_text())["files"] == {"run.csv": file_hash(csv)}

    write_results("run", rows, {}, wall_time=1.0, out_dir=out, quick=False)
    assert json.loads(js.read_text())["scale"] == "paper"


@pytest.mark.parametrize("bad", [{"value": 1.0}, {"metric": "error"}])
def test_row_without_metric_or_value(tmp_path, bad):
    rows = [{"metric": "error", "value": 0.5}, bad]
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="lacks"):
        write_results("run", rows, {}, wall_time=0.0, out_dir=out, quick=True)
    assert not out.exists()


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    rows = [{"metric": "error", "value": 0.5}]
    write_results("run", rows, {"seed": 1}, wall_time=1.0, out_dir=tmp_path, quick=True)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}

    def partial(self, path, **kwargs):
        Path(path).write_text("metric,va")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", partial)
    with pytest.raises(OSError, match="disk full"):
        write_results("run", rows, {"seed": 2}, wall_time=1.0, out_dir=tmp_path, quick=True)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


def test_unserializable_config_fails_before_writing(tmp_path):
    rows = [{"metric": "error", "value": 0.5}]
    with pytest.raises(ValueError, match="Circular"):
        config = {}
        config["self"] = config
        write_results("run", rows, config, wall_time=0.0, out_dir=tmp_path / "o", quick=True)
    assert not (tmp_path / "o").exists()


def test_provenance_records_the_metric_packages_versions():
    from emdm.provenance import provenance

    packages = provenance()["packages"]
    assert packages["torch-fidelity"] is not None  # FID and IS depend on it
    assert set(packages) >= {"torch-fidelity", "triton", "pot"}


# the JSON-lines log of measurements (emdm.runs.MetricsLog) was provenance's append_jsonl and
# read_jsonl


def test_metrics_log_keeps_the_last_row_per_key_and_survives_a_killed_writer(tmp_path):
    from emdm.runs import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    assert not log.exists() and log.rows() == []
    log.log([{"k": 1, "metric": "a", "value": 1.0}, {"k": 2, "metric": "a", "value": 2.0}])
    with open(log.path, "a") as f:
        f.write('{"k": 3, "metric": "a", "va')  # a writer killed mid-line
    assert [r["value"] for r in log.rows()] == [1.0, 2.0]
    log.log([{"k": 2, "metric": "a", "value": 3.0}, {"k": 3, "metric": "b", "value": 4}])
    assert log.path.read_text().count("\n") == 4  # the cut line is gone, not glued
    assert log.rows() == [{"k": 1, "metric": "a", "value": 1.0},
                          {"k": 2, "metric": "a", "value": 3.0},
                          {"k": 3, "metric": "b", "value": 4}]  # fmt: skip
    assert [r["value"] for r in log.rows(key=("metric",))] == [3.0, 4]
    assert [r["value"] for r in MetricsLog(log.path, key=("k",)).rows()] == [1.0, 3.0, 4]
    log.write([{"metric": "c", "value": np.float32(0.5)}])  # replaces the file, atomically
    assert log.rows() == [{"metric": "c", "value": 0.5}]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
