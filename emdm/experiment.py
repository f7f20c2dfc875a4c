r"""What every experiment entry point shares: its output fields, and parsing with presets.

An entry point's config derives from :class:`Outputs` (the scale its results are labelled with,
where they go and under which name, how verbose the run is, its CPU threads),
:class:`DeviceRun` (plus the device) or :class:`ResumableRun` (plus `--resume`, for the long
runs that work in an :class:`emdm.runs.RunFolder`), and sets the default of `name`.
:func:`parse_run` parses the command line with the entry point's quick and paper presets,
answers `--dry-run` and sets the run's CPU threads (:mod:`emdm.threads`);
:func:`run_in_folder` runs a long entry point in its folder and :func:`learn_prior_in` learns
its prior there.
"""

__all__ = [
    "DeviceRun",
    "Outputs",
    "ResumableRun",
    "learn_prior_in",
    "parse_run",
    "run_in_folder",
]

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from .config import (
    DEVICE,
    PLAIN_NAME,
    SCALES,
    Checked,
    check_device,
    config_dict,
    option,
    parse_scaled,
    run_identity,
)
from .distributed import Context, init
from .prior import learn_prior
from .publish import check_writable
from .runs import RunFolder
from .threads import THREADS, apply, effective

C = TypeVar("C")


@dataclasses.dataclass
class Outputs(Checked):
    r"""The fields of every entry point: how its results are labelled, named and placed."""

    scale: str = option("paper", "scale the results are labelled with", choices=SCALES)
    name: str = option("run", "name of the result files", check=PLAIN_NAME)
    out: str = option("results", "output folder")
    quiet: bool = option(False, "print nothing but errors")
    dry_run: bool = option(False, "print the resolved config and exit")
    threads: str = option(
        "",
        "intra-op CPU threads: auto (the idle cores), N, or 0 for torch's default; empty: "
        "$EMDM_THREADS, else auto",
        check=THREADS,
    )


@dataclasses.dataclass
class DeviceRun(Outputs):
    r"""An entry point that computes on a device."""

    device: str = option("cpu", "device of the run (per rank under torchrun)", check=DEVICE)


@dataclasses.dataclass
class ResumableRun(DeviceRun):
    r"""A long entry point, which works in `<out>/<name>_run` and can be resumed."""

    resume: bool = option(
        False, "continue the run in <out>/<name>_run from its last complete lap, or re-report it"
    )


def parse_run(
    cls: type[C], argv: list[str] | None, *, quick: C, paper: C, prog: str, smoke: C | None = None
) -> C | None:
    r"""The config of an entry point from `argv` (`--quick` selects the quick preset, see
    :func:`emdm.config.parse_scaled`), or `None` after printing it if `--dry-run` was given.
    The device of a :class:`DeviceRun` is checked first (:func:`emdm.config.check_device`),
    and `threads` is replaced by the spec in force (`EMDM_THREADS` or "auto" for an empty one,
    :func:`emdm.threads.effective`), which is applied (:func:`emdm.threads.apply`) unless
    `--dry-run`: the saved config names the policy, the provenance the count."""
    cfg = parse_scaled(cls, argv, quick=quick, paper=paper, smoke=smoke, prog=prog)
    try:  # before any work, even --dry-run
        if isinstance(cfg, DeviceRun):  # whether torch sees it
            check_device(cfg.device)
        cfg.threads = effective(cfg.threads)
    except ValueError as error:  # as a bad flag is reported: usage, error, status 2
        argparse.ArgumentParser(prog=prog).error(str(error))
    if cfg.dry_run:
        print(json.dumps(config_dict(cfg), indent=2))
        return None
    apply(cfg.threads)
    return cfg


def run_in_folder(
    cfg: ResumableRun, work: Callable[[Context, torch.device, Path, RunFolder], None]
) -> int:
    r"""Runs a long entry point: joins its processes (:func:`emdm.distributed.init`, one
    process outside `torchrun`), checks `cfg.out`, opens `<out>/<name>_run` (every check before
    any work: lock, a finished or other run, the code version, damaged files), calls
    `work(ctx, device, out, run)`, which publishes the results, and records the run finished.
    Returns 0."""
    # the backend of the run's device: NCCL for CUDA, gloo for CPU processes (also on a machine
    # with GPUs: NCCL cannot gather CPU tensors)
    backend = "nccl" if torch.device(cfg.device).type == "cuda" else "gloo"
    ctx, out = init(backend), check_writable(cfg.out)
    device = ctx.device(cfg.device)
    with RunFolder(out / f"{cfg.name}_run", run_identity(cfg), resume=cfg.resume,
                   main=ctx.main) as run:  # fmt: skip
        work(ctx, device, out, run)
        run.finish()  # rank 0 records it; the others only release
    return 0


def learn_prior_in(
    run: RunFolder,
    cfg: ResumableRun,
    denoiser,
    obs,
    shape,
    schedule,
    *,
    label: str | None = None,
    em=None,
    **kwargs,
):
    r"""Learns the prior of an entry point in its folder: :func:`emdm.prior.learn_prior` with
    the config's `em`, `start` and `net` fields, in `run.path` (or its subfolder `label`, for an
    entry point that learns several priors), resumed if `run` is, under the run's identity
    (:func:`emdm.config.run_identity`, plus `label`), with progress bars unless `cfg.quiet`.

    Arguments:
        run: The entry point's open folder.
        cfg: Its config, with the fields `em`, `start` and `net`.
        denoiser, obs, shape, schedule: As for :func:`emdm.prior.learn_prior`.
        label: The subfolder of `run.path` that holds this prior; `None`: `run.path` itself.
        em: The EM settings, if not `cfg.em` (e.g. `cfg.em` with another covariance).
        kwargs: The other keyword arguments of :func:`emdm.prior.learn_prior` (`callback`,
            `ctx`, ...).

    Returns:
        What :func:`emdm.prior.learn_prior` returns.
    """
    directory, identity = run.path, run_identity(cfg)
    if label is not None:
        directory, identity = run.path / label, identity | {"run": label}
        if run.main:
            directory.mkdir(exist_ok=True)
    return learn_prior(
        denoiser,
        obs,
        shape,
        cfg.em if em is None else em,
        schedule,
        cfg.start,
        directory=directory,
        resume=run.resuming,
        identity=identity,
        progress=not cfg.quiet,
        net=cfg.net,
        **kwargs,
    )
