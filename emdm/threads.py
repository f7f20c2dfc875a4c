r"""The intra-op CPU threads of a run: by default, as many as the cores other processes leave idle.

torch splits each CPU op across :func:`torch.get_num_threads` OpenMP threads (GNU libgomp in
torch's Linux wheels) and waits, at the op's end, for the slowest of them. On cores that other
jobs share, a thread that loses its core waits for a scheduler slice (milliseconds) while the
others wait for it, at every op; the small ops of an MLP training step (tens of them, each
microseconds) then take the scheduler's time instead of their own. One thread per idle core
keeps the split and loses nothing to the wait.

The spec of a run (`--threads` of every entry point, :class:`emdm.experiment.Outputs`, or the
environment variable `EMDM_THREADS`):

* `"auto"` (the default): :math:`n` threads from the cores' use over the last `interval` seconds,
  read in `/proc/stat`,

  .. math:: n = \operatorname{clip}\Big(\Big\lfloor T \, \frac{C - L}{C} + \frac{1}{2}
      \Big\rfloor, 1, T\Big), \qquad
      L = \frac{\sum_{c} \Delta b_c - \Delta o}{\frac{1}{C} \sum_c \Delta t_c},

  with :math:`C` the cores this process may run on (`os.sched_getaffinity`), :math:`\Delta b_c`
  and :math:`\Delta t_c` the busy and total ticks of core :math:`c` over the interval,
  :math:`\Delta o` this process's own ticks (its lingering threads are no other job), so
  :math:`L` is the other processes' load in cores, and :math:`T` torch's default count (the
  physical cores, or `OMP_NUM_THREADS`), so that "auto" never asks for more than torch would on
  idle cores. The sum over cores, not a per-core count, because the scheduler moves a busy
  process between cores within a tenth of a second. Where `/proc/stat` is missing (not Linux):
  :math:`T`. :func:`refresh` measures again (a tenth of a second), once per EM lap, so that a
  run follows a job that starts or ends beside it.
* a whole number :math:`n > 0`: :math:`n` threads; `0`: torch's default :math:`T`.

Why (`python -m bench.threads`: the manifold M-step, EDM TimeMLP 3 x 256, D = 5, batch 1024, in
a fresh process per measurement; wall and CPU ms per Adam step). On 2 idle cores, 2 threads
take 16.8-17.4 ms (issue 19). On the same 2 cores shared with other jobs (load average 7 to
11, so indicative; 10 to 20 steps per measurement):

=============================  ==================  ===========  =============
threads                        wall ms per step    + busy loop  CPU ms / step
=============================  ==================  ===========  =============
1                              102, 123, 324       247          34 to 51
2 (torch's default)            884, 1572, 1685     1487         297 to 380
2, `OMP_WAIT_POLICY=PASSIVE`   126, 28, 36         145          28 to 42
auto (1 on those cores)        120, 252, 219       221          39 to 45
=============================  ==================  ===========  =============

Two threads on busy cores are 7 to 14 times slower than one, and burn 8 times its CPU: libgomp's
threads spin while they wait for one another (`OMP_WAIT_POLICY=PASSIVE` stops it, but libgomp
reads it when torch loads, before any flag is parsed). One thread per idle core avoids the wait
and keeps the second thread where a core is free; `bench/threads.py` measures it again on quiet
cores.

Warning:
    The count is chosen when it is applied (at parse time, then at each :func:`refresh`): a job
    that starts between two laps slows the rest of the lap.

Warning:
    With torch 2.14.1 and its MKL (2024.2), any `torch.set_num_threads(n)` with n >= 2, even to
    the count in use, breaks later LU factorizations of matrices from about 300 x 300 (batched
    `torch.linalg.inv`, `solve`: "oneMKL ERROR: Parameter 6 was incorrect on entry to SLASWP",
    then the call never returns); n = 1 does not. torch's setter also configures MKL (a
    thread-local count and dynamic adjustment off), and either setting alone triggers it, for
    good: MKL's own setters do not undo it. :func:`set_threads` therefore sets the count through
    OpenMP's own `omp_set_num_threads` where torch runs on libgomp with MKL: torch's parallel
    loops and MKL's kernels both follow it (a 1024^2 matrix product took 13 ms on 1 thread and
    6.8 ms on 2, alternately, with no error: an ad hoc check, no script records it), and the
    inverse that failed passes (tested in a fresh process).
"""

__all__ = [
    "DEFAULT",
    "ENV",
    "THREADS",
    "Snapshot",
    "apply",
    "check",
    "effective",
    "free_threads",
    "read_snapshot",
    "refresh",
    "resolve",
    "set_threads",
    "torch_default",
]

import ctypes
import dataclasses
import functools
import os
import time
from pathlib import Path

import torch

from .config import Check

#: the environment variable read when no spec is given
ENV = "EMDM_THREADS"
#: the spec when neither a flag nor `EMDM_THREADS` gives one
DEFAULT = "auto"

_ACCEPTED = "'auto', 0 (torch's default) or a whole number of threads > 0"

_state = {"default": None, "applied": None}  # torch's default count; the last spec applied


def check(spec: str | int | None, source: str = "threads") -> str | int | None:
    r"""The spec `spec` in normal form: `"auto"`, a whole number >= 0, or `None` (none given:
    `None` or `""`). Raises a `ValueError` naming `source`, the value and what is accepted."""
    if spec is None or (isinstance(spec, str) and spec.strip() == ""):
        return None
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit():  # digits only: no sign, no decimal point
            return int(text)
    elif isinstance(spec, int) and not isinstance(spec, bool) and spec >= 0:
        return spec
    raise ValueError(f"{source} must be {_ACCEPTED}, got {spec!r}")


