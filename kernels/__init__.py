r"""Triton kernels for emdm's hot paths, each beside its pure-torch reference.

Each module holds, in order: the reference (the oracle), the private `@triton.jit` kernels, a
launcher that checks its inputs and allocates, and the public dispatcher, which picks the
reference or the kernel per call (:mod:`kernels._dispatch`, `EMDM_KERNELS=ref|triton|auto`).
Triton is optional: a module imports it inside a guard and defines its kernels only where it
imports. Under `TRITON_INTERPRET=1` (set before the first import of triton) the kernels run on CPU
tensors, through Triton's interpreter: that is how the tests run them on a machine without a GPU.
"""
