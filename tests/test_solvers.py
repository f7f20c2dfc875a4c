import itertools

import numpy as np
import pytest
import torch

from emdm import cg
from emdm.solvers import DENSE_MAX, dense_solve


def spd(B, N, gen, cond=10.0):
    Q, _ = torch.linalg.qr(torch.randn((B, N, N), generator=gen, dtype=torch.float64))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), N, dtype=torch.float64)
    return Q @ torch.diag_embed(eig) @ Q.mT


def batched(C):
    return lambda v: (C @ v[..., None]).squeeze(-1)


@pytest.mark.parametrize("dot", ["sample", "batch"])
def test_cg_converges_to_solve(gen, dot):
    B, N = 3, 8
    C = spd(B, N, gen)
    b = torch.randn((B, N), generator=gen, dtype=torch.float64)
    x = cg(batched(C), b, iterations=N if dot == "sample" else 4 * N, dot=dot)
    torch.testing.assert_close(x, torch.linalg.solve(C, b[..., None]).squeeze(-1))


def test_cg_is_exact_in_n_iterations_per_sample(gen):
    # in exact arithmetic CG terminates in at most N iterations (Hestenes & Stiefel, 1952)
    B, N = 4, 6
    C = spd(B, N, gen, cond=3.0)
    b = torch.randn((B, N), generator=gen, dtype=torch.float64)
    x = cg(batched(C), b, iterations=N)
    torch.testing.assert_close(x, torch.linalg.solve(C, b[..., None]).squeeze(-1))


def test_cg_one_iteration_closed_forms(gen):
    B, N = 3, 5
    C = spd(B, N, gen)
    b = torch.randn((B, N), generator=gen, dtype=torch.float64)
    Cb = batched(C)(b)
    # per sample: x = (b.b / b.Cb) b
    x = cg(batched(C), b, iterations=1)
    torch.testing.assert_close(x, ((b * b).sum(1) / (b * Cb).sum(1))[:, None] * b)
    # whole batch, as jax.scipy.sparse.linalg.cg on the batch array (protocols §1.8)
    x = cg(batched(C), b, iterations=1, dot="batch")
    torch.testing.assert_close(x, (b * b).sum() / (b * Cb).sum() * b)


def test_cg_per_sample_result_is_independent_of_batch_mates(gen):
    B, N = 5, 6
    C = spd(B, N, gen)
    b = torch.randn((B, N), generator=gen, dtype=torch.float64)
    full = cg(batched(C), b, iterations=2)
    alone = cg(batched(C[:1]), b[:1], iterations=2)
    torch.testing.assert_close(full[:1], alone, rtol=0, atol=1e-15)
    mixed = cg(batched(C), b, iterations=2, dot="batch")
    assert not torch.allclose(mixed[:1], alone)


def test_cg_guard_on_indefinite_system(gen):
    B, N = 3, 4
    C = spd(B, N, gen)
    C[1] = -C[1]  # negative definite: p^T C p < 0 at the first step
    b = torch.randn((B, N), generator=gen, dtype=torch.float64)
    b[2] = 0.0  # already solved: rr = 0 must not count as a guard event nor give NaN
    x, info = cg(batched(C), b, iterations=N, return_info=True)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x[0], torch.linalg.solve(C[0], b[0]))
    torch.testing.assert_close(x[1], torch.zeros(N, dtype=torch.float64))
    torch.testing.assert_close(x[2], torch.zeros(N, dtype=torch.float64))
    assert info.nonpositive.tolist() == [0, 1, 0]


def test_cg_guard_keeps_last_finite_iterate(gen):
    # first direction has positive curvature, a later one negative: the iterate stops there
    C = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))[None]
    b = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    x, info = cg(batched(C), b, iterations=5, return_info=True)
    assert torch.isfinite(x).all() and info.nonpositive.item() == 1
    # one step: alpha = b.b / b.Cb = 1.25 / 0.75
    torch.testing.assert_close(x, 1.25 / 0.75 * b)


def test_cg_nan_matvec_is_guarded(gen):
    b = torch.ones((2, 3), dtype=torch.float64)

    def matvec(v):
        out = v.clone()
        out[1] = float("nan")
        return out

    x, info = cg(matvec, b, iterations=3, return_info=True)
    torch.testing.assert_close(x[0], b[0])
    torch.testing.assert_close(x[1], torch.zeros(3, dtype=torch.float64))
    assert info.nonpositive.tolist() == [0, 1]


