r"""The denoiser protocol.

A denoiser approximates the posterior mean of the clean signal given a noisy one,

.. math:: d(x_t, \sigma_t) \approx \mathbb{E}[x \mid x_t], \quad x_t = x + \sigma_t z,

as a callable `denoiser(x_t, sigma)` with `x_t` of shape :math:`(B, *)` and `sigma` of shape
:math:`(B,)`, returning a tensor of the shape of `x_t`. By Tweedie's formula,
:math:`d(x_t, \sigma) = x_t + \sigma^2 \nabla \log p_\sigma(x_t)` and
:math:`\mathbb{V}[x \mid x_t] = \sigma^2 \, \partial d / \partial x_t`.

A :class:`SplitDenoiser` also returns its output in two parts, :math:`\hat{x}` and a correction
:math:`\Delta` (:math:`d = \hat{x} + \Delta`), with the weight its method gives :math:`\Delta`
in a variance-preserving DDIM step; :class:`emdm.VPDDIM` applies that weight, so that a
guidance method runs as its paper states on that sampler while every other sampler uses it as
a plain denoiser.
"""

__all__ = ["Denoiser", "SplitDenoiser", "broadcast_sigma", "per_sample"]

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


class Denoiser(Protocol):
    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor: ...


@runtime_checkable
class SplitDenoiser(Protocol):
    r"""A denoiser :math:`d = \hat{x} + \Delta` that exposes its two parts.

    `split(x_t, sigma)` returns :math:`(\hat{x}, \Delta)`, each with the shape of `x_t` and
    detached; `vp_weight(alpha_bar_t, alpha_bar_s, c_s)` returns the weight :math:`\kappa` of
    :math:`\Delta` in a VP DDIM step from :math:`t` to :math:`s`, given
    :math:`\bar{\alpha}_t`, :math:`\bar{\alpha}_s` and
    :math:`c_s = \partial x_s / \partial \hat{x}` (:math:`\kappa = c_s` treats :math:`d` as
    a plain denoiser).
    """

    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor: ...

    def split(self, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]: ...

    def vp_weight(self, alpha_bar_t: float, alpha_bar_s: float, c_s: float) -> float: ...


def broadcast_sigma(sigma: Tensor | float, x_t: Tensor, check: bool = True) -> Tensor:
    r"""Returns `sigma` as a tensor of shape :math:`(B,)` with the dtype and device of `x_t`.

    Arguments:
        sigma: A scalar or a tensor with shape :math:`()` or :math:`(B,)`.
        x_t: The noisy inputs, with shape :math:`(B, *)`.
        check: Whether to check that every :math:`\sigma > 0` (synchronizes once).
    """
    if x_t.ndim < 1:
        raise ValueError(f"x_t must have shape (B, *), got a scalar {tuple(x_t.shape)}")
    B = x_t.shape[0]
    sigma = torch.as_tensor(sigma, dtype=x_t.dtype, device=x_t.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(B)
    elif sigma.shape != (B,):
        raise ValueError(f"sigma must have shape () or ({B},), got {tuple(sigma.shape)}")
    if check and not bool(torch.all(sigma > 0)):
        raise ValueError(f"sigma must be positive, got min {sigma.min().item():g}")
    return sigma


def per_sample(s: Tensor, like: Tensor) -> Tensor:
    r"""Reshapes per-sample scalars :math:`(B,)` to :math:`(B, 1, \dots, 1)`, to broadcast
    against `like` of shape :math:`(B, *)`."""
    return s.reshape(s.shape + (1,) * (like.ndim - 1))
