r"""Triton kernels for emdm's hot paths, each beside its pure-torch reference.

Each module holds, in order: the reference (the oracle), the private `@triton.jit` kernels, a
launcher that checks its inputs and allocates, and the public dispatcher, which picks the
reference or the kernel per call (:mod:`emdm.kernels._dispatch`,
`EMDM_KERNELS=ref|triton|auto`). Triton is optional: a module imports it inside a guard and
defines its kernels only where it imports. Under `TRITON_INTERPRET=1` (set before the first
import of triton) the kernels run on CPU tensors, through Triton's interpreter: that is how the
tests run them on a machine without a GPU.

The import name is `emdm.kernels`, never `kernels`: a top-level `kernels` would clash with
another distribution's (Hugging Face's `kernels`), and installing both would break one. The
folder stays at the repository's top level; the name comes from one of two places:

* an installed wheel (`pip install .`): pyproject's `package-dir` maps the package
  `emdm.kernels` to this folder, so the wheel holds `emdm/kernels/` and no `kernels/`;
* a source checkout (pytest from the repository root, where `import emdm` finds `./emdm`
  first; `PYTHONPATH=. python3 ...` with nothing installed, as `bench/gpu_*.sh` run; the
  editable install of `make setup`): `emdm/kernels.py` loads this file as `emdm.kernels`, with
  this folder as its path.

Within the folder, modules import each other relatively (`from ._dispatch import resolve`), so
they work under either name. emdm's core does not need them: where `emdm.kernels` does not import,
`emdm.solvers` and `emdm.operators.mri` run the same references from `emdm/_fallback.py`.
"""
