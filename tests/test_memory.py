r"""Tests of `bench/memory.py`: its live-bytes count against hand-counted answers, its line fit,
and a tiny end-to-end run."""

import csv

import pytest
import torch
from torch import nn

from bench.memory import LiveBytes, fit_line, largest_batch, main, peak_bytes


def test_live_bytes_counts_allocations_and_frees():
    with LiveBytes() as mode:
        a = torch.empty(1000, 1000)  # 4 MB
        b = torch.empty(500, 1000)  # 2 MB
        del a, b
        c = torch.empty(250, 1000)  # 1 MB
        c.t().add_(1.0)  # a view and an in-place op: nothing new
    assert mode.peak == 6_000_000
    assert mode.live == 1_000_000
    del c
    assert mode.live == 0


@pytest.mark.parametrize("batch", [1, 3])
def test_live_bytes_of_a_linear_chain(batch):
    # without biases, each Linear allocates its output only; autograd saves every layer's input,
    # so at the end of the forward the L outputs (the last kept) are alive: L B H floats
    L, H = 4, 32
    torch.manual_seed(0)
    chain = nn.Sequential(*[nn.Linear(H, H, bias=False) for _ in range(L)])
    x = torch.randn(batch, H)
    kept = []
    assert peak_bytes(lambda: kept.append(chain(x)), torch.device("cpu")) == 4 * L * batch * H

    # after a backward, only the gradients (created inside) stay alive
    with LiveBytes() as mode:
        chain(x).sum().backward()
    assert mode.live == sum(4 * p.numel() for p in chain.parameters())


def test_fit_line_and_largest_batch():
    a, b = fit_line([1, 2, 4], [10 + 3 * B for B in (1, 2, 4)])
    assert a == pytest.approx(10) and b == pytest.approx(3)
    assert largest_batch(100.0, 10.0, 3.0) == 30
    assert largest_batch(5.0, 10.0, 3.0) == 0
    with pytest.raises(ValueError, match="two distinct"):
        fit_line([2, 2], [1, 1])


def test_tiny_run(tmp_path):
    out = tmp_path / "memory"
    main(["--tiny", "--configs", "cifar", "--batches", "1", "2", "--iterations", "1",
          "--quiet", "--out", str(out)])  # fmt: skip
    with out.with_suffix(".csv").open() as f:
        values = {(r["call"], r["metric"], int(r["batch"])): float(r["value"])
                  for r in csv.DictReader(f)}  # fmt: skip
    P = values[("", "parameters", 0)]
    # Adam's first step allocates its two moments and, foreach, the scratch of one more set
    assert values[("adam", "peak_bytes", 0)] >= 8 * P
    for call in ("train", "mmps_cg1"):
        slope = values[(call, "bytes_per_sample", 0)]
        assert slope > 0
        fixed = values[(call, "fixed_bytes", 0)]
        assert values[(call, "predicted_peak_bytes", 256)] >= fixed + 256 * slope - 1
    assert values[("train", "beside_bytes", 0)] == 16 * P  # weights, gradients, 2 moments
    assert values[("train", "fits_H100_80GB", 256)] == 1
