r"""The `emdm` command line: `python -m emdm <command> [flags]`.

Each command is the `main(argv) -> int` of an entry point; `python -m emdm <command> --help`
lists its flags. Bad input a user can mend (:class:`emdm.errors.UserError`, a missing file)
prints one `error: ...` line, no traceback, and exits with status 2 (:func:`emdm.errors.cli`).
"""

__all__ = ["COMMANDS", "main"]

import sys
from collections.abc import Callable

from . import mmps_check
from .errors import cli

COMMANDS: dict[str, Callable[[list[str] | None], int]] = {
    "mmps-check": mmps_check.main,
}


def _usage() -> str:
    lines = ["usage: python -m emdm <command> [flags]", "", "commands:"]
    for name, command in COMMANDS.items():
        doc = sys.modules[command.__module__].__doc__ or ""
        lines.append(f"  {name:<12}{doc.strip().splitlines()[0] if doc.strip() else ''}")
    lines += ["", "run 'python -m emdm <command> --help' for the flags of a command"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    r"""Dispatches `argv` (default: the command line) to a command and returns its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, *rest = argv
    if name not in COMMANDS:
        print(
            f"emdm: unknown command {name!r}; choose one of {tuple(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    return cli(COMMANDS[name], rest)  # a UserError: "error: ..." and status 2, no traceback


if __name__ == "__main__":
    sys.exit(main())
