r"""Corrupted CIFAR-10 (protocols §4.1): the local `cifar-10-batches-py` folder, pixels mapped to
:math:`[-2, 2)`, and observations :math:`y = m \odot x + \sigma_y \varepsilon` with a random
per-pixel mask shared over RGB that deletes `percent` % of the pixels in expectation,
:math:`m = 1[U > c / 100]`, and noise on all entries (:math:`\sigma_y = 10^{-3}`).

The data are read from a local path (an argument, or the environment variable `EMDM_DATA`, under
which `cifar-10-batches-py/` is looked for); nothing is downloaded.
"""

__all__ = ["cifar_observations", "load_cifar10"]

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def load_cifar10(root: str | os.PathLike | None = None, split: str = "train") -> Tensor:
    r"""Returns the images of `split` (`"train"`: 50 000, `"test"`: 10 000) as a float tensor
    :math:`(N, 3, 32, 32)` in :math:`[-2, 2)`, :math:`x = 4 u / 256 - 2` for bytes :math:`u`.

    Arguments:
        root: The folder that holds `cifar-10-batches-py/` (or that folder itself); `None`
            reads `EMDM_DATA`.
    """
    if split not in _FILES:
        raise ValueError(f"split must be one of {tuple(_FILES)}, got {split!r}")
    root = Path(root or os.environ.get("EMDM_DATA", "data"))
    folder = root if (root / _FILES["test"][0]).exists() else root / "cifar-10-batches-py"
    missing = [name for name in _FILES[split] if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found: {folder / missing[0]} does not exist. Download the python "
            "version (cifar-10-python.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html "
            f"and extract it under {root} (or set EMDM_DATA to the folder that holds "
            "cifar-10-batches-py/)"
        )
    arrays = []
    for name in _FILES[split]:
        with open(folder / name, "rb") as f:
            try:
                batch = pickle.load(f, encoding="bytes")
                data = np.asarray(batch[b"data"], dtype=np.uint8)
            except (pickle.UnpicklingError, KeyError, EOFError) as error:
                raise ValueError(f"{folder / name} is not a CIFAR-10 batch: {error!r}") from None
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{folder / name}: data of shape {data.shape}, expected (N, 3072)")
        arrays.append(data)
    u = torch.from_numpy(np.concatenate(arrays)).reshape(-1, 3, 32, 32)
    return u.float() * (4 / 256) - 2


def cifar_observations(
    x: Tensor, percent: float, generator: torch.Generator, sigma_y: float = 1e-3
) -> tuple[Tensor, Tensor]:
    r"""Returns the masks :math:`(N, 1, H, W)` (1 observed) and the observations
    :math:`y = m \odot x + \sigma_y \varepsilon`, with shape of `x`."""
    if not 0 <= percent < 100:
        raise ValueError(f"percent must be in [0, 100), got {percent}")
    N, _, H, W = x.shape
    u = torch.rand((N, 1, H, W), generator=generator)
    mask = (u > percent / 100).to(x.dtype)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return mask, mask * x + sigma_y * noise
