r"""The accelerated-MRI operator: a line-masked, centred, orthonormal 2-D Fourier transform.

Images :math:`x` are real with shape :math:`(B, H, W)`. The centred orthonormal transform over
the last two axes is

.. math:: F_c x = \mathrm{fftshift}(\mathrm{fft2}(\mathrm{ifftshift}(x)))

with `norm="ortho"` (the convention of fastMRI's `fastmri.fft2c`), so :math:`F_c` is unitary and
puts the zero frequency at index :math:`(\lfloor H/2 \rfloor, \lfloor W/2 \rfloor)`. With a line
mask :math:`M` (per sample, one 0/1 weight per column :math:`w`, broadcast over :math:`H`)

.. math::
    A x = [\mathrm{Re}, \mathrm{Im}](M \odot F_c x), \qquad
    A^T y = \mathrm{Re}\, F_c^{-1}(M \odot (y_0 + i y_1)),

where :math:`y` has shape :math:`(B, H, W, 2)` and
:math:`F_c^{-1} = \mathrm{fftshift} \circ \mathrm{ifft2} \circ \mathrm{ifftshift}`. As
:math:`F_c` is unitary and :math:`x` real, :math:`A^T` is the exact adjoint of
:math:`A : \mathbb{R}^{B \times H \times W} \to \mathbb{R}^{B \times H \times W \times 2}`.

For even :math:`N`, both shifts are circular shifts by :math:`N/2`, and shifting a sequence by
:math:`N/2` multiplies its DFT by :math:`(-1)^k`. Hence, for even :math:`H` and :math:`W`,

.. math::
    F_c x = \sigma \odot \mathrm{fft2}(c \odot x), \quad
    F_c^{-1} z = c \odot \mathrm{ifft2}(\sigma \odot z), \quad
    c_{hw} = (-1)^{h + w}, \quad \sigma_{kl} = (-1)^{H/2 + W/2} (-1)^{k + l},

so the shifts become sign flips that the Triton kernels fuse with the mask, the real/imaginary
(de)interleaving and the casts around `torch.fft` (cuFFT on GPUs), one read and one write each.
For odd :math:`H` or :math:`W` the identity fails and the kernel path runs the reference.

References:
    | fastMRI: An Open Dataset and Benchmarks for Accelerated MRI (Zbontar et al., 2018)
    | https://arxiv.org/abs/1811.08839
    | https://github.com/facebookresearch/fastMRI (`fastmri.fft2c`, `fastmri.ifft2c`)
"""

__all__ = [
    "mri_adjoint",
    "mri_adjoint_reference",
    "mri_adjoint_triton",
    "mri_forward",
    "mri_forward_reference",
    "mri_forward_triton",
]

import torch
from torch import Tensor

from ._dispatch import resolve

# Reference


def mri_forward_reference(x: Tensor, mask: Tensor) -> Tensor:
    r"""Returns :math:`A x = [\mathrm{Re}, \mathrm{Im}](M \odot F_c x)`, with
    :math:`F_c x = \mathrm{fftshift}(\mathrm{fft2}(\mathrm{ifftshift}(x)))` (`norm="ortho"`)
    over the last two axes. Any :math:`H, W`, odd or even.

    Arguments:
        x: The images, with shape :math:`(B, H, W)`.
        mask: The column mask, with shape :math:`(B, W)` or :math:`(W,)`.

    Returns:
        The masked spectrum, with shape :math:`(B, H, W, 2)`.
    """
    z = torch.fft.ifftshift(x, dim=(-2, -1))
    z = torch.fft.fftshift(torch.fft.fft2(z, norm="ortho"), dim=(-2, -1))
    z = mask.to(x.dtype).unsqueeze(-2) * z  # (B, 1, W) * (B, H, W)
    return torch.view_as_real(z)  # (B, H, W, 2)


