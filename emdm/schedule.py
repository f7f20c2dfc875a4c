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
    | Denoising Diffusion Probabilistic Models (Ho et al., 2020)
    | https://arxiv.org/abs/2006.11239
"""

__all__ = ["Schedule", "VESchedule", "VPSchedule"]

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


class VPSchedule(Schedule):
    r"""The discrete linear-:math:`\beta` variance-preserving schedule of DDPM and
    guided-diffusion (protocols §6.1).

    .. math:: \beta_n = \beta_{min} + \frac{n}{T - 1} (\beta_{max} - \beta_{min}), \quad
        \bar{\alpha}_n = \prod_{i \leq n} (1 - \beta_i), \quad
        \alpha_t = \sqrt{\bar{\alpha}_n}, \quad \sigma_t = \sqrt{1 - \bar{\alpha}_n}

    for :math:`n = t (T - 1)`, :math:`n = 0, \dots, T - 1`; between integers,
    :math:`\log \bar{\alpha}` is interpolated linearly. The index :math:`n = -1`
    (:math:`t = -1 / (T - 1)`) is the clean signal, :math:`\bar{\alpha}_{-1} = 1`, where the
    last step of a respaced sampler lands.

    Arguments:
        beta_min: :math:`\beta_0`.
        beta_max: :math:`\beta_{T-1}`.
        T: The number of discrete steps the network was trained with.
    """

    def __init__(self, beta_min: float = 1e-4, beta_max: float = 0.02, T: int = 1000):
        if not 0 < beta_min <= beta_max < 1:
            raise ValueError(
                f"expected 0 < beta_min <= beta_max < 1, got beta_min={beta_min}, "
                f"beta_max={beta_max}"
            )
        if not isinstance(T, int) or T < 2:
            raise ValueError(f"T must be an integer >= 2, got {T!r}")
        self.beta_min, self.beta_max, self.T = float(beta_min), float(beta_max), T
        betas = torch.linspace(beta_min, beta_max, T, dtype=torch.float64)
        # log ᾱ_n for n = -1, 0, ..., T - 1
        self.log_alpha_bar = torch.cat([torch.zeros(1, dtype=torch.float64),
                                        torch.cumsum(torch.log1p(-betas), 0)])  # fmt: skip

    def step_time(self, n: float) -> float:
        r"""The time :math:`t = n / (T - 1)` of the discrete index :math:`n`."""
        return n / (self.T - 1)

    def respaced(self, steps: int) -> list[int]:
        r"""The `steps` indices of guided-diffusion's respacing,
        :math:`\mathrm{round}(i (T - 1) / (N - 1))`, in decreasing order."""
        if not isinstance(steps, int) or not 1 <= steps <= self.T:
            raise ValueError(f"steps must be an integer in [1, {self.T}], got {steps!r}")
        if steps == 1:
            return [self.T - 1]
        return [round(i * (self.T - 1) / (steps - 1)) for i in range(steps)][::-1]

    def alpha_bar(self, t: Tensor) -> Tensor:
        r"""Returns :math:`\bar{\alpha}_t`, with the shape of `t` (:math:`t \geq -1/(T-1)`)."""
        t = torch.as_tensor(t)
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
        n = t.to(torch.float64) * (self.T - 1) + 1  # the position in log_alpha_bar
        if bool(torch.any(n < -1e-9)) or bool(torch.any(n > self.T + 1e-9)):
            raise ValueError(f"t must lie in [-1/(T-1), 1], got {t}")
        n = n.clamp(0, self.T)
        table = self.log_alpha_bar.to(n.device)
        lo = n.floor().long().clamp(max=self.T - 1)
        w = n - lo
        log_ab = table[lo] * (1 - w) + table[lo + 1] * w
        return log_ab.exp().to(dtype)

    def alpha(self, t: Tensor) -> Tensor:
        return self.alpha_bar(t).sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        return (1 - self.alpha_bar(t)).sqrt()

    def timestep(self, sigma_ve: Tensor) -> Tensor:
        r"""The continuous index :math:`n` at which :math:`\sigma_t / \alpha_t` equals
        `sigma_ve` (the input an epsilon network trained on indices expects)."""
        log_ab = -torch.log1p(torch.as_tensor(sigma_ve, dtype=torch.float64) ** 2)
        table = self.log_alpha_bar[1:].to(log_ab.device)  # decreasing in n
        hi = torch.searchsorted(-table, -log_ab.contiguous()).clamp(1, self.T - 1)
        w = (table[hi - 1] - log_ab) / (table[hi - 1] - table[hi])
        return (hi - 1 + w.clamp(0, 1)).to(torch.as_tensor(sigma_ve).dtype)

    def __repr__(self) -> str:
        return f"VPSchedule(beta_min={self.beta_min:g}, beta_max={self.beta_max:g}, T={self.T})"
