r"""A memory model of the paper's three image configurations, measured on the CPU.

For each configuration, the peak of the tensor memory that one call allocates, at a few small
batches :math:`B`, fitted by a line

.. math:: \mathrm{peak}(B) = a + b B,

whose slope :math:`b` is the memory per sample (activations saved for the backward, the
transients of the largest op) and whose intercept :math:`a` what does not grow with the batch
(for training: the gradients and Adam's two moments, :math:`3 P` floats, and the multi-tensor
update's temporaries). With the weights (:math:`P` floats, allocated before the call), the peak
at the paper's batch is predicted as :math:`4 P + a + b B` bytes and compared with an 80 GB
H100 and a 141 GB H200, of which `usable` (default 90 %) is counted as available: the CUDA
context, cuBLAS/cuDNN workspaces and the caching allocator's fragmentation take the rest.

Calls (one per configuration and batch):

* `train`: one Adam step of the paper's M-step (:func:`emdm.em.m_step`), in two parts whose
  peaks do not mix: the forward of the denoising loss :func:`emdm.loss.denoising_loss` of the
  denoiser in training mode (peak at its end: the tensors saved for the backward, linear in
  :math:`B`), and the update (gradient clip, the multi-tensor Adam's first step, which allocates
  its moments; batch-independent). Measured together at small :math:`B`, the update's
  :math:`\approx 12 P` floats would hide the activations' slope. See :func:`model_rows`;
* `mmps_cg<k>`: one call of :class:`emdm.MMPS` (Tweedie covariance, `k` solver iterations)
  in eval mode, with the operator of the paper's E-step.

Configurations (:data:`SETUPS`):

* `cifar`: Table 1's U-Net (:class:`emdm.prior.UNetConfig` defaults, 57.6 M parameters) on
  3 x 32 x 32 images, a per-pixel mask (:class:`emdm.operators.MaskOperator`); training batch
  256, E-step batch 256 with CG 1 (`reproduce/table1.py`);
* `mri`: Figure 6's U-Net (:class:`emdm.mri.MRIConfig`'s, 77.6 M parameters) behind a 4 x 4
  pixel unshuffle of 320 x 320 slices, column-line masks of acceleration 6 in k-space
  (:class:`emdm.operators.MRIOperator`); training batch 256, E-step batch 256 with CG 3
  (:func:`emdm.mri.paper_em`; Figure 6's evaluation: CG 5 at the same batch);
* `adm`: Table 4's ADM U-Net (:class:`emdm.nn.adm.ADMConfig` defaults, FFHQ 256 x 256) as an
  :class:`emdm.denoisers.EpsilonDenoiser`, x4 bicubic super-resolution (`sr4`, the
  posterior-sampling benchmark's GMRES solver, :func:`emdm.benchmark.method`); the benchmark
  samples one image at a time and never trains it: its `train` row is for completeness only.

Method. :class:`LiveBytes`, a `TorchDispatchMode`, sees every ATen op of the call, the
backward's included; each op's output storage that is not one of its inputs' (a view or an
in-place result) is new: its bytes are added to a running total, and a `weakref.finalize` on
the storage subtracts them when it is freed. The running total's maximum is the peak of the
tensor bytes allocated inside the call: what `torch.cuda.max_memory_allocated` counts above its
starting value, without the allocator's rounding and caching, and without the pages that
glibc's allocator holds (which `ru_maxrss` would count). Tensors allocated before the call (the
weights, the inputs) are not counted; their bytes are added back analytically. Tested against
hand-counted answers in `tests/test_memory.py`. With `--device cuda`, the ground truth,
`torch.cuda.max_memory_allocated` above the memory allocated before the call (its peak reset
first), is measured instead, so that a device run checks the CPU model.

    .venv/bin/python -m bench.memory                # about 10 min on 2 shared CPU cores
    .venv/bin/python -m bench.memory --configs cifar --batches 1 2 4    # about 30 s
    .venv/bin/python -m bench.memory --device cuda --batches 8 16 --out results/bench/memory_cuda

Writes `results/bench/memory_cpu.{csv,json}` (tidy rows: the measured peaks per batch, then per
call the fit and its predictions).
"""

import dataclasses
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import emdm
from bench.common import conditions, set_threads, write_timed_results
from emdm.config import (
    DEVICE,
    NONNEGATIVE,
    POSITIVE,
    Checked,
    check_device,
    interval,
    option,
    parse_config,
)
from emdm.data import line_mask
from emdm.denoisers import EpsilonDenoiser
from emdm.em import EMConfig, optimizer_for
from emdm.loss import beta33, denoising_loss
from emdm.mri import MRIConfig
from emdm.nn.adm import ADMConfig, ADMUNet
from emdm.operators import Bicubic, MaskOperator, MRIOperator
from emdm.prior import UNetConfig
from emdm.schedule import VESchedule, VPSchedule

