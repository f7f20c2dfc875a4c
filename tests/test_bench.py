r"""The benchmark scripts run end to end at toy sizes (on the CPU, Triton interpreted), so the
GPU check that needs a rare machine does not first fail there on a typo; and the helpers they
share (`bench/common.py`)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.common import conditions, iqr, median_ms, set_threads


def test_median_ms_warms_up_then_times_each_repeat():
    calls = []
    ms, spread = median_ms(lambda: calls.append(1), "cpu", repeats=3, warmup=1)
    assert len(calls) == 4 and ms >= 0 and spread >= 0
    assert median_ms(lambda: None, "cpu", repeats=1, warmup=0)[1] == 0.0


def test_iqr():
    assert iqr([5.0]) == 0.0
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(3.0)  # quartiles 1.5 and 4.5


def test_conditions_record_threads_and_load():
    # in a process of its own: with torch 2.14.1 + MKL, a batched torch.linalg.inv after
    # set_num_threads changed the count fails (MKL: "Parameter 6 was incorrect on entry to
    # DLASWP"), and would break the tests that run after this one
    code = (
        "from bench.common import conditions, set_threads\n"
        "assert set_threads(1) == 1 == conditions()['threads']\n"
        "assert set_threads(0) == 1  # 0 keeps what is set\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert set_threads(0) == torch.get_num_threads() == conditions()["threads"]
    load = conditions()["loadavg"]
    assert len(load) == 3 and all(math.isfinite(v) and v >= 0 for v in load)


def test_gpu_check_smoke(tmp_path):
    pytest.importorskip("triton")
    from bench import gpu_check

    argv = ["--device", "cpu", "--batches", "2", "--sizes", "40", "--mri-batch", "1",
            "--mri-size", "8", "--repeats", "5", "--copy-bytes", "4096",
            "--out", str(tmp_path)]  # fmt: skip
    assert gpu_check.main(argv) == 0
    frame = pd.read_csv(tmp_path / "gpu-cpu-interpreted.csv")
    assert set(frame.kernel) == {"copy", "cg_update", "mri_forward_adjoint"}
    times = frame[frame.metric == "time_ms"]
    assert set(times.provider) == {"ref", "triton"} and (times.value > 0).all()
    record = json.loads((tmp_path / "gpu-cpu-interpreted.json").read_text())
    assert record["scale"] == "quick" and "mri_speedup_1.5x" in record["extra"]["targets_met"]
    for when in ("before", "after"):
        assert set(record["extra"]["conditions"][when]) == {"threads", "loadavg"}


def test_gpu_check_refuses_without_cuda(capsys):
    pytest.importorskip("triton")
    from bench import gpu_check

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_check.main(["--out", "/nonexistent"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_disk_model_of_the_paper_runs(tmp_path):
    import pandas as pd

    from bench import disk

    assert disk.main(["--out", str(tmp_path), "--mri-slices", "1000"]) == 0
    frame = pd.read_csv(tmp_path / "disk.csv").set_index(["item", "metric"]).value
    assert frame["table1", "runs"] == 5 and frame["table1", "laps"] == 32
    assert frame["fig6", "observations"] == 2000  # each slice listed twice
    # the CIFAR U-Net's 57.6 M weights: 230 MB a snapshot, ~4x that and the samples in last.pt
    assert 230e6 < frame["table1", "bytes_prior_<k>.pt"] < 232e6
    samples = 49920 * 3 * 32 * 32 * 4
    assert 4 * 230e6 + samples < frame["table1", "bytes_last.pt"] < 4 * 232e6 + samples + 1e6
    peak = frame["table1", "bytes_q0.pt"] + 2 * frame["table1", "bytes_last.pt"]
    peak += 32 * frame["table1", "bytes_prior_<k>.pt"]
    assert frame["table1", "bytes_run_peak"] == peak
