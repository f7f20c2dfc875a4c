r"""Inpainting masks of the posterior-sampling benchmark (protocols §6.2), drawn from an
explicit generator, as :class:`MaskOperator` s shared over channels.

* :func:`box_mask`: a :math:`b \times b` box of zeros per image at a random position with a
  margin (128 x 128 in 256 x 256 images, top-left corner uniform in :math:`[16, 112)`, as
  the benchmark's `numpy.random.randint(16, 112)`);
* :func:`random_mask`: exactly :math:`\lfloor f H W \rfloor` pixels per image zeroed, drawn
  without replacement (the benchmark deletes :math:`f = 0.98`).
"""

__all__ = ["box_mask", "random_mask"]

import torch

from .mask import MaskOperator


def box_mask(
    batch: int, size: int = 256, box: int = 128, margin: int = 16,
    generator: torch.Generator | None = None,
) -> MaskOperator:  # fmt: skip
    r"""Returns the masks :math:`(B, 1, H, W)` of one box per image."""
    if not (box > 0 and 2 * margin + box <= size):
        raise ValueError(f"a {box}-pixel box with margin {margin} does not fit in {size} pixels")
    high = size - margin - box  # exclusive, as numpy's randint
    corners = torch.randint(margin, max(high, margin + 1), (batch, 2), generator=generator)
    mask = torch.ones(batch, 1, size, size)
    for b, (t, l) in enumerate(corners.tolist()):
        mask[b, :, t : t + box, l : l + box] = 0
    return MaskOperator(mask)


def random_mask(
    batch: int, size: int = 256, fraction: float = 0.98,
    generator: torch.Generator | None = None,
) -> MaskOperator:  # fmt: skip
    r"""Returns the masks :math:`(B, 1, H, W)` with exactly :math:`\lfloor f H W \rfloor` zeros."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    n = size * size
    deleted = int(fraction * n)
    mask = torch.ones(batch, n)
    for b in range(batch):
        mask[b, torch.randperm(n, generator=generator)[:deleted]] = 0
    return MaskOperator(mask.reshape(batch, 1, size, size))
