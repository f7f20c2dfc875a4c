r"""Accelerated MRI (protocols §5.1): fastMRI knee single-coil slices, column-line masks, and
noisy masked k-space observations.

Images. For each volume (an HDF5 file of `singlecoil_{train,val}/`), the slices
:math:`r_s` of `reconstruction_rss` with :math:`s \in [10, 41)` (up to 31, each
:math:`320 \times 320`) are divided by their common maximum and mapped into :math:`[-2, 2]`,

.. math:: x_s = 4 \, r_s / \max_{s' \in [10, 41)} \max r_{s'} - 2 .

Masks. One mask of column lines per slice, :math:`M \in \{0, 1\}^W` (broadcast over the rows
:math:`H`), keeps the :math:`c` centre columns :math:`[W/2 - c/2, W/2 + c/2)` (the low
frequencies, zero frequency at :math:`W/2` after `fftshift`) and each other column
independently with probability :math:`p`,

.. math::
    M_j = 1[U_j < p] \lor j \in [W/2 - c/2, W/2 + c/2), \qquad
    p = \frac{W / R - c}{W - c}, \qquad c = 2 \lceil 3 W / (16 R) \rceil,

so that :math:`\mathbb{E}[\sum_j M_j] = c + p (W - c) = W / R` exactly: acceleration
:math:`R`. At :math:`W = 320`, :math:`c = 2 \lceil 60 / R \rceil` and, when :math:`60 / R` is an
integer (:math:`c = 120 / R`),

.. math:: p = \frac{320 / R - 120 / R}{320 - 120 / R} = \frac{200}{320 R - 120},

the rule of the paper's code (after Jalal et al., 2021): at :math:`R = 6`, :math:`c = 20` and
:math:`p = 1/9`. (Where :math:`60 / R` is not an integer the paper keeps :math:`p = 200 /
(320 R - 120)` with the rounded-up :math:`c`, slightly more than :math:`W / R` lines on average;
here :math:`p` absorbs the rounding.)

Observations. With :math:`A x = [\mathrm{Re}, \mathrm{Im}](M \odot F_c x)`
(:class:`emdm.operators.MRIOperator`), :math:`y = A x + \sigma_y \varepsilon`,
:math:`\varepsilon \sim \mathcal{N}(0, I)` on every entry of :math:`y`, observed or not
(:math:`\sigma_y = 10^{-2}`). The zero-filled baseline is :math:`A^T y = \mathrm{Re}\,
F_c^{-1}(M \odot y)`.

Phantoms. Without the data (which is obtained by request), synthetic Shepp–Logan-like images
(a bright outer ellipse, a darker tissue ellipse inside it, random inner ellipses and a smooth
bias field) stand in, and :func:`write_fake_fastmri` writes them as fastMRI-like HDF5 files
(after the test fixtures of `facebookresearch/fastMRI`), so that the loader is tested without the
real data. Nothing is downloaded.

References:
    | fastMRI: An Open Dataset and Benchmarks for Accelerated MRI (Zbontar et al., 2018)
    | https://arxiv.org/abs/1811.08839
    | Robust Compressed Sensing MRI with Deep Generative Priors (Jalal et al., 2021)
    | https://arxiv.org/abs/2108.01368
    | The Fourier reconstruction of a head section (Shepp & Logan, 1974)
    | https://doi.org/10.1109/TNS.1974.6499235
    | Learning Diffusion Priors from Observations by Expectation Maximization (Rozet et al., 2024)
    | https://arxiv.org/abs/2405.13712
"""

__all__ = [
    "line_mask",
    "load_fastmri",
    "mri_observations",
    "phantoms",
    "write_fake_fastmri",
    "zero_filled",
]

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..operators.mri import MRIOperator

_KEY = "reconstruction_rss"
_SPLITS = ("train", "val")  # the test and challenge splits have no reconstructions
_FIX = "extract it again from the fastMRI archive, or remove it from the folder"


def _missing(folder: Path, root: Path, split: str, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"fastMRI knee single-coil not found: {folder} {what}. The data are obtained by request "
        f"at https://fastmri.med.nyu.edu/; download knee_singlecoil_{split}.tar.xz and extract it "
        f"under {root}, so that {root / f'singlecoil_{split}'} holds the .h5 files (or set "
        f"EMDM_DATA to the folder that holds singlecoil_{split}/)"
    )