BENCHMARK = "memory"

#: The devices compared with, by name: their memory in bytes (decimal GB, as sold).
DEVICES = {"H100_80GB": 80e9, "H200_141GB": 141e9}


class LiveBytes(TorchDispatchMode):
    r"""Counts the bytes of the tensor storages that ops create while the mode is active and
    that are still alive: :attr:`live` now, :attr:`peak` its maximum.

    A storage is counted once, when an op first outputs it, unless it is one of the op's
    inputs' storages (a view such as `t` or `reshape`, or an in-place op); it is uncounted
    when it is freed. Storages that exist before the mode are never counted.
    """

    def __init__(self):
        super().__init__()
        self.live, self.peak = 0, 0
        self._seen: dict[int, int] = {}  # data pointer -> bytes, of the live counted storages

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, Tensor)}  # fmt: skip
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in inputs or key in self._seen:
                continue
            self._seen[key] = nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, nbytes)
        return out


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    r"""The peak of the tensor bytes allocated by `fn()` above those allocated before it: on
    the CPU counted by :class:`LiveBytes`, on CUDA by `torch.cuda.max_memory_allocated`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with LiveBytes() as mode:
        fn()
    return mode.peak


def fit_line(batches: list[int], peaks: list[int]) -> tuple[float, float]:
    r"""The least-squares line :math:`a + b B` through the points :math:`(B, \mathrm{peak})`:
    returns the intercept :math:`a` and the slope :math:`b` (bytes per sample)."""
    n = len(batches)
    if n < 2 or len(set(batches)) < 2:
        raise ValueError(f"a line needs at least two distinct batches, got {batches}")
    mean_b, mean_p = sum(batches) / n, sum(peaks) / n
    slope = sum((b - mean_b) * (p - mean_p) for b, p in zip(batches, peaks, strict=True))
    slope /= sum((b - mean_b) ** 2 for b in batches)
    return mean_p - slope * mean_b, slope


def largest_batch(capacity: float, fixed: float, per_sample: float) -> int:
    r"""The largest batch :math:`B` with :math:`\mathrm{fixed} + B \cdot \mathrm{per\_sample}
    \le \mathrm{capacity}`, 0 if not even one sample fits."""
    if per_sample <= 0:
        raise ValueError(f"per_sample must be positive, got {per_sample}")
    return max(0, int((capacity - fixed) // per_sample))


@dataclasses.dataclass
class Setup:
    r"""A configuration: its denoiser (built in training mode), the event shape of :math:`x`,
    its E-step's operator for a batch, the noise variance :math:`\Sigma_y`, the MMPS keywords,
    and the paper's training and E-step batches (0: never trained)."""

    name: str
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    operator: Callable[[int, torch.Generator], Callable]
    cov_y: float
    mmps: dict
    train_batch: int
    sample_batch: int
    sample_iterations: int  # the CG iterations of the paper's E-step


def _mask(shape):
    def operator(batch, g):
        return MaskOperator((torch.rand((batch, 1, *shape[1:]), generator=g) > 0.75).float())

    return operator


def _mri(size):
    return lambda batch, g: MRIOperator(line_mask(batch, size, 6.0, generator=g))


def _sr4(batch, g):
    return Bicubic(4)


def setups(tiny: bool = False) -> dict[str, Setup]:
    r"""The configurations by name; `tiny`: each with a tiny network of its kind on small
    images (the tests' path, seconds)."""
    cifar, mri = UNetConfig(), MRIConfig().net
    adm, size, x_size = ADMConfig(), 320, 32
    if tiny:
        cifar = UNetConfig(hid_channels=(8, 16), hid_blocks=(1, 1), heads=1, emb_features=16)
        mri = UNetConfig(channels=4, hid_channels=(8, 16), hid_blocks=(1, 1), heads=1,
                         emb_features=16, pixel_shuffle=2)  # fmt: skip
        adm = ADMConfig(image_size=16, model_channels=32, channel_mult=(1, 2),
                        attention_resolutions=(2,), num_head_channels=16)  # fmt: skip
        size, x_size = 16, 8
    vp = VPSchedule()
    return {
        "cifar": Setup("cifar", cifar.build, (3, x_size, x_size), _mask((3, x_size, x_size)),
                       1e-3**2, {"dot": "batch"}, 256, 256, 1),
        "mri": Setup("mri", mri.build, (size, size), _mri(size), 1e-2**2, {"dot": "batch"},
                     256, 256, 3),
        "adm": Setup("adm", lambda: EpsilonDenoiser(ADMUNet(adm), vp, clip=True),
                     (3, adm.image_size, adm.image_size), _sr4, 0.1**2,
                     {"solver": "gmres", "check": False}, 0, 1, 1),
    }  # fmt: skip


