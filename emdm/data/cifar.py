r"""Corrupted CIFAR-10 (protocols §4.1): the local `cifar-10-batches-py` folder, pixels mapped to
:math:`[-2, 2)`, and observations :math:`y = m \odot x + \sigma_y \varepsilon` with a random
per-pixel mask shared over RGB that deletes `percent` % of the pixels in expectation,
:math:`m = 1[U > c / 100]`, and noise on all entries (:math:`\sigma_y = 10^{-3}`).

The data are read from a local path (an argument, or the environment variable `EMDM_DATA`, under
which `cifar-10-batches-py/` is looked for); nothing is downloaded.
"""

__all__ = ["cifar_observations", "load_cifar10", "write_fake_cifar"]

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError

_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def load_cifar10(root: str | os.PathLike | None = None, split: str = "train") -> Tensor:
    r"""Returns the images of `split` (`"train"`: 50 000, `"test"`: 10 000) as a float tensor
    :math:`(N, 3, 32, 32)` in :math:`[-2, 2)`, :math:`x = 4 u / 256 - 2` for bytes :math:`u`.

    Arguments:
        root: The folder that holds `cifar-10-batches-py/` (or that folder itself); `None`
            reads `EMDM_DATA`.

    Raises:
        FileNotFoundError: A batch file is missing (saying where to get it).
        UserError: A batch file is not a CIFAR-10 pickle, or its pixels are not bytes (NaN,
            out of :math:`[0, 255]`, not integers), naming the file.
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
    fix = (
        "extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
        "again over it"
    )
    for name in _FILES[split]:
        path = folder / name
        with open(path, "rb") as f:
            try:
                batch = pickle.load(f, encoding="bytes")
                data = np.asarray(batch[b"data"])
            except Exception as error:  # unpickling garbage raises many types
                raise UserError(
                    f"{path} is not a CIFAR-10 batch ({type(error).__name__}: {error}); {fix}"
                ) from None
        if data.ndim != 2 or data.shape[1] != 3072:
            raise UserError(f"{path}: data of shape {data.shape}, expected (N, 3072); {fix}")
        arrays.append(_bytes(data, path, fix))
    u = torch.from_numpy(np.concatenate(arrays)).reshape(-1, 3, 32, 32)
    return u.float() * (4 / 256) - 2


def _bytes(data: np.ndarray, path: Path, fix: str) -> np.ndarray:
    r"""Returns the pixels `data` as uint8, refusing what a cast would wrap or truncate: a
    non-numeric dtype, NaN or infinite values, values outside :math:`[0, 255]` or not
    integers."""
    if data.dtype == np.uint8:
        return data
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise UserError(f"{path}: pixels of dtype {data.dtype}, expected uint8 bytes; {fix}")
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            raise UserError(
                f"{path}: {int(bad.sum())} NaN or infinite pixels, expected bytes in "
                f"[0, 255]; {fix}"
            )
        if (data != np.round(data)).any():
            raise UserError(f"{path}: pixels that are not integers, expected bytes; {fix}")
    low, high = (data.min(), data.max()) if data.size else (0, 0)
    if low < 0 or high > 255:
        raise UserError(
            f"{path}: pixels in [{low}, {high}], expected bytes in [0, 255] (a cast would wrap "
            f"them); {fix}"
        )
    return data.astype(np.uint8)


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


def write_fake_cifar(root: str | os.PathLike, per_batch: int = 4, seed: int = 0) -> Path:
    r"""Writes a fake `<root>/cifar-10-batches-py` in the real format (pickled dicts of
    channel-major uint8 rows and labels) with `per_batch` random images in each of the five
    training batches and the test batch, for tests and smoke runs without the real data set.

    Returns:
        The folder written.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [0] * per_batch}, f)
    return folder
