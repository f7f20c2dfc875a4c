r"""Exact denoiser of a Gaussian prior (protocols §1.6).

For :math:`x \sim \mathcal{N}(\mu, \Sigma)` and :math:`x_t = x + \sigma z`,

.. math::
    \mathbb{E}[x \mid x_t] & = \mu + \Sigma (\Sigma + \sigma^2 I)^{-1} (x_t - \mu) \\
    \mathbb{V}[x \mid x_t] & = (\Sigma^{-1} + \sigma^{-2} I)^{-1}
        = \sigma^2 I - \sigma^4 (\Sigma + \sigma^2 I)^{-1}

With :math:`\Sigma` a DPLR matrix, both cost :math:`O(D r^2 + r^3)` per sample.
"""

__all__ = ["GaussianDenoiser", "posterior_covariance"]

import torch
from torch import Tensor, nn

from ..dplr import DPLR
from .base import broadcast_sigma


class GaussianDenoiser(nn.Module):
    r"""Creates the exact denoiser of :math:`\mathcal{N}(\mu, \Sigma)`.

    Arguments:
        mean: The mean :math:`\mu`, with shape :math:`(*)` (the event shape) or :math:`(D,)`.
        cov: The covariance :math:`\Sigma`, a :class:`DPLR` of size :math:`D`, positive
            definite.
    """

    def __init__(self, mean: Tensor, cov: DPLR):
        super().__init__()
        if not isinstance(cov, DPLR):
            raise ValueError(f"cov must be a DPLR, got {type(cov).__name__}")
        if mean.numel() != cov.size:
            raise ValueError(
                f"mean has {mean.numel()} elements but cov has size {cov.size}: expected equal"
            )
        if len(cov.batch_shape) > 0:
            raise ValueError(f"cov must not be batched, got batch shape {tuple(cov.batch_shape)}")
        self.register_buffer("mean", mean)
        self.cov = cov

    def forward(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        r"""
        Arguments:
            x_t: The noisy inputs, with shape :math:`(B, *)`.
            sigma: The noise levels, with shape :math:`(B,)`.

        Returns:
            :math:`\mathbb{E}[x \mid x_t]`, with the shape of `x_t`.
        """
        sigma = broadcast_sigma(sigma, x_t, check=False)
        B = x_t.shape[0]
        x = x_t.reshape(B, -1)
        if x.shape[1] != self.cov.size:
            raise ValueError(
                f"x_t must have {self.cov.size} features per sample, got {x.shape[1]}"
            )
        mu = self.mean.reshape(-1).to(x)
        cov = self.cov.to(x.dtype)
        shifted = cov + sigma[:, None] ** 2  # (B, D) diagonal
        out = mu + cov @ shifted.solve(x - mu)
        return out.reshape(x_t.shape)

    def covariance(self, sigma: Tensor) -> DPLR:
        r"""Returns :math:`\mathbb{V}[x \mid x_t] = (\Sigma^{-1} + \sigma^{-2} I)^{-1}`, a
        batched DPLR for `sigma` of shape :math:`(B,)`.

        Two Woodbury inversions avoid the cancellation of
        :math:`\sigma^2 I - \sigma^4 (\Sigma + \sigma^2 I)^{-1}` at large :math:`\sigma`.
        """
        sigma = torch.as_tensor(sigma, dtype=self.cov.dtype, device=self.cov.device)
        return posterior_covariance(self.cov, sigma)

    def extra_repr(self) -> str:
        return f"cov={self.cov!r}"


def posterior_covariance(cov_x: DPLR, sigma: Tensor) -> DPLR:
    r"""Returns :math:`(\Sigma_x^{-1} + \sigma^{-2} I)^{-1}` for `sigma` with shape :math:`(B,)`
    (or a scalar, as :math:`(1,)`), a DPLR with batch shape :math:`(B,)`."""
    sigma = sigma.reshape(-1)
    precision = cov_x.inv + (1 / sigma**2)[:, None]  # (B, D) diagonal
    return precision.inv
