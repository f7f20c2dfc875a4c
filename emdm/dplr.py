r"""Diagonal plus low-rank (DPLR) matrices.

A DPLR matrix is :math:`\Sigma = \mathrm{diag}(D) + U V` with :math:`D \in \mathbb{R}^N`,
:math:`U \in \mathbb{R}^{N \times r}` and :math:`V \in \mathbb{R}^{r \times N}`, :math:`r \ll N`.
Solves and inverses use the Woodbury identity with the capacitance
:math:`W = I_r + V D^{-1} U`,

.. math:: \Sigma^{-1} = D^{-1} - D^{-1} U W^{-1} V D^{-1},

and determinants use the matrix determinant lemma :math:`\det \Sigma = \det D \det W`.
Every operation costs :math:`O(N r^2 + r^3)` instead of :math:`O(N^3)`. All tensors may carry
leading batch dimensions, which broadcast.

References:
    | Learning Diffusion Priors from Observations by Expectation Maximization (Rozet et al., 2024)
    | https://arxiv.org/abs/2405.13712
"""

__all__ = ["DPLR"]

import torch
from torch import Tensor


class DPLR:
    r"""Creates a (batched) diagonal plus low-rank matrix :math:`\mathrm{diag}(D) + U V`.

    Arguments:
        D: The diagonal, with shape :math:`(*, N)`.
        U: The left low-rank factor, with shape :math:`(*, N, r)`, or `None` for a diagonal.
        V: The right low-rank factor, with shape :math:`(*, r, N)`. If `None`, :math:`V = U^T`
            (a symmetric matrix, as PPCA gives).
    """

    def __init__(self, D: Tensor, U: Tensor | None = None, V: Tensor | None = None):
        D = torch.as_tensor(D)
        if D.ndim < 1:
            raise ValueError(f"D must have shape (*, N), got a scalar {tuple(D.shape)}")
        N = D.shape[-1]
        if U is None and V is not None:
            raise ValueError("V was given without U: expected both factors or neither")
        if U is not None:
            if U.ndim < 2 or U.shape[-2] != N:
                raise ValueError(f"U must have shape (*, {N}, r), got {tuple(U.shape)}")
            if V is None:
                V = U.mT
            if V.ndim < 2 or V.shape[-1] != N or V.shape[-2] != U.shape[-1]:
                raise ValueError(
                    f"V must have shape (*, {U.shape[-1]}, {N}) to match U, got {tuple(V.shape)}"
                )
        self.D, self.U, self.V = D, U, V

    # Shape

    @property
    def size(self) -> int:
        r"""The side :math:`N` of the matrix."""
        return self.D.shape[-1]

    @property
    def rank(self) -> int:
        r"""The rank :math:`r` of the low-rank part."""
        return 0 if self.U is None else self.U.shape[-1]

    @property
    def batch_shape(self) -> torch.Size:
        shapes = [self.D.shape[:-1]]
        if self.U is not None:
            shapes += [self.U.shape[:-2], self.V.shape[:-2]]
        return torch.broadcast_shapes(*shapes)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.batch_shape, self.size, self.size))

    @property
    def dtype(self) -> torch.dtype:
        return self.D.dtype

    @property
    def device(self) -> torch.device:
        return self.D.device

    def to(self, *args, **kwargs) -> "DPLR":
        if self.U is None:
            return DPLR(self.D.to(*args, **kwargs))
        return DPLR(
            self.D.to(*args, **kwargs), self.U.to(*args, **kwargs), self.V.to(*args, **kwargs)
        )

    # Algebra

    def dense(self) -> Tensor:
        r"""Returns the matrix as a dense tensor, with shape :math:`(*, N, N)`."""
        out = torch.diag_embed(self.D)
        if self.U is not None:
            out = out + self.U @ self.V
        return out

    def diag(self) -> Tensor:
        r"""Returns the diagonal :math:`D_i + \sum_j U_{ij} V_{ji}`, with shape :math:`(*, N)`."""
        if self.U is None:
            return self.D
        return self.D + torch.einsum("...ij,...ji->...i", self.U, self.V)

    def __matmul__(self, x: Tensor) -> Tensor:
        r"""Returns :math:`\Sigma x` for vectors `x` with shape :math:`(*, N)`."""
        out = self.D * x
        if self.U is not None:
            out = out + _matvec(self.U, _matvec(self.V, x))
        return out

    def __add__(self, other) -> "DPLR":
        r"""Adds a scalar :math:`c I` or a diagonal given as a tensor with shape :math:`(*, N)`."""
        if isinstance(other, DPLR):
            raise TypeError("the sum of two DPLR matrices is not implemented; add diagonals")
        return DPLR(self.D + other, self.U, self.V)

    __radd__ = __add__

    def __mul__(self, c) -> "DPLR":
        r"""Scales by :math:`c`: a scalar or a tensor with the batch shape :math:`(*)`."""
        c = torch.as_tensor(c, dtype=self.D.dtype, device=self.D.device)
        if self.U is None:
            return DPLR(c[..., None] * self.D)
        return DPLR(c[..., None] * self.D, c[..., None, None] * self.U, self.V)

    __rmul__ = __mul__

    @property
    def T(self) -> "DPLR":
        r"""The transpose :math:`\mathrm{diag}(D) + V^T U^T`."""
        if self.U is None:
            return self
        return DPLR(self.D, self.V.mT, self.U.mT)

    def capacitance(self) -> Tensor:
        r"""Returns :math:`W = I_r + V D^{-1} U`, with shape :math:`(*, r, r)`."""
        eye = torch.eye(self.rank, dtype=self.D.dtype, device=self.D.device)
        # (V D^-1) U: with shared factors and a batched D, one folded matmul, not B tiny ones
        return eye + (self.V / self.D[..., None, :]) @ self.U

    def solve(self, x: Tensor) -> Tensor:
        r"""Returns :math:`\Sigma^{-1} x` for vectors `x` with shape :math:`(*, N)` (Woodbury)."""
        y = x / self.D
        if self.U is None:
            return y
        W = self.capacitance()
        z = torch.linalg.solve(W, _matvec(self.V, y).unsqueeze(-1)).squeeze(-1)  # (*, r)
        return y - _matvec(self.U, z) / self.D

    @property
    def inv(self) -> "DPLR":
        r"""The inverse :math:`\mathrm{diag}(D^{-1}) - D^{-1} U \, W^{-1} V D^{-1}`, a DPLR."""
        D_inv = 1 / self.D
        if self.U is None:
            return DPLR(D_inv)
        W = self.capacitance()
        return DPLR(
            D_inv,
            -D_inv[..., None] * self.U,
            torch.linalg.solve(W, self.V * D_inv[..., None, :]),
        )

    def slogdet(self) -> tuple[Tensor, Tensor]:
        r"""Returns the sign and the log-absolute determinant, each with shape :math:`(*)`."""
        sign = torch.prod(torch.sign(self.D), dim=-1)
        logabsdet = torch.sum(torch.log(torch.abs(self.D)), dim=-1)
        if self.U is not None:
            sign_W, logabsdet_W = torch.linalg.slogdet(self.capacitance())
            sign, logabsdet = sign * sign_W, logabsdet + logabsdet_W
        return sign, logabsdet

    def __repr__(self) -> str:
        return f"DPLR(shape={tuple(self.shape)}, rank={self.rank}, dtype={self.dtype})"


def _matvec(M: Tensor, x: Tensor) -> Tensor:
    r"""Returns :math:`M x` for matrices :math:`(*, m, n)` and vectors :math:`(*, n)`.

    A shared (2-D) matrix is applied as `x @ M.T`, which folds the batch of vectors into a
    single matrix product instead of a batch of matrix-vector products.
    """
    if M.ndim == 2:
        return x @ M.mT
    return (M @ x.unsqueeze(-1)).squeeze(-1)
