import math

import pytest
import scipy.stats
import torch

from emdm import GaussianDenoiser, VESchedule, denoiser_loss
from emdm.dplr import DPLR
from emdm.loss import beta33


def test_beta33_distribution(gen):
    t = beta33(20000, gen, dtype=torch.float64)
    assert scipy.stats.kstest(t.numpy(), scipy.stats.beta(3, 3).cdf).pvalue > 1e-3
    assert ((t > 0) & (t < 1)).all()


def test_loss_of_exact_denoiser_matches_closed_form(gen):
    r"""For x ~ N(0, s²) in 1-D and the exact denoiser, E[(d(x_t) - x)²] = s²σ² / (s² + σ²),
    so the loss is E_t[(1 + 1/σ_t²) s²σ_t² / (s² + σ_t²)] with t ~ Beta(3, 3)."""
    s, n = 0.8, 2**18
    schedule = VESchedule(1e-3, 1e2)
    denoiser = GaussianDenoiser(torch.zeros(1, dtype=torch.float64), DPLR(torch.full((1,), s**2)))
    x = s * torch.randn((n, 1), generator=gen, dtype=torch.float64)
    loss = denoiser_loss(denoiser, x, schedule, generator=gen)

    t = torch.linspace(0, 1, 100001, dtype=torch.float64)
    sigma2 = schedule.sigma(t) ** 2
    f = (1 + 1 / sigma2) * s**2 * sigma2 / (s**2 + sigma2)
    density = torch.from_numpy(scipy.stats.beta(3, 3).pdf(t.numpy()))
    expected = torch.trapezoid(f * density, t).item()
    # a per-sample loss is f(t) χ²₁ with f ≤ max f, so its standard deviation is at most
    # sqrt(3) max f (E[χ⁴₁] = 3): accept 5 standard errors of the mean of n such losses
    tol = 5 * math.sqrt(3) * f.max().item() / math.sqrt(n)
    assert loss.item() == pytest.approx(expected, abs=tol)


def test_loss_images_and_gradient(gen):
    schedule = VESchedule()
    net = torch.nn.Conv2d(3, 3, 3, padding=1)

    def denoiser(x_t, sigma):
        return net(x_t / (1 + sigma[:, None, None, None] ** 2).sqrt())

    x = torch.randn((4, 3, 8, 8), generator=gen)
    loss = denoiser_loss(denoiser, x, schedule, generator=gen)
    loss.backward()
    assert loss.ndim == 0 and net.weight.grad is not None
    with pytest.raises(ValueError, match="floating-point"):
        denoiser_loss(denoiser, torch.ones(4, 3, dtype=torch.int64), schedule)
