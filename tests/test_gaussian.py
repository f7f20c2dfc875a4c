import pytest
import torch

from emdm.data import observe, random_projections
from emdm.gaussian import fit_gaussian, ppca
from emdm.observation import Observation
from emdm.operators import DenseOperator, MaskOperator

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
