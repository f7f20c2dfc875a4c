r"""Typed configuration dataclasses as command-line flags.

Each field `name` of a dataclass becomes a flag `--name` (underscores as dashes), typed by its
annotation or its default: a `bool` becomes `--name/--no-name`, a `tuple` or `list` takes one
or more values, and the field's `metadata={"help": ..., "choices": ..., "check": ...}` gives the
flag's help, its allowed values and its constraint. Declare fields with :func:`option`, which
builds that metadata, and derive the dataclass from :class:`Checked`, whose `__post_init__`
checks every field against its constraint, so that a bad value is refused where the config is
made (at parse time for a flag), naming the field, the constraint and the value:

    @dataclasses.dataclass
    class Config(Checked):
        steps: int = option(64, "sampler steps", check=POSITIVE)
        out: str = option("results", "output folder")
"""

__all__ = [
    "DEVICE",
    "FINITE",
    "NONNEGATIVE",
    "PLAIN_NAME",
    "POSITIVE",
    "SCALES",
    "Check",
    "Checked",
    "at_least",
    "check_device",
    "check_fields",
    "config_dict",
    "config_parser",
    "interval",
    "option",
    "parse_config",
    "parse_scaled",
    "run_identity",
]

import argparse
import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

C = TypeVar("C")

#: The scales of a reproduction script's presets (:func:`parse_scaled`), its `scale` field.
SCALES = ("paper", "quick", "smoke")


