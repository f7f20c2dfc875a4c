r"""Image folders (e.g. the FFHQ test images of the posterior-sampling benchmark), read from a
local path into :math:`[-1, 1]` tensors :math:`(N, 3, H, W)`, as the benchmark's
`ToTensor` and `Normalize(0.5, 0.5)` do. Nothing is downloaded.
"""

__all__ = ["EXTENSIONS", "load_images", "write_fake_images"]

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg")


def load_images(folder: str | os.PathLike, size: int, limit: int | None = None) -> Tensor:
    r"""Loads the first `limit` images (sorted by name) of `folder`, each RGB of exactly
    `size` x `size` pixels, as a tensor :math:`(N, 3, size, size)` in :math:`[-1, 1]`.

    Raises:
        FileNotFoundError: The folder does not exist or holds no image file.
        UserError: A file is not a readable image or has the wrong size (naming it).
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {folder} does not exist: put the test images ({size}x{size} RGB "
            f"{'/'.join(EXTENSIONS)} files, e.g. the first 100 of FFHQ 256) there"
        )
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)[:limit]
    if not files:
        raise FileNotFoundError(f"image folder {folder} holds no {'/'.join(EXTENSIONS)} file")
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
        # PIL reports a damaged file as any of these (a broken PNG chunk is a SyntaxError)
        except (
            UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
        ) as error:  # fmt: skip
            raise UserError(
                f"{path} is not a readable image ({type(error).__name__}: {error}): replace or "
                f"remove it"
            ) from None
        if array.shape[:2] != (size, size):
            raise UserError(
                f"{path} is {array.shape[1]}x{array.shape[0]} pixels, expected {size}x{size}: "
                "resize or remove it"
            )
        images.append(torch.from_numpy(array).permute(2, 0, 1))
    return torch.stack(images) * 2 - 1


def write_fake_images(
    folder: str | os.PathLike, count: int = 1, size: int = 256, seed: int = 0
) -> list[Path]:
    r"""Writes `count` random RGB images of `size` x `size` pixels as `00000.png`, ... into
    `folder` (created), for tests and smoke runs without a real image folder.

    Returns:
        The paths written.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [folder / f"{i:05d}.png" for i in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return paths
