r"""Figure 6: accelerated MRI, a knee prior learned from undersampled k-space only.

Protocol (protocols §5): slices x in [-2, 2], observations y = [Re, Im](M ⊙ F x) + 0.01 ε
with a column-line mask of acceleration R = 6 (a new mask per slice); q_0 a Gaussian (rank 64);
EM laps with the U-Net on 4x4 pixel-unshuffled slices (DDPM 64 steps, CG 3; flip + 4-px shift;
every observation used twice). Then, on held-out slices and new masks at each acceleration in
`accelerations`, posterior samples (DDPM 64, CG 5), their mean, the zero-filled baseline
A^T y and the truth. Beyond the paper (which reports no MRI metric): PSNR and SSIM on
(x + 2) / 4 of the posterior mean and of the zero-filled image against the truth.

    python reproduce/fig6.py --quick       # 32x32 phantoms, tiny U-Net: ~6 min on 2 CPU cores
    python reproduce/fig6.py --data-dir DATA --device cuda     # DATA/singlecoil_{train,val}
    torchrun --nproc_per_node=4 reproduce/fig6.py --data-dir DATA --device cuda

Expected: the posterior mean beats zero-filling in PSNR and SSIM at every acceleration, by
less as R grows. Writes results/fig6[_quick].{csv,json,png}.
"""

import dataclasses
import sys
from pathlib import Path

import torch

from emdm import VESchedule
from emdm.config import NONNEGATIVE, POSITIVE, at_least, config_dict, option
from emdm.data import load_fastmri, mri_observations, phantoms, zero_filled
from emdm.em import EMConfig, e_step
from emdm.errors import cli
from emdm.experiment import ResumableRun, learn_prior_in, parse_run, run_in_folder
from emdm.metrics import psnr, ssim, to_unit
from emdm.observation import Observation
from emdm.operators import MRIOperator
from emdm.plots import image_grid
from emdm.prior import GaussianStart, UNetConfig, load_prior
from emdm.provenance import write_results
from emdm.runs import RunFolder


@dataclasses.dataclass
class Fig6Config(ResumableRun):
    r"""Figure 6: accelerated MRI, a knee prior learned from undersampled k-space only."""

    data: str = option("fastmri", "the slices: fastMRI knees or synthetic phantoms",
                       choices=("fastmri", "phantoms"))  # fmt: skip
    data_dir: str = option(
        "", "folder holding singlecoil_train/ and singlecoil_val/; empty: $EMDM_DATA"
    )
    size: int = option(320, "slice height and width (pixels)", check=POSITIVE)
    observations: int = option(0, "train slices used; 0: every train slice", check=NONNEGATIVE)
    duplicate: int = option(
        2, "posterior samples per observation in each E-step (paper: 2)", check=POSITIVE
    )
    R: float = option(6.0, "acceleration of the training masks (paper: 6)", check=at_least(1))
    sigma_y: float = option(1e-2, "k-space noise std σ_y (paper: 0.01)", check=POSITIVE)
    net: UNetConfig = option(
        help="the denoiser's U-Net (--net-* flags)",
        default_factory=lambda: UNetConfig(
            channels=16, hid_channels=(128, 256, 384, 512), hid_blocks=(3, 3, 3, 3),
            attention=(3,), pixel_shuffle=4),
    )  # fmt: skip
    em: EMConfig = option(help="the EM laps (--em-* flags)", default_factory=EMConfig)
    start: GaussianStart = option(
        help="the Gaussian fit of q_0 (--start-* flags)",
        default_factory=lambda: GaussianStart(observations=4096, cg_iterations=5),
    )
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
    seed: int = option(0, "seed of the data, masks and run", check=NONNEGATIVE)

    def __post_init__(self):
        super().__post_init__()
        if self.data == "phantoms" and self.observations < 1:
            raise ValueError("observations must be >= 1 with data 'phantoms' (0: every slice of "
                             "a data set on disk)")  # fmt: skip


# 64 epochs over ~2 x 30k slices with batches of 256: ~15 000 Adam steps per lap
PAPER = Fig6Config(
    name="fig6",
    em=EMConfig(iterations=16, train_steps=15000, batch_size=256, lr=1e-4, lr_end=1e-4, ema=0.999,
                sampler="ddpm", steps=64, cg_iterations=3, dot="batch",
                sample_batch=256, keep_range=0, flip=True, shift=4, seeding="batch",
                mean_samples=16384),
    accelerations=(4.0, 8.0, 16.0, 32.0),  # the paper's figure (protocols §5.4)
)  # fmt: skip
QUICK = Fig6Config(
    data="phantoms", size=32, observations=768, duplicate=1,
    net=UNetConfig(channels=4, hid_channels=(16, 32), hid_blocks=(1, 1), heads=2,
                   emb_features=64, dropout=0.0, pixel_shuffle=2),
    em=dataclasses.replace(PAPER.em, iterations=5, train_steps=256, batch_size=128, lr=1e-3,
                           lr_end=1e-3, ema=0.99, steps=24, shift=2, mean_samples=768),
    start=GaussianStart(rank=16, iterations=4, observations=768, steps=24, cg_iterations=5),
    test_slices=32, posterior_samples=4, eval_steps=24, scale="quick", name="fig6_quick",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    cfg = parse_run(Fig6Config, argv, quick=QUICK, paper=PAPER, prog="reproduce/fig6.py")
    if cfg is None:  # --dry-run
        return 0
    return run_in_folder(cfg, lambda ctx, device, out, run: _run(cfg, ctx, device, out, run))


def _run(cfg: Fig6Config, ctx, device, out: Path, run: RunFolder) -> None:
    r"""The laps in `run`, then (rank 0) the evaluation, published into `out`."""
    if cfg.data == "fastmri":
        x = load_fastmri(cfg.data_dir or None, "train", size=cfg.size)
        test = load_fastmri(cfg.data_dir or None, "val", size=cfg.size)
    else:
        x = phantoms(cfg.observations, cfg.size, torch.Generator().manual_seed(cfg.seed))
        test = phantoms(cfg.test_slices, cfg.size, torch.Generator().manual_seed(cfg.seed + 1))
    x = x[: cfg.observations or len(x)]
    test = test[:: max(1, len(test) // cfg.test_slices)][: cfg.test_slices]
    mask, y = mri_observations(x, cfg.R, torch.Generator().manual_seed(cfg.seed + 2), cfg.sigma_y)
    mask, y = mask.repeat(cfg.duplicate, 1), y.repeat(cfg.duplicate, 1, 1, 1)
    schedule = VESchedule(1e-3, 1e2)
    torch.manual_seed(cfg.seed)
    obs = Observation(MRIOperator(mask.float()), y, cfg.sigma_y**2)
    learn_prior_in(
        run, cfg, cfg.net.build().to(device), obs, tuple(x.shape[1:]), schedule, ctx=ctx
    )
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
            prior, obs, evaluation, schedule, mean=mean, generator=g, progress=not cfg.quiet
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
                  quick=cfg.scale == "quick", device=device, segments=run.segments,
                  figures={f"{cfg.name}.png": image_grid(panels, columns=2, rows=2)})  # fmt: skip


if __name__ == "__main__":
    sys.exit(cli(main))
