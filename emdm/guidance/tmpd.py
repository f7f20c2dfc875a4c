r"""Tweedie moment projected diffusion (TMPD): a posterior denoiser.

TMPD, like MMPS, approximates :math:`p(x \mid x_t)` by a Gaussian :math:`\mathcal{N}(\hat{x},
V_t)` and takes the linearized Gaussian step

.. math:: \mathbb{E}[x \mid x_t, y] \approx \hat{x} + \sigma_t^2 J^T A^T
    (\Sigma_y + A V_t A^T)^{-1} (y - A \hat{x}),

with the row-sum diagonal covariance :math:`V_t = \mathrm{diag}(\sigma_t^2 J^T \mathbf{1})` in
the system (their cheap approximation of Tweedie's :math:`\sigma_t^2 J`), the true Jacobian in
the correction. Two VJPs per call; the system is solved by GMRES.

References:
    | Tweedie Moment Projected Diffusions for Inverse Problems (Boys et al., 2023)
    | https://arxiv.org/abs/2310.06721
    | Learning Diffusion Priors from Observations by Expectation Maximization, Appendix E
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = ["TMPD"]

import torch
from torch import Tensor

from .base import SolvedGuidance


class TMPD(SolvedGuidance):
    r"""Tweedie moment projection with the row-sum diagonal covariance
    :math:`\mathrm{diag}(\tilde{\sigma}_t^2 \tilde{J}^T \mathbf{1})`.

    Arguments:
        args, kwargs: The arguments of :class:`emdm.guidance.SolvedGuidance`.
    """

    vjps = 2

    def split(self, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        lin = self.linearize(x_t, sigma)
        d = lin.s2 * lin.vjp(torch.ones_like(lin.x_hat))  # the row sums of σ² Jᵀ
        A, A_T, cov_y = lin.A, lin.A_T, self.cov_y
        v = self.solve(lambda u: cov_y @ u + A(d * A_T(u)), lin.r)
        return lin.x_hat.detach(), lin.s2 * lin.vjp(A_T(v), retain=False)
