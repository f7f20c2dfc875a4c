r"""The compute of the paper-scale image EM runs (Table 1, Figure 6), counted, and the GPU-hours
it implies at an assumed throughput.

Counts, with `torch.utils.flop_counter`, the floating-point operations of one image of the
paper's U-Nets (protocols §1.11) for

* a training step (forward + backward of the denoising loss),
* a vector-Jacobian product through the denoiser (an input-only backward), so that an MMPS call
  with `k` CG iterations costs a forward and k + 1 of them (its CG algebra is negligible),
* an unconditional sampling step (a forward),

and multiplies them by the runs' counts (protocols §4.3, §4.4, §5.3):

* CIFAR, per lap: 49 920 training steps of 256 images; an E-step over 49 920 + 9 984 images
  with DDPM 256 steps and CG 1; an evaluation of 50 176 DDIM-256 samples; 32 laps, 5 runs;
* MRI: 16 laps of ~15 000 steps of 256 images and an E-step over 2 x 30 000 + 6 000 slices
  with DDPM 64 and CG 3.

The GPU-hours divide the operations by `tflops` (default 100 TFLOP/s: an assumption, about a
quarter of an H100's dense bf16 peak, to be replaced by a measured step time on a GPU). The
result is an estimate, labelled so: `results/bench/em_cost.{csv,json}`.

    python bench/em_cost.py            # seconds on a CPU (it runs each network on one image)
"""

import dataclasses
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from emdm import VESchedule
from emdm.config import config_dict, parse_config
from emdm.loss import denoiser_loss
from emdm.prior import UNetConfig
from emdm.provenance import write_results


@dataclasses.dataclass
class CostConfig:
    tflops: float = 100.0  # assumed sustained TFLOP/s of one GPU
    out: str = "results/bench"


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def per_image(net: UNetConfig, shape: tuple[int, ...], cg: int) -> dict[str, int]:
    torch.manual_seed(0)
    denoiser = net.build()
    x, sigma = torch.randn(1, *shape), torch.ones(1)
    schedule = VESchedule(1e-3, 1e2)
    with torch.no_grad():
        forward = flops(lambda: denoiser(x, sigma))
    train = flops(lambda: denoiser_loss(denoiser, x, schedule).backward())
    x_t = x.clone().requires_grad_()
    out = denoiser(x_t, sigma)
    # MMPS takes its VJPs with autograd.grad, which the counter's hooks do not support;
    # backward(inputs=[x_t]) does the same input-only work
    vjp = flops(lambda: out.backward(torch.randn_like(out), inputs=[x_t]))
    return {"forward": forward, "train": train, "vjp": vjp, "mmps": forward + (cg + 1) * vjp}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(CostConfig, argv, prog="bench/em_cost.py")
    start = time.perf_counter()
    cifar = UNetConfig()
    mri = UNetConfig(channels=16, hid_channels=(128, 256, 384, 512), hid_blocks=(3, 3, 3, 3),
                     attention=(3,), pixel_shuffle=4)  # fmt: skip
    runs = {  # (net, shape, cg, laps, train images, E-step images x steps, eval images x steps)
        "table1 (one run)": (cifar, (3, 32, 32), 1, 32, 49920 * 256, 59904 * 256, 50176 * 256),
        "fig6": (mri, (320, 320), 3, 16, 15000 * 256, 66000 * 64, 0),
    }
    rows = []
    for name, (net, shape, cg, laps, train, estep, evaluation) in runs.items():
        f = per_image(net, shape, cg)
        total = laps * (train * f["train"] + estep * f["mmps"] + evaluation * f["forward"])
        hours = total / (cfg.tflops * 1e12) / 3600
        for metric, value in [*((f"flop_{k}", v) for k, v in f.items()),
                              ("flop_total", total), ("gpu_hours_estimate", hours)]:  # fmt: skip
            rows.append({"run": name, "metric": metric, "value": float(value)})
        print(f"{name}: {total:.3g} FLOP, about {hours:.0f} GPU-hours at {cfg.tflops:g} TFLOP/s")
    note = {"estimate": "FLOP counts times an assumed throughput, not timed"}
    write_results("em_cost", rows, config_dict(cfg), wall_time=time.perf_counter() - start,
                  out_dir=cfg.out, quick=False, extra=note)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
