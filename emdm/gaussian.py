r"""Gaussian priors from observations: PPCA and the Monte-Carlo EM of the initial prior.

Probabilistic PCA (protocols §1.9) fits :math:`\mathcal{N}(\mu, \Sigma)` with
:math:`\Sigma = \sigma^2 I + U U^T` to samples :math:`X \in \mathbb{R}^{N \times D}`: with
:math:`\lambda_1 \geq \dots \geq \lambda_r` and :math:`q_1, \dots, q_r` the top eigenpairs of
the sample covariance :math:`C`,

.. math:: \sigma^2 = \frac{\operatorname{tr} C - \sum_{i \leq r} \lambda_i}{D - r}, \quad
    U = Q \, \mathrm{diag}\big(\sqrt{\max(\lambda_i - \sigma^2, 0)}\big),

the maximum-likelihood solution of Tipping & Bishop. When :math:`N < D`, the eigenpairs come
from the :math:`N \times N` Gram matrix :math:`\tilde{X} \tilde{X}^T / N` and
:math:`q_i \propto \tilde{X}^T v_i`.

The initial prior :math:`q_0` of the paper is fitted by Monte-Carlo EM from observations only:
starting from :math:`\mathcal{N}(0, I)`, each iteration draws one posterior sample per
observation with the exact Gaussian denoiser inside MMPS (E-step), then refits by PPCA
(M-step).

References:
    | Probabilistic Principal Component Analysis (Tipping & Bishop, 1999)
    | https://doi.org/10.1111/1467-9868.00196
    | Learning Diffusion Priors from Observations by Expectation Maximization
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = ["fit_gaussian", "ppca"]

import torch
from torch import Tensor

from .denoisers import GaussianDenoiser
from .dplr import DPLR
from .em import EMConfig, e_step
from .operators import DenseOperator
from .progress import bar
from .schedule import Schedule, VESchedule


def ppca(X: Tensor, rank: int) -> tuple[Tensor, DPLR]:
    r"""Fits :math:`\mathcal{N}(\mu, \sigma^2 I + U U^T)` to samples by PPCA.

    Arguments:
        X: The samples, with shape :math:`(N, *)`, flattened to :math:`(N, D)`.
        rank: The rank :math:`r` of :math:`U`, between 1 and :math:`D`.

    Returns:
        The mean :math:`\mu`, with shape :math:`(D,)`, and :math:`\Sigma` as a DPLR. At
        :math:`r = D` the isotropic part is :math:`10^{-6}`, as in the paper's code.
    """
    X = X.flatten(1)
    N, D = X.shape
    if not 1 <= rank <= D:
        raise ValueError(f"rank must be between 1 and D = {D}, got {rank}")
    if N < 2:
        raise ValueError(f"PPCA needs at least 2 samples, got {N}")
    mu = X.mean(dim=0)
    Xc = X - mu
    gram = N < D
    C = Xc @ Xc.T / N if gram else Xc.T @ Xc / N  # (min(N, D), min(N, D))
    L, Q = torch.linalg.eigh(C)
    L, Q = L.flip(-1)[:rank], Q.flip(-1)[:, :rank]  # top r, descending
    if gram:
        Q = Xc.T @ Q
        Q = Q / torch.linalg.vector_norm(Q, dim=0).clamp_min(torch.finfo(Q.dtype).tiny)
    total = C.diagonal().sum()
    iso = (total - L.sum()) / (D - rank) if rank < D else torch.tensor(1e-6, dtype=X.dtype)
    iso = iso.clamp_min(1e-6)
    U = Q * (L - iso).clamp_min(0).sqrt()
    return mu, DPLR(torch.full((D,), float(iso), dtype=X.dtype, device=X.device), U)


def fit_gaussian(
    A,
    y: Tensor,
    cov_y: float | Tensor,
    rank: int,
    iterations: int = 16,
    *,
    shape: tuple[int, ...] | None = None,
    schedule: Schedule | None = None,
    sampler: str = "ddim",
    steps: int = 256,
    cg_iterations: int = 1,
    batch_size: int = 4096,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[Tensor, DPLR]:
    r"""Fits a Gaussian prior :math:`\mathcal{N}(\mu, \Sigma)` to observations
    :math:`y_i = A_i x_i + \varepsilon_i` by Monte-Carlo EM (protocols §1.9).

    Arguments:
        A: The per-observation matrices, with shape :math:`(N, M, D)`, or an operator of all
            observations indexable by sample (e.g. a per-sample :class:`emdm.MaskOperator`).
        y: The observations, with shape :math:`(N, M)` or :math:`(N, *)` for an operator.
        cov_y: The noise covariance: a float or a diagonal broadcastable to `y`.
        rank: The PPCA rank.
        iterations: The number of EM iterations (16 in the paper).
        shape: The event shape of :math:`x` (e.g. :math:`(C, H, W)`), needed with an operator.
        schedule: The noise schedule of the E-step's sampler. Defaults to :class:`VESchedule`.
        sampler: The E-step's sampler (the paper's experiments use DDIM with 256 steps).
        steps: The sampler's steps.
        cg_iterations: MMPS's CG iterations (`M` solves an :math:`M \times M` system exactly).
        batch_size: How many observations to sample at once.
        generator: The generator of the samplers' noise.
        progress: Whether to show a progress bar over EM iterations.

    Returns:
        The mean, with the event shape (:math:`(D,)` for matrices), and the covariance, a
        DPLR of size :math:`D`.
    """
    if isinstance(A, Tensor):
        if A.ndim != 3 or y.shape != A.shape[:2]:
            raise ValueError(
                f"expected A (N, M, D) and y (N, M), got {tuple(A.shape)}, {tuple(y.shape)}"
            )
        shape, A = (A.shape[-1],), DenseOperator(A)
    elif shape is None:
        raise ValueError("fit_gaussian needs the event shape of x (shape=...) with an operator")
    schedule = VESchedule() if schedule is None else schedule
    cfg = EMConfig(
        sampler=sampler, steps=steps, cg_iterations=cg_iterations, sample_batch=batch_size
    )
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    mu = torch.zeros(shape, dtype=y.dtype, device=y.device)
    cov = DPLR(torch.ones(mu.numel(), dtype=y.dtype, device=y.device))
    for _ in bar(range(iterations), progress, desc="fit_gaussian"):
        prior = GaussianDenoiser(mu, cov)
        x, _ = e_step(prior, A, y, cov_y, cfg, schedule, mu, generator, covariance=cov)
        mu, cov = ppca(x, rank)
        mu = mu.reshape(shape)
    return mu, cov
