r"""Which implementation a kernel call uses: the torch reference or the Triton kernel.

The environment variable `EMDM_KERNELS`, read at each call (never at import), selects

* `ref`: the pure-torch reference, everywhere;
* `triton`: the Triton kernel, for CUDA tensors, and for CPU tensors under
  `TRITON_INTERPRET=1` (Triton's interpreter, for tests: about 1000x slower);
* `auto` (default): the Triton kernel for CUDA tensors when Triton imports, else the reference.

A call may also name its provider explicitly (`provider="ref"`), as the benchmarks do. Triton is
optional: without it, `auto` and `ref` run everything on the reference path.
"""

__all__ = ["PROVIDERS", "resolve", "triton_available"]

import functools
import importlib.util
import os

from torch import Tensor

PROVIDERS = ("ref", "triton", "auto")


@functools.cache
def triton_available() -> bool:
    r"""Whether Triton can be imported (checked once, without importing it here)."""
    return importlib.util.find_spec("triton") is not None


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def resolve(provider: str | None, *tensors: Tensor) -> str:
    r"""Returns `"ref"` or `"triton"` for a call on `tensors`.

    Arguments:
        provider: `"ref"`, `"triton"`, `"auto"`, or `None` to read `EMDM_KERNELS`.
        tensors: The call's tensors; `auto` picks Triton only if all are on a CUDA device.
    """
    if provider is None:
        provider = os.environ.get("EMDM_KERNELS", "auto") or "auto"
    if provider not in PROVIDERS:
        raise ValueError(
            f"kernel provider (EMDM_KERNELS) must be one of {PROVIDERS}, got {provider!r}"
        )
    cuda = all(t.is_cuda for t in tensors)
    if provider == "auto":
        return "triton" if cuda and triton_available() else "ref"
    if provider == "triton":
        if not triton_available():
            raise RuntimeError("the Triton provider was asked for, but triton is not installed")
        if not cuda and not _interpreted():
            raise ValueError(
                "the Triton provider runs on CUDA tensors, or on CPU tensors only under "
                "TRITON_INTERPRET=1 (set before triton is imported)"
            )
    return provider
