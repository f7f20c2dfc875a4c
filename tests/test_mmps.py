r"""MMPS against the closed-form posterior mean of linear-Gaussian models.

For a prior x ~ N(μ, Σ) and x_t = x + σ z, p(x | x_t) = N(m, V) with
m = μ + Σ (Σ + σ² I)⁻¹ (x_t − μ) and V = (Σ⁻¹ + σ⁻² I)⁻¹; with y = A x + ε, ε ~ N(0, Σ_y),
E[x | x_t, y] = m + V Aᵀ (Σ_y + A V Aᵀ)⁻¹ (y − A m). MMPS is exact there.
"""

import math

import pytest
import torch
from conftest import gaussian_problem, random_dplr

from emdm import (
    DPLR,
    MMPS,
    DenseOperator,
    EDMDenoiser,
    GaussianDenoiser,
    MaskOperator,
    MixtureDenoiser,
    VESchedule,
    sample,
)
from emdm.benchmark import CountingDenoiser
from emdm.nn import TimeMLP

B, D, M = 6, 8, 3
SIGMAS = [1e-3, 0.1, 1.0, 10.0, 100.0]
I = torch.eye(D, dtype=torch.float64)


@pytest.fixture
def problem(gen):
    return gaussian_problem(gen, B, D, M, rank=3)


def posterior_mean(m, V, A, y, cov_y):
    """m + V Aᵀ (Σ_y + A V Aᵀ)⁻¹ (y − A m), per sample, all dense."""
    C = cov_y + A @ V @ A.mT
    v = torch.linalg.solve(C, (y - (A @ m[..., None])[..., 0])[..., None])
    return m + (V @ A.mT @ v)[..., 0]


def gaussian_moments(cov_x, mu, x_t, sigma):
    S = cov_x.dense()
    m = mu + (S @ torch.linalg.solve(S + sigma**2 * I, (x_t - mu)[..., None]))[..., 0]
    V = torch.linalg.inv(torch.linalg.inv(S) + I / sigma**2)
    return m, V


@pytest.mark.parametrize("sigma", SIGMAS)
def test_tweedie_equals_closed_form_and_prior_covariance_path(problem, sigma):
    denoiser, cov_x, mu, A, y, x_t = problem
    cov_y = 0.05**2
    s = torch.full((B,), sigma, dtype=torch.float64)
    m, V = gaussian_moments(cov_x, mu, x_t, sigma)
    expected = posterior_mean(m, V, A, y, cov_y * torch.eye(M, dtype=torch.float64))
    # CG on an M×M SPD system is exact after M iterations; a few more guard round-off
    tweedie = MMPS(denoiser, DenseOperator(A), y, cov_y, "tweedie", iterations=2 * M)(x_t, s)
    explicit = MMPS(denoiser, DenseOperator(A), y, cov_y, cov_x, iterations=2 * M)(x_t, s)
    scale = expected.abs().max()
    torch.testing.assert_close(tweedie, expected, rtol=0, atol=1e-9 * scale)
    torch.testing.assert_close(explicit, expected, rtol=0, atol=1e-9 * scale)
    torch.testing.assert_close(tweedie, explicit, rtol=0, atol=1e-9 * scale)


