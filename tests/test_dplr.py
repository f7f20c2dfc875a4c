import pytest
import torch
from conftest import random_dplr

from emdm import DPLR

N, R = 7, 3


@pytest.fixture(params=[(), (4,)], ids=["unbatched", "batched"])
def pair(request, gen):
    D, U = random_dplr(N, R, gen, batch=request.param)
    V = torch.randn(U.mT.shape, generator=gen, dtype=U.dtype) / R**0.5
    return DPLR(D, U, V), torch.diag_embed(D) + U @ V


def test_dense_diag_matmul(pair, gen):
    A, dense = pair
    torch.testing.assert_close(A.dense(), dense)
    torch.testing.assert_close(A.diag(), dense.diagonal(dim1=-2, dim2=-1))
    x = torch.randn((4, N), generator=gen, dtype=torch.float64)
    torch.testing.assert_close(A @ x, (dense @ x[..., None]).squeeze(-1))
    assert A.shape[-2:] == (N, N) and A.rank == R


def test_add_scale_transpose(pair, gen):
    A, dense = pair
    d = torch.rand(N, generator=gen, dtype=torch.float64)
    torch.testing.assert_close((A + 0.5).dense(), dense + 0.5 * torch.eye(N, dtype=dense.dtype))
    torch.testing.assert_close((d + A).dense(), dense + torch.diag(d))
    torch.testing.assert_close((2.5 * A).dense(), 2.5 * dense)
    torch.testing.assert_close(A.T.dense(), dense.mT)


def test_batched_scale():
    D = torch.ones(N, dtype=torch.float64)
    U = torch.ones(N, 1, dtype=torch.float64)
    c = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    out = (DPLR(D, U) * c).dense()
    torch.testing.assert_close(out, c[:, None, None] * DPLR(D, U).dense().expand(3, N, N))


def test_solve_inv_slogdet(pair, gen):
    A, dense = pair
    x = torch.randn((4, N), generator=gen, dtype=torch.float64)
    expected = torch.linalg.solve(dense, x[..., None]).squeeze(-1)
    torch.testing.assert_close(A.solve(x), expected)
    torch.testing.assert_close(A.inv.dense(), torch.linalg.inv(dense))
    sign, logabsdet = A.slogdet()
    sign_ref, logabsdet_ref = torch.linalg.slogdet(dense)
    torch.testing.assert_close(sign, sign_ref)
    torch.testing.assert_close(logabsdet, logabsdet_ref)


def test_symmetric_default_and_diagonal(gen):
    D, U = random_dplr(N, R, gen)
    A = DPLR(D, U)
    torch.testing.assert_close(A.dense(), A.dense().mT)
    diag = DPLR(D)
    assert diag.rank == 0
    x = torch.randn(N, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(diag.solve(x), x / D)
    torch.testing.assert_close(diag.inv.dense(), torch.diag(1 / D))
    torch.testing.assert_close(diag.slogdet()[1], D.log().sum())


def test_broadcast_diagonal_batches_a_shared_matrix(gen):
    D, U = random_dplr(N, R, gen)
    sigma2 = torch.tensor([[0.1], [1.0], [10.0]], dtype=torch.float64)
    A = DPLR(D, U) + sigma2
    assert A.batch_shape == (3,)
    dense = DPLR(D, U).dense() + sigma2[..., None] * torch.eye(N, dtype=torch.float64)
    torch.testing.assert_close(A.inv.dense(), torch.linalg.inv(dense))


def test_bad_shapes():
    D = torch.ones(5)
    with pytest.raises(ValueError, match="U must have shape"):
        DPLR(D, torch.ones(4, 2))
    with pytest.raises(ValueError, match="V must have shape"):
        DPLR(D, torch.ones(5, 2), torch.ones(3, 5))
    with pytest.raises(ValueError, match="V was given without U"):
        DPLR(D, None, torch.ones(2, 5))
    with pytest.raises(ValueError, match="D must have shape"):
        DPLR(torch.tensor(1.0))
