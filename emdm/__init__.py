r"""emdm: learning diffusion priors from observations by expectation maximization.

A PyTorch implementation of Rozet et al. (2024), https://arxiv.org/abs/2405.13712.
"""

from .denoisers import EDMDenoiser, GaussianDenoiser, GaussianMixture, MixtureDenoiser
from .dplr import DPLR
from .guidance import MMPS
from .loss import denoiser_loss
from .operators import DenseOperator, Identity, LinearOperator, MaskOperator, MRIOperator
from .samplers import DDIM, DDPM, VPDDIM, PredictorCorrector, sample
from .schedule import Schedule, VESchedule, VPSchedule
from .solvers import cg

__all__ = [
    "DDIM",
    "DDPM",
    "DPLR",
    "MMPS",
    "VPDDIM",
    "DenseOperator",
    "EDMDenoiser",
    "GaussianDenoiser",
    "GaussianMixture",
    "Identity",
    "LinearOperator",
    "MRIOperator",
    "MaskOperator",
    "MixtureDenoiser",
    "PredictorCorrector",
    "Schedule",
    "VESchedule",
    "VPSchedule",
    "cg",
    "denoiser_loss",
    "sample",
]

__version__ = "0.1.0"
