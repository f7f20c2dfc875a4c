r"""What the benchmark scripts and asv suites share, so that none imports another script.

* Timing: :func:`timed` (one call between two device synchronisations), :func:`median_ms`
  (the median and interquartile range of repeated calls after a warm-up).
* The conditions of a timing: :func:`set_threads` and :func:`conditions` (the torch thread
  count and the load average, recorded in every result's JSON: threads that share their cores
  with other processes wait at every parallel op, so a timing means little without them);
  :func:`write_timed_results` publishes a result with them.
* :class:`Bounded`: asv's sampling settings for calls of milliseconds.
* :class:`MMPSProblem` and :func:`mmps_problem`: the seeded MMPS problem of
  `bench/mmps_cost.py`, also timed by `bench/bench_mmps.py`.
* The kernels' problems, timed by `bench/bench_kernels.py` and `bench/gpu_check.py`:
  :func:`cg_state`, :func:`mri_problem`, their traffic floors :func:`cg_bytes` and
  :func:`mri_bytes`, and :func:`copy_bandwidth`, the device's copy bandwidth.
"""

import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import torch

import emdm
from emdm.config import NONNEGATIVE, POSITIVE, Checked, config_dict, option
from emdm.provenance import write_results
from emdm.threads import set_threads as set_threads_of_torch


def synchronizer(device) -> Callable[[], None]:
    r"""Returns a function that waits for `device`'s queued work (a no-op on the CPU)."""
    device = torch.device(device)
    return torch.cuda.synchronize if device.type == "cuda" else lambda: None


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    r"""Returns the wall time of `fn()` in milliseconds, between two device synchronisations."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return 1e3 * (time.perf_counter() - start)


def iqr(values: list[float]) -> float:
    r"""The interquartile range of `values`, 0 for a single value."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q3 - q1


def median_ms(
    fn: Callable[[], object], device, repeats: int = 50, warmup: int = 5
) -> tuple[float, float]:
    r"""Returns the median and the interquartile range, in milliseconds, of `fn()` timed
    between device synchronisations, after `warmup` untimed calls."""
    sync = synchronizer(device)
    for _ in range(warmup):
        fn()
    times = [timed(fn, sync) for _ in range(repeats)]
    return statistics.median(times), iqr(times)


def set_threads(threads: int) -> int:
    r"""Sets torch's intra-op threads (0 keeps torch's default) and returns the count in use."""
    if threads > 0:
        set_threads_of_torch(threads)
    return torch.get_num_threads()


