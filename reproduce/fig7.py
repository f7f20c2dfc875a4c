r"""Figure 7: the 1-D and 2-D marginals of the 5-D random manifold of the EM experiment.

The truth of Figure 3 (protocols §2.1, §2.4): a random smooth curve (randman, α = 3, K = 10) in
R⁵, rescaled to [−2, 2] per coordinate; the paper draws 4096 points, with the manifold of key 0.

    python reproduce/fig7.py             # 65536 points, a few seconds
    python reproduce/fig7.py --quick     # 4096 points

Writes results/fig7[_quick].{png,csv,json} (the CSV holds per-coordinate summary statistics)
and results/fig7[_quick]_samples.npy.
"""

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from emdm.config import config_dict, parse_scaled
from emdm.data import RandomManifold
from emdm.plots import corner, save
from emdm.provenance import write_results


@dataclasses.dataclass
class Fig7Config:
    samples: int = 65536
    features: int = 5
    seed: int = 0
    scale: str = "paper"
    name: str = "fig7"
    out: str = "results"
    dry_run: bool = False


QUICK = Fig7Config(samples=4096, scale="quick", name="fig7_quick")
PAPER = Fig7Config()


def main(argv: list[str] | None = None) -> int:
    cfg = parse_scaled(Fig7Config, argv, quick=QUICK, paper=PAPER, prog="reproduce/fig7.py")
    if cfg.dry_run:
        print(json.dumps(config_dict(cfg), indent=2))
        return 0
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
    )  # fmt: skip
    np.save(Path(cfg.out) / f"{cfg.name}_samples.npy", x.float().numpy())
    save(corner(x), csv.with_suffix(".png"))
    print(f"wrote {csv.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
