r"""Downsampling by block averaging, the antialiased :math:`\times f` reduction used by the quick
posterior-sampling benchmark (the paper's uses an antialiased bicubic kernel instead).

.. math:: (A x)_{ij} = \frac{1}{f^2} \sum_{a, b < f} x_{f i + a, f j + b}, \quad
    (A^T y)_{f i + a, f j + b} = \frac{y_{ij}}{f^2}
"""

__all__ = ["Downsample"]

import torch.nn.functional as F
from torch import Tensor

from .base import LinearOperator


class Downsample(LinearOperator):
    r"""Creates the :math:`\times f` block-average operator on images :math:`(B, C, H, W)`,
    :math:`H` and :math:`W` multiples of :math:`f`."""

    def __init__(self, factor: int):
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        self.factor = factor

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        f = self.factor
        if len(in_shape) != 4 or in_shape[2] % f or in_shape[3] % f:
            raise ValueError(
                f"Downsample({f}) takes images (B, C, H, W) with H and W multiples of {f}, "
                f"got shape {tuple(in_shape)}"
            )
        return (*in_shape[:2], in_shape[2] // f, in_shape[3] // f)

    def __call__(self, x: Tensor) -> Tensor:
        self.out_shape(tuple(x.shape))
        return F.avg_pool2d(x, self.factor)

    def adjoint(self, y: Tensor) -> Tensor:
        f = self.factor
        return y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1) / f**2

    def __repr__(self) -> str:
        return f"Downsample({self.factor})"
