r"""A/B timing of `emdm.cg` on the CPU: this checkout against an earlier commit's.

The CG update moved into `kernels/cg.py` behind a dispatcher; on the CPU the reference runs,
which must cost no more than the eager loop it replaced. This loads `emdm/solvers.py` as it
was at `--commit` (default: the last commit before the kernels; that file imports only torch)
and times both, interleaved, on the systems MMPS solves (:math:`C = I + U U^T` applied as a
matvec, per-sample dots, the guard count on, as MMPS calls it). A second copy of the old code is
timed too: its ratio to the first (an A/A comparison) is the harness's own noise.

    python -m bench.cg_ab                 # writes results/bench/cg_ab_cpu.{csv,json}
"""

import dataclasses
import json
import statistics
import subprocess
import sys
import time
import types

import torch

from bench.common import conditions, median_ms, set_threads, write_timed_results
from emdm.config import (
    NONNEGATIVE,
    PLAIN_NAME,
    POSITIVE,
    Checked,
    config_dict,
    option,
    parse_config,
)
from emdm.solvers import cg


@dataclasses.dataclass
class CGABConfig(Checked):
    r"""A/B timing of `emdm.cg` on the CPU: this checkout against an earlier commit's."""

    commit: str = option("47ac804", "the earlier commit (the last before the kernels)")
    batch: int = option(256, "systems solved at once", check=POSITIVE)
    sizes: tuple[int, ...] = option((16, 3072), "sizes D of the systems", check=POSITIVE)
    iterations: tuple[int, ...] = option((1, 3, 5), "CG iterations timed", check=POSITIVE)
    rounds: int = option(40, "interleaved rounds of timings", check=POSITIVE)
    threads: int = option(0, "torch threads; 0: torch's default", check=NONNEGATIVE)
    out: str = option("results/bench", "output folder")
    name: str = option("cg_ab_cpu", "name of the result files", check=PLAIN_NAME)
    dry_run: bool = option(False, "print the resolved config and exit")


def load_old_cg(commit: str):
    source = subprocess.run(
        ["git", "show", f"{commit}:emdm/solvers.py"], capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType(f"solvers_{commit}")
    exec(compile(source, f"{commit}:emdm/solvers.py", "exec"), module.__dict__)
    return module.cg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(CGABConfig, argv, prog="bench/cg_ab.py")
    if cfg.dry_run:
        print(json.dumps(config_dict(cfg), indent=2))
        return 0
    cfg.threads = set_threads(cfg.threads)
    old_cg, copy_cg = load_old_cg(cfg.commit), load_old_cg(cfg.commit)
    start, before, rows = time.perf_counter(), conditions(), []
    g = torch.Generator().manual_seed(0)
    for D in cfg.sizes:
        U = torch.randn(cfg.batch, D, 4, generator=g) / D**0.5
        b = torch.randn(cfg.batch, D, generator=g)

        def matvec(v, U=U):
            return v + (U @ (U.mT @ v[..., None]))[..., 0]

        for k in cfg.iterations:
            calls = {
                "old": lambda k=k, b=b, mv=matvec: old_cg(mv, b, k, return_info=True),
                "copy": lambda k=k, b=b, mv=matvec: copy_cg(mv, b, k, return_info=True),
                "new": lambda k=k, b=b, mv=matvec: cg(mv, b, k, return_info=True),
            }
            times = {name: [] for name in calls}
            for r in range(cfg.rounds):
                names = list(calls)
                for name in names[r % 3 :] + names[: r % 3]:  # rotate the order
                    times[name].append(median_ms(calls[name], "cpu", repeats=5, warmup=1)[0])
            old, copy, new = (statistics.median(times[n]) for n in ("old", "copy", "new"))
            rows += [
                {"D": D, "iterations": k, "commit": cfg.commit, "metric": "old_ms", "value": old},
                {"D": D, "iterations": k, "commit": "HEAD", "metric": "new_ms", "value": new},
                {"D": D, "iterations": k, "metric": "new_over_old", "value": new / old},
                {"D": D, "iterations": k, "metric": "copy_over_old", "value": copy / old},
            ]
            print(f"D {D}, {k} iterations: {cfg.commit} {old:.3f} ms, now {new:.3f} ms, "
                  f"ratio {new / old:.3f} (A/A: {copy / old:.3f})")  # fmt: skip
    write_timed_results(cfg.name, rows, cfg, wall_time=time.perf_counter() - start,
                        out_dir=cfg.out, device="cpu", before=before)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
