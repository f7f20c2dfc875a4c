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

The initial prior :math:`q_0` of the paper is fitted by Monte-Carlo EM from observations only
(:func:`fit_gaussian`): starting from :math:`\mathcal{N}(0, I)`, each iteration draws one
posterior sample per observation with the exact Gaussian denoiser inside MMPS (E-step), then
refits by PPCA (M-step). :func:`gaussian_start` is lap 0 of the paper's EM: that fit on the
first observations, then one sample of :math:`q_0(x \mid y_i)` per observation.

References:
    | Probabilistic Principal Component Analysis (Tipping & Bishop, 1999)
    | https://doi.org/10.1111/1467-9868.00196
    | Learning Diffusion Priors from Observations by Expectation Maximization
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = ["GaussianStart", "fit_gaussian", "gaussian_start", "ppca"]

import dataclasses

import torch
from torch import Tensor

from .config import POSITIVE, Checked, at_least, option
from .denoisers import GaussianDenoiser
from .distributed import Context
from .dplr import DPLR
from .em import EMConfig, _check_observation, e_step
from .observation import Observation
from .operators import LinearOperator
from .progress import bar
from .samplers import samplers_for
from .schedule import Schedule, VESchedule


@dataclasses.dataclass
class GaussianStart(Checked):
    r"""The fit of :math:`q_0` (:func:`gaussian_start`); the paper's CIFAR values in the help
    (MRI: 4096 observations, CG 5; the manifold: rank 5, CG 2, every observation)."""

    rank: int = option(64, "rank of the covariance's low-rank part (paper: 64)", check=POSITIVE)
    iterations: int = option(
        16, "Monte-Carlo EM iterations of the fit (paper: 16)", check=POSITIVE
    )
    observations: int = option(
        16384, "the first observations the fit uses (paper: 16 384)", check=at_least(2)
    )  # PPCA needs two samples
    # the fit's E-step starts at x_1 = mean + sigma(1) z in VE coordinates
    sampler: str = option(
        "ddim", "sampler of the fit's E-steps (paper: ddim)", choices=samplers_for(VESchedule)
    )
    steps: int = option(256, "sampler steps of the fit (paper: 256)", check=POSITIVE)
    cg_iterations: int = option(
        32,
        "CG iterations of the fit only (paper: until converged, rtol 1e-3; MRI: 5)",
        check=POSITIVE,
    )


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
    obs: Observation,
    rank: int,
    *,
    shape: tuple[int, ...],
    iterations: int = 16,
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
        obs: The observations :math:`(A, y, \Sigma_y)`, e.g. `Observation(DenseOperator(A), y,
            cov_y)` with per-observation matrices :math:`A` of shape :math:`(N, M, D)`. The fit
            runs on the device of `obs`.
        rank: The PPCA rank.
        shape: The event shape of :math:`x`, e.g. :math:`(D,)` or :math:`(C, H, W)`.
        iterations: The number of EM iterations (16 in the paper).
        schedule: The noise schedule of the E-step's sampler. Defaults to :class:`VESchedule`.
        sampler: The E-step's sampler (the paper's experiments use DDIM with 256 steps).
        steps: The sampler's steps.
        cg_iterations: MMPS's CG iterations (`M` solves an :math:`M \times M` system exactly).
        batch_size: How many observations to sample at once.
        generator: The generator of the samplers' noise.
        progress: Whether to show a progress bar over EM iterations.

    Returns:
        The mean, with shape `shape`, and the covariance, a DPLR of size
        :math:`D = \prod` `shape`.
    """
    _check_observation(obs)
    shape = tuple(shape)
    if isinstance(obs.A, LinearOperator):
        event = tuple(obs.A.in_shape_of(tuple(obs.y.shape))[1:])
        if event != shape:
            raise ValueError(f"the operator maps x of event shape {event}, got shape={shape}")
    schedule = VESchedule() if schedule is None else schedule
    cfg = EMConfig(
        sampler=sampler, steps=steps, cg_iterations=cg_iterations, sample_batch=batch_size
    )
    generator = torch.Generator(obs.device).manual_seed(0) if generator is None else generator
    mu = torch.zeros(shape, dtype=obs.dtype, device=obs.device)
    cov = DPLR(torch.ones(mu.numel(), dtype=obs.dtype, device=obs.device))
    for _ in bar(range(iterations), progress, desc="fit_gaussian"):
        prior = GaussianDenoiser(mu, cov)
        x, _ = e_step(prior, obs, cfg, schedule, mean=mu, generator=generator, covariance=cov)
        mu, cov = ppca(x, rank)
        mu = mu.reshape(shape)
    return mu, cov


def gaussian_start(
    obs: Observation,
    shape: tuple[int, ...],
    start: GaussianStart,
    cfg: EMConfig,
    schedule: Schedule,
    *,
    generator: torch.Generator,
    ctx: Context | None = None,
    progress: bool = False,
) -> tuple[Tensor, DPLR, Tensor]:
    r"""Lap 0 of the paper: fits :math:`q_0 = \mathcal{N}(\mu_0, \Sigma_0)` to the first
    `start.observations` observations (:func:`fit_gaussian`), then draws one posterior sample
    per observation under it, with MMPS and the exact covariance
    :math:`V_t = (\Sigma_0^{-1} + \sigma_t^{-2} I)^{-1}` (the laps' sampler and solver).

    Arguments:
        obs: All observations :math:`(A, y, \Sigma_y)`, :math:`y` with shape :math:`(N, *)`.
        shape: The event shape of :math:`x`.
        start: The fit's settings.
        cfg: The laps' settings, which lap 0's E-step uses.
        schedule: The noise schedule.
        generator: The generator of every draw, on the device where they run; every rank of a
            multi-process run seeds it alike and fits the same :math:`q_0`.
        ctx: The processes that share lap 0's E-step.
        progress: Whether to show progress bars.

    Returns:
        The mean :math:`\mu_0` with shape `shape`, the covariance :math:`\Sigma_0` and the
        samples :math:`(N, *)` on the device of `obs`.
    """
    _check_observation(obs)
    head = obs[: min(start.observations, len(obs))].to(generator.device)
    mean, cov = fit_gaussian(
        head,
        start.rank,
        shape=shape,
        iterations=start.iterations,
        schedule=schedule,
        sampler=start.sampler,
        steps=start.steps,
        cg_iterations=start.cg_iterations,
        batch_size=cfg.sample_batch,
        generator=generator,
        progress=progress,
    )
    samples, _ = e_step(
        GaussianDenoiser(mean, cov),
        obs,
        cfg,
        schedule,
        mean=mean,
        generator=generator,
        covariance=cov,
        iteration=0,
        ctx=ctx,
        progress=progress,
    )
    return mean, cov, samples
