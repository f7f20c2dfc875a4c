"""The core on every available device: CPU here, CUDA too on a GPU machine.

The same closed-form checks as test_mmps and test_samplers, with every tensor and generator
on the device, so that a device mismatch anywhere in the library fails here.
"""

import pytest
import torch

from emdm import DPLR, MMPS, DenseOperator, EDMDenoiser, GaussianDenoiser, VESchedule, sample
from emdm.nn import TimeMLP

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_mmps_and_sampler_on_device(device):
    dt = torch.float64
    gen = torch.Generator(device).manual_seed(0)
    B, D, M = 512, 6, 2
    mu = torch.randn(D, generator=gen, dtype=dt, device=device)
    U = 0.5 * torch.randn((D, 2), generator=gen, dtype=dt, device=device)
    cov_x = DPLR(torch.rand(D, generator=gen, dtype=dt, device=device) + 0.2, U)
    A = torch.randn((B, M, D), generator=gen, dtype=dt, device=device)
    y = torch.randn((B, M), generator=gen, dtype=dt, device=device)
    x_t = torch.randn((B, D), generator=gen, dtype=dt, device=device)
    sigma = torch.full((B,), 0.7, dtype=dt, device=device)

    mmps = MMPS(GaussianDenoiser(mu, cov_x), DenseOperator(A), y, 0.01, iterations=2 * M)
    out = mmps(x_t, sigma)
    assert out.device.type == device
    # closed form, computed on the CPU
    S, I = cov_x.dense().cpu(), torch.eye(D, dtype=dt)
    m = mu.cpu() + (S @ torch.linalg.solve(S + 0.49 * I, (x_t.cpu() - mu.cpu()).T)).T
    V = torch.linalg.inv(torch.linalg.inv(S) + I / 0.49)
    Ac = A.cpu()
    C = 0.01 * torch.eye(M, dtype=dt) + Ac @ V @ Ac.mT
    v = torch.linalg.solve(C, (y.cpu() - torch.einsum("bmd,bd->bm", Ac, m))[..., None])
    torch.testing.assert_close(out.cpu(), m + (V @ Ac.mT @ v)[..., 0])

    x1 = 100 * torch.randn((B, D), generator=gen, dtype=dt, device=device)
    for sampler in ("ddpm", "ddim", "pc"):
        x = sample(mmps, x1, VESchedule(), sampler, 8, generator=gen)
        assert x.device.type == device and torch.isfinite(x).all()


@pytest.mark.parametrize("device", DEVICES)
def test_network_mmps_float32_on_device(device):
    torch.manual_seed(0)
    net = EDMDenoiser(TimeMLP(5, emb_features=16, hidden_features=(64, 64)), 16).to(device)
    gen = torch.Generator(device).manual_seed(1)
    B = 64
    A = torch.randn((B, 2, 5), generator=gen, device=device)
    y = torch.randn((B, 2), generator=gen, device=device)
    mmps = MMPS(net, DenseOperator(A), y, 1e-4, iterations=3)
    x1 = 100 * torch.randn((B, 5), generator=gen, device=device)
    x = sample(mmps, x1, VESchedule(1e-3, 10.0), "ddpm", 8, generator=gen)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
