r"""How emdm installs: the kernels under the import name `emdm.kernels`, never a top-level
`kernels` (another distribution's name), and a core that runs without them."""

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from emdm import _fallback
from emdm.kernels import cg as kcg
from emdm.kernels import mri as kmri

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, cwd: Path, first: Path | None = None) -> subprocess.CompletedProcess:
    r"""Runs `code` in a new interpreter in `cwd`, without the checkout on its path (where
    PYTHONPATH names it), and with `first` ahead of everything."""
    env = dict(os.environ)
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    path = [p for p in path if Path(p).resolve() != ROOT and p != "."]
    env["PYTHONPATH"] = os.pathsep.join(([str(first)] if first else []) + path)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_pyproject_maps_the_kernels_folder_to_emdm_kernels():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"emdm.kernels": "kernels"}
    # an explicit list (the mapped name cannot be discovered): it must name every package
    # under emdm/, or the wheel would silently lack one
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("emdm/**/__init__.py")}
    assert set(setuptools["packages"]) == found | {"emdm.kernels"}


def test_the_installed_distribution_has_no_top_level_kernels(tmp_path):
    # the installed metadata, not the checkout's emdm.egg-info (a build's list of sources)
    site = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    dists = list(importlib.metadata.distributions(name="emdm", path=site))
    if not dists:
        pytest.skip("emdm is not installed (run from the source tree)")
    for dist in dists:
        assert (dist.read_text("top_level.txt") or "emdm").split() == ["emdm"]
        assert not [f for f in dist.files or () if f.parts[0] == "kernels"]
    # outside the checkout (no ./kernels on the path), `kernels` is nobody's or another's
    out = _run("import importlib.util; s = importlib.util.find_spec('kernels'); "
               "print(s.origin if s else None)", tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert str(ROOT) not in out.stdout


def test_the_wheel_holds_emdm_kernels_and_no_top_level_kernels(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    for name in ("emdm", "kernels"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if built.returncode != 0 and "No module named pip" in built.stderr:
        pytest.skip("pip is not installed")
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("emdm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"emdm/kernels/__init__.py", "emdm/kernels/cg.py", "emdm/kernels/mri.py"} <= set(names)
    assert not [n for n in names if n.split("/")[0] == "kernels"]


def test_emdm_solves_without_the_kernels_folder(tmp_path):
    shutil.copytree(ROOT / "emdm", tmp_path / "emdm", ignore=shutil.ignore_patterns("__pycache__"))
    out = _run(
        """
        import torch, emdm, emdm.solvers
        from emdm.operators.mri import mri_forward

        assert emdm.solvers.cg_iterations.__module__ == "emdm._fallback"
        assert mri_forward.__module__ == "emdm._fallback"
        g = torch.Generator().manual_seed(0)
        M = torch.randn(3, 5, 5, generator=g, dtype=torch.float64)
        C = M @ M.mT + 5 * torch.eye(5, dtype=torch.float64)
        b = torch.randn(3, 5, generator=g, dtype=torch.float64)
        x = emdm.cg(lambda v: (C @ v[..., None])[..., 0], b, 5)
        assert torch.allclose(x, torch.linalg.solve(C, b)), (x, torch.linalg.solve(C, b))
        A = emdm.MRIOperator(torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64))
        u = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
        v = torch.randn(2, 3, 4, 2, generator=g, dtype=torch.float64)
        assert torch.allclose((A(u) * v).sum(), (u * A.T(v)).sum())
        try:
            emdm.cg(lambda v: v, b, 1, provider="triton")
        except RuntimeError as e:
            assert "emdm.kernels" in str(e)
        else:
            raise AssertionError("provider='triton' ran without the kernels")
        print("ok")
        """,
        tmp_path,
        first=tmp_path,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("dot", ["sample", "batch"])
def test_the_fallback_cg_loop_is_the_reference_to_the_bit(dot):
    g = torch.Generator().manual_seed(0)
    B, D = 4, 7
    M = torch.randn(B, D, D, generator=g)
    C = M + M.mT  # indefinite: the guard fires
    C[0] = M[0] @ M[0].mT + torch.eye(D)  # and sample 0 converges
    b = torch.randn(B, D, generator=g)
    rr = kcg.batched_dot(b, b, dot, torch.float64)
    tol, zero = 1e-3 * rr, torch.zeros_like(b)
    args = (lambda v: (C @ v[..., None])[..., 0], zero, b, b, rr, tol, rr > tol, 6)
    ours = _fallback.cg_iterations("auto", b)(*args, dot=dot, count=True)
    theirs = kcg.cg_iterations_reference(*args, dot=dot, count=True)
    assert theirs.fired.sum() > 0
    for a, t in zip(ours, theirs, strict=True):
        assert torch.equal(a, t)


@pytest.mark.parametrize("mask_shape", [(2, 5), (5,)])
def test_the_fallback_mri_transforms_are_the_reference_to_the_bit(mask_shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, generator=g)
    y = torch.randn(2, 3, 5, 2, generator=g)
    mask = torch.rand(mask_shape, generator=g) < 0.5
    assert torch.equal(_fallback.mri_forward(x, mask), kmri.mri_forward_reference(x, mask))
    assert torch.equal(_fallback.mri_adjoint(y, mask), kmri.mri_adjoint_reference(y, mask))


def test_the_fallback_refuses_the_triton_provider(monkeypatch):
    x, mask = torch.zeros(1, 2, 2), torch.ones(2)
    with pytest.raises(RuntimeError, match=r"emdm\.kernels does not import"):
        _fallback.mri_forward(x, mask, provider="triton")
    monkeypatch.setenv("EMDM_KERNELS", "triton")
    with pytest.raises(RuntimeError, match=r"emdm\.kernels does not import"):
        _fallback.cg_iterations(None, x)
    monkeypatch.setenv("EMDM_KERNELS", "fast")
    with pytest.raises(ValueError, match="must be one of"):
        _fallback.cg_iterations(None, x)


def test_emdm_kernels_is_one_module_under_one_name():
    import emdm.kernels

    assert Path(emdm.kernels.__file__).parent == Path(kcg.__file__).parent
    assert kcg.__name__ == "emdm.kernels.cg" and "kernels.cg" not in sys.modules
    assert importlib.util.find_spec("emdm.kernels.cg").origin == kcg.__file__
