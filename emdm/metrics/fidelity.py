r"""FID and Inception Score through torch-fidelity, offline (protocols §4.4).

For features :math:`f(x)` of the samples and of the reference set, with Gaussian fits
:math:`(\mu_1, \Sigma_1)` and :math:`(\mu_2, \Sigma_2)` (unbiased covariances),

.. math:: \mathrm{FID} = \|\mu_1 - \mu_2\|^2
    + \mathrm{tr}\big(\Sigma_1 + \Sigma_2 - 2 (\Sigma_1 \Sigma_2)^{1/2}\big),

and for class probabilities :math:`p(y | x)` of the samples (softmax of the logits),

.. math:: \mathrm{IS} = \exp\big(\mathbb{E}_x\, \mathrm{KL}(p(y | x) \,\|\, p(y))\big),
    \quad p(y) = \mathbb{E}_x\, p(y | x),

computed on each of `isc_splits` (10) parts of the shuffled samples, reported as the mean and
standard deviation over the parts.

The paper calls ``torch_fidelity.calculate_metrics(input1=<uint8 CHW dataset>,
input2='cifar10-train', fid=True, isc=True)`` with its defaults (`inception-v3-compat`
features: the 2048-d pool features for FID, the 1008 unbiased logits for IS). Here the
reference set is a tensor (e.g. :func:`emdm.data.load_cifar10`'s train split, the same images
as 'cifar10-train'), the Inception weights come from a local file, and nothing is downloaded
or cached under the home folder. Pixels in :math:`[-2, 2)` are stored as bytes
:math:`u = \mathrm{clip}(\mathrm{round}((x + 2) \cdot 64), 0, 255)`, the inverse of
:math:`x = 4 u / 256 - 2` (the paper's `to_pil`).

A tiny fixed-seed convolutional extractor (`emdm-tiny`) stands in for Inception in tests and
quick runs: its numbers are not comparable with the paper's.

References:
    | GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium
    | (Heusel et al., 2017) https://arxiv.org/abs/1706.08500

    | Improved Techniques for Training GANs
    | (Salimans et al., 2016) https://arxiv.org/abs/1606.03498

    | High-fidelity performance metrics for generative models in PyTorch
    | (Obukhov et al., 2020) https://github.com/toshas/torch-fidelity
"""

__all__ = [
    "INCEPTION",
    "INCEPTION_FILE",
    "TINY",
    "FidelityFeatures",
    "Uint8Images",
    "fidelity_metrics",
    "inception_score",
    "inception_weights_path",
    "register_tiny_extractor",
    "to_uint8",
]

import functools
import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..checks import load_state_dict
from ..errors import UserError

INCEPTION = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
TINY = "emdm-tiny"


def to_uint8(x: Tensor) -> Tensor:
    r"""Maps pixels :math:`x \in [-2, 2)` with shape `(N, C, H, W)` to bytes
    :math:`u = \mathrm{clip}(\mathrm{round}((x + 2) \cdot 64), 0, 255)`, the exact inverse of
    :func:`emdm.data.load_cifar10`'s :math:`x = 4 u / 256 - 2` on its grid. Values outside
    the range are clipped, as the paper's `to_pil` does; uint8 input is returned as is."""
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point in [-2, 2), got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("images contain NaN or infinite values")
    # (x + 2) * 64 is exact in binary floating point, so the grid maps back without rounding error
    return ((x + 2) * 64).round().clamp(0, 255).to(torch.uint8)


