r"""Posterior denoisers, and the linearization they share.

Every method of this package guides a prior denoiser :math:`\hat{x} = d(x_t, \sigma_t) \approx
\mathbb{E}[x \mid x_t]` towards observations :math:`y = A x + \varepsilon`,
:math:`\varepsilon \sim \mathcal{N}(0, \Sigma_y)` (an :class:`emdm.observation.Observation`),
and starts alike: it evaluates the denoiser with its graph at :math:`x_t`, which linearizes it,

.. math:: \hat{x}(x_t + \delta) \approx \hat{x} + J \delta, \quad
    J = \frac{\partial \hat{x}}{\partial x_t},

with :math:`u \mapsto J^T u` one vector-Jacobian product, and forms the residual
:math:`r = y - A \hat{x}`. :meth:`PosteriorDenoiser.linearize` is that one step
(:class:`Linearization`): it checks :math:`x_t` against :math:`y`, runs the denoiser and
returns :math:`\hat{x}`, :math:`J^T`, :math:`A`, :math:`A^T`, :math:`r` and
:math:`\sigma_t^2`.

A :class:`PosteriorDenoiser` holds the prior denoiser and the observation, checked once at
construction, and is called as a denoiser :math:`(x_t, \sigma_t) \mapsto
\mathbb{E}[x \mid x_t, y]` (approximately), so that every sampler can use it. A
:class:`Guidance` returns that output in two parts, :math:`\hat{x} + \Delta` (it is an
:class:`emdm.denoisers.SplitDenoiser`), with the weight of :math:`\Delta` in a VP DDIM step that
its paper uses.
"""

__all__ = [
    "Denoiser",
    "Guidance",
    "Linearization",
    "NoiseCovariance",
    "Operator",
    "PosteriorDenoiser",
    "SolvedGuidance",
    "positive_sigma",
]

import contextlib
import contextvars
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from functools import cached_property

import torch
from torch import Tensor

from ..covariance import Covariance
from ..denoisers.base import broadcast_sigma, per_sample
from ..dplr import DPLR
from ..observation import Observation
from ..operators.base import transpose
from ..profiling import FORWARD, OPERATOR, VJP, region
from ..solvers import gmres

#: A denoiser :math:`(x_t, \sigma_t) \mapsto \hat{x}`.
Denoiser = Callable[[Tensor, Tensor], Tensor]
#: A linear operator on :math:`(B, *)` tensors.
Operator = Callable[[Tensor], Tensor]
#: The forms of a noise covariance :math:`\Sigma_y` (see :class:`PosteriorDenoiser`).
NoiseCovariance = float | Tensor | DPLR | Covariance


def check_positive(name: str, value, *, integer: bool = False):
    r"""Returns the setting `value`, or raises a `ValueError` naming it unless it is positive
    (with `integer`, a positive `int`)."""
    if integer and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


_POSITIVE_SIGMA = contextvars.ContextVar("emdm_positive_sigma", default=False)


@contextlib.contextmanager
def positive_sigma(known: bool = True) -> Iterator[None]:
    r"""A context in which posterior denoisers take :math:`\sigma_t > 0` as given (when
    `known`) and skip their per-call check, a host synchronization on CUDA.

    The samplers of :mod:`emdm.samplers` call their denoiser inside it, having checked each
    :math:`\sigma_t` of their grid on the host; a direct call outside it is checked as before.
    """
    token = _POSITIVE_SIGMA.set(known)
    try:
        yield
    finally:
        _POSITIVE_SIGMA.reset(token)


