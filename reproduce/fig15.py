r"""Figure 15: unconditional samples of the MRI prior after k = 2 EM laps, per covariance.

Protocol (protocols §5): Figure 6's training (:mod:`emdm.mri`: knee slices observed through
column-line masks of acceleration R = 6, q_0 a Gaussian, then EM laps with MMPS), run once per
covariance V_t in `covariances`, each for `lap` = 2 laps: the (I + Σ_t⁻¹)⁻¹ heuristic
("identity") and Tweedie's. Then `samples` unconditional samples of each lap-2 prior (the
laps' sampler, `eval_steps` steps, the same noise for every prior) and as many held-out slices.
Beyond the paper, a measure of vertical stripes (:func:`emdm.mri.stripes`): the mean absolute
difference between adjacent columns against adjacent rows, and their ratio, for each prior's
samples and for the truth.

    python reproduce/fig15.py --quick            # 32x32 phantoms, tiny U-Net: 4.5 min, 2 CPU cores
    python reproduce/fig15.py --smoke --data-dir DATA  # the paper's shapes, a step or two each
    python reproduce/fig15.py --data-dir DATA --device cuda     # DATA/singlecoil_{train,val}
    python reproduce/fig15.py --quick --resume   # continue, or re-report a finished run

Expected (the paper): the heuristic's samples show vertical artifacts, Tweedie's do not; so a
stripe ratio above the truth's for "identity". The quick run does not show them: after 2 quick
laps both priors' samples are still mostly noise (stripe ratios 1.006 and 1.004, truth 1.073).
Writes results/fig15[_quick].{csv,json,png}; each covariance's laps in
<out>/<name>_run/<covariance>/.
"""

import dataclasses
import sys
from pathlib import Path

import torch

from emdm.config import POSITIVE, config_dict, option, run_identity
from emdm.errors import cli
from emdm.experiment import parse_run, run_in_folder
from emdm.guidance import COVARIANCES
from emdm.mri import (
    MRIConfig,
    held_out_slices,
    learn_mri_prior,
    paper_em,
    quick_config,
    schedule,
    smoke_config,
    stripes,
    training_observations,
)
from emdm.plots import image_grid
from emdm.prior import draw, load_prior
from emdm.provenance import write_results
from emdm.runs import RunFolder


@dataclasses.dataclass
class Fig15Config(MRIConfig):
    r"""Figure 15: unconditional samples of the MRI prior after a few laps, per covariance."""

    covariances: tuple[str, ...] = option(
        ("identity", "tweedie"), "covariances V_t, one prior each", choices=COVARIANCES
    )
    lap: int = option(2, "the lap whose priors are sampled (paper: 2)", check=POSITIVE)
    samples: int = option(16, "unconditional samples of each prior", check=POSITIVE)
    eval_steps: int = option(64, "sampler steps of those samples", check=POSITIVE)

    def __post_init__(self):
        super().__post_init__()
        if self.lap > self.em.iterations:
            raise ValueError(f"lap must be <= em.iterations ({self.em.iterations}), the laps "
                             f"learned, got {self.lap}")  # fmt: skip
        if len(set(self.covariances)) < len(self.covariances):
            raise ValueError(f"covariances must differ, got {self.covariances}")


PAPER = Fig15Config(name="fig15", em=dataclasses.replace(paper_em(), iterations=2))
# two priors in ~5 min on 2 CPU cores: half the slices and Adam steps of Figure 6's quick laps
QUICK = quick_config(Fig15Config, iterations=2, slices=384, train_steps=128, eval_steps=24,
                     name="fig15_quick")  # fmt: skip
# both covariances' priors at the training's smoke scale (1 slice, 1 lap of 1 Adam step), each
# then drawing 2 unconditional samples (a batch of 2) with DDPM 1 step
SMOKE = smoke_config(Fig15Config, lap=1, samples=2, eval_steps=1, name="fig15_smoke")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_run(
        Fig15Config, argv, quick=QUICK, paper=PAPER, smoke=SMOKE, prog="reproduce/fig15.py"
    )
    if cfg is None:  # --dry-run
        return 0
    return run_in_folder(cfg, lambda ctx, device, out, run: _run(cfg, ctx, device, out, run))


def _run(cfg: Fig15Config, ctx, device, out: Path, run: RunFolder) -> None:
    r"""Each covariance's laps in `<run>/<covariance>`, then (rank 0) the samples, published."""
    obs, shape = training_observations(cfg)
    truth = held_out_slices(cfg, cfg.samples)
    for covariance in cfg.covariances:
        c = dataclasses.replace(cfg, em=dataclasses.replace(cfg.em, covariance=covariance))
        with RunFolder(run.path / covariance, run_identity(c), resume=run.resuming,
                       main=ctx.main) as laps:  # fmt: skip
            learn_mri_prior(laps, c, obs, shape, ctx=ctx, device=device)
            laps.finish()
    if not ctx.main:
        return

    drawn = {"truth": truth}
    for covariance in cfg.covariances:
        prior, mean = load_prior(run.path / covariance, device, lap=cfg.lap)
        g = torch.Generator(device).manual_seed(cfg.seed + 1000)  # the same for every prior
        drawn[covariance] = draw(prior, mean, cfg.samples, schedule(), cfg.em.sampler,
                                 cfg.eval_steps, cfg.em.sample_batch, g,
                                 progress=not cfg.quiet).cpu()  # fmt: skip
    rows = [dict(covariance=c, em_iteration=None if c == "truth" else cfg.lap, metric=m, value=v)
            for c, x in drawn.items() for m, v in stripes(x).items()]  # fmt: skip
    if not cfg.quiet:
        for row in rows:
            print(f"{row['covariance']}: {row['metric']} {row['value']:.4g}")
    panels = {"truth (held out)" if c == "truth" else f"{c}, lap {cfg.lap}": x
              for c, x in drawn.items()}  # fmt: skip
    columns = min(8, cfg.samples)
    figure = image_grid(panels, columns=columns, rows=-(-cfg.samples // columns))
    write_results(cfg.name, rows, config_dict(cfg), wall_time=run.wall_time, out_dir=out,
                  quick=cfg.scale, device=device, segments=run.segments,
                  figures={f"{cfg.name}.png": figure})  # fmt: skip


if __name__ == "__main__":
    sys.exit(cli(main))
