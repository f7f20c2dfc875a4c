r"""Dense matrix operators, one matrix per sample or one for all.

.. math:: y_b = A_b \, \mathrm{vec}(x_b), \quad A_b \in \mathbb{R}^{M \times D}
"""

__all__ = ["DenseOperator"]

import math

import torch
from torch import Tensor

from .base import LinearOperator


class DenseOperator(LinearOperator):
    r"""Creates a dense linear operator.

    Arguments:
        matrix: The matrices, with shape :math:`(B, M, D)` (one per sample) or :math:`(M, D)`
            (shared). Inputs :math:`x` with shape :math:`(B, *)` are flattened to
            :math:`(B, D)`; outputs have shape :math:`(B, M)`.
    """

    def __init__(self, matrix: Tensor):
        if matrix.ndim not in (2, 3):
            raise ValueError(
                f"matrix must have shape (B, M, D) or (M, D), got {tuple(matrix.shape)}"
            )
        self.matrix = matrix

    @property
    def in_features(self) -> int:
        return self.matrix.shape[-1]

    @property
    def out_features(self) -> int:
        return self.matrix.shape[-2]

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        B, *event = in_shape
        if math.prod(event) != self.in_features:
            raise ValueError(
                f"A expects inputs with {self.in_features} features per sample, "
                f"got x of shape {tuple(in_shape)}"
            )
        if self.matrix.ndim == 3 and self.matrix.shape[0] != B:
            raise ValueError(
                f"A holds {self.matrix.shape[0]} matrices (one per sample), "
                f"got x with batch size {B}"
            )
        return (B, self.out_features)

    def __call__(self, x: Tensor) -> Tensor:
        x = x.flatten(1)  # (B, D)
        if self.matrix.ndim == 2:
            return x @ self.matrix.mT
        return torch.einsum("bmd,bd->bm", self.matrix, x)

    def adjoint(self, y: Tensor) -> Tensor:
        if self.matrix.ndim == 2:
            return y @ self.matrix
        return torch.einsum("bmd,bm->bd", self.matrix, y)

    def __repr__(self) -> str:
        return f"DenseOperator(matrix={tuple(self.matrix.shape)})"