def test_cg_float64_accumulation(gen):
    B, N = 2, 64
    C = spd(B, N, gen, cond=1e3)
    b = torch.randn((B, N), generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(C, b[..., None]).squeeze(-1)
    C32, b32 = C.float(), b.float()
    x = cg(batched(C32), b32, iterations=N, accumulate=torch.float64)
    assert x.dtype == torch.float32
    assert (x.double() - exact).norm() / exact.norm() < 1e-2


def test_cg_rtol_freezes_converged_samples(gen):
    C = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    b = torch.randn((2, 3), generator=gen, dtype=torch.float64)
    calls = []

    def matvec(v):
        calls.append(1)
        return batched(C)(v)

    x, info = cg(matvec, b, iterations=4, rtol=1e-3, return_info=True)
    torch.testing.assert_close(x, b)
    assert len(calls) == 4  # fixed count: no data-dependent early exit
    assert info.residual.max() == 0


def test_cg_initial_guess(gen):
    B, N = 2, 5
    C = spd(B, N, gen)
    b = torch.randn((B, N), generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(C, b[..., None]).squeeze(-1)
    x = cg(batched(C), b, iterations=0, x0=exact)
    torch.testing.assert_close(x, exact)


def test_cg_bad_input():
    b = torch.ones(2, 3)
    with pytest.raises(ValueError, match="dot must be one of"):
        cg(lambda v: v, b, 1, dot="global")
    with pytest.raises(ValueError, match="iterations"):
        cg(lambda v: v, b, -1)
    with pytest.raises(ValueError, match="x0 must have the shape"):
        cg(lambda v: v, b, 1, x0=torch.ones(3))


def test_dense_solve_equals_solve_on_spd_systems(gen):
    B, N = 4, 5
    C = spd(B, N, gen)
    b = torch.randn((B, N), generator=gen, dtype=torch.float64)
    x, info = dense_solve(batched(C), b, 0.5, return_info=True)  # every eigenvalue >= 1
    torch.testing.assert_close(x, torch.linalg.solve(C, b))
    assert info.nonpositive.sum() == 0 and info.residual.max() < 1e-12


def test_dense_solve_symmetrizes_and_reflects(gen):
    B, N = 3, 4
    S = spd(B, N, gen)
    skew = torch.randn((B, N, N), generator=gen, dtype=torch.float64)
    skew = skew - skew.mT  # the symmetric part of S + skew is S
    b = torch.randn((B, N), generator=gen, dtype=torch.float64)
    torch.testing.assert_close(dense_solve(batched(S + skew), b, 0.5), torch.linalg.solve(S, b))

    # indefinite and singular directions: eigenvalues below the floor 1 are reflected above it
    Q, _ = torch.linalg.qr(torch.randn((B, N, N), generator=gen, dtype=torch.float64))
    eig = torch.tensor([-2.0, 0.0, 0.5, 3.0], dtype=torch.float64)
    C = Q @ torch.diag_embed(eig) @ Q.mT
    x, info = dense_solve(batched(C), b, torch.full((B,), 1.0), return_info=True)
    reflected = torch.tensor([4.0, 2.0, 1.5, 3.0], dtype=torch.float64)  # 1 + |λ - 1|
    torch.testing.assert_close(x, torch.linalg.solve(Q @ torch.diag_embed(reflected) @ Q.mT, b))
    assert info.nonpositive.tolist() == [3] * B and info.residual.max() < 1e-12


def test_dense_solve_event_shapes_and_dtype(gen):
    C = spd(2, 6, gen)
    b = torch.randn((2, 2, 3), generator=gen, dtype=torch.float64)
    x = dense_solve(lambda v: (C @ v.flatten(1)[..., None]).reshape(v.shape), b, 0.5)
    assert x.shape == b.shape
    torch.testing.assert_close(x.flatten(1), torch.linalg.solve(C, b.flatten(1)))
    x32 = dense_solve(batched(C.float()), b.flatten(1).float(), 0.5)
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), x.flatten(1), rtol=1e-5, atol=1e-5)


def test_dense_solve_bad_input():
    with pytest.raises(ValueError, match="at most"):
        dense_solve(lambda v: v, torch.ones(2, DENSE_MAX + 1), 1.0)
    with pytest.raises(ValueError, match="floor must be positive"):
        dense_solve(lambda v: v, torch.ones(2, 3), 0.0)


def nonsymmetric(B, N, gen):
    noise = torch.randn((B, N, N), generator=gen, dtype=torch.float64)
    return 3 * torch.eye(N, dtype=torch.float64) + noise / N**0.5


def test_gmres_is_exact_in_n_iterations_on_nonsymmetric_systems(gen):
    from emdm.solvers import gmres

    B, N = 3, 6
    C = nonsymmetric(B, N, gen)
    b = torch.randn((B, N), generator=gen, dtype=torch.float64)
    x = gmres(batched(C), b, N, regularization=0.0)
    torch.testing.assert_close(x, torch.linalg.solve(C, b))
    # the residual norm is non-increasing in k (it minimizes over nested Krylov spaces)
    res = [torch.linalg.norm(batched(C)(gmres(batched(C), b, k, regularization=0.0)) - b, dim=1)
           for k in range(1, N + 1)]  # fmt: skip
    assert all((a >= c - 1e-12).all() for a, c in itertools.pairwise(res))


