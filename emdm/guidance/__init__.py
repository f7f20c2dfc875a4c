r"""Guidance: posterior sampling with a prior denoiser and linear-Gaussian observations.

Each method lives in its own module and is, in the taxonomy of azula, either a *posterior
denoiser*, :math:`(x_t, \sigma_t) \mapsto \mathbb{E}[x \mid x_t, y]` taken by a linearized
Gaussian step, which every sampler uses unchanged (:class:`MMPS`, :class:`TMPD`,
:class:`DiffPIR`), or what its paper states and the benchmark runs on :class:`emdm.VPDDIM`: a
gradient step on :math:`x_t` (:class:`DPS`) or a guidance term added to the score
(:class:`PGDM`). All share one linearization of the prior denoiser
(:meth:`PosteriorDenoiser.linearize`) and one noise covariance algebra
(:class:`emdm.covariance.Covariance`). The baselines are also split denoisers
(:class:`emdm.denoisers.SplitDenoiser`): VPDDIM weighs their correction as the benchmark does.

:data:`BASELINES` names the posterior-sampling baselines of the paper's Appendix E.
"""

from .base import Guidance, Linearization, PosteriorDenoiser, SolvedGuidance, positive_sigma
from .covariances import (
    COVARIANCES,
    GaussianPrior,
    IdentityPrior,
    PriorCovariance,
    SigmaT,
    Tweedie,
    Zero,
    prior_covariance,
)
from .diffpir import DiffPIR
from .dps import DPS
from .mmps import MMPS, SOLVERS
from .pgdm import PGDM
from .tmpd import TMPD

#: The posterior-sampling baselines of the paper's Appendix E, by name.
BASELINES: dict[str, type[Guidance]] = {"dps": DPS, "pgdm": PGDM, "tmpd": TMPD, "diffpir": DiffPIR}

__all__ = [
    "BASELINES",
    "COVARIANCES",
    "DPS",
    "MMPS",
    "PGDM",
    "SOLVERS",
    "TMPD",
    "DiffPIR",
    "GaussianPrior",
    "Guidance",
    "IdentityPrior",
    "Linearization",
    "PosteriorDenoiser",
    "PriorCovariance",
    "SigmaT",
    "SolvedGuidance",
    "Tweedie",
    "Zero",
    "positive_sigma",
    "prior_covariance",
]
