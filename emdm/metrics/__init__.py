r"""Metrics between sample sets."""

from .fid import frechet_distance, gaussian_statistics
from .image import psnr, ssim, to_unit
from .lpips import LPIPS
from .ot import METHODS, ot_cost, ot_score

__all__ = [
    "LPIPS",
    "METHODS",
    "frechet_distance",
    "gaussian_statistics",
    "ot_cost",
    "ot_score",
    "psnr",
    "ssim",
    "to_unit",
]