class Linearization:
    r"""The denoiser linearized at :math:`x_t`, and the residual of its output.

    Attributes:
        x_t: The state, with shape :math:`(B, *)`, a leaf that requires grad when the
            denoiser's graph was kept.
        x_hat: :math:`\hat{x} = d(x_t, \sigma_t)`, with its graph (when kept).
        sigma: :math:`\sigma_t`, with shape :math:`(B,)`.
        s2: :math:`\sigma_t^2`, with shape :math:`(B, 1, \dots, 1)`.
        A: The operator :math:`A`.
        y_hat: :math:`A \hat{x}`, with shape of :math:`y` (with its graph only if asked).
        r: :math:`r = y - A \hat{x}`, detached.
    """

    def __init__(self, x_t: Tensor, x_hat: Tensor, sigma: Tensor, A, y_hat: Tensor, r: Tensor):
        self.x_t, self.x_hat, self.sigma, self.A = x_t, x_hat, sigma, A
        self.y_hat, self.r = y_hat, r
        self.s2 = per_sample(sigma**2, x_hat)

    @cached_property
    def A_T(self) -> Callable[[Tensor], Tensor]:
        r"""The adjoint :math:`A^T`: `A.T`, or autograd's (:func:`emdm.operators.transpose`)."""
        return transpose(self.A, self.x_hat)

    def vjp(self, u: Tensor, retain: bool = True) -> Tensor:
        r"""Returns :math:`J^T u`, with `u` and the result shaped like :math:`x_t`; `retain`:
        whether the graph stays for another product."""
        with region(VJP):
            (out,) = torch.autograd.grad(self.x_hat, self.x_t, u, retain_graph=retain)
        return out


class PosteriorDenoiser(ABC):
    r"""A denoiser :math:`(x_t, \sigma_t) \mapsto \mathbb{E}[x \mid x_t, y]` (approximately),
    built from a prior denoiser and observations.

    Arguments:
        denoiser: The prior denoiser :math:`d(x_t, \sigma)`, differentiable w.r.t. `x_t`
            where a method needs its vector-Jacobian products.
        A: The linear observation operator, a callable on :math:`(B, *)` tensors; its `.T`
            is the adjoint, or autograd provides it.
        y: The observations, with shape :math:`(B, *)`, finite; their dtype is the one the
            sampler's :math:`x_t` must have.
        cov_y: The noise covariance :math:`\Sigma_y`: a positive float, a positive diagonal
            tensor broadcastable to `y` (per observation if it has `y`'s shape), a
            :class:`DPLR` on the flattened `y`, or a :class:`emdm.covariance.Covariance`.

    `A`, `y` and `cov_y` are checked once here, as an
    :class:`emdm.observation.Observation` (a host synchronization each on CUDA); a matrix or
    mask inside `A` is checked when the operator is built. They are the attributes
    `observation`, `A`, `y` and `cov_y` (a :class:`Covariance` in `y`'s dtype).
    """

    def __init__(self, denoiser: Denoiser, A: Operator, y: Tensor, cov_y: NoiseCovariance):
        if not callable(denoiser):
            raise ValueError(f"denoiser must be callable, got {type(denoiser).__name__}")
        self.denoiser = denoiser
        self.observation = Observation(A, y, cov_y)
        self.A, self.y, self.cov_y = self.observation

    def check_x(self, x_t: Tensor) -> None:
        r"""Raises a `ValueError` unless `x_t` fits the observations: shape :math:`(B, *)`
        with their batch, their dtype, and (when `A` says) an image of their shape. Free:
        attribute comparisons only."""
        if x_t.ndim < 1 or x_t.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"x_t must have shape (B, *) with B = {self.y.shape[0]} as y, "
                f"got {tuple(x_t.shape)}"
            )
        if x_t.dtype != self.y.dtype:
            raise ValueError(
                f"x_t has dtype {x_t.dtype} but y has dtype {self.y.dtype}: draw the sampler's "
                f"start x1 in {self.y.dtype}, or cast y (and A) to {x_t.dtype}"
            )
        out_shape = getattr(self.A, "out_shape", None)
        if out_shape is not None:
            shape = out_shape(tuple(x_t.shape))
            if shape is not None and tuple(shape) != tuple(self.y.shape):
                raise ValueError(
                    f"A maps x_t of shape {tuple(x_t.shape)} to shape {tuple(shape)}, "
                    f"but y has shape {tuple(self.y.shape)}"
                )

    def linearize(
        self,
        x_t: Tensor,
        sigma: Tensor,
        *,
        grad: bool = True,
        check: bool = True,
        residual_graph: bool = False,
    ) -> Linearization:
        r"""Checks `x_t` (:meth:`check_x`), runs the denoiser and forms the residual.

        Arguments:
            x_t: The states, with shape :math:`(B, *)`.
            sigma: The noise levels, with shape :math:`(B,)` or :math:`()`.
            grad: Whether to keep the denoiser's graph w.r.t. :math:`x_t` (its
                vector-Jacobian products).
            check: Whether to check :math:`\sigma > 0` (one host sync); skipped inside
                :func:`positive_sigma`.
            residual_graph: Whether :math:`A \hat{x}` keeps its graph too (to differentiate
                a function of the residual).
        """
        self.check_x(x_t)
        sigma = broadcast_sigma(sigma, x_t, check=check and not _POSITIVE_SIGMA.get())
        with torch.enable_grad():
            x_t = x_t.detach().requires_grad_(grad)
            with region(FORWARD):
                x_hat = self.denoiser(x_t, sigma)
            if grad and not x_hat.requires_grad:
                raise ValueError(
                    f"{type(self).__name__} needs the denoiser's vector-Jacobian products, but "
                    "its output does not depend on x_t through autograd (do not detach it or "
                    "run it under no_grad)"
                )
            with region(OPERATOR):
                y_hat = self.A(x_hat if residual_graph else x_hat.detach())
        if y_hat.shape != self.y.shape:
            raise ValueError(
                f"A maps x_t of shape {tuple(x_t.shape)} to shape {tuple(y_hat.shape)}, "
                f"but y has shape {tuple(self.y.shape)}"
            )
        r = self.y.to(y_hat.dtype) - y_hat.detach()
        return Linearization(x_t, x_hat, sigma, self.A, y_hat, r)

    @abstractmethod
    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        r"""
        Arguments:
            x_t: The noisy signals, with shape :math:`(B, *)`.
            sigma: The noise levels, with shape :math:`(B,)` or :math:`()`.

        Returns:
            :math:`\mathbb{E}[x \mid x_t, y]` (approximately), with the shape of `x_t`,
            detached.
        """


