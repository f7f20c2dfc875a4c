r"""Seeded inputs and byte counts shared by the kernel benchmarks (asv and the GPU check).

Bytes are the traffic *floor* of each operation, the data it must read and write once:

* CG update: read :math:`x, r, p, Cp`, write :math:`x', r', p'`, i.e. :math:`7 B D` elements;
* MRI forward + adjoint: the FFTs' own traffic aside, read the image and write k-space
  (forward), read k-space and write the image (adjoint).

GB/s figures divide these floors by the measured time, so they compare across
implementations: a kernel that moves more than the floor shows a lower figure.
"""

import torch

from bench.common import median_ms
from emdm.kernels.cg import batched_dot


def cg_state(B: int, D: int, device, dtype=torch.float32, seed: int = 0, dot: str = "sample"):
    r"""A mid-solve CG state :math:`(x, r, p, Cp, \rho, \text{tol}, \text{active})` with every
    sample active, accumulation in `dtype` (MMPS's default)."""
    g = torch.Generator().manual_seed(seed)
    x, r, p = (torch.randn(B, D, generator=g, dtype=dtype) for _ in range(3))
    Cp = 2 * p + 0.1 * torch.randn(B, D, generator=g, dtype=dtype)
    x, r, p, Cp = (t.to(device) for t in (x, r, p, Cp))
    rr = batched_dot(r, r, dot, dtype)
    tol = torch.zeros_like(rr)
    return x, r, p, Cp, rr, tol, rr > tol


def cg_bytes(B: int, D: int, dtype=torch.float32) -> int:
    return 7 * B * D * torch.empty((), dtype=dtype).element_size()


def mri_problem(B: int, H: int, W: int, device, dtype=torch.float32, seed: int = 0):
    r"""An image batch :math:`(B, H, W)`, its k-space :math:`(B, H, W, 2)` and a line mask
    :math:`(B, W)` keeping a quarter of the columns."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, W, generator=g, dtype=dtype)
    y = torch.randn(B, H, W, 2, generator=g, dtype=dtype)
    mask = (torch.rand(B, W, generator=g) < 0.25).to(dtype)
    return x.to(device), y.to(device), mask.to(device)


def mri_bytes(B: int, H: int, W: int, dtype=torch.float32) -> int:
    # forward: image in, k-space (2 floats) out; adjoint: k-space in, image out
    return 6 * B * H * W * torch.empty((), dtype=dtype).element_size()


def copy_bandwidth(device, nbytes: int = 1 << 30, repeats: int = 20) -> float:
    r"""The device-to-device copy bandwidth in GB/s (read plus write, as the floors count)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms, _ = median_ms(lambda: dst.copy_(src), device, repeats=repeats)
    return 2 * nbytes / ms / 1e6
