r"""Moment matching posterior sampling (MMPS): a posterior denoiser.

For a prior denoiser :math:`\hat{x} = d(x_t, \sigma_t) \approx \mathbb{E}[x \mid x_t]` and a
linear-Gaussian observation :math:`y = A x + \varepsilon`,
:math:`\varepsilon \sim \mathcal{N}(0, \Sigma_y)`, MMPS approximates :math:`p(x \mid x_t)` by
:math:`\mathcal{N}(\hat{x}, V_t)` and returns

.. math:: \mathbb{E}[x \mid x_t, y] \approx \hat{x} + \sigma_t^2 J^T A^T
    (\Sigma_y + A V_t A^T)^{-1} (y - A \hat{x}),
    \quad J = \frac{\partial \hat{x}}{\partial x_t}

(Algorithm 3 of the paper; protocols §1.7), with the linear system solved by a few conjugate
gradient iterations. The covariance :math:`V_t \approx \mathbb{V}[x \mid x_t]` is

* `"tweedie"`: :math:`V_t = \sigma_t^2 J^T`, exact by Tweedie's formula when :math:`d` is exact
  (one vector-Jacobian product per CG iteration);
* `"zero"`: :math:`V_t = 0`;
* `"sigma_t"`: :math:`V_t = \sigma_t^2 I`;
* `"identity"`: :math:`V_t = (I + \sigma_t^{-2} I)^{-1}`, i.e. :math:`\Sigma_x = I`;
* a :class:`DPLR` :math:`\Sigma_x`: :math:`V_t = (\Sigma_x^{-1} + \sigma_t^{-2} I)^{-1}`.

With `solver="dense"` (small observations only) the system is instead formed, symmetrized and
solved exactly, with its eigenvalues below :math:`\Sigma_y`'s smallest reflected above it
(:func:`emdm.solvers.dense_solve`): the paper's exact solve of the manifold experiment, safe when
a learned Jacobian makes :math:`\Sigma_y + A V_t A^T` indefinite or singular.

The final correction always uses the true vector-Jacobian product. One call costs one forward
pass of :math:`d`, `iterations` VJPs (Tweedie) and one final VJP, all through a single graph.

References:
    | Learning Diffusion Priors from Observations by Expectation Maximization
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = ["COVARIANCES", "MMPS", "SOLVERS"]

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .checks import check_finite
from .denoisers.base import broadcast_sigma, per_sample
from .denoisers.gaussian import posterior_covariance
from .dplr import DPLR
from .operators.base import transpose
from .solvers import DENSE_MAX, DOTS, cg, dense_solve, gmres

COVARIANCES = ("tweedie", "zero", "sigma_t", "identity")
SOLVERS = ("cg", "dense", "gmres")


def _check_cov_y(cov_y, y: Tensor) -> Tensor | DPLR:
    r"""Validates :math:`\Sigma_y` against `y` and returns it as a tensor or a DPLR."""
    if isinstance(cov_y, DPLR):
        event = math.prod(y.shape[1:])
        if cov_y.size != event:
            raise ValueError(
                f"cov_y is a DPLR of size {cov_y.size}, expected the {event} elements of "
                f"y's event shape {tuple(y.shape[1:])}"
            )
        if cov_y.batch_shape not in (torch.Size(), torch.Size([y.shape[0]])):
            raise ValueError(
                f"cov_y has batch shape {tuple(cov_y.batch_shape)}, expected () or ({y.shape[0]},)"
            )
        factors = [t for t in (cov_y.D, cov_y.U, cov_y.V) if t is not None]
        if not all(bool(torch.isfinite(t).all()) for t in factors):
            raise ValueError("cov_y is a DPLR with NaN or infinite entries in D, U or V")
        if not bool(torch.all(cov_y.D > 0)):
            raise ValueError("cov_y must be positive definite: its diagonal D has entries <= 0")
        return cov_y
    if isinstance(cov_y, int | float):
        if not (cov_y > 0 and math.isfinite(cov_y)):
            raise ValueError(f"cov_y must be positive and finite, got {cov_y}")
        return torch.as_tensor(cov_y, dtype=y.dtype, device=y.device)
    if isinstance(cov_y, Tensor):
        try:
            shape = torch.broadcast_shapes(cov_y.shape, y.shape)
        except RuntimeError:
            shape = None
        if shape != y.shape:
            raise ValueError(
                f"cov_y of shape {tuple(cov_y.shape)} (a diagonal) does not broadcast to y of "
                f"shape {tuple(y.shape)}"
            )
        if not bool(torch.all((cov_y > 0) & torch.isfinite(cov_y))):
            raise ValueError(
                f"cov_y must be positive and finite: of its {cov_y.numel()} entries, "
                f"{int((cov_y <= 0).sum())} are <= 0 and {int(cov_y.isnan().sum())} NaN, "
                f"{int(cov_y.isinf().sum())} infinite"
            )
        return cov_y.to(device=y.device)
    raise ValueError(
        f"cov_y must be a positive float, a diagonal tensor or a DPLR, got {type(cov_y).__name__}"
    )


class MMPS:
    r"""Creates an MMPS posterior denoiser :math:`(x_t, \sigma_t) \mapsto
    \mathbb{E}[x \mid x_t, y]`, usable by every sampler.

    Arguments:
        denoiser: The prior denoiser :math:`d(x_t, \sigma)`, differentiable w.r.t. `x_t`.
        A: The linear observation operator, a callable on :math:`(B, *)` tensors; its `.T`
            is the adjoint, or autograd provides it.
        y: The observations, with shape :math:`(B, *)`, finite; their dtype is the one the
            sampler's :math:`x_t` must have.
        cov_y: The noise covariance :math:`\Sigma_y`: a positive float, a positive diagonal
            tensor broadcastable to `y`, or a :class:`DPLR` on the flattened `y`, finite.
            `y` and `cov_y` are checked once here (a host synchronization each on CUDA); a
            matrix or mask inside `A` is checked when the operator is built.
        covariance: The covariance :math:`V_t`: one of `"tweedie"`, `"zero"`, `"sigma_t"`,
            `"identity"`, or a :class:`DPLR` prior covariance :math:`\Sigma_x`.
        iterations: The number of CG iterations, at least 1 (unused by `solver="dense"`).
        dot: CG inner products per `"sample"` (default) or over the whole `"batch"`, as the
            paper's code does.
        accumulate: The dtype of CG inner products (e.g. `torch.float64`).
        rtol: The CG relative residual tolerance (the paper's code uses 1e-3).
        check: Whether to check each call's :math:`\sigma > 0` (one host sync per call).
        solver: `"cg"`; `"gmres"` (float64 unless `accumulate` says otherwise, no symmetry
            assumed; the posterior-sampling benchmark's solver, with `iterations` Arnoldi
            iterations); or `"dense"`: the exact solve of the symmetrized system with its
            eigenvalues below :math:`\Sigma_y`'s reflected (observations of at most
            :data:`emdm.solvers.DENSE_MAX` elements; costs one VJP per element).

    Attributes:
        nonpositive: How many times, over all calls so far, the solver's guard fired: CG met
            a direction of non-positive curvature (an untrained network's :math:`J` need not
            be positive semi-definite) and kept the last finite iterate, or the dense solve
            reflected an eigenvalue below its floor; a tensor, read without forcing a
            synchronization until you print it.
    """

    def __init__(
        self,
        denoiser: Callable[[Tensor, Tensor], Tensor],
        A: Callable[[Tensor], Tensor],
        y: Tensor,
        cov_y: float | Tensor | DPLR,
        covariance: str | DPLR = "tweedie",
        iterations: int = 1,
        *,
        dot: str = "sample",
        accumulate: torch.dtype | None = None,
        rtol: float = 0.0,
        check: bool = True,
        solver: str = "cg",
    ):
        if not callable(denoiser):
            raise ValueError(f"denoiser must be callable, got {type(denoiser).__name__}")
        if not callable(A):
            raise ValueError(f"A must be a callable linear operator, got {type(A).__name__}")
        if not isinstance(y, Tensor) or y.ndim < 1:
            raise ValueError("y must be a tensor with shape (B, *)")
        check_finite(y, "y")
        if isinstance(covariance, str):
            if covariance not in COVARIANCES:
                raise ValueError(
                    f"covariance must be one of {COVARIANCES} or a DPLR, got {covariance!r}"
                )
        elif not isinstance(covariance, DPLR):
            raise ValueError(
                f"covariance must be one of {COVARIANCES} or a DPLR, got "
                f"{type(covariance).__name__}"
            )
        elif covariance.batch_shape != torch.Size():
            raise ValueError("a DPLR covariance must not be batched")
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
        if dot not in DOTS:
            raise ValueError(f"dot must be one of {DOTS}, got {dot!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")

        self.denoiser, self.A, self.y = denoiser, A, y
        self.cov_y = _check_cov_y(cov_y, y)
        if isinstance(self.cov_y, DPLR):
            self.cov_y = self.cov_y.to(dtype=y.dtype, device=y.device)
        else:
            self.cov_y = self.cov_y.to(dtype=y.dtype)
        self.covariance, self.iterations = covariance, iterations
        self.dot, self.accumulate, self.rtol, self.check = dot, accumulate, rtol, check
        self.solver = solver
        if solver == "dense":
            if y[0].numel() > DENSE_MAX:
                raise ValueError(
                    f'solver="dense" forms the system matrix with one VJP per observed '
                    f"element: y has {y[0].numel()} per sample, at most {DENSE_MAX} allowed; "
                    f'use solver="cg"'
                )
            self.floor = _smallest_eigenvalue(self.cov_y, y)
            if not bool(torch.all(self.floor > 0)):
                raise ValueError("cov_y must be positive definite: it has eigenvalues <= 0")
        self.nonpositive = torch.zeros((), dtype=torch.int64, device=y.device)

    def _check_x(self, x_t: Tensor) -> None:
        if x_t.ndim < 1 or x_t.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"x_t must have shape (B, *) with B = {self.y.shape[0]} as y, "
                f"got {tuple(x_t.shape)}"
            )
        if x_t.dtype != self.y.dtype:  # an attribute comparison: free on every call
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
        if isinstance(self.covariance, DPLR):
            event = math.prod(x_t.shape[1:])
            if self.covariance.size != event:
                raise ValueError(
                    f"covariance is a DPLR of size {self.covariance.size}, expected {event} "
                    f"(the elements of x_t's event shape {tuple(x_t.shape[1:])})"
                )

    def _cov_y(self, v: Tensor) -> Tensor:
        if isinstance(self.cov_y, DPLR):
            return (self.cov_y @ v.flatten(1)).reshape(v.shape)
        return self.cov_y * v

    def _prior_cov(self, sigma: Tensor) -> Callable[[Tensor], Tensor]:
        r"""Returns the explicit :math:`u \mapsto V_t u` of a heuristic covariance."""
        s2 = sigma**2
        if self.covariance == "sigma_t":
            return lambda u: per_sample(s2, u) * u
        if self.covariance == "identity":
            return lambda u: per_sample(s2 / (1 + s2), u) * u
        V = posterior_covariance(self.covariance.to(sigma.dtype), sigma)
        return lambda u: (V @ u.flatten(1)).reshape(u.shape)

    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        r"""
        Arguments:
            x_t: The noisy signals, with shape :math:`(B, *)`.
            sigma: The noise levels, with shape :math:`(B,)` or :math:`()`.

        Returns:
            :math:`\mathbb{E}[x \mid x_t, y]`, with the shape of `x_t`, detached.
        """
        self._check_x(x_t)
        sigma = broadcast_sigma(sigma, x_t, check=self.check)

        with torch.enable_grad():
            x_t = x_t.detach().requires_grad_()
            x_hat = self.denoiser(x_t, sigma)
        if not x_hat.requires_grad:
            raise ValueError(
                "the denoiser's output does not depend on x_t through autograd: MMPS needs "
                "its vector-Jacobian products (do not detach or run it under no_grad)"
            )

        A, A_T = self.A, transpose(self.A, x_hat)
        y_hat = A(x_hat.detach())
        if y_hat.shape != self.y.shape:
            raise ValueError(
                f"A maps x_t of shape {tuple(x_t.shape)} to shape {tuple(y_hat.shape)}, "
                f"but y has shape {tuple(self.y.shape)}"
            )
        r = self.y.to(y_hat.dtype) - y_hat
        s2 = per_sample(sigma**2, x_hat)

        def vjp(u: Tensor, retain: bool = True) -> Tensor:
            (out,) = torch.autograd.grad(x_hat, x_t, u, retain_graph=retain)
            return out

        # C v = Σ_y v + A V_t Aᵀ v
        if isinstance(self.covariance, str) and self.covariance == "tweedie":

            def matvec(v: Tensor) -> Tensor:
                return self._cov_y(v) + A(s2 * vjp(A_T(v)))  # V_t = σ² Jᵀ: one VJP

        elif isinstance(self.covariance, str) and self.covariance == "zero":
            matvec = self._cov_y
        else:
            V = self._prior_cov(sigma)

            def matvec(v: Tensor) -> Tensor:
                return self._cov_y(v) + A(V(A_T(v)))

        acc = self.accumulate or torch.float64
        if self.solver == "dense":
            v, info = dense_solve(matvec, r, self.floor, accumulate=acc, return_info=True)
        elif self.solver == "gmres":  # no guard to count: it does not assume symmetry
            v, info = gmres(matvec, r, self.iterations, dot=self.dot, accumulate=acc), None
        else:
            v, info = cg(
                matvec,
                r,
                self.iterations,
                dot=self.dot,
                accumulate=self.accumulate,
                rtol=self.rtol,
                return_info=True,
            )
        if info is not None:
            self.nonpositive = self.nonpositive + info.nonpositive.sum()
        return (x_hat + s2 * vjp(A_T(v), retain=False)).detach()

    def __repr__(self) -> str:
        cov = self.covariance if isinstance(self.covariance, str) else repr(self.covariance)
        solver = "solver=dense"
        if self.solver != "dense":
            solver = f"solver={self.solver}, iterations={self.iterations}"
        return f"MMPS(A={self.A!r}, covariance={cov}, {solver})"


def _smallest_eigenvalue(cov_y: Tensor | DPLR, y: Tensor) -> Tensor:
    r"""The smallest eigenvalue of :math:`\Sigma_y`, per observation :math:`(B,)` or shared
    :math:`()` (a DPLR is small enough to decompose: `dense_solve` only takes small events)."""
    if isinstance(cov_y, DPLR):
        M = cov_y.to(torch.float64).dense()
        return torch.linalg.eigvalsh((M + M.mT) / 2)[..., 0].to(y.dtype)
    if cov_y.ndim == 0:
        return cov_y
    return cov_y.expand_as(y).flatten(1).amin(-1)
