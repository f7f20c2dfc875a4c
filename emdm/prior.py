r"""An image prior learned from observations only, end to end (protocols §4.3 and §5.3).

1. **Lap 0.** A Gaussian :math:`q_0 = \mathcal{N}(\mu_0, \Sigma_0)`, :math:`\Sigma_0` diagonal plus
   rank :math:`r`, is fitted to the first observations by Monte-Carlo EM
   (:func:`emdm.gaussian.fit_gaussian`); then one posterior sample per observation is drawn
   under it, with MMPS and the exact Gaussian covariance
   :math:`V_t = (\Sigma_0^{-1} + \sigma_t^{-2} I)^{-1}`.
2. **Laps 1..K.** :func:`emdm.em.run_em`: train the denoiser on the samples (warm start, EMA,
   augmentation), redraw the samples with MMPS around it.

Lap 0 is saved to `<directory>/q0.pt`, so that a resumed run does not refit it. Every rank of
a multi-process run fits the same :math:`q_0` (it is cheap next to the laps) and shares the
sampling of lap 0.

References:
    | Learning Diffusion Priors from Observations by Expectation Maximization
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = ["GaussianStart", "UNetConfig", "draw", "learn_prior", "load_prior"]

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import NONNEGATIVE, POSITIVE, Checked, at_least, interval, option
from .denoisers import EDMDenoiser, GaussianDenoiser
from .distributed import Context, local
from .em import EMConfig, _load_checkpoint, _write_checkpoint, e_step, run_em
from .errors import UserError
from .gaussian import fit_gaussian
from .nn import PixelShuffleNet, UNet
from .progress import bar
from .runs import write_atomic
from .samplers import sample, samplers_for
from .schedule import Schedule, VESchedule


@dataclasses.dataclass
class GaussianStart(Checked):
    r"""The fit of :math:`q_0`; the paper's CIFAR values in the help (MRI: 4096 observations,
    CG 5)."""

    rank: int = option(64, "rank of the covariance's low-rank part (paper: 64)", check=POSITIVE)
    iterations: int = option(
        16, "Monte-Carlo EM iterations of the fit (paper: 16)", check=POSITIVE
    )
    observations: int = option(
        16384, "the first observations the fit uses (paper: 16 384)", check=at_least(2)
    )  # PPCA needs two samples
    # the fit's E-step starts at x_1 = mean + sigma(1) z in VE coordinates
    sampler: str = option(
        "ddim", "sampler of the fit's E-steps (paper: ddim)", choices=samplers_for(VESchedule)
    )
    steps: int = option(256, "sampler steps of the fit (paper: 256)", check=POSITIVE)
    cg_iterations: int = option(
        32, "CG iterations of the fit only (paper: until converged, rtol 1e-3; MRI: 5)",
        check=POSITIVE,
    )  # fmt: skip


@dataclasses.dataclass
class UNetConfig(Checked):
    r"""The denoiser :math:`d_\theta`: an EDM-preconditioned :class:`emdm.nn.UNet`; the paper's
    CIFAR values by default (MRI: 16 channels, widths (128, 256, 384, 512), 3 blocks per level,
    attention at level 3, pixel shuffle 4)."""

    channels: int = option(3, "channels of the images (after pixel-unshuffling)", check=POSITIVE)
    hid_channels: tuple[int, ...] = option(
        (128, 256, 384), "channels of each level", check=POSITIVE
    )
    hid_blocks: tuple[int, ...] = option(
        (5, 5, 5), "residual blocks of each level", check=POSITIVE
    )
    attention: tuple[int, ...] = option(
        (1,), "levels (from 0) with attention blocks", check=NONNEGATIVE
    )
    heads: int = option(4, "attention heads", check=POSITIVE)
    emb_features: int = option(256, "features of the noise-level embedding", check=POSITIVE)
    dropout: float = option(0.1, "dropout rate", check=interval(0, 1))
    pixel_shuffle: int = option(
        1, "> 1: the U-Net runs on pixel-unshuffled (B, H, W) images, by this factor",
        check=POSITIVE,
    )  # fmt: skip

    def __post_init__(self):
        super().__post_init__()
        if len(self.hid_blocks) != len(self.hid_channels):
            raise ValueError(
                f"hid_blocks {self.hid_blocks} needs one count per level of hid_channels "
                f"{self.hid_channels}"
            )
        if not set(self.attention) <= set(range(len(self.hid_channels))):
            raise ValueError(
                f"attention levels {self.attention} must lie in range({len(self.hid_channels)})"
            )

    def build(self) -> EDMDenoiser:
        net = UNet(self.channels, self.channels, self.hid_channels, self.hid_blocks,
                   heads=dict.fromkeys(self.attention, self.heads),
                   emb_features=self.emb_features, dropout=self.dropout)  # fmt: skip
        if self.pixel_shuffle > 1:
            net = PixelShuffleNet(net, self.pixel_shuffle)
        return EDMDenoiser(net, emb_features=self.emb_features)


def draw(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    mean: Tensor,
    n: int,
    schedule: Schedule,
    sampler: str = "ddim",
    steps: int = 256,
    batch: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    r"""Draws `n` unconditional samples :math:`(n, *)` of a prior, from
    :math:`x_1 = \mu + \sigma(1) z` (the paper's evaluation: DDIM, 256 steps), in batches."""
    sigma_1 = schedule.sigma_ve(torch.ones((), dtype=torch.float64)).item()
    device = mean.device
    out = []
    with torch.no_grad():
        for i in bar(range(0, n, batch), progress, desc="samples", leave=False):
            shape = (min(batch, n - i), *mean.shape)
            z = torch.randn(shape, generator=generator, dtype=mean.dtype, device=device)
            out.append(sample(denoiser, mean + sigma_1 * z, schedule, sampler, steps, generator))
    return torch.cat(out)


def learn_prior(
    denoiser: nn.Module,
    A,
    y: Tensor,
    cov_y: float | Tensor,
    shape: tuple[int, ...],
    cfg: EMConfig,
    schedule: Schedule,
    start: GaussianStart,
    *,
    directory: str | os.PathLike,
    resume: bool = False,
    identity: dict[str, Any] | None = None,
    callback: Callable[[int, Tensor, dict[str, float]], None] | None = None,
    evaluate: Callable[[int, nn.Module, Tensor], dict[str, float]] | None = None,
    ctx: Context | None = None,
    progress: bool = False,
    net: UNetConfig | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Learns a diffusion prior from observations :math:`y_i = A_i x_i + \varepsilon_i`.

    Arguments:
        denoiser: The denoiser to train, initialized, on the device where it will run.
        A: The operator of all observations, indexable by sample.
        y: The observations, with shape :math:`(N, *)` (may stay on the CPU).
        cov_y: The noise covariance, a float or a per-observation tensor.
        shape: The event shape of :math:`x`, e.g. :math:`(3, 32, 32)`.
        cfg: The EM laps' settings.
        schedule: The noise schedule.
        start: The fit of :math:`q_0`.
        directory: Where lap 0 and the EM checkpoints are written.
        resume: Whether to continue the run in `directory`.
        identity: Anything else that defines the run, compared on resume.
        callback: See :func:`emdm.em.run_em`; also called with `k = 0` and lap 0's samples.
        evaluate: See :func:`emdm.em.run_em`; also called with `k = 0` and the Gaussian prior.
        ctx: The processes of a multi-process run.
        progress: Whether to show progress bars.
        net: The config that built `denoiser`, saved as `<directory>/model.json`, so that
            :func:`load_prior` needs nothing but the folder.

    Returns:
        The last lap's samples :math:`(N, *)` and the mean :math:`\mu` of the sampler's start.
    """
    ctx = local() if ctx is None else ctx
    directory = Path(directory)
    device = next(denoiser.parameters()).device
    q0_path = directory / "q0.pt"
    if net is not None and ctx.main:
        directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"net": dataclasses.asdict(net)}, indent=2) + "\n"
        write_atomic(directory / "model.json", lambda p: p.write_text(text))
    if resume and q0_path.exists():
        state = _load_checkpoint(q0_path)
        mean, samples = state["mean"].to(device), state["samples"].to(y.device)
    else:
        if (directory / "last.pt").exists() and not resume:
            raise UserError(
                f"{directory} holds a run already: pass resume=True (--resume) to continue it "
                f"or choose another directory"
            )
        g = torch.Generator(device).manual_seed(cfg.seed)
        n = min(start.observations, len(y))
        fit_cfg = dataclasses.replace(cfg, seeding="stream")
        mean, cov = fit_gaussian(A[:n], y[:n].to(device), _head(cov_y, y, n, device),
                                 start.rank, start.iterations, shape=shape, schedule=schedule,
                                 sampler=start.sampler, steps=start.steps,
                                 cg_iterations=start.cg_iterations,
                                 batch_size=fit_cfg.sample_batch, generator=g,
                                 progress=progress)  # fmt: skip
        gaussian = GaussianDenoiser(mean, cov)
        # lap 0 samples with the laps' solver budget (the paper: CG 1 on CIFAR, 3 on MRI)
        samples, _ = e_step(gaussian, A, y, cov_y, cfg, schedule, mean, g, progress,
                            covariance=cov, iteration=0, ctx=ctx)  # fmt: skip
        if ctx.main:
            metrics = {} if evaluate is None else evaluate(0, gaussian, mean)
            if callback is not None:
                callback(0, samples, metrics)
            directory.mkdir(parents=True, exist_ok=True)
            _write_checkpoint(q0_path, {"mean": mean.cpu(), "samples": samples.cpu(),
                                        "cov_D": cov.D.cpu(), "cov_U": cov.U.cpu()})  # fmt: skip
        ctx.barrier()
    samples = run_em(denoiser, A, y, cov_y, samples, cfg, schedule, mean=mean,
                     directory=directory, resume=resume, identity=identity, callback=callback,
                     evaluate=evaluate, progress=progress, ctx=ctx)  # fmt: skip
    if cfg.mean_samples > 0:  # as run_em moved it
        mean = samples[: cfg.mean_samples].mean(dim=0).to(mean)
    return samples, mean


def load_prior(
    directory: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    lap: int | None = None,
    net: UNetConfig | None = None,
) -> tuple[EDMDenoiser, Tensor]:
    r"""Loads a prior that :func:`learn_prior` learned in `directory`, in eval mode, and the
    mean :math:`\mu` of its sampler's start.

    Arguments:
        directory: The run's folder.
        device: Where to load it.
        lap: The lap whose prior to load (its snapshot `prior_<lap>.pt`); `None`: the last
            complete lap (`last.pt`). Either way the weights the E-step used: the EMA's, if any.
        net: The network's config; `None`: the one the run saved (`model.json`).
    """
    directory = Path(directory)
    if net is None:
        path = directory / "model.json"
        if not path.exists():
            raise UserError(f"{path} is missing: pass net=, the UNetConfig the run was made with")
        net = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in json.loads(path.read_text())["net"].items()})  # fmt: skip
    path = directory / ("last.pt" if lap is None else f"prior_{lap}.pt")
    if not path.exists():
        raise FileNotFoundError(f"no complete EM lap {lap or ''} in {directory}: {path} is absent")
    state = _load_checkpoint(path, device)
    weights = state["model"] if lap is not None or state.get("ema") is None else state["ema"]
    denoiser = net.build().to(device)
    denoiser.load_state_dict(weights)
    mean = state.get("mean")
    if mean is None:
        mean = _load_checkpoint(directory / "q0.pt", device)["mean"]
    return denoiser.eval(), mean.to(device)


def _head(cov_y: float | Tensor, y: Tensor, n: int, device: torch.device) -> float | Tensor:
    if isinstance(cov_y, Tensor) and cov_y.shape == y.shape:
        return cov_y[:n].to(device)
    return cov_y
