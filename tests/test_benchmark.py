import pytest
import torch

from emdm.benchmark import (
    METHODS,
    TASKS,
    component_masses,
    dense_matrix,
    method,
    shape_mixture,
    task,
    vjps_per_call,
)


def test_shape_mixture_and_tasks():
    g = torch.Generator().manual_seed(0)
    prior = shape_mixture(6, 16, 0.1, g)
    assert prior.means.shape == (6, 256)
    assert prior.means.min() >= -1 and prior.means.max() <= 1
    assert len({tuple(m.tolist()) for m in prior.means}) == 6  # distinct shapes
    again = shape_mixture(6, 16, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(prior.means, again.means)
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    for name, T in TASKS.items():
        if name == "motion":  # a 61 x 61 kernel: images of more than 30 pixels
            assert T.operator(1, 64, g)(torch.ones(1, 1, 64, 64)).shape == (1, 1, 64, 64)
            continue
        A = T.operator(3, 16, g)
        if hasattr(A, "mask"):
            A.mask = A.mask.double()
        M = dense_matrix(A if not hasattr(A, "mask") else type(A)(A.mask[:1]), 16)
        torch.testing.assert_close((M @ x[0].flatten()).reshape(A(x[:1]).shape[1:]), A(x[:1])[0])
        assert T.sigma_y > 0, name
    with pytest.raises(ValueError, match="task must be one of"):
        task("deblur")


def test_methods_and_masses():
    g = torch.Generator().manual_seed(0)
    prior = shape_mixture(4, 16, 0.1, g)
    A = TASKS["sr4"].operator(2, 16, g)
    y = torch.zeros(2, 1, 4, 4)
    for name in METHODS:
        out = method(name, prior, A, y, 0.01)(torch.randn(2, 1, 16, 16), torch.ones(2))
        assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all(), name
    assert [vjps_per_call(m) for m in METHODS] == [1, 1, 2, 0, 2, 4, 6]
    masses = component_masses(prior.means[[0, 0, 3]] + 0.01, prior.means)
    torch.testing.assert_close(masses, torch.tensor([2 / 3, 0, 0, 1 / 3], dtype=torch.float64))
    with pytest.raises(ValueError, match="method must be one of"):
        method("red-diff", prior, A, y, 0.01)
