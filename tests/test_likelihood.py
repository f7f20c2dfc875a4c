import math

import pytest
import torch

from emdm.denoisers import MixtureDenoiser
from emdm.likelihood import log_likelihood, resample

DT = torch.float64


def test_gaussian_prior_likelihood_is_exact():
    r"""For a Gaussian prior (one component) p(y | x_t) = N(y | W m, Σ_y + W V Wᵀ) exactly, so
    the Tweedie covariance and (Σ_x⁻¹ + σ⁻²I)⁻¹ with the true Σ_x give the exact likelihood."""
    g = torch.Generator().manual_seed(0)
    mu, s, sigma, cov_y = torch.randn((1, 3), generator=g, dtype=DT), 0.5, 0.7, 0.01
    prior = MixtureDenoiser(mu, s)
    W = torch.randn((2, 3), generator=g, dtype=DT)
    y = torch.randn(2, generator=g, dtype=DT)
    x_t = torch.randn((5, 3), generator=g, dtype=DT)
    # p(y | x_t): y = W x + ε with x | x_t ~ N(m, v I), m = (σ² μ + s² x_t)/(s² + σ²)
    v = s**2 * sigma**2 / (s**2 + sigma**2)
    m = (sigma**2 * mu + s**2 * x_t) / (s**2 + sigma**2)
    S = cov_y * torch.eye(2, dtype=DT) + v * W @ W.T
    exact = torch.distributions.MultivariateNormal(m @ W.T, S).log_prob(y)
    for cov in ("tweedie", "cov_x", "exact"):
        out = log_likelihood(prior, x_t, sigma, W, y, cov_y, cov, s**2 * torch.eye(3, dtype=DT))
        torch.testing.assert_close(out, exact)
    # the heuristics differ from it
    assert not torch.allclose(log_likelihood(prior, x_t, sigma, W, y, cov_y, "zero"), exact)


def test_tweedie_likelihood_is_not_exact_for_a_mixture():
    # with several components p(x | x_t) is not Gaussian: the Tweedie likelihood only
    # approximates the exact one, and more closely as σ_t → 0 (p(x | x_t) concentrates)
    g = torch.Generator().manual_seed(3)
    prior = MixtureDenoiser(torch.randn((8, 3), generator=g, dtype=DT), 0.1)
    W, y = torch.randn((1, 3), generator=g, dtype=DT), torch.zeros(1, dtype=DT)
    x_t = prior.sample(256, generator=g)
    errors = []
    for sigma in (0.01, 1.0):
        x = x_t + sigma * torch.randn(x_t.shape, generator=g, dtype=DT)
        exact = log_likelihood(prior, x, sigma, W, y, 1e-2, "exact")
        approx = log_likelihood(prior, x, sigma, W, y, 1e-2, "tweedie")
        errors.append((approx - exact).abs().median().item())
    assert errors[0] < 1e-3 < errors[1]


def test_chunks_do_not_change_the_result():
    g = torch.Generator().manual_seed(1)
    prior = MixtureDenoiser(torch.randn((16, 3), generator=g, dtype=DT), 0.1)
    W, y = torch.randn((1, 3), generator=g, dtype=DT), torch.zeros(1, dtype=DT)
    x_t = torch.randn((1000, 3), generator=g, dtype=DT)
    a = log_likelihood(prior, x_t, 0.3, W, y, 1e-2, "tweedie", chunk=64)
    b = log_likelihood(prior, x_t, 0.3, W, y, 1e-2, "tweedie", chunk=4096)
    torch.testing.assert_close(a, b)


def test_resample_follows_the_weights():
    g = torch.Generator().manual_seed(2)
    x = torch.arange(3, dtype=DT)[:, None]
    logw = torch.tensor([0.0, math.log(3.0), -math.inf], dtype=DT)
    draws = resample(x, logw, 40000, generator=g)[:, 0]
    assert (draws != 2).all()
    assert (draws == 1).double().mean().item() == pytest.approx(0.75, abs=0.01)


def test_bad_covariance():
    prior = MixtureDenoiser(torch.zeros((1, 2), dtype=DT), 1.0)
    W, y, x = torch.ones((1, 2), dtype=DT), torch.zeros(1, dtype=DT), torch.zeros((1, 2), dtype=DT)
    with pytest.raises(ValueError, match="covariance must be one of"):
        log_likelihood(prior, x, 1.0, W, y, 1.0, "hessian")
    with pytest.raises(ValueError, match="needs the prior covariance"):
        log_likelihood(prior, x, 1.0, W, y, 1.0, "cov_x")
