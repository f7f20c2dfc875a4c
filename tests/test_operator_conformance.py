r"""One conformance test of the :class:`emdm.operators.LinearOperator` contract over every
operator: the adjoint, shapes, slicing, repetition, moves and batch independence, in float64
on odd sizes, per-sample and shared where an operator has both."""

import inspect

import pytest
import torch

import emdm.operators as ops
from emdm.operators import (
    AutogradAdjoint,
    Bicubic,
    Blur,
    DenseOperator,
    Downsample,
    Identity,
    LinearOperator,
    MaskOperator,
    MRIOperator,
    box_mask,
    gaussian_kernel,
    motion_kernel,
    random_mask,
)

B = 3  # the batch: slices [1:3] and index tensors need three samples
DT = torch.float64


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _rand(*shape, seed=0):
    return torch.rand(shape, generator=_g(seed), dtype=DT)


# name -> (a builder of the operator, the input shape (B, *)); built lazily, in float64
CASES = {
    "dense-per-sample": (lambda: DenseOperator(_rand(B, 5, 7) - 0.5), (B, 7)),
    "dense-shared": (lambda: DenseOperator(_rand(5, 21) - 0.5, (3, 7)), (B, 3, 7)),
    "dense-per-sample.T": (lambda: DenseOperator(_rand(B, 5, 7) - 0.5, (7, 1)).T, (B, 5)),
    "mask-per-sample": (lambda: MaskOperator(_rand(B, 1, 5, 7) > 0.4), (B, 2, 5, 7)),
    "mask-per-sample-float": (lambda: MaskOperator(_rand(B, 9)), (B, 9)),
    "mask-shared": (lambda: MaskOperator(_rand(1, 1, 5, 7) > 0.4), (B, 2, 5, 7)),
    "mask-shared-2d": (lambda: MaskOperator(_rand(5, 7) > 0.4, shared=True), (B, 2, 5, 7)),
    "box-mask": (lambda: box_mask(B, size=9, box=3, margin=2, generator=_g(1)), (B, 2, 9, 9)),
    "random-mask": (lambda: random_mask(B, size=7, fraction=0.5, generator=_g(2)), (B, 1, 7, 7)),
    "identity": (lambda: Identity(), (B, 2, 5)),
    "blur-gaussian": (lambda: Blur(gaussian_kernel(5, 1.2, DT)), (B, 2, 7, 9)),
    "blur-motion": (lambda: Blur(motion_kernel(5, 0.5, _g(3), DT)), (B, 1, 9, 7)),
    "blur-per-sample": (lambda: Blur(_rand(B, 3, 3)), (B, 2, 5, 7)),
    "blur-per-sample.T": (lambda: Blur(_rand(B, 5, 5)).T, (B, 1, 7, 6)),
    "downsample": (lambda: Downsample(3), (B, 2, 9, 6)),
    "downsample.T": (lambda: Downsample(3).T, (B, 2, 3, 2)),
    "bicubic": (lambda: Bicubic(3), (B, 1, 9, 12)),
    "mri-per-sample": (lambda: MRIOperator((_rand(B, 9) > 0.5).to(DT), "ref"), (B, 6, 9)),
    "mri-shared-bool": (lambda: MRIOperator(_rand(9) > 0.5, "ref"), (B, 6, 9)),
    "mri-per-sample.T": (lambda: MRIOperator(_rand(B, 7) > 0.5, "ref").T, (B, 5, 7, 2)),
}