class Uint8Images(Dataset):
    r"""Images with shape `(N, C, H, W)` and dtype uint8, one `(C, H, W)` tensor per item: the
    input torch-fidelity takes for a fixed sample set."""

    def __init__(self, images: Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def inception_weights_path(path: str | os.PathLike | None = None) -> Path:
    r"""Returns the local file of torch-fidelity's Inception-v3 weights: `path`, else
    `EMDM_INCEPTION`, else torch's hub cache (where torch-fidelity itself would download it).
    A folder stands for `INCEPTION_FILE` inside it.

    The file is read once (0.2 s for 24 M float32 weights from the page cache on 2 CPU cores;
    again only when it changes) and checked to be torch-fidelity's Inception-v3 state dict,
    so that a damaged file stops the run before any work instead of failing in torch-fidelity
    after it.

    Raises:
        FileNotFoundError: The file is missing (saying where to get it).
        UserError: The file is not a readable state dict, holds NaN or infinite weights, or
            lacks the entries of torch-fidelity's Inception-v3 (naming the file).
    """
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    path = path or os.environ.get("EMDM_INCEPTION")
    path = Path(path) if path else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if path.is_dir():
        path = path / INCEPTION_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception-v3 weights not found at {path}: download {URL_INCEPTION_V3} on a "
            f"machine with internet access and place it at {path} (or pass its path as "
            "inception_weights=, or set EMDM_INCEPTION to it)"
        )
    stat = path.stat()
    _check_inception_file(str(path), stat.st_mtime_ns, stat.st_size, URL_INCEPTION_V3)
    return path


#: Entries of torch-fidelity's Inception-v3 state dict and their shapes: enough to tell its
#: file from a damaged one or another network's (torchvision's Inception has 1000 classes).
_INCEPTION_ENTRIES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@functools.lru_cache(maxsize=4)
def _check_inception_file(path: str, mtime_ns: int, size: int, url: str) -> None:
    r"""Checks the weights file `path`; cached by its modification time and size, so that
    each FID evaluation of a run does not read it again."""
    fix = f"download {url} again and place it at {path}"
    what = "torch-fidelity's Inception-v3 weights"
    state = load_state_dict(path, what, fix)
    wrong = [
        f"{k}: {tuple(state[k].shape) if k in state else 'missing'}, expected {shape}"
        for k, shape in _INCEPTION_ENTRIES.items()
        if k not in state or tuple(state[k].shape) != shape
    ]
    if wrong:
        raise UserError(f"{path} is not {what} ({'; '.join(wrong)}); {fix}")


class _TinyNet(nn.Module):
    r"""Three 3x3 convolutions (stride 1, 2, 2) with ReLUs, a global mean and a linear layer,
    weights drawn from `seed` (He scaling, zero biases)."""

    def __init__(self, dim: int, num_classes: int, seed: int):
        super().__init__()
        # the layers' default initialization draws from the global RNG: restore it afterwards
        with torch.random.fork_rng(devices=[]):
            self.convs = nn.ModuleList([
                nn.Conv2d(3, 16, 3, padding=1),
                nn.Conv2d(16, 32, 3, stride=2, padding=1),
                nn.Conv2d(32, dim, 3, stride=2, padding=1),
            ])  # fmt: skip
            self.head = nn.Linear(dim, num_classes)
        # own generator: the weights depend on the seed only
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in [*self.convs, self.head]:
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
                layer.weight.mul_(math.sqrt(2 / fan_in))
                layer.bias.zero_()
            # larger logits so that p(y|x) is far from uniform and IS is informative
            self.head.weight.mul_(4)

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        x = u.float() / 127.5 - 1  # (B, C, H, W) in [-1, 1]
        x = x.expand(-1, 3, -1, -1)  # gray to RGB, no-op for RGB
        for conv in self.convs:
            x = torch.relu(conv(x))
        features = x.mean((-2, -1))  # (B, dim)
        return features, self.head(features)


