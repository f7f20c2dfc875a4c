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

A missing file stops the script before any work, naming it and where to get it. Writes
results/table4[_quick].{csv,json}.
"""

import dataclasses
import json
import sys
import time

import pandas as pd
import torch

from emdm import VPSchedule
from emdm.baselines import EpsilonDenoiser
from emdm.benchmark import METHODS, run_images, run_mixture, shape_mixture, task
from emdm.config import check_device, config_dict, parse_scaled
from emdm.data import load_images
from emdm.metrics import LPIPS
from emdm.nn.adm import ADMConfig, load_adm
from emdm.provenance import write_results


@dataclasses.dataclass
class Table4Config:
    images: int = 100
    samples: int = 1
    size: int = 256
    components: int = 16
    std: float = 0.1
    tasks: tuple[str, ...] = ("box", "random", "motion", "sr4")
    steps: tuple[int, ...] = (10, 100, 1000)
    methods: tuple[str, ...] = METHODS
    eta: float = 1.0
    seed: int = 0
    # the paper configuration: local files (nothing is downloaded)
    checkpoint: str = "models/ffhq_10m.pt"
    image_dir: str = "data/ffhq"
    lpips_alexnet: str = ""  # "" : EMDM_LPIPS_ALEXNET, else torch's hub cache
    lpips_linear: str = ""  # "" : EMDM_LPIPS_LINEAR
    adm: ADMConfig = dataclasses.field(default_factory=ADMConfig)
    device: str = "cuda"
    scale: str = "paper"
    name: str = "table4"
    out: str = "results"
    quiet: bool = False
    dry_run: bool = False

    def __post_init__(self):
        for name in self.tasks:
            task(name)
        for name in self.methods:
            if name not in METHODS:
                raise ValueError(f"methods must be among {METHODS}, got {name!r}")


QUICK = Table4Config(
    images=8, samples=8, size=32, tasks=("box", "random", "blur", "sr4"), steps=(10, 100),
    scale="quick", name="table4_quick", device="cpu",
)  # fmt: skip
PAPER = Table4Config()


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
    rows = run_images(prior, truth, cfg.tasks, cfg.methods, cfg.steps, cfg.seed, lpips, cfg.eta)
    write_results(cfg.name, rows, config_dict(cfg), wall_time=time.perf_counter() - start,
                  out_dir=cfg.out, quick=False, device=device)  # fmt: skip
    if not cfg.quiet:
        table = pd.DataFrame(rows).pivot_table(index=["task", "steps", "method"],
                                               columns="metric", values="value")  # fmt: skip
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_scaled(Table4Config, argv, quick=QUICK, paper=PAPER, prog="reproduce/table4.py")
    if cfg.dry_run:
        print(json.dumps(config_dict(cfg), indent=2))
        return 0
    if cfg.scale != "quick":
        return paper(cfg)
    start = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    prior = shape_mixture(cfg.components, cfg.size, cfg.std, g)
    truth = prior.sample(cfg.images, generator=g).reshape(cfg.images, 1, cfg.size, cfg.size)
    rows = run_mixture(prior, truth, cfg.tasks, cfg.methods, cfg.steps, cfg.samples, g,
                       cfg.seed, cfg.eta, log=None if cfg.quiet else print)  # fmt: skip
    csv, _ = write_results(cfg.name, rows, config_dict(cfg), wall_time=time.perf_counter() - start,
                           out_dir=cfg.out, quick=True, device="cpu")  # fmt: skip
    if not cfg.quiet:
        frame = pd.DataFrame(rows)
        table = frame.pivot_table(index=["task", "steps", "method"], columns="metric",
                                  values="value", aggfunc="mean")  # fmt: skip
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
        print(f"wrote {csv} and its .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