def load_fastmri(
    root: str | os.PathLike | None = None,
    split: str = "train",
    slices: tuple[int, int] = (10, 41),
    max_volumes: int | None = None,
    size: int | None = 320,
) -> Tensor:
    r"""Returns the slices :math:`[start, stop)` of `reconstruction_rss` of every volume of
    `split`, each volume divided by its maximum over these slices and mapped by
    :math:`x = 4 x - 2` into :math:`[-2, 2]`, as a float32 tensor with shape
    :math:`(N, size, size)`. Volumes are taken in the order of their sorted file names, and a
    volume shorter than `stop` gives fewer slices.

    All files are checked (an HDF5 file, with a 3-D `reconstruction_rss` of square slices of the
    same size) before any data is read, so that a bad file fails fast and nothing partial is
    returned.

    Warning:
        The whole train split (973 volumes, about 30 000 slices) takes about 12 GB; use
        `max_volumes` for less.

    Arguments:
        root: The folder that holds `singlecoil_{split}/` (or that folder itself); `None`
            reads `EMDM_DATA`, else `"data"`.
        split: `"train"` or `"val"`.
        slices: The slice range `(start, stop)` of each volume (the paper's `[10, 41)`).
        max_volumes: Read only the first `max_volumes` volumes.
        size: The expected slice size (fastMRI's reconstructions are 320 x 320); `None`
            accepts any square size shared by all volumes.

    Raises:
        FileNotFoundError: The folder does not exist or holds no `.h5` file.
        UserError: A file is not HDF5, has no `reconstruction_rss`, has the wrong shape or
            dtype, cannot be read, or holds NaN, infinite or no positive values (naming the
            file, what was expected and what to do).
    """
    import h5py

    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    start, stop = slices
    if not 0 <= start < stop:
        raise ValueError(f"slices must be (start, stop) with 0 <= start < stop, got {slices}")
    if max_volumes is not None and max_volumes < 1:
        raise ValueError(f"max_volumes must be positive or None, got {max_volumes}")

    root = Path(root or os.environ.get("EMDM_DATA", "data"))
    folder = root / f"singlecoil_{split}"
    if not folder.is_dir() and root.is_dir() and any(root.glob("*.h5")):
        folder = root
    if not folder.is_dir():
        raise _missing(folder, root, split, "does not exist")
    files = sorted(folder.glob("*.h5"))[:max_volumes]
    if not files:
        raise _missing(folder, root, split, "holds no .h5 file")

    # Headers first: HDF5 reads only metadata here, so every file is checked in seconds
    counts, inferred = [], size is None
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                if not isinstance(f.get(_KEY), h5py.Dataset):
                    raise UserError(
                        f"{path} has no dataset {_KEY!r} (keys: {sorted(f.keys())}): expected a "
                        f"fastMRI knee single-coil {split} volume; {_FIX}"
                    )
                shape, dtype = f[_KEY].shape, f[_KEY].dtype
        except OSError as error:
            raise UserError(f"{path} is not a readable HDF5 file: {error}; {_FIX}") from None
        square = len(shape) == 3 and shape[1] == shape[2]
        if not square or (size is not None and shape[1] != size):
            expected = f"(slices, {size or 'S'}, {size or 'S'})"
            expected += " as the earlier volumes" if inferred and size is not None else ""
            raise UserError(f"{path}: {_KEY} has shape {shape}, expected {expected}; {_FIX}")
        if not np.issubdtype(dtype, np.floating):
            raise UserError(
                f"{path}: {_KEY} has dtype {dtype}, expected a real float type; {_FIX}"
            )
        size = shape[1]
        counts.append(max(0, min(stop, shape[0]) - start))
    if sum(counts) == 0:
        raise ValueError(f"no volume of {folder} has slices in [{start}, {stop})")

    # Preallocated, so that the full split does not need twice its memory in a concatenation
    x = torch.empty((sum(counts), size, size), dtype=torch.float32)  # (N, H, W)
    i = 0
    for path, count in zip(files, counts, strict=True):
        if count == 0:
            continue
        try:
            with h5py.File(path, "r") as f:
                r = np.asarray(f[_KEY][start : start + count], dtype=np.float32)
        # a truncated or damaged file may open, then fail on reading its chunks
        except (OSError, RuntimeError, KeyError, ValueError) as error:
            raise UserError(f"{path}: {_KEY} could not be read: {error}; {_FIX}") from None
        finite = np.isfinite(r)
        peak = r.max(where=finite, initial=-np.inf)
        if not finite.all() or peak <= 0:
            raise UserError(
                f"{path}: {_KEY}[{start}:{start + count}] has {int((~finite).sum())} NaN or "
                f"infinite values and maximum {peak} over the finite ones, expected a finite "
                f"magnitude image with a positive maximum; {_FIX}"
            )
        # x / max is exactly 1 at the maximum (IEEE division), so the range is exactly [-2, 2]
        x[i : i + count] = torch.from_numpy(r) / float(peak) * 4 - 2
        i += count
    return x


