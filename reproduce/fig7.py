r"""Figure 7: the 1-D and 2-D marginals of the 5-D random manifold of the EM experiment.

The truth of Figure 3 (protocols §2.1, §2.4): a random smooth curve (randman, α = 3, K = 10) in
R⁵, rescaled to [−2, 2] per coordinate; the paper draws 4096 points, with the manifold of key 0.

    python reproduce/fig7.py             # 65536 points, a few seconds
    python reproduce/fig7.py --quick     # 4096 points

Writes results/fig7[_quick].{png,csv,json} (the CSV holds per-coordinate summary statistics)
and results/fig7[_quick]_samples.npy.
"""

import dataclasses
import sys
import time

import torch

from emdm.config import NONNEGATIVE, POSITIVE, at_least, config_dict, option
from emdm.data import RandomManifold
from emdm.errors import cli
from emdm.experiment import Outputs, parse_run
from emdm.plots import corner
from emdm.provenance import write_results
from emdm.publish import check_writable


@dataclasses.dataclass
class Fig7Config(Outputs):
    r"""Figure 7: the 1-D and 2-D marginals of the 5-D random manifold of Figure 3."""

    samples: int = option(
        65536, "points drawn (paper: 4096)", check=at_least(2)
    )  # a standard deviation needs two
    features: int = option(5, "dimension of the ambient space (paper: 5)", check=POSITIVE)
    seed: int = option(0, "key of the manifold (paper: 0); seed + 1 draws the points",
                       check=NONNEGATIVE)  # fmt: skip


QUICK = Fig7Config(samples=4096, scale="quick", name="fig7_quick")
PAPER = Fig7Config(name="fig7")  # already CPU-sized: no smoke preset


def main(argv: list[str] | None = None) -> int:
    cfg = parse_run(Fig7Config, argv, quick=QUICK, paper=PAPER, prog="reproduce/fig7.py")
    if cfg is None:  # --dry-run
        return 0
    check_writable(cfg.out)
    start = time.perf_counter()
    manifold = RandomManifold(cfg.features, generator=torch.Generator().manual_seed(cfg.seed))
    x = manifold.sample(cfg.samples, generator=torch.Generator().manual_seed(cfg.seed + 1))
    rows = [
        {"coordinate": i + 1, "metric": metric, "value": float(value)}
        for i in range(cfg.features)
        for metric, value in (("mean", x[:, i].mean()), ("std", x[:, i].std()),
                              ("min", x[:, i].min()), ("max", x[:, i].max()))
    ]  # fmt: skip
    csv, _ = write_results(
        cfg.name, rows, config_dict(cfg), wall_time=time.perf_counter() - start,
        out_dir=cfg.out, quick=cfg.scale == "quick", device="cpu",
        figures={f"{cfg.name}.png": corner(x)},
        arrays={f"{cfg.name}_samples.npy": x.float().numpy()},
    )  # fmt: skip
    if not cfg.quiet:
        print(f"wrote {csv.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
