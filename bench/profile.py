r"""Profiles emdm's hot paths with :mod:`torch.profiler`, attributing time to emdm's regions.

The targets are the parts of an EM lap (Algorithm 1 of the paper) on two problems. Without a
suffix, the manifold experiment of Figure 3 (`reproduce/fig3.py`, quick preset): points of a
1-D curve in :math:`\mathbb{R}^5`, observed through per-observation :math:`2 \times 5` dense
operators with :math:`\sigma_y = 0.01`, an EDM-preconditioned 3 x 256 TimeMLP denoiser, the VE
schedule :math:`\sigma \in [10^{-3}, 10]`. With `-image`, the quick problem of Table 1
(`reproduce/table1.py`): 16 x 16 colour shapes with 90 % of the pixels deleted (masks shared over
RGB, :math:`\sigma_y = 10^{-3}`), the quick preset's small U-Net, :math:`\sigma \in [10^{-3},
10^2]`. Each uses its preset's EM settings (batch, sampler, solver, CG iterations, augmentation,
EMA), with the Tweedie covariance, whose solve runs through the network's Jacobian (the quick
Figure 3 runs it beside the paper code's fixed covariance):

* `mstep`: :func:`emdm.m_step`, `--steps` Adam steps on batches of `--batch` (default: the
  preset's 1024, or 128 for images). The data are the true points or images (the cost of a
  step does not depend on what the samples are).
* `estep`: one :func:`emdm.e_step` over `--batch` observations (1024, or 256 for images) with
  `--steps` sampler steps: the preset's sampler (`pc`: two MMPS calls per step; images: `ddpm`)
  and solver (the manifold's dense solve: one VJP per element of :math:`y`; images: CG, 1
  iteration), plus the final denoiser call.
* `mmps`: `--steps` calls of :class:`emdm.MMPS` (CG with the preset's iterations, Tweedie) on a
  batch of `--batch` :math:`x_t` (256) at :math:`\sigma_t = 1`, under `no_grad` as in a sampler.
* `sampler`: :func:`emdm.sample` around one such MMPS, `--steps` steps of the preset's
  sampler from :math:`x_1 = \sigma(1) z` (1024, or 256 for images): the E-step's loop without
  its batching, with CG everywhere.
* `lap`: one M-step then one E-step, each of `--steps` steps, at `--batch` (as `mstep`: 1024,
  or 128 for images); time is reported per step, an Adam step and a sampler step together.

`--warmup` iterations (of the same unit as `--steps`) run first, untimed and unprofiled.

    .venv/bin/python -m bench.profile mstep
    .venv/bin/python -m bench.profile estep-image --steps 4 --threads 1
    .venv/bin/python -m bench.profile lap --device cuda --steps 64

Each takes seconds to about a minute on 2 CPU cores, most of it in the profiler's parse of
its events. On cores shared with other processes, prefer
`--threads 1`: threads that wait for each other at every parallel op inflate every range.

Outputs, under `--out` (`results/profile`), named `<target>_<device>`:

* `.trace.json`: the Chrome trace (`.trace.json.gz` above 4 MB: Perfetto opens it as it is).
  Open it in https://ui.perfetto.dev or chrome://tracing. Each `emdm::` range is a bar that
  holds the aten operations it ran; on CUDA the kernels are on the GPU streams' rows, and the
  backward of a VJP runs on the autograd engine's thread, beside the range that waits for it.
* `.txt`: the top `--rows` operations by self time (CPU; on CUDA, device), from
  `key_averages()`: what the time is spent *in* (matmuls, convolutions, copies, the optimizer's
  foreach kernels), while the ranges say *for what*.
* `.csv` and `.json`: per region (`emdm.profiling.REGIONS`) its calls, total time (the range's
  wall time, nested ranges included), self time (total minus the emdm ranges nested in it),
  both per iteration and as shares of the profiled wall time; the rows `floor`
  (`emdm::forward` + `emdm::vjp`, the cost MMPS cannot avoid: one forward and its VJPs, see
  `bench/mmps_cost.py`), `outside` (the wall time in no emdm range: the sampler's and the
  M-step's own algebra, data moves, generators) and `wall` (the profiled wall time, per
  iteration). The JSON holds the config, the provenance and the threads and load average before
  and after (a timing on shared cores means little without them).

The ranges (:mod:`emdm.profiling`): `emdm::forward` the denoiser's forward inside a posterior
denoiser (network and preconditioning); `emdm::vjp` one vector-Jacobian product through its
graph; `emdm::solve` the linear solve of MMPS, its VJPs nested, so that *its self time is the
solver's algebra* (CG's updates and inner products, the dense solve's eigendecomposition) and
the operator applications of its matrix-vector products; `emdm::operator` :math:`A` and
:math:`A^T` outside the solve (the residual and the final correction); `emdm::loss` an M-step
batch's denoising loss, its forward pass included; `emdm::backward` its backward pass;
`emdm::optimizer` the gradient clip, Adam's step and the EMA. The total shares of nested ranges
overlap; the self shares and `outside` add up to 1. An MMPS call costs at least the floor: the
further its total is above it, the more the solve's algebra and the operators cost.

Warning:
    A profiler slows what it records (by a few microseconds an operation): compare the wall
    time per iteration with an unprofiled timing (`bench/mmps_cost.py`) before trusting the
    shares of small operations. On CUDA the ranges are host times: they measure launches, not
    kernels, except where the host waits (a `.item()`, the samplers' finiteness check); read
    the table's device times and the trace's GPU rows instead, or `device_ms` per region in the
    JSON (the span of the range on the GPU streams).

References:
    | Learning Diffusion Priors from Observations by Expectation Maximization
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

import argparse
import copy
import dataclasses
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity

import emdm
from bench.common import conditions, set_threads, synchronizer, write_timed_results
from emdm.config import (
    DEVICE,
    NONNEGATIVE,
    POSITIVE,
    Checked,
    check_device,
    config_dict,
    config_parser,
    option,
)
from emdm.data import cifar_observations, color_shapes
from emdm.data import manifold_problem as manifold_data
from emdm.em import EMConfig
from emdm.errors import cli
from emdm.observation import Observation
from emdm.profiling import FORWARD, REGIONS, VJP
from emdm.publish import check_writable
from emdm.runs import write_atomic
from emdm.schedule import Schedule
from reproduce.fig3 import QUICK as FIG3
from reproduce.table1 import QUICK as TABLE1

BENCHMARK = "profile"
#: the parts of a lap, each a target on the manifold and, with `-image`, on the images
PARTS = ("mstep", "estep", "mmps", "sampler", "lap")
TARGETS = (*PARTS, *(f"{part}-image" for part in PARTS))
#: a trace larger than this is written gzipped
GZIP_BYTES = 4 << 20
#: the VE schedules' sigma(0) and sigma(1): reproduce/fig3.py's and reproduce/table1.py's
SIGMAS = {"manifold": (1e-3, FIG3.sigma_max), "image": (1e-3, 1e2)}
#: the batch of each part with --batch 0: the presets' M-step batches and the images' E-step
#: batch; the manifold's E-step at 1024 (of its 4096), MMPS at bench/mmps_cost.py's 256
BATCHES = {
    "manifold": {"mstep": FIG3.em.batch_size, "estep": 1024, "mmps": 256, "sampler": 1024,
                 "lap": FIG3.em.batch_size},
    "image": {"mstep": TABLE1.em.batch_size, "estep": TABLE1.em.sample_batch, "mmps": 256,
              "sampler": TABLE1.em.sample_batch, "lap": TABLE1.em.batch_size},
}  # fmt: skip


@dataclasses.dataclass
class Flags(Checked):
    r"""Profiles one of emdm's hot paths (TARGET: see the module's docstring) with
    torch.profiler; writes a Chrome trace, a table of the top operations and the time of each
    emdm:: range under --out."""

    steps: int = option(
        8, "iterations profiled: Adam steps, sampler steps or MMPS calls", check=POSITIVE
    )
    batch: int = option(0, "batch size; 0: the target's default", check=NONNEGATIVE)
    warmup: int = option(2, "untimed iterations first, of the same unit", check=NONNEGATIVE)
    threads: int = option(
        0, "torch threads; 0: torch's default, resolved before saving", check=NONNEGATIVE
    )
    device: str = option("cpu", "device of the run", check=DEVICE)
    out: str = option("results/profile", "output folder")
    rows: int = option(30, "rows of the table of top operations", check=POSITIVE)
    seed: int = option(0, "seed of the network and the problem", check=NONNEGATIVE)
    quiet: bool = option(False, "print nothing but errors")
    dry_run: bool = option(False, "print the resolved config and exit")


@dataclasses.dataclass
class Config(Flags):
    r"""The resolved configuration of one profile, saved beside its results."""

    target: str = option("mstep", "what to profile", choices=TARGETS)

    def __post_init__(self):
        super().__post_init__()
        check_device(self.device)  # whether torch sees it: before any work

    @property
    def problem(self) -> str:
        return "image" if self.target.endswith("-image") else "manifold"

    @property
    def part(self) -> str:
        return self.target.removesuffix("-image")

    @property
    def batch_size(self) -> int:
        return self.batch or BATCHES[self.problem][self.part]


@dataclasses.dataclass
class Problem:
    r"""A seeded EM problem on a device: the denoiser, the schedule, the observations
    :math:`(A, y, \Sigma_y)` with :math:`y` :math:`(N, *)`, data :math:`(N, *)` to train on and
    the preset's EM settings (Tweedie covariance)."""

    denoiser: nn.Module
    schedule: Schedule
    obs: Observation
    data: Tensor
    em: EMConfig
    generator: torch.Generator

    @property
    def mean(self) -> Tensor:
        r"""The samplers' start mean: zero, with the event shape of :math:`x`."""
        return torch.zeros_like(self.data[0])