def line_mask(
    n: int,
    width: int,
    R: float,
    center: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Draws `n` column-line masks of acceleration :math:`R`, a new one per row,

    .. math::
        M_j = 1[U_j < p] \lor j \in [j_0, j_0 + c), \qquad
        j_0 = \lfloor W/2 \rfloor - \lfloor c/2 \rfloor, \qquad
        p = (W / R - c) / (W - c),

    so that :math:`\mathbb{E}[\sum_j M_j] = W / R` (module docstring). At :math:`W = 320`,
    :math:`R = 6`: :math:`c = 20`, :math:`p = 1/9`, the paper's mask.

    Arguments:
        n: The number of masks.
        width: The number of columns :math:`W`.
        R: The acceleration, :math:`R \geq 1`.
        center: The number :math:`c` of centre columns always kept; `None` scales the paper's
            :math:`2 \lceil 60 / R \rceil` at :math:`W = 320` with :math:`W`,
            :math:`c = 2 \lceil 3 W / (16 R) \rceil`.
        generator: The random generator.

    Returns:
        The masks (`True` observed), bool with shape :math:`(n, W)`.

    Raises:
        ValueError: :math:`R < 1`, or :math:`W / R < c` (the centre alone exceeds the budget).
    """
    if not R >= 1:
        raise ValueError(f"the acceleration R must be >= 1, got {R}")
    if center is None:
        # rounded first: 3 W / (16 R) can land a hair above an integer in floating point
        center = 2 * math.ceil(round(3 * width / (16 * R), 9))
    if not 0 <= center <= width:
        raise ValueError(f"center must be in [0, {width}], got {center}")
    if width / R < center:
        raise ValueError(
            f"cannot keep 1/R = 1/{R} of {width} columns ({width / R:.2f}) with {center} centre "
            "columns always kept: lower R or center"
        )
    p = (width / R - center) / (width - center) if width > center else 0.0
    u = torch.rand((n, width), generator=generator)
    mask = u < p  # (n, W)
    low = width // 2 - center // 2
    mask[:, low : low + center] = True
    return mask


def phantoms(n: int, size: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Draws `n` synthetic MRI-like images (Shepp–Logan-like, random), with shape
    :math:`(n, size, size)` in :math:`[-2, 2]`.

    Each image is a bright outer ellipse ("skull", intensity 1) around a darker tissue ellipse
    (intensity :math:`t \sim \mathcal{U}(0.2, 0.5)`), six inner ellipses of random position, axes,
    rotation and intensity (clipped to the tissue), times a smooth bias field
    :math:`1 + \beta (a u + b v + c u v)`; intensities are clipped at 0, divided by their maximum
    and mapped by :math:`4 x - 2`, as the loader does, so that the background is :math:`-2` and
    each image's maximum :math:`2`. Deterministic given the generator's state.
    """
    K = 6  # inner ellipses
    P = 11 + 6 * K  # parameters per image
    theta = torch.rand((n, P), generator=generator).T[:, :, None, None]  # (P, n, 1, 1)
    params = iter(theta)

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * next(params)

    # Outer ellipse, slightly off-centre and tilted, and the tissue ellipse inside it. The ring
    # between them is at least 1.5 pixels thick, so that it shows at any size and the maximum
    # is positive
    cx, cy = uniform(-0.08, 0.08), uniform(-0.08, 0.08)
    a, b = uniform(0.6, 0.85), uniform(0.7, 0.92)
    angle = uniform(-math.pi / 8, math.pi / 8)
    ring = torch.clamp(uniform(0.04, 0.08), min=3 / size)
    tissue = uniform(0.2, 0.5)
    beta, bias = uniform(0, 0.2), [uniform(-1, 1) for _ in range(3)]
    inner = [
        (
            uniform(0, 0.75) ** 0.5,  # radius, uniform over the disk
            uniform(0, 2 * math.pi),
            uniform(0.04, 0.3),
            uniform(0.04, 0.3),
            uniform(0, math.pi),
            uniform(-0.2, 0.5),
        )
        for _ in range(K)
    ]

    grid = (torch.arange(size, dtype=torch.float32) + 0.5) * (2 / size) - 1
    v, u = torch.meshgrid(grid, grid, indexing="ij")  # (H, W): rows v, columns u

    def ellipse(x0: Tensor, y0: Tensor, ax: Tensor, ay: Tensor, phi: Tensor) -> Tensor:
        du, dv = u - x0, v - y0  # (n, H, W)
        s, c = torch.sin(phi), torch.cos(phi)
        return ((c * du + s * dv) / ax) ** 2 + ((c * dv - s * du) / ay) ** 2 <= 1

    body = ellipse(cx, cy, a, b, angle)
    core = ellipse(cx, cy, a - ring, b - ring, angle)
    image = body.float() + (tissue - 1) * core.float()  # (n, H, W)
    for radius, phi, ax, ay, rot, level in inner:
        # centres inside the tissue ellipse, in its rotated frame
        eu, ev = radius * (a - ring) * torch.cos(phi), radius * (b - ring) * torch.sin(phi)
        x0 = cx + torch.cos(angle) * eu - torch.sin(angle) * ev
        y0 = cy + torch.sin(angle) * eu + torch.cos(angle) * ev
        image = image + level * (ellipse(x0, y0, ax * a, ay * b, rot) & core).float()
    image = image * (1 + beta * (bias[0] * u + bias[1] * v + bias[2] * u * v))  # >= 0.4x
    image = image.clamp(min=0)
    # > 0 as the ring shows with intensity >= 0.4; the clamp guards sizes of a pixel or two
    peak = image.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-6)
    return image / peak * 4 - 2


