import os

import pytest
import torch

# Triton kernels run natively on CUDA tensors where there is a GPU, and elsewhere on CPU
# tensors through Triton's interpreter, which must be chosen before triton is first imported
# (torch does not import it)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# torch's default thread count in every test: "auto" would measure /proc/stat for 0.1 s in each
# script a test runs, and change the thread count of the whole session with the load
os.environ.setdefault("EMDM_THREADS", "0")


@pytest.fixture
def kernel_device():
    r"""Where the Triton kernel tests run: CUDA natively, else the CPU, interpreted."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def random_dplr(N, r, gen, batch=(), dtype=torch.float64):
    D = torch.rand((*batch, N), generator=gen, dtype=dtype) + 0.5
    U = torch.randn((*batch, N, r), generator=gen, dtype=dtype) / r**0.5
    return D, U


def gaussian_problem(gen, B, D, M, rank=2, dtype=torch.float64):
    r"""A random linear-Gaussian problem: the prior N(μ, Σ_x) on R^D, Σ_x a DPLR of rank
    `rank`, with its exact denoiser, and B observation matrices A (B, M, D), observations y
    (B, M) and states x_t (B, D). Returns (denoiser, Σ_x, μ, A, y, x_t)."""
    from emdm import DPLR, GaussianDenoiser

    cov_x = DPLR(*random_dplr(D, rank, gen, dtype=dtype))
    mu = torch.randn(D, generator=gen, dtype=dtype)
    A = torch.randn((B, M, D), generator=gen, dtype=dtype)
    y = torch.randn((B, M), generator=gen, dtype=dtype)
    x_t = torch.randn((B, D), generator=gen, dtype=dtype)
    return GaussianDenoiser(mu, cov_x), cov_x, mu, A, y, x_t


def write_fake_inception(path):
    r"""Writes a stand-in for torch-fidelity's Inception-v3 weights file: the entries
    `emdm.metrics.fidelity.inception_weights_path` checks, with their shapes (zeros), not
    the whole network; enough for tests that never run Inception."""
    from emdm.metrics.fidelity import _INCEPTION_ENTRIES

    torch.save({k: torch.zeros(shape) for k, shape in _INCEPTION_ENTRIES.items()}, path)
    return path
