r"""A denoiser call captured as one CUDA graph, replayed at fixed shapes.

On a GPU, a posterior denoiser on a small network is bound by kernel launches, not arithmetic:
one :class:`emdm.MMPS` call on the manifold experiment's 3 x 256 MLP launches a few hundred
kernels (the forward pass, :math:`k + 1` vector-Jacobian products, the solver's updates) and
takes about 3 ms on an H200 at any batch from 256 to 16 384. A CUDA graph records those launches
once and replays them with one: :class:`CapturedDenoiser` captures one call
`denoiser(x_t, sigma)`, its backward passes and solve included, on static input buffers; each
later call copies its inputs into them, replays the graph and returns a copy of the output.

What a capture needs from the call: no host synchronization (MMPS skips its
:math:`\sigma > 0` check inside :func:`emdm.guidance.base.positive_sigma`, which the capture
enters; its CG runs a fixed number of iterations), the same operations on every call (no branch
on tensor values), and state updated in place (MMPS's guard counter `nonpositive` is).
`solver="dense"` (an eigendecomposition that checks its result on the host) is not capturable;
`"cg"` is.

Warning:
    Not tested on a device in this repository's CI (no GPU there): `tests/test_mmps.py` compares
    a captured call and a sampler run with eager ones where CUDA is available, and
    `bench/mmps_cost.py --device cuda` times it.

References:
    | CUDA semantics, "CUDA Graphs" (PyTorch documentation)
    | https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs
"""

__all__ = ["CapturedDenoiser"]

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .denoisers.base import broadcast_sigma
from .guidance.base import positive_sigma


class CapturedDenoiser:
    r"""Creates a denoiser :math:`(x_t, \sigma_t) \mapsto d(x_t, \sigma_t)` that replays one
    CUDA graph of `denoiser`, for inputs of one shape, dtype and device.

    The call is captured under `torch.no_grad` (as samplers run it; MMPS enables the gradient
    it needs) after `warmup` eager calls on a side stream, on copies of `x_t` and `sigma`.
    Those warm-up calls leave the tensors of `state` as they found them.

    Warning:
        :math:`\sigma` is checked positive once, here; a replay does not check it (a sampler's
        grid is positive). The output is a fresh tensor per call (one copy), detached.

    Arguments:
        denoiser: The denoiser to capture, e.g. an :class:`emdm.MMPS` with `solver="cg"`.
        x_t: An example input, with shape :math:`(B, *)`, on a CUDA device: every call must
            have its shape, dtype and device.
        sigma: An example noise level, with shape :math:`()` or :math:`(B,)`, positive.
        warmup: The eager calls before the capture (at least 1: they build the lazy state the
            capture must not allocate, e.g. cuBLAS handles and compiled Triton kernels).
        state: Tensors that `denoiser` updates in place (e.g. `MMPS.nonpositive`, the
            default when `denoiser` has one), restored after the warm-up.
    """

    def __init__(
        self,
        denoiser: Callable[[Tensor, Tensor], Tensor],
        x_t: Tensor,
        sigma: Tensor | float,
        *,
        warmup: int = 3,
        state: Sequence[Tensor] | None = None,
    ):
        if not callable(denoiser):
            raise ValueError(f"denoiser must be callable, got {type(denoiser).__name__}")
        if not isinstance(x_t, Tensor) or not x_t.is_cuda:
            where = x_t.device if isinstance(x_t, Tensor) else type(x_t).__name__
            raise ValueError(
                f"CapturedDenoiser records a CUDA graph: x_t must be a CUDA tensor, got {where}; "
                "on the CPU call the denoiser itself (eagerly)"
            )
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be a positive integer, got {warmup!r}")
        if state is None:
            counter = getattr(denoiser, "nonpositive", None)
            state = (counter,) if isinstance(counter, Tensor) else ()
        self.denoiser = denoiser
        self.x = x_t.detach().clone()  # the static buffers the graph reads
        self.sigma = broadcast_sigma(sigma, x_t).clone()  # checks σ > 0, once
        saved = [t.clone() for t in state]

        device = self.x.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad(), positive_sigma():
            for _ in range(warmup):
                denoiser(self.x, self.sigma)
        torch.cuda.current_stream(device).wait_stream(side)
        for t, s in zip(state, saved, strict=True):
            t.copy_(s)

        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph), torch.no_grad(), positive_sigma():
                self.out = denoiser(self.x, self.sigma).detach()
        except RuntimeError as error:
            raise RuntimeError(
                f"capturing {type(denoiser).__name__} as a CUDA graph failed: every operation of "
                "its call must run on the device without a host synchronization (e.g. MMPS "
                f'with solver="cg", not "dense"): {error}'
            ) from error

    def __call__(self, x_t: Tensor, sigma: Tensor | float) -> Tensor:
        r"""Returns :math:`d(x_t, \sigma)` by one replay, for `x_t` of the captured shape, dtype
        and device and `sigma` of shape :math:`()` or :math:`(B,)` (or a float)."""
        if x_t.shape != self.x.shape or x_t.dtype != self.x.dtype or x_t.device != self.x.device:
            raise ValueError(
                f"this CapturedDenoiser replays a graph captured for x_t of shape "
                f"{tuple(self.x.shape)}, {self.x.dtype} on {self.x.device}; got "
                f"{tuple(x_t.shape)}, {x_t.dtype} on {x_t.device}: capture one for those inputs"
            )
        self.x.copy_(x_t)
        if isinstance(sigma, Tensor):
            if sigma.shape not in ((), self.sigma.shape):
                raise ValueError(
                    f"sigma must have shape () or {tuple(self.sigma.shape)}, got "
                    f"{tuple(sigma.shape)}"
                )
            self.sigma.copy_(sigma)  # a 0-d sigma broadcasts
        else:
            self.sigma.fill_(sigma)  # a float: a fill, not a host-to-device copy
        self.graph.replay()
        return self.out.clone()

    def __repr__(self) -> str:
        return f"CapturedDenoiser({self.denoiser!r}, x_t={tuple(self.x.shape)})"
