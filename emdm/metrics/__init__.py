r"""Metrics between sample sets."""

from .fid import frechet_distance, gaussian_statistics
from .fidelity import (
    INCEPTION,
    INCEPTION_FILE,
    TINY,
    Uint8Images,
    fidelity_metrics,
    inception_weights_path,
    register_tiny_extractor,
    to_uint8,
)
from .image import psnr, ssim, to_unit
from .lpips import LPIPS
from .ot import METHODS, ot_cost, ot_score

__all__ = [
    "INCEPTION",
    "INCEPTION_FILE",
    "LPIPS",
    "METHODS",
    "TINY",
    "Uint8Images",
    "fidelity_metrics",
    "frechet_distance",
    "gaussian_statistics",
    "inception_weights_path",
    "ot_cost",
    "ot_score",
    "psnr",
    "register_tiny_extractor",
    "ssim",
    "to_uint8",
    "to_unit",
]
