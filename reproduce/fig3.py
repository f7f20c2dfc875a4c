r"""Figure 3: EM learns a diffusion prior of a 1-D manifold in R⁵ from 2-D random projections.

Protocol (protocols §2): a random smooth curve in R⁵ (Figure 7), N observations y_i = A_i x_i + ε
with A_i ∈ R^{2×5} (unit rows) and σ_y = 0.01; q_0 is a Gaussian fitted by Monte-Carlo EM; each
EM iteration trains an EDM TimeMLP denoiser on the current posterior samples and redraws them
with MMPS. After each iteration k the debiased exact-OT score S(truth; q_k) is logged, and the
samples of q_k for k = 1, 2, 4, 8, ... are kept (`results/fig3*_q{k}.npy`). The noise floor is
the score of a third, independent truth sample.

    python reproduce/fig3.py --quick     # 8192 observations, 16 iterations: about 20 min on CPU
    python reproduce/fig3.py --device cuda   # the paper's sizes (65 536 observations, 64 laps)
    python reproduce/fig3.py --quick --resume      # continue a killed run
    python reproduce/fig3.py --quick --em-covariance cov_x   # the paper's code's E-step

Expected: the score falls several-fold from q_1 to the last iteration and the 2-D marginals
concentrate on the curve. Writes results/fig3[_quick].{csv,json,png} and _score.png.
"""

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emdm import DPLR, EDMDenoiser, GaussianDenoiser, VESchedule
from emdm.config import (
    NONNEGATIVE,
    PLAIN_NAME,
    POSITIVE,
    at_least,
    check_device,
    config_dict,
    option,
    run_identity,
)
from emdm.data import RandomManifold, observe, random_projections
from emdm.em import EMConfig, e_step, run_em
from emdm.errors import cli
from emdm.experiment import ResumableRun, parse_run
from emdm.gaussian import fit_gaussian
from emdm.metrics import ot_score
from emdm.nn import TimeMLP
from emdm.operators import DenseOperator
from emdm.plots import figure, pairs
from emdm.progress import say
from emdm.provenance import write_results
from emdm.publish import check_writable
from emdm.runs import RunFolder, write_atomic


@dataclasses.dataclass
class Fig3Config(ResumableRun):
    r"""Figure 3: EM learns a diffusion prior of a 1-D manifold in R⁵ from 2-D projections."""

    observations: int = option(
        65536, "observations N (paper: 65 536)", check=at_least(2)
    )  # the Gaussian fit's PPCA needs two
    sigma_y: float = option(0.01, "observation noise std σ_y (paper: 0.01)", check=POSITIVE)
    sigma_max: float = option(10.0, "σ(1) of the VE schedule (σ(0) = 1e-3)", check=POSITIVE)
    gaussian_iterations: int = option(16, "Monte-Carlo EM iterations of q_0", check=POSITIVE)
    gaussian_steps: int = option(256, "sampler steps of q_0's fit", check=POSITIVE)
    em: EMConfig = option(help="the EM laps (--em-* flags)", default_factory=EMConfig)
    ot_samples: int = option(4096, "samples per side of each OT score", check=POSITIVE)
    seed: int = option(0, "seed of the data and the run", check=NONNEGATIVE)
    name: str = option("fig3", "name of the result files", check=PLAIN_NAME)

    def __post_init__(self):
        super().__post_init__()
        check_device(self.device)  # a clear error at parse time, before any work


# the paper's CG runs to convergence on the 2x2 systems: the exact (dense) solve, here
# symmetrized and guarded, since a learned Jacobian can make the system indefinite
PAPER = Fig3Config(
    em=EMConfig(iterations=64, train_steps=65536, steps=4096, solver="dense", sample_batch=16384)
)
QUICK = Fig3Config(
    observations=8192,
    gaussian_iterations=8,
    gaussian_steps=64,
    em=EMConfig(iterations=16, train_steps=2048, steps=64, solver="dense"),
    ot_samples=2048,
    scale="quick",
    name="fig3_quick",
)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_run(Fig3Config, argv, quick=QUICK, paper=PAPER, prog="reproduce/fig3.py")
    if cfg is None:  # --dry-run
        return 0
    device, out = check_device(cfg.device), check_writable(cfg.out)
    # every check (lock, a finished or other run, the code version, damaged files) before work
    with RunFolder(out / f"{cfg.name}_run", run_identity(cfg), resume=cfg.resume) as run:
        manifold, A, y, truth, g = _data(cfg)
        schedule = VESchedule(1e-3, cfg.sigma_max)
        A, y = A.to(device), y.to(device)
        if device.type != "cpu":  # a generator of the device: the runs differ from the CPU's
            g = torch.Generator(device).manual_seed(cfg.seed)
        q0 = run.cached("q0.pt", lambda: _gaussian_start(cfg, A, y, schedule, g))
        mu, cov = q0["mean"].to(device), DPLR(q0["D"], q0["U"], q0["V"]).to(device)

        callback = _logger(cfg, run, manifold, truth, q0["samples"])
        if not run.finished:
            torch.manual_seed(cfg.seed)
            denoiser = EDMDenoiser(TimeMLP(5, emb_features=64), emb_features=64).to(device)
            run_em(denoiser, DenseOperator(A), y, cfg.sigma_y**2, q0["samples"].to(y), cfg.em,
                   schedule, mean=mu, directory=run.path, resume=run.resuming,
                   identity=run_identity(cfg), callback=callback, prior_cov=cov,
                   progress=not cfg.quiet)  # fmt: skip
        _publish(cfg, run, out, q0["samples"], truth, device)
        run.finish()
    if not cfg.quiet:
        say(f"wrote {out / cfg.name}.{{csv,json,png}}, {cfg.name}_score.png and the q_k samples")
    return 0


