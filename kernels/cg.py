r"""One fused conjugate-gradient iteration, the update that follows each product :math:`C p`.

Given the iterate :math:`x`, residual :math:`r`, direction :math:`p`, the product :math:`C p`
and :math:`\rho = r^T r`, an iteration of :func:`emdm.cg` computes

.. math::
    \alpha & = \rho / p^T C p \quad (0 \text{ where } p^T C p \leq 0 \text{ or not finite:
        the guard}) \\
    x' & = x + \alpha p, \quad r' = r - \alpha C p, \quad \rho' = r'^T r' \\
    \beta & = \rho' / \rho, \quad p' = r' + \beta p

with inner products per sample (rows of :math:`(B, D)`) or over the whole batch, accumulated
in the dtype `accumulate`. A sample is *active* while it is neither solved
(:math:`\rho > \text{tol}`) nor frozen by the guard; an inactive sample keeps :math:`x, r`.

Traffic. The eager composition reads 10 and writes 4 vectors of :math:`(B, D)` per iteration;
the floor is reading :math:`x, r, p, Cp` once and writing :math:`x', r', p'` once (7). The
Triton path has two forms:

* a row per program (per-sample dots, :math:`D \leq` :data:`ROW_MAX`): the row stays in
  registers between the two reductions, so it moves exactly the floor, 7 vectors;
* split rows (large :math:`D`, or batch dots): one kernel reduces :math:`p^T C p`,
  :math:`r^T C p` and :math:`\|C p\|^2` per chunk (3 reads), a second updates
  :math:`x, r, p` (4 reads, 3 writes: 10 in all) with :math:`\beta` from
  :math:`\rho' = \rho - 2 \alpha r^T C p + \alpha^2 \|C p\|^2`, while the exact
  :math:`\|r'\|^2` it also reduces becomes the next iteration's :math:`\rho` (so rounding in
  the identity touches :math:`\beta` only, never the stopping test or the next :math:`\alpha`).
  Partial sums go through a buffer, not atomics: the result is deterministic.

References:
    | Methods of Conjugate Gradients for Solving Linear Systems (Hestenes & Stiefel, 1952)
    | https://doi.org/10.6028/jres.049.044
"""

__all__ = [
    "ROW_MAX",
    "batched_dot",
    "cg_iterations",
    "cg_iterations_reference",
    "cg_iterations_triton",
    "cg_update",
    "cg_update_reference",
    "cg_update_triton",
]

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ._dispatch import resolve

ROW_MAX = 4096  # the longest row kept in registers by one program (16 floats per thread)
CHUNK = 4096  # elements per program on the split path


class CGState(NamedTuple):
    r"""The state after one or more iterations: `x`, `r`, `p` with shape :math:`(B, *)`; `rr`
    the new :math:`\rho` and `active` (per sample :math:`(B,)`, or :math:`()` for batch dots);
    `fired`, like `active`: where the guard fired (one update, a boolean) or how often (several
    iterations, a count), or `None` if not asked."""

    x: Tensor
    r: Tensor
    p: Tensor
    rr: Tensor
    active: Tensor
    fired: Tensor | None


# Reference


def batched_dot(u: Tensor, v: Tensor, dot: str, dtype: torch.dtype) -> Tensor:
    r"""Inner products :math:`u^T v` per sample :math:`(B,)` (`dot="sample"`) or over the
    whole batch :math:`()` (`"batch"`), in `dtype`."""
    if u.dtype != dtype:  # skip no-op casts: at small sizes each call costs as much as a kernel
        u, v = u.to(dtype), v.to(dtype)
    if dot == "batch":
        return torch.vdot(u.flatten(), v.flatten())
    return torch.linalg.vecdot(u.flatten(1), v.flatten(1))


def _cast(s: Tensor, dtype: torch.dtype) -> Tensor:
    return s if s.dtype == dtype else s.to(dtype)


def _expand(s: Tensor, like: Tensor) -> Tensor:
    r"""Reshapes a per-sample scalar :math:`(B,)` to broadcast against `like` :math:`(B, *)`."""
    if s.ndim == 0:
        return s
    return s.reshape(s.shape + (1,) * (like.ndim - 1))


@functools.cache
def _zero(dtype: torch.dtype, device: torch.device) -> Tensor:
    # one scalar zero per dtype and device, never written: allocating it costs ~3 us per call
    return torch.zeros((), dtype=dtype, device=device)


