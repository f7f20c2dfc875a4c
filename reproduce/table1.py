r"""Table 1 and Figure 4: a CIFAR-10 prior learned from masked images only, by EM with MMPS.

Protocol (protocols §4): images masked per pixel (shared over RGB, `percent` % deleted) with
σ_y = 1e-3 noise; q_0 a Gaussian (rank 64) fitted by Monte-Carlo EM; then EM laps that train
the U-Net on the E-step's samples (warm start, EMA, flip + 1-px shift) and redraw them with
MMPS (DDPM 256 steps, CG 1). After every lap, the FID and IS of unconditional samples (DDIM
256) against the reference images, and the Fréchet distance between the pixels' Gaussian fits
(second-order image statistics, what a covariance approximation gets wrong first); the same
FID and distance of the lap's E-step samples (what the M-step learns from; their floor is the
observed images themselves). One run per corruption level with the Tweedie covariance and, at
75 %, one per heuristic covariance: (I + Σ_t⁻¹)⁻¹ ("identity") and Σ_t ("sigma_t"). Beyond
the paper, each run's final prior then redraws the E-step of the first observations with every
covariance, and the error of those posterior samples on the deleted pixels is measured against
the truth, and against a second draw (for exact posterior samples the two are equal in
expectation: a calibration check): the covariances compared on the same prior, apart from what
the laps made of them.

    python reproduce/table1.py --quick     # 16x16 shapes, 90 %, tiny U-Net: ~18 min, 2 CPU cores
    python reproduce/table1.py --smoke --data-dir DATA  # paper shapes, loops cut to 1-2 steps
    python reproduce/table1.py --data-dir DATA --inception-weights W.pth --device cuda
    torchrun --nproc_per_node=4 reproduce/table1.py --data-dir DATA --inception-weights W.pth \
        --device cuda

The paper's numbers after 32 laps (FID / IS): 5.88 / 8.83 (25 %), 6.76 / 8.75 (50 %),
13.18 / 8.14 (75 %); heuristics at 75 %: 39.94 / 7.69 (identity), 118.69 / 4.23 (Σ_t).
The quick run uses a tiny fixed random feature extractor instead of Inception (its FID is
comparable only between the quick run's rows). Writes results/table1[_quick].{csv,json},
fig4[_quick].png (FID and IS along the laps) and table1[_quick]_samples.png (samples of each
run's last lap).
"""

import dataclasses
import functools
import sys
from pathlib import Path

import torch
from torch import Tensor

from emdm import VESchedule
from emdm.config import (
    NONNEGATIVE,
    POSITIVE,
    at_least,
    config_dict,
    interval,
    option,
    run_identity,
)
from emdm.data import cifar_observations, color_shapes, load_cifar10
from emdm.em import EMConfig, e_step
from emdm.errors import cli
from emdm.experiment import ResumableRun, parse_run, run_in_folder
from emdm.guidance import COVARIANCES
from emdm.metrics import FidelityReference, posterior_calibration
from emdm.metrics.fidelity import INCEPTION, TINY, inception_weights_path
from emdm.observation import Observation
from emdm.operators import MaskOperator
from emdm.plots import image_grid, laps
from emdm.prior import GaussianStart, UNetConfig, draw, learn_prior, load_prior
from emdm.provenance import write_results
from emdm.runs import MetricsLog, RunFolder, write_atomic