def manifold_problem(n: int, device: torch.device, seed: int) -> Problem:
    r"""Figure 3's quick problem with `n` observations (drawn on the CPU, as the figure does)."""
    data = manifold_data(n, FIG3.sigma_y, seed)
    torch.manual_seed(seed)  # the network's initialization
    denoiser = FIG3.net.build()
    em = dataclasses.replace(FIG3.em, covariance="tweedie")
    return _problem(denoiser, "manifold", data.obs, data.x, em, device, seed)


def image_problem(n: int, device: torch.device, seed: int) -> Problem:
    r"""Table 1's quick problem with `n` masked images :math:`(n, 3, 16, 16)`."""
    cfg = TABLE1
    x = color_shapes(n, cfg.size, torch.Generator().manual_seed(seed))  # (n, 3, H, W)
    mask, y = cifar_observations(x, cfg.percents[0], torch.Generator().manual_seed(seed + 7),
                                 cfg.sigma_y)  # fmt: skip
    obs = Observation(emdm.MaskOperator(mask), y, cfg.sigma_y**2)
    torch.manual_seed(seed)
    denoiser = cfg.net.build()
    em = dataclasses.replace(cfg.em, covariance="tweedie")
    return _problem(denoiser, "image", obs, x, em, device, seed)


def _problem(denoiser, kind, obs, x, em, device, seed) -> Problem:
    schedule = emdm.VESchedule(*SIGMAS[kind])
    generator = torch.Generator(device).manual_seed(seed)
    return Problem(denoiser.to(device).eval(), schedule, obs.to(device), x.to(device), em,
                   generator)  # fmt: skip


