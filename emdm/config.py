r"""Typed configuration dataclasses as command-line flags.

Each field `name` of a dataclass becomes a flag `--name` (underscores as dashes), typed by its
annotation or its default: a `bool` becomes `--name/--no-name`, a `tuple` or `list` takes one
or more values, and the field's `metadata={"help": ..., "choices": ...}` gives the flag's help
and allowed values.
"""

__all__ = [
    "check_device",
    "config_dict",
    "config_parser",
    "parse_config",
    "parse_scaled",
    "run_identity",
]

import argparse
import dataclasses
import sys
import types
import typing
from typing import Any, TypeVar

import torch

C = TypeVar("C")


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
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
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
        kwargs = {
            "default": default,
            "dest": prefix + field.name,
            "help": field.metadata.get("help", ""),
        }
        hint = hints.get(field.name, type(default))
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint) or hint
        if "choices" in field.metadata:
            kwargs["choices"] = tuple(field.metadata["choices"])
        if origin is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin in (tuple, list):
            kwargs.update(nargs="+", type=_element_type(hint, default))
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
    args = vars(parser.parse_args(argv))
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
    cls: type[C], argv: list[str] | None, *, quick: C, paper: C, prog: str | None = None
) -> C:
    r"""Parses `argv` for a reproduction script: `--quick` selects the preset `quick` (CPU,
    minutes) instead of `paper` as the defaults, which the other flags then override."""
    argv = list(sys.argv[1:] if argv is None else argv)
    base = quick if "--quick" in argv else paper
    return parse_config(cls, [a for a in argv if a != "--quick"], prog=prog, defaults=base)


def config_dict(cfg: Any) -> dict[str, Any]:
    r"""Returns the dataclass instance `cfg` as a JSON-ready dictionary."""
    return dataclasses.asdict(cfg)


def run_identity(cfg: Any) -> dict[str, Any]:
    r"""The config fields that define a run's results, compared on resume: all but how it is
    run (`resume`, `quiet`, `dry_run`)."""
    return {k: v for k, v in config_dict(cfg).items() if k not in ("resume", "quiet", "dry_run")}


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
