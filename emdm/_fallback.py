r"""The pure-torch paths emdm runs where :mod:`emdm.kernels` does not import.

:mod:`emdm.kernels` ships with emdm, and its modules import without Triton; this covers a copy
of emdm without the `kernels/` folder, so that emdm's core still imports and solves. It holds
the references of `kernels/cg.py` (the CG loop) and `kernels/mri.py` (the MRI transforms),
reduced to what `emdm.solvers` and `emdm.operators.mri` call; `tests/test_packaging.py` checks
that they agree with those references to the bit, so a change to one must go to both. The
provider is always the reference: asking for `triton` raises.
"""

__all__ = ["batched_dot", "cg_iterations", "mri_adjoint", "mri_forward"]

import os
from collections.abc import Callable

import torch
from torch import Tensor


def _reference_only(provider: str | None) -> None:
    provider = provider or os.environ.get("EMDM_KERNELS", "auto") or "auto"
    if provider not in ("ref", "triton", "auto"):
        raise ValueError(
            f"kernel provider (EMDM_KERNELS) must be one of ('ref', 'triton', 'auto'), "
            f"got {provider!r}"
        )
    if provider == "triton":
        raise RuntimeError("the Triton provider was asked for, but emdm.kernels does not import")


def batched_dot(u: Tensor, v: Tensor, dot: str, dtype: torch.dtype) -> Tensor:
    r"""Inner products per sample :math:`(B,)` (`dot="sample"`) or over the batch :math:`()`."""
    u, v = u.to(dtype), v.to(dtype)
    if dot == "batch":
        return torch.vdot(u.flatten(), v.flatten())
    return torch.linalg.vecdot(u.flatten(1), v.flatten(1))


def _expand(s: Tensor, like: Tensor) -> Tensor:
    return s.reshape(s.shape + (1,) * (like.ndim - 1)) if s.ndim else s  # (B,) -> (B, 1, ...)


def _cg_loop(
    matvec: Callable[[Tensor], Tensor],
    x: Tensor,
    r: Tensor,
    p: Tensor,
    rr: Tensor,
    tol: Tensor,
    active: Tensor,
    iterations: int,
    *,
    dot: str = "sample",
    count: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    # kernels/cg.py's cg_iterations_reference, operation for operation
    fired = torch.zeros_like(rr, dtype=torch.int64) if count else None
    for _ in range(iterations):
        Cp = matvec(p)
        pCp = batched_dot(p, Cp, dot, rr.dtype)
        ok = active & (pCp > 0) & (pCp < torch.inf)
        if count:
            fired += active & ~ok
        alpha = _expand(torch.where(ok, rr / pCp, 0.0).to(x.dtype), x)
        x = torch.addcmul(x, alpha, p)
        r = torch.addcmul(r, alpha, torch.where(_expand(ok, x), Cp, 0.0), value=-1)
        rr_next = batched_dot(r, r, dot, rr.dtype)
        beta = _expand(torch.where(ok, rr_next / rr, 0.0).to(x.dtype), x)
        p = torch.addcmul(r, beta, p)
        rr, active = rr_next, ok & (rr_next > tol)
    return x, r, p, rr, active, fired


def cg_iterations(provider: str | None, *tensors: Tensor) -> Callable[..., tuple]:
    r"""Returns the eager CG loop (`kernels/cg.py`'s `cg_iterations`, reference only)."""
    _reference_only(provider)
    return _cg_loop


def mri_forward(x: Tensor, mask: Tensor, provider: str | None = None) -> Tensor:
    r"""Returns :math:`A x = [\mathrm{Re}, \mathrm{Im}](M \odot F_c x)` with shape
    :math:`(B, H, W, 2)`, for images :math:`(B, H, W)` and a mask :math:`(B, W)` or
    :math:`(W,)`."""
    _reference_only(provider)
    z = torch.fft.ifftshift(x, dim=(-2, -1))
    z = torch.fft.fftshift(torch.fft.fft2(z, norm="ortho"), dim=(-2, -1))
    return torch.view_as_real(mask.to(x.dtype).unsqueeze(-2) * z)  # (B, H, W, 2)


def mri_adjoint(y: Tensor, mask: Tensor, provider: str | None = None) -> Tensor:
    r"""Returns :math:`A^T y = \mathrm{Re}\, F_c^{-1}(M \odot (y_0 + i y_1))` with shape
    :math:`(B, H, W)`, for spectra :math:`(B, H, W, 2)`."""
    _reference_only(provider)
    z = mask.to(y.dtype).unsqueeze(-2) * torch.view_as_complex(y.contiguous())
    z = torch.fft.ifftshift(z, dim=(-2, -1))
    z = torch.fft.fftshift(torch.fft.ifft2(z, norm="ortho"), dim=(-2, -1))
    return z.real.contiguous()
