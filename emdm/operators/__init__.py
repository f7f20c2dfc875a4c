r"""Linear operators :math:`x \mapsto A x` with explicit adjoints :math:`A^T`."""

from .base import AutogradAdjoint, Identity, LinearOperator, transpose
from .blur import Blur, gaussian_kernel, motion_kernel
from .dense import DenseOperator
from .inpainting import box_mask, random_mask
from .mask import MaskOperator
from .mri import MRIOperator
from .resize import Bicubic, Downsample

__all__ = [
    "AutogradAdjoint",
    "Bicubic",
    "Blur",
    "DenseOperator",
    "Downsample",
    "Identity",
    "LinearOperator",
    "MRIOperator",
    "MaskOperator",
    "box_mask",
    "gaussian_kernel",
    "motion_kernel",
    "random_mask",
    "transpose",
]
