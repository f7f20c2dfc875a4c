r"""Regenerates every quick result of `results/`, and the figures that take seconds at the
paper's sizes, in one command, one item after the other:

    python -m reproduce all            # every item below, over an hour on 2 CPU cores
    python -m reproduce fig3 table4    # some of them
    python -m reproduce --list         # the items and the command each runs

Each item runs as its own process (`python reproduce/<script>.py ...`), so that one's threads,
memory and failures do not touch the next; the long ones pass `--resume`, so a killed
`python -m reproduce all` continues each run where it stopped (and re-reports a finished one;
a run folder from other code is refused, naming both commits: move it aside to redo it). One
progress line per item, its wall time when it ends, and the total at the end; the times are
also published as `results/reproduce_quick.{csv,json}`, with the commit they ran at. It stops
at the first item that fails, with that item's exit status.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from emdm.errors import UserError, cli
from emdm.provenance import write_results
from emdm.publish import check_writable

HERE = Path(__file__).resolve().parent

#: item -> the script and its arguments; in order, the quickest first
ITEMS: dict[str, tuple[str, ...]] = {
    "mmps_check": ("-m", "emdm", "mmps-check"),
    "fig1": ("fig1.py",),
    "fig7": ("fig7.py",),
    "fig11": ("fig11.py", "--quick"),
    "tables23": ("tables23.py",),
    "fig2": ("fig2.py", "--quick"),
    "table5": ("table5.py", "--quick"),
    "table4": ("table4.py", "--quick"),
    "fig6": ("fig6.py", "--quick", "--resume"),
    "fig15": ("fig15.py", "--quick", "--resume"),
    "fig3": ("fig3.py", "--quick", "--resume"),
    "table1": ("table1.py", "--quick", "--resume"),
}


def command(item: str, out: str, quiet: bool) -> list[str]:
    r"""The command line of `item`, writing under `out`."""
    script, *args = ITEMS[item]
    head = [sys.executable, script, *args] if script == "-m" else \
        [sys.executable, str(HERE / script), *args]  # fmt: skip
    return [*head, "--out", out, *(["--quiet"] if quiet else [])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce", description=__doc__.split("\n")[0]
    )
    parser.add_argument("items", nargs="*", help=f"'all' or some of: {', '.join(ITEMS)}")
    parser.add_argument("--out", default="results", help="output folder (default: results)")
    parser.add_argument("--list", action="store_true", help="print each item's command and exit")
    parser.add_argument("--quiet", action="store_true", help="pass --quiet to every item")
    args = parser.parse_args(argv)
    items = list(ITEMS) if args.items in (["all"], []) and not args.list else args.items
    unknown = [i for i in items if i not in ITEMS]
    if unknown or (not items and not args.list):
        raise UserError(f"unknown items {unknown}: expected 'all' or some of {list(ITEMS)}")
    if args.list:
        for item in items or ITEMS:
            print(f"{item}: {' '.join(command(item, args.out, args.quiet))}")
        return 0
    check_writable(args.out)
    rows, start = [], time.perf_counter()
    for i, item in enumerate(items, 1):
        print(f"[{i}/{len(items)}] {item} ...", flush=True)
        t = time.perf_counter()
        status = subprocess.run(command(item, args.out, args.quiet), cwd=HERE.parent).returncode
        seconds = time.perf_counter() - t
        if status != 0:
            raise UserError(f"{item} failed with exit status {status} after {seconds:.0f} s")
        rows.append({"item": item, "metric": "wall_time_s", "value": seconds})
        print(f"[{i}/{len(items)}] {item} done in {seconds:.0f} s", flush=True)
    total = time.perf_counter() - start
    write_results("reproduce_quick", rows, {"items": items, "out": args.out}, wall_time=total,
                  out_dir=args.out, quick=True, device="cpu")  # fmt: skip
    print(f"{len(items)} items in {total / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
