r"""Table 5: the cost of each posterior-sampling method per sampler step.

For each method and step count, on the quick benchmark's prior and one task (`emdm.benchmark`):
network vector-Jacobian products per step (counted on the prior's backward passes, and checked
against the methods' declared counts: DPS 1, ΠGDM 1, TMPD 2, DiffPIR 0, MMPS k + 1), wall time
per step after a warm-up run (CPU here; on CUDA with synchronisation), and peak memory: on CUDA
`max_memory_allocated`, on the CPU the growth of the process's peak resident set over the run,
each measurement in a fresh process so that one method's peak does not hide another's.

    python reproduce/table5.py --quick       # about 1.5 min on 2 CPU cores

The paper configuration runs the same measurements on DPS's FFHQ prior (the ADM U-Net, batch 1,
256 x 256, x4 super-resolution) on a GPU: `python reproduce/table5.py --checkpoint
models/ffhq_10m.pt`; it stops before any work if the file is absent. Writes
results/table5[_quick].{csv,json}.
"""

import dataclasses
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor

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
from emdm.nn.adm import ADMConfig, load_adm
from emdm.provenance import write_results
from emdm.publish import check_writable


@dataclasses.dataclass
class Table5Config(DeviceRun):
    r"""Table 5: the cost of each posterior-sampling method per sampler step."""

    task: str = option("blur", "the inverse problem (paper: sr4)", choices=TASKS)
    batch: int = option(16, "images per call (paper: 1)", check=POSITIVE)
    size: int = option(32, "image size of the quick mixture prior", check=POSITIVE)
    components: int = option(16, "Gaussians of the quick mixture prior", check=POSITIVE)
    std: float = option(0.1, "std of each Gaussian of the quick prior", check=POSITIVE)
    steps: tuple[int, ...] = option(
        (10, 100), "DDIM step counts measured",
        check=interval(1, VPSchedule().T, closed="both"),  # respaced VP steps
    )  # fmt: skip
    methods: tuple[str, ...] = option(METHODS, "posterior-sampling methods", choices=METHODS)
    # a name only: the paper preset names CUDA
    seed: int = option(0, "seed of the prior and the operator", check=NONNEGATIVE)
    checkpoint: str = option("models/ffhq_10m.pt", "DPS's FFHQ checkpoint, the paper's prior")
    adm: ADMConfig = option(
        help="the ADM U-Net of the checkpoint (--adm-* flags)", default_factory=ADMConfig
    )
    scale: str = option("quick", "quick: the mixture prior; paper: DPS's FFHQ", choices=SCALES)


QUICK = Table5Config(name="table5_quick")
PAPER = Table5Config(task="sr4", batch=1, device="cuda", scale="paper", name="table5")


def measure(cfg: Table5Config, name: str, steps: int) -> dict[str, float]:
    r"""Runs one method for `steps` steps and returns its costs (in a fresh process)."""
    device = torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.scale == "quick":
        prior = shape_mixture(cfg.components, cfg.size, cfg.std, g).to(device)
        x = prior.sample(cfg.batch, generator=torch.Generator(device).manual_seed(0))
        shape = (1, cfg.size, cfg.size)
    else:  # the benchmark's FFHQ prior; the cost does not depend on the image
        network = load_adm(cfg.checkpoint, cfg.adm).to(device)
        prior = EpsilonDenoiser(network, VPSchedule(), clip=True)
        shape = (cfg.adm.in_channels, cfg.adm.image_size, cfg.adm.image_size)
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


def _worker(args):
    torch.set_num_threads(args[3])
    return measure(*args[:3])


def main(argv: list[str] | None = None) -> int:
    cfg = parse_run(Table5Config, argv, quick=QUICK, paper=PAPER, prog="reproduce/table5.py")
    if cfg is None:  # --dry-run
        return 0
    try:
        check_device(cfg.device)
        if cfg.scale != "quick":
            load_adm(cfg.checkpoint, cfg.adm)  # stops here if the file is absent or wrong
    except (FileNotFoundError, ValueError) as error:
        print(f"reproduce/table5.py: {error}", file=sys.stderr)
        return 2
    check_writable(cfg.out)
    start, rows = time.perf_counter(), []
    threads = torch.get_num_threads()
    context = multiprocessing.get_context("spawn")
    # a fresh process per measurement: a peak resident set only grows
    pool = ProcessPoolExecutor(1, mp_context=context, max_tasks_per_child=1)
    for steps in cfg.steps:
        for name in cfg.methods:
            costs = pool.submit(_worker, (cfg, name, steps, threads)).result()
            rows += [{"task": cfg.task, "method": name, "steps": steps, "metric": k, "value": v}
                     for k, v in costs.items()]  # fmt: skip
            if not cfg.quiet:
                print(name, steps, {k: round(v, 3) for k, v in costs.items()})
    pool.shutdown()
    write_results(cfg.name, rows, config_dict(cfg), wall_time=time.perf_counter() - start,
                  out_dir=cfg.out, quick=cfg.scale == "quick", device=cfg.device)  # fmt: skip
    if not cfg.quiet:
        table = pd.DataFrame(rows).pivot_table(index=["method", "steps"], columns="metric",
                                               values="value")  # fmt: skip
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    mismatched = [r for r in rows if r["metric"] == "vjps_per_step"
                  and r["value"] != vjps_per_call(r["method"])]  # fmt: skip
    return 1 if mismatched else 0


if __name__ == "__main__":
    sys.exit(cli(main))
