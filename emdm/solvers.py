r"""Iterative linear solvers for symmetric positive definite systems.

The conjugate gradient (CG) method solves :math:`C x = b` for a symmetric positive definite
:math:`C` given only through its action :math:`v \mapsto C v`. Starting from :math:`x_0 = 0`
(so :math:`r_0 = p_0 = b`), each iteration performs

.. math::
    \alpha_k & = \frac{r_k^T r_k}{p_k^T C p_k} \\
    x_{k+1} & = x_k + \alpha_k p_k \\
    r_{k+1} & = r_k - \alpha_k C p_k \\
    \beta_k & = \frac{r_{k+1}^T r_{k+1}}{r_k^T r_k} \\
    p_{k+1} & = r_{k+1} + \beta_k p_k

For small systems (a few observed dimensions, as in the manifold experiment), :func:`dense_solve`
forms :math:`C` column by column, symmetrizes it and solves it through its eigendecomposition,
reflecting every eigenvalue below a floor: the exact solve of the paper's code, made safe for the
indefinite or singular :math:`C` a learned Jacobian can produce.

:func:`gmres` solves systems that need not be symmetric (the posterior-sampling benchmark's
solver, protocols §6.3) by minimizing the residual over the Krylov space of a fixed number of
Arnoldi iterations.

References:
    | Methods of Conjugate Gradients for Solving Linear Systems (Hestenes & Stiefel, 1952)
    | https://doi.org/10.6028/jres.049.044
    | GMRES: A Generalized Minimal Residual Algorithm for Solving Nonsymmetric Linear Systems
    | (Saad & Schultz, 1986) https://doi.org/10.1137/0907058
"""

__all__ = ["DENSE_MAX", "CGInfo", "cg", "dense_solve", "gmres"]

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

try:
    from .kernels.cg import batched_dot, cg_iterations
except ImportError:  # no kernels/ folder: the same eager loop, reference only
    from ._fallback import batched_dot, cg_iterations

DOTS = ("sample", "batch")


class CGInfo(NamedTuple):
    r"""Diagnostics of a :func:`cg` call, as tensors (reading them synchronizes).

    Attributes:
        nonpositive: How many times the curvature guard fired (:math:`p^T C p \leq 0` or not
            finite), per sample with shape :math:`(B,)`, or in total for `dot="batch"`.
        residual: The residual norm :math:`\|r_k\|` after the last iteration, with shape
            :math:`(B,)`, or :math:`()` for `dot="batch"`.
    """

    nonpositive: Tensor
    residual: Tensor


def cg(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    iterations: int,
    *,
    x0: Tensor | None = None,
    dot: str = "sample",
    accumulate: torch.dtype | None = None,
    rtol: float = 0.0,
    return_info: bool = False,
    provider: str | None = None,
) -> Tensor | tuple[Tensor, CGInfo]:
    r"""Solves the batched systems :math:`C x = b` by conjugate gradient.

    Wherever :math:`p_k^T C p_k \leq 0` (the operator is not positive definite along
    :math:`p_k`, as an untrained network's Jacobian may be) or is not finite, the iterate is
    frozen at its last finite value instead of dividing by it, and the event is counted.

    Warning:
        The number of iterations is fixed: there is no early exit, so no host-device
        synchronization. A sample whose residual satisfies
        :math:`\|r_k\| \leq \text{rtol} \, \|b\|` stops changing, but `matvec` is still
        evaluated for it.

    Arguments:
        matvec: The operator :math:`v \mapsto C v`, on tensors with the shape of `b`.
        b: The right-hand sides, with shape :math:`(B, *)`.
        iterations: The number of iterations, a non-negative integer.
        x0: An initial guess, with the shape of `b` (one more `matvec`). Defaults to 0.
        dot: `"sample"` for inner products per sample (a sample's solution then does not
            depend on its batch-mates) or `"batch"` for inner products over the whole batch,
            as `jax.scipy.sparse.linalg.cg` on a batch array does (protocols §1.8).
        accumulate: The dtype of inner products and step sizes (e.g. `torch.float64`).
            Defaults to the dtype of `b`.
        rtol: The relative residual tolerance below which a system stops being updated.
        return_info: Whether to also return a :class:`CGInfo`.
        provider: The implementation of each update, `"ref"`, `"triton"` or `"auto"`
            (:func:`emdm.kernels.cg.cg_update`); `None` reads `EMDM_KERNELS` (default `auto`).

    Returns:
        The solutions :math:`x`, with the shape of `b`, and a :class:`CGInfo` if asked.
    """
    if dot not in DOTS:
        raise ValueError(f"dot must be one of {DOTS}, got {dot!r}")
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    if b.ndim < 1:
        raise ValueError(f"b must have shape (B, *), got a scalar {tuple(b.shape)}")
    if x0 is not None and x0.shape != b.shape:
        raise ValueError(f"x0 must have the shape of b {tuple(b.shape)}, got {tuple(x0.shape)}")
    acc = b.dtype if accumulate is None else accumulate

    if x0 is None:
        x, r = torch.zeros_like(b), b
    else:
        x, r = x0, b - matvec(x0)
    p = r
    rr = batched_dot(r, r, dot, acc)
    tol = rtol**2 * (rr if x0 is None else batched_dot(b, b, dot, acc))  # r = b from x0 = 0
    active = rr > tol  # neither solved nor frozen by the guard

    # each update after the product C p is one fused kernel on CUDA (kernels/cg.py), the eager
    # reference elsewhere; both: an inactive sample keeps x and r, and p stays finite
    loop = cg_iterations(provider, b)
    x, r, p, rr, active, nonpositive = loop(matvec, x, r, p, rr, tol, active, iterations,
                                            dot=dot, count=return_info)  # fmt: skip

    if return_info:
        return x, CGInfo(nonpositive=nonpositive, residual=rr.sqrt())
    return x


