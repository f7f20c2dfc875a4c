r"""Triton kernels for emdm's hot paths, each beside its pure-torch reference.

Each module holds, in order: the reference (the oracle), the private `@triton.jit` kernels, a
launcher that checks its inputs and allocates, and the public dispatcher, which picks the
reference or the kernel per call (:mod:`kernels._dispatch`, `EMDM_KERNELS=ref|triton|auto`).
Nothing here imports Triton until a Triton kernel is actually launched.
"""
