import dataclasses

import pytest
import torch

from emdm import VESchedule
from emdm.data import observe, random_projections
from emdm.denoisers import GaussianDenoiser
from emdm.dplr import DPLR
from emdm.em import EMConfig, e_step
from emdm.gaussian import (
    GaussianStart,
    exact_posterior_samples,
    fit_gaussian,
    fit_gaussian_exact,
    gaussian_posterior,
    gaussian_start,
    marginal_log_likelihood,
    ppca,
)
from emdm.observation import Observation
from emdm.operators import DenseOperator, LinearOperator, MaskOperator

DT = torch.float64


def planted(N, D, r, g, iso=0.05):
    U = torch.randn((D, r), generator=g, dtype=DT)
    mu = torch.randn(D, generator=g, dtype=DT)
    x = mu + torch.randn((N, r), generator=g, dtype=DT) @ U.T
    x = x + iso**0.5 * torch.randn((N, D), generator=g, dtype=DT)
    return x, mu, U @ U.T + iso * torch.eye(D, dtype=DT)


def test_ppca_recovers_a_planted_low_rank_covariance():
    g = torch.Generator().manual_seed(0)
    x, mu, S = planted(50000, 12, 3, g)
    m, cov = ppca(x, 3)
    assert cov.rank == 3
    assert (m - mu).abs().max() < 0.05
    assert (cov.dense() - S).norm() / S.norm() < 0.03
    assert cov.D[0].item() == pytest.approx(0.05, rel=0.05)  # the isotropic part


def test_ppca_gram_trick_equals_the_direct_path():
    g = torch.Generator().manual_seed(1)
    x, _, _ = planted(40, 100, 4, g)  # N < D: Gram matrix
    m, cov = ppca(x, 5)
    xc = x - x.mean(0)
    L, Q = torch.linalg.eigh(xc.T @ xc / 40)  # the D × D path, for reference
    L, Q = L.flip(-1)[:5], Q.flip(-1)[:, :5]
    iso = ((xc**2).sum() / 40 - L.sum()) / (100 - 5)
    dense = iso * torch.eye(100, dtype=DT) + Q @ torch.diag(L - iso) @ Q.T
    torch.testing.assert_close(cov.dense(), dense)
    torch.testing.assert_close(m, x.mean(0))


def test_ppca_full_rank_and_bad_rank():
    x = torch.randn((500, 3), generator=torch.Generator().manual_seed(2), dtype=DT)
    _, cov = ppca(x, 3)
    torch.testing.assert_close(cov.D, torch.full((3,), 1e-6, dtype=DT))
    torch.testing.assert_close(cov.dense(), torch.cov(x.T, correction=0), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="rank must be between 1 and D = 3"):
        ppca(x, 4)
    with pytest.raises(ValueError, match=r"rank 3 needs more than 3 samples.*got 3"):
        ppca(x[:3], 3)  # 3 samples span 2 directions: the third would get 1e-6


def test_fit_gaussian_from_random_projections():
    """Monte-Carlo EM on 2-D projections of 4-D Gaussian data recovers mean and covariance
    about as well as PPCA on the unobserved x itself (the sampling-error floor)."""
    g = torch.Generator().manual_seed(0)
    N, D = 2048, 4
    L = 0.6 * torch.randn((D, D), generator=g, dtype=DT)
    S = L @ L.T + 0.1 * torch.eye(D, dtype=DT)
    mu = torch.randn(D, generator=g, dtype=DT)
    x = mu + torch.randn((N, D), generator=g, dtype=DT) @ torch.linalg.cholesky(S).T
    A = random_projections(N, D, 2, g)
    y = observe(x, A, 0.01, g)
    obs = Observation(DenseOperator(A), y, 1e-4)
    m, cov = fit_gaussian(
        obs, D, shape=(D,), iterations=12, steps=32, cg_iterations=2, generator=g
    )
    floor_m, floor_cov = ppca(x, D)
    floor_mean_error = (floor_m - mu).norm()
    floor_cov_error = (floor_cov.dense() - S).norm() / S.norm()
    assert (m - mu).norm() < 3 * floor_mean_error + 0.02
    assert (cov.dense() - S).norm() / S.norm() < 3 * floor_cov_error + 0.02
    # and the start N(0, I) was far from it
    assert (torch.eye(D, dtype=DT) - S).norm() / S.norm() > 0.5


