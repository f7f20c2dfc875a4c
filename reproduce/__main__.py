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

The smoke presets (the paper's shapes, networks and operators, every loop cut to a step or two)
run the same way, each item whose script defines `SMOKE`, on fake data files in the real
formats that the runner writes first (fake CIFAR-10, fastMRI knees, a random ADM checkpoint):

    python -m reproduce smoke --list                  # the items and their commands
    python -m reproduce smoke --device cuda           # every smoke preset, on a GPU
    python -m reproduce smoke table1 fig6 --device cuda --torchrun 1   # under torchrun

Unlike `all`, `smoke` runs every item even after one fails, then names the failures (exit
status 2); the times and exit statuses go to `<out>/reproduce_smoke.{csv,json}`.
"""

import argparse
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

from emdm.distributed import ENV
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


def smoke_preset(item: str):
    r"""The `SMOKE` preset of `item`'s script, or `None` where it has none (or is no script).
    Importing a script does no work (its `main` does)."""
    script = ITEMS[item][0]
    if script == "-m":
        return None
    return getattr(importlib.import_module(f"reproduce.{Path(script).stem}"), "SMOKE", None)


def smoke_items() -> list[str]:
    r"""The items with a smoke preset, in `ITEMS`' order."""
    return [item for item in ITEMS if smoke_preset(item) is not None]


def _fake_cifar(root: Path) -> None:
    # 10 test images: the IS's 10 splits
    from emdm.data import write_fake_cifar

    write_fake_cifar(root, per_batch=10)


def _fake_fastmri(root: Path) -> None:
    # one volume of 12 slices per split at the real 320 x 320: its slices 10 and 11 held out
    from emdm.data import write_fake_fastmri

    for split in ("train", "val"):
        write_fake_fastmri(root / f"singlecoil_{split}", 1, slices=12, size=320)


def _fake_adm(root: Path) -> None:
    # DPS's FFHQ U-Net at full size with seeded random weights, LPIPS's weight files of random
    # values and one random 256 x 256 image: the files table4's paper path reads
    from emdm.data import write_fake_images
    from emdm.metrics.lpips import write_random_lpips
    from emdm.nn.adm import write_random_adm

    write_fake_images(root / "images", 1, 256)  # makes root
    write_random_adm(root / "ffhq_10m.pt")
    write_random_lpips(root)


#: fake data set -> its writer (into an empty folder) and the flags that point a script at it
FAKE_DATA = {
    "cifar": (_fake_cifar, lambda d: ["--data-dir", str(d)]),
    "fastmri": (_fake_fastmri, lambda d: ["--data-dir", str(d)]),
    "adm": (_fake_adm, lambda d: ["--checkpoint", str(d / "ffhq_10m.pt"), "--image-dir",
                                  str(d / "images"), "--lpips-alexnet", str(d / "alexnet.pth"),
                                  "--lpips-linear", str(d / "alex.pth")]),
}  # fmt: skip

#: item -> the fake data set its smoke preset reads (items absent read none)
SMOKE_DATA = {"table1": "cifar", "fig6": "fastmri", "fig15": "fastmri", "fig11": "fastmri",
              "table4": "adm"}  # fmt: skip


def fake_data(name: str, data: Path) -> Path:
    r"""The folder `data/name` holding fake data set `name`, written on first use (a folder
    left half-written by a killed writer is refused, naming it)."""
    folder, done = data / name, data / f"{name}.done"
    if not done.exists():
        if folder.exists():
            raise UserError(f"{folder} is incomplete (no {done.name}): remove it to rewrite it")
        FAKE_DATA[name][0](folder)
        done.touch()
    return folder


def smoke_command(
    item: str, out: str, quiet: bool, device: str | None, data: Path, torchrun: int = 0
) -> list[str]:
    r"""The command line of `item`'s smoke preset, writing under `out`, reading its fake data
    (if any) under `data`, on `device` (where the preset has one; `None`: the preset's), under
    `torchrun` with that many processes (0: a plain process)."""
    preset = smoke_preset(item)
    if preset is None:
        raise UserError(f"{item} has no smoke preset: expected one of {smoke_items()}")
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    args = [str(HERE / ITEMS[item][0]), "--smoke", "--out", out]
    if item in SMOKE_DATA:
        args += FAKE_DATA[SMOKE_DATA[item]][1](data / SMOKE_DATA[item])
    if device is not None and hasattr(preset, "device"):
        args += ["--device", device]
    return [sys.executable, *(launcher if torchrun else []), *args,
            *(["--quiet"] if quiet else [])]  # fmt: skip


def smoke(args: argparse.Namespace) -> int:
    r"""Runs (or lists) the smoke presets of `args.items[1:]`, default every one."""
    items = args.items[1:] or smoke_items()
    unknown = [i for i in items if i not in ITEMS or smoke_preset(i) is None]
    if unknown:
        raise UserError(f"no smoke preset for {unknown}: expected some of {smoke_items()}")
    data = Path(args.data or Path(args.out) / "smoke_data")
    commands = {i: smoke_command(i, args.out, args.quiet, args.device, data, args.torchrun)
                for i in items}  # fmt: skip
    if args.list:
        for item, line in commands.items():
            print(f"{item}: {' '.join(line)}")
        return 0
    check_writable(args.out)
    rows, failed, start = [], [], time.perf_counter()
    for i, item in enumerate(items, 1):
        print(f"[{i}/{len(items)}] {item} (smoke) ...", flush=True)
        t = time.perf_counter()
        if item in SMOKE_DATA:
            fake_data(SMOKE_DATA[item], data)
        # under torchrun, even one process joins a process group (NCCL on a GPU) and goes
        # through the collectives
        env = {**os.environ, ENV: "1"} if args.torchrun else None
        status = subprocess.run(commands[item], cwd=HERE.parent, env=env).returncode
        seconds = time.perf_counter() - t
        rows += [{"item": item, "metric": "wall_time_s", "value": seconds},
                 {"item": item, "metric": "exit_status", "value": status}]  # fmt: skip
        failed += [f"{item} (exit status {status})"] if status else []
        print(f"[{i}/{len(items)}] {item} {'FAILED' if status else 'done'} in {seconds:.0f} s",
              flush=True)  # fmt: skip
    total = time.perf_counter() - start
    config = {"items": items, "out": args.out, "device": args.device, "torchrun": args.torchrun}
    # each item records its own device; the runner's provenance names none
    write_results("reproduce_smoke", rows, config, wall_time=total, out_dir=args.out, quick=True)
    print(f"{len(items)} smoke items in {total / 60:.1f} min")
    if failed:
        raise UserError(f"smoke items failed: {', '.join(failed)}")
    return 0


def _parser() -> argparse.ArgumentParser:
    r"""The command line: items, or `smoke` and the smoke presets' own flags."""
    parser = argparse.ArgumentParser(
        prog="python -m reproduce", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "items", nargs="*",
        help=f"'all' or some of: {', '.join(ITEMS)}; or 'smoke' [items with a smoke preset]",
    )  # fmt: skip
    parser.add_argument("--out", default="results", help="output folder (default: results)")
    parser.add_argument("--list", action="store_true", help="print each item's command and exit")
    parser.add_argument("--quiet", action="store_true", help="pass --quiet to every item")
    smoke_flags = parser.add_argument_group("smoke presets only")
    smoke_flags.add_argument(
        "--device", help="device of every smoke item that has one (default: the preset's)"
    )
    smoke_flags.add_argument(
        "--data", help="folder of the fake data files, written on first use (default: "
        "OUT/smoke_data)",
    )  # fmt: skip
    smoke_flags.add_argument(
        "--torchrun", type=int, default=0, metavar="P",
        help="run each smoke item under torchrun with P processes, in a process group even "
        "for P = 1 (default 0: plain)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.items[:1] == ["smoke"]:
        return smoke(args)
    if args.device is not None or args.data is not None or args.torchrun:
        raise UserError("--device, --data and --torchrun are for 'smoke' only")
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
