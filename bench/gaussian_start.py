r"""The Gaussian start of Figure 3, sampled and exact: what the closed-form fit changes in q_0.

Lap 0 of the manifold experiment (`reproduce/fig3.py --quick`) fits
:math:`q_0 = \mathcal{N}(\mu_0, \Sigma_0)` to the observations and draws one sample of
:math:`q_0(x \mid y_i)` per observation (:func:`emdm.gaussian.gaussian_start`). The paper's fit is
Monte-Carlo EM with a diffusion sampler (`fit="sampled"`); in :math:`\mathbb{R}^5` the E-step is
closed-form (`fit="exact"`: exact EM and exact posterior draws). On Figure 3's quick data (the
same curve, seed, 8192 observations, schedule, generator and settings as its `learn_prior`
call), this runs both and records for each: the wall time of lap 0 (fit and draws), the
debiased exact-OT score of lap 0's samples against the truth (as Figure 3 logs at
:math:`k = 0`), the marginal log-likelihood of the observations under :math:`q_0` per
observation (what EM maximizes), the fitted mean and the covariance's eigenvalues; then the
distance between the two fits and the score of an independent truth sample (the noise floor).
Two more rows put them in context: the exact fit run to convergence (`--converged` iterations:
EM from :math:`\mathcal{N}(0, I)` converges slowly when 3 of 5 dimensions are unobserved), and
the best :math:`q_0` of its form, PPCA on the hidden :math:`x`, with exact draws.

    python -m bench.gaussian_start     # writes results/bench/gaussian_start_cpu.{csv,json}

Minutes on 2 CPU cores, nearly all of it the sampled fit (8 x 8192 posterior draws of 64 DDIM
steps). Timings taken while other processes share the cores are indicative only: each result
records the load.
"""

import dataclasses
import json
import sys
import time

import torch

from bench.common import conditions, set_threads, synchronizer, write_timed_results
from emdm import VESchedule
from emdm.config import (
    DEVICE,
    NONNEGATIVE,
    PLAIN_NAME,
    POSITIVE,
    Checked,
    at_least,
    check_device,
    config_dict,
    option,
    parse_config,
)
from emdm.data import manifold_problem
from emdm.em import EMConfig
from emdm.gaussian import (
    GaussianStart,
    exact_posterior_samples,
    gaussian_start,
    marginal_log_likelihood,
    ppca,
)
from emdm.metrics import ot_score
from emdm.progress import say

FITS = ("sampled", "exact")


@dataclasses.dataclass
class GaussianStartBenchConfig(Checked):
    r"""Lap 0 of Figure 3's quick preset, with q_0 fitted by sampled and by exact EM."""

    observations: int = option(8192, "observations N (fig3 --quick: 8192)", check=at_least(2))
    sigma_y: float = option(0.01, "observation noise std σ_y", check=POSITIVE)
    sigma_max: float = option(10.0, "σ(1) of the VE schedule (σ(0) = 1e-3)", check=POSITIVE)
    start: GaussianStart = option(
        help="the fit of q_0, fig3 --quick's (--start-* flags; fits sets start.fit)",
        default_factory=lambda: GaussianStart(
            rank=5, iterations=8, observations=65536, steps=64, cg_iterations=2
        ),
    )
    em: EMConfig = option(
        help="the laps' settings, which lap 0's sampled draws use (fig3 --quick's)",
        default_factory=lambda: EMConfig(
            iterations=16, train_steps=2048, steps=64, solver="dense", covariance="cov_x"
        ),
    )
    fits: tuple[str, ...] = option(FITS, "the fits of q_0 compared", choices=FITS)
    converged: int = option(
        128, "iterations of one more exact fit, run to convergence (0: none)", check=NONNEGATIVE
    )
    ot_samples: int = option(2048, "samples per side of each OT score", check=POSITIVE)
    seed: int = option(0, "seed of the data", check=NONNEGATIVE)
    device: str = option("cpu", "device of lap 0", check=DEVICE)
    threads: int = option(0, "torch threads; 0: torch's default", check=NONNEGATIVE)
    out: str = option("results/bench", "output folder")
    name: str = option("gaussian_start_cpu", "name of the result files", check=PLAIN_NAME)
    quiet: bool = option(False, "print nothing but errors")
    dry_run: bool = option(False, "print the resolved config and exit")

    def __post_init__(self):
        super().__post_init__()
        if len(set(self.fits)) < len(self.fits) or not self.fits:
            raise ValueError(f"fits must name distinct fits, got {self.fits}")
        check_device(self.device)