def test_fit_gaussian_from_masked_images():
    """Masked 2x3x3 images of a rank-2 Gaussian: the operator path recovers mean and covariance."""
    g = torch.Generator().manual_seed(0)
    n, shape = 2048, (2, 3, 3)
    U = torch.randn((18, 2), generator=g, dtype=torch.float64)
    mu = torch.linspace(-1, 1, 18, dtype=torch.float64)
    x = mu + torch.randn((n, 2), generator=g, dtype=torch.float64) @ U.T
    x = x + 0.1 * torch.randn((n, 18), generator=g, dtype=torch.float64)
    mask = (torch.rand((n, 1, 3, 3), generator=g) < 0.7).double()  # shared over channels
    y = mask * x.reshape(n, *shape) + 1e-2 * torch.randn((n, *shape), generator=g).double()
    obs = Observation(MaskOperator(mask), y, 1e-4)
    mean, cov = fit_gaussian(obs, 2, shape=shape, iterations=8, steps=16, generator=g)
    assert mean.shape == shape
    true_cov = U @ U.T + 0.01 * torch.eye(18, dtype=torch.float64)
    fitted = cov.dense()
    assert (mean.flatten() - mu).abs().max() < 0.1
    assert torch.linalg.matrix_norm(fitted - true_cov) / torch.linalg.matrix_norm(true_cov) < 0.1
    with pytest.raises(ValueError, match=r"event shape \(2, 3, 3\), got shape=\(18,\)"):
        fit_gaussian(obs, 2, shape=(18,))
    state = g.get_state()
    with pytest.raises(ValueError, match=r"rank 2 needs more than 2 samples.*got 2"):
        fit_gaussian(obs[:2], 2, shape=shape, generator=g)
    assert torch.equal(g.get_state(), state)  # refused before any sampling


# -- the exact path ------------------------------------------------------------------------------


def spd(D, g, floor=0.1):
    L = 0.6 * torch.randn((D, D), generator=g, dtype=DT)
    return L @ L.T + floor * torch.eye(D, dtype=DT)


def information_form(A, cov_y, y, mu, S):
    """The posterior of N(mu, S) given y = A x + N(0, cov_y), per sample, in precision form:
    (S^-1 + A^T cov_y^-1 A)^-1 and P (S^-1 mu + A^T cov_y^-1 y), an oracle independent of the
    covariance form the module uses."""
    At_iy = A.mT @ torch.linalg.inv(cov_y)  # (N, D, M)
    P = torch.linalg.inv(torch.linalg.inv(S) + At_iy @ A)
    m = (P @ (torch.linalg.solve(S, mu) + (At_iy @ y[..., None])[..., 0])[..., None])[..., 0]
    return m, P


def problem(kind, cov_kind, g, N=5, D=4):
    """Observations of N(mu, S) by one kind of operator and of noise covariance, with the dense
    A_i (N, M, D) and Sigma_y,i (N, M, M) they stand for."""
    x = torch.randn((N, D), generator=g, dtype=DT)
    if kind == "dense":
        A = torch.randn((N, 2, D), generator=g, dtype=DT)
        op, dense = DenseOperator(A), A
    elif kind == "shared":
        A = torch.randn((2, D), generator=g, dtype=DT)
        op, dense = DenseOperator(A), A.expand(N, 2, D)
    else:  # a mask: the generic path, columns from the operator's images
        mask = (torch.rand((N, D), generator=g) < 0.6).double()
        op, dense = MaskOperator(mask), torch.diag_embed(mask)
    M = dense.shape[1]
    if cov_kind == "scalar":
        cov_y, dense_y = 0.3, 0.3 * torch.eye(M, dtype=DT).expand(N, M, M)
    elif cov_kind == "diagonal":  # per observation
        d = 0.1 + torch.rand((N, M), generator=g, dtype=DT)
        cov_y, dense_y = d, torch.diag_embed(d)
    else:  # a shared DPLR
        U = 0.5 * torch.randn((M, 1), generator=g, dtype=DT)
        cov_y, dense_y = DPLR(torch.full((M,), 0.2, dtype=DT), U), 0.2 * torch.eye(M) + U @ U.T
        dense_y = dense_y.expand(N, M, M)
    y = op(x) + torch.randn((N, M), generator=g, dtype=DT)
    return Observation(op, y, cov_y), dense, dense_y.to(DT), y


@pytest.mark.parametrize("kind", ["dense", "shared", "mask"])
@pytest.mark.parametrize("cov_kind", ["scalar", "diagonal", "dplr"])
def test_gaussian_posterior_is_the_conditional_of_the_joint(kind, cov_kind):
    g = torch.Generator().manual_seed(3)
    D = 4
    obs, A, cov_y, y = problem(kind, cov_kind, g, D=D)
    S, mu = spd(D, g), torch.randn(D, generator=g, dtype=DT)
    U = torch.linalg.cholesky(S)
    m, P = gaussian_posterior(obs, mu, DPLR(torch.zeros(D, dtype=DT), U))
    # the joint of (x, y) and its Schur complement
    S_xy = S @ A.mT  # (N, D, M)
    S_yy = A @ S_xy + cov_y
    gain = torch.linalg.solve(S_yy, S_xy.mT).mT  # S_xy S_yy^-1
    torch.testing.assert_close(m, mu + (gain @ (y - A @ mu)[..., None])[..., 0])
    torch.testing.assert_close(P, S - gain @ S_xy.mT)
    m_info, P_info = information_form(A, cov_y, y, mu, S)
    torch.testing.assert_close(m, m_info)
    torch.testing.assert_close(P, P_info)
    # and the marginal likelihood of y
    law = torch.distributions.MultivariateNormal(A @ mu, S_yy)
    torch.testing.assert_close(
        marginal_log_likelihood(obs, mu, DPLR(torch.zeros(D, dtype=DT), U)), law.log_prob(y).sum()
    )


