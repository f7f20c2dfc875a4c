r"""The covariance :math:`V_t \approx \mathbb{V}[x \mid x_t]` of MMPS's Gaussian approximation.

MMPS approximates :math:`p(x \mid x_t)` by :math:`\mathcal{N}(\hat{x}, V_t)` (protocols §1.7)
and only ever applies :math:`V_t` to vectors, inside :math:`A V_t A^T`. Each choice is a small
object whose :meth:`PriorCovariance.operator` returns :math:`u \mapsto V_t u` at the noise
levels :math:`\sigma_t`, given the vector-Jacobian product :math:`u \mapsto J^T u` of the
denoiser, :math:`J = \partial \hat{x} / \partial x_t`:

* :class:`Tweedie`: :math:`V_t = \sigma_t^2 J^T`, exact by Tweedie's formula when the denoiser
  is exact (one vector-Jacobian product per application);
* :class:`Zero`: :math:`V_t = 0`;
* :class:`SigmaT`: :math:`V_t = \sigma_t^2 I`;
* :class:`IdentityPrior`: :math:`V_t = (I + \sigma_t^{-2} I)^{-1}`, the posterior covariance
  of the prior :math:`\mathcal{N}(\cdot, I)`;
* :class:`GaussianPrior`: :math:`V_t = (\Sigma_x^{-1} + \sigma_t^{-2} I)^{-1}`, that of a
  Gaussian prior with a :class:`emdm.DPLR` covariance :math:`\Sigma_x`.

The first four are also selected by name (:data:`COVARIANCES`, the names configurations and
command lines use); :func:`prior_covariance` turns a name, a :class:`DPLR` or an object into
one.

References:
    | Learning Diffusion Priors from Observations by Expectation Maximization
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = [
    "COVARIANCES",
    "GaussianPrior",
    "IdentityPrior",
    "PriorCovariance",
    "SigmaT",
    "Tweedie",
    "Zero",
    "prior_covariance",
]

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from ..denoisers.base import per_sample
from ..denoisers.gaussian import posterior_covariance
from ..dplr import DPLR

Operator = Callable[[Tensor], Tensor]


class PriorCovariance(ABC):
    r"""A covariance :math:`V_t \approx \mathbb{V}[x \mid x_t]`, applied to vectors.

    A subclass names itself (:attr:`name`) and implements :meth:`operator`; :meth:`check`
    says whether it applies to states :math:`x_t`.
    """

    #: The name that selects it (:data:`COVARIANCES`).
    name: str

    @abstractmethod
    def operator(self, sigma: Tensor, vjp: Operator, like: Tensor) -> Operator | None:
        r"""Returns :math:`u \mapsto V_t u` on tensors shaped like `like` :math:`(B, *)`, or
        `None` when :math:`V_t = 0` (so that MMPS skips :math:`A V_t A^T`).

        Arguments:
            sigma: The noise levels :math:`\sigma_t`, with shape :math:`(B,)`.
            vjp: :math:`u \mapsto J^T u`, the denoiser's vector-Jacobian product at
                :math:`x_t`.
            like: A tensor with the shape of :math:`x_t`.
        """

    def check(self, x_t: Tensor) -> None:
        r"""Raises a `ValueError` unless this covariance applies to states `x_t`."""
        return None  # by default, any state

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Tweedie(PriorCovariance):
    r""":math:`V_t = \sigma_t^2 J^T`: by Tweedie's formula, :math:`\mathbb{V}[x \mid x_t] =
    \sigma_t^2 \partial \mathbb{E}[x \mid x_t] / \partial x_t`, exact for an exact denoiser.
    One vector-Jacobian product per application."""

    name = "tweedie"

    def operator(self, sigma: Tensor, vjp: Operator, like: Tensor) -> Operator:
        s2 = per_sample(sigma**2, like)
        return lambda u: s2 * vjp(u)


class Zero(PriorCovariance):
    r""":math:`V_t = 0`: the denoiser's output is taken as certain in the linear system."""

    name = "zero"

    def operator(self, sigma: Tensor, vjp: Operator, like: Tensor) -> None:
        return None


class SigmaT(PriorCovariance):
    r""":math:`V_t = \sigma_t^2 I`, the limit of :math:`\mathbb{V}[x \mid x_t]` as
    :math:`\sigma_t \to 0` along a smooth prior."""

    name = "sigma_t"

    def operator(self, sigma: Tensor, vjp: Operator, like: Tensor) -> Operator:
        s2 = sigma**2
        return lambda u: per_sample(s2, u) * u


class IdentityPrior(PriorCovariance):
    r""":math:`V_t = (I + \sigma_t^{-2} I)^{-1} = \sigma_t^2 / (1 + \sigma_t^2) \, I`, the
    posterior covariance of :math:`x \sim \mathcal{N}(\mu, I)`."""

    name = "identity"

    def operator(self, sigma: Tensor, vjp: Operator, like: Tensor) -> Operator:
        s2 = sigma**2
        return lambda u: per_sample(s2 / (1 + s2), u) * u


class GaussianPrior(PriorCovariance):
    r""":math:`V_t = (\Sigma_x^{-1} + \sigma_t^{-2} I)^{-1}`, the posterior covariance of
    :math:`x \sim \mathcal{N}(\mu, \Sigma_x)` (:func:`emdm.denoisers.posterior_covariance`,
    two Woodbury inversions, :math:`O(D r^2 + r^3)` per sample).

    Arguments:
        cov_x: The prior covariance :math:`\Sigma_x`, an unbatched :class:`DPLR` on the
            flattened event of :math:`x`.
    """

    name = "cov_x"

    def __init__(self, cov_x: DPLR):
        if not isinstance(cov_x, DPLR):
            raise ValueError(f"cov_x must be a DPLR, got {type(cov_x).__name__}")
        if cov_x.batch_shape != torch.Size():
            raise ValueError("a DPLR covariance must not be batched")
        self.cov_x = cov_x

    def check(self, x_t: Tensor) -> None:
        event = math.prod(x_t.shape[1:])
        if self.cov_x.size != event:
            raise ValueError(
                f"covariance is a DPLR of size {self.cov_x.size}, expected {event} "
                f"(the elements of x_t's event shape {tuple(x_t.shape[1:])})"
            )

    def operator(self, sigma: Tensor, vjp: Operator, like: Tensor) -> Operator:
        V = posterior_covariance(self.cov_x.to(sigma.dtype), sigma)  # batch (B,)
        return lambda u: (V @ u.flatten(1)).reshape(u.shape)

    def __str__(self) -> str:
        return repr(self.cov_x)

    def __repr__(self) -> str:
        return f"GaussianPrior({self.cov_x!r})"


_NAMED: dict[str, type[PriorCovariance]] = {
    "tweedie": Tweedie,
    "zero": Zero,
    "sigma_t": SigmaT,
    "identity": IdentityPrior,
}
#: The covariances selected by name alone.
COVARIANCES = tuple(_NAMED)


def prior_covariance(
    covariance: "str | DPLR | PriorCovariance", cov_x: DPLR | None = None
) -> PriorCovariance:
    r"""The :class:`PriorCovariance` that `covariance` denotes.

    Arguments:
        covariance: A name of :data:`COVARIANCES`; `"cov_x"`, the Gaussian prior of `cov_x`;
            a :class:`DPLR` :math:`\Sigma_x` (a :class:`GaussianPrior`); or an object,
            returned as is.
        cov_x: The prior covariance :math:`\Sigma_x` that `"cov_x"` needs.
    """
    if isinstance(covariance, PriorCovariance):
        return covariance
    if isinstance(covariance, DPLR):
        return GaussianPrior(covariance)
    if isinstance(covariance, str) and covariance in _NAMED:
        return _NAMED[covariance]()
    if isinstance(covariance, str) and covariance == "cov_x":
        if not isinstance(cov_x, DPLR):
            raise ValueError(
                "covariance 'cov_x' needs cov_x, the prior covariance Σ_x as a DPLR, got "
                f"{type(cov_x).__name__}"
            )
        return GaussianPrior(cov_x)
    got = repr(covariance) if isinstance(covariance, str) else type(covariance).__name__
    raise ValueError(
        f"covariance must be one of {COVARIANCES}, 'cov_x' (with cov_x), a DPLR or a "
        f"PriorCovariance, got {got}"
    )