class Guidance(PosteriorDenoiser):
    r"""A guided denoiser :math:`\hat{x} + \Delta`, in two parts: an
    :class:`emdm.denoisers.SplitDenoiser`.

    A subclass implements :meth:`split` and, if its method weighs :math:`\Delta` otherwise on
    :class:`emdm.VPDDIM`, :meth:`vp_weight`. Its arguments are those of
    :class:`PosteriorDenoiser`.
    """

    #: Network vector-Jacobian products per call.
    vjps: int = 1

    @abstractmethod
    def split(self, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        r"""Returns :math:`\hat{x}` and :math:`\Delta`, each with the shape of `x_t`, detached."""

    def vp_weight(self, alpha_bar_t: float, alpha_bar_s: float, c_s: float) -> float:
        r"""The weight :math:`\kappa` of :math:`\Delta` in a VP DDIM step :math:`t \to s`; by
        default :math:`c_s = \partial x_s / \partial \hat{x}`, that of a plain denoiser."""
        return c_s

    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        x_hat, delta = self.split(x_t, sigma)
        return x_hat + delta


class SolvedGuidance(Guidance):
    r"""A :class:`Guidance` that solves a linear system by GMRES, in float64 with a fixed
    number of iterations, as the posterior-sampling benchmark does
    (:func:`emdm.solvers.gmres`).

    Arguments:
        iterations: The number of Arnoldi iterations (5 in the benchmark).
        regularization: The regularization :math:`\epsilon` of the small least-squares
            problem (the benchmark's 1e-6).
        args, kwargs: The arguments of :class:`PosteriorDenoiser`.
    """

    def __init__(self, *args, iterations: int = 5, regularization: float = 1e-6, **kwargs):
        super().__init__(*args, **kwargs)
        self.iterations = check_positive("iterations", iterations, integer=True)
        self.regularization = regularization

    def solve(self, matvec: Callable[[Tensor], Tensor], b: Tensor) -> Tensor:
        r"""Returns :math:`C^{-1} b` (approximately) for :math:`C` = `matvec`."""
        return gmres(matvec, b, self.iterations, regularization=self.regularization)
