r"""Table 4: posterior sampling with DPS, ΠGDM, TMPD, DiffPIR and MMPS on four inverse problems.

Quick configuration (protocols §6, at small scale with exact answers): a 16-component Gaussian
mixture prior on 32 x 32 grey images built from synthetic shapes (`emdm.benchmark`), whose
posterior under each task is a closed-form mixture. Each method draws `samples` posterior
samples for each of `images` test images with DDIM (η = 1, 10 and 100 steps) and is scored
against the truth (PSNR, SSIM, as in the paper's table) and against the exact posterior: the
RMSE of its sample mean to the exact posterior mean, the total-variation distance between the
mass its samples put on each mixture component and the exact masses, and the debiased exact-OT
score of its samples against exact posterior samples.

    python reproduce/table4.py --quick       # 2.5-5.5 min on 2 CPU cores

The paper configuration (GPU): DPS's FFHQ checkpoint in the ADM U-Net, the first 100 FFHQ 256
test images from a local folder, one posterior sample per image, method, task (box, random,
motion, x4 bicubic) and step count (10, 100, 1000), scored by PSNR, SSIM and LPIPS (AlexNet):

    python reproduce/table4.py --checkpoint models/ffhq_10m.pt --image-dir data/ffhq \
        --lpips-linear weights/alex.pth        # AlexNet's weights from torch's hub cache

`--smoke` runs that protocol with 1 image and DDIM 2 steps, on the CPU unless `--device cuda`.
A missing file stops the script before any work, naming it and where to get it. Writes
results/table4[_quick].{csv,json} and, with them, the qualitative figures of the first image
(:data:`FIGURES`): fig17[_quick].png (MMPS with 1 and 5 iterations), fig18[_quick].png (DPS,
DiffPIR) and fig19[_quick].png (ΠGDM, TMPD), a row per task, its columns the reference, the
observation and a sample by each method at each step count (a figure whose methods were all
left out by --methods is not drawn).
"""

import dataclasses
import sys
import time

import pandas as pd
import torch

from emdm import VPSchedule
from emdm.benchmark import METHODS, TASKS, Gallery, run_images, run_mixture, shape_mixture
from emdm.config import (
    DEVICE,
    NONNEGATIVE,
    POSITIVE,
    check_device,
    config_dict,
    interval,
    option,
)
from emdm.data import load_images
from emdm.denoisers import EpsilonDenoiser
from emdm.errors import cli
from emdm.experiment import DeviceRun, parse_run
from emdm.metrics import LPIPS
from emdm.nn.adm import ADMConfig, load_adm
from emdm.plots import posterior_grid
from emdm.provenance import write_results
from emdm.publish import check_writable

#: The paper's qualitative figures of Table 4 and the methods each shows.
FIGURES = {"fig17": ("mmps1", "mmps5"), "fig18": ("dps", "diffpir"), "fig19": ("pgdm", "tmpd")}


@dataclasses.dataclass
class Table4Config(DeviceRun):
    r"""Table 4: posterior sampling with DPS, ΠGDM, TMPD, DiffPIR and MMPS on inverse problems."""

    images: int = option(100, "test images (paper: the first 100 of FFHQ 256)", check=POSITIVE)
    samples: int = option(
        1, "posterior samples per image and method (quick only; paper: 1)", check=POSITIVE
    )
    size: int = option(256, "image size of the quick mixture prior", check=POSITIVE)
    components: int = option(16, "Gaussians of the quick mixture prior", check=POSITIVE)
    std: float = option(0.1, "std of each Gaussian of the quick prior", check=POSITIVE)
    tasks: tuple[str, ...] = option(
        ("box", "random", "motion", "sr4"), "inverse problems (paper: box random motion sr4)",
        choices=TASKS,
    )  # fmt: skip
    steps: tuple[int, ...] = option(
        (10, 100, 1000), "DDIM step counts (paper: 10 100 1000)",
        check=interval(1, VPSchedule().T, closed="both"),  # respaced VP steps
    )  # fmt: skip
    methods: tuple[str, ...] = option(METHODS, "posterior-sampling methods", choices=METHODS)
    eta: float = option(
        1.0, "DDIM's η: 0 deterministic, 1 DDPM's variance (paper: 1)",
        check=interval(0, 1, closed="both"),
    )  # fmt: skip
    seed: int = option(0, "seed of the images, operators and samplers", check=NONNEGATIVE)
    # the paper configuration: local files (nothing is downloaded)
    checkpoint: str = option("models/ffhq_10m.pt", "DPS's FFHQ checkpoint (paper only)")
    image_dir: str = option("data/ffhq", "folder of the FFHQ 256 test images (paper only)")
    lpips_alexnet: str = option(
        "", "AlexNet's weights for LPIPS; empty: $EMDM_LPIPS_ALEXNET, else torch's hub cache"
    )
    lpips_linear: str = option("", "LPIPS's linear weights; empty: $EMDM_LPIPS_LINEAR")
    adm: ADMConfig = option(
        help="the ADM U-Net of the checkpoint (--adm-* flags)", default_factory=ADMConfig
    )
    # a name only: the paper preset names CUDA, which the paper run checks before any work
    device: str = option("cuda", "device of the paper run (the quick run: CPU)", check=DEVICE)


