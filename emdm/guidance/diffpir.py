r"""Plug-and-play diffusion restoration (DiffPIR): a posterior denoiser without VJPs.

DiffPIR replaces the denoiser's output by the proximal point of the data term around it,

.. math:: \hat{x} + \Delta = \arg\min_x \|y - A x\|_{\Sigma_y^{-1}}^2
    + \rho^{-1} \|x - \hat{x}\|^2, \quad \rho = \sigma_t^2 / \lambda,

i.e. :math:`(I + \rho A^T \Sigma_y^{-1} A) \Delta = \rho A^T \Sigma_y^{-1} (y - A \hat{x})`:
the linearized Gaussian step of a prior :math:`\mathcal{N}(\hat{x}, \rho I)` with
:math:`\hat{x}` detached (no VJP through the network). The system is solved by GMRES.

References:
    | Denoising Diffusion Models for Plug-and-Play Image Restoration (Zhu et al., 2023)
    | https://arxiv.org/abs/2305.08995
    | Learning Diffusion Priors from Observations by Expectation Maximization, Appendix E
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = ["DiffPIR"]

from torch import Tensor

from ..denoisers.base import per_sample
from .base import SolvedGuidance, check_positive


class DiffPIR(SolvedGuidance):
    r"""Plug-and-play restoration: a proximal step on the data term around the detached
    :math:`\hat{x}`, with :math:`\rho = \tilde{\sigma}_t^2 / \lambda`.

    Arguments:
        lam: :math:`\lambda` (8 in the benchmark).
        args, kwargs: The arguments of :class:`emdm.guidance.SolvedGuidance`.
    """

    vjps = 0

    def __init__(self, *args, lam: float = 8.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.lam = check_positive("lam", lam)

    def split(self, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        lin = self.linearize(x_t, sigma, grad=False)
        x_hat, A, A_T, cov_y = lin.x_hat.detach(), lin.A, lin.A_T, self.cov_y
        rho = per_sample(lin.sigma**2 / self.lam, x_hat)
        rhs = rho * A_T(cov_y.solve(lin.r))
        delta = self.solve(lambda u: u + rho * A_T(cov_y.solve(A(u))), rhs)
        return x_hat, delta
