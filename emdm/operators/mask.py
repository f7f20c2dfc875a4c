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
    r"""Creates a masking operator.

    Arguments:
        mask: The mask, broadcastable to the inputs :math:`(B, *)`, e.g. :math:`(B, 1, H, W)`
            for a mask shared over channels. Non-zero entries are observed.
        check: Whether to check that the mask is finite (one pass, one host synchronization
            on CUDA), once here; restrictions (`A[index]`) and copies (`A.to(...)`) of a
            checked operator skip it.
    """

    def __init__(self, mask: Tensor, *, check: bool = True):
        if check:
            check_finite(mask, "the mask of A")
        self.mask = mask

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
        return tuple(in_shape)

    def __call__(self, x: Tensor) -> Tensor:
        return self.mask * x

    def adjoint(self, y: Tensor) -> Tensor:
        return self.mask * y

    def __getitem__(self, index) -> "MaskOperator":
        r"""Restricts a per-sample mask (leading axis :math:`N > 1`) to the samples `index`; a
        shared mask (leading axis 1, or fewer axes than the inputs) is returned as is."""
        if self.mask.ndim == 0 or self.mask.shape[0] == 1:
            return self
        return MaskOperator(self.mask[index], check=False)  # checked already

    def to(self, *args, **kwargs) -> "MaskOperator":
        r"""The operator with its mask moved by `Tensor.to`."""
        return MaskOperator(self.mask.to(*args, **kwargs), check=False)

    def __repr__(self) -> str:
        return f"MaskOperator(mask={tuple(self.mask.shape)})"
