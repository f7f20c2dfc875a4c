r"""Posterior-sampling baselines of the paper's Appendix E: DPS, ΠGDM, TMPD and DiffPIR.

Each is a posterior denoiser around a prior denoiser :math:`\hat{x} = d(\tilde{x}_t,
\tilde{\sigma}_t)` (VE coordinates) and an observation :math:`y = A x + \varepsilon`,
:math:`\varepsilon \sim \mathcal{N}(0, \sigma_y^2 I)`, with the residual
:math:`r = y - A \hat{x}` and :math:`\tilde{J} = \partial \hat{x} / \partial \tilde{x}_t`.
:meth:`Guidance.parts` returns :math:`\hat{x}` and a correction :math:`\Delta`; called as a
denoiser, a baseline returns :math:`\hat{x} + \Delta`, so every sampler can use it. On the
benchmark's sampler (:class:`emdm.VPDDIM`), :math:`x_s` receives :math:`\kappa \Delta` with the
benchmark's weight :math:`\kappa` (:meth:`Guidance.vp_coefficient`; protocols §6.3), by default
:math:`c_s = \partial x_s / \partial \hat{x}`, as for MMPS. With :math:`\bar{\alpha}_t =
1 / (1 + \tilde{\sigma}_t^2)` and :math:`\partial / \partial x_t = \sqrt{1 + \tilde{\sigma}_t^2}
\, \partial / \partial \tilde{x}_t`:

* DPS: :math:`\Delta = -\nabla_{\tilde{x}_t} \|r\|_2` (per sample, the norm not squared),
  :math:`\kappa = \zeta / \sqrt{\bar{\alpha}_t}`: :math:`x_s \mathrel{-}= \zeta \nabla_{x_t}
  \|r\|`. One VJP.
* ΠGDM: :math:`(\sigma_y^2 I + r_t^2 A A^T) v = r` with :math:`r_t^2 = 1 - \bar{\alpha}_t`,
  :math:`\Delta = \tilde{\sigma}_t^2 \tilde{J}^T A^T v` (Tweedie's formula with the score
  :math:`\tilde{J}^T A^T v`), :math:`\kappa = \sqrt{\bar{\alpha}_s} \, \bar{\alpha}_t`, i.e.
  :math:`x_s \mathrel{+}= \sqrt{\bar{\alpha}_s \bar{\alpha}_t} \, r_t^2 J^T A^T v`. One VJP.
* TMPD: the row-sum diagonal covariance :math:`\mathrm{diag}(\tilde{\sigma}_t^2 \tilde{J}^T
  \mathbf{1})`; :math:`(\sigma_y^2 I + A \, \mathrm{diag}(\cdot) A^T) v = r`,
  :math:`\Delta = \tilde{\sigma}_t^2 \tilde{J}^T A^T v`. Two VJPs.
* DiffPIR: :math:`\rho = \tilde{\sigma}_t^2 / \lambda`,
  :math:`(I + \rho \sigma_y^{-2} A^T A) \Delta = \rho \sigma_y^{-2} A^T r` with :math:`\hat{x}`
  detached. No VJP through the network.

Linear systems are solved by GMRES in float64 with a fixed number of iterations (5), as the
benchmark does.

References:
    | Diffusion Posterior Sampling for General Noisy Inverse Problems (Chung et al., 2023)
    | https://arxiv.org/abs/2209.14687
    | Pseudoinverse-Guided Diffusion Models for Inverse Problems (Song et al., 2023)
    | https://openreview.net/forum?id=9_gsMA8MRKQ
    | Tweedie Moment Projected Diffusions for Inverse Problems (Boys et al., 2023)
    | https://arxiv.org/abs/2310.06721
    | Denoising Diffusion Models for Plug-and-Play Image Restoration (Zhu et al., 2023)
    | https://arxiv.org/abs/2305.08995
    | Learning Diffusion Priors from Observations by Expectation Maximization, Appendix E
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = ["BASELINES", "DPS", "PGDM", "TMPD", "DiffPIR", "EpsilonDenoiser", "Guidance"]

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .checks import check_finite
from .denoisers.base import broadcast_sigma, per_sample
from .operators.base import transpose
from .schedule import VPSchedule
from .solvers import gmres


class Guidance(ABC):
    r"""A posterior denoiser :math:`\hat{x} + \Delta` built from a prior denoiser.

    Arguments:
        denoiser: The prior denoiser :math:`d(\tilde{x}_t, \tilde{\sigma}_t)`.
        A: The linear operator, a callable on :math:`(B, *)`; its `.T` is the adjoint, or
            autograd provides it.
        y: The observations, with shape :math:`(B, *)`, finite (checked once here); the
            dtype the sampler's :math:`\tilde{x}_t` must have.
        cov_y: The noise variance :math:`\sigma_y^2`, a positive finite float.
    """

    #: Network vector-Jacobian products per call.
    vjps: int = 1

    def __init__(self, denoiser: Callable, A: Callable, y: Tensor, cov_y: float):
        if not callable(denoiser) or not callable(A):
            raise ValueError("denoiser and A must be callable")
        if not isinstance(y, Tensor) or y.ndim < 1:
            raise ValueError("y must be a tensor with shape (B, *)")
        check_finite(y, "y")  # once here: one host synchronization on CUDA
        if not isinstance(cov_y, int | float) or not (cov_y > 0 and math.isfinite(cov_y)):
            raise ValueError(f"cov_y must be a positive float (σ_y²), and finite, got {cov_y!r}")
        self.denoiser, self.A, self.y, self.cov_y = denoiser, A, y, float(cov_y)

    def _forward(self, x_t: Tensor, sigma: Tensor, grad: bool = True):
        if x_t.ndim < 1 or x_t.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"x_t must have shape (B, *) with B = {self.y.shape[0]}, got {tuple(x_t.shape)}"
            )
        if x_t.dtype != self.y.dtype:  # an attribute comparison: free on every call
            raise ValueError(
                f"x_t has dtype {x_t.dtype} but y has dtype {self.y.dtype}: draw the sampler's "
                f"start x1 in {self.y.dtype}, or cast y (and A) to {x_t.dtype}"
            )
        sigma = broadcast_sigma(sigma, x_t)
        with torch.enable_grad():
            x_t = x_t.detach().requires_grad_(grad)
            x_hat = self.denoiser(x_t, sigma)
        if grad and not x_hat.requires_grad:
            raise ValueError(
                f"{type(self).__name__} needs the denoiser's vector-Jacobian products: its "
                "output does not depend on x_t through autograd"
            )
        return x_t, x_hat, sigma

    @abstractmethod
    def parts(self, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        r"""Returns :math:`\hat{x}` and :math:`\Delta`, each with the shape of `x_t`, detached."""

    def vp_coefficient(self, alpha_bar_t: float, alpha_bar_s: float, c_s: float) -> float:
        r"""The weight :math:`\kappa` of :math:`\Delta` in a VP DDIM step :math:`t \to s`."""
        return c_s

    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        x_hat, delta = self.parts(x_t, sigma)
        return x_hat + delta


class DPS(Guidance):
    r"""Diffusion posterior sampling: :math:`\Delta = -\zeta \nabla_{\tilde{x}_t} \|r\|` as a
    denoiser, :math:`x_s \mathrel{-}= \zeta \nabla_{x_t} \|r\|` on :class:`emdm.VPDDIM`.

    Arguments:
        zeta: The step size :math:`\zeta` (0.5 in the benchmark).
        kwargs: The arguments of :class:`Guidance`.
    """

    def __init__(self, *args, zeta: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        if not zeta > 0:
            raise ValueError(f"zeta must be positive, got {zeta}")
        self.zeta = zeta

    def _gradient(self, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        x_t, x_hat, _ = self._forward(x_t, sigma)
        with torch.enable_grad():
            r = (self.y - self.A(x_hat)).flatten(1)
            # a sum of per-sample norms: each sample's gradient is its own norm's
            (grad,) = torch.autograd.grad(torch.linalg.vector_norm(r, dim=1).sum(), x_t)
        return x_hat.detach(), -grad

    def parts(self, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        x_hat, direction = self._gradient(x_t, sigma)
        return x_hat, self.zeta * direction

    def vp_coefficient(self, alpha_bar_t: float, alpha_bar_s: float, c_s: float) -> float:
        # x_s += ζ (−∇_{x_t} ‖r‖) = ζ / sqrt(ᾱ_t) (−∇_{x̃_t} ‖r‖) and parts carries ζ already
        return 1 / math.sqrt(alpha_bar_t)


class _Solved(Guidance):
    r"""A baseline that solves a linear system by GMRES (`iterations` in float64, with the
    benchmark's `regularization`, see :func:`emdm.solvers.gmres`)."""

    def __init__(self, *args, iterations: int = 5, regularization: float = 1e-6, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
        self.iterations, self.regularization = iterations, regularization

    def _solve(self, matvec: Callable[[Tensor], Tensor], b: Tensor) -> Tensor:
        return gmres(matvec, b, self.iterations, regularization=self.regularization)


class PGDM(_Solved):
    r"""Pseudoinverse-guided diffusion (ΠGDM): :math:`V_t = r_t^2 I`, :math:`r_t^2 = 1 -
    \bar{\alpha}_t`, in the system, the true Jacobian in the correction."""

    def parts(self, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        x_t, x_hat, sigma = self._forward(x_t, sigma)
        s2 = per_sample(sigma**2, x_hat)
        A, A_T = self.A, transpose(self.A, x_hat)
        r = self.y - A(x_hat.detach())
        r_t2 = per_sample(sigma**2 / (1 + sigma**2), r)  # 1 - ᾱ_t
        v = self._solve(lambda u: self.cov_y * u + r_t2 * A(A_T(u)), r)
        (g,) = torch.autograd.grad(x_hat, x_t, A_T(v))
        return x_hat.detach(), s2 * g

    def vp_coefficient(self, alpha_bar_t: float, alpha_bar_s: float, c_s: float) -> float:
        # x_s += sqrt(ᾱ_s ᾱ_t) r_t² J_{x_t}ᵀ Aᵀ v with J_{x_t} = J̃ / sqrt(ᾱ_t) and
        # r_t² = 1 − ᾱ_t = σ̃² ᾱ_t: that is sqrt(ᾱ_s) ᾱ_t times Δ = σ̃² J̃ᵀ Aᵀ v
        return math.sqrt(alpha_bar_s) * alpha_bar_t


class TMPD(_Solved):
    r"""Tweedie moment projection with the row-sum diagonal covariance
    :math:`\mathrm{diag}(\tilde{\sigma}_t^2 \tilde{J}^T \mathbf{1})`."""

    vjps = 2

    def parts(self, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        x_t, x_hat, sigma = self._forward(x_t, sigma)
        s2 = per_sample(sigma**2, x_hat)
        (row_sums,) = torch.autograd.grad(x_hat, x_t, torch.ones_like(x_hat), retain_graph=True)
        d = s2 * row_sums
        A, A_T = self.A, transpose(self.A, x_hat)
        r = self.y - A(x_hat.detach())
        v = self._solve(lambda u: self.cov_y * u + A(d * A_T(u)), r)
        (g,) = torch.autograd.grad(x_hat, x_t, A_T(v))
        return x_hat.detach(), s2 * g


class DiffPIR(_Solved):
    r"""Plug-and-play restoration: a proximal step on the data term around the detached
    :math:`\hat{x}`, with :math:`\rho = \tilde{\sigma}_t^2 / \lambda`.

    Arguments:
        lam: :math:`\lambda` (8 in the benchmark).
        kwargs: The arguments of :class:`Guidance` and `iterations`.
    """

    vjps = 0

    def __init__(self, *args, lam: float = 8.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not lam > 0:
            raise ValueError(f"lam must be positive, got {lam}")
        self.lam = lam

    def parts(self, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        _, x_hat, sigma = self._forward(x_t, sigma, grad=False)
        x_hat = x_hat.detach()
        A, A_T = self.A, transpose(self.A, x_hat)
        w = per_sample(sigma**2 / (self.lam * self.cov_y), x_hat)  # ρ / σ_y²
        rhs = w * A_T(self.y - A(x_hat))
        delta = self._solve(lambda u: u + w * A_T(A(u)), rhs)
        return x_hat, delta


BASELINES: dict[str, type[Guidance]] = {"dps": DPS, "pgdm": PGDM, "tmpd": TMPD, "diffpir": DiffPIR}


class EpsilonDenoiser(nn.Module):
    r"""The denoiser of an :math:`\varepsilon`-predicting network trained on a discrete VP
    schedule (guided-diffusion, DDPM), in VE coordinates.

    .. math:: \hat{x} = \mathrm{clip}(\tilde{x}_t - \tilde{\sigma}_t \,
        \varepsilon_\theta(\sqrt{\bar{\alpha}} \tilde{x}_t, n), -1, 1), \quad
        \bar{\alpha} = 1 / (1 + \tilde{\sigma}_t^2)

    with :math:`n` the (continuous) index of :math:`\tilde{\sigma}_t` on the schedule.

    Arguments:
        network: :math:`(x_t, n) \mapsto \varepsilon`, with :math:`x_t` of shape
            :math:`(B, C, H, W)`; extra output channels (a learned variance) are dropped.
        schedule: The network's :class:`emdm.VPSchedule`.
        clip: Whether to clip :math:`\hat{x}` to :math:`[-1, 1]` (guided-diffusion's
            `clip_denoised`, the benchmark's setting).
    """

    def __init__(self, network: nn.Module, schedule: VPSchedule, clip: bool = True):
        super().__init__()
        if not isinstance(schedule, VPSchedule):
            raise ValueError(f"schedule must be a VPSchedule, got {type(schedule).__name__}")
        self.network, self.schedule, self.clip = network, schedule, clip

    def forward(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        sigma = broadcast_sigma(sigma, x_t)
        s = per_sample(sigma, x_t)
        n = self.schedule.timestep(sigma.detach()).to(x_t.dtype)
        eps = self.network(x_t / (1 + s**2).sqrt(), n)[:, : x_t.shape[1]]
        x_hat = x_t - s * eps
        return x_hat.clamp(-1, 1) if self.clip else x_hat
