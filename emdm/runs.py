r"""The working folder of a long run: locked, checked before any work, resumable.

A long run (an EM reproduction: minutes to days) works in its own folder, `<out>/<name>_run/`,
and publishes its results into `<out>` only when it ends (:class:`emdm.publish.Publication`), so
that `<out>` only ever holds complete results. The folder holds

* `run.json`: what defines the run (its `identity`: the config fields that change its results)
  and its *segments*, one per process that worked on it (a killed run resumed is two), each
  with the code version (commit, dirty, hash of the difference), the start time and the wall
  time so far;
* `metrics.jsonl`: the run's measurements, one JSON object per line, appended as they come
  (:class:`MetricsLog`);
* the checkpoints that the run writes (`last.pt`, `q0.pt`, ...).

Opening the folder (:meth:`RunFolder.__init__`) does every check before any work: it takes an
exclusive lock on `<folder>/.lock` (a second process refuses, naming the first), then refuses a
folder that holds a run unless `resume` is set, a resume whose identity differs (naming the
keys), a resume with other code than the run started with (naming both commits: a result made
of two versions of the code is not reproducible), and unreadable checkpoints (naming the file).
"""

__all__ = ["MetricsLog", "RunFolder", "write_atomic"]

import contextlib
import datetime
import fcntl
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checks import load_torch
from .errors import UserError
from .provenance import code_version


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))  # as saved: tuples become lists


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    r"""Writes `path` through `write(tmp)` into a temporary file of a unique name beside it,
    then renames it over `path`: readers see the old file or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0o600 is too private for a result
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


class MetricsLog:
    r"""A log of measurements in a JSON-lines file: one JSON object (a row) per line.

    Rows are appended as they come, all of one call in one write (:meth:`log`), or a whole set
    replaces the file at once (:meth:`write`). A writer killed mid-line leaves a last line
    without its newline: :meth:`rows` leaves it out and the next :meth:`log` cuts it first, so
    that no row is glued to it. Of rows that agree on their key, :meth:`rows` keeps the last: a
    lap redone after a resume replaces the killed attempt's rows.

    Arguments:
        path: The file (its folder must exist when a row is written).
        key: The columns that identify a row; `None`: every column but `value`.
    """

    def __init__(self, path: str | os.PathLike, key: tuple[str, ...] | None = None):
        self.path, self.key = Path(path), key

    def exists(self) -> bool:
        r"""Whether the file exists (a :meth:`write` made it whole, or a :meth:`log` began it)."""
        return self.path.exists()

    def log(self, rows: list[dict[str, Any]]) -> None:
        r"""Appends `rows`, one line each, in one write, after cutting a last line that a killed
        writer left without its newline."""
        if self.path.exists():
            with open(self.path, "rb+") as f:
                size = f.seek(0, os.SEEK_END)
                if size:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":  # cut back to the last complete line
                        f.seek(0)
                        f.truncate(f.read().rfind(b"\n") + 1)
        with open(self.path, "a") as f:
            f.write(_lines(rows))

    def write(self, rows: list[dict[str, Any]]) -> None:
        r"""Replaces the file by `rows`, atomically: a reader sees all of them or the former
        file (:func:`write_atomic`)."""
        text = _lines(rows)
        write_atomic(self.path, lambda p: p.write_text(text))

    def rows(self, key: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        r"""The rows, in order of first appearance; of rows that agree on `key` (default: the
        log's), the last. `[]` if there is no file."""
        if not self.path.exists():
            return []
        text = self.path.read_text()
        lines = text.split("\n")
        if not text.endswith("\n"):  # cut short by a killed writer
            lines = lines[:-1]
        key = key or self.key
        kept: dict[tuple, dict[str, Any]] = {}
        for row in (json.loads(line) for line in lines if line.strip()):
            columns = key or tuple(sorted(k for k in row if k != "value"))
            kept[tuple((c, json.dumps(row.get(c))) for c in columns)] = row
        return list(kept.values())


def _lines(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, default=float) + "\n" for row in rows)


