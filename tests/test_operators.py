import pytest
import torch

from emdm import DenseOperator, Identity, MaskOperator
from emdm.operators import AutogradAdjoint, transpose


def make_operators(gen):
    B = 3
    dt = torch.float64
    return [
        (DenseOperator(torch.randn((B, 4, 10), generator=gen, dtype=dt)), (B, 10)),
        (DenseOperator(torch.randn((4, 12), generator=gen, dtype=dt), (3, 2, 2)), (B, 3, 2, 2)),
        (MaskOperator(torch.rand((B, 1, 5, 6), generator=gen, dtype=dt) > 0.5), (B, 2, 5, 6)),
        (MaskOperator(torch.rand((5, 6), generator=gen) > 0.3, shared=True), (B, 2, 5, 6)),
        (Identity(), (B, 7)),
    ]


def test_adjoint_identity_and_autograd(gen):
    for A, shape in make_operators(gen):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        Ax = A(x)
        u = torch.randn(Ax.shape, generator=gen, dtype=torch.float64)
        ATu = A.T(u)
        assert ATu.shape == x.shape, A
        # <A x, u> = <x, A^T u>
        torch.testing.assert_close((Ax * u).sum(), (x * ATu).sum())
        # .T matches the vector-Jacobian product of A
        torch.testing.assert_close(ATu, AutogradAdjoint(A, x)(u))
        assert A.out_shape(shape) == tuple(Ax.shape)
        assert A.T.T is A


def test_transpose_of_plain_callable(gen):
    W = torch.randn((6, 4), generator=gen, dtype=torch.float64)

    def A(x):  # no .T: the adjoint comes from autograd
        return x @ W.T

    x = torch.randn((2, 4), generator=gen, dtype=torch.float64)
    u = torch.randn((2, 6), generator=gen, dtype=torch.float64)
    A_T = transpose(A, x)
    torch.testing.assert_close(A_T(u), u @ W)
    torch.testing.assert_close(A_T(u), A_T(u))  # the graph is retained for reuse
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        A_T(torch.ones(3, 6, dtype=torch.float64))


def test_transpose_rejects_non_differentiable_callable():
    with pytest.raises(ValueError, match="does not depend on its input"):
        AutogradAdjoint(lambda x: torch.ones(2, 3), torch.ones(2, 3))


def test_dense_operator_shape_checks():
    A = DenseOperator(torch.ones(3, 4, 10))
    with pytest.raises(ValueError, match=r"inputs of shape \(B, \*\(10,\)\)"):
        A.out_shape((3, 9))
    with pytest.raises(ValueError, match="in_shape"):
        DenseOperator(torch.ones(3, 4, 10), (3, 3))
    with pytest.raises(ValueError, match="one per sample"):
        A.out_shape((2, 10))
    with pytest.raises(ValueError, match="matrix must have shape"):
        DenseOperator(torch.ones(10))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_operators_holding_a_tensor_reject_non_finite_entries_at_construction(bad, monkeypatch):
    # each used to give non-finite observations and posterior samples, silently
    from emdm.operators import Blur, MRIOperator

    def corrupt(shape):
        t = torch.ones(shape)
        t.view(-1)[1] = bad
        return t

    cases = [
        (DenseOperator, (3, 4, 10), r"the matrix of A of shape \(3, 4, 10\) has"),
        (DenseOperator, (4, 10), r"the matrix of A of shape \(4, 10\) has"),
        (MaskOperator, (3, 1, 4, 4), r"the mask of A of shape \(3, 1, 4, 4\) has"),
        (MRIOperator, (2, 8), r"the mask of A of shape \(2, 8\) has"),
        (Blur, (3, 3), r"the blur kernel of shape \(3, 3\) has"),
    ]
    for make, shape, match in cases:
        with pytest.raises(ValueError, match=match + " .* expected finite values"):
            make(corrupt(shape))
        make(torch.ones(shape))
    MRIOperator(torch.ones(8, dtype=torch.bool))  # a bool mask has nothing to check

    # restrictions and copies of a checked operator (one per E-step batch) are not checked again
    import emdm.operators.dense as dense

    seen = []
    monkeypatch.setattr(dense, "check_finite", lambda x, name: seen.append(name))
    A = DenseOperator(torch.ones(3, 4, 10))
    assert A[1:].matrix.shape == (2, 4, 10) and A.to(torch.float64).matrix.dtype == torch.float64
    assert seen == ["the matrix of A"]