@dataclasses.dataclass
class Workload:
    r"""What a target runs: `run(n)` does `n` iterations of `unit`."""

    run: Callable[[int], object]
    unit: str


def mstep(p: Problem, batch: int) -> Workload:
    r""":func:`emdm.m_step` on batches of `batch`, with the preset's Adam, clip, augmentation
    and EMA."""
    optimizer = torch.optim.Adam(p.denoiser.parameters(), lr=p.em.lr)
    ema = copy.deepcopy(p.denoiser).requires_grad_(False) if p.em.ema > 0 else None  # as run_em

    def run(n: int) -> None:
        em = dataclasses.replace(p.em, train_steps=n, batch_size=batch)
        emdm.m_step(p.denoiser, p.data, em, p.schedule, optimizer, p.generator, ema=ema)

    return Workload(run, "Adam step")


def estep(p: Problem, batch: int) -> Workload:
    r""":func:`emdm.e_step` on the first `batch` observations, in one batch."""
    obs = p.obs[:batch]

    def run(n: int) -> None:
        em = dataclasses.replace(p.em, steps=n, sample_batch=batch)
        emdm.e_step(p.denoiser, obs, em, p.schedule, mean=p.mean, generator=p.generator)

    return Workload(run, "sampler step")


def _mmps(p: Problem, batch: int) -> emdm.MMPS:
    r"""MMPS on the first `batch` observations with the preset's CG iterations."""
    A, y, cov_y = p.obs[:batch]
    return emdm.MMPS(p.denoiser, A, y, cov_y, p.em.covariance, p.em.cg_iterations,
                     dot=p.em.dot, solver="cg")  # fmt: skip


def mmps(p: Problem, batch: int) -> Workload:
    r"""Calls of MMPS at :math:`x_t = x + \sigma_t z`, :math:`\sigma_t = 1`."""
    posterior = _mmps(p, batch)
    x = p.data[:batch]
    sigma = torch.ones(len(x), device=x.device)
    x_t = x + torch.randn(x.shape, generator=p.generator, device=x.device)  # (B, *), σ_t = 1

    @torch.no_grad()  # as inside a sampler: MMPS enables grad where it needs it
    def run(n: int) -> None:
        for _ in range(n):
            posterior(x_t, sigma)

    return Workload(run, "MMPS call")


