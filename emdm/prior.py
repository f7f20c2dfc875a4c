r"""A diffusion prior learned from observations only, end to end: the one EM engine of the
manifold experiment (protocols §2, vectors) and of the images (§4.3 CIFAR-10, §5.3 MRI).

1. **Lap 0.** A Gaussian :math:`q_0 = \mathcal{N}(\mu_0, \Sigma_0)`, :math:`\Sigma_0` diagonal plus
   rank :math:`r`, is fitted to the first observations by Monte-Carlo EM; then one posterior
   sample per observation is drawn under it, with MMPS and the exact Gaussian covariance
   :math:`V_t = (\Sigma_0^{-1} + \sigma_t^{-2} I)^{-1}` (:func:`emdm.gaussian.gaussian_start`).
2. **Laps 1..K.** :func:`emdm.em.run_em`: train the denoiser on the samples (warm start, EMA,
   augmentation), redraw the samples with MMPS around it (with `covariance="cov_x"`, around
   :math:`q_0`'s fixed covariance, as the paper's code does on the manifold).

Lap 0 is saved to `<directory>/q0.pt`, so that a resumed run does not refit it. Every rank of
a multi-process run fits the same :math:`q_0` (it is cheap next to the laps) and shares the
sampling of lap 0. The folder describes itself: `model.json` names the network's config
(:data:`NETS`: a U-Net or an MLP), `prior_<k>.pt` holds every lap's prior and `last.pt` what a
resume needs, so that :func:`load_prior` needs nothing but the folder.

References:
    | Learning Diffusion Priors from Observations by Expectation Maximization
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = ["NETS", "GaussianStart", "MLPConfig", "UNetConfig", "draw", "learn_prior", "load_prior"]

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import NONNEGATIVE, POSITIVE, Checked, interval, option
from .denoisers import EDMDenoiser, GaussianDenoiser
from .distributed import Context, local
from .dplr import DPLR
from .em import (
    EMConfig,
    _check_observation,
    _load_checkpoint,
    _write_checkpoint,
    check_run_disk,
    run_em,
)
from .errors import UserError
from .gaussian import GaussianStart, gaussian_start
from .nn import PixelShuffleNet, TimeMLP, UNet
from .observation import Observation
from .progress import bar
from .runs import write_atomic
from .samplers import sample
from .schedule import Schedule


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
        1,
        "> 1: the U-Net runs on pixel-unshuffled (B, H, W) images, by this factor",
        check=POSITIVE,
    )

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
        net = UNet(
            self.channels,
            self.channels,
            self.hid_channels,
            self.hid_blocks,
            heads=dict.fromkeys(self.attention, self.heads),
            emb_features=self.emb_features,
            dropout=self.dropout,
        )
        if self.pixel_shuffle > 1:
            net = PixelShuffleNet(net, self.pixel_shuffle)
        return EDMDenoiser(net, emb_features=self.emb_features)


@dataclasses.dataclass
class MLPConfig(Checked):
    r"""The denoiser :math:`d_\theta` of vectors: an EDM-preconditioned
    :class:`emdm.nn.TimeMLP`; the manifold experiment's values by default (protocols §2)."""

    features: int = option(5, "features D of the vectors x", check=POSITIVE)
    hidden_features: tuple[int, ...] = option(
        (256, 256, 256), "widths of the hidden layers", check=POSITIVE
    )
    emb_features: int = option(64, "features of the noise-level embedding", check=POSITIVE)

    def build(self) -> EDMDenoiser:
        net = TimeMLP(self.features, self.emb_features, self.hidden_features)
        return EDMDenoiser(net, emb_features=self.emb_features)