@pytest.mark.parametrize("sigma", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("covariance", ["zero", "sigma_t", "identity"])
def test_heuristic_covariances(problem, sigma, covariance):
    r"""E ≈ x̂ + σ² Jᵀ Aᵀ (Σ_y + A V_t Aᵀ)⁻¹ (y − A x̂) with V_t the heuristic, J exact."""
    denoiser, cov_x, mu, A, y, x_t = problem
    cov_y = 0.1**2
    s = torch.full((B,), sigma, dtype=torch.float64)
    m, V_true = gaussian_moments(cov_x, mu, x_t, sigma)
    J_T = V_true / sigma**2  # σ² J = V for a Gaussian, and J is symmetric
    V = {"zero": 0 * I, "sigma_t": sigma**2 * I, "identity": sigma**2 / (1 + sigma**2) * I}
    C = cov_y * torch.eye(M, dtype=torch.float64) + A @ V[covariance] @ A.mT
    v = torch.linalg.solve(C, (y - (A @ m[..., None])[..., 0])[..., None])
    expected = m + sigma**2 * (J_T @ A.mT @ v)[..., 0]
    out = MMPS(denoiser, DenseOperator(A), y, cov_y, covariance, iterations=2 * M)(x_t, s)
    torch.testing.assert_close(out, expected)


def test_noise_covariance_forms_agree(problem, gen):
    denoiser, cov_x, mu, A, y, x_t = problem
    s = torch.full((B,), 0.5, dtype=torch.float64)
    m, V = gaussian_moments(cov_x, mu, x_t, 0.5)
    diag = torch.rand((B, M), generator=gen, dtype=torch.float64) * 0.1 + 0.01
    U = 0.1 * torch.randn((M, 2), generator=gen, dtype=torch.float64)
    cases = [
        (0.01, 0.01 * torch.eye(M, dtype=torch.float64)),
        (diag, torch.diag_embed(diag)),
        (DPLR(diag[0], U), DPLR(diag[0], U).dense()),
    ]
    for cov_y, dense in cases:
        out = MMPS(denoiser, DenseOperator(A), y, cov_y, iterations=3 * M)(x_t, s)
        torch.testing.assert_close(out, posterior_mean(m, V, A, y, dense))


def test_callable_without_adjoint_uses_autograd(problem):
    denoiser, cov_x, mu, A, y, x_t = problem
    s = torch.full((B,), 0.3, dtype=torch.float64)
    explicit = MMPS(denoiser, DenseOperator(A), y, 0.01, iterations=M)(x_t, s)
    implicit = MMPS(denoiser, lambda x: torch.einsum("bmd,bd->bm", A, x), y, 0.01, iterations=M)
    torch.testing.assert_close(implicit(x_t, s), explicit)


def test_inpainting_images_with_mask(gen):
    shape = (2, 3, 3)  # (C, H, W)
    Dn = 18
    Dg, U = random_dplr(Dn, 2, gen)
    cov_x = DPLR(Dg, U)
    mu = torch.randn(shape, generator=gen, dtype=torch.float64)
    mask = (torch.rand((4, 1, 3, 3), generator=gen) > 0.4).double()
    x_t = torch.randn((4, *shape), generator=gen, dtype=torch.float64)
    y = mask * torch.randn((4, *shape), generator=gen, dtype=torch.float64)
    sigma = 0.7
    out = MMPS(GaussianDenoiser(mu, cov_x), MaskOperator(mask), y, 0.01, iterations=Dn)(
        x_t, torch.full((4,), sigma, dtype=torch.float64)
    )
    # dense reference: A = diag(mask) on the flattened signal; unobserved y entries are 0 = A m
    A = torch.diag_embed(mask.expand(4, *shape).flatten(1))
    Ib = torch.eye(Dn, dtype=torch.float64)
    S = cov_x.dense()
    m = (
        mu.flatten()
        + (S @ torch.linalg.solve(S + sigma**2 * Ib, (x_t.flatten(1) - mu.flatten()).T)).T
    )
    V = torch.linalg.inv(torch.linalg.inv(S) + Ib / sigma**2)
    expected = posterior_mean(m, V, A, y.flatten(1), 0.01 * Ib)
    assert out.shape == x_t.shape
    torch.testing.assert_close(out.flatten(1), expected)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 2.0])
def test_mixture_tweedie_uses_the_exact_covariance(gen, sigma):
    r"""For a non-Gaussian prior, the Tweedie V_t = σ² J is the exact V[x | x_t] (Hessian
    form): MMPS equals the moment-matching formula evaluated with MixtureDenoiser.covariance."""
    means = 2 * torch.rand((5, 4), generator=gen, dtype=torch.float64) - 1
    denoiser = MixtureDenoiser(means, 0.2)
    A = torch.randn((B, 2, 4), generator=gen, dtype=torch.float64)
    y = torch.randn((B, 2), generator=gen, dtype=torch.float64)
    x_t = torch.randn((B, 4), generator=gen, dtype=torch.float64)
    s = torch.full((B,), sigma, dtype=torch.float64)
    m, V = denoiser(x_t, s), denoiser.covariance(x_t, s)
    expected = posterior_mean(m, V, A, y, 0.01 * torch.eye(2, dtype=torch.float64))
    out = MMPS(denoiser, DenseOperator(A), y, 0.01, iterations=4)(x_t, s)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_cost_floor_one_forward_k_plus_one_vjps(problem, k):
    denoiser, cov_x, mu, A, y, x_t = problem
    counting = CountingDenoiser(denoiser)
    s = torch.full((B,), 1.0, dtype=torch.float64)
    MMPS(counting, DenseOperator(A), y, 0.01, iterations=k)(x_t, s)
    assert (counting.forwards, counting.backwards) == (1, k + 1)
    counting = CountingDenoiser(denoiser)
    MMPS(counting, DenseOperator(A), y, 0.01, "sigma_t", iterations=k)(x_t, s)
    assert (counting.forwards, counting.backwards) == (1, 1)


