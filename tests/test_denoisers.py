import math

import pytest
import torch
from conftest import random_dplr

from emdm import DPLR, EDMDenoiser, GaussianDenoiser, MixtureDenoiser
from emdm.denoisers import broadcast_sigma

SIGMAS = [1e-3, 0.1, 1.0, 10.0, 100.0]


def jacobian(f, x):
    """Per-sample Jacobian (B, D, D) of a per-sample map on (B, D)."""
    return torch.func.vmap(torch.func.jacrev(lambda v: f(v[None])[0]))(x)


# Gaussian


@pytest.fixture
def gaussian(gen):
    D, U = random_dplr(5, 2, gen)
    mean = torch.randn(5, generator=gen, dtype=torch.float64)
    return GaussianDenoiser(mean, DPLR(D, U)), mean, DPLR(D, U).dense()


@pytest.mark.parametrize("sigma", SIGMAS)
def test_gaussian_denoiser_closed_form(gaussian, gen, sigma):
    denoiser, mu, S = gaussian
    x_t = torch.randn((4, 5), generator=gen, dtype=torch.float64) * (1 + sigma)
    s = torch.full((4,), sigma, dtype=torch.float64)
    I = torch.eye(5, dtype=torch.float64)
    expected = mu + (S @ torch.linalg.solve(S + sigma**2 * I, (x_t - mu).T)).T
    torch.testing.assert_close(denoiser(x_t, s), expected)
    # V[x | x_t] = (S^-1 + sigma^-2 I)^-1, and sigma^2 J (Tweedie) gives the same matrix
    V = torch.linalg.inv(torch.linalg.inv(S) + I / sigma**2)
    torch.testing.assert_close(denoiser.covariance(s).dense(), V.expand(4, 5, 5))
    J = jacobian(lambda v: denoiser(v, s[:1].expand(len(v))), x_t)
    torch.testing.assert_close(sigma**2 * J, V.expand(4, 5, 5))


def test_gaussian_denoiser_float32_at_large_sigma(gaussian, gen):
    denoiser, mu, S = gaussian
    x_t = mu + 100 * torch.randn((16, 5), generator=gen, dtype=torch.float64)
    s = torch.full((16,), 100.0, dtype=torch.float64)
    exact = denoiser(x_t, s)
    approx = denoiser(x_t.float(), s.float()).double()
    # the output is O(1) while x_t is O(100): no cancellation beyond float32 eps * O(1)
    assert (approx - exact).abs().max() < 1e-5
    V32 = denoiser.covariance(s.float()).to(torch.float32)
    rel = (V32.dense().double() - denoiser.covariance(s).dense()).abs().max() / S.abs().max()
    assert rel < 1e-5


