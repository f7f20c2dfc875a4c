r"""`emdm.kernels` in a source checkout: the repository's top-level `kernels/` folder.

An installed wheel holds the kernels as the package `emdm/kernels/` (pyproject's
`package-dir`), which Python imports ahead of this module (a package wins over a module of the
same name). A checkout has no such folder (pytest from the repository root, `PYTHONPATH=.`, an
editable install): this module then loads `kernels/__init__.py` as `emdm.kernels`, with
`kernels/` as its path, and puts it in its own place, so that `emdm.kernels.cg` and the
relative imports between the kernel files resolve as in the wheel. Where `kernels/` is missing
it raises `ModuleNotFoundError`, and emdm runs its pure-torch fallback (`emdm/_fallback.py`).
"""

import importlib.util
import sys
from pathlib import Path

_folder = Path(__file__).resolve().parent.parent / "kernels"
if not (_folder / "__init__.py").is_file():
    raise ModuleNotFoundError(f"emdm.kernels: {_folder} has no __init__.py", name=__name__)
_spec = importlib.util.spec_from_file_location(
    __name__, _folder / "__init__.py", submodule_search_locations=[str(_folder)]
)
_module = importlib.util.module_from_spec(_spec)
sys.modules[__name__] = _module  # the import system returns what sys.modules holds
_spec.loader.exec_module(_module)