def cg_iterations_reference(
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
) -> CGState:
    r"""`iterations` eager CG iterations, each a product :math:`C p` and the update (the
    oracle); the loop is here, not in the caller, so that the reference costs what the plain
    eager loop costs. `rr`, `tol` and `active` have shape :math:`(B,)`, or :math:`()` for
    `dot="batch"`; `rr` and `tol` are in the accumulation dtype. With `count`, the last field
    counts, per sample, the iterations where the guard fired."""
    acc = rr.dtype
    zero, zero_x = torch.zeros_like(rr), _zero(x.dtype, x.device)
    fired = torch.zeros_like(rr, dtype=torch.int64) if count else None
    # Few, fused operations per iteration: at small sizes their count, not the arithmetic, is
    # the cost (5 to 20 us each). An inactive sample has alpha = beta = 0 and a zeroed Cp, so x
    # and r keep their values without extra masking and p stays finite (p = r).
    for _ in range(iterations):
        Cp = matvec(p)
        pCp = batched_dot(p, Cp, dot, acc)
        ok = active & (pCp > 0) & (pCp < torch.inf)
        if count:
            fired += active & ~ok
        alpha = _expand(_cast(torch.where(ok, rr / pCp, zero), x.dtype), x)
        x = torch.addcmul(x, alpha, p)
        r = torch.addcmul(r, alpha, torch.where(_expand(ok, x), Cp, zero_x), value=-1)
        rr_next = batched_dot(r, r, dot, acc)
        beta = _expand(_cast(torch.where(ok, rr_next / rr, zero), x.dtype), x)
        p = torch.addcmul(r, beta, p)
        rr, active = rr_next, ok & (rr_next > tol)
    return CGState(x, r, p, rr, active, fired)


def cg_update_reference(
    x: Tensor,
    r: Tensor,
    p: Tensor,
    Cp: Tensor,
    rr: Tensor,
    tol: Tensor,
    active: Tensor,
    *,
    dot: str = "sample",
    fired: bool = False,
) -> CGState:
    r"""One eager update after the product `Cp` (:func:`cg_iterations_reference` with that
    product); `fired` asks where the guard fired, as a boolean."""
    out = cg_iterations_reference(lambda _: Cp, x, r, p, rr, tol, active, 1, dot=dot,
                                  count=fired)  # fmt: skip
    return out._replace(fired=out.fired.bool() if fired else None)


# Triton kernels (defined only where Triton imports: it is optional at run time)

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is absent
    triton = None

