r"""Figure 3: EM learns a diffusion prior of a 1-D manifold in R⁵ from 2-D random projections.

Protocol (protocols §2): a random smooth curve in R⁵ (Figure 7), N observations y_i = A_i x_i + ε
with A_i ∈ R^{2×5} (unit rows) and σ_y = 0.01; q_0 is a Gaussian (rank 5) fitted by Monte-Carlo
EM; each EM iteration trains an EDM TimeMLP denoiser on the current posterior samples and
redraws them with MMPS: all of it `emdm.prior.learn_prior`, as for the image priors. After
each iteration k the debiased exact-OT score S(truth; q_k) is logged, and the samples of q_k
for k = 1, 2, 4, 8, ... are kept (`results/fig3*_q{k}.npy`). The noise floor is the score of a
third, independent truth sample.

Two E-steps. The paper's code (`heuristic: 'cov_x'`) solves with the fixed
V_t = (Σ_x⁻¹ + σ_t⁻² I)⁻¹ of the fitted q_0, the network's Jacobian entering only through the
final correction x̂ + σ_t² Jᵀ Aᵀ v: `--em-covariance cov_x`, the default of both presets. emdm's
Tweedie E-step uses the network's Jacobian in the solve as well (`tweedie`). `--compare` runs more
E-steps on the same data, seed and q_0, one EM run each; the quick preset runs Tweedie beside the
paper's E-step, and the score panel draws one curve per E-step.

    python reproduce/fig3.py --quick     # 8192 observations, 16 iterations, 2 E-steps: ~30 min
    python reproduce/fig3.py --device cuda   # the paper's sizes (65 536 observations, 64 laps)
    python reproduce/fig3.py --quick --resume      # continue a killed run
    python reproduce/fig3.py --quick --compare     # the paper's E-step alone
    python reproduce/fig3.py --smoke     # the paper's sizes, each loop cut to a step or two

Expected: the score falls several-fold from q_1 to the last iteration and the 2-D marginals
concentrate on the curve. Writes results/fig3[_quick].{csv,json,png}, _score.png and the q_k
samples of the first E-step, and fig3[_quick]_<covariance>.png and its q_k for each compared one.
"""

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emdm import VESchedule
from emdm.config import (
    NONNEGATIVE,
    POSITIVE,
    at_least,
    check_device,
    config_dict,
    option,
    run_identity,
)
from emdm.data import manifold_problem
from emdm.em import EMConfig
from emdm.errors import cli
from emdm.experiment import ResumableRun, learn_prior_in, parse_run
from emdm.guidance import COVARIANCES
from emdm.metrics import ot_score
from emdm.plots import figure, pairs
from emdm.prior import GaussianStart, MLPConfig
from emdm.progress import say
from emdm.provenance import write_results
from emdm.publish import check_writable
from emdm.runs import RunFolder, write_atomic

#: the E-steps' names in the score panel
LABELS = {"cov_x": "$\\Sigma_x$ of $q_0$ (the paper's code)", "tweedie": "Tweedie"}


@dataclasses.dataclass
class Fig3Config(ResumableRun):
    r"""Figure 3: EM learns a diffusion prior of a 1-D manifold in R⁵ from 2-D projections."""

    observations: int = option(
        65536, "observations N (paper: 65 536)", check=at_least(2)
    )  # the Gaussian fit's PPCA needs two
    sigma_y: float = option(0.01, "observation noise std σ_y (paper: 0.01)", check=POSITIVE)
    sigma_max: float = option(10.0, "σ(1) of the VE schedule (σ(0) = 1e-3)", check=POSITIVE)
    start: GaussianStart = option(
        help="the Gaussian fit of q_0 on the first observations (--start-* flags)",
        default_factory=lambda: GaussianStart(rank=5, observations=65536, cg_iterations=2),
    )
    net: MLPConfig = option(
        help="the denoiser's TimeMLP (--net-* flags)", default_factory=MLPConfig
    )
    em: EMConfig = option(help="the EM laps (--em-* flags)", default_factory=EMConfig)
    compare: tuple[str, ...] = option(
        (), "more E-step covariances, one EM run each beside em.covariance's, on the same data "
        "and seed", choices=(*COVARIANCES, "cov_x"),
    )  # fmt: skip
    ot_samples: int = option(4096, "samples per side of each OT score", check=POSITIVE)
    seed: int = option(0, "seed of the data and the run", check=NONNEGATIVE)

    def __post_init__(self):
        super().__post_init__()
        if self.net.features != 5:
            raise ValueError(f"net.features must be 5, the manifold's R⁵, got {self.net.features}")
        self.start.check_fit(self.observations)
        if len(set(self.covariances)) < len(self.covariances):
            raise ValueError(
                f"compare must be covariances other than em.covariance and each other, "
                f"got {self.compare} beside {self.em.covariance!r}"
            )

    @property
    def covariances(self) -> tuple[str, ...]:
        r"""The E-steps run, the first (em.covariance's) the headline one."""
        return (self.em.covariance, *self.compare)


