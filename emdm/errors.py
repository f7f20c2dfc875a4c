r"""The errors that a user can mend, and the command-line wrapper that reports them.

A :class:`UserError` is bad input or a bad environment that the user can fix (a missing or
corrupt file, a folder that holds another run, a flag out of range): the command line prints
its message, with no traceback, and exits with status 2, before any work is done. Every other
exception is a defect and keeps its traceback.
"""

__all__ = ["UserError", "cli"]

import sys
from collections.abc import Callable


class UserError(ValueError):
    r"""Bad input that the user can mend; its message says what is wrong and what to do."""


def cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    r"""Runs `main(argv)` and returns its exit status; a :class:`UserError` or a missing file
    (`FileNotFoundError`, whose message names the file and where to get it) is printed as
    `error: ...` on stderr, with status 2."""
    try:
        return main(argv)
    except (UserError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
