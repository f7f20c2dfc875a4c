r"""Moment matching posterior sampling (MMPS): a posterior denoiser.

For a prior denoiser :math:`\hat{x} = d(x_t, \sigma_t) \approx \mathbb{E}[x \mid x_t]` and a
linear-Gaussian observation :math:`y = A x + \varepsilon`,
:math:`\varepsilon \sim \mathcal{N}(0, \Sigma_y)`, MMPS approximates :math:`p(x \mid x_t)` by
:math:`\mathcal{N}(\hat{x}, V_t)`, a linearized Gaussian step, and returns

.. math:: \mathbb{E}[x \mid x_t, y] \approx \hat{x} + \sigma_t^2 J^T A^T
    (\Sigma_y + A V_t A^T)^{-1} (y - A \hat{x}),
    \quad J = \frac{\partial \hat{x}}{\partial x_t}

(Algorithm 3 of the paper; protocols §1.7), with the linear system solved by a few conjugate
gradient iterations. The covariance :math:`V_t \approx \mathbb{V}[x \mid x_t]` is one of
:mod:`emdm.guidance.covariances`: :math:`\sigma_t^2 J^T` (`"tweedie"`, exact by Tweedie's
formula when :math:`d` is exact, one vector-Jacobian product per CG iteration), a heuristic
(`"zero"`, `"sigma_t"`, `"identity"`), or the posterior covariance
:math:`(\Sigma_x^{-1} + \sigma_t^{-2} I)^{-1}` of a Gaussian prior with a :class:`DPLR`
:math:`\Sigma_x`.

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

__all__ = ["MMPS", "SOLVERS"]


import torch
from torch import Tensor

from ..dplr import DPLR
from ..profiling import OPERATOR, SOLVE, region
from ..solvers import DENSE_MAX, DOTS, cg, dense_solve, gmres
from .base import Denoiser, NoiseCovariance, Operator, PosteriorDenoiser, check_positive
from .covariances import PriorCovariance, prior_covariance

SOLVERS = ("cg", "dense", "gmres")


class MMPS(PosteriorDenoiser):
    r"""Creates an MMPS posterior denoiser :math:`(x_t, \sigma_t) \mapsto
    \mathbb{E}[x \mid x_t, y]`, usable by every sampler.

    Arguments:
        denoiser: The prior denoiser :math:`d(x_t, \sigma)`, differentiable w.r.t. `x_t`.
        A: The linear observation operator, a callable on :math:`(B, *)` tensors; its `.T`
            is the adjoint, or autograd provides it.
        y: The observations, with shape :math:`(B, *)`, finite; their dtype is the one the
            sampler's :math:`x_t` must have.
        cov_y: The noise covariance :math:`\Sigma_y`: a positive float, a positive diagonal
            tensor broadcastable to `y`, a :class:`DPLR` on the flattened `y`, or a
            :class:`emdm.covariance.Covariance`, finite (see :class:`PosteriorDenoiser`).
        covariance: The covariance :math:`V_t`: one of `"tweedie"`, `"zero"`, `"sigma_t"`,
            `"identity"`, a :class:`DPLR` prior covariance :math:`\Sigma_x`, or a
            :class:`emdm.guidance.PriorCovariance`.
        iterations: The number of CG iterations, at least 1 (unused by `solver="dense"`).
        dot: CG inner products per `"sample"` (default) or over the whole `"batch"`, as the
            paper's code does.
        accumulate: The dtype of CG inner products (e.g. `torch.float64`).
        rtol: The CG relative residual tolerance (the paper's code uses 1e-3).
        check: Whether to check each call's :math:`\sigma > 0` (one host sync per call);
            skipped inside :func:`emdm.guidance.base.positive_sigma`, where samplers call
            it.
        solver: `"cg"`; `"gmres"` (float64 unless `accumulate` says otherwise, no symmetry
            assumed; the posterior-sampling benchmark's solver, with `iterations` Arnoldi
            iterations); or `"dense"`: the exact solve of the symmetrized system with its
            eigenvalues below :math:`\Sigma_y`'s reflected (observations of at most
            :data:`emdm.solvers.DENSE_MAX` elements; costs one VJP per element).

    Attributes:
        nonpositive: How many times, over all calls so far, the solver's guard fired: CG met
            a direction of non-positive curvature (an untrained network's :math:`J` need not
            be positive semi-definite) and kept the last finite iterate, or the dense solve
            reflected an eigenvalue below its floor; a tensor, updated in place (so that a
            CUDA graph of a call, :class:`emdm.graphs.CapturedDenoiser`, keeps counting) and
            read without forcing a synchronization until you print it.

    Note:
        On the CPU, with a small network, the cost beyond the floor (one forward, `iterations`
        + 1 VJPs) is the operator and the number of small tensor operations, not their
        arithmetic: each VJP evicts :math:`A` and the dispatcher's state from the caches, so
        an application of a per-sample dense :math:`A` (a 1 MB matrix at
        :math:`B = 256, M = 16, D = 64`) costs 2-4x its isolated time, and every small
        operation 20-40 us (`python -m bench.profile mmps` shows it). Fusing the isotropic
        :math:`\Sigma_y v` into one scaled add gained nothing measurable and changed the
        samples by float rounding, so the product stays :math:`\Sigma_y v + A V_t A^T v`.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        A: Operator,
        y: Tensor,
        cov_y: NoiseCovariance,
        covariance: "str | DPLR | PriorCovariance" = "tweedie",
        iterations: int = 1,
        *,
        dot: str = "sample",
        accumulate: torch.dtype | None = None,
        rtol: float = 0.0,
        check: bool = True,
        solver: str = "cg",
    ):
        super().__init__(denoiser, A, y, cov_y)
        self.covariance = prior_covariance(covariance)
        check_positive("iterations", iterations, integer=True)
        if dot not in DOTS:
            raise ValueError(f"dot must be one of {DOTS}, got {dot!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        self.iterations, self.dot, self.accumulate, self.rtol = iterations, dot, accumulate, rtol
        self.check, self.solver = check, solver
        if solver == "dense":
            if y[0].numel() > DENSE_MAX:
                raise ValueError(
                    f'solver="dense" forms the system matrix with one VJP per observed '
                    f"element: y has {y[0].numel()} per sample, at most {DENSE_MAX} allowed; "
                    f'use solver="cg"'
                )
            self.floor = self.cov_y.smallest_eigenvalue()  # (B,) or ()
            if not bool(torch.all(self.floor > 0)):
                raise ValueError("cov_y must be positive definite: it has eigenvalues <= 0")
        self.nonpositive = torch.zeros((), dtype=torch.int64, device=y.device)
        # Σ_y = s I: s as a float, read once here (the observation was checked, synchronized)

    def check_x(self, x_t: Tensor) -> None:
        super().check_x(x_t)
        self.covariance.check(x_t)

    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor:  # see PosteriorDenoiser.__call__
        lin = self.linearize(x_t, sigma, check=self.check)
        A, A_T, cov_y = lin.A, lin.A_T, self.cov_y
        V = self.covariance.operator(lin.sigma, lin.vjp, lin.x_hat)

        def matvec(v: Tensor) -> Tensor:  # C v = Σ_y v + A V_t Aᵀ v
            if V is None:  # V_t = 0
                return cov_y @ v
            return cov_y @ v + A(V(A_T(v)))

        acc = self.accumulate or torch.float64
        with region(SOLVE):
            if self.solver == "dense":
                v, info = dense_solve(matvec, lin.r, self.floor, accumulate=acc, return_info=True)
            elif self.solver == "gmres":  # no guard to count: it does not assume symmetry
                v, info = gmres(matvec, lin.r, self.iterations, dot=self.dot, accumulate=acc), None
            else:
                v, info = cg(
                    matvec,
                    lin.r,
                    self.iterations,
                    dot=self.dot,
                    accumulate=self.accumulate,
                    rtol=self.rtol,
                    return_info=True,
                )
        if info is not None:  # in place: a captured call adds to the same tensor
            self.nonpositive.add_(info.nonpositive.sum())
        with region(OPERATOR):
            u = A_T(v)
        return (lin.x_hat + lin.s2 * lin.vjp(u, retain=False)).detach()

    def __repr__(self) -> str:
        solver = "solver=dense"
        if self.solver != "dense":
            solver = f"solver={self.solver}, iterations={self.iterations}"
        return f"MMPS(A={self.A!r}, covariance={self.covariance}, {solver})"