def test_untrained_network_stays_finite(gen):
    torch.manual_seed(0)
    net = EDMDenoiser(TimeMLP(8, emb_features=16, hidden_features=(32, 32)), emb_features=16)
    net = net.double()
    A = torch.randn((B, M, 8), generator=gen, dtype=torch.float64)
    y = torch.randn((B, M), generator=gen, dtype=torch.float64)
    x_t = 10 * torch.randn((B, 8), generator=gen, dtype=torch.float64)
    mmps = MMPS(net, DenseOperator(A), y, 1e-4, iterations=5)
    out = mmps(x_t, torch.full((B,), 10.0))
    assert torch.isfinite(out).all() and not out.requires_grad
    assert 0 <= mmps.nonpositive.item() <= 5 * B


def test_guard_count_is_exposed(problem):
    denoiser, cov_x, mu, A, y, x_t = problem
    s = torch.ones(B, dtype=torch.float64)
    mmps = MMPS(lambda x, sigma: -denoiser(x, sigma), DenseOperator(A), y, 1e-6, iterations=3)
    out = mmps(x_t, s)  # J is negative definite: every sample's first step is guarded
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, -denoiser(x_t, s))  # v = 0: no correction
    assert mmps.nonpositive.item() == B
    mmps(x_t, s)
    assert mmps.nonpositive.item() == 2 * B


def test_per_sample_result_does_not_depend_on_batch(problem):
    denoiser, cov_x, mu, A, y, x_t = problem
    s = torch.full((B,), 1.0, dtype=torch.float64)
    full = MMPS(denoiser, DenseOperator(A), y, 0.01, iterations=1)(x_t, s)
    one = MMPS(denoiser, DenseOperator(A[:2]), y[:2], 0.01, iterations=1)(x_t[:2], s[:2])
    torch.testing.assert_close(full[:2], one)
    glob = MMPS(denoiser, DenseOperator(A), y, 0.01, iterations=1, dot="batch")(x_t, s)
    assert not torch.allclose(glob[:2], one)


