r"""The ADM U-Net of guided-diffusion (Dhariwal & Nichol, 2021), the prior of the paper's
posterior-sampling benchmark (DPS's FFHQ checkpoint `ffhq_10m.pt`, protocols §6.1).

An :math:`\varepsilon`-network :math:`(x_t, n) \mapsto \varepsilon` (plus a learned variance
when `learn_sigma`): a sinusoidal embedding of the timestep through a 2-layer MLP; residual
blocks with GroupNorm(32), SiLU and a scale-shift modulation by the embedding; multi-head
self-attention at the chosen resolutions; down- and upsampling inside residual blocks
(`resblock_updown`); skip connections from every encoder block to the decoder. Module names
match guided-diffusion's, so its state dicts load as they are (:func:`load_adm`).

References:
    | Diffusion Models Beat GANs on Image Synthesis (Dhariwal & Nichol, 2021)
    | https://arxiv.org/abs/2105.05233
"""

__all__ = ["FFHQ_256", "ADMConfig", "ADMUNet", "load_adm", "write_random_adm"]

import dataclasses
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import load_state_dict
from ..config import POSITIVE, Checked, interval, option
from ..errors import UserError


@dataclasses.dataclass
class ADMConfig(Checked):
    r"""The ADM U-Net's hyperparameters, named as guided-diffusion's; DPS's FFHQ model's by
    default."""

    image_size: int = option(256, "image height and width (pixels)", check=POSITIVE)
    in_channels: int = option(3, "image channels", check=POSITIVE)
    model_channels: int = option(128, "channels of the first level", check=POSITIVE)
    num_res_blocks: int = option(1, "residual blocks per level", check=POSITIVE)
    channel_mult: tuple[int, ...] = option(
        (1, 1, 2, 2, 4, 4), "channel multiplier of each level", check=POSITIVE
    )
    attention_resolutions: tuple[int, ...] = option(
        (16,), "resolutions (pixels) with attention", check=POSITIVE
    )
    num_head_channels: int = option(64, "channels per attention head", check=POSITIVE)
    learn_sigma: bool = option(True, "the network also outputs a variance")
    use_scale_shift_norm: bool = option(True, "scale-shift modulation by the embedding")
    resblock_updown: bool = option(True, "down- and upsampling inside residual blocks")
    dropout: float = option(0.0, "dropout rate", check=interval(0, 1))


#: DPS's FFHQ 256 model (`ffhq_10m.pt`): 128 channels, one residual block per level, attention
#: at 16 x 16 with 64 channels per head, learned variance, scale-shift norm, resblock up/down.
FFHQ_256 = ADMConfig()


