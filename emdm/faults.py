r"""Fault injection: the points where a test may kill a run, to show that nothing is lost.

A long run calls :func:`point` with the name of its phase at places where a crash must be
survivable: each Adam step of the M-step (`"m-step"`), each batch of the E-step (`"e-step"`),
inside a checkpoint write (`"checkpoint"`), between the steps of a results publication
(`"publish"`). When the environment variable `EMDM_FAULT` is `"<phase>:<n>"`, the `n`-th call of
that phase in the process kills it with SIGKILL, as a power cut or the out-of-memory killer
would: no handler, no `finally`, no flush. Unset (always, outside tests), a call costs one
dictionary lookup.
"""

__all__ = ["point"]

import os
import signal

_counts: dict[str, int] = {}


def point(phase: str) -> None:
    r"""Marks a point of `phase` where the run may be killed (see the module's docstring)."""
    spec = os.environ.get("EMDM_FAULT")
    if not spec:
        return
    target, _, n = spec.partition(":")
    if target != phase:
        return
    _counts[phase] = _counts.get(phase, 0) + 1
    if _counts[phase] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)
