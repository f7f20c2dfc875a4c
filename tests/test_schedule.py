import math

import pytest
import torch

from emdm import VESchedule


def test_ve_endpoints_and_log_linearity():
    schedule = VESchedule(1e-3, 1e2)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    sigma = schedule.sigma(t)
    assert sigma[0].item() == pytest.approx(1e-3, rel=1e-12)
    assert sigma[-1].item() == pytest.approx(1e2, rel=1e-12)
    # log sigma is affine in t: constant increments
    steps = sigma.log().diff()
    torch.testing.assert_close(steps, torch.full_like(steps, math.log(1e5) / 10))


def test_ve_alpha_is_one_and_call_returns_pair():
    schedule = VESchedule(1e-3, 10.0)
    t = torch.rand(5, dtype=torch.float64)
    alpha, sigma = schedule(t)
    torch.testing.assert_close(alpha, torch.ones_like(t))
    torch.testing.assert_close(sigma, schedule.sigma(t))
    torch.testing.assert_close(schedule.sigma_ve(t), sigma)


@pytest.mark.parametrize("a, b", [(0.0, 1.0), (-1.0, 1.0), (1.0, 1.0), (2.0, 1.0)])
def test_ve_rejects_bad_bounds(a, b):
    with pytest.raises(ValueError, match="sigma_m"):
        VESchedule(a, b)
