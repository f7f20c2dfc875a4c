r"""The kernels' GPU check: reference against Triton, timed, beside the device's copy bandwidth.

On a CUDA machine, with its own torch and triton (run from the repository root):

    PYTHONPATH=. bash bench/gpu_check.sh          # the kernel tests natively, then this script
    PYTHONPATH=. python3 bench/gpu_check.py       # the timings alone

It times, fp32, median of interleaved repeats between synchronisations:

* the CG update (:func:`emdm.kernels.cg.cg_update`) for :math:`B \in \{64, 256\}` and
  :math:`D \in \{3 \cdot 32^2, 320^2\}`, per-sample dots;
* the MRI operator's forward plus adjoint (:mod:`emdm.kernels.mri`) at :math:`B = 64`,
  320 x 320;
* the device-to-device copy bandwidth (1 GiB),

and writes `results/bench/gpu-<device>.{csv,json}`: per case the time of each provider, the
speed-up and the floor traffic's GB/s as a fraction of the copy bandwidth, with the issue's
targets (CG: at least 2x and 70 % of the copy bandwidth at B = 256, D = 320²; MRI: 1.5x) marked
met or not. Under a minute on one H100.
"""

import dataclasses
import json
import re
import sys
import time

import torch

from bench.common import (
    cg_bytes,
    cg_state,
    conditions,
    copy_bandwidth,
    median_ms,
    mri_bytes,
    mri_problem,
    write_timed_results,
)
from emdm.config import DEVICE, POSITIVE, Checked, at_least, config_dict, option, parse_config
from emdm.kernels.cg import cg_update
from emdm.kernels.mri import mri_adjoint, mri_forward


@dataclasses.dataclass
class GPUCheckConfig(Checked):
    r"""The kernels' GPU check: reference against Triton, timed, beside the copy bandwidth."""

    batches: tuple[int, ...] = option((64, 256), "batches B of the CG update", check=POSITIVE)
    sizes: tuple[int, ...] = option(
        (3 * 32 * 32, 320 * 320), "sizes D of the CG update", check=POSITIVE
    )
    mri_batch: int = option(64, "batch B of the MRI operator", check=POSITIVE)
    mri_size: int = option(320, "height and width of the MRI images", check=POSITIVE)
    repeats: int = option(50, "timed calls per provider and case", check=POSITIVE)
    copy_bytes: int = option(
        1 << 30, "bytes of the bandwidth's copy", check=at_least(4)
    )  # one float32
    # a name only: the default names CUDA, which main checks before any work
    device: str = option(
        "cuda", "device; cpu runs the same steps through Triton's interpreter (a smoke test)",
        check=DEVICE,
    )  # fmt: skip
    out: str = option("results/bench", "output folder")
    dry_run: bool = option(False, "print the resolved config and exit")


def _interleaved(calls: dict, device, repeats: int) -> dict[str, tuple[float, float]]:
    # alternate providers in rounds of 5, so that clock and thermal drift fall on both
    out = {name: [] for name in calls}
    for _ in range(max(1, repeats // 5)):
        for name, fn in calls.items():
            out[name].append(median_ms(fn, device, repeats=5, warmup=1))
    return {name: (min(m for m, _ in v), max(q for _, q in v)) for name, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(GPUCheckConfig, argv, prog="bench/gpu_check.py")
    if cfg.dry_run:
        print(json.dumps(config_dict(cfg), indent=2))
        return 0
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu_check.py needs a CUDA device: torch sees none", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu-interpreted"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    start, before = time.perf_counter(), conditions()
    rows = []
    copy = copy_bandwidth(device, cfg.copy_bytes)
    rows.append({"kernel": "copy", "provider": "torch", "metric": "gbps", "value": copy})
    print(f"{name}: device-to-device copy {copy:.0f} GB/s")

    def record(kernel, shape, times, nbytes):
        for provider, (ms, iqr) in times.items():
            gbps = nbytes / ms / 1e6
            rows.extend(
                {"kernel": kernel, "provider": provider, **shape, "metric": m, "value": v}
                for m, v in (("time_ms", ms), ("time_ms_iqr", iqr), ("floor_gbps", gbps),
                             ("fraction_of_copy", gbps / copy))
            )  # fmt: skip
        speedup = times["ref"][0] / times["triton"][0]
        rows.append({"kernel": kernel, "provider": "triton", **shape, "metric": "speedup",
                     "value": speedup})  # fmt: skip
        frac = nbytes / times["triton"][0] / 1e6 / copy
        print(f"{kernel} {shape}: ref {times['ref'][0]:.3f} ms, triton {times['triton'][0]:.3f} "
              f"ms, {speedup:.2f}x, {frac:.0%} of copy bandwidth")  # fmt: skip
        return speedup, frac

    targets = {}
    for B in cfg.batches:
        for D in cfg.sizes:
            state = cg_state(B, D, device)
            calls = {
                p: (lambda p=p, s=state: cg_update(*s, provider=p)) for p in ("ref", "triton")
            }
            speedup, frac = record("cg_update", {"B": B, "D": D}, _interleaved(
                calls, device, cfg.repeats), cg_bytes(B, D))  # fmt: skip
            if B == 256 and D == 320 * 320:
                targets["cg_speedup_2x"] = speedup >= 2
                targets["cg_70pct_of_copy"] = frac >= 0.7
    B, N = cfg.mri_batch, cfg.mri_size
    x, y, mask = mri_problem(B, N, N, device)
    calls = {
        p: (lambda p=p: (mri_forward(x, mask, provider=p), mri_adjoint(y, mask, provider=p)))
        for p in ("ref", "triton")
    }
    speedup, _ = record("mri_forward_adjoint", {"B": B, "D": N * N},
                        _interleaved(calls, device, cfg.repeats), mri_bytes(B, N, N))  # fmt: skip
    targets["mri_speedup_1.5x"] = speedup >= 1.5
    print("targets:", json.dumps(targets))

    import triton

    write_timed_results(
        f"gpu-{slug}", rows, cfg, wall_time=time.perf_counter() - start, out_dir=cfg.out,
        device=device, before=before, quick=device.type != "cuda",
        extra={"targets_met": targets, "triton": triton.__version__, "device_name": name},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
