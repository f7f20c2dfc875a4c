r"""Pseudoinverse-guided diffusion (ΠGDM): a guidance term added to the score.

ΠGDM approximates :math:`p(x \mid x_t)` by :math:`\mathcal{N}(\hat{x}, r_t^2 I)` and adds the
gradient of the resulting :math:`\log p(y \mid x_t)` to the score, taken through the denoiser's
Jacobian alone (the "pseudoinverse" guidance, their Eq. 8),

.. math:: \nabla_{x_t} \log p(y \mid x_t) \approx J^T A^T (\Sigma_y + r_t^2 A A^T)^{-1}
    (y - A \hat{x}), \quad r_t^2 = 1 - \bar{\alpha}_t, \quad
    J = \frac{\partial \hat{x}}{\partial x_t}.

As a :class:`Guidance`, in VE coordinates: :math:`(\Sigma_y + r_t^2 A A^T) v = r` and
:math:`\Delta = \tilde{\sigma}_t^2 \tilde{J}^T A^T v` (Tweedie's formula with that score), with
the weight :math:`\kappa = \sqrt{\bar{\alpha}_s} \, \bar{\alpha}_t` on :class:`emdm.VPDDIM`, so
that :math:`x_s \mathrel{+}= \sqrt{\bar{\alpha}_s \bar{\alpha}_t} \, r_t^2 J^T A^T v`, the
benchmark's update (protocols §6.3). One VJP per call; the system is solved by GMRES.

References:
    | Pseudoinverse-Guided Diffusion Models for Inverse Problems (Song et al., 2023)
    | https://openreview.net/forum?id=9_gsMA8MRKQ
    | Learning Diffusion Priors from Observations by Expectation Maximization, Appendix E
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = ["PGDM"]

import math

from torch import Tensor

from ..denoisers.base import per_sample
from .base import SolvedGuidance


class PGDM(SolvedGuidance):
    r"""Pseudoinverse-guided diffusion (ΠGDM): :math:`V_t = r_t^2 I`, :math:`r_t^2 = 1 -
    \bar{\alpha}_t`, in the system, the true Jacobian in the correction.

    Arguments:
        args, kwargs: The arguments of :class:`emdm.guidance.SolvedGuidance`.
    """

    def split(self, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        lin = self.linearize(x_t, sigma)
        A, A_T, r, cov_y = lin.A, lin.A_T, lin.r, self.cov_y
        r_t2 = per_sample(lin.sigma**2 / (1 + lin.sigma**2), r)  # 1 - ᾱ_t
        v = self.solve(lambda u: cov_y @ u + r_t2 * A(A_T(u)), r)
        return lin.x_hat.detach(), lin.s2 * lin.vjp(A_T(v), retain=False)

    def vp_weight(self, alpha_bar_t: float, alpha_bar_s: float, c_s: float) -> float:
        # x_s += sqrt(ᾱ_s ᾱ_t) r_t² J_{x_t}ᵀ Aᵀ v with J_{x_t} = J̃ / sqrt(ᾱ_t) and
        # r_t² = 1 − ᾱ_t = σ̃² ᾱ_t: that is sqrt(ᾱ_s) ᾱ_t times Δ = σ̃² J̃ᵀ Aᵀ v
        return math.sqrt(alpha_bar_s) * alpha_bar_t