@dataclasses.dataclass
class Table1Config(ResumableRun):
    r"""Table 1 and Figure 4: a CIFAR-10 prior learned from masked images only."""

    data: str = option("cifar", "the images: CIFAR-10 or synthetic colour shapes",
                       choices=("cifar", "shapes"))  # fmt: skip
    data_dir: str = option("", "folder holding cifar-10-batches-py/; empty: $EMDM_DATA")
    size: int = option(32, "height and width of the synthetic shapes", check=POSITIVE)
    observations: int = option(
        49920, "the first train images observed (paper: 49 920, batches of 256, drop last)",
        check=at_least(2),
    )  # fmt: skip
    percents: tuple[float, ...] = option(
        (25.0, 50.0, 75.0), "% of pixels deleted, one run each with the Tweedie covariance",
        check=interval(0, 100),
    )  # fmt: skip
    heuristics: tuple[str, ...] = option(
        ("identity", "sigma_t"), "covariances run at heuristic_percent", choices=COVARIANCES
    )
    heuristic_percent: float = option(
        75.0, "% of pixels deleted in the heuristics' runs (paper: 75)", check=interval(0, 100)
    )
    sigma_y: float = option(1e-3, "observation noise std σ_y (paper: 1e-3)", check=POSITIVE)
    net: UNetConfig = option(help="the denoiser's U-Net (--net-* flags)",
                             default_factory=UNetConfig)  # fmt: skip
    em: EMConfig = option(help="the EM laps (--em-* flags)", default_factory=EMConfig)
    start: GaussianStart = option(
        help="the Gaussian fit of q_0 (--start-* flags)", default_factory=GaussianStart
    )
    eval_samples: int = option(
        50176, "unconditional samples per FID (paper: 50 176 = 196 x 256)", check=at_least(10)
    )  # the Inception Score's 10 splits
    eval_steps: int = option(256, "DDIM steps of those samples (paper: 256)", check=POSITIVE)
    reference: int = option(
        50000, "reference images (the train set; synthetic: fresh draws)", check=at_least(2)
    )
    posterior_check: int = option(
        1024, "observations each final prior redraws with every covariance; 0: none",
        check=NONNEGATIVE,
    )  # fmt: skip
    feature_extractor: str = option(
        INCEPTION, f"FID and IS features; {TINY}: a tiny random one, no weights file",
        choices=(INCEPTION, TINY),
    )  # fmt: skip
    inception_weights: str = option("", "the Inception weights file; empty: $EMDM_INCEPTION")
    seed: int = option(0, "seed of the data, masks and runs", check=NONNEGATIVE)

    def __post_init__(self):
        super().__post_init__()
        self.start.check_fit(self.observations)


