r"""Blur: a per-channel convolution with reflect padding ("same" output size).

.. math:: A x = k \star \mathrm{pad}_R(x), \quad
    A^T y = \mathrm{pad}_R^T (k \star^T y)

with :math:`\star` the cross-correlation of `torch.nn.functional.conv2d` (the kernel applied to
every channel alike), :math:`\star^T` its adjoint (the transposed convolution) and
:math:`\mathrm{pad}_R^T` the adjoint of reflect padding, which adds each padded entry back onto
the pixel it reflects. Kernels: :func:`gaussian_kernel` (the benchmark's Gaussian deblurring,
size 61, std 3), :func:`motion_kernel` (a seeded random camera-shake trajectory, the
benchmark's motion deblurring at size 61 and intensity 0.5) or any :math:`(k, k)` tensor.
"""

__all__ = ["Blur", "gaussian_kernel", "motion_kernel"]

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_finite
from .base import LinearOperator


def gaussian_kernel(size: int, std: float, dtype: torch.dtype = torch.float32) -> Tensor:
    r"""Returns the normalized :math:`(k, k)` Gaussian kernel
    :math:`\propto \exp(-(i^2 + j^2) / 2 s^2)`, :math:`i, j \in [-(k-1)/2, (k-1)/2]`."""
    if not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer, got {size!r}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    i = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(i**2) / (2 * std**2))
    k = g[:, None] * g[None, :]
    return (k / k.sum()).to(dtype)


def motion_kernel(
    size: int = 61,
    intensity: float = 0.5,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""Returns a normalized :math:`(k, k)` motion-blur kernel: the path of a random walk whose
    heading drifts by Gaussian increments of scale :math:`\pi \cdot` `intensity` per unit of
    length, rescaled to span up to the kernel (longer paths at higher intensity), centred,
    and splatted bilinearly. `intensity = 0` gives a straight segment. This follows the idea
    of the benchmark's kernel generator (a random trajectory with an intensity), not its code:
    the kernels differ draw by draw.
    """
    if not isinstance(size, int) or size < 3 or size % 2 == 0:
        raise ValueError(f"size must be an odd integer >= 3, got {size!r}")
    if not 0 <= intensity <= 1:
        raise ValueError(f"intensity must be in [0, 1], got {intensity}")
    steps = 4 * size
    heading = 2 * math.pi * torch.rand((), generator=generator, dtype=torch.float64)
    turns = torch.randn(steps, generator=generator, dtype=torch.float64)
    angles = heading + math.pi * intensity * torch.cumsum(turns, 0) / math.sqrt(steps)
    path = torch.cumsum(torch.stack([angles.cos(), angles.sin()], dim=1), 0)  # (steps, 2)
    path = path - path.mean(0)
    length = (0.25 + 0.75 * intensity) * (size - 1) / 2  # the half-extent to fill
    path = path * (length / path.abs().max().clamp_min(1e-12)) + (size - 1) / 2
    kernel = torch.zeros(size, size, dtype=torch.float64)
    lo = path.floor().long().clamp(0, size - 2)
    w = path - lo  # bilinear weights
    for di in (0, 1):
        for dj in (0, 1):
            weight = (w[:, 0] if di else 1 - w[:, 0]) * (w[:, 1] if dj else 1 - w[:, 1])
            kernel.index_put_((lo[:, 0] + di, lo[:, 1] + dj), weight, accumulate=True)
    return (kernel / kernel.sum()).to(dtype)


def _reflect_index(n: int, p: int, device) -> Tensor:
    r"""For each of the :math:`n + 2p` padded positions, the source position in :math:`[0, n)`."""
    k = torch.arange(-p, n + p, device=device).abs()
    return torch.where(k >= n, 2 * (n - 1) - k, k)


class Blur(LinearOperator):
    r"""Creates a blur operator on images :math:`(B, C, H, W)`, shared (one kernel) or
    per-sample (one kernel per image, sliced by `A[index]`).

    Arguments:
        kernel: The kernel, with shape :math:`(k, k)`, or the kernels, with shape
            :math:`(B, k, k)`; :math:`k` odd.
    """

    def __init__(self, kernel: Tensor):
        if (
            kernel.ndim not in (2, 3)
            or kernel.shape[-1] != kernel.shape[-2]
            or kernel.shape[-1] % 2 == 0
        ):
            raise ValueError(
                f"kernel must have shape (k, k) or (B, k, k) with k odd, got {tuple(kernel.shape)}"
            )
        check_finite(kernel, "the blur kernel")  # once here; a kernel is small
        self.kernel = kernel
        self.pad = kernel.shape[-1] // 2

    def _per_sample(self) -> tuple[str, ...]:
        return ("kernel",) if self.kernel.ndim == 3 else ()

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(in_shape) != 4:
            raise ValueError(f"Blur takes images (B, C, H, W), got shape {tuple(in_shape)}")
        if min(in_shape[2:]) <= self.pad:
            raise ValueError(
                f"reflect padding by {self.pad} needs H and W > {self.pad}, got {tuple(in_shape)}"
            )
        if self.kernel.ndim == 3 and in_shape[0] != len(self.kernel):
            raise ValueError(
                f"A holds {len(self.kernel)} kernels (one per sample), got x with batch size "
                f"{in_shape[0]}"
            )
        return tuple(in_shape)

    def in_shape_of(self, out_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.out_shape(out_shape)

    def _weight(self, x: Tensor) -> Tensor:
        B, C = x.shape[:2]
        k = self.kernel.to(dtype=x.dtype, device=x.device)
        if k.ndim == 2:
            return k.expand(C, 1, *k.shape)  # (C, 1, k, k)
        return k[:, None].expand(B, C, *k.shape[1:]).reshape(B * C, 1, *k.shape[1:])

    def __call__(self, x: Tensor) -> Tensor:
        self.out_shape(tuple(x.shape))
        padded = F.pad(x, (self.pad,) * 4, mode="reflect")
        if self.kernel.ndim == 2:
            return F.conv2d(padded, self._weight(x), groups=x.shape[1])
        # one group per (sample, channel): the batch folded into the channels
        B, C, H, W = x.shape
        out = F.conv2d(padded.reshape(1, B * C, *padded.shape[2:]), self._weight(x), groups=B * C)
        return out.reshape(B, C, H, W)

    def adjoint(self, y: Tensor) -> Tensor:
        self.out_shape(tuple(y.shape))
        B, C, H, W = y.shape
        if self.kernel.ndim == 2:
            g = F.conv_transpose2d(y, self._weight(y), groups=C)  # (B, C, H + 2p, W + 2p)
        else:
            g = F.conv_transpose2d(y.reshape(1, B * C, H, W), self._weight(y), groups=B * C)
            g = g.reshape(B, C, H + 2 * self.pad, W + 2 * self.pad)
        # the adjoint of reflect padding: each padded entry goes back onto its source pixel
        cols = y.new_zeros((B, C, H + 2 * self.pad, W))
        cols.index_add_(-1, _reflect_index(W, self.pad, y.device), g)
        out = y.new_zeros((B, C, H, W))
        return out.index_add_(-2, _reflect_index(H, self.pad, y.device), cols)

    def __repr__(self) -> str:
        return f"Blur(kernel={tuple(self.kernel.shape)})"