def conditions() -> dict[str, object]:
    r"""The torch thread count and the 1, 5 and 15 minute load averages, now; a result
    records them before and after its timings."""
    return {"threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())}


def write_timed_results(
    name: str,
    rows: list[dict],
    cfg: Checked,
    *,
    wall_time: float,
    out_dir,
    device,
    before: dict[str, object],
    quick: bool = False,
    extra: dict[str, object] | None = None,
):
    r"""Publishes a benchmark's `rows` and `cfg` as `<out_dir>/<name>.{csv,json}`
    (:func:`emdm.provenance.write_results`), its JSON's extra holding `extra` and then the
    conditions (:func:`conditions`) before the timings, `before`, and after them, now.
    Returns what :func:`emdm.provenance.write_results` returns."""
    extra = {**(extra or {}), "conditions": {"before": before, "after": conditions()}}
    return write_results(name, rows, config_dict(cfg), wall_time=wall_time, out_dir=out_dir,
                         quick=quick, device=device, extra=extra)  # fmt: skip


class Bounded:
    r"""asv settings: its defaults sample for up to 20 s per benchmark, in 2 rounds; a call
    here takes milliseconds, so one round of at most 1 s keeps a suite near a minute on CPU."""

    warmup_time = 0.2
    repeat = (3, 10, 1.0)  # (min samples, max samples, max seconds)
    rounds = 1
    timeout = 120


@dataclasses.dataclass
class MMPSProblem(Checked):
    r"""The MMPS problem of `bench/mmps_cost.py`: an EDM 3 x 256 TimeMLP denoiser, a batch of
    :math:`x_t`, per-sample (or shared) dense operators with unit rows, and observations."""

    batch: int = option(256, "batch B of x_t", check=POSITIVE)
    features: int = option(64, "dimension D of x", check=POSITIVE)
    measurements: int = option(16, "rows M of each operator A", check=POSITIVE)
    iterations: tuple[int, ...] = option((1, 3, 5), "CG iterations k to time", check=POSITIVE)
    sigma: float = option(1.0, "noise level σ_t of x_t", check=POSITIVE)
    cov_y: float = option(1e-2, "observation noise variance Σ_y", check=POSITIVE)
    seed: int = option(0, "seed of the network and the problem", check=NONNEGATIVE)
    shared_operator: bool = option(False, "one A for all samples instead of one per sample")


def mmps_problem(cfg: MMPSProblem, device: torch.device) -> dict:
    r"""Builds the seeded denoiser, operator :math:`A` (:math:`(B, M, D)`, or :math:`(M, D)`
    shared), observations :math:`y` :math:`(B, M)`, :math:`x_t` :math:`(B, D)`, :math:`\sigma_t`
    :math:`(B,)` and the VJP cotangents `us` :math:`(k + 1, B, D)` and `vs` :math:`(k + 1, B, M)`
    for the largest :math:`k` of `cfg.iterations`."""
    B, D, M = cfg.batch, cfg.features, cfg.measurements
    torch.manual_seed(cfg.seed)  # the network's initialization
    network = emdm.nn.TimeMLP(D, emb_features=64, hidden_features=(256, 256, 256))
    denoiser = emdm.EDMDenoiser(network, emb_features=64).to(device).eval()

    g = torch.Generator().manual_seed(cfg.seed)
    A = torch.randn(B, M, D, generator=g)
    A = A / A.norm(dim=-1, keepdim=True)  # (B, M, D), unit rows
    x = torch.randn(B, D, generator=g)
    x_t = x + cfg.sigma * torch.randn(B, D, generator=g)
    if cfg.shared_operator:
        A = A[0]  # (M, D)
    y = emdm.DenseOperator(A)(x) + cfg.cov_y**0.5 * torch.randn(B, M, generator=g)
    us = torch.randn(max(cfg.iterations) + 1, B, D, generator=g)  # (k_max + 1, B, D)
    vs = torch.randn(max(cfg.iterations) + 1, B, M, generator=g)  # (k_max + 1, B, M)
    sigma = torch.full((B,), cfg.sigma)
    return {
        "denoiser": denoiser,
        "A": A.to(device),
        "y": y.to(device),
        "x_t": x_t.to(device),
        "sigma": sigma.to(device),
        "us": us.to(device),
        "vs": vs.to(device),
    }


# -- the kernels' problems ---------------------------------------------------------------------
# Seeded inputs and byte counts of the kernel benchmarks (asv's and the GPU check's). Bytes are
# the traffic *floor* of each operation, the data it must read and write once:
#
# * CG update: read x, r, p, Cp, write x', r', p', i.e. 7 B D elements;
# * MRI forward + adjoint: the FFTs' own traffic aside, read the image and write k-space
#   (forward), read k-space and write the image (adjoint).
#
# GB/s figures divide these floors by the measured time, so they compare across
# implementations: a kernel that moves more than the floor shows a lower figure.


def cg_state(B: int, D: int, device, dtype=torch.float32, seed: int = 0, dot: str = "sample"):
    r"""A mid-solve CG state :math:`(x, r, p, Cp, \rho, \text{tol}, \text{active})` with every
    sample active, accumulation in `dtype` (MMPS's default)."""
    from emdm.kernels.cg import batched_dot

    g = torch.Generator().manual_seed(seed)
    x, r, p = (torch.randn(B, D, generator=g, dtype=dtype) for _ in range(3))
    Cp = 2 * p + 0.1 * torch.randn(B, D, generator=g, dtype=dtype)
    x, r, p, Cp = (t.to(device) for t in (x, r, p, Cp))
    rr = batched_dot(r, r, dot, dtype)
    tol = torch.zeros_like(rr)
    return x, r, p, Cp, rr, tol, rr > tol


def cg_bytes(B: int, D: int, dtype=torch.float32) -> int:
    return 7 * B * D * torch.empty((), dtype=dtype).element_size()


def mri_problem(B: int, H: int, W: int, device, dtype=torch.float32, seed: int = 0):
    r"""An image batch :math:`(B, H, W)`, its k-space :math:`(B, H, W, 2)` and a line mask
    :math:`(B, W)` keeping a quarter of the columns."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, W, generator=g, dtype=dtype)
    y = torch.randn(B, H, W, 2, generator=g, dtype=dtype)
    mask = (torch.rand(B, W, generator=g) < 0.25).to(dtype)
    return x.to(device), y.to(device), mask.to(device)


def mri_bytes(B: int, H: int, W: int, dtype=torch.float32) -> int:
    # forward: image in, k-space (2 floats) out; adjoint: k-space in, image out
    return 6 * B * H * W * torch.empty((), dtype=dtype).element_size()


def copy_bandwidth(device, nbytes: int = 1 << 30, repeats: int = 20) -> float:
    r"""The device-to-device copy bandwidth in GB/s (read plus write, as the floors count)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms, _ = median_ms(lambda: dst.copy_(src), device, repeats=repeats)
    return 2 * nbytes / ms / 1e6
