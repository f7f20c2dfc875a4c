r"""Publishing a result's files as one unit, and reading them back consistently.

A result is a set of files that belong together: `<name>.csv`, `<name>.json` (config and
provenance), figures and arrays. POSIX renames one file atomically, not several, so a set is
published in three steps, under an exclusive lock on `<out>/.publish.lock`:

1. every file is written complete into a private staging folder
   `<out>/.<name>.staging-<pid>-<random>/` and flushed to disk; the JSON written last records the
   SHA-256 of every other file (`"files"`);
2. the staging folder is renamed to `<out>/.<name>.publish/`: the commit point;
3. each file is moved into `<out>/` (one `os.replace` each, the JSON last) and the folder removed.

A process killed before step 2 leaves `<out>` as it was (its staging folder is removed by the
next publisher); killed during step 3, it leaves a committed publication, which the next
publisher or reader completes before anything else, under the same lock. So a reader that goes
through :func:`read_results` never sees files of two publications, and any other reader can tell
a mixed set: the JSON holds the hash of each file it belongs with.
"""

__all__ = ["Publication", "check_disk", "check_writable", "file_hash", "read_results", "size_text"]

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import faults
from .errors import UserError

if TYPE_CHECKING:
    import pandas as pd

LOCK = ".publish.lock"


def file_hash(path: str | os.PathLike) -> str:
    r"""The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _nearest_existing(folder: Path) -> Path:
    r"""`folder`, or the nearest of its parents that exists."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable(folder: str | os.PathLike) -> Path:
    r"""Checks that files can be written in `folder` (or, if it does not exist yet, that it can
    be made in its nearest existing parent), without creating it, so that a run stops before
    any work rather than after it; raises a :class:`UserError` saying why not."""
    folder = Path(folder)
    existing = _nearest_existing(folder)
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a folder", str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UserError(
            f"cannot write results into {folder}: {error.strerror or error}; choose a writable "
            f"folder with --out"
        ) from None
    return folder


def size_text(n: float) -> str:
    r"""A size in bytes as people read it: `"41.8 kB"`, `"311 MB"`, `"1.24 GB"`."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def check_disk(folder: str | os.PathLike, need: int, what: str) -> None:
    r"""Checks that the file system of `folder` (or of its nearest existing parent) has `need`
    bytes free, so that a run that would fill the disk stops before any work rather than after
    hours of it, with a cryptic error from the writer; raises a :class:`UserError` naming
    `what` needs the space (e.g. `"the EM run's checkpoints"`), how much and how much there
    is."""
    existing = _nearest_existing(Path(folder))
    free = shutil.disk_usage(existing).free
    if free < need:
        raise UserError(
            f"{what}: about {size_text(need)} of disk in {folder}, and {existing}'s file system "
            f"has {size_text(free)} free; free some space or choose a folder on a larger disk"
        )


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    r"""Holds the exclusive publication lock of `folder` (released when the process dies)."""
    with open(folder / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _complete(folder: Path) -> None:
    r"""Completes every committed publication in `folder` (step 3) and removes stray staging
    folders of dead publishers. The caller holds the lock."""
    for pending in sorted(folder.glob(".*.publish")):
        manifest = json.loads((pending / "manifest.json").read_text())
        for name in manifest["order"]:
            source = pending / name
            if source.exists():  # already moved by the process that died
                faults.point("publish")
                os.replace(source, folder / name)
        shutil.rmtree(pending)
    for stale in folder.glob(".*.staging-*"):
        pid = stale.name.rsplit("-", 2)[-2]
        if not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Publication:
    r"""The files of one result, staged, then published together.

    Example:
        >>> with Publication("results", "fig3_quick") as pub:
        ...     np.save(pub.path("fig3_quick_q1.npy"), q1)
        ...     save(fig, pub.path("fig3_quick.png"))
        ...     pub.write_json("fig3_quick.json", meta)  # last: records the others' hashes
        # on leaving the block without an error, the files appear in results/ together

    Arguments:
        out_dir: The folder the files are published into (created if missing).
        name: The result's name, part of the staging folder's name.
    """

    def __init__(self, out_dir: str | os.PathLike, name: str):
        self.out_dir = check_writable(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.staging = Path(
            tempfile.mkdtemp(dir=self.out_dir, prefix=f".{name}.staging-{os.getpid()}-")
        )
        self.order: list[str] = []

    def path(self, filename: str) -> Path:
        r"""Where to write the file `filename` (a plain name) of the result."""
        if not filename or Path(filename).name != filename or filename.startswith("."):
            raise ValueError(f"filename must be a plain, visible file name, got {filename!r}")
        if filename not in self.order:
            self.order.append(filename)
        return self.staging / filename

    def hashes(self) -> dict[str, str]:
        r"""The SHA-256 of each file written so far."""
        return {n: file_hash(self.staging / n) for n in self.order if (self.staging / n).exists()}

    def write_json(self, filename: str, meta: dict[str, Any]) -> Path:
        r"""Writes `meta` plus `"files"`, the hashes of the files written so far, as JSON;
        published after them."""
        text = json.dumps({**meta, "files": self.hashes()}, indent=2, default=str) + "\n"
        path = self.path(filename)
        path.write_text(text)
        return path

    def commit(self) -> list[Path]:
        r"""Publishes the staged files into `out_dir` together; returns their paths."""
        missing = [n for n in self.order if not (self.staging / n).exists()]
        if missing:
            raise ValueError(f"files announced but never written: {missing}")
        for name in self.order:
            _fsync(self.staging / name)
        (self.staging / "manifest.json").write_text(json.dumps({"order": self.order}))
        with _locked(self.out_dir):
            _complete(self.out_dir)  # an earlier publisher's, killed half-way
            faults.point("publish")
            pending = self.out_dir / f".{self.name}.publish"
            os.rename(self.staging, pending)  # the commit point
            _complete(self.out_dir)
        return [self.out_dir / n for n in self.order]

    def abort(self) -> None:
        r"""Drops the staged files; `out_dir` is left as it was."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> "Publication":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


def read_results(
    name: str, out_dir: str | os.PathLike = "results"
) -> "tuple[pd.DataFrame, dict[str, Any]]":
    r"""Reads the result `name` from `out_dir`: its CSV as a frame and its JSON.

    It takes the publication lock (completing a publication killed half-way first), so the
    two always come from one publication, and checks every file that the JSON lists (the CSV,
    figures, arrays) against the hash it records; where the folder is read-only it reads
    without the lock. Raises a `ValueError` for a file that does not match (a set mixed by a
    process that did not publish through this module).
    """
    out_dir = Path(out_dir)
    csv, js = out_dir / f"{name}.csv", out_dir / f"{name}.json"
    try:
        lock = _locked(out_dir)
        lock.__enter__()
    except OSError:  # read-only: no lock to take
        lock = None
    try:
        if lock is not None:
            _complete(out_dir)
        meta = json.loads(js.read_text())
        data = csv.read_bytes()  # hashed and parsed from the same bytes
        import pandas as pd  # with a result read, not with emdm

        frame = pd.read_csv(io.BytesIO(data))
        hashes = meta.get("files", {})
        for name, expected in hashes.items():
            path = out_dir / name
            got = hashlib.sha256(data).hexdigest() if name == csv.name else (
                file_hash(path) if path.exists() else None
            )  # fmt: skip
            if got != expected:
                raise ValueError(
                    f"{path} does not belong with {js} (its hash differs from the one the JSON "
                    f"records): the files were written by two runs"
                )
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    return frame, meta
