r"""Denoisers :math:`d(x_t, \sigma) \approx \mathbb{E}[x \mid x_t]`."""

from .base import Denoiser, broadcast_sigma
from .edm import EDMDenoiser
from .gaussian import GaussianDenoiser, posterior_covariance
from .mixture import GaussianMixture, MixtureDenoiser

__all__ = [
    "Denoiser",
    "EDMDenoiser",
    "GaussianDenoiser",
    "GaussianMixture",
    "MixtureDenoiser",
    "broadcast_sigma",
    "posterior_covariance",
]
