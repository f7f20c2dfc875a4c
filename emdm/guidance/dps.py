r"""Diffusion posterior sampling (DPS): a gradient step on :math:`x_t`.

DPS is not a posterior denoiser but a correction of the sampler's step: with the residual
:math:`r = y - A \hat{x}(x_t)` of the prior denoiser's output, it moves the next state along the
gradient of the residual's norm,

.. math:: x_s \mathrel{-}= \zeta \nabla_{x_t} \|y - A \hat{x}(x_t)\|_2

(Algorithm 1 of the paper, per sample, the norm not squared; the noise covariance only scales
the step through :math:`\zeta`). As a :class:`Guidance` it returns :math:`\hat{x}` and
:math:`\Delta = -\zeta \nabla_{\tilde{x}_t} \|r\|` in VE coordinates (:math:`\tilde{x}_t =
x_t / \sqrt{\bar{\alpha}_t}`), with the weight :math:`\kappa = 1 / \sqrt{\bar{\alpha}_t}` on
:class:`emdm.VPDDIM`, which makes the step above exactly; on another sampler,
:math:`\hat{x} + \Delta` serves as a denoiser. One VJP per call.

References:
    | Diffusion Posterior Sampling for General Noisy Inverse Problems (Chung et al., 2023)
    | https://arxiv.org/abs/2209.14687
    | Learning Diffusion Priors from Observations by Expectation Maximization, Appendix E
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = ["DPS"]

import math

import torch
from torch import Tensor

from .base import Guidance, check_positive


class DPS(Guidance):
    r"""Diffusion posterior sampling: :math:`\Delta = -\zeta \nabla_{\tilde{x}_t} \|r\|` as a
    denoiser, :math:`x_s \mathrel{-}= \zeta \nabla_{x_t} \|r\|` on :class:`emdm.VPDDIM`.

    Arguments:
        zeta: The step size :math:`\zeta` (0.5 in the benchmark).
        args, kwargs: The arguments of :class:`emdm.guidance.PosteriorDenoiser`.
    """

    def __init__(self, *args, zeta: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.zeta = check_positive("zeta", zeta)

    def split(self, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        lin = self.linearize(x_t, sigma, residual_graph=True)
        with torch.enable_grad():
            r = (self.y - lin.y_hat).flatten(1)
            # a sum of per-sample norms: each sample's gradient is its own norm's
            (grad,) = torch.autograd.grad(torch.linalg.vector_norm(r, dim=1).sum(), lin.x_t)
        return lin.x_hat.detach(), -self.zeta * grad

    def vp_weight(self, alpha_bar_t: float, alpha_bar_s: float, c_s: float) -> float:
        # x_s += ζ (−∇_{x_t} ‖r‖) = ζ / sqrt(ᾱ_t) (−∇_{x̃_t} ‖r‖) and Δ carries ζ already
        return 1 / math.sqrt(alpha_bar_t)
