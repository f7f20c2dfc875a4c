r"""Samplers against the exact law of their own discretization and against the posterior.

With a Gaussian prior and a linear-Gaussian observation, the MMPS denoiser is affine in x_t,
so each sampler step maps a Gaussian to a Gaussian: the law of the sampler's output after N
steps is computed exactly by propagating a mean and a covariance through the step formulas of
protocols §1.5. That separates Monte-Carlo error from discretization error.
"""

import pytest
import torch

from emdm import (
    DPLR,
    MMPS,
    DenseOperator,
    GaussianDenoiser,
    VESchedule,
    VPSchedule,
    sample,
)
from emdm.samplers import DDPM, SAMPLERS

D, M = 3, 1
SCHEDULE = VESchedule(1e-3, 1e2)
DT = torch.float64


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(D, generator=gen, dtype=DT)
    U = 0.7 * torch.randn((D, 2), generator=gen, dtype=DT)
    cov_x = DPLR(torch.rand(D, generator=gen, dtype=DT) + 0.1, U)
    A = torch.randn((M, D), generator=gen, dtype=DT)
    y = torch.randn(M, generator=gen, dtype=DT)
    cov_y = 0.05
    S = cov_x.dense()
    C = torch.linalg.inv(torch.linalg.inv(S) + A.T @ A / cov_y)
    m = C @ (torch.linalg.solve(S, mu) + A.T @ y / cov_y)

    def posterior_denoiser(n):
        return MMPS(
            GaussianDenoiser(mu, cov_x), DenseOperator(A), y.expand(n, M), cov_y, "tweedie", M
        )

    return posterior_denoiser, mu, m, C


def affine(denoiser, sigma):
    """(P, q) with denoiser(x, sigma) = P x + q, by probing at 0 and the unit vectors."""
    X = torch.cat([torch.zeros(1, D, dtype=DT), torch.eye(D, dtype=DT)])
    out = denoiser(X, torch.full((D + 1,), sigma, dtype=DT))
    return (out[1:] - out[0]).T, out[0]


def exact_law(denoiser, sampler, steps, mean_1, cov_1):
    """Mean and covariance of the sampler's output when x_1 ~ N(mean_1, cov_1)."""
    sigma = lambda t: SCHEDULE.sigma(torch.tensor(t, dtype=DT)).item()  # noqa: E731
    I = torch.eye(D, dtype=DT)
    m, C = mean_1, cov_1

    def apply(L, q, noise, m, C):
        return L @ m + q, L @ C @ L.T + noise * I

    for i in range(steps):
        t = 1 - i / steps
        s = t - 1 / steps
        P, q = affine(denoiser, sigma(t))
        if sampler == "ddpm":  # x_s = x_t - τ (x_t - d) + σ_s sqrt(τ) ε
            tau = 1 - sigma(s) ** 2 / sigma(t) ** 2
            m, C = apply((1 - tau) * I + tau * P, tau * q, sigma(s) ** 2 * tau, m, C)
        else:  # DDIM: x_s = x_t - (1 - σ_s / σ_t)(x_t - d)
            c = 1 - sigma(s) / sigma(t)
            m, C = apply((1 - c) * I + c * P, c * q, 0.0, m, C)
            if sampler == "pc":  # Langevin: x - τ (x - d(x, σ_s)) + σ_s sqrt(2τ) ε, τ = 0.1
                P, q = affine(denoiser, sigma(s))
                m, C = apply(0.9 * I + 0.1 * P, 0.1 * q, 0.2 * sigma(s) ** 2, m, C)
    P, q = affine(denoiser, sigma(0.0))  # the final denoiser call at σ(0)
    return apply(P, q, 0.0, m, C)


def within_monte_carlo_error(x, mean, cov, k=5.0):
    r"""Sample moments of n i.i.d. draws from a law with covariance Σ have standard errors
    sqrt(Σ_ii / n) (mean) and sqrt((Σ_ij² + Σ_ii Σ_jj) / n) (covariance entries, the
    Gaussian fourth-moment formula); accept within k standard errors."""
    n = x.shape[0]
    d = cov.diagonal()
    se_mean = (d / n).sqrt()
    se_cov = ((cov**2 + d[:, None] * d[None, :]) / n).sqrt()
    mean_ok = ((x.mean(0) - mean).abs() <= k * se_mean).all()
    cov_ok = ((torch.cov(x.T) - cov).abs() <= k * se_cov).all()
    return bool(mean_ok and cov_ok)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "pc"])