def test_gmres_one_iteration_closed_form(gen):
    # k = 1: x = y b with y minimizing ‖b - y C b‖, i.e. y = bᵀ C b / ‖C b‖²
    from emdm.solvers import gmres

    C = nonsymmetric(2, 4, gen)
    b = torch.randn((2, 4), generator=gen, dtype=torch.float64)
    Cb = batched(C)(b)
    y = (b * Cb).sum(1) / (Cb * Cb).sum(1)
    torch.testing.assert_close(gmres(batched(C), b, 1, regularization=0.0), y[:, None] * b)


def test_gmres_batch_modes_dtype_and_breakdown(gen):
    from emdm.solvers import gmres

    B, N = 3, 5
    C = nonsymmetric(B, N, gen)
    b = torch.randn((B, N), generator=gen, dtype=torch.float64)
    full = gmres(batched(C), b, 2, regularization=0.0)
    torch.testing.assert_close(full[:1], gmres(batched(C[:1]), b[:1], 2, regularization=0.0))
    # batch mode: one Krylov space over the concatenated vector, that of the block system;
    # with k < N it differs from per-sample solves
    block = torch.block_diag(*C)
    glob = gmres(batched(C), b, 2, dot="batch", regularization=0.0)
    single = gmres(batched(block[None]), b.reshape(1, -1), 2, regularization=0.0)
    torch.testing.assert_close(glob.reshape(1, -1), single)
    assert not torch.allclose(glob, full)
    # float32 in, float32 out, computed in float64
    x32 = gmres(batched(C.float()), b.float(), N, regularization=0.0)
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), torch.linalg.solve(C, b), rtol=1e-5, atol=1e-5)
    # breakdown: C = I solves in one iteration; more iterations stay finite with ε > 0
    x = gmres(lambda v: v, b, 4)
    torch.testing.assert_close(x, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="iterations must be a positive"):
        gmres(lambda v: v, b, 0)


def _givens_gmres(C: np.ndarray, b: np.ndarray, k: int, eps: float) -> np.ndarray:
    """GMRES with the least-squares problem reduced by Givens rotations (each makes the new
    diagonal entry √(a² + c²) ≥ 0), then (R + εI) y = g: the posterior-sampling benchmark's
    convention, written independently of emdm (numpy, classical loops)."""
    n = len(b)
    beta = np.linalg.norm(b)
    V, H = np.zeros((k + 1, n)), np.zeros((k + 1, k))
    V[0] = b / beta
    for j in range(k):
        w = C @ V[j]
        for i in range(j + 1):
            H[i, j] = V[i] @ w
            w = w - H[i, j] * V[i]
        H[j + 1, j] = np.linalg.norm(w)
        V[j + 1] = w / H[j + 1, j] if H[j + 1, j] > 0 else 0
    R, g = H.copy(), np.zeros(k + 1)
    g[0] = beta
    for j in range(k):
        a, c = R[j, j], R[j + 1, j]
        rho = np.hypot(a, c)
        cs, sn = a / rho, c / rho
        G = np.array([[cs, sn], [-sn, cs]])
        R[[j, j + 1], :] = G @ R[[j, j + 1], :]
        g[[j, j + 1]] = G @ g[[j, j + 1]]
    y = np.linalg.solve(R[:k] + eps * np.eye(k), g[:k])
    return V[:k].T @ y


def test_gmres_regularization_shrinks_as_the_benchmarks_positive_diagonal_does(gen):
    # C = diag(1, 1e-3), b = (1, 1), two iterations: the exact x_2 = 1000; the benchmark's
    # Givens factor has a positive diagonal and its + 1e-6 I shrinks the solution (≈ 999.3);
    # Householder's R as it comes can have a negative diagonal, where + 1e-6 I enlarges it
    from emdm.solvers import gmres

    C = torch.diag(torch.tensor([1.0, 1e-3], dtype=torch.float64))[None]
    b = torch.ones((1, 2), dtype=torch.float64)
    x = gmres(batched(C), b, 2, regularization=1e-6)[0]
    exact = gmres(batched(C), b, 2, regularization=0.0)[0]
    torch.testing.assert_close(exact, torch.tensor([1.0, 1000.0], dtype=torch.float64))
    assert x[1] < 1000.0
    reference = _givens_gmres(C[0].numpy(), b[0].numpy(), 2, 1e-6)
    np.testing.assert_allclose(x.numpy(), reference, rtol=1e-9, atol=0)
    # and on random non-symmetric systems, every k
    B, N = 4, 6
    C = nonsymmetric(B, N, gen)
    b = torch.randn((B, N), generator=gen, dtype=torch.float64)
    for k in range(1, N + 1):
        x = gmres(batched(C), b, k, regularization=1e-6)
        for i in range(B):
            reference = _givens_gmres(C[i].numpy(), b[i].numpy(), k, 1e-6)
            np.testing.assert_allclose(x[i].numpy(), reference, rtol=1e-9, atol=1e-12)