# the network configs a run's model.json names by "kind"
NETS: dict[str, type[Checked]] = {"unet": UNetConfig, "mlp": MLPConfig}


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
    obs: Observation,
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
    net: UNetConfig | MLPConfig | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Learns a diffusion prior from observations :math:`y_i = A_i x_i + \varepsilon_i`.

    Arguments:
        denoiser: The denoiser to train, initialized, on the device where it will run.
        obs: The observations :math:`(A, y, \Sigma_y)`, :math:`y` with shape :math:`(N, *)`
            (they may stay on the CPU: the E-steps move them batch by batch).
        shape: The event shape of :math:`x`, e.g. :math:`(3, 32, 32)` or :math:`(5,)`.
        cfg: The EM laps' settings. With `cfg.covariance = "cov_x"`, MMPS uses :math:`q_0`'s
            covariance in every lap, :math:`V_t = (\Sigma_0^{-1} + \sigma_t^{-2} I)^{-1}` (the
            paper's code's E-step).
        schedule: The noise schedule.
        start: The fit of :math:`q_0` (:func:`emdm.gaussian.gaussian_start`).
        directory: Where lap 0 and the EM checkpoints are written.
        resume: Whether to continue the run in `directory`.
        identity: Anything else that defines the run, compared on resume.
        callback: See :func:`emdm.em.run_em`; also called with `k = 0` and lap 0's samples.
        evaluate: See :func:`emdm.em.run_em`; also called with `k = 0` and the Gaussian prior.
        ctx: The processes of a multi-process run.
        progress: Whether to show progress bars.
        net: The config that built `denoiser` (one of :data:`NETS`), saved with its kind as
            `<directory>/model.json`, so that :func:`load_prior` needs nothing but the folder.

    Returns:
        The last lap's samples :math:`(N, *)` and the mean :math:`\mu` of the sampler's start.
    """
    _check_observation(obs)
    ctx = local() if ctx is None else ctx
    directory = Path(directory)
    device = next(denoiser.parameters()).device
    q0_path = directory / "q0.pt"
    if net is not None and ctx.main:
        kinds = [k for k, config in NETS.items() if type(net) is config]
        if not kinds:
            raise ValueError(f"net must be one of {', '.join(c.__name__ for c in NETS.values())}")
        record = {"kind": kinds[0], "net": dataclasses.asdict(net)}
        directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(record, indent=2) + "\n"
        write_atomic(directory / "model.json", lambda p: p.write_text(text))
    if resume and q0_path.exists():
        state = _load_checkpoint(q0_path)
        mean, samples = state["mean"].to(device), state["samples"].to(obs.device)
        cov = DPLR(state["cov_D"], state["cov_U"], state["cov_V"]).to(device)
    else:
        if (directory / "last.pt").exists() and not resume:
            raise UserError(
                f"{directory} holds a run already: pass resume=True (--resume) to continue it "
                f"or choose another directory"
            )
        # lap 0 and every lap's checkpoints, before the Gaussian fit's hours
        like = torch.empty((len(obs), *shape), dtype=obs.dtype, device="meta")
        check_run_disk(directory, denoiser, like, cfg.ema > 0, cfg.iterations, rank=start.rank,
                       ctx=ctx)  # fmt: skip
        g = torch.Generator(device).manual_seed(cfg.seed)
        mean, cov, samples = gaussian_start(
            obs, shape, start, cfg, schedule, generator=g, ctx=ctx, progress=progress
        )
        if ctx.main:
            metrics = {} if evaluate is None else evaluate(0, GaussianDenoiser(mean, cov), mean)
            if callback is not None:
                callback(0, samples, metrics)
            directory.mkdir(parents=True, exist_ok=True)
            factors = {"cov_D": cov.D, "cov_U": cov.U, "cov_V": cov.V}
            state = {"mean": mean, "samples": samples, **factors}
            _write_checkpoint(q0_path, {k: v.cpu() for k, v in state.items()})
        ctx.barrier()
    samples = run_em(
        denoiser,
        obs,
        samples,
        cfg,
        schedule,
        mean=mean,
        prior_cov=cov,
        directory=directory,
        resume=resume,
        identity=identity,
        callback=callback,
        evaluate=evaluate,
        progress=progress,
        ctx=ctx,
    )
    if cfg.mean_samples > 0:  # as run_em moved it
        mean = samples[: cfg.mean_samples].mean(dim=0).to(mean)
    return samples, mean


def load_prior(
    directory: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    lap: int | None = None,
    net: UNetConfig | MLPConfig | None = None,
) -> tuple[EDMDenoiser, Tensor]:
    r"""Loads a prior that :func:`learn_prior` learned in `directory`, in eval mode, and the
    mean :math:`\mu` of its sampler's start.

    Arguments:
        directory: The run's folder.
        device: Where to load it.
        lap: The lap whose prior to load (its snapshot `prior_<lap>.pt`); `None`: the last
            complete lap (`last.pt`). Either way the weights the E-step used: the EMA's, if any.
        net: The network's config; `None`: the one the run saved (`model.json`, whose `kind`
            names its class in :data:`NETS`; a U-Net if it names none).
    """
    directory = Path(directory)
    if net is None:
        net = _saved_net(directory / "model.json")
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


def _saved_net(path: Path) -> UNetConfig | MLPConfig:
    r"""The network config a run saved in `path` (its model.json)."""
    if not path.exists():
        raise UserError(
            f"{path} is missing: pass net=, the network config (one of "
            f"{', '.join(c.__name__ for c in NETS.values())}) the run was made with"
        )
    record = json.loads(path.read_text())
    kind = record.get("kind", "unet")  # runs saved before the kind was recorded: a U-Net
    if kind not in NETS:
        raise UserError(f"{path} names the network kind {kind!r}; known: {', '.join(NETS)}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in record["net"].items()}
    return NETS[kind](**fields)