#: the constraint of a `threads` config field (an empty value: `EMDM_THREADS`, else "auto")
THREADS = Check(f"{_ACCEPTED}, or empty for ${ENV}", lambda v: check(v) is not None or v == "")


def effective(spec: str | int | None = None) -> str:
    r"""The spec in force, as text: `spec` if given, else `EMDM_THREADS` if set, else
    :data:`DEFAULT`. Raises a `ValueError` if the one in force is malformed."""
    value = check(spec)
    if value is None:
        value = check(os.environ.get(ENV), source=f"${ENV}")
    return str(DEFAULT if value is None else value)


def torch_default() -> int:
    r"""torch's own intra-op thread count: the count torch reported on the first call of this
    module (before it set any), the physical cores or `OMP_NUM_THREADS`."""
    if _state["default"] is None:
        _state["default"] = torch.get_num_threads()
    return _state["default"]


@functools.cache
def _openmp() -> ctypes.CDLL | None:
    r"""The libgomp that torch loaded, where torch runs on it with MKL (see the module's
    warning); `None` elsewhere."""
    info = torch.__config__.parallel_info()
    if "OpenMP" not in info or "Math Kernel Library" not in info:
        return None
    libraries = sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*"))
    return ctypes.CDLL(str(libraries[0])) if libraries else None


def set_threads(count: int) -> None:
    r"""Sets torch's intra-op threads to `count` (>= 1): through OpenMP's own setter where torch
    runs on libgomp with MKL, whose threading torch's setter breaks (see the module's warning),
    else (or if torch's count did not follow: another libgomp than torch's)
    `torch.set_num_threads`."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    omp = _openmp()
    if omp is not None:
        omp.omp_set_num_threads(ctypes.c_int(count))
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    r"""The cumulative CPU ticks at one instant: `cores` maps each core's number to its (busy,
    total) ticks since boot, `own` is this process's user + system ticks."""

    cores: dict[int, tuple[int, int]]
    own: int


def _parse_stat(text: str) -> dict[int, tuple[int, int]]:
    # cpuN user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
    # counted in user already, iowait is idle, steal (another VM's) is lost to us: busy
    cores = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(f) for f in fields[:8]] + [0] * (8 - len(fields[:8]))
            idle = ticks[3] + ticks[4]
            busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
            cores[int(name[3:])] = (busy, busy + idle)
    return cores


def _parse_own(text: str) -> int:
    # pid (comm) state ppid ...: comm may hold spaces and parentheses; utime and stime are
    # fields 14 and 15, the 12th and 13th after the last ")"
    fields = text[text.rindex(")") + 1 :].split()
    return int(fields[11]) + int(fields[12])


def read_snapshot(stat: str | Path = "/proc/stat", own: str | Path = "/proc/self/stat"):
    r"""The :class:`Snapshot` read from `stat` (the format of `/proc/stat`) and `own` (that of
    `/proc/<pid>/stat`), or `None` if either is unreadable (not Linux)."""
    try:
        return Snapshot(_parse_stat(Path(stat).read_text()), _parse_own(Path(own).read_text()))
    except (OSError, ValueError, IndexError):
        return None


def free_threads(before: Snapshot, after: Snapshot, cores: set[int], limit: int) -> int:
    r"""The thread count :math:`n` of the module's formula from two snapshots, for a process
    that may run on `cores`, at most `limit` (torch's default :math:`T`); `limit` if no tick
    passed on those cores."""
    cores = {c for c in cores if c in before.cores and c in after.cores}
    if not cores:
        return limit
    busy = sum(after.cores[c][0] - before.cores[c][0] for c in cores)
    total = sum(after.cores[c][1] - before.cores[c][1] for c in cores)
    if total <= 0:
        return limit
    others = max(busy - max(after.own - before.own, 0), 0)
    load = others / (total / len(cores))  # the other processes' load, in cores
    free = max(len(cores) - load, 0.0) / len(cores)
    return min(max(int(limit * free + 0.5), 1), limit)


def _cores() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def resolve(spec: str | int | None = None, *, interval: float = 0.1) -> int:
    r"""The thread count of `spec` (see the module's docstring; `None`: `EMDM_THREADS`, else
    "auto"), measured over `interval` seconds for "auto". Raises a `ValueError` for a malformed
    spec, before any measurement."""
    value = effective(spec)
    if value != "auto":
        return int(value) or torch_default()
    limit = torch_default()
    before = read_snapshot()
    if before is None:  # no /proc/stat
        return limit
    time.sleep(interval)
    after = read_snapshot()
    return limit if after is None else free_threads(before, after, _cores(), limit)


def apply(spec: str | int | None = None, *, interval: float = 0.1) -> int:
    r"""Sets torch's intra-op threads to :func:`resolve`'s count of `spec` and returns it;
    :func:`refresh` measures again if the spec is "auto"."""
    torch_default()  # before the first set
    count = resolve(spec, interval=interval)
    _state["applied"] = effective(spec)
    if count != torch.get_num_threads():
        set_threads(count)
    return count


def refresh(*, interval: float = 0.1) -> int:
    r"""Measures again, if the last spec applied was "auto" (:func:`apply`), and sets the
    count; returns torch's thread count. Costs `interval` seconds with "auto", nothing
    otherwise."""
    if _state["applied"] == "auto":
        return apply("auto", interval=interval)
    return torch.get_num_threads()