def test_bad_input_is_rejected_before_work(problem):
    denoiser, cov_x, mu, A, y, x_t = problem
    counting = CountingDenoiser(denoiser)
    op = DenseOperator(A)
    s = torch.ones(B, dtype=torch.float64)

    def raises(match, make, x=x_t, sigma=s):
        with pytest.raises(ValueError, match=match):
            make()(x, sigma)
        assert counting.forwards == 0

    raises("cov_y must be positive", lambda: MMPS(counting, op, y, 0.0))
    raises("cov_y must be positive", lambda: MMPS(counting, op, y, -torch.ones(B, M)))
    raises("does not broadcast to y", lambda: MMPS(counting, op, y, torch.ones(B, M + 1)))
    raises("cov_y is a DPLR of size 2", lambda: MMPS(counting, op, y, DPLR(torch.ones(2))))
    raises("cov_y must be positive definite", lambda: MMPS(counting, op, y, DPLR(-torch.ones(M))))
    raises("cov_y must be a positive float", lambda: MMPS(counting, op, y, "0.1"))
    raises("covariance must be one of", lambda: MMPS(counting, op, y, 0.1, "tweedy"))
    raises("covariance must be one of", lambda: MMPS(counting, op, y, 0.1, 0.5))
    raises("iterations must be a positive integer", lambda: MMPS(counting, op, y, 0.1, "zero", 0))
    raises("dot must be one of", lambda: MMPS(counting, op, y, 0.1, dot="all"))
    raises(
        r"x_t must have shape \(B, \*\) with B = 6", lambda: MMPS(counting, op, y, 0.1), x=x_t[:3]
    )
    raises(
        r"inputs of shape \(B, \*\(8,\)\)",
        lambda: MMPS(counting, op, y, 0.1),
        x=torch.ones(B, D + 1, dtype=torch.float64),
    )
    raises("but y has shape", lambda: MMPS(counting, op, y[:, :2], 0.1))
    raises(
        "covariance is a DPLR of size 3", lambda: MMPS(counting, op, y, 0.1, DPLR(torch.ones(3)))
    )
    raises("sigma must be positive", lambda: MMPS(counting, op, y, 0.1), sigma=torch.zeros(B))
    raises("sigma must have shape", lambda: MMPS(counting, op, y, 0.1), sigma=torch.ones(B + 1))
    with pytest.raises(ValueError, match="does not depend on x_t through autograd"):
        MMPS(lambda x, sigma: denoiser(x, sigma).detach(), op, y, 0.1)(x_t, s)
    # a plain callable whose output does not match y is caught before the CG solve
    with pytest.raises(ValueError, match="but y has shape"):
        MMPS(denoiser, lambda x: x[:, :2], y, 0.1)(x_t, s)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_observations_and_noise_are_rejected_at_construction(problem, bad):
    # each used to give NaN posterior means, silently
    denoiser, cov_x, mu, A, y, x_t = problem
    op = DenseOperator(A)
    y_bad = y.clone()
    y_bad[2, 1] = bad
    with pytest.raises(ValueError, match=r"y of shape \(6, 3\) has .* entries: expected finite"):
        MMPS(denoiser, op, y_bad, 0.1)
    cov = torch.full((B, M), 0.1, dtype=torch.float64)
    cov[0, 0] = bad
    with pytest.raises(ValueError, match="cov_y must be positive and finite"):
        MMPS(denoiser, op, y, cov)
    with pytest.raises(ValueError, match=f"cov_y must be positive and finite, got {bad}"):
        MMPS(denoiser, op, y, bad)
    D_bad = torch.ones(M, dtype=torch.float64)
    D_bad[1] = bad
    with pytest.raises(ValueError, match="cov_y is a DPLR with NaN or infinite entries"):
        MMPS(denoiser, op, y, DPLR(D_bad))
    U_bad = torch.zeros(M, 1, dtype=torch.float64)
    U_bad[0] = bad
    with pytest.raises(ValueError, match="cov_y is a DPLR with NaN or infinite entries"):
        MMPS(denoiser, op, y, DPLR(torch.ones(M, dtype=torch.float64), U_bad))
    A_bad = A.clone()
    A_bad[0, 0, 0] = bad
    with pytest.raises(ValueError, match="the matrix of A of shape"):
        MMPS(denoiser, DenseOperator(A_bad), y, 0.1)


def test_a_start_of_another_dtype_than_y_is_named(problem):
    # float32 x_t against float64 y and A used to fail deep inside with "expected m1 and m2
    # to have the same dtype"
    denoiser, cov_x, mu, A, y, x_t = problem
    posterior = MMPS(CountingDenoiser(denoiser), DenseOperator(A), y, 0.1)
    with pytest.raises(
        ValueError, match=r"x_t has dtype torch\.float32 but y has dtype torch\.float64"
    ):
        posterior(x_t.float(), torch.ones(B))
    assert posterior.denoiser.forwards == 0
    with pytest.raises(ValueError, match=r"x_t has dtype torch\.float32 but y has dtype"):
        sample(posterior, x_t.float(), VESchedule(), "ddim", steps=2)