def test_mask_operator_shape_checks():
    A = MaskOperator(torch.ones(3, 1, 4, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        A.out_shape((2, 1, 4, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        A.out_shape((3, 1, 5, 4))


@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 1, 6, 5)])
def test_blur_adjoint_autograd_and_closed_forms(gen, shape):
    from emdm.operators import Blur, gaussian_kernel

    kernel = torch.rand((5, 5), generator=gen, dtype=torch.float64)
    A = Blur(kernel)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    u = torch.randn(shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close((A(x) * u).sum(), (x * A.T(u)).sum())
    torch.testing.assert_close(A.T(u), AutogradAdjoint(A, x)(u))
    # a normalized kernel keeps a constant image (reflect padding adds no border)
    g = gaussian_kernel(5, 1.0, torch.float64)
    torch.testing.assert_close(g.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(g, g.T)
    torch.testing.assert_close(Blur(g)(torch.full(shape, 0.7, dtype=torch.float64)),
                               torch.full(shape, 0.7, dtype=torch.float64))  # fmt: skip
    # a unit kernel is the identity; a shifted delta shifts the image (cross-correlation)
    delta = torch.zeros((3, 3), dtype=torch.float64)
    delta[1, 1] = 1
    torch.testing.assert_close(Blur(delta)(x), x)
    delta = torch.zeros((3, 3), dtype=torch.float64)
    delta[1, 2] = 1
    torch.testing.assert_close(Blur(delta)(x)[..., :-1], x[..., 1:])
    with pytest.raises(ValueError, match="k odd"):
        Blur(torch.ones(4, 4))
    with pytest.raises(ValueError, match="needs H and W"):
        Blur(torch.ones(9, 9))(torch.ones(1, 1, 4, 4))


def test_inpainting_masks():
    from emdm.operators import box_mask, random_mask

    A = box_mask(3, size=32, box=8, margin=4, generator=torch.Generator().manual_seed(0))
    m = A.mask
    assert m.shape == (3, 1, 32, 32)
    assert ((1 - m).sum(dim=(1, 2, 3)) == 64).all()  # one 8 x 8 box each
    rows = (m[:, 0] == 0).any(dim=2)  # (B, H): rows the box covers
    first = rows.float().argmax(dim=1)
    assert (first >= 4).all() and (first < 32 - 4 - 8).all()
    again = box_mask(3, size=32, box=8, margin=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m, again.mask)
    R = random_mask(2, size=16, fraction=0.9, generator=torch.Generator().manual_seed(1))
    assert ((1 - R.mask).sum(dim=(1, 2, 3)) == int(0.9 * 256)).all()
    assert not torch.equal(R.mask[0], R.mask[1])
    with pytest.raises(ValueError, match="does not fit"):
        box_mask(1, size=32, box=30, margin=4)
    with pytest.raises(ValueError, match="fraction"):
        random_mask(1, fraction=1.0)


def test_downsample_adjoint_and_averages(gen):
    from emdm.operators import Downsample

    A = Downsample(4)
    x = torch.randn((2, 3, 8, 12), generator=gen, dtype=torch.float64)
    u = torch.randn((2, 3, 2, 3), generator=gen, dtype=torch.float64)
    assert A.out_shape(tuple(x.shape)) == (2, 3, 2, 3)
    torch.testing.assert_close((A(x) * u).sum(), (x * A.T(u)).sum())
    torch.testing.assert_close(A.T(u), AutogradAdjoint(A, x)(u))
    torch.testing.assert_close(A(x)[0, 0, 1, 2], x[0, 0, 4:8, 8:12].mean())
    with pytest.raises(ValueError, match="multiples of 4"):
        A(torch.ones(1, 1, 6, 8))


def test_bicubic_matches_torch_antialiased_interpolate(gen):
    import torch.nn.functional as F

    from emdm.operators import Bicubic

    A = Bicubic(4)
    x = torch.randn((2, 3, 32, 24), generator=gen, dtype=torch.float64)
    expected = F.interpolate(x, size=(8, 6), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(A(x), expected)
    u = torch.randn((2, 3, 8, 6), generator=gen, dtype=torch.float64)
    torch.testing.assert_close((A(x) * u).sum(), (x * A.T(u)).sum())
    torch.testing.assert_close(A.T(u), AutogradAdjoint(A, x)(u))
    const = torch.full((1, 1, 16, 16), 0.3, dtype=torch.float64)
    torch.testing.assert_close(A(const), torch.full((1, 1, 4, 4), 0.3, dtype=torch.float64))


def test_motion_kernel():
    from emdm.operators import motion_kernel

    k = motion_kernel(61, 0.5, torch.Generator().manual_seed(0), torch.float64)
    assert k.shape == (61, 61) and (k >= 0).all()
    torch.testing.assert_close(k.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(k, motion_kernel(61, 0.5, torch.Generator().manual_seed(0), torch.float64))
    assert not torch.equal(
        k, motion_kernel(61, 0.5, torch.Generator().manual_seed(1), torch.float64)
    )

    def spread(kernel):  # the eigenvalues of the mass's second-moment matrix
        i = torch.arange(kernel.shape[0], dtype=torch.float64)
        ii, jj = torch.meshgrid(i, i, indexing="ij")
        pts = torch.stack([ii.flatten(), jj.flatten()], 1)
        w = kernel.flatten()
        mean = w @ pts
        c = (pts - mean).T @ ((pts - mean) * w[:, None])
        return torch.linalg.eigvalsh(c)

    line = spread(motion_kernel(61, 0.0, torch.Generator().manual_seed(2), torch.float64))
    assert line[0] < 0.25 and line[1] > 10  # a segment: one thin direction (bilinear: ~1/6)
    curve = spread(motion_kernel(61, 1.0, torch.Generator().manual_seed(2), torch.float64))
    assert curve[0] > 1  # a curved path fills both directions
    with pytest.raises(ValueError, match="odd integer"):
        motion_kernel(60)


def test_mask_operator_restricts_per_sample_masks():
    from emdm.operators import MaskOperator

    mask = (torch.arange(4 * 3 * 3).reshape(4, 1, 3, 3) % 3 == 0).float()
    A = MaskOperator(mask)
    x = torch.randn(2, 2, 3, 3)
    assert torch.equal(A[1:3](x), mask[1:3] * x)
    shared = MaskOperator(mask[:1])
    assert shared[1:3] is shared
    assert A.to(torch.float64).mask.dtype == torch.float64
