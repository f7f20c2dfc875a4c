r"""Pixel masks (inpainting).

.. math:: A x = m \odot x, \quad A^T = A, \quad m \in \{0, 1\}^D

Masked-out entries are kept as zeros, so :math:`y` has the shape of :math:`x`.
"""

__all__ = ["MaskOperator"]

import torch
from torch import Tensor

from ..checks import check_finite
from .base import LinearOperator


class MaskOperator(LinearOperator):
    r"""Creates a masking operator, per-sample (one mask per sample, sliced by `A[index]`) or
    shared.

    Arguments:
        mask: The mask, broadcastable to the inputs :math:`(B, *)`, e.g. :math:`(B, 1, H, W)`
            for a mask shared over channels. Non-zero entries are observed.
        shared: Whether the mask is shared by all samples, rather than one per sample along
            its leading axis. Defaults to shared if the mask is 0-d or its leading axis is 1,
            per-sample otherwise; pass `True` for a mask with fewer axes than the inputs, e.g.
            :math:`(H, W)` for images :math:`(B, C, H, W)`.
        check: Whether to check that the mask is finite (one pass, one host synchronization
            on CUDA), once here; restrictions (`A[index]`) and copies (`A.to(...)`) of a
            checked operator skip it.
    """

    def __init__(self, mask: Tensor, *, shared: bool | None = None, check: bool = True):
        if check:
            check_finite(mask, "the mask of A")
        if shared is None:
            shared = mask.ndim == 0 or mask.shape[0] == 1
        self.mask, self.shared = mask, shared

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        try:
            shape = torch.broadcast_shapes(self.mask.shape, in_shape)
        except RuntimeError:
            shape = None
        if shape != torch.Size(in_shape):
            raise ValueError(
                f"mask of shape {tuple(self.mask.shape)} does not broadcast to x of shape "
                f"{tuple(in_shape)}"
            )
        if not self.shared and in_shape[0] != len(self.mask):
            raise ValueError(
                f"A holds {len(self.mask)} masks (one per sample), got x with batch size "
                f"{in_shape[0]}"
            )
        return tuple(in_shape)

    def in_shape_of(self, out_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.out_shape(out_shape)

    def __call__(self, x: Tensor) -> Tensor:
        return self.mask * x

    def adjoint(self, y: Tensor) -> Tensor:
        return self.mask * y

    def _per_sample(self) -> tuple[str, ...]:
        return () if self.shared else ("mask",)

    def __repr__(self) -> str:
        shared = ", shared=True" if self.shared else ""
        return f"MaskOperator(mask={tuple(self.mask.shape)}{shared})"
