r"""emdm: learning diffusion priors from observations by expectation maximization.

A PyTorch implementation of Rozet et al. (2024), https://arxiv.org/abs/2405.13712.

The paper's algorithm (Algorithm 1) from observations :math:`y_i = A_i x_i + \varepsilon_i`:

* :class:`Observation` holds :math:`(A, y, \Sigma_y)`, checked once;
* :func:`gaussian_start` fits the Gaussian :math:`q_0` by Monte-Carlo EM and draws lap 0;
* :func:`e_step` draws one posterior sample per observation with :class:`MMPS`;
* :func:`m_step` trains the denoiser on them; :func:`run_em` alternates the two;
* :func:`learn_prior` does it all in a run folder that resumes, and :func:`load_prior` reads
  any lap's prior back.

The building blocks: schedules, denoisers, operators, Σ_y's covariances, the posterior
denoisers of :mod:`emdm.guidance` and the samplers. `docs/architecture.md` shows how they layer.
"""

from .covariance import Covariance, Diagonal, Isotropic, LowRank
from .denoisers import EDMDenoiser, GaussianDenoiser, GaussianMixture, MixtureDenoiser
from .dplr import DPLR
from .em import EMConfig, e_step, m_step, run_em
from .gaussian import GaussianStart, fit_gaussian, gaussian_start
from .guidance import DPS, MMPS, PGDM, TMPD, DiffPIR
from .loss import denoiser_loss
from .observation import Observation
from .operators import DenseOperator, Identity, LinearOperator, MaskOperator, MRIOperator
from .prior import MLPConfig, UNetConfig, learn_prior, load_prior
from .samplers import DDIM, DDPM, VPDDIM, PredictorCorrector, sample
from .schedule import Schedule, VESchedule, VPSchedule
from .solvers import cg

__all__ = [
    "DDIM",
    "DDPM",
    "DPLR",
    "DPS",
    "MMPS",
    "PGDM",
    "TMPD",
    "VPDDIM",
    "Covariance",
    "DenseOperator",
    "Diagonal",
    "DiffPIR",
    "EDMDenoiser",
    "EMConfig",
    "GaussianDenoiser",
    "GaussianMixture",
    "GaussianStart",
    "Identity",
    "Isotropic",
    "LinearOperator",
    "LowRank",
    "MLPConfig",
    "MRIOperator",
    "MaskOperator",
    "MixtureDenoiser",
    "Observation",
    "PredictorCorrector",
    "Schedule",
    "UNetConfig",
    "VESchedule",
    "VPSchedule",
    "cg",
    "denoiser_loss",
    "e_step",
    "fit_gaussian",
    "gaussian_start",
    "learn_prior",
    "load_prior",
    "m_step",
    "run_em",
    "sample",
]

__version__ = "0.1.0"
