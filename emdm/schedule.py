r"""Noise schedules.

A schedule maps a time :math:`t \in [0, 1]` to the coefficients of the perturbation kernel

.. math:: x_t = \alpha_t x + \sigma_t z, \quad z \sim \mathcal{N}(0, I).

Every denoiser and posterior sampler in emdm works in variance-exploding (VE) coordinates,
:math:`\tilde{x}_t = x_t / \alpha_t = x + \tilde{\sigma}_t z` with
:math:`\tilde{\sigma}_t = \sigma_t / \alpha_t`. A variance-preserving process fits by handing
:math:`(x_t / \alpha_t, \sigma_t / \alpha_t)` to the denoiser: then
:math:`\mathbb{V}[x \mid x_t] = \tilde{\sigma}_t^2 \, \partial \hat{x} / \partial \tilde{x}_t
= \sigma_t^2 / \alpha_t \cdot \partial \hat{x} / \partial x_t`, which is what MMPS needs, with
no change to MMPS.

References:
    | Score-Based Generative Modeling through Stochastic Differential Equations (Song et al., 2021)
    | https://arxiv.org/abs/2011.13456
"""

__all__ = ["Schedule", "VESchedule"]

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Schedule(ABC):
    r"""Abstract schedule :math:`t \mapsto (\alpha_t, \sigma_t)`."""

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        r"""Returns :math:`\alpha_t`, with the shape of `t`."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        r"""Returns :math:`\sigma_t`, with the shape of `t`."""

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""Returns :math:`(\alpha_t, \sigma_t)`, each with the shape of `t`."""
        return self.alpha(t), self.sigma(t)

    def sigma_ve(self, t: Tensor) -> Tensor:
        r"""Returns the noise level in VE coordinates, :math:`\sigma_t / \alpha_t`."""
        alpha_t, sigma_t = self(t)
        return sigma_t / alpha_t


class VESchedule(Schedule):
    r"""Log-linear variance-exploding schedule of the paper (protocols §1.2).

    .. math:: \alpha_t = 1, \quad
        \sigma_t = \exp\big((1 - t) \ln \sigma_{min} + t \ln \sigma_{max}\big)

    Arguments:
        sigma_min: The noise level at :math:`t = 0`, positive.
        sigma_max: The noise level at :math:`t = 1`, greater than `sigma_min`.
    """

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 1e2):
        if not (sigma_min > 0):
            raise ValueError(f"sigma_min must be positive, got {sigma_min}")
        if not (sigma_max > sigma_min):
            raise ValueError(
                f"sigma_max must be greater than sigma_min={sigma_min}, got {sigma_max}"
            )
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def alpha(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        return torch.ones_like(t, dtype=t.dtype if t.is_floating_point() else None)

    def sigma(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        log_sigma = (1 - t) * math.log(self.sigma_min) + t * math.log(self.sigma_max)
        return torch.exp(log_sigma)

    def __repr__(self) -> str:
        return f"VESchedule(sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g})"
