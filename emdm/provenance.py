r"""Provenance of a result, and the tidy CSV + JSON pair that every run writes.

A run named `name` writes `<out_dir>/<name>.csv`, one row per measurement with a `metric` and a
`value` column plus the columns that identify the row, and `<out_dir>/<name>.json`, holding the
resolved config, the scale (`"quick"` or `"paper"`), the provenance (git commit, versions,
device, threads, time) and the wall time. Both files are written to a temporary file in the same
folder and renamed once both are complete, so a crash never leaves a partial file.
"""

__all__ = ["provenance", "read_jsonl", "write_results"]

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

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
        name, the number of torch threads and the UTC time.
    """
    from . import __version__

    commit = _git("rev-parse", "HEAD")
    # tracked files only: results written beside the code must not mark the tree dirty
    status = _git("status", "--porcelain", "--untracked-files=no") if commit is not None else None
    return {
        "commit": commit,
        "dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "emdm": __version__,
        "packages": _versions(("torch-fidelity", "torchvision", "triton", "pot", "scipy")),
        "platform": platform.platform(),
        "device": str(device) if device is not None else None,
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),
        "argv": sys.argv,
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    r"""The rows of a JSON-lines log (one object per non-empty line), `[]` if there is none."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_temp(path: Path, write: Callable[[Any], None]) -> Path:
    r"""Writes a hidden temporary file beside `path` and returns its path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0o600, too private for a result
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_results(
    name: str,
    rows: list[dict[str, Any]],
    config: dict[str, Any],
    *,
    wall_time: float,
    out_dir: str | os.PathLike = "results",
    quick: bool,
    extra: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> tuple[Path, Path]:
    r"""Writes `<out_dir>/<name>.csv` and `<out_dir>/<name>.json`.

    Arguments:
        name: The result's name, e.g. `"demo"` or `"table1_quick"`.
        rows: The measurements, one dictionary per row, each with `metric` and `value` keys.
        config: The resolved config of the run.
        wall_time: The run's wall time, in seconds.
        out_dir: The folder, created if missing.
        quick: Whether the run is at quick (CPU) scale rather than paper scale.
        extra: Anything else to record in the JSON.
        device: The device of the run, for the provenance.

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
        "scale": "quick" if quick else "paper",
        "config": config,
        "wall_time_s": float(wall_time),
        "provenance": provenance(device),
        "extra": extra or {},
    }
    text = json.dumps(meta, indent=2, default=str) + "\n"  # fails here, before any write

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, js = out_dir / f"{name}.csv", out_dir / f"{name}.json"
    frame = pd.DataFrame(rows)
    for column in frame.columns:  # integer columns with gaps stay integers, not 32.0
        values = [row[column] for row in rows if row.get(column) is not None]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            frame[column] = frame[column].astype("Int64")
    # both files complete before either replaces an older one
    temps = []
    try:
        temps.append(_write_temp(csv, lambda f: frame.to_csv(f, index=False)))
        temps.append(_write_temp(js, lambda f: f.write(text)))
        for tmp, path in zip(temps, (csv, js), strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return csv, js
