r"""The benchmark scripts run end to end at toy sizes (on the CPU, Triton interpreted), so the
GPU check that needs a rare machine does not first fail there on a typo; and the helpers they
share (`bench/common.py`)."""

import json
import math

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
    threads = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 == conditions()["threads"]
        assert set_threads(0) == 1  # 0 keeps what is set
    finally:
        torch.set_num_threads(threads)
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
