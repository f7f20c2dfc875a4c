r"""`bench/em_cost.py --measure`: the timed calls that turn the paper runs' counts into
device-hours, on a tiny U-Net (the paper's networks take minutes on a CPU)."""

import math

import pytest
import torch

from bench.em_cost import CostConfig, timed_per_image
from emdm.prior import UNetConfig


def test_timed_per_image_runs_the_three_calls():
    net = UNetConfig(hid_channels=(8, 16), hid_blocks=(1, 1), heads=1, emb_features=16)
    t = timed_per_image(net, (3, 8, 8), cg=2, cfg=CostConfig(measure=True, batch=2, repeats=1))
    assert set(t) == {"train", "mmps", "forward"}
    assert all(math.isfinite(v) and v > 0 for v in t.values())


@pytest.mark.parametrize("kwargs", [{"batch": 0}, {"repeats": 0}, {"tflops": -1.0}])
def test_bad_sizes_are_refused(kwargs):
    (name,) = kwargs
    with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
        CostConfig(**kwargs)


def test_cuda_is_refused_where_torch_sees_none():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="CUDA"):
        CostConfig(device="cuda")