def mri_adjoint_reference(y: Tensor, mask: Tensor) -> Tensor:
    r"""Returns :math:`A^T y = \mathrm{Re}\, F_c^{-1}(M \odot (y_0 + i y_1))`, with
    :math:`F_c^{-1} z = \mathrm{fftshift}(\mathrm{ifft2}(\mathrm{ifftshift}(z)))`
    (`norm="ortho"`). Any :math:`H, W`, odd or even.

    Arguments:
        y: The spectra, with shape :math:`(B, H, W, 2)`.
        mask: The column mask, with shape :math:`(B, W)` or :math:`(W,)`.

    Returns:
        The images, with shape :math:`(B, H, W)`.
    """
    z = torch.view_as_complex(y.contiguous())  # (B, H, W)
    z = mask.to(y.dtype).unsqueeze(-2) * z
    z = torch.fft.ifftshift(z, dim=(-2, -1))
    z = torch.fft.fftshift(torch.fft.ifft2(z, norm="ortho"), dim=(-2, -1))
    return z.real.contiguous()


# Triton kernels (defined only where Triton imports: it is optional at run time). One program
# per row (b, h) and block of columns w; complex tensors are read and written through their
# interleaved real view (B, H, W, 2).

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is absent
    triton = None

if triton is not None:

    @triton.jit
    def _modulate_kernel(x_ptr, z_ptr, H, W, BLOCK_W: tl.constexpr):
        # z = c ⊙ x + 0i, with c = (-1)^(h + w)
        row = tl.program_id(0).to(tl.int64)  # b * H + h
        w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        inside = w < W
        x = tl.load(x_ptr + row * W + w, mask=inside)
        x = tl.where((row % H + w) % 2 == 0, x, -x)
        part = tl.arange(0, 2)[None, :]  # 0: real, 1: imaginary
        z = tl.where(part == 0, x[:, None], 0.0)  # (BLOCK_W, 2)
        offsets = (row * W + w)[:, None] * 2 + part
        tl.store(z_ptr + offsets, z, mask=inside[:, None] & (part < 2))

    @triton.jit
    def _spectral_kernel(z_ptr, m_ptr, out_ptr, H, W, stride_mb, stride_mw, BLOCK_W: tl.constexpr):
        # out = σ ⊙ M ⊙ z, with σ = (-1)^(H/2 + W/2 + k + l); z and out may alias
        row = tl.program_id(0).to(tl.int64)  # b * H + k
        b, k = row // H, row % H
        w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        inside = w < W
        m = tl.load(m_ptr + b * stride_mb + w * stride_mw, mask=inside)
        m = tl.where((H // 2 + W // 2 + k + w) % 2 == 0, m, -m)
        part = tl.arange(0, 2)[None, :]
        offsets = (row * W + w)[:, None] * 2 + part
        inside2 = inside[:, None] & (part < 2)
        z = tl.load(z_ptr + offsets, mask=inside2)  # (BLOCK_W, 2)
        tl.store(out_ptr + offsets, z * m[:, None], mask=inside2)

    @triton.jit
    def _demodulate_kernel(z_ptr, x_ptr, H, W, BLOCK_W: tl.constexpr):
        # x = c ⊙ Re z, with c = (-1)^(h + w)
        row = tl.program_id(0).to(tl.int64)  # b * H + h
        w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        inside = w < W
        x = tl.load(z_ptr + (row * W + w) * 2, mask=inside)
        x = tl.where((row % H + w) % 2 == 0, x, -x)
        tl.store(x_ptr + row * W + w, x, mask=inside)


# Launchers


_DTYPES = (torch.float32, torch.float64)
_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _check_mask(mask: Tensor, like: Tensor, B: int, W: int) -> Tensor:
    r"""Returns `mask` as a :math:`(B, W)` or :math:`(W,)` tensor of `like`'s dtype."""
    if mask.ndim not in (1, 2) or mask.shape[-1] != W or (mask.ndim == 2 and len(mask) != B):
        raise ValueError(
            f"mask must have shape ({B}, {W}) or ({W},) (one weight per column), "
            f"got {tuple(mask.shape)}"
        )
    if mask.is_complex():
        raise ValueError(f"mask must be real or bool, got {mask.dtype}")
    if mask.device != like.device:
        raise ValueError(f"mask is on {mask.device}, the input on {like.device}")
    return mask.to(like.dtype)


def _check_x(x: Tensor, mask: Tensor) -> Tensor:
    r"""Checks the images `x` and returns the mask in their dtype."""
    if x.ndim != 3:
        raise ValueError(f"x must have shape (B, H, W), got {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    return _check_mask(mask, x, len(x), x.shape[-1])


def _check_y(y: Tensor, mask: Tensor) -> Tensor:
    r"""Checks the spectra `y` and returns the mask in their dtype."""
    if y.ndim != 4 or y.shape[-1] != 2:
        raise ValueError(f"y must have shape (B, H, W, 2), got {tuple(y.shape)}")
    if y.dtype not in _DTYPES:
        raise ValueError(f"y must be float32 or float64, got {y.dtype}")
    return _check_mask(mask, y, len(y), y.shape[-2])


def _check_out(out: Tensor, shape: tuple[int, ...], like: Tensor, name: str) -> None:
    if out.dtype != like.dtype:
        raise ValueError(f"out has dtype {out.dtype}, but {name} has dtype {like.dtype}")
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
    if out.device != like.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous tensor on {like.device}")


def _grid(B: int, H: int, W: int) -> tuple[tuple[int, int], int]:
    BLOCK_W = min(1 << (W - 1).bit_length(), 1024)
    return (B * H, -(-W // BLOCK_W)), BLOCK_W


def _modulate(x: Tensor, out: Tensor) -> Tensor:
    r"""Writes :math:`c \odot x + 0i` into `out`, the real view :math:`(B, H, W, 2)` of a
    complex buffer; :math:`x` is contiguous with shape :math:`(B, H, W)`."""
    B, H, W = x.shape
    grid, BLOCK_W = _grid(B, H, W)
    _modulate_kernel[grid](x, out, H, W, BLOCK_W=BLOCK_W)
    return out


def _spectral(z: Tensor, mask: Tensor, out: Tensor) -> Tensor:
    r"""Writes :math:`\sigma \odot M \odot z` into `out` (which may be `z`), both contiguous
    real views :math:`(B, H, W, 2)`; `mask` is :math:`(B, W)` or :math:`(W,)`."""
    B, H, W, _ = z.shape
    stride_mb, stride_mw = (0, *mask.stride()) if mask.ndim == 1 else mask.stride()
    grid, BLOCK_W = _grid(B, H, W)
    _spectral_kernel[grid](z, mask, out, H, W, stride_mb, stride_mw, BLOCK_W=BLOCK_W)
    return out


def _demodulate(z: Tensor, out: Tensor) -> Tensor:
    r"""Writes :math:`c \odot \mathrm{Re}\, z` into `out` :math:`(B, H, W)`, from the contiguous
    real view :math:`(B, H, W, 2)` of a complex `z`."""
    B, H, W, _ = z.shape
    grid, BLOCK_W = _grid(B, H, W)
    _demodulate_kernel[grid](z, out, H, W, BLOCK_W=BLOCK_W)
    return out


def mri_forward_triton(x: Tensor, mask: Tensor, out: Tensor | None = None) -> Tensor:
    r"""Returns :math:`A x` by the Triton kernels around `torch.fft.fft2`; odd :math:`H` or
    :math:`W` run the reference. CPU tensors need `TRITON_INTERPRET=1`.

    Arguments:
        x: The images, with shape :math:`(B, H, W)`, float32 or float64.
        mask: The column mask, with shape :math:`(B, W)` or :math:`(W,)`, bool or real.
        out: A contiguous :math:`(B, H, W, 2)` tensor of `x`'s dtype to write into. Defaults to
            the FFT's output buffer.
    """
    if triton is None:
        raise RuntimeError("mri_forward_triton needs triton, which is not installed")
    mask = _check_x(x, mask)
    B, H, W = x.shape
    if out is not None:
        _check_out(out, (B, H, W, 2), x, "x")
    if H % 2 or W % 2 or x.numel() == 0:  # the sign identity needs even sizes
        Ax = mri_forward_reference(x, mask)
        return Ax if out is None else out.copy_(Ax)
    z = torch.empty((B, H, W), dtype=_COMPLEX[x.dtype], device=x.device)
    _modulate(x.contiguous(), torch.view_as_real(z))
    z = torch.view_as_real(torch.fft.fft2(z, norm="ortho"))  # (B, H, W, 2)
    return _spectral(z, mask, z if out is None else out)


def mri_adjoint_triton(y: Tensor, mask: Tensor, out: Tensor | None = None) -> Tensor:
    r"""Returns :math:`A^T y` by the Triton kernels around `torch.fft.ifft2`; odd :math:`H` or
    :math:`W` run the reference. CPU tensors need `TRITON_INTERPRET=1`.

    Arguments:
        y: The spectra, with shape :math:`(B, H, W, 2)`, float32 or float64.
        mask: The column mask, with shape :math:`(B, W)` or :math:`(W,)`, bool or real.
        out: A contiguous :math:`(B, H, W)` tensor of `y`'s dtype to write into.
    """
    if triton is None:
        raise RuntimeError("mri_adjoint_triton needs triton, which is not installed")
    mask = _check_y(y, mask)
    B, H, W, _ = y.shape
    if out is not None:
        _check_out(out, (B, H, W), y, "y")
    if H % 2 or W % 2 or y.numel() == 0:
        ATy = mri_adjoint_reference(y, mask)
        return ATy if out is None else out.copy_(ATy)
    z = torch.empty((B, H, W), dtype=_COMPLEX[y.dtype], device=y.device)
    _spectral(y.contiguous(), mask, torch.view_as_real(z))
    z = torch.view_as_real(torch.fft.ifft2(z, norm="ortho"))  # (B, H, W, 2)
    if out is None:
        out = torch.empty((B, H, W), dtype=y.dtype, device=y.device)
    return _demodulate(z, out)


class _Triton(torch.autograd.Function):
    r"""The forward kernel (`adjoint=False`) or the adjoint one, differentiable: they are
    linear, so each one's backward is the other."""

    @staticmethod
    def forward(ctx, v: Tensor, mask: Tensor, adjoint: bool) -> Tensor:
        ctx.save_for_backward(mask)
        ctx.adjoint = adjoint
        return (mri_adjoint_triton if adjoint else mri_forward_triton)(v, mask)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        return _Triton.apply(grad, mask, not ctx.adjoint), None, None


# Dispatchers


def mri_forward(x: Tensor, mask: Tensor, provider: str | None = None) -> Tensor:
    r"""Returns :math:`A x = [\mathrm{Re}, \mathrm{Im}](M \odot F_c x)`, by the reference or the
    Triton kernels (:func:`emdm.kernels._dispatch.resolve`); differentiable either way.

    Arguments:
        x: The images, with shape :math:`(B, H, W)`, float32 or float64.
        mask: The column mask, with shape :math:`(B, W)` or :math:`(W,)`, bool or real.
        provider: `"ref"`, `"triton"`, `"auto"`, or `None` to read `EMDM_KERNELS`.

    Returns:
        The masked spectrum, with shape :math:`(B, H, W, 2)`.
    """
    mask = _check_x(x, mask)
    if resolve(provider, x, mask) == "ref":
        return mri_forward_reference(x, mask)
    return _Triton.apply(x, mask, False)


def mri_adjoint(y: Tensor, mask: Tensor, provider: str | None = None) -> Tensor:
    r"""Returns :math:`A^T y = \mathrm{Re}\, F_c^{-1}(M \odot (y_0 + i y_1))`, by the reference or
    the Triton kernels (:func:`emdm.kernels._dispatch.resolve`); differentiable either way.

    Arguments:
        y: The spectra, with shape :math:`(B, H, W, 2)`, float32 or float64.
        mask: The column mask, with shape :math:`(B, W)` or :math:`(W,)`, bool or real.
        provider: `"ref"`, `"triton"`, `"auto"`, or `None` to read `EMDM_KERNELS`.

    Returns:
        The images, with shape :math:`(B, H, W)`.
    """
    mask = _check_y(y, mask)
    if resolve(provider, y, mask) == "ref":
        return mri_adjoint_reference(y, mask)
    return _Triton.apply(y, mask, True)
