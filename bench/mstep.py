r"""One Adam step of emdm's M-step against a plain eager PyTorch step of the same network.

The problem is the manifold experiment's (Figure 3): an EDM-preconditioned 3 x 256
:class:`emdm.nn.TimeMLP` on :math:`x \in \mathbb{R}^5`, batch 1024. Variants, each timed per
step as the median of interleaved rounds (in rotating order, so that drift falls on every variant
alike), in one process:

* `plain`: what a user writes in a plain loop: the batch drawn once, then per step the EDM
  denoising loss (:func:`emdm.loss.denoising_loss`), `zero_grad`, `backward` and a
  `torch.optim.Adam` step with torch's defaults (on the CPU, its one-tensor-at-a-time loop);
* `emdm`: :func:`emdm.em.m_step` as EM runs it: a fresh batch drawn with replacement per step,
  its noise levels and noise drawn from the run's generator, the loss, the gradient clip and
  Adam with the multi-tensor update (:func:`emdm.em.optimizer_for`), the learning rate set per
  step;
* `emdm_fused`: the same with `torch.optim.Adam(fused=True)` (its results differ from the
  loop's by float rounding, so EM does not use it by default);
* `emdm_compiled` (with `--compile`): `EMConfig(compile=True)`, the loss and its backward
  compiled by `torch.compile` (minutes of compilation first, not timed).

Issue 19's target: `emdm` at most 0.7 x `plain` on idle cores. The result records the thread
count and the load average before and after (`bench.common.conditions`); run it on idle cores, or
read its ratios, which interleaving keeps fair when the load is steady.

    .venv/bin/python -m bench.mstep                 # about a minute on 2 idle cores
    .venv/bin/python -m bench.mstep --threads 1 --out results/bench/mstep_cpu_1thread
"""

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import conditions, iqr, set_threads, synchronizer, timed, write_timed_results
from emdm import VESchedule
from emdm.config import DEVICE, NONNEGATIVE, POSITIVE, Checked, check_device, option, parse_config
from emdm.em import EMConfig, m_step, optimizer_for
from emdm.loss import beta33, denoising_loss
from emdm.prior import MLPConfig

BENCHMARK = "mstep"


@dataclasses.dataclass
class Config(Checked):
    r"""An M-step Adam step against a plain eager one; saved beside its results."""

    batch: int = option(1024, "batch of an Adam step (the manifold's: 1024)", check=POSITIVE)
    samples: int = option(8192, "samples the M-step draws its batches from", check=POSITIVE)
    steps: int = option(20, "Adam steps per timed round", check=POSITIVE)
    rounds: int = option(15, "timed rounds per variant, interleaved", check=POSITIVE)
    warmup: int = option(2, "untimed rounds first", check=NONNEGATIVE)
    compile: bool = option(False, "also time the torch.compile'd M-step (minutes to compile)")
    threads: int = option(0, "torch threads; 0: the count in force", check=NONNEGATIVE)
    device: str = option("cpu", "device of the steps", check=DEVICE)
    seed: int = option(0, "seed of the network and the data", check=NONNEGATIVE)
    out: str = option("results/bench/mstep_cpu", "output path, without the suffix")
    quiet: bool = option(False, "print nothing")

    def __post_init__(self):
        super().__post_init__()
        check_device(self.device)


def _network(cfg: Config, device) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)  # the same initialization for every variant
    return MLPConfig().build().to(device)


def plain_step(cfg: Config, samples: torch.Tensor) -> Callable[[], None]:
    r"""`steps` plain eager training steps on one batch drawn up front."""
    denoiser = _network(cfg, samples.device)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-3)
    g = torch.Generator(samples.device).manual_seed(cfg.seed)
    x = samples[: cfg.batch]
    sigma = VESchedule(1e-3, 10.0).sigma_ve(beta33(cfg.batch, g, device=samples.device))
    z = torch.randn(x.shape, generator=g, device=samples.device)

    def run():
        for _ in range(cfg.steps):
            loss = denoising_loss(denoiser, x, sigma, z)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return run


def emdm_step(cfg: Config, samples: torch.Tensor, **options) -> Callable[[], None]:
    r"""`steps` Adam steps of :func:`emdm.em.m_step`; `options`: `fused` (Adam's) or
    `compile` (the EM config's)."""
    denoiser = _network(cfg, samples.device)
    em = EMConfig(
        train_steps=cfg.steps, batch_size=cfg.batch, compile=options.get("compile", False)
    )
    optimizer = optimizer_for(denoiser, em)
    if options.get("fused"):
        optimizer = torch.optim.Adam(denoiser.parameters(), lr=em.lr, fused=True)
    g = torch.Generator(samples.device).manual_seed(cfg.seed)
    schedule = VESchedule(1e-3, 10.0)
    return lambda: m_step(denoiser, samples, em, schedule, optimizer, g)


def measure(cfg: Config) -> dict[str, list[float]]:
    r"""Milliseconds per Adam step of each variant, one value per timed round."""
    device = torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed)
    samples = torch.randn((cfg.samples, 5), generator=g).to(device)
    calls = {"plain": plain_step(cfg, samples), "emdm": emdm_step(cfg, samples),
             "emdm_fused": emdm_step(cfg, samples, fused=True)}  # fmt: skip
    if cfg.compile:
        calls["emdm_compiled"] = emdm_step(cfg, samples, compile=True)
        calls["emdm_compiled"]()  # the compilation, untimed
    sync, names = synchronizer(device), list(calls)
    times = {name: [] for name in names}
    for r in range(cfg.warmup + cfg.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            ms = timed(calls[name], sync) / cfg.steps
            if r >= cfg.warmup:
                times[name].append(ms)
    return times


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(Config, argv, prog="bench/mstep.py")
    cfg.threads = set_threads(cfg.threads)
    start, before = time.perf_counter(), conditions()
    times = measure(cfg)
    wall_s = time.perf_counter() - start
    plain = statistics.median(times["plain"])
    rows = []
    for name, values in times.items():
        ms = statistics.median(values)
        ratio = statistics.median(a / b for a, b in zip(values, times["plain"], strict=True))
        rows += [dict(benchmark=BENCHMARK, device=cfg.device, threads=cfg.threads,
                      batch=cfg.batch, variant=name, metric=metric, value=value)
                 for metric, value in (("ms_per_step", ms), ("ms_per_step_iqr", iqr(values)),
                                       ("over_plain", ms / plain),
                                       ("over_plain_paired", ratio))]  # fmt: skip
        if not cfg.quiet:
            print(f"{name:>14}: {ms:7.2f} ms per step, {ms / plain:.3f} x plain")
    out = Path(cfg.out)
    target = {"target": "emdm <= 0.7 x plain on idle cores (issue 19)"}
    csv, _ = write_timed_results(out.name, rows, cfg, wall_time=wall_s, out_dir=out.parent,
                                 device=cfg.device, before=before, extra=target)  # fmt: skip
    if not cfg.quiet:
        print(f"{cfg.threads} threads, load {conditions()['loadavg']}; wrote {csv}")


if __name__ == "__main__":
    main()
