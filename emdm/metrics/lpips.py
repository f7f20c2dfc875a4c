r"""LPIPS with the AlexNet backbone (Zhang et al., 2018), as the paper's Table 4 reports it.

For images :math:`x, y` in :math:`[0, 1]`, normalized by ImageNet's mean and standard deviation,
the activations :math:`f^l` after the five ReLUs of AlexNet's features are unit-normalized
along channels, and

.. math:: \mathrm{LPIPS}(x, y) = \sum_l \frac{1}{H_l W_l} \sum_{h, w} \sum_c
    w_{l, c} \big(\hat{f}^l_{hwc}(x) - \hat{f}^l_{hwc}(y)\big)^2

with the learned non-negative channel weights :math:`w_l` of LPIPS v0.1. The ImageNet
normalization is the LPIPS scaling layer applied to :math:`2x - 1` (piqa's convention).

Weights are read from local files, never downloaded: torchvision's AlexNet state dict
(`alexnet-owt-7be5be79.pth`, its `features.*` entries) and LPIPS's `alex.pth` (v0.1,
`lin{0..4}.model.1.weight`). Pass their paths, or set `EMDM_LPIPS_ALEXNET` and
`EMDM_LPIPS_LINEAR`; by default the AlexNet file is looked for in torch's hub cache.

References:
    | The Unreasonable Effectiveness of Deep Features as a Perceptual Metric
    | (Zhang et al., 2018) https://arxiv.org/abs/1801.03924
"""

__all__ = ["LPIPS", "write_random_lpips"]

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checks import load_state_dict
from ..errors import UserError

CHANNELS = (64, 192, 384, 256, 256)
_ALEXNET = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
_LINEAR = "weights/v0.1/alex.pth of github.com/richzhang/PerceptualSimilarity"
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _features() -> nn.Sequential:
    r"""AlexNet's convolutional features, with torchvision's module indices."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )  # fmt: skip


def _locate(path, variable: str, default: Path | None, what: str, source: str) -> Path:
    path = path or os.environ.get(variable) or default
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"LPIPS needs {what} from a local file, not found at {path}: download {source} on "
            f"a machine with internet access and pass its path, or set {variable}"
        )
    return Path(path)


class LPIPS(nn.Module):
    r"""Creates the LPIPS (AlexNet, v0.1) distance; `forward(x, y)` takes images
    :math:`(B, 3, H, W)` in :math:`[0, 1]` and returns :math:`(B,)`.

    Arguments:
        alexnet: The path of torchvision's AlexNet weights, or `None` for
            `EMDM_LPIPS_ALEXNET`, else torch's hub cache.
        linear: The path of LPIPS's `alex.pth`, or `None` for `EMDM_LPIPS_LINEAR`.

    Raises:
        FileNotFoundError: A file is missing (saying where to get it).
        UserError: A file is not a readable state dict of finite tensors, or lacks the
            entries or shapes expected (naming it and where to get it again).
    """

    def __init__(self, alexnet: str | os.PathLike | None = None,
                 linear: str | os.PathLike | None = None):  # fmt: skip
        super().__init__()
        cache = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
        alexnet = _locate(alexnet, "EMDM_LPIPS_ALEXNET", cache, "AlexNet's weights", _ALEXNET)
        linear = _locate(
            linear, "EMDM_LPIPS_LINEAR", None, "the LPIPS v0.1 linear weights", _LINEAR
        )
        self.features = _features()
        fix = f"download {_ALEXNET} again and pass its path, or set EMDM_LPIPS_ALEXNET"
        state = load_state_dict(alexnet, "torchvision's AlexNet weights", fix)
        features = {
            k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")
        }
        try:
            self.features.load_state_dict(features)
        except RuntimeError as error:  # missing, unexpected or misshapen entries
            message = " ".join(str(error).split())[:300]
            raise UserError(
                f"{alexnet} is not torchvision's AlexNet weights: {message}; {fix}"
            ) from None
        fix = f"download {_LINEAR} again and pass its path, or set EMDM_LPIPS_LINEAR"
        lin = load_state_dict(linear, "LPIPS's alex.pth (v0.1)", fix)
        try:
            weights = [lin[f"lin{i}.model.1.weight"] for i in range(5)]
        except KeyError as error:
            raise UserError(f"{linear} is not LPIPS's alex.pth: no key {error}; {fix}") from None
        for i, (w, c) in enumerate(zip(weights, CHANNELS, strict=True)):
            if w.shape != (1, c, 1, 1):
                raise UserError(
                    f"{linear}: lin{i} has shape {tuple(w.shape)}, expected (1, {c}, 1, 1); {fix}"
                )
            self.register_buffer(f"w{i}", w.flatten())
        self.register_buffer("mean", torch.tensor(_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD).reshape(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def _activations(self, x: Tensor) -> list[Tensor]:
        out, h = [], (x - self.mean) / self.std
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in (1, 4, 7, 9, 11):  # after each ReLU
                out.append(h / (h.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS takes two RGB batches (B, 3, H, W) of one shape, got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        total = 0
        for i, (a, b) in enumerate(zip(self._activations(x), self._activations(y), strict=True)):
            w = getattr(self, f"w{i}").to(a.dtype)[None, :, None, None]
            total = total + (w * (a - b).square()).sum(1).mean(dim=(1, 2))
        return total


def write_random_lpips(folder: str | os.PathLike, seed: int = 0) -> tuple[Path, Path]:
    r"""Writes LPIPS's two weight files with seeded random values into `folder` (created):
    `alexnet.pth`, AlexNet's convolutional features under torchvision's key names (the
    classifier, which LPIPS does not read, left out), and `alex.pth`, the five linear layers
    under LPIPS v0.1's: the files a smoke run reads where the real ones are absent.

    Returns:
        The paths of `alexnet.pth` and `alex.pth`, as :class:`LPIPS` takes them.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alexnet, linear = folder / "alexnet.pth", folder / "alex.pth"
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        features = {f"features.{k}": v for k, v in _features().state_dict().items()}
    torch.save(features, alexnet)
    lin = {f"lin{i}.model.1.weight": torch.rand((1, c, 1, 1), generator=generator)
           for i, c in enumerate(CHANNELS)}  # fmt: skip
    torch.save(lin, linear)
    return alexnet, linear
