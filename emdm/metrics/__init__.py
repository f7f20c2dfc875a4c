r"""Metrics between sample sets."""

from .evaluation import FidelityReference, posterior_calibration
from .fid import frechet_distance, gaussian_statistics
from .fidelity import (
    INCEPTION,
    INCEPTION_FILE,
    TINY,
    FidelityFeatures,
    Uint8Images,
    fidelity_metrics,
    inception_score,
    inception_weights_path,
    register_tiny_extractor,
    to_uint8,
)
from .image import PIXEL_RANGES, psnr, ssim, to_unit
from .lpips import LPIPS
from .ot import METHODS, ot_cost, ot_score

__all__ = [
    "INCEPTION",
    "INCEPTION_FILE",
    "LPIPS",
    "METHODS",
    "PIXEL_RANGES",
    "TINY",
    "FidelityFeatures",
    "FidelityReference",
    "Uint8Images",
    "fidelity_metrics",
    "frechet_distance",
    "gaussian_statistics",
    "inception_score",
    "inception_weights_path",
    "ot_cost",
    "ot_score",
    "posterior_calibration",
    "psnr",
    "register_tiny_extractor",
    "ssim",
    "to_uint8",
    "to_unit",
]