def sampler(p: Problem, batch: int) -> Workload:
    r"""The preset's sampler around MMPS, from :math:`x_1 = \mu + \sigma(1) z`."""
    posterior = _mmps(p, batch)
    sigma_1 = p.schedule.sigma_ve(torch.ones((), dtype=torch.float64)).item()
    z = torch.randn((batch, *p.data.shape[1:]), generator=p.generator, device=p.data.device)
    x1 = p.mean + sigma_1 * z

    def run(n: int) -> None:
        emdm.sample(posterior, x1, p.schedule, p.em.sampler, n, generator=p.generator)

    return Workload(run, "sampler step")


def lap(p: Problem, batch: int) -> Workload:
    r"""An M-step, then an E-step, of as many steps each."""
    train, draw = mstep(p, batch), estep(p, batch)

    def run(n: int) -> None:
        train.run(n)
        draw.run(n)

    return Workload(run, "lap step (an Adam step and a sampler step)")


PROBLEMS = {"manifold": manifold_problem, "image": image_problem}
WORKLOADS = {"mstep": mstep, "estep": estep, "mmps": mmps, "sampler": sampler, "lap": lap}


def workload(cfg: Config, device: torch.device) -> Workload:
    r"""Builds the problem and the workload of `cfg.target`."""
    problem = PROBLEMS[cfg.problem](cfg.batch_size, device, cfg.seed)
    return WORKLOADS[cfg.part](problem, cfg.batch_size)


def profile(work: Workload, cfg: Config, device: torch.device):
    r"""Runs `cfg.warmup` iterations, then `cfg.steps` under the profiler (CPU activity, and
    CUDA's on a CUDA device); returns the profiler and the profiled wall time in seconds."""
    sync = synchronizer(device)
    if cfg.warmup > 0:
        work.run(cfg.warmup)
    sync()
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        work.run(cfg.steps)
        sync()
        wall_s = time.perf_counter() - start
    return prof, wall_s


def region_summary(events: Iterable, wall_ms: float) -> dict[str, dict[str, float]]:
    r"""The time of each emdm region among the profiler's `events`, in milliseconds.

    Per region of :data:`emdm.profiling.REGIONS`: `calls`; `total_ms`, the sum of its ranges'
    wall times on the host; `self_ms`, that minus the emdm ranges nested directly in them;
    `share` and `self_share`, those over `wall_ms`; and, for a device's ranges (CUDA),
    `device_ms`, the sum of their spans on the device's streams.
    """
    host, device = [], []
    for e in events:
        if e.name in REGIONS:
            (host if e.device_type == torch.autograd.DeviceType.CPU else device).append(e)
    nested: dict[int, float] = {}  # id of a range: the total of the emdm ranges directly in it
    for e in host:
        parent = e.cpu_parent
        while parent is not None and parent.name not in REGIONS:
            parent = parent.cpu_parent
        if parent is not None:
            nested[id(parent)] = nested.get(id(parent), 0.0) + e.cpu_time_total
    summary = {}
    for name in REGIONS:
        mine = [e for e in host if e.name == name]
        total = sum(e.cpu_time_total for e in mine) / 1e3
        own = total - sum(nested.get(id(e), 0.0) for e in mine) / 1e3
        summary[name] = {
            "calls": len(mine),
            "total_ms": total,
            "self_ms": own,
            "share": total / wall_ms,
            "self_share": own / wall_ms,
        }
        spans = [e.time_range.elapsed_us() for e in device if e.name == name]
        if spans:
            summary[name]["device_ms"] = sum(spans) / 1e3
    return summary


def write_trace(prof, out: Path, name: str) -> Path:
    r"""Writes the Chrome trace as `<out>/<name>.trace.json`, gzipped (`.gz`) above
    :data:`GZIP_BYTES`, atomically; removes a trace of the other form left by an earlier run."""
    out.mkdir(parents=True, exist_ok=True)
    plain, packed = out / f"{name}.trace.json", out / f"{name}.trace.json.gz"
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{name}.trace-") as tmp:
        raw = Path(tmp) / plain.name
        prof.export_chrome_trace(str(raw))
        path, stale = (plain, packed) if raw.stat().st_size <= GZIP_BYTES else (packed, plain)
        if path is packed:
            with open(raw, "rb") as source, gzip.open(Path(tmp) / packed.name, "wb") as target:
                shutil.copyfileobj(source, target)
            raw = Path(tmp) / packed.name
        os.chmod(raw, 0o644)
        os.replace(raw, path)
    stale.unlink(missing_ok=True)
    return path


