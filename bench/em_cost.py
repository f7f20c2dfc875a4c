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
quarter of an H100's dense bf16 peak). The result is an estimate, labelled so:
`results/bench/em_cost.{csv,json}`.

With `--measure`, the same runs are also costed from timed calls on `--device`: a training step
(loss, backward, Adam), an MMPS call's network work (a forward and k + 1 VJPs through one graph)
and a sampling step (a forward without graph), each on a batch of `--batch` images, the median of
`--repeats` after a warm-up, divided by the batch. Hours = laps x (training images x time per
training image + E-step images x steps x time per MMPS image + evaluation images x steps x time
per forward image); the achieved TFLOP/s is the counted operations over the measured time.
On a GPU that is the measured GPU-hours of one device (float32, as the networks are built). At
the runs' batch of 256 the training step's Adam update weighs per image as in the runs; a
smaller batch over-counts it.

    python -m bench.em_cost                                        # counts only, seconds
    python -m bench.em_cost --measure --device cuda --batch 256    # measured, on one GPU
    python -m bench.em_cost --measure --batch 2 --repeats 3        # on a CPU: minutes
"""

import dataclasses
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import conditions, median_ms
from emdm import VESchedule
from emdm.config import DEVICE, POSITIVE, Checked, check_device, config_dict, option, parse_config
from emdm.loss import denoiser_loss
from emdm.prior import UNetConfig
from emdm.provenance import write_results


@dataclasses.dataclass
class CostConfig(Checked):
    r"""The compute of the paper-scale image EM runs, counted, and the GPU-hours it implies."""

    tflops: float = option(100.0, "assumed sustained TFLOP/s of one GPU", check=POSITIVE)
    measure: bool = option(False, "also time the three calls on --device")
    device: str = option("cpu", "device of the timed calls", check=DEVICE)
    batch: int = option(256, "images per timed call", check=POSITIVE)
    repeats: int = option(
        10, "timed calls per measurement (after one warm-up call)", check=POSITIVE
    )
    out: str = option("results/bench", "output folder")

    def __post_init__(self):
        super().__post_init__()
        check_device(self.device)


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


def timed_per_image(net: UNetConfig, shape: tuple[int, ...], cg: int, cfg: CostConfig):
    r"""Measured seconds per image of a training step, an MMPS call's network work and a
    sampling step, at a batch of `cfg.batch` images on `cfg.device`."""
    device = torch.device(cfg.device)
    torch.manual_seed(0)
    denoiser = net.build().to(device)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-4)
    schedule = VESchedule(1e-3, 1e2)
    x = torch.randn(cfg.batch, *shape, device=device)
    sigma = torch.ones(cfg.batch, device=device)

    def train():
        optimizer.zero_grad(set_to_none=True)
        denoiser_loss(denoiser, x, schedule).backward()
        optimizer.step()

    def mmps():  # a forward and k + 1 VJPs through one graph (the CG algebra is negligible)
        x_t = x.clone().requires_grad_()
        out = denoiser(x_t, sigma)
        for i in range(cg + 1):
            torch.autograd.grad(out, x_t, torch.randn_like(out), retain_graph=i < cg)

    def forward():
        with torch.no_grad():
            denoiser(x, sigma)

    return {name: median_ms(fn, device, cfg.repeats, warmup=1)[0] / 1e3 / cfg.batch
            for name, fn in (("train", train), ("mmps", mmps), ("forward", forward))}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(CostConfig, argv, prog="bench/em_cost.py")
    start, before = time.perf_counter(), conditions()
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
        if cfg.measure:
            t = timed_per_image(net, shape, cg, cfg)
            spent = laps * (train * t["train"] + estep * t["mmps"] + evaluation * t["forward"])
            achieved = total / spent / 1e12
            for metric, value in [*((f"seconds_{k}_per_image", v) for k, v in t.items()),
                                  ("hours_measured", spent / 3600),
                                  ("tflops_achieved", achieved)]:  # fmt: skip
                rows.append({"run": name, "metric": metric, "value": float(value)})
            print(f"{name}: measured on {cfg.device} at batch {cfg.batch}: "
                  f"{spent / 3600:.3g} device-hours, {achieved:.3g} TFLOP/s")  # fmt: skip
    note = {"estimate": "FLOP counts times an assumed throughput, not timed",
            "conditions": {"before": before, "after": conditions()}}  # fmt: skip
    if cfg.measure:
        note["measured"] = f"hours_measured: timed on {cfg.device} at batch {cfg.batch}"
    stem = f"em_cost_{cfg.device.split(':')[0]}" if cfg.measure else "em_cost"
    write_results(stem, rows, config_dict(cfg), wall_time=time.perf_counter() - start,
                  out_dir=cfg.out, quick=False, device=cfg.device, extra=note)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
