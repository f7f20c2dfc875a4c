r"""Downsampling operators on images :math:`(B, C, H, W)`, with explicit adjoints.

* :class:`Downsample`: block averaging by :math:`f`,

  .. math:: (A x)_{ij} = \frac{1}{f^2} \sum_{a, b < f} x_{f i + a, f j + b}, \quad
      (A^T y)_{f i + a, f j + b} = \frac{y_{ij}}{f^2};

* :class:`Bicubic`: antialiased bicubic downsampling, the paper's super-resolution operator:
  :math:`A x = W_H \, x \, W_W^T` with the separable weight matrices of PyTorch's
  `interpolate(mode="bicubic", antialias=True)` (Keys' cubic with :math:`a = -0.5`, stretched
  by the scale factor, truncated at the border and renormalized), so
  :math:`A^T y = W_H^T \, y \, W_W`. The benchmark used Shocher's resizer, which differs at
  the borders (it reflects instead of renormalizing).

References:
    | Cubic Convolution Interpolation for Digital Image Processing (Keys, 1981)
    | https://doi.org/10.1109/TASSP.1981.1163711
"""

__all__ = ["Bicubic", "Downsample", "bicubic_weights"]

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LinearOperator


class Downsample(LinearOperator):
    r"""Creates the :math:`\times f` block-average operator on images :math:`(B, C, H, W)`,
    :math:`H` and :math:`W` multiples of :math:`f` (shared)."""

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

    def in_shape_of(self, out_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(out_shape) != 4:
            raise ValueError(f"A^T takes images (B, C, h, w), got shape {tuple(out_shape)}")
        return (*out_shape[:2], out_shape[2] * self.factor, out_shape[3] * self.factor)

    def __call__(self, x: Tensor) -> Tensor:
        self.out_shape(tuple(x.shape))
        return F.avg_pool2d(x, self.factor)

    def adjoint(self, y: Tensor) -> Tensor:
        f = self.factor
        return y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1) / f**2

    def __repr__(self) -> str:
        return f"Downsample({self.factor})"


def _cubic(x: Tensor, a: float = -0.5) -> Tensor:
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


@functools.cache
def bicubic_weights(n_in: int, n_out: int) -> Tensor:
    r"""The :math:`(n_{out}, n_{in})` antialiased bicubic resampling matrix (float64), rows
    summing to one."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)  # antialiasing: the kernel widens with the reduction
    support = 2 * stretch
    W = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = _cubic((torch.arange(lo, hi, dtype=torch.float64) - center + 0.5) / stretch)
        W[i, lo:hi] = w / w.sum()
    return W


class Bicubic(LinearOperator):
    r"""Creates the antialiased bicubic :math:`\times f` downsampling operator (images with
    :math:`H` and :math:`W` multiples of :math:`f`; shared)."""

    def __init__(self, factor: int):
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        self.factor = factor

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return Downsample(self.factor).out_shape(in_shape)

    def in_shape_of(self, out_shape: tuple[int, ...]) -> tuple[int, ...]:
        return Downsample(self.factor).in_shape_of(out_shape)

    def _matrices(self, H: int, W: int, like: Tensor) -> tuple[Tensor, Tensor]:
        f = self.factor
        to = {"dtype": like.dtype, "device": like.device}
        return bicubic_weights(H, H // f).to(**to), bicubic_weights(W, W // f).to(**to)

    def __call__(self, x: Tensor) -> Tensor:
        self.out_shape(tuple(x.shape))
        W_h, W_w = self._matrices(*x.shape[-2:], x)
        return W_h @ x @ W_w.T

    def adjoint(self, y: Tensor) -> Tensor:
        f = self.factor
        W_h, W_w = self._matrices(y.shape[-2] * f, y.shape[-1] * f, y)
        return W_h.T @ y @ W_w

    def __repr__(self) -> str:
        return f"Bicubic({self.factor})"