def test_samples_follow_the_exact_law_of_the_discretization(problem, sampler):
    posterior_denoiser, mu, _, _ = problem
    n, steps = 8192, 16
    gen = torch.Generator().manual_seed(1)
    x1 = mu + SCHEDULE.sigma_max * torch.randn((n, D), generator=gen, dtype=DT)
    x = sample(posterior_denoiser(n), x1, SCHEDULE, sampler=sampler, steps=steps, generator=gen)
    mean, cov = exact_law(
        posterior_denoiser(D + 1),
        sampler,
        steps,
        mu,
        SCHEDULE.sigma_max**2 * torch.eye(D, dtype=DT),
    )
    assert within_monte_carlo_error(x, mean, cov)
    # and the check has power: a 10 % error in the noise scale is detected
    assert not within_monte_carlo_error(x, mean, 1.1 * cov) or sampler == "ddim"


def test_ddpm_discretization_error_is_first_order(problem):
    """A declared property: the DDPM sampler's covariance error decays as O(1/N)."""
    posterior_denoiser, mu, m, C = problem
    cov_1 = SCHEDULE.sigma_max**2 * torch.eye(D, dtype=DT)
    errors = []
    for steps in (128, 512):
        mean, cov = exact_law(posterior_denoiser(D + 1), "ddpm", steps, mu, cov_1)
        errors.append((cov - C).abs().max().item())
        assert (mean - m).abs().max() < 1e-3
    assert 3.0 < errors[0] / errors[1] < 5.0  # quadrupling N divides the error by ≈ 4
    assert errors[1] < 0.03


def test_full_posterior_run_matches_the_closed_form_posterior(problem):
    r"""DDPM with MMPS on a Gaussian prior samples the closed-form posterior N(m, C).

    Tolerance: |sample moment − posterior moment| ≤ |sample moment − law moment|
    + |law moment − posterior moment|; the first term is Monte-Carlo error (5 standard errors,
    see `within_monte_carlo_error`), the second is the sampler's discretization bias, computed
    exactly by `exact_law` (about 0.05 on the covariance at 128 steps, a third of 5 SE).
    """
    posterior_denoiser, mu, m, C = problem
    n, steps = 8192, 128
    gen = torch.Generator().manual_seed(2)
    x1 = mu + SCHEDULE.sigma_max * torch.randn((n, D), generator=gen, dtype=DT)
    x = sample(posterior_denoiser(n), x1, SCHEDULE, "ddpm", steps, generator=gen)
    mean, cov = exact_law(
        posterior_denoiser(D + 1),
        "ddpm",
        steps,
        mu,
        SCHEDULE.sigma_max**2 * torch.eye(D, dtype=DT),
    )
    d = C.diagonal()
    se_mean, se_cov = (d / n).sqrt(), ((C**2 + d[:, None] * d[None, :]) / n).sqrt()
    assert ((x.mean(0) - m).abs() <= 5 * se_mean + (mean - m).abs()).all()
    assert ((torch.cov(x.T) - C).abs() <= 5 * se_cov + (cov - C).abs()).all()


class Recorder:
    def __init__(self):
        self.sigmas = []

    def __call__(self, x_t, sigma):
        self.sigmas.append(sigma)
        return torch.zeros_like(x_t)


@pytest.mark.parametrize("sampler, calls", [("ddpm", 1), ("ddim", 1), ("pc", 2)])
def test_time_grid_and_final_denoiser_call(sampler, calls):
    rec = Recorder()
    steps = 8
    sample(rec, torch.zeros(2, 3, dtype=DT), SCHEDULE, sampler, steps)
    assert len(rec.sigmas) == calls * steps + 1
    assert all(s.shape == (2,) for s in rec.sigmas)
    first, last = rec.sigmas[0][0].item(), rec.sigmas[-1][0].item()
    assert first == pytest.approx(SCHEDULE.sigma_max) and last == pytest.approx(SCHEDULE.sigma_min)
    predictor = [s[0].item() for s in rec.sigmas[:-1:calls]]
    expected = [SCHEDULE.sigma(torch.tensor(1 - i / steps, dtype=DT)).item() for i in range(steps)]
    assert predictor == pytest.approx(expected, rel=1e-12)
    if sampler == "pc":  # corrections at level s = t - 1/N, the last one at σ(0)
        corrector = [s[0].item() for s in rec.sigmas[1::2]]
        assert corrector == pytest.approx([*expected[1:], SCHEDULE.sigma_min], rel=1e-12)
    assert SAMPLERS[sampler].calls_per_step == calls or sampler == "pc"