def _held_tensors(obj, seen=None):
    r"""Every tensor an operator holds, found by walking its attributes (and those of the
    operators, lists, tuples and dicts in them), independently of `LinearOperator.to`."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _held_tensors(v, seen)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _held_tensors(v, seen)]
    if isinstance(obj, LinearOperator):
        return [t for v in vars(obj).values() for t in _held_tensors(v, seen)]
    return []


@pytest.mark.parametrize("name", list(CASES))
def test_operator_conformance(name):
    make, shape = CASES[name]
    A = make()
    g = _g(10)
    x = torch.randn(shape, generator=g, dtype=DT)
    Ax = A(x)

    # shapes: A x, A^T u, both ways
    assert A.out_shape(shape) == tuple(Ax.shape)
    assert A.in_shape_of(tuple(Ax.shape)) == shape
    assert A.T.out_shape(tuple(Ax.shape)) == shape and A.T.in_shape_of(shape) == Ax.shape

    # the adjoint: <A x, u> = <x, A^T u>, and A^T u is autograd's VJP
    u = torch.randn(Ax.shape, generator=g, dtype=DT)
    ATu = A.T(u)
    assert ATu.shape == x.shape
    torch.testing.assert_close((Ax * u).sum(), (x * ATu).sum())
    torch.testing.assert_close(ATu, AutogradAdjoint(A, x)(u))
    torch.testing.assert_close(A.T.T(x), Ax)
    assert isinstance(A.T, LinearOperator)

    # batch independence: (A x)_i depends on x_i alone
    x2 = x.clone()
    x2[1] += torch.randn(shape[1:], generator=g, dtype=DT)
    changed = (A(x2) - Ax).flatten(1).abs().amax(1) > 0
    assert changed.tolist() == [False, True, False]

    # slicing: a per-sample operator is restricted, a shared one is itself (equal up to the
    # rounding of a matmul over another batch size)
    index = torch.tensor([2, 0])
    if A.batch_size is None:
        assert A[1:3] is A and A[index] is A and A.repeat(2) is A
    else:
        assert A.batch_size == B and A[1:3].batch_size == 2 and A[1:3] is not A
        assert A.T.batch_size == B and A.T[1:3].batch_size == 2
    torch.testing.assert_close(A[1:3](x[1:3]), Ax[1:3])
    torch.testing.assert_close(A[index](x[index]), Ax[index])
    keep = torch.tensor([True, False, True])
    torch.testing.assert_close(A[keep](x[keep]), Ax[keep])
    torch.testing.assert_close(A[1](x[1:2]), Ax[1:2])
    torch.testing.assert_close(A[1:3].T(u[1:3]), ATu[1:3])

    # repeat(n): the operator of y.repeat(n, ...), order A_0..A_{B-1}, A_0..
    n = 3
    A_rep = A.repeat(n)
    assert A_rep.batch_size == (None if A.batch_size is None else n * B)
    rep = (n,) + (1,) * (x.ndim - 1)
    torch.testing.assert_close(A_rep(x.repeat(rep)), Ax.repeat(n, *(1,) * (Ax.ndim - 1)))
    torch.testing.assert_close(A_rep.T(u.repeat(n, *(1,) * (u.ndim - 1))), ATu.repeat(rep))

    # to(): a moved copy; the original is untouched and every tensor it holds moves
    before = [(t.dtype, t.device) for t in _held_tensors(A)]
    A32 = A.to(torch.float32)
    assert [(t.dtype, t.device) for t in _held_tensors(A)] == before
    for t, (dtype, _) in zip(_held_tensors(A32), before, strict=True):
        assert t.dtype == (torch.float32 if dtype.is_floating_point else dtype)
    A64 = A32.to(dtype=torch.float64)
    for t, (dtype, _) in zip(_held_tensors(A64), before, strict=True):
        assert t.dtype == (torch.float64 if dtype.is_floating_point else dtype)
    torch.testing.assert_close(A64(x), Ax, rtol=1e-6, atol=1e-6)  # float32-rounded entries
    A_cpu = A.to("cpu")
    torch.testing.assert_close(A_cpu(x), Ax, rtol=0, atol=0)
    torch.testing.assert_close(A_cpu.T(u), ATu, rtol=0, atol=0)
    A_meta = A.to("meta")  # a device that every tensor must reach, without a GPU
    assert all(t.device.type == "meta" for t in _held_tensors(A_meta))
    assert all(t.device.type == "cpu" for t in _held_tensors(A))
    assert A.to("cpu", torch.float32).batch_size == A.batch_size


def test_every_operator_has_a_conformance_case():
    def subclasses(cls):
        return {cls} | {c for sub in cls.__subclasses__() for c in subclasses(sub)}

    defined = {
        cls
        for cls in subclasses(LinearOperator)
        if cls.__module__.startswith(ops.__name__ + ".") and not inspect.isabstract(cls)
    }
    covered = {type(make()) for make, _ in CASES.values()}
    assert defined - covered == set(), "add a case to CASES for each of these operators"
    public = {getattr(ops, n) for n in ops.__all__}
    assert {c for c in defined if not c.__name__.startswith("_")} <= public


def test_out_shape_rejects_a_batch_that_does_not_match_a_per_sample_operator():
    for A, shape in [
        (MaskOperator(torch.ones(3, 1, 4, 4)), (2, 1, 4, 4)),
        (MaskOperator(torch.ones(5, 6)), (3, 2, 5, 6)),  # a shared (H, W) mask needs shared=True
        (Blur(torch.ones(3, 3, 3)), (2, 1, 5, 5)),
        (DenseOperator(torch.ones(3, 4, 10)), (2, 10)),
        (MRIOperator(torch.ones(3, 8)), (2, 4, 8)),
    ]:
        with pytest.raises(ValueError, match=r"one per sample|expects images|does not broadcast"):
            A.out_shape(shape)
    with pytest.raises(ValueError, match="positive integer"):
        Identity().repeat(0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Blur(gaussian_kernel(3, 1.0)),
        lambda: Blur(torch.rand((5, 3, 3), generator=_g(4)) / 9),
        lambda: Downsample(2),
        lambda: Bicubic(2),
        lambda: lambda x: x[..., ::2, 1::2],  # a plain callable: shared, adjoint by autograd
    ],
    ids=["blur", "blur-per-sample", "downsample", "bicubic", "plain-callable"],
)
def test_blur_and_super_resolution_run_in_an_e_step(make):
    # e_step restricts A to each batch and moves it: blur and SR used to raise TypeError there
    from emdm import DPLR, GaussianDenoiser, VESchedule
    from emdm.em import EMConfig, e_step
    from emdm.observation import Observation

    N, shape = 5, (1, 6, 6)
    A = make()
    D = 36
    prior = GaussianDenoiser(torch.zeros(shape), DPLR(torch.full((D,), 0.5)))
    x = torch.randn((N, *shape), generator=_g(5))
    Ax = A(x)
    y = Ax + 0.1 * torch.randn(Ax.shape, generator=_g(6))
    cfg = EMConfig(steps=4, sample_batch=2, cg_iterations=2, seed=0)  # three batches: 2, 2, 1
    obs, schedule = Observation(A, y, 0.1**2), VESchedule(1e-3, 10.0)
    if not isinstance(A, ops.LinearOperator):  # an Observation of it cannot be batched
        with pytest.raises(ValueError, match="cannot be sliced or moved"):
            e_step(prior, obs, cfg, schedule, mean=torch.zeros(shape), generator=_g(7))
        return
    samples, _ = e_step(prior, obs, cfg, schedule, mean=torch.zeros(shape), generator=_g(7))
    assert samples.shape == (N, *shape)
    assert torch.isfinite(samples).all()
    # the observations pull the samples: closer to x than prior draws are
    assert (A(samples) - y).square().mean() < (A(torch.zeros_like(x)) - y).square().mean()