QUICK = Table4Config(
    images=8, samples=8, size=32, tasks=("box", "random", "blur", "sr4"), steps=(10, 100),
    scale="quick", name="table4_quick", device="cpu",
)  # fmt: skip
PAPER = Table4Config(name="table4")
# The paper's protocol (DPS's FFHQ checkpoint in the ADM U-Net at 256x256, every task and
# method, LPIPS), each loop cut: 1 image (a batch of 1 on 2 CPU cores) and DDIM 2 steps; on the
# CPU (--device cuda on a GPU)
SMOKE = dataclasses.replace(PAPER, images=1, steps=(2,), device="cpu", scale="smoke",
                            name="table4_smoke")  # fmt: skip


def figures(cfg: Table4Config, gallery: Gallery) -> dict:
    r"""Figures 17 to 19 by file name, each with those of its methods that were run."""
    suffix = "" if cfg.scale == "paper" else f"_{cfg.scale}"
    groups = {name: [m for m in methods if m in cfg.methods] for name, methods in FIGURES.items()}
    return {f"{name}{suffix}.png": posterior_grid(gallery, methods, cfg.steps)
            for name, methods in groups.items() if methods}  # fmt: skip


def paper(cfg: Table4Config) -> int:
    r"""The paper's protocol: DPS's FFHQ prior, one sample per image and method, PSNR, SSIM and
    LPIPS against the truth. Every file is checked before any work."""
    start = time.perf_counter()
    try:
        device = check_device(cfg.device)
        truth = load_images(cfg.image_dir, cfg.adm.image_size, cfg.images).to(device)
        lpips = LPIPS(cfg.lpips_alexnet or None, cfg.lpips_linear or None).to(device)
        network = load_adm(cfg.checkpoint, cfg.adm).to(device)
    except (FileNotFoundError, ValueError) as error:
        print(f"reproduce/table4.py: {error}", file=sys.stderr)
        return 2
    prior = EpsilonDenoiser(network, VPSchedule(), clip=True)
    gallery = Gallery()
    rows = run_images(prior, truth, cfg.tasks, cfg.methods, cfg.steps, cfg.seed, lpips, cfg.eta,
                      gallery=gallery)  # fmt: skip
    write_results(cfg.name, rows, config_dict(cfg), wall_time=time.perf_counter() - start,
                  out_dir=cfg.out, quick=False, device=device,
                  figures=figures(cfg, gallery))  # fmt: skip
    if not cfg.quiet:
        table = pd.DataFrame(rows).pivot_table(index=["task", "steps", "method"],
                                               columns="metric", values="value")  # fmt: skip
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_run(
        Table4Config, argv, quick=QUICK, paper=PAPER, smoke=SMOKE, prog="reproduce/table4.py"
    )
    if cfg is None:  # --dry-run
        return 0
    check_writable(cfg.out)
    if cfg.scale != "quick":
        return paper(cfg)
    start = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    prior = shape_mixture(cfg.components, cfg.size, cfg.std, g)
    truth = prior.sample(cfg.images, generator=g).reshape(cfg.images, 1, cfg.size, cfg.size)
    gallery = Gallery()
    rows = run_mixture(prior, truth, cfg.tasks, cfg.methods, cfg.steps, cfg.samples, g,
                       cfg.seed, cfg.eta, log=None if cfg.quiet else print,
                       gallery=gallery)  # fmt: skip
    csv, _ = write_results(cfg.name, rows, config_dict(cfg), wall_time=time.perf_counter() - start,
                           out_dir=cfg.out, quick=True, device="cpu",
                           figures=figures(cfg, gallery))  # fmt: skip
    if not cfg.quiet:
        frame = pd.DataFrame(rows)
        table = frame.pivot_table(index=["task", "steps", "method"], columns="metric",
                                  values="value", aggfunc="mean")  # fmt: skip
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
        print(f"wrote {csv}, its .json and the figures")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
