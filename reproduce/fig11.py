r"""Figure 11: example slices of the MRI data that Figure 6's prior is learned from.

Protocol (protocols §5.1): the single-coil knee volumes of fastMRI, slices 10 to 40 of each
volume's `reconstruction_rss`, each volume divided by its maximum over those slices and mapped
to [-2, 2] by x ↦ 4x - 2 (:func:`emdm.load_fastmri`). At quick scale, the synthetic phantoms
that stand in for them in Figure 6's quick run (:func:`emdm.data.phantoms`), normalized alike.

    python reproduce/fig11.py --quick                  # 32x32 phantoms, a second
    python reproduce/fig11.py --data-dir DATA          # DATA/singlecoil_train/*.h5

Writes results/fig11[_quick].{png,csv,json}; the CSV holds the intensity statistics of the
slices shown (mean, standard deviation, the fraction of background pixels at -2).
"""

import dataclasses
import sys
import time

import torch

from emdm.config import NONNEGATIVE, POSITIVE, config_dict, option
from emdm.data import load_fastmri, phantoms
from emdm.errors import cli
from emdm.experiment import Outputs, parse_run
from emdm.plots import image_grid
from emdm.provenance import write_results
from emdm.publish import check_writable


@dataclasses.dataclass
class Fig11Config(Outputs):
    r"""Figure 11: example slices of the MRI data."""

    data: str = option("fastmri", "the slices: fastMRI knees or synthetic phantoms",
                       choices=("fastmri", "phantoms"))  # fmt: skip
    data_dir: str = option("", "folder holding singlecoil_train/; empty: $EMDM_DATA")
    size: int = option(320, "slice height and width (pixels)", check=POSITIVE)
    volumes: int = option(8, "fastMRI volumes read (the slices are drawn from them)",
                          check=POSITIVE)  # fmt: skip
    slices: int = option(16, "slices shown", check=POSITIVE)
    seed: int = option(0, "seed of the slices drawn", check=NONNEGATIVE)


# already CPU-sized (it reads 8 volumes and shows 16 slices): no smoke preset
PAPER = Fig11Config(name="fig11")
QUICK = Fig11Config(data="phantoms", size=32, scale="quick", name="fig11_quick")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_run(Fig11Config, argv, quick=QUICK, paper=PAPER, prog="reproduce/fig11.py")
    if cfg is None:  # --dry-run
        return 0
    check_writable(cfg.out)
    start, g = time.perf_counter(), torch.Generator().manual_seed(cfg.seed)
    if cfg.data == "fastmri":
        x = load_fastmri(cfg.data_dir or None, "train", max_volumes=cfg.volumes, size=cfg.size)
        x = x[torch.randperm(len(x), generator=g)[: cfg.slices]]
    else:
        x = phantoms(cfg.slices, cfg.size, g)
    rows = [
        {"slice": i, "metric": metric, "value": float(value)}
        for i, s in enumerate(x)
        for metric, value in (("mean", s.mean()), ("std", s.std()),
                              ("background", (s <= -2 + 1e-6).float().mean()))
    ]  # fmt: skip
    columns = min(8, len(x))
    figure = image_grid({"": x}, columns=columns, rows=-(-len(x) // columns))
    csv, _ = write_results(cfg.name, rows, config_dict(cfg), wall_time=time.perf_counter() - start,
                           out_dir=cfg.out, quick=cfg.scale == "quick", device="cpu",
                           figures={f"{cfg.name}.png": figure})  # fmt: skip
    if not cfg.quiet:
        print(f"wrote {csv.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