DENSE_MAX = 64  # the largest event size dense_solve accepts: it costs one matvec per element


def dense_solve(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    floor: Tensor | float,
    *,
    accumulate: torch.dtype = torch.float64,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, CGInfo]:
    r"""Solves the batched systems :math:`C x = b` exactly, with :math:`C` made symmetric
    positive definite.

    With :math:`m` the event size of `b`, the :math:`m` products :math:`C e_j` give the
    matrices :math:`C \in \mathbb{R}^{B \times m \times m}`. The solve uses

    .. math:: S = \tfrac{1}{2} (C + C^T) = Q \Lambda Q^T, \quad
        x = Q \, \tilde{\Lambda}^{-1} Q^T b, \quad
        \tilde{\lambda} = \lambda_{\min} + |\lambda - \lambda_{\min}|,

    the symmetric part of :math:`C` with every eigenvalue below the floor
    :math:`\lambda_{\min}` reflected above it. For :math:`C = \Sigma_y + A V A^T` with a
    positive semi-definite :math:`V`, every eigenvalue is at least the smallest eigenvalue of
    :math:`\Sigma_y`: that is the floor, and the reflection acts (is counted) only where
    :math:`V` is not positive semi-definite, e.g. a learned :math:`V_t = \sigma_t^2 J^T` whose
    Jacobian has an indefinite symmetric part. It replaces :math:`A V A^T` by its absolute
    value along those directions: a slightly negative curvature (round-off, a nearly exact
    model at small :math:`\sigma_t`) still trusts the observation as :math:`V = 0` would,
    while a large negative one is treated as the uncertainty of its size, not as certainty:
    raising it to the floor instead (as if :math:`V = 0`) gives gains of
    :math:`\Sigma_y^{-1}` exactly where the model is least reliable: in EM on the manifold
    (Figure 3, quick) that sent 25-35 % of the samples outside the data's range.

    Arguments:
        matvec: The operator :math:`v \mapsto C v`, on tensors with the shape of `b`; it
            must act on each sample independently.
        b: The right-hand sides, with shape :math:`(B, *)` and at most
            :data:`DENSE_MAX` elements per sample.
        floor: The eigenvalue floor :math:`\lambda_{\min} > 0`, a float or a tensor of
            shape :math:`(B,)`.
        accumulate: The dtype of the eigendecomposition.
        return_info: Whether to also return a :class:`CGInfo`; its `nonpositive` counts, per
            sample, the eigenvalues reflected, and its `residual` is
            :math:`\|\tilde{S} x - b\|` of the solved system (zero up to rounding).

    Returns:
        The solutions :math:`x`, with the shape of `b`, and a :class:`CGInfo` if asked.
    """
    if b.ndim < 1:
        raise ValueError(f"b must have shape (B, *), got a scalar {tuple(b.shape)}")
    m = b[0].numel()
    if m > DENSE_MAX:
        raise ValueError(
            f"dense_solve forms the {m}x{m} matrix of each system with {m} matvecs; it accepts "
            f"at most {DENSE_MAX} elements per sample, use cg for larger systems"
        )
    floor = torch.as_tensor(floor, dtype=accumulate, device=b.device)
    if not bool(torch.all(floor > 0)):
        raise ValueError("floor must be positive")
    floor = floor.reshape(-1, 1) if floor.ndim else floor

    basis = torch.eye(m, dtype=b.dtype, device=b.device)
    columns = [matvec(e.reshape(b.shape[1:]).expand_as(b)).flatten(1) for e in basis]
    C = torch.stack(columns, dim=-1).to(accumulate)  # (B, m, m), column j = C e_j
    L, Q = torch.linalg.eigh((C + C.mT) / 2)
    raised = L < floor
    L = floor + (L - floor).abs()
    rhs = b.flatten(1).to(accumulate)
    x = Q @ ((Q.mT @ rhs.unsqueeze(-1)) / L.unsqueeze(-1))
    out = x.squeeze(-1).to(b.dtype).reshape(b.shape)
    if return_info:
        residual = torch.linalg.vector_norm(
            (Q * L.unsqueeze(-2)) @ (Q.mT @ x) - rhs.unsqueeze(-1), dim=(-2, -1)
        )
        return out, CGInfo(nonpositive=raised.sum(-1), residual=residual)
    return out


