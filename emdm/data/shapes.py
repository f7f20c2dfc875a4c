r"""Synthetic colour images for quick CPU runs of the CIFAR-10 experiment (Table 1, Figure 4).

Each image is a smooth two-colour background gradient with one to three opaque discs or
rectangles of random colours, positions and sizes, mapped to :math:`[-2, 2)` like CIFAR-10
(:math:`x = 4 u - 2` for intensities :math:`u \in [0, 1)`). The distribution is multimodal
and has sharp edges, so a prior that blurs, or an E-step that ignores the observations, shows in
the samples and in a Fréchet distance; and fresh draws of the truth are free, for the metrics.
"""

__all__ = ["color_shapes"]

import torch
from torch import Tensor


def color_shapes(n: int, size: int = 16, generator: torch.Generator | None = None) -> Tensor:
    r"""Returns `n` images with shape :math:`(n, 3, \text{size}, \text{size})` in
    :math:`[-2, 2)`, a deterministic function of `generator`'s state."""
    if n < 1 or size < 4:
        raise ValueError(f"expected n >= 1 and size >= 4, got n = {n}, size = {size}")
    g = generator
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    ii, jj = torch.meshgrid(grid, grid, indexing="ij")  # (H, W)
    # background: a linear blend of two colours along a random direction
    c0, c1 = torch.rand((2, n, 3, 1, 1), generator=g) * 0.6
    angle = torch.rand((n, 1, 1), generator=g) * 2 * torch.pi
    ramp = (ii * angle.cos() + jj * angle.sin() + 1.5) / 3  # (n, H, W) in [0, 1]
    u = c0 + (c1 - c0) * ramp[:, None]  # (n, 3, H, W)
    count = torch.randint(1, 4, (n,), generator=g)
    for k in range(3):
        centre = torch.rand((n, 2, 1, 1), generator=g) * 0.8 + 0.1
        radius = torch.rand((n, 1, 1), generator=g) * 0.2 + 0.12
        disc = torch.rand((n, 1, 1), generator=g) < 0.5
        colour = torch.rand((n, 3, 1, 1), generator=g) * 0.7 + 0.3
        di, dj = ii - centre[:, 0], jj - centre[:, 1]  # (n, H, W)
        inside = torch.where(
            disc, di**2 + dj**2 < radius**2, (di.abs() < radius) & (dj.abs() < 0.7 * radius)
        )
        inside = inside & (k < count)[:, None, None]
        u = torch.where(inside[:, None], colour, u)
    return (4 * u - 2).clamp(-2, 2 - 4 / 256)