def rows_of(cfg: Config, summary: dict, wall_ms: float) -> list[dict]:
    r"""The tidy rows of the CSV: per region (and `floor`, `outside`, `wall`) one row per
    metric."""
    ident = {"benchmark": BENCHMARK, "target": cfg.target, "device": torch.device(cfg.device).type,
             "threads": cfg.threads, "batch": cfg.batch_size, "steps": cfg.steps}  # fmt: skip
    derived = {
        "floor": {"total_ms": summary[FORWARD]["total_ms"] + summary[VJP]["total_ms"]},
        "outside": {"self_ms": wall_ms - sum(s["self_ms"] for s in summary.values())},
        "wall": {"total_ms": wall_ms},
    }
    rows = []
    for region, values in {**summary, **derived}.items():
        values = dict(values)
        for key in ("total_ms", "self_ms"):
            if key in values:
                values[f"{key.removesuffix('_ms')}_ms_per_step"] = values[key] / cfg.steps
                values.setdefault("share" if key == "total_ms" else "self_share",
                                  values[key] / wall_ms)  # fmt: skip
        rows += [{**ident, "region": region, "metric": m, "value": v} for m, v in values.items()]
    return rows


def print_summary(cfg: Config, unit: str, rows: list[dict], before: dict) -> None:
    table = {}
    for row in rows:
        table.setdefault(row["region"], {})[row["metric"]] = row["value"]
    wall = table["wall"]
    load = ", ".join(f"{v:.2f}" for v in before["loadavg"])
    print(f"{cfg.target} on {cfg.device}, batch {cfg.batch_size}: {cfg.steps} x {unit}, "
          f"{wall['total_ms_per_step']:.2f} ms each (profiled; threads {cfg.threads}, "
          f"load {load})")  # fmt: skip
    print(f"{'region':<16} {'calls':>6} {'ms/step':>9} {'self ms/step':>13} {'share':>7}")
    for region, m in table.items():
        if region == "wall" or m.get("calls", 1) == 0:
            continue
        calls = f"{m['calls']:>6}" if "calls" in m else " " * 6
        total = f"{m['total_ms_per_step']:>9.2f}" if "total_ms_per_step" in m else " " * 9
        own = f"{m['self_ms_per_step']:>13.2f}" if "self_ms_per_step" in m else " " * 13
        share = m.get("share", m.get("self_share"))
        print(f"{region:<16} {calls} {total} {own} {share:>7.1%}")


def parse(argv: list[str] | None = None) -> Config:
    r"""Parses `TARGET [flags]`; a bad value exits with a usage error (status 2)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description=(Flags.__doc__ or "").strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("target", choices=TARGETS, metavar="TARGET",
                        help=f"what to profile: one of {', '.join(TARGETS)}")  # fmt: skip
    config_parser(Flags, parser)
    args = vars(parser.parse_args(argv))
    try:
        return Config(**args)
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    cfg.threads, cfg.batch = set_threads(cfg.threads), cfg.batch_size
    device, out = torch.device(cfg.device), check_writable(cfg.out)
    if cfg.dry_run:
        print(json.dumps(config_dict(cfg), indent=2))
        return 0

    start, before = time.perf_counter(), conditions()
    work = workload(cfg, device)
    prof, wall_s = profile(work, cfg, device)
    wall_ms = 1e3 * wall_s
    summary = region_summary(prof.events(), wall_ms)
    name = f"{cfg.target}_{device.type}"
    trace = write_trace(prof, Path(out), name)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=cfg.rows)
    write_atomic(Path(out) / f"{name}.txt", lambda path: path.write_text(table + "\n"))
    rows = rows_of(cfg, summary, wall_ms)
    extra = {"target": cfg.target, "unit": work.unit, "wall_ms": wall_ms,
             "ms_per_step": wall_ms / cfg.steps, "regions": summary, "trace": trace.name,
             "trace_gzipped": trace.suffix == ".gz", "table": f"{name}.txt"}  # fmt: skip
    csv, _ = write_timed_results(name, rows, cfg, wall_time=time.perf_counter() - start,
                                 out_dir=out, device=device, before=before, quick=True,
                                 extra=extra)  # fmt: skip
    if not cfg.quiet:
        print_summary(cfg, work.unit, rows, before)
        gzipped = " (gzipped: over 4 MB)" if trace.suffix == ".gz" else ""
        print(f"wrote {trace}{gzipped}, {name}.txt, {csv.name} and {name}.json in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
