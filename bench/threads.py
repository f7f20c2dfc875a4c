r"""How many intra-op threads keep the manifold M-step fast when another job shares the cores?

The question (issue 19): one Adam step of the manifold M-step takes about 17 ms with torch's 2
threads on 2 idle cores, but 15 to 240 ms from run to run when another CPU-heavy job runs beside
it, where the paper's one-threaded JAX code holds about 30 ms. Which thread setting is fast on
idle cores and stays fast beside another job? The answer sets the policy of
:mod:`emdm.threads` ("auto").

Method: :func:`emdm.em.m_step` with `EMConfig(train_steps=steps, batch_size=1024)` trains the
manifold experiment's denoiser (`MLPConfig(features=5).build()`: an EDM-preconditioned TimeMLP
3 x 256, as `reproduce/fig3.py` builds it) under `VESchedule(1e-3, 10.0)` on 8192 random
samples in R⁵; one call of `--warmup` steps, then one timed call of `--steps` steps gives the
wall milliseconds per step, and the process's CPU milliseconds per step (more than the wall
time per thread: threads that spin while they wait). Each measurement runs in a fresh Python
process, so that a setting holds from the process's start (`OMP_WAIT_POLICY` is read when
libgomp loads, with torch), and applies its threads with :func:`emdm.threads.apply`, as an entry
point does. The settings: 1 thread, 2 threads, 2 threads with `OMP_WAIT_POLICY=PASSIVE` (idle
OpenMP threads sleep at once instead of spinning) and "auto". The conditions: idle, and "hog":
one other job beside it, a Python process running a pure-Python busy loop (one core busy, no
threads, no memory traffic: what any other single-threaded CPU job costs the scheduler),
started a second before the first measurement and ended after the last (or when this process
ends). `--runs` rounds; each
round runs every setting once, in turn, so that drift falls on all of them alike. Every
measurement records the 1-minute load average before and after it.

    python -m bench.threads                      # 5 runs x 4 settings x 2 conditions: 5-8 min
    python -m bench.threads --runs 2 --steps 30  # a look at the shape of it: ~1.5 min

Writes `results/bench/threads_cpu.csv` (tidy: condition, hog, setting, run, threads, metric,
value; metrics `ms_per_step`, `cpu_ms_per_step`, `load_before`, `load_after`) and
`results/bench/threads_cpu.json` (resolved config, provenance, load before and after). Run it
on otherwise quiet cores: the idle condition assumes them.
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import conditions, write_timed_results
from emdm.config import NONNEGATIVE, POSITIVE, Checked, option, parse_config

ROOT = Path(__file__).resolve().parent.parent

#: the settings: the threads spec given to :func:`emdm.threads.apply`, the child's extra env
SETTINGS = {
    "1": ("1", {}),
    "2": ("2", {}),
    "2-passive": ("2", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "auto": ("auto", {}),
}
CONDITIONS = ("idle", "hog")
# busy until its parent ends, even if the parent is killed (a check per million loops)
HOG = (
    "import os\nparent = os.getppid()\n"
    "while os.getppid() == parent:\n    for _ in range(10**6): pass"
)


@dataclasses.dataclass
class Config(Checked):
    r"""Milliseconds per manifold M-step for each thread setting, idle and beside another job."""

    runs: int = option(5, "rounds; each runs every setting once", check=POSITIVE)
    steps: int = option(100, "timed Adam steps per measurement", check=POSITIVE)
    warmup: int = option(10, "untimed Adam steps first", check=NONNEGATIVE)
    settings: tuple[str, ...] = option(tuple(SETTINGS), "thread settings", choices=SETTINGS)
    conditions: tuple[str, ...] = option(
        CONDITIONS, "idle, and hog: one busy Python process beside it", choices=CONDITIONS
    )
    out: str = option("results/bench/threads_cpu", "output path, without the suffix")
    quiet: bool = option(False, "print nothing but the output files")
    dry_run: bool = option(False, "print the resolved config and exit")


def child(spec: str, steps: int, warmup: int) -> None:
    r"""One measurement, in a fresh process: prints a JSON line with the threads torch used and
    the wall and CPU milliseconds per step."""
    import torch

    from emdm import VESchedule, threads
    from emdm.em import EMConfig, m_step
    from emdm.prior import MLPConfig

    count = threads.apply(spec)
    torch.manual_seed(0)
    denoiser = MLPConfig(features=5).build()
    samples = torch.randn(8192, 5, generator=torch.Generator().manual_seed(1))  # (N, D)
    schedule = VESchedule(1e-3, 10.0)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(2)

    def train(n: int) -> None:
        m_step(denoiser, samples, EMConfig(train_steps=n, batch_size=1024), schedule, optimizer,
               generator)  # fmt: skip

    if warmup:
        train(warmup)
    wall, cpu = time.perf_counter(), time.process_time()
    train(steps)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"threads": count, "ms_per_step": 1e3 * wall / steps,
                      "cpu_ms_per_step": 1e3 * cpu / steps}))  # fmt: skip


def measure(setting: str, cfg: Config) -> dict:
    r"""Runs :func:`child` for `setting` in a fresh process; returns its record."""
    spec, env = SETTINGS[setting]
    env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    env.pop("EMDM_THREADS", None)
    code = f"from bench.threads import child; child({spec!r}, {cfg.steps}, {cfg.warmup})"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=False)  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"the measurement of {setting!r} failed:\n{run.stderr}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(Config, argv, prog="bench/threads.py")
    if cfg.dry_run:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return 0
    start, before = time.perf_counter(), conditions()
    rows = []
    for condition in cfg.conditions:
        hog = None
        if condition == "hog":
            hog = subprocess.Popen([sys.executable, "-c", HOG])
            time.sleep(1.0)  # scheduled and running before the first measurement
        try:
            for run in range(cfg.runs):
                for setting in cfg.settings:
                    load_before = os.getloadavg()[0]
                    record = measure(setting, cfg)
                    load_after = os.getloadavg()[0]
                    ident = {"condition": condition, "hog": hog is not None, "setting": setting,
                             "run": run, "threads": record["threads"]}  # fmt: skip
                    values = {"ms_per_step": record["ms_per_step"],
                              "cpu_ms_per_step": record["cpu_ms_per_step"],
                              "load_before": load_before, "load_after": load_after}  # fmt: skip
                    rows += [{**ident, "metric": k, "value": v} for k, v in values.items()]
                    if not cfg.quiet:
                        print(f"{condition:>4} {setting:>9} run {run}: {record['threads']} "
                              f"threads, {record['ms_per_step']:6.1f} ms/step "
                              f"({record['cpu_ms_per_step']:6.1f} CPU ms), load "
                              f"{load_before:.2f} -> {load_after:.2f}", flush=True)  # fmt: skip
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    wall_s = time.perf_counter() - start

    if not cfg.quiet:
        print(f"\n{'condition':>9} {'setting':>9}  median ms/step  (runs)")
        for condition in cfg.conditions:
            for setting in cfg.settings:
                ms = [r["value"] for r in rows if r["condition"] == condition
                      and r["setting"] == setting and r["metric"] == "ms_per_step"]  # fmt: skip
                runs = " ".join(f"{v:.1f}" for v in ms)
                print(f"{condition:>9} {setting:>9}  {statistics.median(ms):14.1f}  ({runs})")
    out = Path(cfg.out)
    csv, _ = write_timed_results(out.name, rows, cfg, wall_time=wall_s, out_dir=out.parent,
                                 device="cpu", before=before,
                                 extra={"hog": HOG, "issue": 19})  # fmt: skip
    print(f"wrote {csv} and {csv.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