def test_gaussian_denoiser_image_shapes(gen):
    D, U = random_dplr(12, 2, gen)
    mean = torch.randn((3, 2, 2), generator=gen, dtype=torch.float64)
    denoiser = GaussianDenoiser(mean, DPLR(D, U))
    x_t = torch.randn((2, 3, 2, 2), generator=gen, dtype=torch.float64)
    out = denoiser(x_t, torch.ones(2, dtype=torch.float64))
    assert out.shape == x_t.shape
    with pytest.raises(ValueError, match="12 features"):
        denoiser(torch.ones(2, 11, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="mean has 4 elements"):
        GaussianDenoiser(torch.ones(4), DPLR(D, U))


def test_gaussian_denoiser_rejects_a_covariance_that_is_not_one(gen):
    D, U = random_dplr(5, 2, gen)
    mean = torch.zeros(5, dtype=torch.float64)
    D_neg = D.clone()
    D_neg[3] = -0.5  # used to give a finite, wrong denoiser
    with pytest.raises(
        ValueError, match=r"positive semi-definite.*diagonal part D has 1 negative"
    ):
        GaussianDenoiser(mean, DPLR(D_neg, U))
    with pytest.raises(
        ValueError, match=r"positive semi-definite.*diagonal part D has 1 negative"
    ):
        GaussianDenoiser(mean, DPLR(D_neg))
    # another V: D >= 0 is not enough, the diagonal D + sum_j U_ij V_ji must be >= 0 too
    V = -4 * U.mT
    with pytest.raises(ValueError, match=r"D \+ sum_j U_ij V_ji has \d negative"):
        GaussianDenoiser(mean, DPLR(D, U, V))
    GaussianDenoiser(mean, DPLR(D, U, U.mT.clone()))  # V = U^T given explicitly: accepted
    GaussianDenoiser(mean, DPLR(torch.zeros(5, dtype=torch.float64), U))  # PSD, singular
    for bad in (math.nan, math.inf):
        m = mean.clone()
        m[0] = bad
        with pytest.raises(ValueError, match=r"mean of shape \(5,\) has"):
            GaussianDenoiser(m, DPLR(D, U))
        U_bad = U.clone()
        U_bad[1, 1] = bad
        with pytest.raises(ValueError, match=r"the covariance's U of shape \(5, 2\) has"):
            GaussianDenoiser(mean, DPLR(D, U_bad))
        D_bad = D.clone()
        D_bad[2] = bad
        with pytest.raises(ValueError, match="the covariance's D of shape"):
            GaussianDenoiser(mean, DPLR(D_bad, U))


# Gaussian mixture


@pytest.fixture
def mixture(gen):
    means = 2 * torch.rand((6, 3), generator=gen, dtype=torch.float64) - 1
    std = torch.tensor([0.05, 0.1, 0.2, 0.1, 0.3, 0.05], dtype=torch.float64)
    weights = torch.rand(6, generator=gen, dtype=torch.float64) + 0.2
    return MixtureDenoiser(means, std, weights)


@pytest.mark.parametrize("sigma", [0.01, 0.1, 1.0, 10.0])
def test_mixture_matches_tweedie_autograd(mixture, gen, sigma):
    x = mixture.sample(8, generator=gen)
    x_t = x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    s = torch.full((8,), sigma, dtype=torch.float64)
    score = torch.func.vmap(torch.func.grad(lambda v: mixture.log_prob(v[None], s[:1])[0]))(x_t)
    hessian = torch.func.vmap(torch.func.hessian(lambda v: mixture.log_prob(v[None], s[:1])[0]))(
        x_t
    )
    I = torch.eye(3, dtype=torch.float64)
    # E[x | x_t] = x_t + sigma^2 grad log p_t, V[x | x_t] = sigma^2 I + sigma^4 hess log p_t
    torch.testing.assert_close(mixture(x_t, s), x_t + sigma**2 * score)
    torch.testing.assert_close(mixture.covariance(x_t, s), sigma**2 * I + sigma**4 * hessian)
    J = jacobian(lambda v: mixture(v, s[:1].expand(len(v))), x_t)
    torch.testing.assert_close(mixture.covariance(x_t, s), sigma**2 * J)


def test_mixture_log_prob_normalized(gen):
    # 1-D mixture: the density integrates to one
    mixture = MixtureDenoiser(torch.tensor([[-1.0], [2.0]], dtype=torch.float64), 0.3)
    grid = torch.linspace(-10, 10, 20001, dtype=torch.float64)[:, None]
    density = mixture.log_prob(grid, torch.full((len(grid),), 0.5, dtype=torch.float64)).exp()
    assert torch.trapezoid(density, grid[:, 0]).item() == pytest.approx(1.0, abs=1e-8)


def test_mixture_brute_force_monte_carlo(mixture, gen):
    """Self-normalized importance sampling of p(x | x_t) ∝ p(x) N(x_t | x, σ² I)."""
    sigma, n = 0.3, 2**20
    x_t = torch.tensor([[0.2, -0.1, 0.3]], dtype=torch.float64)
    x = mixture.sample(n, generator=gen)
    logw = -((x_t - x) ** 2).sum(-1) / (2 * sigma**2)
    w = torch.softmax(logw, 0)
    mean = w @ x
    cov = (w[:, None] * (x - mean)).T @ (x - mean)
    s = torch.tensor([sigma], dtype=torch.float64)
    exact_mean, exact_cov = mixture(x_t, s)[0], mixture.covariance(x_t, s)[0]
    # Monte-Carlo standard error of the mean: sqrt(diag V / ESS), ESS = 1 / sum w²
    ess = 1 / (w**2).sum()
    assert ess > 1e4
    se = (exact_cov.diagonal() / ess).sqrt()
    assert ((mean - exact_mean).abs() < 5 * se).all()
    # entries of the covariance: se ≈ sqrt((V_ij² + V_ii V_jj) / ESS)
    d = exact_cov.diagonal()
    se_cov = ((exact_cov**2 + d[:, None] * d[None, :]) / ess).sqrt()
    assert ((cov - exact_cov).abs() < 5 * se_cov).all()


def test_mixture_is_stable_in_float32(mixture, gen):
    m32 = MixtureDenoiser(mixture.means.float(), mixture.std.float(), mixture.log_weights.exp())
    far = torch.tensor([[1e3, -1e3, 5e2], [0.0, 0.0, 0.0], [3.0, 3.0, -3.0]])
    for sigma in [1e-3, 1e-2, 1.0, 100.0]:
        s = torch.full((3,), sigma)
        out, cov = m32(far, s), m32.covariance(far, s)
        assert torch.isfinite(out).all() and torch.isfinite(cov).all()
        ref = mixture(far.double(), s.double())
        assert (out.double() - ref).abs().max() < 1e-4 * max(1.0, sigma**2)


def test_mixture_posterior_reduces_to_linear_gaussian(gen):
    # one component: p(x | y) = N(C (mu / s² + Aᵀ Σy⁻¹ y), C), C = (I / s² + Aᵀ Σy⁻¹ A)⁻¹
    mu = torch.randn((1, 4), generator=gen, dtype=torch.float64)
    s, cov_y = 0.7, 0.1
    A = torch.randn((3, 2, 4), generator=gen, dtype=torch.float64)
    y = torch.randn((3, 2), generator=gen, dtype=torch.float64)
    post = MixtureDenoiser(mu, s).posterior(A, y, cov_y)
    I = torch.eye(4, dtype=torch.float64)
    C = torch.linalg.inv(I / s**2 + A.mT @ A / cov_y)
    m = (C @ (mu[0] / s**2 + (A.mT @ y[..., None])[..., 0] / cov_y)[..., None])[..., 0]
    torch.testing.assert_close(post.mean(), m)
    torch.testing.assert_close(post.covariance(), C)
    torch.testing.assert_close(post.log_weights, torch.zeros(3, 1, dtype=torch.float64))


def test_mixture_posterior_brute_force(mixture, gen):
    n = 2**20
    A = torch.randn((1, 1, 3), generator=gen, dtype=torch.float64)
    y = torch.tensor([[0.4]], dtype=torch.float64)
    cov_y = 0.05**2
    post = mixture.posterior(A, y, cov_y)
    x = mixture.sample(n, generator=gen)
    w = torch.softmax(-((x @ A[0].T - y) ** 2).sum(-1) / (2 * cov_y), 0)
    ess = 1 / (w**2).sum()
    se = (post.covariance()[0].diagonal() / ess).sqrt()
    assert ((w @ x - post.mean()[0]).abs() < 5 * se).all()
    # the samples of the posterior mixture have its moments
    draws = post.sample(2**16, generator=gen)[0]
    se = (post.covariance()[0].diagonal() / 2**16).sqrt()
    assert ((draws.mean(0) - post.mean()[0]).abs() < 5 * se).all()


@pytest.mark.parametrize("sigma", [0.01, 0.3, 5.0])
def test_mixture_likelihood_is_bayes_rule(mixture, gen, sigma):
    # log p(y | x_t) = log p(x_t | y) + log p(y) - log p(x_t), with p(x_t | y) the posterior
    # mixture convolved with N(0, σ² I) and p(y) = Σ_k w_k N(y | A μ_k, s_k² A Aᵀ + Σ_y)
    from torch.distributions import MultivariateNormal

    A = torch.randn((2, 3), generator=gen, dtype=torch.float64)
    y = torch.randn(2, generator=gen, dtype=torch.float64)
    cov_y = torch.tensor([[0.02, 0.005], [0.005, 0.01]], dtype=torch.float64)
    x_t = torch.randn((5, 3), generator=gen, dtype=torch.float64)
    s = torch.full((5,), sigma, dtype=torch.float64)
    post = mixture.posterior(A[None], y[None], cov_y[None])
    I = torch.eye(3, dtype=torch.float64)
    comps = MultivariateNormal(post.means[0], post.covs[0] + sigma**2 * I)
    log_post = torch.logsumexp(post.log_weights[0] + comps.log_prob(x_t[:, None]), -1)
    s2 = mixture.std[:, None, None] ** 2
    evidence = MultivariateNormal(mixture.means @ A.T, s2 * (A @ A.T) + cov_y)
    log_y = torch.logsumexp(mixture.log_weights + evidence.log_prob(y), -1)
    expected = log_post + log_y - mixture.log_prob(x_t, s)
    torch.testing.assert_close(mixture.log_likelihood(x_t, s, A, y, cov_y), expected)


def test_mixture_bad_input():
    with pytest.raises(ValueError, match="means must have shape"):
        MixtureDenoiser(torch.ones(3), 0.1)
    with pytest.raises(ValueError, match="std must be"):
        MixtureDenoiser(torch.ones(3, 2), torch.ones(2))
    with pytest.raises(ValueError, match="weights"):
        MixtureDenoiser(torch.ones(3, 2), 0.1, -torch.ones(3))


# EDM preconditioning


class Recorder(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn, self.calls = fn, []

    def forward(self, x, emb):
        self.calls.append((x, emb))
        return self.fn(x)


@pytest.mark.parametrize("sigma", [1e-3, 0.5, 2.0, 100.0])
def test_edm_preconditioning(gen, sigma):
    x_t = torch.randn((3, 2, 4), generator=gen, dtype=torch.float64)
    s = torch.full((3,), sigma, dtype=torch.float64)
    net = Recorder(lambda x: torch.zeros_like(x))
    d = EDMDenoiser(net, emb_features=8).double()
    torch.testing.assert_close(d(x_t, s), x_t / (sigma**2 + 1))  # c_skip x_t
    x_in, emb = net.calls[-1]
    torch.testing.assert_close(x_in, x_t / math.sqrt(sigma**2 + 1))  # c_in x_t
    f = 10 ** (-4 * torch.arange(4, dtype=torch.float64) / 3)
    c = math.log(sigma)  # c_noise = ln sigma
    expected = torch.cat([torch.sin(f * c), torch.cos(f * c)]).expand(3, 8)
    torch.testing.assert_close(emb, expected)
    # F = identity: d = (c_skip + c_out c_in) x_t = (1 + sigma) / (sigma² + 1) x_t
    d = EDMDenoiser(Recorder(lambda x: x), emb_features=8).double()
    torch.testing.assert_close(d(x_t, s), (1 + sigma) / (sigma**2 + 1) * x_t)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_edm_rejects_a_noise_level_outside_zero_infinity(bad):
    # ln sigma used to turn these into NaN or infinite outputs, silently
    net = Recorder(lambda x: x)
    d = EDMDenoiser(net, emb_features=8)
    sigma = torch.tensor([0.5, bad, 2.0])
    with pytest.raises(ValueError, match=r"0 < sigma < inf .*got \[(nan|inf|-?\d)"):
        d(torch.zeros(3, 4), sigma)
    with pytest.raises(ValueError, match="0 < sigma < inf"):
        d(torch.zeros(3, 4), bad)  # a scalar, broadcast
    assert net.calls == []


def test_broadcast_sigma_validation():
    x = torch.ones(4, 3)
    assert broadcast_sigma(0.5, x).shape == (4,)
    with pytest.raises(ValueError, match=r"sigma must have shape \(\) or \(4,\)"):
        broadcast_sigma(torch.ones(3), x)
    with pytest.raises(ValueError, match="sigma must be positive"):
        broadcast_sigma(torch.tensor([1.0, 0.0, 1.0, 1.0]), x)
    with pytest.raises(ValueError, match="sigma must be positive"):
        broadcast_sigma(-1.0, x)


def test_gaussian_denoiser_moves_with_its_covariance():
    from emdm import DPLR, GaussianDenoiser

    g = torch.Generator().manual_seed(0)
    D, U = torch.rand(6, generator=g) + 0.1, torch.randn(6, 2, generator=g)
    denoiser = GaussianDenoiser(torch.randn(6, generator=g), DPLR(D, U, U.T))
    x_t, sigma = torch.randn(3, 6, generator=g), torch.full((3,), 0.7)
    expected = denoiser(x_t.double(), sigma.double())  # the float32 covariance, cast per call
    moved = denoiser.double()  # nn.Module.double: every buffer, the covariance's too
    assert moved.cov.D.dtype == moved.cov.U.dtype == moved.mean.dtype == torch.float64
    torch.testing.assert_close(moved(x_t.double(), sigma.double()), expected)
    assert {"mean", "cov_D", "cov_U", "cov_V"} <= set(moved.state_dict())
    meta = GaussianDenoiser(torch.zeros(6), DPLR(D, U, U.T)).to("meta")
    assert meta.cov.D.is_meta and meta.cov.U.is_meta and meta.mean.is_meta
