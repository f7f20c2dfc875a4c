r"""Figures of the paper, drawn with matplotlib's object API: no pyplot, no global backend,
nothing shown on screen."""

__all__ = ["corner", "figure", "image_grid", "laps", "pairs", "posterior_grid", "save"]

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from .metrics.image import to_unit

if TYPE_CHECKING:
    from .benchmark import Gallery


def figure(rows: int, cols: int, size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    r"""Returns a figure and its axes as a :math:`(rows, cols)` array."""
    fig = Figure(figsize=size)
    return fig, np.asarray(fig.subplots(rows, cols, squeeze=False))


def corner(
    x: torch.Tensor,
    bins: int = 64,
    lims: tuple[float, float] = (-3.0, 3.0),
    cmap: str = "Blues",
    labels: Sequence[str] | None = None,
    size: float = 1.6,
) -> Figure:
    r"""Draws the 1-D and 2-D marginals of samples with shape :math:`(N, D)`: histograms on
    the diagonal, 2-D histograms below it."""
    x = x.detach().cpu().double().numpy()
    D = x.shape[1]
    labels = labels or [f"$x_{i + 1}$" for i in range(D)]
    fig, axes = figure(D, D, (size * D, size * D))
    edges = np.linspace(*lims, bins + 1)
    for i in range(D):
        for j in range(D):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                ax.hist(x[:, i], bins=edges, color="tab:blue", histtype="stepfilled", alpha=0.7)
                ax.set_yticks([])
            else:
                ax.hist2d(x[:, j], x[:, i], bins=[edges, edges], cmap=cmap, rasterized=True)
            ax.set_xlim(lims)
            if i == D - 1:
                ax.set_xlabel(labels[j])
            else:
                ax.set_xticks([])
            if j == 0 and i > 0:
                ax.set_ylabel(labels[i])
            elif i != j:
                ax.set_yticks([])
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def pairs(
    panels: dict[str, torch.Tensor],
    bins: int = 64,
    lims: tuple[float, float] = (-3.0, 3.0),
    cmap: str = "Blues",
    size: float = 1.6,
) -> Figure:
    r"""Draws, for each named sample set :math:`(N, D)` (a column), the 2-D histograms of
    consecutive coordinates :math:`(x_i, x_{i+1})` (rows), as the paper's Figure 3."""
    names = list(panels)
    D = next(iter(panels.values())).shape[1]
    fig, axes = figure(D - 1, len(names), (size * len(names), size * (D - 1)))
    edges = np.linspace(*lims, bins + 1)
    for c, name in enumerate(names):
        x = panels[name].detach().cpu().double().numpy()
        for r in range(D - 1):
            ax = axes[r, c]
            ax.hist2d(x[:, r], x[:, r + 1], bins=[edges, edges], cmap=cmap, rasterized=True)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name)
            if c == 0:
                ax.set_ylabel(f"$(x_{r + 1}, x_{r + 2})$")
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def image_grid(
    panels: dict[str, torch.Tensor], columns: int = 8, rows: int = 2, pixels: str = "paper"
) -> Figure:
    r"""One block of images per panel (a row of blocks), each block `rows` x `columns` images of
    shape :math:`(C, H, W)` or :math:`(H, W)` in the pixel range named `pixels` (see
    :func:`emdm.metrics.to_unit`; the default, :math:`[-2, 2]`), titled by its key."""
    width = max(2.2 * columns / 8, 1.6)  # narrow blocks still leave room for their titles
    fig, axes = figure(1, len(panels), (width * len(panels), 2.2 * rows / 2 + 0.4))
    for ax, (name, x) in zip(axes[0], panels.items(), strict=True):
        x = to_unit(x[: rows * columns].float(), pixels)
        if x.ndim == 3:
            x = x[:, None]
        n, C, H, W = x.shape
        tiles = torch.ones((rows * columns, C, H, W))
        tiles[:n] = x
        grid = tiles.reshape(rows, columns, C, H, W).permute(0, 3, 1, 4, 2)  # (r, H, c, W, C)
        grid = grid.reshape(rows * H, columns * W, C).squeeze(-1)
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    return fig