def timestep_embedding(n: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    r"""The sinusoidal embedding :math:`[\cos(n \omega_i), \sin(n \omega_i)]` with
    :math:`\omega_i = T^{-i / (d/2)}`, with shape :math:`(B, d)`."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=n.device) / half)
    args = n.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GroupNorm32(nn.GroupNorm):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def _norm(channels: int) -> nn.GroupNorm:
    return GroupNorm32(32, channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb: int, out: int, cfg: ADMConfig, updown: str = ""):
        super().__init__()
        self.updown = updown
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out, 3, padding=1))  # fmt: skip
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb, 2 * out if cfg.use_scale_shift_norm else out)
        )
        self.out_layers = nn.Sequential(_norm(out), nn.SiLU(), nn.Dropout(cfg.dropout),
                                        nn.Conv2d(out, out, 3, padding=1))  # fmt: skip
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)
        self.scale_shift = cfg.use_scale_shift_norm

    def _resample(self, x: Tensor) -> Tensor:
        if self.updown == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.updown == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers[:-1](x)
        h, x = self._resample(h), self._resample(x)
        h = self.in_layers[-1](h)
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    r"""Multi-head self-attention over the pixels, guided-diffusion's "legacy" head order
    (the qkv channels grouped per head)."""

    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        self.heads = channels // head_channels
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C, *spatial = x.shape
        h = x.reshape(B, C, -1)  # (B, C, T)
        qkv = self.qkv(self.norm(h)).reshape(B * self.heads, 3 * C // self.heads, -1)
        q, k, v = qkv.chunk(3, dim=1)  # (B heads, c, T)
        scale = 1 / math.sqrt(math.sqrt(q.shape[1]))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(B, C, -1)
        return (h + self.proj_out(a)).reshape(B, C, *spatial)


class Block(nn.Sequential):
    r"""guided-diffusion's TimestepEmbedSequential: layers that may take the embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock | AttentionBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    r"""Creates the ADM U-Net :math:`(x_t, n) \mapsto \varepsilon` (and a variance, dropped by
    :class:`emdm.denoisers.EpsilonDenoiser`), with inputs of shape :math:`(B, C, H, W)`."""

    def __init__(self, cfg: ADMConfig = FFHQ_256):
        super().__init__()
        self.cfg = cfg
        mc, emb = cfg.model_channels, 4 * cfg.model_channels
        attention = {cfg.image_size // r for r in cfg.attention_resolutions}  # downsampling rates
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = cfg.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList([Block(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skips, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, emb, mult * mc, cfg)]
                ch = mult * mc
                if ds in attention:
                    layers.append(AttentionBlock(ch, cfg.num_head_channels))
                self.input_blocks.append(Block(*layers))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(Block(ResBlock(ch, emb, ch, cfg, "down")))
                skips.append(ch)
                ds *= 2
        self.middle_block = Block(
            ResBlock(ch, emb, ch, cfg), AttentionBlock(ch, cfg.num_head_channels),
            ResBlock(ch, emb, ch, cfg),
        )  # fmt: skip
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb, mult * mc, cfg)]
                ch = mult * mc
                if ds in attention:
                    layers.append(AttentionBlock(ch, cfg.num_head_channels))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, emb, ch, cfg, "up"))
                    ds //= 2
                self.output_blocks.append(Block(*layers))
        out = cfg.in_channels * (2 if cfg.learn_sigma else 1)
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, n: Tensor) -> Tensor:
        emb = self.time_embed(timestep_embedding(n, self.cfg.model_channels))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def load_adm(path: str | os.PathLike, cfg: ADMConfig = FFHQ_256) -> ADMUNet:
    r"""Builds the U-Net of `cfg` and loads a guided-diffusion state dict from the local file
    `path` (e.g. DPS's `ffhq_10m.pt`); nothing is downloaded.

    Raises:
        FileNotFoundError: The file is absent (with where to get it).
        UserError: It is not a readable state dict of finite tensors, or its keys or shapes do
            not match the architecture (the first mismatches), naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the benchmark's prior is DPS's FFHQ checkpoint "
            "ffhq_10m.pt (linked from the README of github.com/DPS2022/"
            "diffusion-posterior-sampling); download it on a machine with internet access and "
            "pass its local path"
        )
    fix = (
        "download DPS's ffhq_10m.pt again (linked from the README of github.com/DPS2022/"
        "diffusion-posterior-sampling) and pass its local path"
    )
    state = load_state_dict(path, "a guided-diffusion ADM U-Net state dict", fix)
    model = ADMUNet(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} expected"
              for k, v in expected.items()
              if k in state and state[k].shape != v.shape]  # fmt: skip
    if missing or unexpected or shapes:
        parts = [f"missing keys {missing[:5]}" if missing else "",
                 f"unexpected keys {unexpected[:5]}" if unexpected else "",
                 f"shape mismatches {shapes[:5]}" if shapes else ""]  # fmt: skip
        raise UserError(
            f"{path} does not match the ADM U-Net of {cfg}: "
            + "; ".join(p for p in parts if p)
            + ": pass the checkpoint of this architecture, or the ADMConfig of this checkpoint"
        )
    model.load_state_dict(state)
    return model


def write_random_adm(path: str | os.PathLike, cfg: ADMConfig = FFHQ_256, seed: int = 0) -> Path:
    r"""Writes the U-Net of `cfg` with seeded random weights (PyTorch's initialization) as a
    state dict in the format of DPS's `ffhq_10m.pt`, which :func:`load_adm` reads: the file a
    paper-shape smoke run loads where the real checkpoint is absent (374 MB for `FFHQ_256`).

    Returns:
        `path`.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = ADMUNet(cfg).state_dict()
    torch.save(state, path)
    return Path(path)
