r"""Linear operators :math:`x \mapsto A x` with explicit adjoints :math:`A^T`."""

from .base import AutogradAdjoint, Identity, LinearOperator, transpose
from .dense import DenseOperator
from .mask import MaskOperator
from .mri import MRIOperator

__all__ = [
    "AutogradAdjoint",
    "DenseOperator",
    "Identity",
    "LinearOperator",
    "MRIOperator",
    "MaskOperator",
    "transpose",
]
