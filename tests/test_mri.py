r"""The MRI experiment's own measure, :func:`emdm.mri.stripes`, on images of known answer."""

import math

import pytest
import torch

from emdm.mri import stripes


def test_stripes_of_known_images():
    # vertical stripes (columns alternate 0, 1: c = 1) over a ramp down the rows (r = 0.5 / 7)
    j = torch.arange(8)
    vertical = (j % 2).float().expand(2, 8, 8)
    s = stripes(vertical + 0.5 * torch.arange(8.0)[:, None] / 7)  # rows ramp by 0.5 / 7 each
    assert s["column_difference"] == pytest.approx(1.0)
    assert s["row_difference"] == pytest.approx(0.5 / 7)
    assert s["stripe_ratio"] == pytest.approx(14.0)
    # the transpose swaps the two: horizontal stripes give the inverse ratio
    t = stripes((vertical + 0.5 * torch.arange(8.0)[:, None] / 7).transpose(-1, -2))
    assert t["stripe_ratio"] == pytest.approx(1 / 14)
    # white noise is isotropic: E|a - b| = 2 / sqrt(pi) for a, b ~ N(0, 1) in both directions
    noise = stripes(torch.randn(64, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert noise["column_difference"] == pytest.approx(2 / math.sqrt(math.pi), rel=0.01)
    assert noise["stripe_ratio"] == pytest.approx(1.0, abs=0.01)
