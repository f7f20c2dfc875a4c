r"""Table 5: the cost of each posterior-sampling method per sampler step.

For each method and step count, on one prior and one task (`emdm.benchmark`): network
vector-Jacobian products per step (counted on the prior's backward passes, and checked
against the methods' declared counts: DPS 1, ΠGDM 1, TMPD 2, DiffPIR 0, MMPS k + 1), wall time
per step after a warm-up run (on CUDA with synchronisation), and peak memory: on CUDA
`max_memory_allocated` (weights included, as the paper's), on the CPU the growth of the
process's peak resident set over the run, a coarse proxy (it leaves out the weights and counts
the allocator's pages, not tensors); each measurement in a fresh process so that one method's
peak does not hide another's. The prior (`--prior`) is one of

* `mixture` (`--quick`): the quick benchmark's Gaussian mixture, whose denoiser is closed-form
  and nearly free, so its milliseconds are the methods' own overhead, not Table 5's regime;
* `adm-random` (`--network`): the paper's ADM U-Net (:class:`emdm.nn.adm.ADMUNet`) with seeded
  random weights (:func:`emdm.nn.init.fan_in_uniform_`; a pass costs the same whatever the
  weights), at CPU size: 64 x 64 images, 32 channels, 16 per attention head (the paper's 256,
  128 and 64, each / 4), its six levels with one residual block each and attention at the
  level downsampled 16 times, x4 super-resolution, batch 1: the network dominates each step;
* `adm` (the paper preset, on a GPU): DPS's FFHQ checkpoint in that U-Net at 256 x 256; it
  stops before any work if the file is absent.

With `--summary` (on in the network preset), also MMPS's cost per extra solver iteration: the
least-squares line ms_per_step = a + b k over its measured k (rows `mmps`, `ms_per_iteration`
b, `ms_intercept` a; the paper: b ≈ 16 ms on its GPU), and each MMPS's peak memory over DPS's
and ΠGDM's (`memory_over_dps`, `memory_over_pgdm`; the paper: ≈ 1.10).

    python reproduce/table5.py --quick       # about 1.5 min on 2 CPU cores
    python reproduce/table5.py --network     # 5.4 min on 2 CPU cores shared with other jobs
    python reproduce/table5.py --checkpoint models/ffhq_10m.pt     # the paper's, on a GPU
    python reproduce/table5.py --smoke       # the paper's U-Net, random weights, 1 step

Writes results/table5{_quick,_network,}.{csv,json}.
"""

import argparse
import dataclasses
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import torch

from emdm import VPDDIM, VPSchedule
from emdm.benchmark import (
    METHODS,
    TASKS,
    CountingDenoiser,
    method,
    shape_mixture,
    task,
    vjps_per_call,
)
from emdm.config import (
    NONNEGATIVE,
    POSITIVE,
    SCALES,
    check_device,
    config_dict,
    interval,
    option,
)
from emdm.denoisers import EpsilonDenoiser
from emdm.errors import cli
from emdm.experiment import DeviceRun, parse_run
from emdm.guidance import BASELINES
from emdm.nn.adm import ADMConfig, ADMUNet, load_adm
from emdm.nn.init import fan_in_uniform_
from emdm.provenance import write_results
from emdm.publish import check_writable
from emdm.threads import set_threads

#: The baselines, then MMPS with 1 to 5 solver iterations (the benchmark's 1, 3, 5 among them).
SWEEP = (*BASELINES, *(f"mmps{k}" for k in range(1, 6)))
PRIORS = ("mixture", "adm-random", "adm")


