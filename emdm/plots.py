r"""Figures of the paper, drawn with matplotlib's object API: no pyplot, no global backend,
nothing shown on screen."""

__all__ = ["corner", "figure", "image_grid", "laps", "pairs", "save"]

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from .metrics.image import to_unit


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
