r"""Denoising score-matching loss of the paper (protocols §1.4).

.. math:: \mathcal{L}(\theta) = \mathbb{E}_{x, t, z} \Big[ \lambda(\sigma_t) \,
    \frac{1}{D} \big\| d_\theta(x + \sigma_t z, \sigma_t) - x \big\|^2 \Big],
    \quad t \sim \mathrm{Beta}(3, 3), \quad \lambda(\sigma) = 1 + 1 / \sigma^2

References:
    | Elucidating the Design Space of Diffusion-Based Generative Models (Karras et al., 2022)
    | https://arxiv.org/abs/2206.00364
"""

__all__ = ["beta33", "denoiser_loss", "denoising_loss"]

from collections.abc import Callable

import torch
from torch import Tensor

from .schedule import Schedule


def beta33(n: int, generator: torch.Generator | None = None, **kwargs) -> Tensor:
    r"""Draws `n` samples of :math:`\mathrm{Beta}(3, 3)` as the median of 5 uniforms.

    The :math:`k`-th order statistic of :math:`n` uniforms follows
    :math:`\mathrm{Beta}(k, n + 1 - k)`; unlike `torch.distributions.Beta`, this takes a
    generator.
    """
    u = torch.rand((n, 5), generator=generator, **kwargs)
    return u.sort(dim=-1).values[:, 2]


def denoiser_loss(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    schedule: Schedule,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Returns the weighted denoising loss of a batch, a scalar.

    Arguments:
        denoiser: The denoiser :math:`d_\theta(x_t, \sigma)`.
        x: Clean samples, with shape :math:`(B, *)` (flat vectors or images).
        schedule: The noise schedule, sampled at :math:`t \sim \mathrm{Beta}(3, 3)`.
        generator: A generator for :math:`t` and :math:`z`.
    """
    if x.ndim < 1 or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor with shape (B, *)")
    t = beta33(x.shape[0], generator, dtype=x.dtype, device=x.device)
    sigma = schedule.sigma_ve(t)  # (B,)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return denoising_loss(denoiser, x, sigma, z)


def denoising_loss(
    denoiser: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: Tensor, z: Tensor
) -> Tensor:
    r"""The loss of :func:`denoiser_loss` for given noise levels :math:`\sigma` :math:`(B,)` and
    noise :math:`z` with the shape of :math:`x` (so that processes can share one batch's draws)."""
    B = x.shape[0]
    x_t = x + sigma.reshape((B,) + (1,) * (x.ndim - 1)) * z
    error = (denoiser(x_t, sigma) - x).square().flatten(1).mean(dim=1)  # (B,)
    return ((1 + 1 / sigma**2) * error).mean()