def _logger(cfg: Fig3Config, run: RunFolder, manifold, truth, q0) -> Callable:
    r"""Logs q_0's score and the noise floor (a third truth sample, its own generator) once,
    and returns the EM callback: it logs each lap's score and metrics and keeps the samples
    of the laps 1, 2, 4, 8, ... (the paper's panels)."""

    def score(samples):
        n, samples = cfg.ot_samples, samples.cpu()
        return float(ot_score(truth[:n].double(), truth[n:].double(), samples[:n].double()))

    if not run.rows():
        third = manifold.sample(
            cfg.ot_samples, generator=torch.Generator().manual_seed(cfg.seed + 1)
        )
        floors = {"score_emd": score(q0), "noise_floor_emd": score(third.float())}
        run.log([dict(em_iteration=0, metric=m, value=v) for m, v in floors.items()])

    def callback(k, samples, metrics):
        if k & (k - 1) == 0:
            write_atomic(run.path / f"q{k}.npy", lambda p: _save_npy(p, samples))
        values = {"score_emd": score(samples), **metrics}
        run.log([dict(em_iteration=k, metric=m, value=float(v)) for m, v in values.items()])
        if not cfg.quiet:
            say(f"EM iteration {k}: " + ", ".join(f"{m} {v:.4g}" for m, v in values.items()))

    return callback


def _data(cfg: Fig3Config) -> tuple:
    r"""The curve, the operators (N, 2, 5), the observations (N, 2), 2 x ot_samples truth
    points, drawn on the CPU, so that they do not depend on the device, and the generator that
    drew them (the Gaussian fit continues its stream on the CPU)."""
    g = torch.Generator().manual_seed(cfg.seed)
    manifold = RandomManifold(5, generator=torch.Generator().manual_seed(0))
    x = manifold.sample(cfg.observations, generator=g).float()
    A = random_projections(cfg.observations, 5, 2, g, dtype=torch.float32)
    y = observe(x, A, cfg.sigma_y, g)
    truth = manifold.sample(2 * cfg.ot_samples, generator=g).float()
    return manifold, A, y, truth, g


def _gaussian_start(cfg: Fig3Config, A, y, schedule, g) -> dict:
    r"""q_0, a Gaussian fitted by Monte-Carlo EM, and one posterior sample per observation."""
    mu, cov = fit_gaussian(A, y, cfg.sigma_y**2, rank=5, iterations=cfg.gaussian_iterations,
                           schedule=schedule, steps=cfg.gaussian_steps, cg_iterations=2,
                           generator=g, progress=not cfg.quiet)  # fmt: skip
    q0, _ = e_step(GaussianDenoiser(mu, cov), DenseOperator(A), y, cfg.sigma_y**2, cfg.em,
                   schedule, mu, g, covariance=cov)  # fmt: skip
    return {"mean": mu.cpu(), "D": cov.D.cpu(), "U": cov.U.cpu(), "V": cov.V.cpu(),
            "samples": q0.cpu()}  # fmt: skip


def _save_npy(path: Path, samples: torch.Tensor) -> None:
    with open(path, "wb") as f:
        np.save(f, samples.cpu().numpy())


def _publish(cfg: Fig3Config, run: RunFolder, out: Path, q0, truth, device) -> None:
    r"""The CSV, JSON, both figures and the q_k samples, published together."""
    rows = run.rows()
    laps = sorted({r["em_iteration"] for r in rows if r["em_iteration"] > 0})
    kept = [k for k in laps if k & (k - 1) == 0]
    arrays = {f"{cfg.name}_q{k}.npy": np.load(run.path / f"q{k}.npy") for k in kept}
    panels = {"$q_0$": q0, **{f"$q_{{{k}}}$": torch.from_numpy(arrays[f"{cfg.name}_q{k}.npy"])
                              for k in kept}}  # fmt: skip
    s = pd.DataFrame(rows).query("metric == 'score_emd'")
    fig, axes = figure(1, 1, (4, 3))
    axes[0, 0].plot(s.em_iteration, s.value, marker="o")
    axes[0, 0].set(yscale="log", xlabel="EM iteration $k$", ylabel="$S$(truth; $q_k$)")
    write_results(cfg.name, rows, config_dict(cfg), wall_time=run.wall_time, out_dir=out,
                  quick=cfg.scale == "quick", device=device, segments=run.segments,
                  figures={f"{cfg.name}.png": pairs({**panels, "truth": truth}),
                           f"{cfg.name}_score.png": fig},
                  arrays=arrays)  # fmt: skip


if __name__ == "__main__":
    sys.exit(cli(main))
