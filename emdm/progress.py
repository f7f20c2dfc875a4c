r"""Progress of long loops: a bar on a terminal, plain lines in a log.

On a terminal, :func:`bar` is a `tqdm` bar. Where stderr is not a terminal (a log file, a pipe,
a batch job), a bar's redraws fill the log with carriage returns and `ESC[A` codes and glue the
lines printed between them, so :func:`bar` prints instead one plain line when the loop starts,
then one at most every `every` seconds and one when it ends: `desc: 3/16 (19 %), 41 s, 2.9 min
left`. :func:`say` prints a line that no bar overwrites.
"""

__all__ = ["bar", "say"]

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm


def _terminal() -> bool:
    return sys.stderr.isatty()


class _Lines:
    r"""A loop's progress as plain lines on stderr (see the module's docstring)."""

    def __init__(self, iterable, desc, total, initial, every, leave):
        self.iterable, self.desc, self.every, self.leave = iterable, desc, every, leave
        self.total = len(iterable) + initial if total is None and hasattr(iterable, "__len__") \
            else total  # fmt: skip
        self.n, self.postfix = initial, ""

    def _line(self, elapsed: float, done: int) -> str:
        text = f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "")
        if self.total:
            text += f" ({100 * self.n / self.total:.0f} %)"
        text += f", {_duration(elapsed)}"
        if self.total and done > 0 and self.n < self.total:
            text += f", {_duration(elapsed / done * (self.total - self.n))} left"
        return text + (f", {self.postfix}" if self.postfix else "")

    def __iter__(self) -> Iterator[Any]:
        start = last = time.perf_counter()
        first, done = self.n, 0
        print(self._line(0.0, 0), file=sys.stderr, flush=True)
        for item in self.iterable:
            yield item
            self.n, done = self.n + 1, done + 1
            now = time.perf_counter()
            if now - last >= self.every and (self.total is None or self.n < self.total):
                print(self._line(now - start, done), file=sys.stderr, flush=True)
                last = now
        if self.leave and self.n > first:
            print(self._line(time.perf_counter() - start, done), file=sys.stderr, flush=True)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())


class _Silent:
    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable)

    def set_postfix(self, **values: Any) -> None:
        pass


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def bar(
    iterable: Iterable[Any],
    progress: bool = True,
    *,
    desc: str = "",
    total: int | None = None,
    initial: int = 0,
    leave: bool = True,
    every: float = 30.0,
) -> Any:
    r"""Iterates over `iterable`, showing progress if `progress`: a `tqdm` bar on a terminal,
    else a plain line on stderr at most every `every` seconds. `total` counts the items of the
    whole task, `initial` those done before (a resumed run: `initial=k, total=K` reads k/K).
    The result has `set_postfix(**values)`."""
    if not progress:
        return _Silent(iterable)
    if _terminal():
        return tqdm(iterable, desc=desc, total=total, initial=initial, leave=leave)
    return _Lines(iterable, desc, total, initial, every, leave)


def say(text: str) -> None:
    r"""Prints a line of `text` to stdout, above any progress bar on a terminal."""
    if _terminal():
        tqdm.write(text)
    else:
        print(text, flush=True)