@dataclasses.dataclass
class Table5Config(DeviceRun):
    r"""Table 5: the cost of each posterior-sampling method per sampler step. Presets: the
    paper's (default), `--quick` (the mixture prior) and `--network` (the ADM U-Net with random
    weights at CPU size; `--network --help` shows its defaults)."""

    task: str = option("blur", "the inverse problem (paper: sr4)", choices=TASKS)
    batch: int = option(16, "images per call (paper: 1)", check=POSITIVE)
    size: int = option(32, "image size of the quick mixture prior", check=POSITIVE)
    components: int = option(16, "Gaussians of the quick mixture prior", check=POSITIVE)
    std: float = option(0.1, "std of each Gaussian of the quick prior", check=POSITIVE)
    steps: tuple[int, ...] = option(
        (10, 100), "DDIM step counts measured",
        check=interval(1, VPSchedule().T, closed="both"),  # respaced VP steps
    )  # fmt: skip
    methods: tuple[str, ...] = option(METHODS, "posterior-sampling methods", choices=SWEEP)
    # a name only: the paper preset names CUDA
    seed: int = option(0, "seed of the prior and the operator", check=NONNEGATIVE)
    prior: str = option(
        "mixture", "mixture: the quick prior; adm-random: the ADM U-Net of --adm-* with seeded "
        "random weights; adm: DPS's FFHQ checkpoint", choices=PRIORS,
    )  # fmt: skip
    checkpoint: str = option("models/ffhq_10m.pt", "DPS's FFHQ checkpoint, the paper's prior")
    adm: ADMConfig = option(
        help="the ADM U-Net of the checkpoint or of adm-random (--adm-* flags)",
        default_factory=ADMConfig,
    )
    summary: bool = option(
        False, "also MMPS's ms per extra solver iteration (least squares over its k) and its "
        "peak memory over DPS's and ΠGDM's",
    )  # fmt: skip
    scale: str = option("quick", "scale the results are labelled with", choices=SCALES)


QUICK = Table5Config(name="table5_quick")
PAPER = Table5Config(task="sr4", batch=1, device="cuda", methods=SWEEP, prior="adm", summary=True,
                     scale="paper", name="table5")  # fmt: skip
NETWORK = Table5Config(
    task="sr4", batch=1, steps=(10,), methods=SWEEP, prior="adm-random", summary=True,
    adm=ADMConfig(image_size=64, model_channels=32, attention_resolutions=(4,),
                  num_head_channels=16),
    name="table5_network",
)  # fmt: skip
# the paper preset's ADM U-Net at 256 x 256, task and batch, with seeded random weights (no
# checkpoint) on the CPU: one DDIM step (after the 2-step warm-up) of MMPS with one solver
# iteration, the method with the most VJPs at k = 1 (about 2 min on 2 CPU cores shared)
SMOKE = dataclasses.replace(PAPER, device="cpu", steps=(1,), methods=("mmps1",),
                            prior="adm-random", scale="smoke", name="table5_smoke")  # fmt: skip


def build_prior(cfg: Table5Config, generator: torch.Generator):
    r"""The prior of `cfg.prior`, on the CPU, and the shape :math:`(C, H, W)` of its images."""
    if cfg.prior == "mixture":
        prior = shape_mixture(cfg.components, cfg.size, cfg.std, generator)
        return prior, (1, cfg.size, cfg.size)
    if cfg.prior == "adm":
        network = load_adm(cfg.checkpoint, cfg.adm)
    else:  # without the zero-initialised output layers, the output is not constant
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            network = fan_in_uniform_(ADMUNet(cfg.adm))
    prior = EpsilonDenoiser(network, VPSchedule(), clip=True)
    return prior, (cfg.adm.in_channels, cfg.adm.image_size, cfg.adm.image_size)


