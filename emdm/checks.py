r"""Input checks that run once, where the input enters (a constructor, the start of a call),
so that bad input stops with an error that names it before any work, and no check costs
anything per sampling step.

* :func:`check_finite`: a tensor holds no NaN or infinity (one host synchronization on CUDA);
* :func:`load_state_dict`: a weights file is a readable state dict of finite tensors, else a
  :class:`emdm.errors.UserError` that names the file and says what to do.
"""

__all__ = ["check_finite", "load_state_dict", "load_torch"]

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import UserError


def check_finite(x: Tensor, name: str) -> None:
    r"""Raises a `ValueError` naming `name`, its shape and its NaN and infinite counts when
    `x` has a non-finite entry. Costs one pass over `x` and, on CUDA, one host
    synchronization: call it once per input, never inside a per-step loop."""
    if not x.is_floating_point() and not x.is_complex():
        return  # integers and booleans are finite
    if bool(torch.isfinite(x).all()):
        return
    nan, inf = int(x.isnan().sum()), int(x.isinf().sum())
    raise ValueError(
        f"{name} of shape {tuple(x.shape)} has {nan} NaN and {inf} infinite entries: expected "
        "finite values"
    )


def load_torch(path: str | os.PathLike, message: str, **kwargs: Any) -> Any:
    r"""`torch.load(path, weights_only=True, **kwargs)`, or a :class:`UserError` whose text is
    `message` with `{error}` replaced by what torch said (its type and first line): torch
    raises many types for a truncated, empty or foreign file."""
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except Exception as error:
        text = str(error).splitlines()[0] if str(error) else "empty or truncated"
        raise UserError(message.format(error=f"{type(error).__name__}: {text}")) from None


def load_state_dict(path: str | os.PathLike, what: str, fix: str) -> dict[str, Tensor]:
    r"""Reads the state dict of tensors in the weights file `path` (on the CPU, tensors only:
    `weights_only=True`).

    Arguments:
        path: The file.
        what: What it should hold, for the messages (e.g. "the ADM U-Net's weights").
        fix: What to do when it is damaged (e.g. where to download it again).

    Raises:
        UserError: The file is not a readable torch file (truncated, an HTML page saved under
            its name, another format), not a mapping of names to tensors, or holds NaN or
            infinite weights; the message names the file.
    """
    path = Path(path)
    message = f"{path} is not a readable weights file ({{error}}): expected {what}; {fix}"
    state = load_torch(path, message, map_location="cpu")
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise UserError(
            f"{path} holds a {type(state).__name__}, not a state dict of named tensors: expected "
            f"{what}; {fix}"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(
            f"{path} has NaN or infinite weights in {len(bad)} tensors (first: {bad[:3]}): "
            f"expected {what}; {fix}"
        )
    return dict(state)