@functools.cache
def _tiny_base() -> type:
    # defined on first use: subclassing torch-fidelity's base imports it (and torchvision)
    from torch_fidelity import FeatureExtractorBase

    class TinyFeatureExtractor(FeatureExtractorBase):
        r"""A fixed random conv net on uint8 images `(B, 1 or 3, H, W)`, `H, W >= 8`, with the
        layers 'features' `(B, dim)` (FID, KID, PRC) and 'logits' `(B, num_classes)` (IS)."""

        dim: int = 64
        num_classes: int = 10
        seed: int = 0

        def __init__(self, name: str, features_list: list[str], **kwargs: Any):
            # torch-fidelity passes every calculate_metrics kwarg; none concern this net
            super().__init__(name, features_list)
            self.net = _TinyNet(self.dim, self.num_classes, self.seed)
            self.requires_grad_(False)
            self.eval()

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return "features", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[
                metric
            ]

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> Tensor:
            return torch.zeros((1, 3, 8, 8), dtype=torch.uint8)

        def forward(self, u: Tensor) -> tuple[Tensor, ...]:
            if u.dtype != torch.uint8 or u.ndim != 4 or u.shape[1] not in (1, 3):
                raise ValueError(
                    f"expected uint8 images (B, 1 or 3, H, W), got {u.dtype} {tuple(u.shape)}"
                )
            if min(u.shape[-2:]) < 8:
                raise ValueError(f"images must be at least 8x8, got {tuple(u.shape[-2:])}")
            features = dict(zip(("features", "logits"), self.net(u), strict=True))
            return tuple(features[name] for name in self.features_list)

    return TinyFeatureExtractor


def register_tiny_extractor(dim: int = 64, num_classes: int = 10, seed: int = 0) -> str:
    r"""Registers (once) with torch-fidelity the tiny extractor with `dim` features and
    `num_classes` logits drawn from `seed`, and returns its name: `TINY` for the defaults,
    else `emdm-tiny-d{dim}-c{num_classes}-s{seed}` (the name keys torch-fidelity's cache)."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if dim < 1 or num_classes < 2:
        raise ValueError(f"need dim >= 1 and num_classes >= 2, got {dim} and {num_classes}")
    default = (dim, num_classes, seed) == (64, 10, 0)
    name = TINY if default else f"emdm-tiny-d{dim}-c{num_classes}-s{seed}"
    registered = FEATURE_EXTRACTORS_REGISTRY.get(name)
    config = {"dim": dim, "num_classes": num_classes, "seed": seed}
    if registered is None:
        base = _tiny_base()
        register_feature_extractor(name, type(base.__name__, (base,), config))
    elif not (
        issubclass(registered, _tiny_base())
        and all(getattr(registered, k) == v for k, v in config.items())
    ):
        raise ValueError(f"feature extractor {name!r} is already registered as {registered}")
    return name


def _images(x: Tensor, what: str, min_count: int) -> Tensor:
    r"""Checks and converts `x` to uint8 RGB `(N, 3, H, W)`."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{what} must have shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    if x.shape[0] < min_count:
        raise ValueError(
            f"{what} has {x.shape[0]} images, fewer than the {min_count} needed "
            "(FID needs 2, IS one per split)"
        )
    if x.is_floating_point() and x.numel() and x.min() >= 0 and x.max() > 2:
        # clipping such values would silently turn [0, 255] images into near-white ones
        raise ValueError(
            f"{what}: float pixels in [{x.min().item():g}, {x.max().item():g}] look like "
            "[0, 255] images; pass uint8 bytes or floats in [-2, 2) (x = 4 u / 256 - 2)"
        )
    u = to_uint8(x)
    # Inception takes RGB; the tiny extractor replicates gray identically
    return u.expand(-1, 3, -1, -1)