@dataclasses.dataclass
class Config(Checked):
    r"""A memory model of the paper's image configurations; saved beside its results."""

    configs: tuple[str, ...] = option(
        ("cifar", "mri", "adm"), "configurations to measure", choices=("cifar", "mri", "adm")
    )
    batches: tuple[int, ...] = option((1, 2), "batches measured (two at least)", check=POSITIVE)
    iterations: tuple[int, ...] = option((1, 3), "MMPS solver iterations", check=POSITIVE)
    train: bool = option(True, "also measure a training step")
    usable: float = option(
        0.9, "fraction of a device's memory counted as available", check=interval(0, 1)
    )
    tiny: bool = option(False, "test only: tiny networks on small images (seconds)")
    threads: int = option(0, "torch threads; 0: the count in force", check=NONNEGATIVE)
    device: str = option("cpu", "device of the calls (cuda: max_memory_allocated)", check=DEVICE)
    seed: int = option(0, "seed of the networks and the data", check=NONNEGATIVE)
    out: str = option("results/bench/memory_cpu", "output path, without the suffix")
    quiet: bool = option(False, "print nothing")

    def __post_init__(self):
        super().__post_init__()
        check_device(self.device)
        if len(set(self.batches)) < 2:
            raise ValueError(f"batches needs two distinct values at least, got {self.batches}")


def _forward_call(setup: Setup, denoiser: nn.Module, batch: int, cfg: Config, device):
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn((batch, *setup.shape), generator=g).to(device)
    t = beta33(batch, g).to(device)
    sigma, z = VESchedule(1e-3, 1e2).sigma_ve(t), torch.randn(x.shape, generator=g).to(device)
    graph = []  # keeps the loss, hence the tensors saved for its backward, alive to the end
    return lambda: graph.append(denoising_loss(denoiser, x, sigma, z))


def _adam_peak(denoiser: nn.Module, cfg: Config, device) -> int:
    r"""The peak of the M-step's update (gradient clip, Adam's first step), gradients given."""
    for p in denoiser.parameters():
        p.grad = torch.ones_like(p)
    em = EMConfig()
    optimizer = optimizer_for(denoiser, em)

    def update():
        nn.utils.clip_grad_norm_(list(denoiser.parameters()), em.clip, foreach=True)
        optimizer.step()

    peak = peak_bytes(update, device)
    for p in denoiser.parameters():
        p.grad = None
    return peak


def _mmps_call(setup: Setup, denoiser: nn.Module, batch: int, k: int, cfg: Config, device):
    g = torch.Generator().manual_seed(cfg.seed)
    A = setup.operator(batch, g)
    A = A.to(device) if hasattr(A, "to") else A
    x = torch.randn((batch, *setup.shape), generator=g).to(device)
    y = A(x)
    y = y + setup.cov_y**0.5 * torch.randn(y.shape, generator=g).to(device)
    posterior = emdm.MMPS(denoiser, A, y, setup.cov_y, "tweedie", k, **setup.mmps)
    x_t, sigma = x + torch.randn_like(x), torch.ones(batch, device=device)
    return lambda: posterior(x_t, sigma)