PAPER = Table1Config(
    name="table1",
    em=EMConfig(iterations=32, train_steps=49920, batch_size=256, lr=2e-4, lr_end=2e-4,
                ema=0.9999, sampler="ddpm", steps=256, cg_iterations=1, dot="batch",
                sample_batch=256, keep_range=0, flip=True, shift=1, seeding="batch",
                mean_samples=16384)
)  # fmt: skip
# At 75 % the quick 16x16 shapes are too easy an inpainting for the covariance to matter: the
# lap-5 E-step samples of both Tweedie and the (I + Σ_t⁻¹)⁻¹ heuristic are near the truth's own
# FID, 0.012 and 0.009 against 0.0075 (results/table1_budgets/run6_75pct_estep). At 90 % a shape
# can lose all but a few pixels, and the E-step must fill it in as on CIFAR-10 at 75 %.
QUICK = Table1Config(
    data="shapes", size=16, observations=512, percents=(90.0,), heuristic_percent=90.0,
    net=UNetConfig(hid_channels=(16, 32), hid_blocks=(1, 1), heads=2, emb_features=64, dropout=0),
    em=dataclasses.replace(PAPER.em, iterations=5, train_steps=384, batch_size=128, lr=1e-3,
                           lr_end=1e-3, ema=0.99, steps=24, mean_samples=512),
    start=GaussianStart(rank=16, iterations=4, observations=512, steps=24, cg_iterations=8),
    eval_samples=1024, eval_steps=24, reference=2048, posterior_check=256,
    feature_extractor="emdm-tiny",
    scale="quick", name="table1_quick",
)  # fmt: skip
# The paper's shapes, network, operator, samplers and solvers (CIFAR 32x32, the 57.6 M U-Net,
# masks at 75 %, DDPM 256-step schedule with CG 1), each loop cut: one percent, both
# heuristics, 1 lap of 1 Adam step on a batch of 4, E-step and evaluation samplers 2 steps, a
# Gaussian fit of 1 iteration of 2 steps and of rank 3, not 64 (its 4 samples span 3
# directions), 10 evaluation samples (the Inception Score's 10 splits) and a posterior check
# of 1 observation; 4 images observed (a batch of 4 on 2 CPU cores). The tiny feature
# extractor: no Inception weights file needed.
SMOKE = dataclasses.replace(
    PAPER, observations=4, percents=(75.0,), reference=10, eval_samples=10, eval_steps=2,
    em=dataclasses.replace(PAPER.em, iterations=1, train_steps=1, batch_size=4, steps=2,
                           sample_batch=4),
    start=dataclasses.replace(PAPER.start, rank=3, iterations=1, observations=4, steps=2),
    posterior_check=1, feature_extractor=TINY, scale="smoke", name="table1_smoke",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    cfg = parse_run(
        Table1Config, argv, quick=QUICK, paper=PAPER, smoke=SMOKE, prog="reproduce/table1.py"
    )
    if cfg is None:  # --dry-run
        return 0
    if cfg.feature_extractor == INCEPTION:
        inception_weights_path(cfg.inception_weights or None)  # missing: stop before any work
    return run_in_folder(cfg, functools.partial(_run, cfg))


def _run(cfg: Table1Config, ctx, device, out: Path, folder: RunFolder) -> None:
    r"""Every run's laps in `folder`, then (rank 0) the posterior checks, published."""
    x, images = _data(cfg)
    schedule = VESchedule(1e-3, 1e2)
    # the reference's statistics in the run's folder: a resume does not recompute them
    reference = FidelityReference(images, feature_extractor=cfg.feature_extractor,
                                  inception_weights=cfg.inception_weights or None,
                                  device=device, cache_dir=folder.path)  # fmt: skip
    if ctx.main:
        _floor(cfg, folder, reference, x)
    for percent, covariance in _runs(cfg):
        _learn(cfg, ctx, device, folder, reference, x, schedule, percent, covariance)
    if ctx.main:
        _publish(cfg, out, folder, x, schedule, device)


def _data(cfg: Table1Config) -> tuple[Tensor, Tensor]:
    r"""The observed images and the reference of FID (synthetic: a fresh truth sample)."""
    if cfg.data == "cifar":
        train = load_cifar10(cfg.data_dir or None)
        return train[: cfg.observations], train[: cfg.reference]
    x = color_shapes(cfg.observations, cfg.size, torch.Generator().manual_seed(cfg.seed))
    return x, color_shapes(cfg.reference, cfg.size, torch.Generator().manual_seed(1))


def _runs(cfg: Table1Config) -> list[tuple[float, str]]:
    r"""The runs (percent deleted, covariance): Tweedie's at each percent, then the heuristics."""
    tweedie = [(p, "tweedie") for p in cfg.percents]
    return tweedie + [(cfg.heuristic_percent, c) for c in cfg.heuristics]


def _observe(cfg: Table1Config, x: Tensor, percent: float) -> tuple[Tensor, Tensor]:
    return cifar_observations(x, percent, torch.Generator().manual_seed(cfg.seed + 7),
                              cfg.sigma_y)  # fmt: skip


def _floor(cfg: Table1Config, folder: RunFolder, reference: FidelityReference, x: Tensor):
    r"""The scores of truth itself, once: fresh truth images as the prior's samples, and the
    observed images as the E-step's (its samples equal to the images observed)."""
    floor = MetricsLog(folder.path / "floor.jsonl")
    if floor.exists():
        return
    truth = load_cifar10(cfg.data_dir or None, "test") if cfg.data == "cifar" else \
        color_shapes(cfg.eval_samples, cfg.size, torch.Generator().manual_seed(2))  # fmt: skip
    values = reference.scores(truth[: cfg.eval_samples]) | {
        f"{k}_estep": v for k, v in reference.scores(x, isc=False).items()
    }
    floor.write([dict(percent=0.0, covariance="truth", em_iteration=0, metric=f"{k}_floor",
                      value=v) for k, v in values.items()])  # fmt: skip


def _learn(cfg, ctx, device, folder, reference, x, schedule, percent, covariance) -> None:
    r"""One run's laps in `<folder>/<covariance>_<percent>`, scored after each lap."""
    label = f"{covariance}_{percent:g}"
    run, log = folder.path / label, MetricsLog(folder.path / label / "metrics.jsonl")
    mask, y = _observe(cfg, x, percent)
    em = dataclasses.replace(cfg.em, covariance=covariance)

    def callback(k, samples, metrics):
        # the E-step's samples scored as the prior's: what the M-step is given to learn
        metrics = metrics | {f"{m}_estep": v for m, v in reference.scores(samples, False).items()}
        log.log([dict(percent=percent, covariance=covariance, em_iteration=k, metric=metric,
                      value=float(value)) for metric, value in metrics.items()])  # fmt: skip

    if ctx.main:
        run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    denoiser = cfg.net.build().to(device)
    evaluate = functools.partial(_evaluate, cfg, reference, schedule, device, run, label)
    obs = Observation(MaskOperator(mask), y, cfg.sigma_y**2)
    learn_prior(denoiser, obs, tuple(x.shape[1:]), em, schedule, cfg.start, directory=run,
                resume=folder.resuming, identity=run_identity(cfg) | {"run": label},
                callback=callback, evaluate=evaluate, ctx=ctx, progress=not cfg.quiet,
                net=cfg.net)  # fmt: skip


def _evaluate(cfg, reference, schedule, device, run, label, k, prior, mean) -> dict:
    r"""Lap `k`'s scores: unconditional samples (DDIM) against the reference; the first 64
    kept for the samples figure."""
    gen = torch.Generator(device).manual_seed(cfg.seed + 1000 + k)
    samples = draw(prior, mean, cfg.eval_samples, schedule, "ddim", cfg.eval_steps,
                   cfg.em.sample_batch, gen, progress=not cfg.quiet).cpu()  # fmt: skip
    m = reference.scores(samples)
    first = samples[:64].clone()
    write_atomic(run / f"samples_{k}.pt", lambda p: torch.save(first, p))
    if not cfg.quiet:
        print(f"{label} lap {k}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()))
    return m


def _publish(cfg, out: Path, folder: RunFolder, x, schedule, device) -> None:
    r"""The runs' logs, floor and posterior checks as one table, with Figure 4 and the
    samples of each run's last lap."""
    rows, finals = MetricsLog(folder.path / "floor.jsonl").rows(), {}
    for percent, covariance in _runs(cfg):
        run = folder.path / f"{covariance}_{percent:g}"
        kept = MetricsLog(run / "metrics.jsonl").rows()  # a lap redone: its last rows
        rows += kept
        last = max(r["em_iteration"] for r in kept)
        finals[f"{covariance}, {percent:g} %, lap {last}"] = torch.load(run / f"samples_{last}.pt")
        rows += posterior_check(cfg, run, x, percent, covariance, last, schedule, device)
    suffix = cfg.name.removeprefix("table1")
    figures = {f"fig4{suffix}.png": laps(rows, ("fid", "isc", "fd_pixels", "fid_estep")),
               f"{cfg.name}_samples.png": image_grid(finals)}  # fmt: skip
    write_results(cfg.name, rows, config_dict(cfg), wall_time=folder.wall_time, out_dir=out,
                  quick=cfg.scale, device=device, segments=folder.segments,
                  figures=figures)  # fmt: skip


def posterior_check(cfg, run, x, percent, covariance, lap, schedule, device) -> list[dict]:
    r"""Beyond the paper, the E-step apart from the laps: the run's final prior redraws the
    posterior samples of the first `cfg.posterior_check` observations with each covariance
    (the same noise for all), twice with independent noise, scored on the deleted pixels by
    :func:`emdm.metrics.posterior_calibration`: `posterior_rmse_<covariance>` against the
    truth and `posterior_spread_<covariance>` between the draws (equal in expectation for exact
    posterior samples). Cached in the run's folder: a finished run re-reports it."""
    cache, n = MetricsLog(run / f"posterior_{lap}.jsonl"), min(cfg.posterior_check, len(x))
    if cache.exists() or n == 0:
        return cache.rows() if n else []
    mask, y = (t[:n] for t in _observe(cfg, x, percent))
    x, obs = x[:n], Observation(MaskOperator(mask), y, cfg.sigma_y**2)
    prior, mean = load_prior(run, device)
    rows = []
    for c in dict.fromkeys(("tweedie", *cfg.heuristics)):
        em = dataclasses.replace(cfg.em, covariance=c)
        draws = []
        for k in (1, 2):  # seeds unused by the laps' E-steps (iterations 1 to lap)
            g = torch.Generator(device).manual_seed(cfg.seed + 1000 + 1000 * k)
            samples, _ = e_step(prior, obs, em, schedule, mean=mean, generator=g,
                                iteration=lap + k, progress=not cfg.quiet)  # fmt: skip
            draws.append(samples.cpu())
        calibration = posterior_calibration(x, *draws, mask.expand_as(x) == 0)
        rows += [dict(percent=percent, covariance=covariance, em_iteration=lap,
                      metric=f"posterior_{name}_{c}", value=value)
                 for name, value in calibration.items()]  # fmt: skip
    cache.write(rows)
    return rows


if __name__ == "__main__":
    sys.exit(cli(main))
