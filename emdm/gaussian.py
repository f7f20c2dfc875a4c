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

For small events (:math:`D \leq` :data:`EXACT_MAX_FEATURES`, e.g. the manifold of Figure 3)
neither step needs a sampler: under :math:`\mathcal{N}(\mu, \Sigma)` and
:math:`y_i = A_i x_i + \varepsilon_i`, :math:`\varepsilon_i \sim \mathcal{N}(0, \Sigma_y)`, the
posterior is Gaussian (Bishop, 2006, §2.3.3), with :math:`C_i = \Sigma_y + A_i \Sigma A_i^T`,

.. math:: m_i = \mu + \Sigma A_i^T C_i^{-1} (y_i - A_i \mu), \quad
    \Sigma_i' = \Sigma - \Sigma A_i^T C_i^{-1} A_i \Sigma.

:func:`fit_gaussian_exact` runs EM with these (Dempster et al., 1977): the E-step is exact and the
M-step, :math:`\mu \gets \frac{1}{N} \sum_i m_i` and
:math:`\Sigma \gets \frac{1}{N} \sum_i [\Sigma_i' + (m_i - \mu)(m_i - \mu)^T]`, is projected to
the PPCA form of the configured rank by PPCA's eigen-truncation, which is the M-step of EM within
the PPCA family, so that the marginal likelihood
:math:`\sum_i \log \mathcal{N}(y_i \mid A_i \mu, C_i)` (:func:`marginal_log_likelihood`) never
decreases. :func:`exact_posterior_samples` draws :math:`m_i + L_i z`,
:math:`L_i L_i^T = \Sigma_i'`. Both materialize each :math:`A_i` (:math:`M \times D`, from the
operator's images of the standard basis) and :math:`\Sigma_y` and compute in float64.

References:
    | Probabilistic Principal Component Analysis (Tipping & Bishop, 1999)
    | https://doi.org/10.1111/1467-9868.00196
    | Maximum Likelihood from Incomplete Data via the EM Algorithm (Dempster, Laird & Rubin,
    | 1977) https://doi.org/10.1111/j.2517-6161.1977.tb01600.x
    | Pattern Recognition and Machine Learning (Bishop, 2006), §2.3.3
    | Learning Diffusion Priors from Observations by Expectation Maximization
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = [
    "EXACT_MAX_FEATURES",
    "GaussianStart",
    "exact_posterior_samples",
    "fit_gaussian",
    "fit_gaussian_exact",
    "gaussian_posterior",
    "gaussian_start",
    "marginal_log_likelihood",
    "ppca",
]

import dataclasses
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from .config import POSITIVE, Checked, at_least, option
from .denoisers import GaussianDenoiser
from .distributed import Context
from .dplr import DPLR
from .em import EMConfig, _check_observation, e_step
from .observation import Observation
from .operators import DenseOperator, LinearOperator
from .progress import bar
from .samplers import samplers_for
from .schedule import Schedule, VESchedule

#: The largest event size :math:`D` of the exact fit and draws, which hold :math:`D \times D`
#: covariances per observation and call the operator once per basis vector.
EXACT_MAX_FEATURES = 256

#: The float64 elements of one chunk's :math:`(B, D, D)` posterior covariances (128 MiB).
_CHUNK_ELEMENTS = 1 << 24


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
    fit: str = option(
        "sampled",
        "sampled: the paper's Monte-Carlo EM with the diffusion sampler (the paper's code); "
        f"exact: closed-form EM and exact posterior draws for lap 0, for small events "
        f"(D <= {EXACT_MAX_FEATURES}; sampler, steps and CG unused)",
        choices=("sampled", "exact"),
    )

    def __post_init__(self):
        super().__post_init__()
        if self.fit == "exact" and self.rank > EXACT_MAX_FEATURES:
            raise ValueError(
                f"rank must be at most D <= {EXACT_MAX_FEATURES} with fit='exact', got {self.rank}"
            )

    def check_fit(self, observations: int) -> None:
        r"""Raises a `ValueError` unless the sampled fit on the first `min(self.observations,
        observations)` of a run's `observations` has more samples than its rank (see
        :func:`ppca`); a config calls it where it knows its number of observations."""
        n = min(self.observations, observations)
        if self.fit == "sampled" and n <= self.rank:
            raise ValueError(
                f"the Gaussian fit of q_0 of rank {self.rank} needs more than {self.rank} "
                f"observations (N samples span N - 1 directions), got {n}: observe more or "
                f"lower start.rank"
            )


def _ppca_covariance(L: Tensor, Q: Tensor, total: Tensor, D: int) -> DPLR:
    r"""PPCA's :math:`\sigma^2 I + U U^T` from the top eigenpairs :math:`(L, Q)`, in
    descending order, of a covariance of trace `total` and size `D`."""
    rank = len(L)
    iso = (total - L.sum()) / (D - rank) if rank < D else torch.tensor(1e-6, dtype=Q.dtype)
    iso = iso.clamp_min(1e-6)
    U = Q * (L - iso).clamp_min(0).sqrt()
    return DPLR(torch.full((D,), float(iso), dtype=Q.dtype, device=Q.device), U)


def _check_samples(N: int, rank: int) -> None:
    if N <= rank:
        raise ValueError(
            f"a PPCA fit of rank {rank} needs more than {rank} samples (N samples span N - 1 "
            f"directions; the others would get the floor variance 1e-6), got {N}: use more "
            f"observations or a lower rank"
        )


def ppca(X: Tensor, rank: int) -> tuple[Tensor, DPLR]:
    r"""Fits :math:`\mathcal{N}(\mu, \sigma^2 I + U U^T)` to samples by PPCA.

    Arguments:
        X: The samples, with shape :math:`(N, *)`, flattened to :math:`(N, D)`.
        rank: The rank :math:`r` of :math:`U`, between 1 and :math:`D`, below the number of
            samples :math:`N`: :math:`N` samples span at most :math:`N - 1` directions about
            their mean, so a fit of rank :math:`r \geq N` would put the floor variance
            :math:`10^{-6}` on all the others and on :math:`r - N + 1` of its own.

    Returns:
        The mean :math:`\mu`, with shape :math:`(D,)`, and :math:`\Sigma` as a DPLR. At
        :math:`r = D` the isotropic part is :math:`10^{-6}`, as in the paper's code.
    """
    X = X.flatten(1)
    N, D = X.shape
    if not 1 <= rank <= D:
        raise ValueError(f"rank must be between 1 and D = {D}, got {rank}")
    _check_samples(N, rank)
    mu = X.mean(dim=0)
    Xc = X - mu
    gram = N < D
    C = Xc @ Xc.T / N if gram else Xc.T @ Xc / N  # (min(N, D), min(N, D))
    L, Q = torch.linalg.eigh(C)
    L, Q = L.flip(-1)[:rank], Q.flip(-1)[:, :rank]  # top r, descending
    if gram:
        Q = Xc.T @ Q
        Q = Q / torch.linalg.vector_norm(Q, dim=0).clamp_min(torch.finfo(Q.dtype).tiny)
    return mu, _ppca_covariance(L, Q, C.diagonal().sum(), D)


def _check_event(obs: Observation, shape: tuple[int, ...]) -> None:
    r"""Raises a `ValueError` unless `obs`'s operator maps :math:`x` of event shape `shape`."""
    if isinstance(obs.A, LinearOperator):
        event = tuple(obs.A.in_shape_of(tuple(obs.y.shape))[1:])
        if event != shape:
            raise ValueError(f"the operator maps x of event shape {event}, got shape={shape}")


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
        rank: The PPCA rank, below the number of observations.
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
    _check_event(obs, shape)
    _check_samples(len(obs), rank)  # before any work: each iteration ends with a PPCA fit
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


# -- the exact path, for small events ------------------------------------------------------------


def _check_exact(obs: Observation, shape: tuple[int, ...]) -> None:
    r"""Raises a `ValueError` unless the exact path applies to `obs` and events of `shape`:
    :math:`D \leq` :data:`EXACT_MAX_FEATURES` and a :class:`LinearOperator` that maps them."""
    _check_observation(obs)
    D = math.prod(shape)
    if D > EXACT_MAX_FEATURES:
        raise ValueError(
            f"the exact Gaussian fit holds D x D covariances per observation: D = {D} (shape "
            f"{shape}) exceeds its limit of {EXACT_MAX_FEATURES}; use fit='sampled'"
        )
    if not isinstance(obs.A, LinearOperator):
        raise ValueError(
            f"the exact Gaussian fit materializes A from an emdm LinearOperator, got a "
            f"{type(obs.A).__name__}"
        )
    _check_event(obs, shape)


def _matrices(obs: Observation, shape: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    r"""The observations as float64 matrices: :math:`A_i` :math:`(B, M, D)` (a view of a
    shared matrix), :math:`\Sigma_{y,i}` :math:`(B, M, M)` and :math:`y_i` :math:`(B, M)`,
    with :math:`A_i` and :math:`\Sigma_{y,i}` read off their images of the standard basis.
    Raises a `ValueError` if the operator's images of a random probe are not those of the
    matrix, i.e. if it is not linear."""
    A, y, cov_y = obs.to(dtype=torch.float64)
    B, D, out = len(y), math.prod(shape), tuple(y.shape[1:])
    M = math.prod(out)

    def columns(f, n: int, event: tuple[int, ...]) -> Tensor:
        basis = torch.eye(n, dtype=torch.float64, device=y.device)
        return torch.stack([f(e.expand(B, n).reshape(B, *event)).reshape(B, -1) for e in basis],
                           dim=-1)  # fmt: skip

    if isinstance(A, DenseOperator):
        matrix = A.matrix.expand(B, M, D)
    else:
        matrix = columns(A, D, shape)  # (B, M, D)
        g = torch.Generator().manual_seed(0)
        probe = torch.randn((B, D), generator=g, dtype=torch.float64).to(y.device)
        image = A(probe.reshape(B, *shape)).reshape(B, M)
        expected = (matrix @ probe[..., None])[..., 0]
        error = (image - expected).norm() / expected.norm().clamp_min(1e-300)
        if not error <= 1e-8:
            raise ValueError(
                f"A is not linear: its image of a random x differs from A's matrix (its images "
                f"of the basis vectors) times x by {float(error):.3g} (relative)"
            )
    return matrix, columns(lambda v: cov_y @ v, M, out), y.reshape(B, M)


def _posteriors(
    obs: Observation, mean: Tensor, cov: Tensor, shape: tuple[int, ...]
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    r"""The posteriors of :math:`\mathcal{N}(\mu, \Sigma)` (float64 :math:`(D,)` and
    :math:`(D, D)`), chunk by chunk, each chunk of `obs` moved to the device of :math:`\mu`:
    :math:`m_i` :math:`(B, D)`, :math:`\Sigma_i'` :math:`(B, D, D)` and
    :math:`\log \mathcal{N}(y_i \mid A_i \mu, C_i)` :math:`(B,)`."""
    D = math.prod(shape)
    chunk = max(1, _CHUNK_ELEMENTS // (D * D))
    for i in range(0, len(obs), chunk):
        A, cov_y, y = _matrices(obs[i : i + chunk].to(mean.device), shape)
        SA = cov @ A.mT  # (B, D, M): Σ Aᵀ
        C = cov_y + A @ SA  # (B, M, M)
        L = torch.linalg.cholesky((C + C.mT) / 2)
        W = torch.linalg.solve_triangular(L, SA.mT, upper=False)  # (B, M, D): L⁻¹ A Σ
        u = torch.linalg.solve_triangular(L, (y - A @ mean)[..., None], upper=False)  # (B, M, 1)
        m = mean + (W.mT @ u)[..., 0]  # μ + Σ Aᵀ C⁻¹ (y - A μ)
        S = cov - W.mT @ W  # Σ - Σ Aᵀ C⁻¹ A Σ
        M = y.shape[-1]
        logdet = 2 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        logp = -0.5 * (u.square().sum((-2, -1)) + logdet + M * math.log(2 * math.pi))
        yield m, (S + S.mT) / 2, logp


def _float64(mean: Tensor, cov: DPLR, device) -> tuple[Tensor, Tensor]:
    mean = mean.to(device=device, dtype=torch.float64).flatten()
    return mean, cov.to(device=device, dtype=torch.float64).dense()


def gaussian_posterior(obs: Observation, mean: Tensor, cov: DPLR) -> tuple[Tensor, Tensor]:
    r"""The exact posteriors :math:`\mathcal{N}(m_i, \Sigma_i')` of the prior
    :math:`\mathcal{N}(\mu, \Sigma)` given each observation :math:`y_i`, in float64.

    Arguments:
        obs: The observations :math:`(A, y, \Sigma_y)`, :math:`y` with shape :math:`(N, *)`,
            :math:`A` a :class:`LinearOperator` on events of :math:`D \leq`
            :data:`EXACT_MAX_FEATURES` elements.
        mean: The prior mean :math:`\mu`, with the event shape of :math:`x`.
        cov: The prior covariance :math:`\Sigma`, a DPLR of size :math:`D`.

    Returns:
        The means :math:`m_i` with shape :math:`(N, *)` and the covariances :math:`\Sigma_i'`
        with shape :math:`(N, D, D)`, on the device of `obs`.
    """
    shape = tuple(mean.shape)
    _check_exact(obs, shape)
    mu, Sigma = _float64(mean, cov, obs.device)
    m, S, _ = zip(*_posteriors(obs, mu, Sigma, shape), strict=True)
    return torch.cat(m).reshape(len(obs), *shape), torch.cat(S)


def marginal_log_likelihood(obs: Observation, mean: Tensor, cov: DPLR) -> Tensor:
    r"""The log-likelihood of the observations under the prior :math:`\mathcal{N}(\mu, \Sigma)`,
    :math:`\sum_i \log \mathcal{N}(y_i \mid A_i \mu, \Sigma_y + A_i \Sigma A_i^T)`, in float64;
    the arguments as for :func:`gaussian_posterior`."""
    shape = tuple(mean.shape)
    _check_exact(obs, shape)
    mu, Sigma = _float64(mean, cov, obs.device)
    return sum(logp.sum() for _, _, logp in _posteriors(obs, mu, Sigma, shape))


def fit_gaussian_exact(
    obs: Observation,
    rank: int,
    *,
    shape: tuple[int, ...],
    iterations: int = 16,
    progress: bool = False,
) -> tuple[Tensor, DPLR]:
    r"""Fits a Gaussian prior :math:`\mathcal{N}(\mu, \Sigma)` to observations
    :math:`y_i = A_i x_i + \varepsilon_i` by exact EM, from :math:`\mathcal{N}(0, I)` as
    :func:`fit_gaussian`: each iteration computes every posterior
    :math:`\mathcal{N}(m_i, \Sigma_i')`, sets :math:`\mu = \frac{1}{N} \sum_i m_i` and
    :math:`\Sigma = \frac{1}{N} \sum_i [\Sigma_i' + (m_i - \mu)(m_i - \mu)^T]`, then projects
    :math:`\Sigma` to :math:`\sigma^2 I + U U^T` of rank `rank` as :func:`ppca` does. The
    marginal likelihood (:func:`marginal_log_likelihood`) never decreases.

    Arguments:
        obs: The observations :math:`(A, y, \Sigma_y)`: :math:`A` a :class:`LinearOperator`
            (e.g. a :class:`DenseOperator` of :math:`(N, M, D)` or :math:`(M, D)` matrices) on
            events of :math:`D \leq` :data:`EXACT_MAX_FEATURES` elements, :math:`\Sigma_y` any
            :class:`emdm.covariance.Covariance`. The fit runs on the device of `obs`, in
            float64.
        rank: The PPCA rank, between 1 and :math:`D` (:math:`D`: the full covariance, with
            eigenvalues floored at :math:`10^{-6}`).
        shape: The event shape of :math:`x`.
        iterations: The number of EM iterations.
        progress: Whether to show a progress bar over EM iterations.

    Returns:
        The mean, with shape `shape`, and the covariance, a DPLR of size :math:`D`, in the
        dtype of `obs`.
    """
    shape = tuple(shape)
    _check_exact(obs, shape)
    D, N = math.prod(shape), len(obs)
    if not 1 <= rank <= D:
        raise ValueError(f"rank must be between 1 and D = {D}, got {rank}")
    mu = torch.zeros(D, dtype=torch.float64, device=obs.device)
    cov = DPLR(torch.ones(D, dtype=torch.float64, device=obs.device))
    for _ in bar(range(iterations), progress, desc="fit_gaussian_exact"):
        Sigma = cov.dense()
        shift, second = torch.zeros_like(mu), torch.zeros_like(Sigma)
        for m, S, _ in _posteriors(obs, mu, Sigma, shape):
            d = m - mu  # about the current mean: no cancellation in the second moment
            shift, second = shift + d.sum(0), second + S.sum(0) + d.T @ d
        shift, second = shift / N, second / N
        Sigma = second - torch.outer(shift, shift)  # about the new mean μ + shift
        L, Q = torch.linalg.eigh((Sigma + Sigma.T) / 2)
        L, Q = L.flip(-1)[:rank], Q.flip(-1)[:, :rank]  # top r, descending
        mu, cov = mu + shift, _ppca_covariance(L, Q, Sigma.diagonal().sum(), D)
    return mu.reshape(shape).to(obs.dtype), cov.to(obs.dtype)


def exact_posterior_samples(
    obs: Observation, mean: Tensor, cov: DPLR, *, generator: torch.Generator
) -> Tensor:
    r"""Draws one exact sample of :math:`\mathcal{N}(m_i, \Sigma_i')`, the posterior of the
    prior :math:`\mathcal{N}(\mu, \Sigma)` given :math:`y_i`, per observation:
    :math:`x_i = m_i + L_i z_i` with :math:`L_i L_i^T = \Sigma_i'` and
    :math:`z \sim \mathcal{N}(0, I)` drawn at once, :math:`(N, D)` in float64, so that the
    samples do not depend on how the observations are chunked.

    Arguments:
        obs: The observations, as for :func:`gaussian_posterior`, on any device.
        mean: The prior mean :math:`\mu`, with the event shape of :math:`x`.
        cov: The prior covariance :math:`\Sigma`, a DPLR.
        generator: The generator of :math:`z`; the draws run on its device.

    Returns:
        The samples, with shape :math:`(N, *)`, in the dtype and on the device of `obs`.
    """
    shape = tuple(mean.shape)
    _check_exact(obs, shape)
    device = generator.device
    mu, Sigma = _float64(mean, cov, device)
    z = torch.randn((len(obs), mu.numel()), generator=generator, dtype=torch.float64,
                    device=device)  # fmt: skip
    out, i = [], 0
    for m, S, _ in _posteriors(obs, mu, Sigma, shape):
        L = torch.linalg.cholesky(S)
        out.append(m + (L @ z[i : i + len(m), :, None])[..., 0])
        i += len(m)
    return torch.cat(out).reshape(len(obs), *shape).to(device=obs.device, dtype=obs.dtype)


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
    `start.observations` observations, then draws one posterior sample per observation under
    it. With `start.fit = "sampled"` (the paper's), the fit is :func:`fit_gaussian` and the
    draws use MMPS with the exact covariance
    :math:`V_t = (\Sigma_0^{-1} + \sigma_t^{-2} I)^{-1}` (the laps' sampler and solver); with
    `"exact"`, the fit is :func:`fit_gaussian_exact` and the draws
    :func:`exact_posterior_samples` (every process draws them all, alike).

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
    start.check_fit(len(obs))  # before any work
    if start.fit == "exact":
        shape = tuple(shape)
        _check_exact(obs, shape)  # before any work
        head = obs[: min(start.observations, len(obs))].to(generator.device)
        mean, cov = fit_gaussian_exact(
            head, start.rank, shape=shape, iterations=start.iterations, progress=progress
        )
        return mean, cov, exact_posterior_samples(obs, mean, cov, generator=generator)
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