class RunFolder:
    r"""Opens (creates, locks and checks) the working folder of a run.

    Arguments:
        path: The folder, created if missing.
        identity: What defines the run's results (e.g. :func:`emdm.config.run_identity`),
            compared on resume.
        resume: Whether to continue the run the folder holds (a finished one re-reports).
        main: Whether this process writes (rank 0 of a multi-process run); the others only
            check.

    Raises:
        UserError: The folder is in use, holds a run and `resume` is not set, holds another
            run, was started with other code, or holds an unreadable file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        identity: dict[str, Any],
        *,
        resume: bool,
        main: bool = True,
    ):
        self.path, self.main = Path(path), main
        self.metrics = MetricsLog(self.path / "metrics.jsonl")
        self.identity = _json(identity)
        self.started = time.perf_counter()
        self._lock = None
        self._made = [p for p in (self.path, *self.path.parents) if not p.exists()]
        record = self.path / "run.json"
        if main:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(f"cannot create the run folder {self.path}: {error}") from None
            self._take_lock()
        if not main:  # rank 0 checks and writes; the others follow its verdict
            self.resuming, self.segments, self.segment, self.finished_at = resume, [], {}, None
            return
        self.resuming = record.exists()
        if self.resuming:
            try:
                saved = json.loads(record.read_text())
            except (OSError, ValueError) as error:
                self.close()
                raise UserError(
                    f"{record} is unreadable ({error}): the run folder is damaged; move it away "
                    f"and start the run anew"
                ) from None
            try:
                self._check(saved, resume)
            except UserError:
                self.close()
                raise
            self.segments, self.finished_at = saved["segments"], saved.get("finished")
        else:
            self.segments, self.finished_at = [], None
        self.segment = {**code_version(), "started": _now(), "pid": os.getpid(), "wall_s": 0.0,
                        "argv": sys.argv}  # fmt: skip
        self.segments.append(self.segment)
        self._save()

    # -- checks -------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        lock = self.path / ".lock"
        f = open(lock, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UserError(
                f"{self.path} is in use by {holder}: wait for it to end, or choose another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} (since {_now()})\n")
        f.flush()
        self._lock = f

    def _check(self, saved: dict[str, Any], resume: bool) -> None:
        done = saved.get("finished")
        state = f"finished at {done}" if done else "an unfinished run"
        if not resume:
            raise UserError(
                f"{self.path} holds a run already ({state}): pass --resume to "
                f"{'re-report' if done else 'continue'} it, or choose another --out"
            )
        keys = sorted(
            k
            for k in set(saved["identity"]) | set(self.identity)
            if saved["identity"].get(k) != self.identity.get(k)
        )
        if keys:
            raise UserError(
                f"cannot resume {self.path}: it holds a run with a different config; "
                f"differing keys: {', '.join(keys)}"
            )
        first, now = saved["segments"][0], code_version()
        fields = ("commit", "diff")
        if any(first.get(k) != now.get(k) for k in fields) and not done:

            def name(v):
                diff = v.get("diff")
                dirty = f" with uncommitted changes (hash {diff[:8]})" if diff else ""
                return f"{(v.get('commit') or 'no commit')[:12]}{dirty}"

            raise UserError(
                f"cannot resume {self.path}: it was started with the code at {name(first)}, "
                f"the code is now at {name(now)}; a result made by two versions of the code "
                f"would not be reproducible. Resume it with the code it started with, or start "
                f"anew in another --out"
            )
        for checkpoint in sorted(self.path.rglob("*.pt")):
            message = (
                f"cannot resume {self.path}: the checkpoint {checkpoint} is damaged ({{error}}); "
                f"delete it to redo its part of the run, or start anew in another --out"
            )
            load_torch(checkpoint, message, map_location="cpu", mmap=True)

    # -- records ------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        r"""Whether the run ended and published its results (a resume then only re-reports)."""
        return self.finished_at is not None

    def _save(self) -> None:
        self.segment["wall_s"] = round(time.perf_counter() - self.started, 3)
        record = {"identity": self.identity, "segments": self.segments}
        if self.finished_at is not None:
            record["finished"] = self.finished_at
        text = json.dumps(record, indent=2, default=str) + "\n"
        write_atomic(self.path / "run.json", lambda p: p.write_text(text))

    def log(self, rows: list[dict[str, Any]]) -> None:
        r"""Appends `rows` (JSON objects) to `metrics.jsonl`, one line each, and updates this
        segment's wall time."""
        if not self.main:
            return
        self.metrics.log(rows)
        self._save()

    def rows(self, key: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        r"""The rows logged, in order; of rows that agree on every column but `value` (or on
        `key`), the last: a lap redone after a resume replaces the killed attempt's rows."""
        return self.metrics.rows(key)

    def cached(self, filename: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        r"""The tensors of `<folder>/<filename>`, or, if absent, `compute()`'s, saved there
        (atomically) for a resume."""
        path = self.path / filename
        if path.exists():
            return torch.load(path, map_location="cpu", weights_only=True)
        state = compute()
        if self.main:
            write_atomic(path, lambda p: torch.save(state, p))
        return state

    def finish(self) -> None:
        r"""Records that the run ended and published its results, and releases the folder."""
        if self.main:
            self.finished_at = _now()
            self._save()
        self.close()

    @property
    def wall_time(self) -> float:
        r"""The wall time of all segments, this one up to now, in seconds."""
        if self.segment:
            self.segment["wall_s"] = round(time.perf_counter() - self.started, 3)
        return float(sum(s["wall_s"] for s in self.segments))

    def close(self) -> None:
        r"""Releases the folder's lock (also released if the process dies)."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None and self.main and not self.resuming:
            # a new run that failed before it made anything leaves no folder to --resume
            made = {p.name for p in self.path.iterdir()} - {"run.json", ".lock"}
            if not made:
                (self.path / "run.json").unlink(missing_ok=True)
                self.close()
                (self.path / ".lock").unlink(missing_ok=True)
                for folder in self._made:  # the folders it made, innermost first
                    with contextlib.suppress(OSError):
                        folder.rmdir()
        self.close()
