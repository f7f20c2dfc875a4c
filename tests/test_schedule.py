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


def test_vp_schedule_matches_the_discrete_product():
    from emdm import VPSchedule

    schedule = VPSchedule(1e-4, 0.02, 1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    n = torch.tensor([0, 1, 17, 500, 999])
    t = n.double() / 999
    torch.testing.assert_close(schedule.alpha_bar(t), alpha_bar[n])
    torch.testing.assert_close(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2,
                               torch.ones(5, dtype=torch.float64))  # fmt: skip
    assert schedule.alpha_bar(torch.tensor(-1 / 999)).item() == 1.0  # the clean end
    # between integers, log ᾱ is linear
    mid = schedule.alpha_bar(torch.tensor(10.5 / 999, dtype=torch.float64)).log()
    torch.testing.assert_close(mid, (alpha_bar[10].log() + alpha_bar[11].log()) / 2)
    # the epsilon network's index is recovered from the VE noise level
    sigma_ve = ((1 - alpha_bar[n]) / alpha_bar[n]).sqrt()
    torch.testing.assert_close(schedule.timestep(sigma_ve), n.double())
    assert schedule.respaced(10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert schedule.respaced(4) == [999, 666, 333, 0] and schedule.respaced(1) == [999]
    assert schedule.respaced(1000) == list(range(999, -1, -1))


def test_vp_schedule_bad_input():
    from emdm import VPSchedule

    with pytest.raises(ValueError, match="beta_min <= beta_max"):
        VPSchedule(0.02, 1e-4)
    with pytest.raises(ValueError, match="T must be"):
        VPSchedule(T=1)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 1000\]"):
        VPSchedule().respaced(1001)
    with pytest.raises(ValueError, match="t must lie in"):
        VPSchedule().alpha_bar(torch.tensor(1.5))