if triton is not None:

    @triton.jit
    def _cg_row_kernel(
        x_ptr, r_ptr, p_ptr, cp_ptr, rr_ptr, active_ptr,
        x_out, r_out, p_out, rr_out, ok_out,
        D,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        # one program per sample: the row stays in registers between the two reductions
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < D
        base = row.to(tl.int64) * D
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0)
        r = tl.load(r_ptr + base + offs, mask=mask, other=0.0)
        p = tl.load(p_ptr + base + offs, mask=mask, other=0.0)
        cp = tl.load(cp_ptr + base + offs, mask=mask, other=0.0)
        rr = tl.load(rr_ptr + row)
        active = tl.load(active_ptr + row) != 0

        pcp = tl.sum(p.to(rr.dtype) * cp.to(rr.dtype), axis=0)
        ok = active & (pcp > 0) & (pcp - pcp == 0)  # positive and finite (inf - inf is NaN)
        alpha = tl.where(ok, rr / tl.where(ok, pcp, 1.0), 0.0).to(x.dtype)
        x = x + alpha * p
        r = r - alpha * tl.where(ok, cp, 0.0)
        r64 = r.to(rr.dtype)
        rr_next = tl.sum(r64 * r64, axis=0)
        beta = tl.where(ok, rr_next / tl.where(ok, rr, 1.0), 0.0).to(x.dtype)
        p = r + beta * p
        tl.store(x_out + base + offs, x, mask=mask)
        tl.store(r_out + base + offs, r, mask=mask)
        tl.store(p_out + base + offs, p, mask=mask)
        tl.store(rr_out + row, rr_next)
        tl.store(ok_out + row, ok.to(tl.int8))

    @triton.jit
    def _cg_dots_kernel(
        r_ptr, p_ptr, cp_ptr, partial_ptr,
        D, chunks,
        BLOCK: tl.constexpr, ACC: tl.constexpr,
    ):  # fmt: skip
        # partial (pᵀCp, rᵀCp, ‖Cp‖²) of one chunk of one row
        row = tl.program_id(0)
        chunk = tl.program_id(1)
        offs = chunk * BLOCK + tl.arange(0, BLOCK)
        mask = offs < D
        base = row.to(tl.int64) * D
        r = tl.load(r_ptr + base + offs, mask=mask, other=0.0).to(ACC)
        p = tl.load(p_ptr + base + offs, mask=mask, other=0.0).to(ACC)
        cp = tl.load(cp_ptr + base + offs, mask=mask, other=0.0).to(ACC)
        out = partial_ptr + (row * chunks + chunk) * 3
        tl.store(out, tl.sum(p * cp, axis=0))
        tl.store(out + 1, tl.sum(r * cp, axis=0))
        tl.store(out + 2, tl.sum(cp * cp, axis=0))

    @triton.jit
    def _cg_split_update_kernel(
        x_ptr, r_ptr, p_ptr, cp_ptr, dots_ptr, rr_ptr, active_ptr,
        x_out, r_out, p_out, rr_partial, ok_out,
        D, chunks,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        chunk = tl.program_id(1)
        offs = chunk * BLOCK + tl.arange(0, BLOCK)
        mask = offs < D
        base = row.to(tl.int64) * D
        pcp = tl.load(dots_ptr + row * 3)
        rcp = tl.load(dots_ptr + row * 3 + 1)
        cpcp = tl.load(dots_ptr + row * 3 + 2)
        rr = tl.load(rr_ptr + row)
        active = tl.load(active_ptr + row) != 0
        ok = active & (pcp > 0) & (pcp - pcp == 0)  # positive and finite (inf - inf is NaN)
        alpha_acc = tl.where(ok, rr / tl.where(ok, pcp, 1.0), 0.0)
        # ρ' = ‖r − αCp‖² expanded; clamped: rounding can take it below zero near convergence
        rr_est = tl.maximum(rr - 2 * alpha_acc * rcp + alpha_acc * alpha_acc * cpcp, 0.0)
        beta_acc = tl.where(ok, rr_est / tl.where(ok, rr, 1.0), 0.0)

        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0)
        r = tl.load(r_ptr + base + offs, mask=mask, other=0.0)
        p = tl.load(p_ptr + base + offs, mask=mask, other=0.0)
        cp = tl.load(cp_ptr + base + offs, mask=mask, other=0.0)
        alpha = alpha_acc.to(x.dtype)
        x = x + alpha * p
        r = r - alpha * tl.where(ok, cp, 0.0)
        p = r + beta_acc.to(x.dtype) * p
        tl.store(x_out + base + offs, x, mask=mask)
        tl.store(r_out + base + offs, r, mask=mask)
        tl.store(p_out + base + offs, p, mask=mask)
        r_acc = r.to(rr.dtype)
        tl.store(rr_partial + row * chunks + chunk, tl.sum(r_acc * r_acc, axis=0))
        if chunk == 0:
            tl.store(ok_out + row, ok.to(tl.int8))


# Launcher

_TL_DTYPES = {torch.float32: "fp32", torch.float64: "fp64"}


def _check(x: Tensor, r: Tensor, p: Tensor, Cp: Tensor, rr: Tensor, dot: str) -> None:
    for name, t in (("r", r), ("p", p), ("Cp", Cp)):
        if t.dtype != x.dtype:
            raise ValueError(f"{name} has dtype {t.dtype}, but x has dtype {x.dtype}")
        if t.shape != x.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, but x has {tuple(x.shape)}")
    if x.dtype not in _TL_DTYPES or rr.dtype not in _TL_DTYPES:
        raise ValueError(
            f"the Triton CG update takes float32 or float64 vectors and accumulation, got "
            f"{x.dtype} and {rr.dtype}"
        )
    expected = () if dot == "batch" else (x.shape[0],)
    if tuple(rr.shape) != expected:
        raise ValueError(f"rr must have shape {expected} for dot={dot!r}, got {tuple(rr.shape)}")