def measure(setup: Setup, cfg: Config) -> tuple[int, dict[str, dict[int, int]]]:
    r"""The number of parameters, and per call (`train`, `mmps_cg<k>`) the peak bytes per
    batch."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    denoiser = setup.build().to(device)
    params = sum(p.numel() for p in denoiser.parameters())
    peaks: dict[str, dict[int, int]] = {}
    if cfg.train:
        denoiser.train()
        peaks["forward"] = {b: peak_bytes(_forward_call(setup, denoiser, b, cfg, device), device)
                            for b in cfg.batches}  # fmt: skip
        peaks["adam"] = {0: _adam_peak(denoiser, cfg, device)}
    denoiser.eval()
    for k in cfg.iterations:
        peaks[f"mmps_cg{k}"] = {b: peak_bytes(_mmps_call(setup, denoiser, b, k, cfg, device),
                                              device) for b in cfg.batches}  # fmt: skip
    return params, peaks


def model_rows(setup: Setup, params: int, peaks: dict[str, dict[int, int]], cfg: Config):
    r"""The tidy rows of one configuration: the measured peaks, then per call (`train`,
    `mmps_cg<k>`) its fit, the bytes that exist beside it, and its prediction at the paper's
    batch against :data:`DEVICES`.

    Training: the forward's line :math:`a + b B` beside the weights, Adam's two moments and
    one set of gradients (:math:`16 P` bytes; the previous step's gradients live through the
    forward, the new ones through the backward, whose own peak adds the gradient of one
    activation at most), or the update's peak beside the weights and gradients, whichever is
    larger. MMPS: its line beside the weights (:math:`4 P` bytes).
    """
    rows = []

    def row(call, metric, value, batch=0):
        rows.append(dict(benchmark=BENCHMARK, config=setup.name, device=cfg.device, call=call,
                         batch=batch, metric=metric, value=value))  # fmt: skip

    row("", "parameters", params)
    weights = 4 * params  # fp32, allocated before every call
    for call, by_batch in peaks.items():
        for batch, peak in by_batch.items():
            row(call, "peak_bytes", peak, batch)
    for call, by_batch in peaks.items():
        if call == "adam":
            continue
        intercept, slope = fit_line(list(by_batch), list(by_batch.values()))
        beside, floor = weights, 0.0
        if call == "forward":
            call, beside = "train", 4 * weights
            floor = 2 * weights + peaks["adam"][0]  # the update, batch-independent
        paper = setup.train_batch if call == "train" else setup.sample_batch
        row(call, "bytes_per_sample", slope)
        row(call, "intercept_bytes", intercept)
        row(call, "beside_bytes", beside)
        row(call, "fixed_bytes", beside + intercept)
        if paper:
            row(call, "paper_batch", paper)
            row(call, "predicted_peak_bytes", max(floor, beside + intercept + slope * paper),
                paper)  # fmt: skip
        for name, capacity in DEVICES.items():
            most = largest_batch(cfg.usable * capacity, beside + intercept, slope)
            row(call, f"largest_batch_{name}", most if floor <= cfg.usable * capacity else 0)
            if paper:
                row(call, f"fits_{name}", int(most >= paper), paper)
    return rows


def summary(rows: list[dict]) -> str:
    r"""A Markdown table of the rows: per configuration and call, GB per sample, the fixed GB,
    the predicted GB at the paper's batch and the largest batches that fit."""
    table = {}
    for r in rows:
        table.setdefault((r["config"], r["call"]), {})[r["metric"]] = r["value"]
    lines = ["| config | call | params (M) | GB/sample | fixed GB | paper B | GB at paper B "
             "| max B (H100 80 GB) | max B (H200 141 GB) |", "|" + " --- |" * 9]  # fmt: skip
    for (config, call), m in table.items():
        if call in ("", "forward", "adam"):
            continue
        params = table[(config, "")]["parameters"]
        paper = m.get("paper_batch", 0)
        at = f"{m['predicted_peak_bytes'] / 1e9:.1f}" if paper else "-"
        lines.append(
            f"| {config} | {call} | {params / 1e6:.1f} | {m['bytes_per_sample'] / 1e9:.3f} "
            f"| {m['fixed_bytes'] / 1e9:.2f} | {paper or '-'} | {at} "
            f"| {m['largest_batch_H100_80GB']} | {m['largest_batch_H200_141GB']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(Config, argv, prog="bench/memory.py")
    cfg.threads = set_threads(cfg.threads)
    start, before = time.perf_counter(), conditions()
    rows, available = [], setups(cfg.tiny)
    for name in cfg.configs:
        params, peaks = measure(available[name], cfg)
        rows += model_rows(available[name], params, peaks, cfg)
        if not cfg.quiet:
            print(f"{name}: {params / 1e6:.1f} M parameters, {time.perf_counter() - start:.0f} s")
    wall_s = time.perf_counter() - start
    table = summary(rows)
    out = Path(cfg.out)
    extra = {"devices_bytes": DEVICES, "table": table,
             "model": "peak(B) = 4 P + a + b B bytes; a, b fitted over `batches`"}  # fmt: skip
    csv, _ = write_timed_results(out.name, rows, cfg, wall_time=wall_s, out_dir=out.parent,
                                 device=cfg.device, before=before, extra=extra,
                                 quick=cfg.tiny)  # fmt: skip
    if not cfg.quiet:
        print(table)
        print(f"{cfg.threads} threads, load {conditions()['loadavg']}; wrote {csv}")


if __name__ == "__main__":
    main()