# the paper's CG runs to convergence on the 2x2 systems: the exact (dense) solve, here
# symmetrized and guarded, since a learned Jacobian can make the system indefinite; its E-step
# and q_0 are the paper code's: cov_x, and 16 iterations of 256 DDIM steps (the default start)
PAPER = Fig3Config(
    name="fig3",
    em=EMConfig(iterations=64, train_steps=65536, steps=4096, solver="dense", sample_batch=16384,
                covariance="cov_x"),
)  # fmt: skip
QUICK = Fig3Config(
    observations=8192,
    start=GaussianStart(rank=5, iterations=8, observations=65536, steps=64, cg_iterations=2),
    em=EMConfig(iterations=16, train_steps=2048, steps=64, solver="dense", covariance="cov_x"),
    compare=("tweedie",),
    ot_samples=2048,
    scale="quick",
    name="fig3_quick",
)
# the paper's data (65 536 observations, (N, 2, 5) operators), network, dense solver and E-step
# batch of 16 384: one Gaussian-fit iteration, one lap of 2 Adam steps (batch 1024) and 2 PC
# steps, OT scores on 2 samples per side
SMOKE = Fig3Config(
    start=GaussianStart(rank=5, iterations=1, observations=65536, steps=2, cg_iterations=2),
    em=EMConfig(iterations=1, train_steps=2, batch_size=1024, steps=2, solver="dense",
                sample_batch=16384, covariance="cov_x"),
    ot_samples=2,
    scale="smoke",
    name="fig3_smoke",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    cfg = parse_run(
        Fig3Config, argv, quick=QUICK, paper=PAPER, smoke=SMOKE, prog="reproduce/fig3.py"
    )
    if cfg is None:  # --dry-run
        return 0
    device, out = check_device(cfg.device), check_writable(cfg.out)
    # every check (lock, a finished or other run, the code version, damaged files) before work
    with RunFolder(out / f"{cfg.name}_run", run_identity(cfg), resume=cfg.resume) as run:
        data = manifold_problem(cfg.observations, cfg.sigma_y, cfg.seed, truth=2 * cfg.ot_samples)
        manifold, obs, truth = data.manifold, data.obs, data.truth
        for covariance in cfg.covariances if not run.finished else ():
            torch.manual_seed(cfg.seed)  # the same network for every E-step
            denoiser, schedule = cfg.net.build().to(device), VESchedule(1e-3, cfg.sigma_max)
            em = dataclasses.replace(cfg.em, covariance=covariance)
            callback = _logger(cfg, run, manifold, truth, covariance)
            learn_prior_in(run, cfg, denoiser, obs.to(device), (5,), schedule, label=covariance,
                           em=em, callback=callback)  # fmt: skip
        _publish(cfg, run, out, truth, device)
        run.finish()
    if not cfg.quiet:
        say(f"wrote {out / cfg.name}.{{csv,json,png}}, {cfg.name}_score.png and the q_k samples")
    return 0


def _logger(cfg: Fig3Config, run: RunFolder, manifold, truth, covariance: str) -> Callable:
    r"""The EM callback of one E-step: it logs each lap's score and metrics (at k = 0, q_0's,
    and, for the first E-step, the noise floor: the score of a third truth sample, drawn with
    its own generator) and keeps the samples of the laps 0, 1, 2, 4, 8, ... (the paper's
    panels) in the E-step's folder."""

    def score(samples):
        n, samples = cfg.ot_samples, samples.cpu()
        return float(ot_score(truth[:n].double(), truth[n:].double(), samples[:n].double()))

    def callback(k, samples, metrics):
        if k & (k - 1) == 0:
            write_atomic(run.path / covariance / f"q{k}.npy", lambda p: _save_npy(p, samples))
        values = {"score_emd": score(samples)}
        if k == 0 and covariance == cfg.covariances[0]:
            g = torch.Generator().manual_seed(cfg.seed + 1)
            values["noise_floor_emd"] = score(manifold.sample(cfg.ot_samples, generator=g).float())
        values |= metrics
        run.log([dict(covariance=covariance, em_iteration=k, metric=m, value=float(v))
                 for m, v in values.items()])  # fmt: skip
        if not cfg.quiet:
            say(f"{covariance}, EM iteration {k}: "
                + ", ".join(f"{m} {v:.4g}" for m, v in values.items()))  # fmt: skip

    return callback


def _save_npy(path: Path, samples: torch.Tensor) -> None:
    with open(path, "wb") as f:
        np.save(f, samples.cpu().numpy())


def _publish(cfg: Fig3Config, run: RunFolder, out: Path, truth, device) -> None:
    r"""The CSV, JSON, the figures and the q_k samples, published together: the first E-step's
    as `<name>.png` and `<name>_q{k}.npy`, each compared one's as `<name>_<covariance>.*`, and
    one score curve per E-step."""
    rows = run.rows()
    frame = pd.DataFrame(rows)
    fig, axes = figure(1, 1, (4.5, 3))
    figures, arrays = {f"{cfg.name}_score.png": fig}, {}
    for c in cfg.covariances:
        name = cfg.name if c == cfg.covariances[0] else f"{cfg.name}_{c}"
        mine = frame[frame.covariance == c]
        kept = [k for k in sorted(set(mine.em_iteration)) if k > 0 and k & (k - 1) == 0]
        q = {k: np.load(run.path / c / f"q{k}.npy") for k in (0, *kept)}  # q_0: the figure's
        arrays |= {f"{name}_q{k}.npy": q[k] for k in kept}
        panels = {f"$q_{{{k}}}$": torch.from_numpy(q[k]) for k in q}
        figures[f"{name}.png"] = pairs({**panels, "truth": truth})
        s = mine[mine.metric == "score_emd"]
        axes[0, 0].plot(s.em_iteration, s.value, marker="o", label=LABELS.get(c, c))
    floor = frame[frame.metric == "noise_floor_emd"].value
    axes[0, 0].axhline(floor.iloc[0], color="gray", ls="--", label="noise floor")
    axes[0, 0].set(yscale="log", xlabel="EM iteration $k$", ylabel="$S$(truth; $q_k$)")
    axes[0, 0].legend(fontsize=7)
    write_results(
        cfg.name,
        rows,
        config_dict(cfg),
        wall_time=run.wall_time,
        out_dir=out,
        quick=cfg.scale,
        device=device,
        segments=run.segments,
        figures=figures,
        arrays=arrays,
    )


if __name__ == "__main__":
    sys.exit(cli(main))