def test_per_sample_generators_make_results_batch_independent(problem):
    posterior_denoiser, mu, _, _ = problem
    x1 = mu + 100 * torch.randn((4, D), generator=torch.Generator().manual_seed(3), dtype=DT)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]  # noqa: E731
    full = sample(posterior_denoiser(4), x1, SCHEDULE, "ddpm", 8, generator=gens())
    half = sample(posterior_denoiser(2), x1[:2], SCHEDULE, "ddpm", 8, generator=gens()[:2])
    torch.testing.assert_close(full[:2], half, rtol=0, atol=1e-12)
    again = sample(posterior_denoiser(4), x1, SCHEDULE, "ddpm", 8, generator=gens())
    assert torch.equal(full, again)
    other = sample(posterior_denoiser(4), x1, SCHEDULE, "ddpm", 8, generator=torch.Generator())
    assert not torch.allclose(full, other)


def test_progress_bar_can_be_switched_off(capsys):
    sample(Recorder(), torch.zeros(1, 2), SCHEDULE, "ddim", 4, progress=False)
    assert capsys.readouterr().err == ""
    sample(Recorder(), torch.zeros(1, 2), SCHEDULE, "ddim", 4, progress=True)
    assert "sampling" in capsys.readouterr().err


def test_bad_sampler_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(
        ValueError, match=r"sampler must be one of \('ddpm', 'ddim', 'pc', 'ddim_vp'\)"
    ):
        sample(Recorder(), x, SCHEDULE, "euler")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        sample(Recorder(), x, SCHEDULE, "ddpm", 0)
    with pytest.raises(ValueError, match="x_1 must be a floating-point tensor"):
        sample(Recorder(), torch.zeros(2, 3, dtype=torch.int64), SCHEDULE)
    with pytest.raises(ValueError, match="schedule must be"):
        DDPM(Recorder(), lambda t: t)
    with pytest.raises(ValueError, match="corrections"):
        sample(Recorder(), x, SCHEDULE, "pc", 2, corrections=-1)
    with pytest.raises(ValueError, match="one generator per sample"):
        sample(Recorder(), x, SCHEDULE, "ddpm", 2, generator=[torch.Generator()])


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_bad_start_is_rejected_before_any_denoiser_call(sampler):
    schedule = VPSchedule() if sampler == "ddim_vp" else SCHEDULE
    for bad in (float("nan"), float("inf")):  # used to give non-finite samples, silently
        x = torch.zeros(4, 3)
        x[1, 2] = bad
        rec = Recorder()
        with pytest.raises(ValueError, match=r"x_1 of shape \(4, 3\) has 1 NaN or infinite"):
            sample(rec, x, schedule, sampler, 2)
        assert rec.sigmas == []
    rec = Recorder()  # an empty batch used to raise an IndexError in the first step
    with pytest.raises(ValueError, match=r"x_1 has shape \(0, 3\): an empty batch"):
        sample(rec, torch.zeros(0, 3), schedule, sampler, 2)
    assert rec.sigmas == []


def vp_exact_law(denoiser, sampler, mean_1, cov_1):
    """The law of VPDDIM's output: each step x_s = k x_t + (a_s - k a_t) d(x_t / a_t) + std z
    is affine in x_t when d is."""
    I = torch.eye(D, dtype=DT)
    m, C = mean_1, cov_1
    for t, s in sampler.grid():
        a_t, a_s, k, std = sampler.coefficients(t, s)
        P, q = affine(denoiser, sampler.sigma(t, m[None])[0].item())
        L = k * I + (a_s - k * a_t) / a_t * P
        m, C = L @ m + (a_s - k * a_t) * q, L @ C @ L.T + std**2 * I
    return m, C


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_vp_ddim_follows_its_exact_law(problem, eta):
    from emdm import VPDDIM, VPSchedule

    posterior_denoiser, mu, m, C = problem
    n, schedule = 8192, VPSchedule()
    gen = torch.Generator().manual_seed(3)
    x1 = torch.randn((n, D), generator=gen, dtype=DT)  # the VP state at t = 1
    x = VPDDIM(posterior_denoiser(n), schedule, steps=10, eta=eta)(x1, gen)
    probe = VPDDIM(posterior_denoiser(D + 1), schedule, steps=10, eta=eta)
    mean, cov = vp_exact_law(posterior_denoiser(D + 1), probe, torch.zeros(D, dtype=DT),
                             torch.eye(D, dtype=DT))  # fmt: skip
    assert within_monte_carlo_error(x, mean, cov)
    assert not within_monte_carlo_error(x, mean, 1.2 * cov) or eta == 0.0