def write_fake_fastmri(
    folder: str | os.PathLike,
    volumes: int = 2,
    slices: int = 45,
    size: int = 320,
    generator: torch.Generator | None = None,
) -> list[Path]:
    r"""Writes `volumes` fake fastMRI knee single-coil files `file1000000.h5`, ... in `folder`
    (created), for tests without the real data. As in fastMRI's own test fixtures, each holds

    * `reconstruction_rss`: float32 :math:`(slices, size, size)`, :func:`phantoms` mapped back
      to magnitudes :math:`\propto (x + 2) / 4`, scaled per slice by a bump over the slice index
      (central slices brightest, as in real volumes) and per volume by a random factor of order
      :math:`10^{-4}`;
    * `reconstruction_esc`: the same, mirrored and halved, so that reading the wrong key shows;
    * `kspace`: complex64 :math:`(slices, size, size)`, the centred spectrum of
      `reconstruction_rss` (the real files' :math:`640 \times 368` k-space is not emulated);
    * attributes `acquisition`, `max`, `norm` and `patient_id`.

    Returns:
        The paths written, sorted.
    """
    import h5py

    if generator is None:
        generator = torch.Generator().manual_seed(0)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = torch.arange(slices, dtype=torch.float32)
    bump = 0.4 + 0.6 * torch.sin(math.pi * (index + 0.5) / slices)  # (S,)
    paths = []
    for i in range(volumes):
        scale = 1e-4 * (0.5 + torch.rand((), generator=generator))
        rss = (phantoms(slices, size, generator) + 2) / 4 * bump[:, None, None] * scale
        kspace = torch.fft.fftshift(
            torch.fft.fft2(torch.fft.ifftshift(rss, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)
        )
        rss = rss.numpy()
        path = folder / f"file{1000000 + i}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("kspace", data=kspace.to(torch.complex64).numpy())
            f.create_dataset("reconstruction_rss", data=rss)
            f.create_dataset("reconstruction_esc", data=np.ascontiguousarray(rss[..., ::-1]) / 2)
            f.attrs["acquisition"] = "CORPD_FBK"
            f.attrs["max"] = float(rss.max())
            f.attrs["norm"] = float(np.linalg.norm(rss))
            f.attrs["patient_id"] = f"fake{i:04d}"
        paths.append(path)
    return paths


def mri_observations(
    x: Tensor,
    R: float,
    generator: torch.Generator,
    sigma_y: float = 1e-2,
    center: int | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Draws a line mask per image (:func:`line_mask`) and the observations
    :math:`y = A x + \sigma_y \varepsilon`, with noise on every entry, observed or not.

    Arguments:
        x: The images, with shape :math:`(N, H, W)`.
        R: The acceleration.
        generator: The random generator (CPU); the draws are moved to `x`'s device.
        sigma_y: The noise standard deviation (the paper's :math:`10^{-2}`).
        center: The number of centre columns, as in :func:`line_mask`.

    Returns:
        The masks, bool with shape :math:`(N, W)`, and the observations, with shape
        :math:`(N, H, W, 2)`.
    """
    if x.ndim != 3:
        raise ValueError(f"expected x of shape (N, H, W), got {tuple(x.shape)}")
    N, H, W = x.shape
    mask = line_mask(N, W, R, center=center, generator=generator).to(x.device)
    noise = torch.randn((N, H, W, 2), generator=generator, dtype=x.dtype).to(x.device)
    return mask, MRIOperator(mask)(x) + sigma_y * noise


def zero_filled(y: Tensor, mask: Tensor) -> Tensor:
    r"""Returns the zero-filled reconstruction
    :math:`A^T y = \mathrm{Re}\, F_c^{-1}(M \odot (y_0 + i y_1))`, with shape :math:`(N, H, W)`,
    for observations :math:`y` with shape :math:`(N, H, W, 2)` and masks with shape
    :math:`(N, W)`."""
    return MRIOperator(mask).adjoint(y)
