r"""The disk that the paper's EM runs write, from their configs.

Each EM run keeps, in its folder (:func:`emdm.prior.learn_prior`, :func:`emdm.em.run_em`),

* `q0.pt`: lap 0, the Gaussian fit's samples :math:`(N, D)`, mean and PPCA covariance;
* `last.pt`: what a resume needs, the weights, the EMA's, Adam's two moments and the last lap's
  samples :math:`(N, D)`; while it is replaced, a second copy is on disk for a moment;
* `prior_<k>.pt`: each lap's prior (the weights the E-step used and its start mean).

Their sizes come from :func:`emdm.em.checkpoint_bytes` (tested against the files a run writes),
with the networks built on the `meta` device: nothing is allocated, so this runs in seconds
anywhere. A run's peak is what :func:`emdm.em.check_run_disk` asks of the disk before a fresh
run starts: `q0.pt`, two `last.pt` and every lap's snapshot; a script's total sums its runs
(their folders stay) and adds one transient `last.pt`.

Runs (the paper presets of `reproduce/`): Table 1, 5 CIFAR runs (3 masking rates with the
Tweedie covariance, 2 heuristics) of 32 laps on 49 920 images; Figure 3, 65 536 points of
:math:`\mathbb{R}^5`; Figure 6, one MRI prior of 16 laps on every train slice listed twice;
Figure 15, two MRI priors of 2 laps. fastMRI's single-coil knee train split is not on this
machine, so its slice count is `--mri-slices` (default 30 163: 973 volumes of at most 31
slices, `reconstruction_rss[10:41]`, protocols §5.1; an upper bound).

    python -m bench.disk          # seconds; writes results/bench/disk.{csv,json}
"""

import dataclasses
import sys
import time

import torch

from emdm.config import POSITIVE, Checked, config_dict, option, parse_config
from emdm.em import checkpoint_bytes
from emdm.provenance import write_results
from emdm.publish import size_text


@dataclasses.dataclass
class DiskConfig(Checked):
    r"""The paper runs' checkpoint disk, from their configs."""

    mri_slices: int = option(
        30163, "fastMRI knee train slices (973 volumes x up to 31)", check=POSITIVE
    )
    out: str = option("results/bench", "output folder")


def runs(cfg: DiskConfig) -> dict[str, tuple]:
    r"""Item -> (config, runs, observations N, event shape) of each paper preset."""
    from reproduce import fig3, fig6, fig15, table1

    mri = cfg.mri_slices * fig6.PAPER.duplicate
    return {
        "table1": (table1.PAPER, len(table1._runs(table1.PAPER)), table1.PAPER.observations,
                   (3, 32, 32)),
        "fig3": (fig3.PAPER, len(fig3.PAPER.covariances), fig3.PAPER.observations, (5,)),
        "fig6": (fig6.PAPER, 1, mri, (1, fig6.PAPER.size, fig6.PAPER.size)),
        "fig15": (fig15.PAPER, len(fig15.PAPER.covariances), mri,
                  (1, fig15.PAPER.size, fig15.PAPER.size)),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DiskConfig, argv, prog="bench/disk.py")
    start, rows = time.perf_counter(), []
    for item, (paper, count, n, shape) in runs(cfg).items():
        with torch.device("meta"):
            sizes = checkpoint_bytes(paper.net.build(), torch.empty(n, *shape), paper.em.ema > 0,
                                     paper.start.rank)  # fmt: skip
        laps = paper.em.iterations
        run = sizes["q0.pt"] + 2 * sizes["last.pt"] + laps * sizes["prior_<k>.pt"]
        total = count * (run - sizes["last.pt"]) + sizes["last.pt"]
        values = {**{f"bytes_{k}": v for k, v in sizes.items()}, "runs": count, "laps": laps,
                  "observations": n, "bytes_run_peak": run, "bytes_item_peak": total}  # fmt: skip
        rows += [{"item": item, "metric": k, "value": float(v)} for k, v in values.items()]
        print(f"{item}: {count} run(s) of {laps} laps on {n} observations; q0.pt "
              f"{size_text(sizes['q0.pt'])}, last.pt {size_text(sizes['last.pt'])}, a lap's "
              f"prior {size_text(sizes['prior_<k>.pt'])}; {size_text(total)} in all")  # fmt: skip
    note = {"estimate": "sizes from the configs' tensor shapes (emdm.em.checkpoint_bytes)"}
    write_results("disk", rows, config_dict(cfg), wall_time=time.perf_counter() - start,
                  out_dir=cfg.out, quick=False, device="meta", extra=note)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