def gmres(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    iterations: int,
    *,
    dot: str = "sample",
    accumulate: torch.dtype = torch.float64,
    regularization: float = 1e-6,
) -> Tensor:
    r"""Solves the batched systems :math:`C x = b` by GMRES, from :math:`x_0 = 0`.

    :math:`k` Arnoldi iterations (modified Gram-Schmidt, in `accumulate`) build an orthonormal
    basis :math:`V_k` of the Krylov space :math:`\mathcal{K}_k(C, b)` and the Hessenberg
    :math:`\bar{H}_k \in \mathbb{R}^{(k+1) \times k}` with :math:`C V_k = V_{k+1} \bar{H}_k`;
    then :math:`x = V_k y` with :math:`y` minimizing :math:`\|\beta e_1 - \bar{H}_k y\|`,
    solved as :math:`\bar{H}_k = Q R` with :math:`R`'s diagonal non-negative (as the
    benchmark's Givens rotations give it), :math:`(R + \epsilon I) y = \beta Q^T e_1` with
    :math:`\epsilon` = `regularization` (the benchmark's 1e-6, which also absorbs a breakdown:
    when the Krylov space stops growing, :math:`R` is singular). With a positive diagonal the
    regularization shrinks the solution, as the benchmark's does; with Householder's signs as
    they come it could enlarge it.

    Warning:
        The number of iterations is fixed (no tolerance, no host synchronization); the cost is
        `iterations` matvecs and :math:`O(k^2)` inner products, and the basis holds
        :math:`k + 1` vectors of the shape of `b` in `accumulate`.

    Arguments:
        matvec: The operator :math:`v \mapsto C v`, on tensors with the shape of `b`.
        b: The right-hand sides, with shape :math:`(B, *)`.
        iterations: The number of Arnoldi iterations :math:`k \geq 1`.
        dot: `"sample"`: one system per sample, or `"batch"`: the whole batch as one vector,
            as the benchmark's code does on its flattened tensor.
        accumulate: The dtype of the basis and the small least-squares problem (float64 in the
            benchmark).
        regularization: :math:`\epsilon \geq 0`.

    Returns:
        The solutions, with the shape and dtype of `b`.
    """
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    if dot not in DOTS:
        raise ValueError(f"dot must be one of {DOTS}, got {dot!r}")
    if b.ndim < 1:
        raise ValueError(f"b must have shape (B, *), got a scalar {tuple(b.shape)}")
    if not regularization >= 0:
        raise ValueError(f"regularization must be non-negative, got {regularization}")
    shape, dtype = b.shape, b.dtype
    rows = 1 if dot == "batch" else shape[0]

    def C(v: Tensor) -> Tensor:  # (rows, n) in accumulate -> (rows, n)
        return matvec(v.to(dtype).reshape(shape)).reshape(rows, -1).to(accumulate)

    r = b.reshape(rows, -1).to(accumulate)
    beta = torch.linalg.vector_norm(r, dim=1)  # (rows,)
    tiny = torch.finfo(accumulate).tiny

    def normalized(w: Tensor, norm: Tensor) -> Tensor:
        return w / torch.where(norm > tiny, norm, torch.ones_like(norm))[:, None]

    k = iterations
    V = [normalized(r, beta)]
    H = torch.zeros((rows, k + 1, k), dtype=accumulate, device=b.device)
    for j in range(k):
        w = C(V[j])
        for i in range(j + 1):  # modified Gram-Schmidt
            h = torch.linalg.vecdot(V[i], w)
            H[:, i, j] = h
            w = w - h[:, None] * V[i]
        h = torch.linalg.vector_norm(w, dim=1)
        H[:, j + 1, j] = h
        V.append(normalized(w, h))

    Q, R = torch.linalg.qr(H)  # (rows, k + 1, k), (rows, k, k)
    # Householder QR may return negative diagonal entries; the benchmark's Givens rotations
    # give a positive diagonal, the factorization that "+ ε I" shrinks. Flip rows to match it:
    # with S = sign(diag R) (0 -> 1), H = (Q S)(S R) and S R has a non-negative diagonal.
    S = torch.where(R.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(accumulate)  # (rows, k)
    R = S[..., None] * R
    g = S * beta[:, None] * Q[:, 0, :]  # (Q S)ᵀ (β e_1)
    eye = torch.eye(k, dtype=accumulate, device=b.device)
    y = torch.linalg.solve_triangular(R + regularization * eye, g[..., None], upper=True)
    x = torch.einsum("rk,krn->rn", y[..., 0], torch.stack(V[:k]))
    return x.to(dtype).reshape(shape)
