r"""Denoisers :math:`d(x_t, \sigma) \approx \mathbb{E}[x \mid x_t]`."""

from .base import Denoiser, SplitDenoiser, broadcast_sigma
from .edm import EDMDenoiser
from .epsilon import EpsilonDenoiser
from .gaussian import GaussianDenoiser, posterior_covariance
from .mixture import GaussianMixture, MixtureDenoiser

__all__ = [
    "Denoiser",
    "EDMDenoiser",
    "EpsilonDenoiser",
    "GaussianDenoiser",
    "GaussianMixture",
    "MixtureDenoiser",
    "SplitDenoiser",
    "broadcast_sigma",
    "posterior_covariance",
]
