r"""Provenance of a result, and the tidy CSV + JSON pair that every run writes.

A run named `name` writes `<out_dir>/<name>.csv`, one row per measurement with a `metric` and a
`value` column plus the columns that identify the row, and `<out_dir>/<name>.json`, holding the
resolved config, the scale (`"quick"`, `"paper"` or `"smoke"`), the provenance (git commit,
versions, device, threads, time), the wall time and the SHA-256 of each file of the result.
These two and the run's figures and arrays are published together
(:class:`emdm.publish.Publication`): a crash leaves the former set or the new one, never a mix.
"""

__all__ = ["code_version", "provenance", "write_results"]

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .publish import Publication

if TYPE_CHECKING:  # pandas and matplotlib load when a result is written, not with emdm
    from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _device_name(device: torch.device | str | None) -> str:
    device = torch.device(device) if device is not None else None
    if device is None and torch.cuda.is_available():
        device = torch.device("cuda")
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name()


def _versions(names: tuple[str, ...]) -> dict[str, str | None]:
    r"""The installed versions of `names` (`None` where one is absent), without importing them:
    FID and IS depend on torch-fidelity's version, for one."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(device: torch.device | str | None = None) -> dict[str, Any]:
    r"""Returns where and with what a result was produced.

    Arguments:
        device: The device that ran the computation. Defaults to the first GPU if there is one,
            else the CPU.

    Returns:
        A JSON-ready dictionary with the git commit (`None` outside a git checkout) and whether
        the tree is dirty, the Python, torch, numpy and emdm versions, those of torch-fidelity,
        torchvision, triton, POT and scipy, the platform, the device
        name, the number of torch threads, the processes (`world`: how many ranks, and
        `backend`: their process group's, `None` without one) and the UTC time.
    """
    from . import __version__

    version = code_version()
    return {
        "commit": version["commit"],
        "dirty": version["dirty"],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "emdm": __version__,
        "packages": _versions(("torch-fidelity", "torchvision", "triton", "pot", "scipy")),
        "platform": platform.platform(),
        "device": str(device) if device is not None else None,
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),
        "processes": _processes(),
        "argv": sys.argv,
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _processes() -> dict[str, Any]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return {"world": dist.get_world_size(), "backend": dist.get_backend()}
    return {"world": 1, "backend": None}


def code_version() -> dict[str, Any]:
    r"""The version of the code that runs: the git commit (`None` outside a checkout), whether
    tracked files outside `results/` differ from it (`dirty`; results written beside the code do
    not count), and `diff`, a SHA-256 of that difference and of the source files that git does
    not track yet (`None` when there is neither), so that two processes can tell whether they
    ran the same code."""
    from . import __version__

    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "diff": None, "emdm": __version__}
    paths = ("--", ".", ":(exclude)results")
    status = _git("status", "--porcelain", "--untracked-files=no", *paths)
    digest = hashlib.sha256((_git("diff", "HEAD", *paths) or "").encode() if status else b"")
    # new files that git does not track yet are code too (a new module, say)
    for name in (_git("ls-files", "--others", "--exclude-standard", *paths) or "").split("\n"):
        if name.endswith((".py", ".toml", ".cfg", ".json", ".sh")):
            digest.update(name.encode() + b"\0")
            with contextlib.suppress(OSError):
                digest.update((REPO / name).read_bytes())
    changed = digest.hexdigest() != hashlib.sha256(b"").hexdigest()
    return {
        "commit": commit,
        "dirty": None if status is None else bool(status),
        "diff": digest.hexdigest() if changed else None,
        "emdm": __version__,
    }


def write_results(
    name: str,
    rows: list[dict[str, Any]],
    config: dict[str, Any],
    *,
    wall_time: float,
    out_dir: str | os.PathLike = "results",
    quick: bool | str,
    extra: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    figures: "Mapping[str, Figure] | None" = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    texts: Mapping[str, str] | None = None,
    segments: list[dict[str, Any]] | None = None,
) -> tuple[Path, Path]:
    r"""Publishes `<out_dir>/<name>.csv`, `<out_dir>/<name>.json` and the run's figures and
    arrays, together.

    Arguments:
        name: The result's name, e.g. `"demo"` or `"table1_quick"`.
        rows: The measurements, one dictionary per row, each with `metric` and `value` keys.
        config: The resolved config of the run.
        wall_time: The run's wall time, in seconds (all segments of a resumed run).
        out_dir: The folder, created if missing.
        quick: Whether the run is at quick (CPU) scale rather than paper scale, or the scale's
            name itself (`"quick"`, `"paper"`, `"smoke"`: a config's `scale`).
        extra: Anything else to record in the JSON.
        device: The device of the run, for the provenance.
        figures: Figures to publish with the tables, by file name (saved as PNG, 150 dpi).
        arrays: Arrays to publish with them, by file name (saved with `np.save`).
        texts: Text files to publish with them (e.g. Markdown tables), by file name.
        segments: For a run done in several processes (killed and resumed), each process's
            code version, start and wall time (:class:`emdm.runs.RunFolder`).

    Returns:
        The paths of the CSV and JSON files.
    """
    if not rows:
        raise ValueError("rows is empty: there is nothing to write")
    for i, row in enumerate(rows):
        missing = [key for key in ("metric", "value") if key not in row]
        if missing:
            raise ValueError(f"row {i} lacks the column(s) {missing}: {row!r}")
    if not name or Path(name).name != name:
        raise ValueError(f"name must be a plain file name, got {name!r}")

    meta = {
        "name": name,
        "scale": quick if isinstance(quick, str) else "quick" if quick else "paper",
        "config": config,
        "wall_time_s": float(wall_time),
        "provenance": provenance(device),
        "extra": extra or {},
    }
    if segments is not None:
        meta["segments"] = segments
    json.dumps(meta, default=str)  # fails here, before any write

    import pandas as pd

    frame = pd.DataFrame(rows)
    for column in frame.columns:  # integer columns with gaps stay integers, not 32.0
        values = [row[column] for row in rows if row.get(column) is not None]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            frame[column] = frame[column].astype("Int64")
    with Publication(out_dir, name) as pub:
        frame.to_csv(pub.path(f"{name}.csv"), index=False)
        for filename, fig in (figures or {}).items():
            # no timestamp in the PNG: the same figure gives the same bytes
            path = pub.path(filename)
            fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"Software": None})
        for filename, array in (arrays or {}).items():
            np.save(pub.path(filename), array)
        for filename, text in (texts or {}).items():
            pub.path(filename).write_text(text, encoding="utf-8")
        pub.write_json(f"{name}.json", meta)
    out_dir = pub.out_dir
    return out_dir / f"{name}.csv", out_dir / f"{name}.json"