@dataclasses.dataclass(frozen=True)
class Check:
    r"""A constraint on a config field's value: `text` says it in words ("> 0"), `test` tells
    whether a value meets it. For a tuple or list field the test applies to each element."""

    text: str
    test: Callable[[Any], bool]

    def __call__(self, name: str, value: Any) -> None:
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            try:
                ok = bool(self.test(v))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                each = "each value of " if isinstance(value, (tuple, list)) else ""
                raise ValueError(f"{each}{name} must be {self.text}, got {value!r}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


POSITIVE = Check("a finite number > 0", lambda v: _finite(v) and v > 0)
NONNEGATIVE = Check("a finite number >= 0", lambda v: _finite(v) and v >= 0)
FINITE = Check("a finite number", _finite)
PLAIN_NAME = Check(
    "a plain file name (no folder, not empty)",
    lambda v: isinstance(v, str) and v not in ("", ".", "..") and Path(v).name == v,
)


def _device_name(v: Any) -> bool:
    try:
        return isinstance(v, str) and torch.device(v) is not None
    except RuntimeError:
        return False


#: A device's name as torch spells it; whether torch sees that device is :func:`check_device`'s
#: business (a preset may name CUDA on a machine without it).
DEVICE = Check("a torch device such as 'cpu', 'cuda' or 'cuda:1'", _device_name)


def at_least(bound: float) -> Check:
    r"""The constraint `value >= bound` (finite)."""
    return Check(f"a finite number >= {bound:g}", lambda v: _finite(v) and v >= bound)


def interval(low: float, high: float, *, closed: str = "left") -> Check:
    r"""The constraint that a value lies between `low` and `high`; `closed` is `"left"`
    (`[low, high)`), `"right"`, `"both"` or `"neither"`."""
    if closed not in ("left", "right", "both", "neither"):
        raise ValueError(f"closed must be 'left', 'right', 'both' or 'neither', got {closed!r}")
    lo_in, hi_in = closed in ("left", "both"), closed in ("right", "both")
    text = f"in {'[' if lo_in else '('}{low:g}, {high:g}{']' if hi_in else ')'}"

    def test(v: Any) -> bool:
        if not _finite(v):
            return False
        return (low <= v if lo_in else low < v) and (v <= high if hi_in else v < high)

    return Check(text, test)


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    check: Check | None = None,
    choices: Any = None,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
) -> Any:
    r"""A dataclass field that becomes a flag with `help`, and, in a :class:`Checked` dataclass,
    is refused unless it meets `check` and is one of `choices` (when given)."""
    metadata: dict[str, Any] = {"help": help}
    if check is not None:
        metadata["check"] = check
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def check_fields(cfg: Any) -> None:
    r"""Checks each field of the dataclass instance `cfg` against its declared constraint and
    choices; raises a `ValueError` naming the first field that fails."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        check = field.metadata.get("check")
        if check is not None:
            check(field.name, value)
        choices = field.metadata.get("choices")
        if choices is not None:
            values = value if isinstance(value, (tuple, list)) else (value,)
            bad = [v for v in values if v not in choices]
            if bad:
                raise ValueError(f"{field.name} must be one of {choices}, got {value!r}")


class Checked:
    r"""Base of a config dataclass whose fields are checked when an instance is made (see
    :func:`option`). A subclass with a `__post_init__` of its own calls `super().__post_init__()`
    first, then checks what involves several fields."""

    def __post_init__(self) -> None:
        check_fields(self)


def _element_type(hint: Any, default: Any) -> type:
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    if args and typing.get_origin(args[0]) is None and isinstance(args[0], type):
        return args[0]
    return type(default[0]) if default else str


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise ValueError(f"field {field.name!r} needs a default to become a flag")


def config_parser(
    cls: type,
    parser: argparse.ArgumentParser | None = None,
    *,
    prog: str | None = None,
    defaults: Any = None,
    prefix: str = "",
) -> argparse.ArgumentParser:
    r"""Adds one flag per field of the dataclass `cls` to `parser` (a new one if `None`), with
    the defaults of the instance `defaults` if given, else of the class. A field that is itself
    a dataclass contributes its fields as `--<field>-<name>` flags."""
    if not dataclasses.is_dataclass(cls):
        raise ValueError(f"cls must be a dataclass, got {cls!r}")
    description = (cls.__doc__ or "").strip() or None
    parser = parser or argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=_HelpFormatter
    )
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        default = _default(field) if defaults is None else getattr(defaults, field.name)
        if dataclasses.is_dataclass(default):
            config_parser(
                type(default), parser, defaults=default, prefix=prefix + field.name + "."
            )
            continue
        flag = "--" + (prefix + field.name).replace("_", "-").replace(".", "-")
        help = field.metadata.get("help", "")
        if "check" in field.metadata:
            help = (
                f"{help}; must be {field.metadata['check'].text}"
                if help
                else (f"must be {field.metadata['check'].text}")
            )
        # argparse formats help with %: a literal one ("% of pixels") is doubled
        kwargs = {"default": default, "dest": prefix + field.name, "help": help.replace("%", "%%")}
        hint = hints.get(field.name, type(default))
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint) or hint
        if "choices" in field.metadata:
            kwargs["choices"] = tuple(field.metadata["choices"])
        if origin is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin in (tuple, list):
            # a list that is empty by declaration may be given empty (`--flag` alone)
            nargs = "*" if field.default == () else "+"
            kwargs.update(nargs=nargs, type=_element_type(hint, default))
        else:
            kwargs["type"] = origin if isinstance(origin, type) else type(default)
            if "choices" not in kwargs:
                kwargs["metavar"] = kwargs["type"].__name__.upper()
        parser.add_argument(flag, **kwargs)
    return parser


def parse_config(
    cls: type[C], argv: list[str] | None = None, *, prog: str | None = None, defaults: Any = None
) -> C:
    r"""Parses `argv` (default: `sys.argv[1:]`) into an instance of the dataclass `cls`.

    A value that argparse or the dataclass (a `ValueError` in `__post_init__`) rejects exits
    with a usage error (status 2).
    """
    parser = config_parser(cls, prog=prog, defaults=defaults)
    return _parse(parser, cls, argv, defaults)


def _parse(parser: argparse.ArgumentParser, cls: type[C], argv: Any, defaults: Any) -> C:
    args = vars(parser.parse_args(argv))  # parse_scaled's presets are no fields: _build skips them
    try:
        return _build(cls, args, defaults)
    except ValueError as error:  # from the dataclass's own checks (__post_init__)
        parser.error(str(error))


def _build(cls: type[C], args: dict[str, Any], defaults: Any, prefix: str = "") -> C:
    values = {}
    for field in dataclasses.fields(cls):
        default = _default(field) if defaults is None else getattr(defaults, field.name)
        if dataclasses.is_dataclass(default):
            values[field.name] = _build(type(default), args, default, prefix + field.name + ".")
            continue
        value = args[prefix + field.name]
        if isinstance(value, list) and isinstance(default, tuple):
            value = tuple(value)
        values[field.name] = value
    return cls(**values)


def parse_scaled(
    cls: type[C],
    argv: list[str] | None,
    *,
    quick: C,
    paper: C,
    smoke: C | None = None,
    prog: str | None = None,
) -> C:
    r"""Parses `argv` for a reproduction script: `--quick` selects the preset `quick` (CPU,
    minutes) instead of `paper` as the defaults, which the other flags then override; where the
    script has one, `--smoke` selects `smoke` (the paper's shapes, networks and operators with
    every loop cut to a step or two: what a paper run would hit first, in seconds to minutes).
    `--help` lists the presets first and shows the defaults of the preset selected
    (`--quick --help`: the quick preset's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    is_quick, is_smoke = "--quick" in argv, smoke is not None and "--smoke" in argv
    selected = smoke if is_smoke else quick if is_quick else paper
    description = (cls.__doc__ or "").strip()
    shown = (
        "the smoke preset's" if is_smoke else "the quick preset's" if is_quick
        else "the paper preset's; --quick --help shows quick's"
    )  # fmt: skip
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{description}\n\nDefaults shown: {shown}.".strip(),
        formatter_class=_HelpFormatter,
    )
    presets = parser.add_mutually_exclusive_group()
    presets.add_argument(
        "--quick",
        action="store_true",
        help="the quick preset: CPU scale, minutes; without it, the paper's configuration",
    )
    if smoke is not None:
        presets.add_argument(
            "--smoke",
            action="store_true",
            help="the smoke preset: the paper's shapes and networks, each loop cut to a step or "
            "two (small batches): a paper run's shape, dtype and memory errors, first",
        )
    config_parser(cls, parser, defaults=selected)
    return _parse(parser, cls, argv, selected)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    r"""Defaults in each flag's help; the description as written."""


def config_dict(cfg: Any) -> dict[str, Any]:
    r"""Returns the dataclass instance `cfg` as a JSON-ready dictionary."""
    return dataclasses.asdict(cfg)


def run_identity(cfg: Any) -> dict[str, Any]:
    r"""The config fields that define a run's results, compared on resume: all but how and
    where it is run (`resume`, `quiet`, `dry_run`, `out`: a moved folder can be resumed)."""
    skip = ("resume", "quiet", "dry_run", "out", "threads")  # how, not what, a run computes
    return {k: v for k, v in config_dict(cfg).items() if k not in skip}


def check_device(name: str) -> torch.device:
    r"""Returns `torch.device(name)`, or raises a `ValueError` saying what is wrong (a malformed
    name, or CUDA asked for where torch sees none) before any work is done."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(
            f"device must be a torch device such as 'cpu' or 'cuda': {error}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but torch sees no CUDA device")
    return device