def measure(cfg: Table5Config, name: str, steps: int) -> dict[str, float]:
    r"""Runs one method for `steps` steps and returns its costs (in a fresh process)."""
    device = torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed)
    prior, shape = build_prior(cfg, g)
    prior = prior.to(device)
    if cfg.prior == "mixture":
        x = prior.sample(cfg.batch, generator=torch.Generator(device).manual_seed(0))
    else:  # the cost does not depend on the image
        x = torch.zeros((cfg.batch, *shape), device=device)
    T = task(cfg.task)
    A = T.operator(cfg.batch, shape[-1], g)
    A = A.to(device)
    y = A(x.reshape(cfg.batch, *shape))
    counting = CountingDenoiser(prior)
    denoiser = method(name, counting, A, y, T.sigma_y**2)
    x1 = torch.randn((cfg.batch, *shape), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the problem built, nothing run
    VPDDIM(denoiser, VPSchedule(), steps=2)(x1)  # warm-up
    counting.backwards = 0
    sync()
    start = time.perf_counter()
    VPDDIM(denoiser, VPSchedule(), steps=steps)(x1, torch.Generator(device).manual_seed(1))
    sync()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # kilobytes on Linux
        memory = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    return {"vjps_per_step": counting.backwards / steps,
            "declared_vjps_per_step": vjps_per_call(name),
            "ms_per_step": 1e3 * seconds / steps, "peak_memory_mb": memory}  # fmt: skip


def summarize(costs: dict[str, dict[str, float]]) -> dict[tuple[str, str], float]:
    r"""From one step count's costs by method, `(method, metric): value`: the least-squares
    line :math:`\text{ms} = a + b k` over MMPS's measured :math:`k` (`("mmps",
    "ms_per_iteration")` :math:`b`, `("mmps", "ms_intercept")` :math:`a`), given two :math:`k`
    or more, and each MMPS's peak memory over DPS's and ΠGDM's, for those measured."""
    mmps = [m for m in costs if m.startswith("mmps")]
    k = [int(m[4:]) for m in mmps]
    out = {}
    if len(set(k)) > 1:
        b, a = np.polyfit(k, [costs[m]["ms_per_step"] for m in mmps], 1)
        out["mmps", "ms_per_iteration"], out["mmps", "ms_intercept"] = float(b), float(a)
    for base in ("dps", "pgdm"):
        if base in costs and costs[base]["peak_memory_mb"] > 0:
            for m in mmps:
                ratio = costs[m]["peak_memory_mb"] / costs[base]["peak_memory_mb"]
                out[m, f"memory_over_{base}"] = ratio
    return out


def _worker(args):
    set_threads(args[3])
    return measure(*args[:3])


def parse(argv: list[str] | None) -> Table5Config | None:
    r"""The config: `--network` selects the network preset in the paper preset's place."""
    argv = list(sys.argv[1:] if argv is None else argv)
    network = "--network" in argv
    if network and ("--quick" in argv or "--smoke" in argv):
        argparse.ArgumentParser(prog="reproduce/table5.py").error(
            "--network, --quick and --smoke are presets: pass one"
        )
    argv = [a for a in argv if a != "--network"]
    paper = NETWORK if network else PAPER
    return parse_run(
        Table5Config, argv, quick=QUICK, paper=paper, smoke=SMOKE, prog="reproduce/table5.py"
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    if cfg is None:  # --dry-run
        return 0
    try:
        check_device(cfg.device)
        if cfg.prior == "adm":
            load_adm(cfg.checkpoint, cfg.adm)  # stops here if the file is absent or wrong
    except (FileNotFoundError, ValueError) as error:
        print(f"reproduce/table5.py: {error}", file=sys.stderr)
        return 2
    check_writable(cfg.out)
    start, rows = time.perf_counter(), []
    threads = torch.get_num_threads()  # as parse_run set it; each worker starts with torch's
    context = multiprocessing.get_context("spawn")
    # a fresh process per measurement: a peak resident set only grows
    pool = ProcessPoolExecutor(1, mp_context=context, max_tasks_per_child=1)
    for steps in cfg.steps:
        measured = {}
        for name in cfg.methods:
            costs = measured[name] = pool.submit(_worker, (cfg, name, steps, threads)).result()
            rows += [{"task": cfg.task, "method": name, "steps": steps, "metric": k, "value": v}
                     for k, v in costs.items()]  # fmt: skip
            if not cfg.quiet:
                print(name, steps, {k: round(v, 3) for k, v in costs.items()})
        if cfg.summary:
            rows += [{"task": cfg.task, "method": m, "steps": steps, "metric": k, "value": v}
                     for (m, k), v in summarize(measured).items()]  # fmt: skip
    pool.shutdown()
    write_results(cfg.name, rows, config_dict(cfg), wall_time=time.perf_counter() - start,
                  out_dir=cfg.out, quick=cfg.scale, device=cfg.device)  # fmt: skip
    if not cfg.quiet:
        table = pd.DataFrame(rows).pivot_table(index=["method", "steps"], columns="metric",
                                               values="value")  # fmt: skip
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    mismatched = [r for r in rows if r["metric"] == "vjps_per_step"
                  and r["value"] != vjps_per_call(r["method"])]  # fmt: skip
    return 1 if mismatched else 0


if __name__ == "__main__":
    sys.exit(cli(main))