#: The names of the posterior-sampling methods and tasks of :mod:`emdm.benchmark` in figures.
METHOD_LABELS = {
    "dps": "DPS",
    "pgdm": "ΠGDM",
    "tmpd": "TMPD",
    "diffpir": "DiffPIR",
    "mmps1": "MMPS (1)",
    "mmps3": "MMPS (3)",
    "mmps5": "MMPS (5)",
}
TASK_LABELS = {
    "box": "box inpainting",
    "random": "random inpainting",
    "motion": "motion deblurring",
    "blur": "Gaussian deblurring",
    "sr4": "4x super-resolution",
}


def _rgb(x: torch.Tensor, pixels: str, missing: tuple[float, float, float]) -> np.ndarray:
    r"""An image :math:`(C, H, W)` as an RGB array :math:`(H, W, 3)` in :math:`[0, 1]`, its NaN
    pixels (in any channel) painted `missing`."""
    x = to_unit(x.float(), pixels).expand(3, *x.shape[1:])  # grey: one channel for three
    x = torch.where(x.isnan().any(0), torch.tensor(missing)[:, None, None], x)
    return x.permute(1, 2, 0).numpy()


def posterior_grid(
    gallery: "Gallery",
    methods: Sequence[str],
    steps: Sequence[int],
    pixels: str = "benchmark",
    missing: str = "tab:blue",
    size: float = 1.3,
) -> Figure:
    r"""The qualitative figure of a posterior-sampling benchmark (the paper's Figures 17 to
    19): a row per task and kept image of `gallery` (:class:`emdm.benchmark.Gallery`), its
    columns the reference image, the observation (missing pixels, NaN, painted `missing`),
    then a sample by each of `methods` at each of `steps` (titled "MMPS (1), 10 steps", on two
    lines). Images :math:`(C, H, W)` in the pixel range named `pixels` (see
    :func:`emdm.metrics.to_unit`)."""
    columns = [f"{METHOD_LABELS.get(m, m)},\n{n} steps" for m in methods for n in steps]
    rows = [(task, i) for task in gallery.observations for i in range(len(gallery.truth))]
    fig, axes = figure(len(rows), 2 + len(columns), (size * (2 + len(columns)), size * len(rows)))
    color = to_rgb(missing)
    for r, (task, i) in enumerate(rows):
        images = [gallery.truth[i], gallery.observations[task][i]]
        images += [gallery.samples[task, m, n][i] for m in methods for n in steps]
        for ax, x in zip(axes[r], images, strict=True):
            ax.imshow(_rgb(x, pixels, color), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        label = TASK_LABELS.get(task, task)
        axes[r, 0].set_ylabel(
            label if len(gallery.truth) == 1 else f"{label}, {i + 1}", fontsize=7
        )
    for ax, title in zip(axes[0], ["reference", "observation", *columns], strict=True):
        ax.set_title(title, fontsize=7)
    fig.subplots_adjust(wspace=0.04, hspace=0.04)
    return fig


LABELS = {
    "fid": "FID",
    "isc": "IS",
    "fd_pixels": "Fréchet distance of pixels",
    "fid_estep": "FID of the E-step's samples",
    "fd_pixels_estep": "E-step, pixels' FD",
}


def laps(rows: Sequence[dict], metrics: Sequence[str]) -> Figure:
    r"""One panel per metric: its value against the EM iteration, one line per run, the runs
    told apart by the rows' `percent` and `covariance`."""
    fig, axes = figure(1, len(metrics), (4 * len(metrics), 3))
    fig.set_layout_engine("constrained")  # no label runs into the next panel
    runs = sorted({(r["covariance"], r["percent"]) for r in rows})
    for ax, metric in zip(axes[0], metrics, strict=True):
        for covariance, percent in runs:
            points = sorted((r["em_iteration"], r["value"]) for r in rows
                            if r["metric"] == metric and r["covariance"] == covariance
                            and r["percent"] == percent)  # fmt: skip
            if points:
                k, v = zip(*points, strict=True)
                ax.plot(k, v, marker="o", label=f"{covariance}, {percent:g} %")
        ax.set(xlabel="EM iteration $k$", ylabel=LABELS.get(metric, metric))
        if metric.startswith("fid"):
            ax.set_yscale("log", base=2)
    axes[0, 0].legend(fontsize=7)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    r"""Saves a figure as PNG (150 dpi)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path
