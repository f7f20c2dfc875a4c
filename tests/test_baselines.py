r"""The posterior-sampling baselines on a Gaussian prior, whose denoiser is affine with the
symmetric Jacobian J̃ = Σ (Σ + σ̃² I)⁻¹, so each correction has a closed form."""

import math

import pytest
import torch
from conftest import gaussian_problem

from emdm import VPDDIM, DenseOperator, VPSchedule
from emdm.benchmark import CountingDenoiser
from emdm.denoisers import EpsilonDenoiser
from emdm.guidance import BASELINES, DPS, PGDM, TMPD, DiffPIR

B, D, M = 4, 5, 2
DT = torch.float64
COV_Y = 0.1**2


@pytest.fixture
def problem(gen):
    denoiser, cov_x, _, A, y, x_t = gaussian_problem(gen, B, D, M)
    return denoiser, cov_x.dense(), A, y, x_t


def moments(denoiser, S, x_t, sigma):
    J = S @ torch.linalg.inv(S + sigma**2 * torch.eye(D, dtype=DT))  # symmetric
    return denoiser(x_t, torch.full((B,), sigma, dtype=DT)), J


def mv(M_, v):
    return (M_ @ v[..., None])[..., 0]


@pytest.mark.parametrize("sigma", [0.1, 1.0, 10.0])
def test_each_baseline_reproduces_its_formula(problem, sigma):
    denoiser, S, A, y, x_t = problem
    s = torch.full((B,), sigma, dtype=DT)
    x_hat, J = moments(denoiser, S, x_t, sigma)
    r = y - mv(A, x_hat)
    I_M, I_D = torch.eye(M, dtype=DT), torch.eye(D, dtype=DT)
    r_t2 = sigma**2 / (1 + sigma**2)

    exact = {"regularization": 0.0, "iterations": M}  # GMRES is exact after M iterations
    # ΠGDM: (σ_y² I + r_t² A Aᵀ) v = r, Δ = σ̃² J̃ᵀ Aᵀ v
    v = torch.linalg.solve(COV_Y * I_M + r_t2 * A @ A.mT, r)
    expected = x_hat + sigma**2 * mv(J.T @ A.mT, v)
    torch.testing.assert_close(PGDM(denoiser, DenseOperator(A), y, COV_Y, **exact)(x_t, s),
                               expected)  # fmt: skip
    # the benchmark's settings (5 iterations, ε = 1e-6) stay close
    torch.testing.assert_close(PGDM(denoiser, DenseOperator(A), y, COV_Y)(x_t, s), expected,
                               rtol=1e-3, atol=1e-3)  # fmt: skip

    # TMPD: d = σ̃² J̃ᵀ 1, (σ_y² I + A diag(d) Aᵀ) v = r, Δ = σ̃² J̃ᵀ Aᵀ v
    d = sigma**2 * J.T.sum(1)
    v = torch.linalg.solve(COV_Y * I_M + A @ torch.diag(d) @ A.mT, r)
    expected = x_hat + sigma**2 * mv(J.T @ A.mT, v)
    torch.testing.assert_close(TMPD(denoiser, DenseOperator(A), y, COV_Y, **exact)(x_t, s),
                               expected)  # fmt: skip

    # DiffPIR: (I + ρ/σ_y² AᵀA) Δ = ρ/σ_y² Aᵀ r, ρ = σ̃² / λ (GMRES 5 = D iterations: exact)
    w = sigma**2 / 8 / COV_Y
    delta = torch.linalg.solve(I_D + w * A.mT @ A, w * mv(A.mT, r))
    baseline = DiffPIR(denoiser, DenseOperator(A), y, COV_Y, iterations=D, regularization=0.0)
    torch.testing.assert_close(baseline(x_t, s), x_hat + delta)

    # DPS: Δ = −ζ ∇_{x̃} ‖y − A x̂‖ = ζ J̃ᵀ Aᵀ r / ‖r‖
    expected = x_hat + 0.5 * mv(J.T @ A.mT, r / r.norm(dim=1, keepdim=True))
    torch.testing.assert_close(DPS(denoiser, DenseOperator(A), y, COV_Y)(x_t, s), expected)


def test_vjps_per_call(problem):
    denoiser, S, A, y, x_t = problem
    s = torch.ones(B, dtype=DT)
    for name, expected in (("dps", 1), ("pgdm", 1), ("tmpd", 2), ("diffpir", 0)):
        counting = CountingDenoiser(denoiser)
        baseline = BASELINES[name](counting, DenseOperator(A), y, COV_Y)
        baseline(x_t, s)
        assert counting.backwards == baseline.vjps == expected, name


