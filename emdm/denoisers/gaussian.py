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

from ..checks import check_finite
from ..dplr import DPLR
from .base import broadcast_sigma


class GaussianDenoiser(nn.Module):
    r"""Creates the exact denoiser of :math:`\mathcal{N}(\mu, \Sigma)`.

    Arguments:
        mean: The mean :math:`\mu`, with shape :math:`(*)` (the event shape) or :math:`(D,)`.
        cov: The covariance :math:`\Sigma`, a :class:`DPLR` of size :math:`D`, positive
            semi-definite.

    Both are checked once here (a few host synchronizations on CUDA): finite entries, and
    :math:`D \geq 0`, which makes :math:`\Sigma = \mathrm{diag}(D) + U U^T` positive
    semi-definite; for another :math:`V`, also the necessary :math:`\Sigma_{ii} \geq 0`.
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
        check_finite(mean, "mean")
        for name in ("D", "U", "V"):
            if getattr(cov, name) is not None:
                check_finite(getattr(cov, name), f"the covariance's {name}")
        _check_psd(cov)
        self.register_buffer("mean", mean)
        # the factors as buffers: .to(), .double() and state_dict() carry the covariance
        self.register_buffer("cov_D", cov.D)
        self.register_buffer("cov_U", cov.U)
        self.register_buffer("cov_V", cov.V)

    @property
    def cov(self) -> DPLR:
        r"""The covariance :math:`\Sigma`, on the module's device and in its dtype."""
        return DPLR(self.cov_D, self.cov_U, self.cov_V)

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


def _check_psd(cov: DPLR) -> None:
    r"""Raises a `ValueError` when :math:`\Sigma = \mathrm{diag}(D) + U V` is not a
    covariance this denoiser can use, in :math:`O(N r)`:

    * :math:`D \geq 0`, which the Woodbury solves with :math:`\Sigma + \sigma^2 I` need at
      every :math:`\sigma > 0` (they divide by :math:`D + \sigma^2`); with :math:`V = U^T`
      (or no low-rank part) it also makes :math:`\Sigma` positive semi-definite, as
      :math:`U U^T \succeq 0`;
    * for another :math:`V`, the diagonal :math:`\Sigma_{ii} = D_i + \sum_j U_{ij} V_{ji}
      \geq 0`, a necessary condition.
    """
    checks = [(cov.D, "its diagonal part D", "D >= 0 (with V = U^T, that makes it so)")]
    if cov.U is not None and not torch.equal(cov.V, cov.U.mT):
        checks.append((cov.diag(), "its diagonal D + sum_j U_ij V_ji", "a diagonal >= 0"))
    for diagonal, what, expected in checks:
        negative = diagonal < 0
        if bool(negative.any()):
            raise ValueError(
                f"cov must be positive semi-definite, but {what} has {int(negative.sum())} "
                f"negative entries of {cov.size} (min {diagonal.min().item():.4g}): expected "
                f"{expected}"
            )


def posterior_covariance(cov_x: DPLR, sigma: Tensor) -> DPLR:
    r"""Returns :math:`(\Sigma_x^{-1} + \sigma^{-2} I)^{-1}` for `sigma` with shape :math:`(B,)`
    (or a scalar, as :math:`(1,)`), a DPLR with batch shape :math:`(B,)`."""
    sigma = sigma.reshape(-1)
    precision = cov_x.inv + (1 / sigma**2)[:, None]  # (B, D) diagonal
    return precision.inv