def test_fit_gaussian_exact_recovers_a_gaussian_from_random_projections():
    """Exact EM on 2-D projections of 3-D Gaussian data recovers mean and covariance about as
    well as the sample moments of the unobserved x (the sampling-error floor)."""
    g = torch.Generator().manual_seed(0)
    N, D = 2048, 3
    S, mu = spd(D, g), torch.randn(D, generator=g, dtype=DT)
    x = mu + torch.randn((N, D), generator=g, dtype=DT) @ torch.linalg.cholesky(S).T
    A = random_projections(N, D, 2, g)
    obs = Observation(DenseOperator(A), observe(x, A, 0.05, g), 0.05**2)
    m, cov = fit_gaussian_exact(obs, D, shape=(D,), iterations=40)  # converged by 40
    assert cov.rank == D and m.dtype == cov.dtype == DT
    floor_mean = (x.mean(0) - mu).norm()
    floor_cov = (torch.cov(x.T, correction=0) - S).norm() / S.norm()
    assert (m - mu).norm() < 1.5 * floor_mean + 0.01
    assert (cov.dense() - S).norm() / S.norm() < 1.5 * floor_cov + 0.01
    assert (torch.eye(D, dtype=DT) - S).norm() / S.norm() > 0.5  # far from the start


@pytest.mark.parametrize("rank", [4, 2])
def test_exact_em_never_decreases_the_marginal_likelihood(rank):
    g = torch.Generator().manual_seed(1)
    N, D = 200, 4
    S, mu = spd(D, g), torch.randn(D, generator=g, dtype=DT)
    x = mu + torch.randn((N, D), generator=g, dtype=DT) @ torch.linalg.cholesky(S).T
    A = random_projections(N, D, 2, g)
    y = observe(x, A, 0.1, g)
    obs = Observation(DenseOperator(A), y, 0.01)

    def log_likelihood(iterations):  # dense, with torch's Gaussian
        m, cov = fit_gaussian_exact(obs, rank, shape=(D,), iterations=iterations)
        C = A @ cov.dense() @ A.mT + 0.01 * torch.eye(2, dtype=DT)
        return torch.distributions.MultivariateNormal(A @ m, C).log_prob(y).sum().item()

    ll = torch.tensor([log_likelihood(k) for k in range(10)], dtype=DT)
    assert (ll.diff() >= -1e-9 * ll.abs().max()).all(), ll.diff()
    assert ll[-1] - ll[0] > 100  # and it does climb


def test_exact_posterior_samples_have_the_posterior_moments():
    """Whitened by the oracle posterior, the samples of 20 000 different observations are
    N(0, I): mean and covariance within about 5 standard errors (0.007)."""
    g = torch.Generator().manual_seed(2)
    N, D = 20000, 4
    S, mu = spd(D, g), torch.randn(D, generator=g, dtype=DT)
    x = mu + torch.randn((N, D), generator=g, dtype=DT) @ torch.linalg.cholesky(S).T
    A = torch.randn((N, 2, D), generator=g, dtype=DT)
    y = A @ x[..., None]
    y = y[..., 0] + 0.3 * torch.randn((N, 2), generator=g, dtype=DT)
    obs = Observation(DenseOperator(A), y, 0.09)
    cov = DPLR(torch.zeros(D, dtype=DT), torch.linalg.cholesky(S))
    samples = exact_posterior_samples(obs, mu, cov, generator=torch.Generator().manual_seed(0))
    m, P = information_form(A, 0.09 * torch.eye(2, dtype=DT), y, mu, S)
    w = torch.linalg.solve_triangular(
        torch.linalg.cholesky(P), (samples - m)[..., None], upper=False
    )[..., 0]  # (N, D)
    assert w.mean(0).abs().max() < 0.035
    assert (torch.cov(w.T) - torch.eye(D, dtype=DT)).abs().max() < 0.05
    # a draw of the prior instead would be far off
    assert (torch.linalg.solve(P, S)).diagonal(dim1=-2, dim2=-1).mean() > 2
    again = exact_posterior_samples(obs, mu, cov, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)


