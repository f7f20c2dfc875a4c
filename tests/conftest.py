import pytest
import torch


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def random_dplr(N, r, gen, batch=(), dtype=torch.float64):
    D = torch.rand((*batch, N), generator=gen, dtype=dtype) + 0.5
    U = torch.randn((*batch, N, r), generator=gen, dtype=dtype) / r**0.5
    return D, U
