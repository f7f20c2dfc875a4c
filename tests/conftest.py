import os

# Triton kernels run on CPU tensors through Triton's interpreter, which must be chosen before
# triton is imported; a CUDA machine runs the same tests natively with TRITON_INTERPRET=0.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def random_dplr(N, r, gen, batch=(), dtype=torch.float64):
    D = torch.rand((*batch, N), generator=gen, dtype=dtype) + 0.5
    U = torch.randn((*batch, N, r), generator=gen, dtype=dtype) / r**0.5
    return D, U
