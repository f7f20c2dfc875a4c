r"""Metrics between sample sets."""

from .image import psnr, ssim, to_unit
from .lpips import LPIPS
from .ot import METHODS, ot_cost, ot_score

__all__ = ["LPIPS", "METHODS", "ot_cost", "ot_score", "psnr", "ssim", "to_unit"]