def test_vp_ddim_converges_to_the_posterior(problem):
    # with 1000 steps (no respacing) DDIM(η = 1) is DDPM's ancestral sampler: its exact law is
    # the posterior up to the schedule's own error (ᾱ_T > 0, the clipped-free VE denoiser)
    from emdm import VPDDIM, VPSchedule

    posterior_denoiser, mu, m, C = problem
    errors = []
    for steps in (100, 1000):
        probe = VPDDIM(posterior_denoiser(D + 1), VPSchedule(), steps=steps, eta=1.0)
        mean, cov = vp_exact_law(posterior_denoiser(D + 1), probe, torch.zeros(D, dtype=DT),
                                 torch.eye(D, dtype=DT))  # fmt: skip
        errors.append(max((mean - m).abs().max().item(), (cov - C).abs().max().item()))
    assert errors[1] < 0.02 and errors[0] / errors[1] > 5  # first order: 0.083 → 0.009


def test_vp_ddim_grid_and_calls():
    from emdm import VPDDIM, VESchedule, VPSchedule

    recorder = Recorder()
    sampler = VPDDIM(recorder, VPSchedule(), steps=4)
    out = sampler(torch.zeros(2, D, dtype=DT))
    assert len(recorder.sigmas) == 4  # N calls, the last one's output returned as is
    ab = VPSchedule().alpha_bar(torch.tensor([999, 666, 333, 0], dtype=DT) / 999)
    sigmas = torch.tensor([s[0].item() for s in recorder.sigmas], dtype=DT)
    torch.testing.assert_close(sigmas, ((1 - ab) / ab).sqrt())
    assert out.shape == (2, D)
    with pytest.raises(ValueError, match="needs a VPSchedule"):
        VPDDIM(recorder, VESchedule(), steps=4)
    with pytest.raises(ValueError, match="eta must be in"):
        VPDDIM(recorder, VPSchedule(), steps=4, eta=2.0)


def test_samplers_for_a_schedule_are_those_that_run_on_it():
    from emdm import VPSchedule
    from emdm.samplers import samplers_for

    assert samplers_for(VESchedule) == ("ddpm", "ddim", "pc")
    assert samplers_for(VPSchedule) == tuple(SAMPLERS)
    x = torch.zeros(1, 2, dtype=DT)
    for name in SAMPLERS:
        if name in samplers_for(VESchedule):
            sample(Recorder(), x, SCHEDULE, name, 2)
        else:
            with pytest.raises(ValueError, match="needs a VPSchedule"):
                sample(Recorder(), x, SCHEDULE, name, 2)


class Exploding:
    """Returns zeros, then NaN from the first call at sigma below `below` on."""

    def __init__(self, below):
        self.below, self.calls = below, 0

    def __call__(self, x_t, sigma):
        self.calls += 1  # no branch on sigma: that would synchronize
        return torch.zeros_like(x_t).masked_fill(sigma[:, None] < self.below, float("nan"))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "pc"])
def test_check_finite_names_the_first_failing_step_without_a_sync_per_step(sampler, monkeypatch):
    steps = 8
    sigmas = [SCHEDULE.sigma(torch.tensor(1 - i / steps, dtype=DT)).item() for i in range(steps)]
    first = 3  # the step from sigmas[3] is the first to call the denoiser below sigmas[2]
    den = Exploding(below=sigmas[first - 1] * 0.999)
    if sampler == "pc":  # its corrector at s = t_{i+1} is called in step i
        first -= 1
    synced = []
    item = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: synced.append(1) or item(t))
    with pytest.raises(FloatingPointError) as error:
        sample(den, torch.zeros(2, 3, dtype=DT), SCHEDULE, sampler, steps, check_finite=True)
    monkeypatch.undo()
    assert f"sigma_t = {sigmas[first]:.4g} (step {first + 1} of {steps})" in str(error.value)
    assert den.calls == SAMPLERS[sampler](den, SCHEDULE).calls_per_step * steps  # ran through
    assert len(synced) <= 2  # the start's check and the one read at the end, not one per step


def test_check_finite_reports_the_nan_behind_a_later_error():
    calls = []

    def failing(x_t, sigma):
        calls.append(sigma[0].item())
        if len(calls) == 2:
            return torch.full_like(x_t, float("nan"))
        if len(calls) == 4:
            raise RuntimeError("a solver choked on NaN")
        return torch.zeros_like(x_t)

    with pytest.raises(FloatingPointError, match=r"step 2 of 8") as error:
        sample(failing, torch.zeros(2, 3, dtype=DT), SCHEDULE, "ddim", 8, check_finite=True)
    assert isinstance(error.value.__context__, RuntimeError)
    with pytest.raises(RuntimeError, match="choked"):  # unchecked: the error as it came
        calls.clear()
        sample(failing, torch.zeros(2, 3, dtype=DT), SCHEDULE, "ddim", 8)
