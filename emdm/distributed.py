r"""Data-parallel EM over processes: one or many GPUs (NCCL) or CPU processes (gloo).

A run started by `torchrun --nproc_per_node=P script.py ...` has :math:`P` ranks. The EM loop
(:mod:`emdm.em`) then splits its work so that the result does not depend on :math:`P`:

* E-step: the observations are cut into fixed batches :math:`b = 0, 1, \dots` of
  `sample_batch`; rank :math:`r` samples the batches :math:`b \equiv r \pmod P`, each with its
  own generator seeded by (seed, EM iteration, :math:`b`), and the batches are gathered on every
  rank in order.
* M-step: every rank draws the same global batch (indices, augmentation, :math:`t`, noise)
  from a shared generator and trains on its contiguous shard of it; `DistributedDataParallel`
  averages the gradients, which is the gradient of the global batch's mean loss.
* Rank 0 writes checkpoints and results; the others wait at a barrier.

A rank that dies makes a collective fail on the others after `timeout` (and `torchrun` stops
the whole group as soon as one worker exits with an error), so a run never hangs silently.

A single process runs without a process group, unless `EMDM_PROCESS_GROUP=1`: then it joins a
group of one and goes through every collective (DDP's gradient all-reduce, the E-step's
gathers), as a check of the backend on a machine with one GPU; its results equal the plain
run's (tested with gloo).

References:
    | PyTorch Distributed: Experiences on Accelerating Data Parallel Training
    | (Li et al., 2020) https://arxiv.org/abs/2006.15704
"""

__all__ = ["ENV", "Context", "init", "local"]

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import UserError

#: the environment variable that makes a single process join a process group of one
ENV = "EMDM_PROCESS_GROUP"


@dataclasses.dataclass(frozen=True)
class Context:
    r"""Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: This process's rank, from 0.
        world: The number of processes.
        group: Whether it is in a process group (its collectives run even with one rank).
    """

    rank: int = 0
    world: int = 1
    group: bool = False

    @property
    def main(self) -> bool:
        r"""Whether this process writes checkpoints and results (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        r"""Whether the run goes through collectives: several ranks, or a group of one."""
        return self.world > 1 or self.group

    def shard(self, n: int) -> range:
        r"""The indices :math:`i < n` with :math:`i \equiv r \pmod P` this rank handles."""
        return range(self.rank, n, self.world)

    def split(self, batch: int) -> slice:
        r"""This rank's contiguous shard of a global batch of `batch` items, which must divide
        evenly (so that averaging the ranks' gradients gives the global mean's)."""
        if batch % self.world:
            raise ValueError(
                f"the batch size {batch} must be a multiple of the number of processes "
                f"{self.world}"
            )
        size = batch // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def gather(self, local: list[Tensor], n: int, like: Tensor) -> list[Tensor]:
        r"""Gathers, on every rank, the `n` items of a round-robin sharding: this rank holds
        `local[j]` = item :math:`r + j P`. Items share one shape except along the first axis,
        and come back with the dtype and device of `like`."""
        if not self.active:
            return local
        # every rank must post tensors of one shape: each item padded to the longest one
        shapes = [None] * self.world
        dist.all_gather_object(shapes, max((tuple(t.shape) for t in local), default=None))
        full = max((s for s in shapes if s is not None), key=lambda s: s[0])
        slots, device = -(-n // self.world), _device()
        out: list[Tensor | None] = [None] * n
        # one slot at a time: a device holds P batches at once, not the whole sample set
        for j in range(slots):
            item = torch.zeros(full, dtype=like.dtype, device=device)
            length = torch.zeros(1, dtype=torch.int64, device=device)
            if j < len(local):
                item[: len(local[j])] = local[j]
                length[0] = len(local[j])
            items = [torch.empty_like(item) for _ in range(self.world)]
            lengths = [torch.empty_like(length) for _ in range(self.world)]
            dist.all_gather(items, item)
            dist.all_gather(lengths, length)
            for r in range(self.world):
                i = r + j * self.world
                if i < n:
                    out[i] = items[r][: int(lengths[r])].to(like.device)
        return out

    def sum(self, value: float) -> float:
        r"""The sum of `value` over the ranks."""
        if not self.active:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
        dist.all_reduce(t)
        return float(t.item())

    def wrap(self, module: nn.Module) -> nn.Module:
        r"""The module that the M-step trains: `DistributedDataParallel` around `module` in a
        multi-process run, `module` itself otherwise."""
        if not self.active:
            return module
        device = next(module.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def device(self, name: str) -> torch.device:
        r"""The device this rank runs on: its own GPU (`LOCAL_RANK`) for `"cuda"` in a
        multi-process run, else `torch.device(name)`."""
        if self.active and name == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device(name)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def _device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def local() -> Context:
    r"""The context of a single-process run."""
    return Context()


def init(backend: str | None = None, timeout: float = 1800.0) -> Context:
    r"""Joins the process group that `torchrun` (or the caller) described in the environment
    (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`) and returns the context; without
    `WORLD_SIZE` > 1, a single-process context, unless `$EMDM_PROCESS_GROUP` is `1` (a group of
    one, whose collectives run).

    Arguments:
        backend: `"nccl"` (GPUs) or `"gloo"` (CPU); `None` picks NCCL when CUDA is available.
        timeout: The seconds a collective waits for a missing rank before it fails.
    """
    world, group = int(os.environ.get("WORLD_SIZE", "1")), os.environ.get(ENV, "0")
    if group not in ("0", "1"):
        raise UserError(f"${ENV} must be 0 or 1, got {group!r}")
    if world <= 1 and group == "0":
        return local()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UserError(
            f"a process group needs {', '.join(missing)} in the environment: start the run "
            f"with torchrun (e.g. torchrun --standalone --nproc_per_node=1 script.py ...)"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return Context(dist.get_rank(), dist.get_world_size(), group=True)
