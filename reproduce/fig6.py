r"""Figure 6: accelerated MRI, a knee prior learned from undersampled k-space only.

Protocol (protocols §5): slices x in [-2, 2], observations y = [Re, Im](M ⊙ F x) + 0.01 ε
with a column-line mask of acceleration R = 6 (a new mask per slice); q_0 a Gaussian (rank 64);
EM laps with the U-Net on 4x4 pixel-unshuffled slices (DDPM 64 steps, CG 3; flip + 4-px shift;
every observation used twice): the training of :mod:`emdm.mri`. Then, on held-out slices and
new masks at each acceleration in `accelerations`, posterior samples (DDPM 64, CG 5), their
mean, the zero-filled baseline A^T y and the truth. Beyond the paper (which reports no MRI
metric): PSNR and SSIM on (x + 2) / 4 of the posterior mean and of the zero-filled image
against the truth.

    python reproduce/fig6.py --quick       # 32x32 phantoms, tiny U-Net: ~6 min on 2 CPU cores
    python reproduce/fig6.py --smoke --data-dir DATA   # the paper's shapes, loops cut to 1-2 steps
    python reproduce/fig6.py --data-dir DATA --device cuda     # DATA/singlecoil_{train,val}
    torchrun --nproc_per_node=4 reproduce/fig6.py --data-dir DATA --device cuda

Expected: the posterior mean beats zero-filling in PSNR and SSIM at every acceleration, by
less as R grows. Writes results/fig6[_quick].{csv,json,png}.
"""

import dataclasses
import sys
from pathlib import Path

import torch

from emdm.config import POSITIVE, at_least, config_dict, option
from emdm.data import mri_observations, zero_filled
from emdm.em import e_step
from emdm.errors import cli
from emdm.experiment import parse_run, run_in_folder
from emdm.metrics import psnr, ssim, to_unit
from emdm.mri import (
    MRIConfig,
    held_out_slices,
    learn_mri_prior,
    quick_config,
    schedule,
    smoke_config,
    training_observations,
)
from emdm.observation import Observation
from emdm.operators import MRIOperator
from emdm.plots import image_grid
from emdm.prior import load_prior
from emdm.provenance import write_results
from emdm.runs import RunFolder


@dataclasses.dataclass
class Fig6Config(MRIConfig):
    r"""Figure 6: accelerated MRI, a knee prior learned from undersampled k-space only."""

    accelerations: tuple[float, ...] = option(
        (4.0, 6.0, 8.0), "accelerations R of the evaluation", check=at_least(1)
    )
    test_slices: int = option(64, "held-out slices scored per acceleration", check=POSITIVE)
    posterior_samples: int = option(
        2, "samples per slice, averaged into the posterior mean", check=POSITIVE
    )
    eval_steps: int = option(
        64, "sampler steps of the evaluation (paper: DDPM 64)", check=POSITIVE
    )
    eval_cg: int = option(5, "CG iterations of the evaluation (paper: 5)", check=POSITIVE)


PAPER = Fig6Config(name="fig6", accelerations=(4.0, 8.0, 16.0, 32.0))  # protocols §5.4
QUICK = quick_config(Fig6Config, iterations=5, test_slices=32, posterior_samples=4,
                     eval_steps=24, name="fig6_quick")  # fmt: skip
# the training's smoke scale (1 slice, 1 lap of 1 Adam step), then 2 held-out slices (a batch
# of 2) at one acceleration, 1 posterior sample each, DDPM 1 step with the paper's CG 5
SMOKE = smoke_config(Fig6Config, accelerations=(4.0,), test_slices=2, posterior_samples=1,
                     eval_steps=1, name="fig6_smoke")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    cfg = parse_run(
        Fig6Config, argv, quick=QUICK, paper=PAPER, smoke=SMOKE, prog="reproduce/fig6.py"
    )
    if cfg is None:  # --dry-run
        return 0
    return run_in_folder(cfg, lambda ctx, device, out, run: _run(cfg, ctx, device, out, run))


def _run(cfg: Fig6Config, ctx, device, out: Path, run: RunFolder) -> None:
    r"""The laps in `run`, then (rank 0) the evaluation, published into `out`."""
    obs, shape = training_observations(cfg)
    test = held_out_slices(cfg, cfg.test_slices)  # before the laps: a missing split stops them
    learn_mri_prior(run, cfg, obs, shape, ctx=ctx, device=device)
    if not ctx.main:
        return

    prior, mean = load_prior(run.path, device)
    evaluation = dataclasses.replace(cfg.em, steps=cfg.eval_steps, cg_iterations=cfg.eval_cg)
    rows, panels = [], {"truth": test[:4]}
    for R in cfg.accelerations:
        m, y_test = mri_observations(test, R, torch.Generator().manual_seed(int(R)), cfg.sigma_y)
        n = cfg.posterior_samples
        A = MRIOperator(m.float()).repeat(n)
        obs = Observation(A, y_test.repeat(n, 1, 1, 1), cfg.sigma_y**2)
        g = torch.Generator(device).manual_seed(cfg.seed + int(R))
        samples, _ = e_step(
            prior, obs, evaluation, schedule(), mean=mean, generator=g, progress=not cfg.quiet
        )
        samples = samples.reshape(n, *test.shape).cpu()
        estimates = {"posterior_mean": samples.mean(0), "zero_filled": zero_filled(y_test, m)}
        for method, estimate in estimates.items():
            unit = [to_unit(t[:, None], "paper") for t in (estimate, test)]
            for metric, values in (("psnr", psnr(*unit)), ("ssim", ssim(*unit))):
                rows.append(dict(acceleration=R, method=method, metric=metric,
                                 value=values.mean().item(), std=values.std().item()))  # fmt: skip
                if not cfg.quiet:
                    print(f"R = {R:g}, {method}: {metric} {values.mean():.4g}")
        panels[f"R = {R:g}: zero-filled"] = estimates["zero_filled"][:4]
        panels[f"R = {R:g}: samples"] = samples[:2, :2].transpose(0, 1).flatten(0, 1)
        panels[f"R = {R:g}: mean"] = estimates["posterior_mean"][:4]
    write_results(cfg.name, rows, config_dict(cfg), wall_time=run.wall_time, out_dir=out,
                  quick=cfg.scale, device=device, segments=run.segments,
                  figures={f"{cfg.name}.png": image_grid(panels, columns=2, rows=2)})  # fmt: skip


if __name__ == "__main__":
    sys.exit(cli(main))
