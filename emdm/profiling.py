r"""Named ranges for :mod:`torch.profiler`, free when no profiler runs.

emdm's hot paths mark their parts with :func:`region` (the denoiser's forward, each
vector-Jacobian product, the solver's algebra, the operator, the optimizer), so that a trace
of `python -m bench.profile` (`bench/profile.py`) attributes every operation to one of them.
Outside a profiler a region costs one flag read: no `record_function` op is recorded.

The names are the constants below, so that a reader of a trace, the profiler's summary and
the tests agree on them.
"""

__all__ = [
    "BACKWARD",
    "FORWARD",
    "LOSS",
    "OPERATOR",
    "OPTIMIZER",
    "REGIONS",
    "SOLVE",
    "VJP",
    "region",
]

import contextlib

import torch

#: the denoiser's forward pass (the network and its preconditioning)
FORWARD = "emdm::forward"
#: one vector-Jacobian product through the denoiser's graph
VJP = "emdm::vjp"
#: a posterior denoiser's linear solve (CG, GMRES or dense), its matrix-vector products included
SOLVE = "emdm::solve"
#: an application of the observation operator or its adjoint outside the solve
OPERATOR = "emdm::operator"
#: the training loss of one M-step batch (its forward pass included)
LOSS = "emdm::loss"
#: the backward pass of one M-step batch
BACKWARD = "emdm::backward"
#: the gradient clip, the optimizer's step and the EMA update
OPTIMIZER = "emdm::optimizer"
#: every region, in the order a lap meets them
REGIONS = (LOSS, BACKWARD, OPTIMIZER, FORWARD, VJP, SOLVE, OPERATOR)


def region(name: str) -> contextlib.AbstractContextManager:
    r"""A `torch.profiler.record_function(name)` range while a profiler runs, else nothing."""
    if torch.autograd.profiler._is_profiler_enabled:
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()