def data(cfg: GaussianStartBenchConfig) -> tuple:
    r"""Figure 3's data (`reproduce/fig3.py`'s `_data`): the curve, the hidden :math:`x`
    :math:`(N, 5)`, the observations (operators :math:`(N, 2, 5)`, :math:`y` :math:`(N, 2)`) and
    2 x `ot_samples` truth points, on the CPU."""
    p = manifold_problem(cfg.observations, cfg.sigma_y, cfg.seed, truth=2 * cfg.ot_samples)
    return p.manifold, p.x, p.obs, p.truth


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(GaussianStartBenchConfig, argv, prog="bench/gaussian_start.py")
    if cfg.dry_run:
        print(json.dumps(config_dict(cfg), indent=2))
        return 0
    cfg.threads = set_threads(cfg.threads)
    device, sync = torch.device(cfg.device), synchronizer(cfg.device)
    manifold, x, obs, truth = data(cfg)
    n, schedule = cfg.ot_samples, VESchedule(1e-3, cfg.sigma_max)

    def score(samples: torch.Tensor) -> float:
        return float(ot_score(truth[:n].double(), truth[n:].double(), samples[:n].double()))

    def lap0(settings: GaussianStart) -> tuple:
        generator = torch.Generator(device).manual_seed(cfg.em.seed)  # learn_prior's
        sync()
        t0 = time.perf_counter()
        mean, cov, samples = gaussian_start(
            obs.to(device), (5,), settings, cfg.em, schedule, generator=generator
        )
        sync()
        return mean.cpu(), cov.to("cpu"), samples.cpu(), time.perf_counter() - t0

    def record(label: str, mean, cov, samples, wall: float | None) -> None:
        fitted[label] = (mean.double(), cov.to(torch.float64).dense())
        values = {} if wall is None else {"wall_s": wall}
        values |= {
            "score_emd": score(samples),
            "log_likelihood_per_observation": float(
                marginal_log_likelihood(obs, mean, cov) / len(obs)
            ),
        }
        values |= {f"mean_{j}": float(v) for j, v in enumerate(mean)}
        eigenvalues = torch.linalg.eigvalsh(fitted[label][1]).flip(0)  # descending
        values |= {f"eigenvalue_{j}": float(v) for j, v in enumerate(eigenvalues)}
        rows.extend({"fit": label, "metric": m, "value": v} for m, v in values.items())
        if not cfg.quiet:
            took = "" if wall is None else f"lap 0 in {wall:.2f} s, "
            say(f"{label}: {took}score {values['score_emd']:.4g}, log-likelihood "
                f"{values['log_likelihood_per_observation']:.4f} per observation, eigenvalues "
                + " ".join(f"{v:.3g}" for v in eigenvalues.tolist()))  # fmt: skip

    start, before, rows, fitted = time.perf_counter(), conditions(), [], {}
    for fit in cfg.fits:
        record(fit, *lap0(dataclasses.replace(cfg.start, fit=fit)))
    if "exact" in cfg.fits and cfg.converged > 0:
        settings = dataclasses.replace(cfg.start, fit="exact", iterations=cfg.converged)
        record(f"exact_{cfg.converged}", *lap0(settings))
    # the best q_0 of its form: PPCA on the hidden x, with exact draws
    mean, cov = ppca(x.double(), cfg.start.rank)
    generator = torch.Generator().manual_seed(cfg.em.seed)
    samples = exact_posterior_samples(obs, mean.float(), cov.to(torch.float32),
                                      generator=generator)  # fmt: skip
    record("ppca_hidden_x", mean.float(), cov.to(torch.float32), samples, None)
    g = torch.Generator().manual_seed(cfg.seed + 1)  # as fig3's noise floor
    summary = [{"fit": "truth", "metric": "noise_floor_emd",
                "value": score(manifold.sample(n, generator=g).float())}]  # fmt: skip
    if set(FITS) <= set(fitted):
        (mean_a, cov_a), (mean_b, cov_b) = fitted["sampled"], fitted["exact"]
        summary += [
            {"fit": "sampled vs exact", "metric": "mean_distance",
             "value": float((mean_a - mean_b).norm())},
            {"fit": "sampled vs exact", "metric": "cov_relative_frobenius",
             "value": float((cov_a - cov_b).norm() / cov_b.norm())},
        ]  # fmt: skip
    rows += summary
    if not cfg.quiet:
        for row in summary:
            say(f"{row['fit']}: {row['metric']} {row['value']:.4g}")
    write_timed_results(cfg.name, rows, cfg, wall_time=time.perf_counter() - start,
                        out_dir=cfg.out, device=device, before=before)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