class Squared(LinearOperator):
    """A 'linear' operator that is not."""

    def __call__(self, x):
        return x**2

    def adjoint(self, y):
        return y

    def out_shape(self, in_shape):
        return tuple(in_shape)

    def in_shape_of(self, out_shape):
        return tuple(out_shape)


def test_the_exact_path_refuses_what_it_cannot_do():
    g = torch.Generator().manual_seed(0)
    y = torch.randn((3, 2), generator=g, dtype=DT)
    big = Observation(DenseOperator(torch.randn((3, 2, 257), generator=g, dtype=DT)), y, 0.1)
    with pytest.raises(ValueError, match=r"D = 257 \(shape \(257,\)\) exceeds its limit of 256"):
        fit_gaussian_exact(big, 2, shape=(257,))
    start = GaussianStart(rank=2, iterations=1, observations=2, fit="exact")
    with pytest.raises(ValueError, match=r"D = 257 .* limit of 256"):
        gaussian_start(big, (257,), start, EMConfig(), VESchedule(),
                       generator=torch.Generator())  # fmt: skip
    square = Observation(Squared(), torch.randn((3, 4), generator=g, dtype=DT), 0.1)
    with pytest.raises(ValueError, match="A is not linear"):
        fit_gaussian_exact(square, 2, shape=(4,))
    plain = Observation(lambda x: 2 * x, torch.randn((3, 4), generator=g, dtype=DT), 0.1)
    with pytest.raises(ValueError, match="LinearOperator, got a function"):
        fit_gaussian_exact(plain, 2, shape=(4,))
    with pytest.raises(ValueError, match="rank must be between 1 and D = 4, got 5"):
        fit_gaussian_exact(square, 5, shape=(4,))
    with pytest.raises(ValueError, match=r"fit must be one of \('sampled', 'exact'\)"):
        GaussianStart(fit="closed")
    with pytest.raises(ValueError, match="rank must be at most D <= 256 with fit='exact'"):
        GaussianStart(rank=300, fit="exact")


def test_a_sampled_fit_of_a_rank_its_observations_cannot_span_is_refused():
    from reproduce.table1 import SMOKE

    start = GaussianStart(rank=4, observations=8)
    start.check_fit(5)
    for n in (4, 3):  # the fit uses min(observations, the run's): 4 and 3 samples
        with pytest.raises(ValueError, match=f"rank 4 needs more than 4 observations.*got {n}"):
            start.check_fit(n)
    with pytest.raises(ValueError, match=r"rank 4 needs more than 4 observations.*got 4"):
        GaussianStart(rank=4, observations=4).check_fit(100)
    GaussianStart(rank=4, observations=2, fit="exact").check_fit(2)  # exact moments: no limit
    with pytest.raises(ValueError, match=r"rank 64 needs more than 64 observations.*got 4"):
        dataclasses.replace(SMOKE, start=dataclasses.replace(SMOKE.start, rank=64))


def test_gaussian_start_dispatches_on_fit():
    """fit='sampled' (the default) is fit_gaussian and MMPS's lap 0, bit for bit; fit='exact'
    is fit_gaussian_exact and exact_posterior_samples."""
    g = torch.Generator().manual_seed(0)
    N, D = 12, 3
    A = random_projections(N, D, 2, g)
    obs = Observation(DenseOperator(A), torch.randn((N, 2), generator=g, dtype=DT), 1e-2)
    cfg, schedule = EMConfig(steps=4, sample_batch=8), VESchedule()
    sampled = GaussianStart(rank=2, iterations=2, observations=8, steps=4, cg_iterations=2)
    assert sampled.fit == "sampled"
    got = gaussian_start(obs, (D,), sampled, cfg, schedule,
                         generator=torch.Generator().manual_seed(5))  # fmt: skip
    gen = torch.Generator().manual_seed(5)
    mean, cov = fit_gaussian(obs[:8], 2, shape=(D,), iterations=2, schedule=schedule, steps=4,
                             cg_iterations=2, batch_size=8, generator=gen)  # fmt: skip
    samples, _ = e_step(GaussianDenoiser(mean, cov), obs, cfg, schedule, mean=mean,
                        generator=gen, covariance=cov)  # fmt: skip
    for a, b in zip(got, (mean, cov.dense(), samples), strict=True):
        assert torch.equal(a.dense() if isinstance(a, DPLR) else a, b)
    exact = dataclasses.replace(sampled, fit="exact")
    got = gaussian_start(obs, (D,), exact, cfg, schedule,
                         generator=torch.Generator().manual_seed(5))  # fmt: skip
    mean, cov = fit_gaussian_exact(obs[:8], 2, shape=(D,), iterations=2)
    samples = exact_posterior_samples(obs, mean, cov, generator=torch.Generator().manual_seed(5))
    for a, b in zip(got, (mean, cov.dense(), samples), strict=True):
        assert torch.equal(a.dense() if isinstance(a, DPLR) else a, b)
