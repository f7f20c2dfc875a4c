r"""Accelerated MRI: a line-masked, centred, orthonormal 2-D Fourier transform.

.. math::
    A x = [\mathrm{Re}, \mathrm{Im}](M \odot F_c x), \qquad
    A^T y = \mathrm{Re}\, F_c^{-1}(M \odot (y_0 + i y_1)),

with :math:`F_c x = \mathrm{fftshift}(\mathrm{fft2}(\mathrm{ifftshift}(x)))` over :math:`(H, W)`
in the orthonormal scaling (fastMRI's `fastmri.fft2c`), real images :math:`x` with shape
:math:`(B, H, W)`, spectra :math:`y` with shape :math:`(B, H, W, 2)` (real and imaginary parts)
and a mask :math:`M` of column lines: one 0/1 weight per frequency column :math:`w`, per sample,
broadcast over :math:`H`. Unobserved entries are kept as zeros. The transforms run in
:mod:`emdm.kernels.mri` (the torch reference, or Triton kernels around cuFFT on CUDA).

References:
    | fastMRI: An Open Dataset and Benchmarks for Accelerated MRI (Zbontar et al., 2018)
    | https://arxiv.org/abs/1811.08839
"""

__all__ = ["MRIOperator"]

from torch import Tensor

from ..checks import check_finite
from .base import LinearOperator

try:
    from ..kernels.mri import mri_adjoint, mri_forward
except ImportError:  # no kernels/ folder: the same torch reference
    from .._fallback import mri_adjoint, mri_forward


class MRIOperator(LinearOperator):
    r"""Creates a line-masked centred Fourier operator, per-sample (one mask per sample,
    sliced by `A[index]`) or shared.

    Arguments:
        mask: The column mask, with shape :math:`(B, W)` (one per sample) or :math:`(W,)`
            (shared), bool or real. A real mask also fixes the dtype of the inputs; a bool one
            accepts float32 and float64.
        provider: The kernel provider, `"ref"`, `"triton"` or `"auto"`; `None` reads
            `EMDM_KERNELS` at each call (:mod:`emdm.kernels._dispatch`).
        check: Whether to check that a real mask is finite (one pass, one host
            synchronization on CUDA), once here; restrictions (`A[index]`) and copies
            (`A.to(...)`) of a checked operator skip it.
    """

    def __init__(self, mask: Tensor, provider: str | None = None, *, check: bool = True):
        if mask.ndim not in (1, 2):
            raise ValueError(f"mask must have shape (B, W) or (W,), got {tuple(mask.shape)}")
        if check:
            check_finite(mask, "the mask of A")
        self.mask, self.provider = mask, provider

    def _check(self, t: Tensor, name: str) -> None:
        if self.mask.is_floating_point() and t.dtype != self.mask.dtype:
            raise ValueError(
                f"{name} has dtype {t.dtype}, but the operator's mask has dtype {self.mask.dtype}"
            )

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        in_shape = tuple(in_shape)
        W = self.mask.shape[-1]
        B = len(self.mask) if self.mask.ndim == 2 else None
        if len(in_shape) != 3 or in_shape[-1] != W or B not in (None, in_shape[0]):
            raise ValueError(
                f"A expects images of shape ({'B' if B is None else B}, H, {W}), got x of shape "
                f"{in_shape}"
            )
        return (*in_shape, 2)

    def in_shape_of(self, out_shape: tuple[int, ...]) -> tuple[int, ...]:
        out_shape = tuple(out_shape)
        if len(out_shape) != 4 or out_shape[-1] != 2:
            raise ValueError(f"A^T expects spectra of shape (B, H, W, 2), got {out_shape}")
        self.out_shape(out_shape[:-1])
        return out_shape[:-1]

    def __call__(self, x: Tensor) -> Tensor:
        self._check(x, "x")
        return mri_forward(x, self.mask, self.provider)

    def adjoint(self, y: Tensor) -> Tensor:
        self._check(y, "y")
        return mri_adjoint(y, self.mask, self.provider)

    def _per_sample(self) -> tuple[str, ...]:
        return ("mask",) if self.mask.ndim == 2 else ()

    def __repr__(self) -> str:
        return f"MRIOperator(mask={tuple(self.mask.shape)})"
