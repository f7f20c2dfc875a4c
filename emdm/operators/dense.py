r"""Dense matrix operators, one matrix per sample or one for all.

.. math:: y_b = A_b \, \mathrm{vec}(x_b), \quad A_b \in \mathbb{R}^{M \times D}
"""

__all__ = ["DenseOperator"]

import math

from torch import Tensor

from ..checks import check_finite
from .base import LinearOperator


class DenseOperator(LinearOperator):
    r"""Creates a dense linear operator, per-sample (:math:`(B, M, D)` matrices, sliced by
    `A[index]`) or shared (an :math:`(M, D)` matrix).

    Arguments:
        matrix: The matrices, with shape :math:`(B, M, D)` (one per sample) or :math:`(M, D)`
            (shared). Inputs :math:`x` with shape :math:`(B, *)` are flattened to
            :math:`(B, D)`; outputs have shape :math:`(B, M)`.
        in_shape: The event shape of the inputs, which the adjoint's outputs take, e.g.
            :math:`(C, H, W)`. Defaults to :math:`(D,)`.
        check: Whether to check that the matrices are finite (one pass, one host
            synchronization on CUDA), once here; restrictions (`A[index]`) and copies
            (`A.to(...)`) of a checked operator skip it.
    """

    def __init__(
        self, matrix: Tensor, in_shape: tuple[int, ...] | None = None, *, check: bool = True
    ):
        if matrix.ndim not in (2, 3):
            raise ValueError(
                f"matrix must have shape (B, M, D) or (M, D), got {tuple(matrix.shape)}"
            )
        in_shape = (matrix.shape[-1],) if in_shape is None else tuple(in_shape)
        if math.prod(in_shape) != matrix.shape[-1]:
            raise ValueError(
                f"in_shape {in_shape} has {math.prod(in_shape)} elements, expected "
                f"{matrix.shape[-1]} (the columns of matrix)"
            )
        if check:
            check_finite(matrix, "the matrix of A")
        self.matrix, self.in_shape = matrix, in_shape

    @property
    def in_features(self) -> int:
        return self.matrix.shape[-1]

    @property
    def out_features(self) -> int:
        return self.matrix.shape[-2]

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        B, *event = in_shape
        if tuple(event) != self.in_shape:
            raise ValueError(
                f"A expects inputs of shape (B, *{self.in_shape}), got x of shape "
                f"{tuple(in_shape)}"
            )
        if self.matrix.ndim == 3 and self.matrix.shape[0] != B:
            raise ValueError(
                f"A holds {self.matrix.shape[0]} matrices (one per sample), "
                f"got x with batch size {B}"
            )
        return (B, self.out_features)

    def in_shape_of(self, out_shape: tuple[int, ...]) -> tuple[int, ...]:
        B, *event = out_shape
        if tuple(event) != (self.out_features,):
            raise ValueError(
                f"A^T expects inputs of shape (B, {self.out_features}), got {tuple(out_shape)}"
            )
        in_shape = (B, *self.in_shape)
        self.out_shape(in_shape)  # checks the batch size of a per-sample operator
        return in_shape

    def __call__(self, x: Tensor) -> Tensor:
        x = x.flatten(1)  # (B, D)
        if self.matrix.ndim == 2:
            return x @ self.matrix.mT
        # row vectors (B, 1, D) @ (B, D, M): about 2x faster than einsum's bmm on CPU
        return (x.unsqueeze(1) @ self.matrix.mT).squeeze(1)

    def adjoint(self, y: Tensor) -> Tensor:
        if self.matrix.ndim == 2:
            x = y @ self.matrix
        else:
            x = (y.unsqueeze(1) @ self.matrix).squeeze(1)  # (B, 1, M) @ (B, M, D)
        return x.reshape(x.shape[:1] + self.in_shape)

    def _per_sample(self) -> tuple[str, ...]:
        return ("matrix",) if self.matrix.ndim == 3 else ()

    def __repr__(self) -> str:
        return f"DenseOperator(matrix={tuple(self.matrix.shape)})"
