r"""The accelerated-MRI experiment of Figures 6, 11 and 15: a knee prior learned from
undersampled k-space only.

Data (protocols §5.1, :mod:`emdm.data.fastmri`). Slices :math:`x \in [-2, 2]^{H \times W}`
of the fastMRI single-coil knees (Figure 11 shows some), or, at quick scale, synthetic phantoms.
Each train slice is observed once, in k-space, through a column-line mask :math:`M` of
acceleration :math:`R` (a new mask per slice),

.. math:: y = A x + \sigma_y \varepsilon, \qquad A x = [\mathrm{Re}, \mathrm{Im}](M \odot F_c x),
    \qquad \varepsilon \sim \mathcal{N}(0, I),

and every observation is listed `duplicate` times, so that each E-step draws that many
posterior samples of it.

Training (protocols §5.3, :func:`emdm.prior.learn_prior`). :math:`q_0` a Gaussian (rank 64),
then EM laps: the U-Net on 4x4 pixel-unshuffled slices trained on the E-step's samples, which
MMPS redraws around it (`em.covariance`: Tweedie's :math:`V_t = \sigma_t^2 \nabla d_\theta`
in the paper, or a heuristic such as :math:`(I + \Sigma_t^{-1})^{-1}`), on the VE schedule
:math:`\sigma_t \in [10^{-3}, 10^2]`.

The figures then use the learned prior: Figure 6 as the prior of posterior sampling at new
accelerations (`reproduce/fig6.py`); Figure 15 through its unconditional samples after
:math:`k = 2` laps, where the :math:`(I + \Sigma_t^{-1})^{-1}` heuristic leaves vertical stripes
(`reproduce/fig15.py`). The masks drop whole columns of k-space, so the E-step must fill in
horizontal frequencies; what it gets wrong there varies along a row and not along a column.
:func:`stripes` measures that.

References:
    | Learning Diffusion Priors from Observations by Expectation Maximization
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
    | fastMRI: An Open Dataset and Benchmarks for Accelerated MRI (Zbontar et al., 2018)
    | https://arxiv.org/abs/1811.08839
"""

__all__ = [
    "MRIConfig",
    "held_out_slices",
    "learn_mri_prior",
    "paper_em",
    "quick_config",
    "schedule",
    "smoke_config",
    "stripes",
    "train_slices",
    "training_observations",
]

import dataclasses
from typing import Any, TypeVar

import torch
from torch import Tensor

from .config import NONNEGATIVE, POSITIVE, at_least, option
from .data import load_fastmri, mri_observations, phantoms
from .distributed import Context
from .em import EMConfig
from .experiment import ResumableRun, learn_prior_in
from .observation import Observation
from .operators import MRIOperator
from .prior import GaussianStart, UNetConfig
from .runs import RunFolder
from .schedule import VESchedule

C = TypeVar("C", bound="MRIConfig")


def paper_em() -> EMConfig:
    r"""The paper's EM laps on the knees (protocols §5.3): 16 laps of 64 epochs over ~2 x 30k
    slices with batches of 256 (~15 000 Adam steps), DDPM 64 steps and CG 3 in the E-step."""
    return EMConfig(iterations=16, train_steps=15000, batch_size=256, lr=1e-4, lr_end=1e-4,
                    ema=0.999, sampler="ddpm", steps=64, cg_iterations=3, dot="batch",
                    sample_batch=256, keep_range=0, flip=True, shift=4, seeding="batch",
                    mean_samples=16384)  # fmt: skip


@dataclasses.dataclass
class MRIConfig(ResumableRun):
    r"""The MRI prior's training: its data, observations, network, laps and seed; the paper's
    values by default."""

    data: str = option("fastmri", "the slices: fastMRI knees or synthetic phantoms",
                       choices=("fastmri", "phantoms"))  # fmt: skip
    data_dir: str = option(
        "", "folder holding singlecoil_train/ and singlecoil_val/; empty: $EMDM_DATA"
    )
    size: int = option(320, "slice height and width (pixels)", check=POSITIVE)
    observations: int = option(0, "train slices used; 0: every train slice", check=NONNEGATIVE)
    duplicate: int = option(
        2, "posterior samples per observation in each E-step (paper: 2)", check=POSITIVE
    )
    R: float = option(6.0, "acceleration of the training masks (paper: 6)", check=at_least(1))
    sigma_y: float = option(1e-2, "k-space noise std σ_y (paper: 0.01)", check=POSITIVE)
    net: UNetConfig = option(
        help="the denoiser's U-Net (--net-* flags)",
        default_factory=lambda: UNetConfig(
            channels=16, hid_channels=(128, 256, 384, 512), hid_blocks=(3, 3, 3, 3),
            attention=(3,), pixel_shuffle=4),
    )  # fmt: skip
    em: EMConfig = option(help="the EM laps (--em-* flags)", default_factory=paper_em)
    start: GaussianStart = option(
        help="the Gaussian fit of q_0 (--start-* flags)",
        default_factory=lambda: GaussianStart(observations=4096, cg_iterations=5),
    )
    seed: int = option(0, "seed of the data, masks and run", check=NONNEGATIVE)

    def __post_init__(self):
        super().__post_init__()
        if self.data == "phantoms" and self.observations < 1:
            raise ValueError("observations must be >= 1 with data 'phantoms' (0: every slice of "
                             "a data set on disk)")  # fmt: skip
        if self.observations > 0:  # 0: known when the data set is read
            self.start.check_fit(self.observations * self.duplicate)


