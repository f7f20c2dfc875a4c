r"""The guidance package against closed forms on a Gaussian prior.

For x ~ N(μ, Σ_x) and x_t = x + σ z, GaussianDenoiser is exact: J = ∂x̂/∂x_t = Σ_x (Σ_x + σ² I)⁻¹
is symmetric and σ² Jᵀ = (Σ_x⁻¹ + σ⁻² I)⁻¹ = V[x | x_t], so each covariance V_t has a dense form,
and with y = A x + ε, ε ~ N(0, Σ_y), E[x | x_t, y] = m + V Aᵀ (Σ_y + A V Aᵀ)⁻¹ (y − A m).
"""

import pytest
import torch
from conftest import gaussian_problem

from emdm import DPLR, VPDDIM, DenseOperator, VPSchedule
from emdm.covariance import Diagonal, Isotropic, LowRank
from emdm.denoisers import SplitDenoiser
from emdm.guidance import (
    BASELINES,
    COVARIANCES,
    MMPS,
    PGDM,
    DiffPIR,
    GaussianPrior,
    IdentityPrior,
    SigmaT,
    Tweedie,
    Zero,
    prior_covariance,
)

B, D, M = 3, 5, 2
DT = torch.float64
I_D = torch.eye(D, dtype=DT)


@pytest.fixture
def problem(gen):
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=DT)  # one level per sample
    return (*gaussian_problem(gen, B, D, M), sigma)


def dense(operator, like):
    r"""The matrices (B, D, D) of a per-sample linear map on (B, D) tensors, column by column."""
    return torch.stack([operator(I_D[j].expand_as(like)) for j in range(D)], dim=-1)


def gaussian_posterior(cov_x, mu, x_t, sigma):
    S = cov_x.dense()
    s2 = sigma[:, None, None] ** 2
    m = mu + (S @ torch.linalg.solve(S + s2 * I_D, (x_t - mu)[..., None]))[..., 0]
    return m, torch.linalg.inv(torch.linalg.inv(S) + I_D / s2)  # (B, D), (B, D, D)


def test_each_covariance_equals_its_dense_formula(problem):
    denoiser, cov_x, mu, A, y, x_t, sigma = problem
    x = x_t.clone().requires_grad_()
    x_hat = denoiser(x, sigma)

    def vjp(u):
        return torch.autograd.grad(x_hat, x, u, retain_graph=True)[0]

    _, V_true = gaussian_posterior(cov_x, mu, x_t, sigma)
    s2 = sigma[:, None, None] ** 2
    expected = {
        Tweedie(): V_true,  # the exact denoiser: σ² Jᵀ is the posterior covariance
        SigmaT(): s2 * I_D,
        IdentityPrior(): s2 / (1 + s2) * I_D,
        GaussianPrior(cov_x): torch.linalg.inv(torch.linalg.inv(cov_x.dense()) + I_D / s2),
    }
    for covariance, V in expected.items():
        out = dense(covariance.operator(sigma, vjp, x_hat), x_t)
        torch.testing.assert_close(out, V, rtol=1e-10, atol=1e-12, msg=covariance.name)
    assert Zero().operator(sigma, vjp, x_hat) is None  # V_t = 0: no A V_t Aᵀ term


def test_prior_covariance_by_name_object_and_dplr(problem):
    _, cov_x, *_ = problem
    assert COVARIANCES == ("tweedie", "zero", "sigma_t", "identity")
    kinds = (Tweedie, Zero, SigmaT, IdentityPrior)
    for name, kind in zip(COVARIANCES, kinds, strict=True):
        covariance = prior_covariance(name)
        assert type(covariance) is kind and covariance.name == name == str(covariance)
    tweedie = Tweedie()
    assert prior_covariance(tweedie) is tweedie
    for made in (prior_covariance(cov_x), prior_covariance("cov_x", cov_x)):
        assert isinstance(made, GaussianPrior) and made.cov_x is cov_x
    for bad in ("tweedy", 0.5, None):
        with pytest.raises(ValueError, match="covariance must be one of"):
            prior_covariance(bad)
    with pytest.raises(ValueError, match="'cov_x' needs cov_x"):
        prior_covariance("cov_x")
    with pytest.raises(ValueError, match="must not be batched"):
        prior_covariance(DPLR(torch.ones(2, D)))
    with pytest.raises(ValueError, match=r"covariance is a DPLR of size 4, expected 5"):
        GaussianPrior(DPLR(torch.ones(4))).check(torch.zeros(B, D))


