"""Σ_y's algebra and Observation: each covariance against its dense matrix, slicing, moves."""

import pytest
import torch

from emdm import DPLR
from emdm.covariance import Diagonal, Isotropic, LowRank, as_covariance
from emdm.observation import Observation
from emdm.operators import DenseOperator, Identity

B, M = 5, 4


def _dense(cov, b: int) -> torch.Tensor:
    """The (M, M) matrix of observation b, column by column through cov @ e_j."""
    eye = torch.eye(M, dtype=torch.float64)
    batch = cov.batch_size or B
    cols = [(cov @ e.expand(batch, M).clone())[b] for e in eye]
    return torch.stack(cols, dim=-1)


def _covariances(g):
    y = torch.randn(B, M, dtype=torch.float64, generator=g)
    U = torch.randn(B, M, 2, dtype=torch.float64, generator=g)
    return y, {
        "isotropic": as_covariance(0.3, y),
        "shared diagonal": as_covariance(torch.rand(M, dtype=torch.float64, generator=g) + 0.1, y),
        "diagonal": as_covariance(torch.rand(B, M, dtype=torch.float64, generator=g) + 0.1, y),
        "low rank": as_covariance(DPLR(torch.rand(B, M, dtype=torch.float64) + 0.5, U), y),
        "shared low rank": as_covariance(DPLR(torch.ones(M, dtype=torch.float64), U[0]), y),
    }


def test_each_covariance_is_its_dense_matrix():
    y, covs = _covariances(torch.Generator().manual_seed(0))
    v = torch.randn(B, M, dtype=torch.float64)
    for name, cov in covs.items():
        for b in range(B):
            C = _dense(cov, b)
            torch.testing.assert_close((cov @ v)[b], C @ v[b], msg=name)
            torch.testing.assert_close(cov.solve(v)[b], torch.linalg.solve(C, v[b]), msg=name)
        lam = cov.smallest_eigenvalue()
        expected = torch.stack([torch.linalg.eigvalsh(_dense(cov, b))[0] for b in range(B)])
        if cov.batch_size is None:
            assert lam.ndim == 0, name
            lam = lam.expand(B)
        torch.testing.assert_close(lam, expected, msg=name)


def test_slicing_restricts_per_observation_and_keeps_shared():
    y, covs = _covariances(torch.Generator().manual_seed(1))
    v = torch.randn(B, M, dtype=torch.float64)
    index = torch.tensor([3, 0])
    for name, cov in covs.items():
        for i in (slice(1, 4), index, -1, 2):
            part = cov[i]
            rows = v[torch.arange(B)[i]].reshape(-1, M)
            if cov.batch_size is None:
                assert part is cov, name
            else:
                torch.testing.assert_close(
                    part @ rows, (cov @ v)[torch.arange(B)[i]].reshape(-1, M)
                )


def test_moves_cast_dtype_and_keep_kind():
    y, covs = _covariances(torch.Generator().manual_seed(2))
    for name, cov in covs.items():
        moved = cov.to(dtype=torch.float32)
        assert type(moved) is type(cov) and moved.batch_size == cov.batch_size, name
        v = torch.randn(B, M)
        assert (moved @ v).dtype == torch.float32, name


def test_isotropic_from_a_float_is_exact_in_float64():
    y = torch.zeros(2, 3, dtype=torch.float64)
    assert as_covariance(0.1, y).variance.item() == 0.1


@pytest.mark.parametrize(
    ("cov_y", "message"),
    [
        (0.0, "cov_y must be positive"),
        (float("nan"), "cov_y must be positive"),
        (-torch.ones(B, M), "cov_y must be positive"),
        (torch.ones(B, M + 1), "does not broadcast to y"),
        (DPLR(torch.ones(2)), "cov_y is a DPLR of size 2"),
        (DPLR(-torch.ones(M)), "cov_y must be positive definite"),
        (DPLR(torch.ones(B + 1, M)), "per-observation covariances"),
        ("0.1", "cov_y must be a positive float"),
        (True, "cov_y must be a positive float"),
    ],
)
def test_bad_covariances_are_refused(cov_y, message):
    with pytest.raises(ValueError, match=message):
        as_covariance(cov_y, torch.zeros(B, M))


def test_observation_restricts_and_moves_its_parts_together():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(B, M, 6, dtype=torch.float64, generator=g)
    y = torch.randn(B, M, dtype=torch.float64, generator=g)
    cov = torch.rand(B, M, dtype=torch.float64, generator=g) + 0.1
    obs = Observation(DenseOperator(A), y, cov)
    part = obs[1:3]
    x = torch.randn(2, 6, dtype=torch.float64)
    torch.testing.assert_close(part.A(x), torch.einsum("bmd,bd->bm", A[1:3], x))
    torch.testing.assert_close(part.y, y[1:3])
    torch.testing.assert_close(part.cov_y @ torch.ones(2, M, dtype=torch.float64), cov[1:3])
    assert len(part) == 2 and len(obs[-1]) == 1
    single = obs.to(dtype=torch.float32)
    assert single.y.dtype == single.cov_y.diag.dtype == single.A.matrix.dtype == torch.float32
    A_, y_, c_ = obs
    assert A_ is obs.A and y_ is obs.y and c_ is obs.cov_y
    shared = Observation(Identity(), y, 0.5)
    assert shared[2:4].A is shared.A


def test_observation_refuses_bad_input_before_any_work():
    y = torch.zeros(B, M)
    with pytest.raises(ValueError, match="per-sample operators"):
        Observation(DenseOperator(torch.zeros(B + 1, M, 6)), y, 0.1)
    with pytest.raises(ValueError, match="NaN"):
        Observation(Identity(), torch.full((B, M), float("nan")), 0.1)
    with pytest.raises(ValueError, match="N >= 1"):
        Observation(Identity(), torch.zeros(0, M), 0.1)
    with pytest.raises(ValueError, match="callable"):
        Observation(3, y, 0.1)
    with pytest.raises(ValueError, match="cannot be sliced"):
        Observation(lambda x: x, y, 0.1)[0:2]
    assert isinstance(as_covariance(Isotropic(0.2), y), Isotropic)
    assert isinstance(as_covariance(torch.tensor(0.2), y), Isotropic)
    assert isinstance(as_covariance(Diagonal(torch.ones(M)), y), Diagonal)
    assert isinstance(as_covariance(LowRank(DPLR(torch.ones(M))), y), LowRank)


def test_a_column_of_variances_is_per_observation():
    # (N, 1) against y (N, M): one variance per observation, sliced with y, its own floor
    y = torch.zeros(B, M, dtype=torch.float64)
    variances = torch.arange(1, B + 1, dtype=torch.float64)[:, None]
    cov = as_covariance(variances, y)
    assert cov.batch_size == B
    torch.testing.assert_close(cov.smallest_eigenvalue(), variances[:, 0])
    torch.testing.assert_close(cov[1:3] @ torch.ones(2, M, dtype=torch.float64),
                               variances[1:3].expand(2, M))  # fmt: skip
    shared = as_covariance(torch.ones(1, M, dtype=torch.float64), y)
    assert shared.batch_size is None and shared[1:3] is shared