def quick_config(
    cls: type[C], *, iterations: int, slices: int = 768, train_steps: int = 256, **fields: Any
) -> C:
    r"""`cls` at quick scale (2 CPU cores): `slices` phantoms of 32x32 observed once each, a
    tiny U-Net (2x2 pixel shuffle), `iterations` short laps (`train_steps` Adam steps, DDPM 24
    steps); `fields` sets the others (its evaluation, `name`)."""
    em = dataclasses.replace(paper_em(), iterations=iterations, train_steps=train_steps,
                             batch_size=128, lr=1e-3, lr_end=1e-3, ema=0.99, steps=24, shift=2,
                             mean_samples=slices)  # fmt: skip
    return cls(
        data="phantoms", size=32, observations=slices, duplicate=1,
        net=UNetConfig(channels=4, hid_channels=(16, 32), hid_blocks=(1, 1), heads=2,
                       emb_features=64, dropout=0.0, pixel_shuffle=2),
        em=em,
        start=GaussianStart(rank=16, iterations=4, observations=slices, steps=24,
                            cg_iterations=5),
        scale="quick", **fields,
    )  # fmt: skip


def smoke_config(cls: type[C], *, slices: int = 1, **fields: Any) -> C:
    r"""`cls` at smoke scale: the paper's shapes, network and operators (fastMRI slices of
    320x320, the MRI U-Net behind the 4x4 pixel unshuffle, column-line masks of R = 6, each
    observation listed twice, MMPS with DDPM and CG 3), each loop cut: `slices` train slices (a
    batch of 2 `slices` on 2 CPU cores), 1 lap of 1 Adam step, the E-step's sampler 1 step (~22 s
    per U-Net VJP on a batch of 2 on 2 loaded CPU cores), a Gaussian fit of 1 iteration of 2
    steps and of rank 2 `slices` - 1, not 64 (its 2 `slices` samples span that many directions);
    `fields` sets the others (its evaluation, `name`)."""
    paper = cls()
    em = dataclasses.replace(paper.em, iterations=1, train_steps=1, batch_size=2 * slices,
                             steps=1)  # fmt: skip
    start = dataclasses.replace(paper.start, rank=2 * slices - 1, iterations=1,
                                observations=2 * slices, steps=2)  # fmt: skip
    return cls(observations=slices, em=em, start=start, scale="smoke", **fields)


def schedule() -> VESchedule:
    r"""The noise schedule of the MRI priors: VE, :math:`\sigma_t \in [10^{-3}, 10^2]`."""
    return VESchedule(1e-3, 1e2)


def train_slices(cfg: MRIConfig) -> Tensor:
    r"""The train slices observed, with shape :math:`(N, H, W)` in :math:`[-2, 2]`: the first
    `cfg.observations` (0: all) of fastMRI's train split, or as many phantoms."""
    if cfg.data == "fastmri":
        x = load_fastmri(cfg.data_dir or None, "train", size=cfg.size)
    else:
        x = phantoms(cfg.observations, cfg.size, torch.Generator().manual_seed(cfg.seed))
    return x[: cfg.observations or len(x)]


def held_out_slices(cfg: MRIConfig, n: int) -> Tensor:
    r"""`n` slices no prior learns from, with shape :math:`(n, H, W)`: spread evenly over
    fastMRI's validation split, or phantoms of another seed."""
    if cfg.data == "phantoms":
        return phantoms(n, cfg.size, torch.Generator().manual_seed(cfg.seed + 1))
    test = load_fastmri(cfg.data_dir or None, "val", size=cfg.size)
    return test[:: max(1, len(test) // n)][:n]


def training_observations(cfg: MRIConfig) -> tuple[Observation, tuple[int, ...]]:
    r"""The observations the prior learns from, each listed `cfg.duplicate` times (a mask of
    acceleration `cfg.R` per slice, noise `cfg.sigma_y`), and the shape :math:`(H, W)` of a
    slice."""
    x = train_slices(cfg)
    mask, y = mri_observations(x, cfg.R, torch.Generator().manual_seed(cfg.seed + 2), cfg.sigma_y)
    # (D N, W) and (D N, H, W, 2): the D copies of an observation get their own E-step samples
    mask, y = mask.repeat(cfg.duplicate, 1), y.repeat(cfg.duplicate, 1, 1, 1)
    return Observation(MRIOperator(mask.float()), y, cfg.sigma_y**2), tuple(x.shape[1:])


def learn_mri_prior(
    run: RunFolder,
    cfg: MRIConfig,
    obs: Observation,
    shape: tuple[int, ...],
    *,
    ctx: Context,
    device: torch.device,
) -> None:
    r"""Learns the prior of `cfg` from `obs` in `run` (:func:`emdm.experiment.learn_prior_in`),
    resumed if `run` is; its U-Net initialized from `cfg.seed`, on `device`. The laps' priors
    are then in `run.path` (:func:`emdm.prior.load_prior`)."""
    torch.manual_seed(cfg.seed)  # the U-Net's initial weights
    learn_prior_in(run, cfg, cfg.net.build().to(device), obs, shape, schedule(), ctx=ctx)


def stripes(x: Tensor) -> dict[str, float]:
    r"""How striped images :math:`x` with shape :math:`(N, H, W)` are: the mean absolute
    difference between adjacent columns and between adjacent rows,

    .. math:: c = \overline{|x_{n,i,j+1} - x_{n,i,j}|}, \qquad
        r = \overline{|x_{n,i+1,j} - x_{n,i,j}|},

    and their ratio :math:`c / r`. Vertical stripes raise :math:`c` and not :math:`r`; the ratio
    is to be read against the truth's (the slices themselves are not isotropic)."""
    c = (x[..., :, 1:] - x[..., :, :-1]).abs().mean().item()
    r = (x[..., 1:, :] - x[..., :-1, :]).abs().mean().item()
    return {"column_difference": c, "row_difference": r, "stripe_ratio": c / r}