def _extractor(
    feature_extractor: str | None, inception_weights: str | os.PathLike | None
) -> tuple[str, type, Path | None]:
    r"""The name, class and weights file of a feature extractor that runs offline."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    name = INCEPTION if feature_extractor is None else feature_extractor
    if name == TINY:
        register_tiny_extractor()
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        raise ValueError(
            f"unknown feature extractor {name!r}; choose {INCEPTION!r}, {TINY!r} or a name "
            f"registered by register_tiny_extractor, among {sorted(FEATURE_EXTRACTORS_REGISTRY)}"
        )
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    if cls.__module__.startswith("torch_fidelity.") and name != INCEPTION:
        raise ValueError(f"{name!r} would download its weights; use {INCEPTION!r} or {TINY!r}")
    weights = inception_weights_path(inception_weights) if name == INCEPTION else None
    return name, cls, weights


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(
        device if device is not None else "cuda" if torch.cuda.is_available() else "cpu"
    )


class FidelityFeatures:
    r"""The features that FID and IS read, as ``torch_fidelity.calculate_metrics`` computes
    them (the same extractor, batches and layers), from an extractor built once.

    Arguments:
        feature_extractor: `None` for the paper's `inception-v3-compat`, `TINY`, or a name
            returned by :func:`register_tiny_extractor`.
        inception_weights: The local Inception-v3 weights file (see
            :func:`inception_weights_path`); used with the default extractor only.
        batch_size: Images per forward pass of the extractor.
        device: Where the extractor runs; `None` for CUDA when available.

    Extracting features draws nothing from torch's global generator (which torch-fidelity's
    data loader and Inception's initialization would draw from), so that scoring during a run
    leaves the run's draws as they are.
    """

    def __init__(
        self,
        feature_extractor: str | None = None,
        *,
        inception_weights: str | os.PathLike | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
    ):
        self.name, cls, self.weights = _extractor(feature_extractor, inception_weights)
        #: The extractor's layer that each metric reads, e.g. {"fid": "2048", ...} for Inception
        self.layers = {m: cls.get_default_feature_layer_for_metric(m) for m in ("fid", "isc")}
        self.batch_size, self.device = batch_size, _device(device)
        self._net = None

    def _build(self):
        from torch_fidelity.utils import create_feature_extractor

        kwargs: dict[str, Any] = {"verbose": False}
        if self.weights is not None:
            kwargs["feature_extractor_weights_path"] = str(self.weights)
        layers = list(dict.fromkeys(self.layers.values()))
        return create_feature_extractor(
            self.name, layers, cuda=self.device.type == "cuda", **kwargs
        )

    def _on_device(self):
        # torch-fidelity moves tensors with .cuda(), i.e. to the current CUDA device
        return torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()

    def __call__(self, images: Tensor, what: str = "images", min_count: int = 2) -> dict:
        r"""Returns the features of `images` `(N, C, H, W)` (uint8, or float in
        :math:`[-2, 2)`, see :func:`to_uint8`) for each metric: 'fid' `(N, D)` and 'isc'
        `(N, K)` (the logits), float32 on the CPU. `what` names the images in errors, which
        need at least `min_count` of them."""
        from torch_fidelity.utils import get_featuresdict_from_dataset

        u = _images(images, what, min_count)
        with torch.random.fork_rng(devices=[]), self._on_device():
            if self._net is None:
                self._net = self._build()
            features = get_featuresdict_from_dataset(
                Uint8Images(u), self._net, self.batch_size, self.device.type == "cuda",
                save_cpu_ram=True, verbose=False,
            )  # fmt: skip
        return {metric: features[layer] for metric, layer in self.layers.items()}


def inception_score(logits: Tensor, splits: int = 10) -> tuple[float, float]:
    r"""The mean and standard deviation over `splits` parts of the IS of logits `(N, K)`, as
    torch-fidelity computes it (the rows shuffled by its fixed seed)."""
    from torch_fidelity.defaults import DEFAULTS
    from torch_fidelity.metric_isc import (
        KEY_METRIC_ISC_MEAN,
        KEY_METRIC_ISC_STD,
        isc_features_to_metric,
    )

    if logits.ndim != 2 or logits.shape[0] < splits:
        raise ValueError(f"need logits (N, K) with N >= {splits}, got {tuple(logits.shape)}")
    out = isc_features_to_metric(logits, splits, DEFAULTS["samples_shuffle"], DEFAULTS["rng_seed"])
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def fidelity_metrics(
    samples: Tensor,
    reference: Tensor,
    *,
    inception_weights: str | os.PathLike | None = None,
    feature_extractor: str | None = None,
    fid: bool = True,
    isc: bool = True,
    isc_splits: int = 10,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    reference_name: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    r"""Returns FID between `samples` and `reference`, and the Inception Score of `samples`,
    as ``torch_fidelity.calculate_metrics`` computes them, without network access.

    Arguments:
        samples: Images with shape `(N, C, H, W)`, `C` 1 or 3, uint8 or float in
            :math:`[-2, 2)` (clipped and rounded by :func:`to_uint8`).
        reference: The reference images for FID, in the same formats (e.g. the CIFAR-10
            train set from :func:`emdm.data.load_cifar10`).
        inception_weights: The local Inception-v3 weights file (see
            :func:`inception_weights_path`); used with the default extractor only.
        feature_extractor: `None` for the paper's `inception-v3-compat`, `TINY`, or a name
            returned by :func:`register_tiny_extractor`.
        isc_splits: The number of parts the IS is computed on (the paper: 10).
        batch_size: Images per forward pass of the extractor.
        device: Where the extractor runs; `None` for CUDA when available.
        cache_dir: A folder for torch-fidelity's cache of the reference features and FID
            statistics, keyed by `reference_name` and the extractor; `None` caches nothing.
            The key does not depend on the images: a new reference needs a new name.
        reference_name: The cache key of `reference`; required with `cache_dir`.
        verbose: Whether torch-fidelity reports progress on stderr.

    Returns:
        A dict with 'fid' (if `fid`), 'isc_mean' and 'isc_std' (if `isc`), and the
        provenance: 'feature_extractor', its 'feature_layer_fid' / 'feature_layer_isc',
        'isc_splits', 'num_samples', 'num_reference' and 'torch_fidelity_version'.
    """
    import torch_fidelity

    if not (fid or isc):
        raise ValueError("nothing to compute: fid and isc are both False")
    if cache_dir is not None and reference_name is None:
        raise ValueError("cache_dir needs reference_name, the key of the cached reference")
    name, cls, weights = _extractor(feature_extractor, inception_weights)

    x = _images(samples, "samples", isc_splits if isc else 2)
    y = _images(reference, "reference", 2) if fid else None
    device = _device(device)

    kwargs: dict[str, Any] = dict(
        input1=Uint8Images(x),
        input2=Uint8Images(y) if fid else None,
        fid=fid,
        isc=isc,
        kid=False,
        prc=False,
        ppl=False,
        feature_extractor=name,
        isc_splits=isc_splits,
        batch_size=batch_size,
        cuda=device.type == "cuda",
        # the images are in memory already: worker processes would only copy them
        save_cpu_ram=True,
        # inputs are Datasets, so no registered data set is ever built; belt and braces
        datasets_download=False,
        # torch-fidelity caches under $TORCH_HOME by default; only an explicit folder is used
        cache=cache_dir is not None,
        cache_root=None if cache_dir is None else str(cache_dir),
        input2_cache_name=reference_name if cache_dir is not None else None,
        verbose=verbose,
    )
    if weights is not None:
        # with a path, the extractor loads the file instead of calling load_state_dict_from_url
        kwargs["feature_extractor_weights_path"] = str(weights)
    # torch-fidelity moves the extractor with .cuda(), i.e. to the current CUDA device
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        metrics = torch_fidelity.calculate_metrics(**kwargs)

    out: dict[str, Any] = {"feature_extractor": name}
    if fid:
        out["fid"] = float(metrics[torch_fidelity.KEY_METRIC_FID])
        out["feature_layer_fid"] = cls.get_default_feature_layer_for_metric("fid")
        out["num_reference"] = y.shape[0]
    if isc:
        out["isc_mean"] = float(metrics[torch_fidelity.KEY_METRIC_ISC_MEAN])
        out["isc_std"] = float(metrics[torch_fidelity.KEY_METRIC_ISC_STD])
        out["feature_layer_isc"] = cls.get_default_feature_layer_for_metric("isc")
        out["isc_splits"] = isc_splits
    out["num_samples"] = x.shape[0]
    out["torch_fidelity_version"] = torch_fidelity.__version__
    return out