def cg_update_triton(
    x: Tensor,
    r: Tensor,
    p: Tensor,
    Cp: Tensor,
    rr: Tensor,
    tol: Tensor,
    active: Tensor,
    *,
    dot: str = "sample",
    fired: bool = False,
    out: tuple[Tensor, Tensor, Tensor] | None = None,
    split: bool | None = None,
    chunk: int = CHUNK,
) -> CGState:
    r"""The Triton iteration, on CUDA tensors (or CPU tensors under `TRITON_INTERPRET=1`).

    Arguments:
        out: Buffers for :math:`x', r', p'` (e.g. NaN-filled, in tests). Allocated if `None`.
        split: Force the split-row (`True`) or row-per-program (`False`) form; by default rows
            of at most :data:`ROW_MAX` elements with per-sample dots take the row form.
        chunk: Elements per program on the split path (a power of two).
    """
    if triton is None:
        raise RuntimeError("cg_update_triton needs triton, which is not installed")
    _check(x, r, p, Cp, rr, dot)
    shape = x.shape
    rows = 1 if dot == "batch" else shape[0]
    flat = [t.reshape(rows, -1).contiguous() for t in (x, r, p, Cp)]
    D = flat[0].shape[1]
    if out is None:
        out = tuple(torch.empty_like(flat[0]) for _ in range(3))
    else:
        out = tuple(o.view(rows, D) for o in out)
    acc = rr.dtype
    rr_ = rr.reshape(rows).contiguous()
    active_ = active.reshape(rows).to(torch.int8).contiguous()
    ok = torch.empty(rows, dtype=torch.int8, device=x.device)
    if split is None:
        split = dot == "batch" or D > ROW_MAX
    if not split:
        if D > ROW_MAX:
            raise ValueError(f"the row form holds at most {ROW_MAX} elements per row, got {D}")
        rr_next = torch.empty(rows, dtype=acc, device=x.device)
        block = max(triton.next_power_of_2(D), 16)
        _cg_row_kernel[(rows,)](
            *flat, rr_, active_, *out, rr_next, ok, D, BLOCK=block,
            num_warps=8 if block >= 2048 else 4,
        )  # fmt: skip
    else:
        chunks = triton.cdiv(D, chunk)
        partial = torch.empty((rows, chunks, 3), dtype=acc, device=x.device)
        tl_acc = tl.float64 if acc == torch.float64 else tl.float32
        _cg_dots_kernel[(rows, chunks)](
            flat[1], flat[2], flat[3], partial, D, chunks, BLOCK=chunk, ACC=tl_acc, num_warps=8
        )
        dots = partial.sum(1).contiguous()  # (rows, 3): a deterministic order, no atomics
        rr_partial = torch.empty((rows, chunks), dtype=acc, device=x.device)
        _cg_split_update_kernel[(rows, chunks)](
            *flat, dots, rr_, active_, *out, rr_partial, ok, D, chunks, BLOCK=chunk,
            num_warps=8,
        )  # fmt: skip
        rr_next = rr_partial.sum(1)
    ok = ok.bool()
    rr_next = rr_next.reshape(rr.shape)
    ok = ok.reshape(rr.shape)
    return CGState(
        *(o.view(shape) for o in out),
        rr_next,
        ok & (rr_next > tol),
        active & ~ok if fired else None,
    )


# Dispatcher


def cg_iterations_triton(
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
) -> CGState:
    r"""`iterations` CG iterations with the Triton update (see :func:`cg_iterations_reference`)."""
    fired = torch.zeros_like(rr, dtype=torch.int64) if count else None
    for _ in range(iterations):
        x, r, p, rr, active, f = cg_update_triton(x, r, p, matvec(p), rr, tol, active, dot=dot,
                                                  fired=count)  # fmt: skip
        if count:
            fired += f
    return CGState(x, r, p, rr, active, fired)


def cg_iterations(provider: str | None, *tensors: Tensor) -> Callable[..., CGState]:
    r"""Returns :func:`cg_iterations_triton` or :func:`cg_iterations_reference` for `tensors`
    (`provider`, else `EMDM_KERNELS`), chosen once per solve."""
    if resolve(provider, *tensors) == "triton":
        return cg_iterations_triton
    return cg_iterations_reference


def cg_update(
    x: Tensor,
    r: Tensor,
    p: Tensor,
    Cp: Tensor,
    rr: Tensor,
    tol: Tensor,
    active: Tensor,
    *,
    dot: str = "sample",
    fired: bool = False,
    provider: str | None = None,
) -> CGState:
    r"""One CG iteration by the reference or the Triton kernel (`provider`, else
    `EMDM_KERNELS`: `auto` takes Triton for CUDA tensors where it imports)."""
    if resolve(provider, x, r, p, Cp) == "triton":
        return cg_update_triton(x, r, p, Cp, rr, tol, active, dot=dot, fired=fired)
    return cg_update_reference(x, r, p, Cp, rr, tol, active, dot=dot, fired=fired)