def test_vp_ddim_applies_the_benchmark_weights(problem):
    # one VPDDIM step: x_s = (unconditional step from x̂) + κ Δ, with κ of protocols §6.3
    denoiser, S, A, y, _ = problem
    schedule = VPSchedule()
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn((B, D), generator=gen, dtype=DT)
    for name in BASELINES:
        baseline = BASELINES[name](denoiser, DenseOperator(A), y, COV_Y)
        sampler = VPDDIM(baseline, schedule, steps=10, eta=0.0)
        t, s = sampler.grid()[2]
        a_t, a_s, k, _ = sampler.coefficients(t, s)
        sigma_t = sampler.sigma(t, x_t)
        x_hat, delta = baseline.split(x_t / a_t, sigma_t)
        ab_t, ab_s, c_s = a_t**2, a_s**2, a_s - k * a_t
        kappa = {"dps": 1 / math.sqrt(ab_t), "pgdm": math.sqrt(ab_s) * ab_t}.get(name, c_s)
        expected = a_s * x_hat + k * (x_t - a_t * x_hat) + kappa * delta
        torch.testing.assert_close(sampler.step(x_t, t, s), expected)
    # DPS in the benchmark's own terms: x_s −= ζ ∇_{x_t} ‖y − A x̂(x_t / sqrt(ᾱ_t))‖
    dps = DPS(denoiser, DenseOperator(A), y, COV_Y)
    sampler = VPDDIM(dps, schedule, steps=10, eta=0.0)
    t, s = sampler.grid()[2]
    a_t, a_s, k, _ = sampler.coefficients(t, s)
    x = x_t.clone().requires_grad_()
    x_hat = denoiser(x / a_t, sampler.sigma(t, x_t))
    (g,) = torch.autograd.grad((y - mv(A, x_hat)).norm(dim=1).sum(), x)
    x_hat = x_hat.detach()
    expected = a_s * x_hat + k * (x_t - a_t * x_hat) - 0.5 * g
    torch.testing.assert_close(sampler.step(x_t, t, s), expected)


def test_dps_sample_does_not_depend_on_its_batch(problem):
    denoiser, S, A, y, _ = problem
    gens = [torch.Generator().manual_seed(i) for i in range(B)]
    x1 = torch.stack([torch.randn(D, generator=torch.Generator().manual_seed(10 + i),
                                  dtype=DT) for i in range(B)])  # fmt: skip
    full = VPDDIM(DPS(denoiser, DenseOperator(A), y, COV_Y), VPSchedule(), steps=8)(x1, gens)
    one = VPDDIM(DPS(denoiser, DenseOperator(A[2:3]), y[2:3], COV_Y), VPSchedule(), steps=8)(
        x1[2:3], [torch.Generator().manual_seed(2)]
    )
    torch.testing.assert_close(full[2:3], one)
    assert torch.isfinite(full).all() and full.shape == (B, D)


def test_epsilon_denoiser_adapter():
    # an epsilon network that knows the truth x0: ε = (x_t − sqrt(ᾱ) x0) / sqrt(1 − ᾱ)
    schedule = VPSchedule()
    x0 = torch.tensor([[0.3, -0.2], [0.9, 0.1]], dtype=DT)
    seen = []

    def network(x_t, n):
        seen.append(n)
        ab = schedule.alpha_bar(n / (schedule.T - 1))[:, None]
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    denoiser = EpsilonDenoiser(network, schedule)
    ab = schedule.alpha_bar(torch.tensor([500 / 999, 20 / 999], dtype=DT))
    sigma = ((1 - ab) / ab).sqrt()
    x_ve = x0 + sigma[:, None] * torch.randn((2, 2), dtype=DT)
    torch.testing.assert_close(denoiser(x_ve, sigma), x0)
    torch.testing.assert_close(seen[0], torch.tensor([500.0, 20.0], dtype=DT))
    assert denoiser(torch.full((2, 2), 5.0, dtype=DT), sigma).max() <= 1  # clipped


def test_bad_input(problem):
    denoiser, S, A, y, x_t = problem
    with pytest.raises(ValueError, match="cov_y must be a positive float"):
        PGDM(denoiser, DenseOperator(A), y, 0.0)
    with pytest.raises(ValueError, match="zeta must be positive"):
        DPS(denoiser, DenseOperator(A), y, COV_Y, zeta=0.0)
    with pytest.raises(ValueError, match="iterations must be a positive"):
        TMPD(denoiser, DenseOperator(A), y, COV_Y, iterations=0)
    with pytest.raises(ValueError, match="x_t must have shape"):
        DPS(denoiser, DenseOperator(A), y, COV_Y)(x_t[:2], torch.ones(2, dtype=DT))
    with pytest.raises(ValueError, match="vector-Jacobian"):
        TMPD(lambda x, s: x.detach(), DenseOperator(A), y, COV_Y)(x_t, torch.ones(B, dtype=DT))


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_non_finite_input_and_a_dtype_mismatch_are_named(problem, name):
    denoiser, S, A, y, x_t = problem
    counting = CountingDenoiser(denoiser)
    for bad in (math.nan, math.inf):  # each used to give non-finite corrections, silently
        y_bad = y.clone()
        y_bad[1, 0] = bad
        with pytest.raises(ValueError, match=r"y of shape \(4, 2\) has .* expected finite"):
            BASELINES[name](counting, DenseOperator(A), y_bad, COV_Y)
        with pytest.raises(ValueError, match=f"cov_y must be a positive float .* got {bad}"):
            BASELINES[name](counting, DenseOperator(A), y, bad)
    guidance = BASELINES[name](counting, DenseOperator(A), y, COV_Y)
    with pytest.raises(
        ValueError, match=r"x_t has dtype torch\.float32 but y has dtype torch\.float64"
    ):
        guidance(x_t.float(), torch.ones(B))
    assert counting.forwards == 0


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_each_baseline_samples_finite_of_the_right_shape(problem, name):
    denoiser, S, A, y, _ = problem
    baseline = BASELINES[name](denoiser, DenseOperator(A), y, COV_Y)
    x1 = torch.randn((B, D), generator=torch.Generator().manual_seed(0), dtype=DT)
    x = VPDDIM(baseline, VPSchedule(), steps=20)(x1, torch.Generator().manual_seed(1))
    assert x.shape == (B, D) and torch.isfinite(x).all()