@pytest.mark.parametrize("form", ["diagonal", "per-observation diagonal", "low-rank"])
def test_mmps_with_a_covariance_object_equals_the_closed_form(problem, gen, form):
    denoiser, cov_x, mu, A, y, x_t, sigma = problem
    diag = torch.rand((B, M), generator=gen, dtype=DT) * 0.1 + 0.01
    U = 0.1 * torch.randn((M, 1), generator=gen, dtype=DT)
    cov_y, Sigma_y = {
        "diagonal": (Diagonal(diag[0]), torch.diag(diag[0])),
        "per-observation diagonal": (Diagonal(diag, batched=True), torch.diag_embed(diag)),
        "low-rank": (LowRank(DPLR(diag[0], U)), DPLR(diag[0], U).dense()),
    }[form]
    m, V = gaussian_posterior(cov_x, mu, x_t, sigma)
    C = Sigma_y + A @ V @ A.mT
    v = torch.linalg.solve(C, (y - (A @ m[..., None])[..., 0])[..., None])
    expected = m + (V @ A.mT @ v)[..., 0]
    out = MMPS(denoiser, DenseOperator(A), y, cov_y, iterations=2 * M)(x_t, sigma)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-8)
    dense_solve = MMPS(denoiser, DenseOperator(A), y, cov_y, GaussianPrior(cov_x), solver="dense")
    torch.testing.assert_close(dense_solve(x_t, sigma), expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_give_the_same_numbers_with_a_float_or_isotropic(problem, name):
    denoiser, cov_x, mu, A, y, x_t, sigma = problem
    made = [BASELINES[name](denoiser, DenseOperator(A), y, c) for c in (0.01, Isotropic(0.01))]
    assert torch.equal(made[0](x_t, sigma), made[1](x_t, sigma))
    runs = [VPDDIM(b, VPSchedule(), steps=4)(x_t, torch.Generator().manual_seed(0)) for b in made]
    assert torch.equal(*runs)


def test_pgdm_and_diffpir_with_a_low_rank_noise_covariance(problem, gen):
    r"""ΠGDM: (Σ_y + r_t² A Aᵀ) v = r, Δ = σ² Jᵀ Aᵀ v; DiffPIR: (I + ρ Aᵀ Σ_y⁻¹ A) Δ =
    ρ Aᵀ Σ_y⁻¹ r, ρ = σ² / λ; with GMRES exact after as many iterations as unknowns."""
    denoiser, cov_x, mu, A, y, x_t, sigma = problem
    Sigma_y = DPLR(torch.rand(M, generator=gen, dtype=DT) + 0.1, 0.3 * torch.ones(M, 1, dtype=DT))
    S, s2 = Sigma_y.dense(), sigma[:, None, None] ** 2
    x_hat = denoiser(x_t, sigma)
    J = cov_x.dense() @ torch.linalg.inv(cov_x.dense() + s2 * I_D)  # (B, D, D), symmetric
    r = (y - (A @ x_hat[..., None])[..., 0])[..., None]
    v = torch.linalg.solve(S + s2 / (1 + s2) * A @ A.mT, r)
    expected = x_hat + (s2 * J.mT @ A.mT @ v)[..., 0]
    pgdm = PGDM(denoiser, DenseOperator(A), y, Sigma_y, iterations=M, regularization=0.0)
    torch.testing.assert_close(pgdm(x_t, sigma), expected)
    rho, P = s2 / 8, torch.linalg.inv(S)
    delta = torch.linalg.solve(I_D + rho * A.mT @ P @ A, rho * A.mT @ P @ r)[..., 0]
    diffpir = DiffPIR(denoiser, DenseOperator(A), y, Sigma_y, iterations=D, regularization=0.0)
    torch.testing.assert_close(diffpir(x_t, sigma), x_hat + delta)


class HalfStep:
    r"""A split denoiser that is no baseline: x̂ = x_t / 2, Δ = 1, weighted by ᾱ_s."""

    def __call__(self, x_t, sigma):
        x_hat, delta = self.split(x_t, sigma)
        return x_hat + delta

    def split(self, x_t, sigma):
        return x_t / 2, torch.ones_like(x_t)

    def vp_weight(self, alpha_bar_t, alpha_bar_s, c_s):
        return alpha_bar_s


def test_vp_ddim_weighs_any_split_denoiser():
    assert isinstance(HalfStep(), SplitDenoiser)
    assert not isinstance(lambda x, s: x, SplitDenoiser)
    sampler = VPDDIM(HalfStep(), VPSchedule(), steps=5, eta=0.0)
    x_t = torch.randn((2, 3), generator=torch.Generator().manual_seed(0), dtype=DT)
    t, s = sampler.grid()[1]
    a_t, a_s, k, _ = sampler.coefficients(t, s)
    x_hat = x_t / a_t / 2
    expected = a_s * x_hat + k * (x_t - a_t * x_hat) + a_s**2 * torch.ones_like(x_t)
    torch.testing.assert_close(sampler.step(x_t, t, s), expected)
    # as a plain denoiser, its correction would be weighted by c_s = a_s - k a_t instead
    plain = VPDDIM(lambda x, sigma: HalfStep()(x, sigma), VPSchedule(), steps=5, eta=0.0)
    expected = a_s * x_hat + k * (x_t - a_t * x_hat) + (a_s - k * a_t) * torch.ones_like(x_t)
    torch.testing.assert_close(plain.step(x_t, t, s), expected)
