r"""The benchmark scripts run end to end at toy sizes (on the CPU, Triton interpreted), so the
GPU check that needs a rare machine does not first fail there on a typo."""

import json

import pandas as pd
import pytest

pytest.importorskip("triton")


def test_gpu_check_smoke(tmp_path):
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


def test_gpu_check_refuses_without_cuda(capsys):
    import torch

    from bench import gpu_check

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_check.main(["--out", "/nonexistent"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
