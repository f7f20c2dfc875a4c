r"""Pixel masks (inpainting).

.. math:: A x = m \odot x, \quad A^T = A, \quad m \in \{0, 1\}^D

Masked-out entries are kept as zeros, so :math:`y` has the shape of :math:`x`.
"""

__all__ = ["MaskOperator"]

import torch
from torch import Tensor

from .base import LinearOperator


class MaskOperator(LinearOperator):
    r"""Creates a masking operator.

    Arguments:
        mask: The mask, broadcastable to the inputs :math:`(B, *)`, e.g. :math:`(B, 1, H, W)`
            for a mask shared over channels. Non-zero entries are observed.
    """

    def __init__(self, mask: Tensor):
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

    def __repr__(self) -> str:
        return f"MaskOperator(mask={tuple(self.mask.shape)})"