@pytest.mark.parametrize("sigma", [1e-3, 1.0, 100.0])
def test_dense_solver_equals_closed_form(problem, sigma):
    denoiser, cov_x, mu, A, y, x_t = problem
    s = torch.full((B,), sigma, dtype=torch.float64)
    m, V = gaussian_moments(cov_x, mu, x_t, sigma)
    cov_y = torch.rand((B, M), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cov_y = 0.01 + cov_y  # a per-observation diagonal
    expected = posterior_mean(m, V, A, y, torch.diag_embed(cov_y))
    mmps = MMPS(denoiser, DenseOperator(A), y, cov_y, solver="dense")
    torch.testing.assert_close(mmps(x_t, s), expected, rtol=1e-7, atol=1e-9)
    assert mmps.nonpositive.item() == 0
    counting = CountingDenoiser(denoiser)
    MMPS(counting, DenseOperator(A), y, cov_y, solver="dense")(x_t, s)
    assert (counting.forwards, counting.backwards) == (1, M + 1)  # one VJP per column


def test_dense_solver_reflects_an_indefinite_jacobian(problem):
    denoiser, cov_x, mu, A, y, x_t = problem
    s = torch.ones(B, dtype=torch.float64)
    negated = lambda x, sigma: -denoiser(x, sigma)  # noqa: E731 (J negative definite)
    mmps = MMPS(negated, DenseOperator(A), y, 1e-2, solver="dense")
    out = mmps(x_t, s)
    # A V Aᵀ = -A V₊ Aᵀ is negative definite (V₊ the true, PSD, posterior covariance): every
    # eigenvalue of Σ_y + A V Aᵀ falls below Σ_y's and is reflected, which solves with
    # Σ_y + A V₊ Aᵀ; the correction then goes through the negated Jacobian
    assert mmps.nonpositive.item() == B * M
    _, V = gaussian_moments(cov_x, mu, x_t, 1.0)  # V₊ = σ² J₊ at σ = 1
    x_hat = negated(x_t, s)
    r = y - (A @ x_hat[..., None])[..., 0]
    v = torch.linalg.solve(1e-2 * torch.eye(M, dtype=torch.float64) + A @ V @ A.mT, r)
    expected = x_hat - (V @ A.mT @ v[..., None])[..., 0]  # σ² J_negᵀ = -V₊
    torch.testing.assert_close(out, expected)


def test_dense_solver_bad_input(problem):
    denoiser, cov_x, mu, A, y, x_t = problem
    with pytest.raises(ValueError, match="solver must be one of"):
        MMPS(denoiser, DenseOperator(A), y, 0.01, solver="lu")
    big = torch.zeros(B, 65)
    with pytest.raises(ValueError, match="at most 64"):
        MMPS(denoiser, lambda x: x, big, 0.01, solver="dense")
    with pytest.raises(ValueError, match="positive definite"):
        ones = torch.ones(M, dtype=torch.float64)
        bad = DPLR(ones, -2 * ones[:, None], ones[None])  # I - 2·11ᵀ: eigenvalue 1 - 2M
        MMPS(denoiser, DenseOperator(A), y, bad, solver="dense")


@pytest.mark.parametrize("sigma", [1e-3, 1.0, 100.0])
def test_gmres_solver_equals_closed_form(problem, sigma):
    denoiser, cov_x, mu, A, y, x_t = problem
    s = torch.full((B,), sigma, dtype=torch.float64)
    m, V = gaussian_moments(cov_x, mu, x_t, sigma)
    expected = posterior_mean(m, V, A, y, 0.05**2 * torch.eye(M, dtype=torch.float64))
    mmps = MMPS(denoiser, DenseOperator(A), y, 0.05**2, iterations=M, solver="gmres")
    # exact after M Arnoldi iterations, up to the benchmark's 1e-6 regularization
    torch.testing.assert_close(mmps(x_t, s), expected, rtol=1e-4, atol=1e-4)
    counting = CountingDenoiser(denoiser)
    MMPS(counting, DenseOperator(A), y, 0.05**2, iterations=2, solver="gmres")(x_t, s)
    assert (counting.forwards, counting.backwards) == (1, 3)
    assert "gmres" in repr(mmps)


def test_sampler_calls_skip_the_sigma_sync_and_direct_calls_keep_it(problem, monkeypatch):
    from emdm.guidance import base

    denoiser, cov_x, mu, A, y, x_t = problem
    checks = []

    def recording(sigma, x, check=True):
        checks.append(check)
        return broadcast_sigma(sigma, x, check=check)

    broadcast_sigma = base.broadcast_sigma
    monkeypatch.setattr(base, "broadcast_sigma", recording)
    mmps = MMPS(denoiser, DenseOperator(A), y, 0.01, iterations=2)
    mmps(x_t, torch.ones(B, dtype=torch.float64))
    assert checks == [True]
    sample(mmps, x_t, VESchedule(1e-3, 1e2), "ddpm", 3)
    assert checks == [True] + [False] * 4  # 3 steps and the final call, none checked
    with pytest.raises(ValueError, match="sigma must be positive"):
        mmps(x_t, torch.zeros(B, dtype=torch.float64))


def test_isotropic_noise_agrees_with_a_diagonal(problem):
    denoiser, cov_x, mu, A, y, x_t = problem
    s = torch.full((B,), 0.7, dtype=torch.float64)
    iso = MMPS(denoiser, DenseOperator(A), y, 0.03, iterations=3)
    diag = MMPS(denoiser, DenseOperator(A), y, torch.full((B, M), 0.03, dtype=torch.float64),
                iterations=3)  # fmt: skip
    torch.testing.assert_close(iso(x_t, s), diag(x_t, s), rtol=1e-12, atol=1e-12)


def bench_problem(device, k):
    """The problem of bench/mmps_cost.py: an EDM 3 x 256 MLP, B = 256, D = 64, M = 16."""
    from emdm import graphs

    torch.manual_seed(0)
    net = EDMDenoiser(TimeMLP(64, emb_features=64, hidden_features=(256,) * 3), emb_features=64)
    net = net.to(device).eval()
    g = torch.Generator().manual_seed(0)
    A = torch.randn(256, 16, 64, generator=g)
    A = A / A.norm(dim=-1, keepdim=True)
    x = torch.randn(256, 64, generator=g)
    y = DenseOperator(A)(x) + 0.1 * torch.randn(256, 16, generator=g)
    x_t, A, y = (x + torch.randn(256, 64, generator=g)).to(device), A.to(device), y.to(device)
    eager = MMPS(net, DenseOperator(A), y, 1e-2, iterations=k)
    sigma = torch.ones(256, device=device)
    captured = graphs.CapturedDenoiser(MMPS(net, DenseOperator(A), y, 1e-2, iterations=k), x_t,
                                       sigma)  # fmt: skip
    return eager, captured, x_t


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


@CUDA
@pytest.mark.parametrize("k", [1, 3])
def test_captured_call_equals_eager_on_the_bench_problem(k):
    device = torch.device("cuda")
    eager, captured, x_t = bench_problem(device, k)
    for scale in (2.0, 0.5, 1.0):  # replays on new inputs, not the captured example
        sigma = torch.full((256,), scale, device=device)
        x = scale * x_t
        torch.testing.assert_close(captured(x, sigma), eager(x, sigma), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(captured(x_t, 1.0), eager(x_t, torch.ones(256, device=device)))
    # the warm-up did not count; every replay did, as the eager calls
    assert captured.denoiser.nonpositive.item() == eager.nonpositive.item()
    with pytest.raises(ValueError, match=r"captured for x_t of shape \(256, 64\)"):
        captured(x_t[:128], torch.ones(128, device=device))


@CUDA
def test_captured_sampler_run_equals_eager():
    device = torch.device("cuda")
    eager, captured, x_t = bench_problem(device, 3)
    schedule = VESchedule()
    runs = [
        sample(
            d,
            x_t * 10,
            schedule,
            "ddpm",
            8,
            generator=torch.Generator(device).manual_seed(1),
            check_finite=True,
        )
        for d in (eager, captured)
    ]
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-4, atol=1e-4)


def test_captured_denoiser_refuses_the_cpu(problem):
    from emdm.graphs import CapturedDenoiser

    denoiser, cov_x, mu, A, y, x_t = problem
    mmps = MMPS(denoiser, DenseOperator(A), y, 0.01)
    with pytest.raises(ValueError, match="x_t must be a CUDA tensor, got cpu"):
        CapturedDenoiser(mmps, x_t, torch.ones(B, dtype=torch.float64))
    assert mmps.nonpositive.item() == 0  # refused before any call
