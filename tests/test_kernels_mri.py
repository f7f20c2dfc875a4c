import numpy as np
import pytest
import torch

from emdm import MRIOperator
from emdm.kernels import mri
from emdm.kernels.mri import (
    mri_adjoint,
    mri_adjoint_reference,
    mri_adjoint_triton,
    mri_forward,
    mri_forward_reference,
    mri_forward_triton,
)
from emdm.operators import AutogradAdjoint

EVEN = [(2, 8, 6), (1, 4, 8), (1, 2, 10)]  # H/2 + W/2 odd and even
ODD = [(2, 5, 6), (1, 6, 7)]
# Triton runs natively on CUDA tensors, else on CPU tensors through its interpreter (conftest)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def draw(shape, gen, dtype=torch.float64):
    B, H, W = shape
    x = torch.randn(shape, generator=gen, dtype=dtype)
    y = torch.randn((B, H, W, 2), generator=gen, dtype=dtype)
    mask = torch.rand((B, W), generator=gen) < 0.5
    mask[:, 0] = True  # at least one line per sample
    return x.to(DEVICE), y.to(DEVICE), mask.to(DEVICE)


def centred(z, inverse=False):
    fft = torch.fft.ifft2 if inverse else torch.fft.fft2
    z = torch.fft.ifftshift(z, dim=(-2, -1))
    return torch.fft.fftshift(fft(z, norm="ortho"), dim=(-2, -1))


@pytest.mark.parametrize("shape", EVEN + ODD)
def test_reference_matches_numpy(shape, gen):
    x, y, mask = draw(shape, gen)
    x, y, mask = x.cpu(), y.cpu(), mask.cpu()
    m = mask.numpy()[:, None, :]  # (B, 1, W)
    axes = (-2, -1)
    F_x = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x.numpy(), axes), norm="ortho"), axes)
    Ax = m * F_x
    Ax = np.stack([Ax.real, Ax.imag], -1)  # (B, H, W, 2)
    np.testing.assert_allclose(mri_forward_reference(x, mask).numpy(), Ax, atol=1e-12)
    y_c = m * (y[..., 0].numpy() + 1j * y[..., 1].numpy())
    ATy = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(y_c, axes), norm="ortho"), axes).real
    np.testing.assert_allclose(mri_adjoint_reference(y, mask).numpy(), ATy, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", EVEN)
def test_triton_matches_reference(shape, dtype, gen):
    x, y, mask = draw(shape, gen, dtype)
    B, H, W = shape
    # NaN-filled outputs: an element a kernel does not write fails the comparison
    out = torch.full((B, H, W, 2), float("nan"), dtype=dtype, device=DEVICE)
    Ax = mri_forward_triton(x, mask, out=out)
    assert Ax is out
    torch.testing.assert_close(Ax, mri_forward_reference(x, mask), **TOL[dtype])
    out = torch.full((B, H, W), float("nan"), dtype=dtype, device=DEVICE)
    ATy = mri_adjoint_triton(y, mask, out=out)
    assert ATy is out
    torch.testing.assert_close(ATy, mri_adjoint_reference(y, mask), **TOL[dtype])
    # each stage on its own, into NaN-filled buffers: c ⊙ x + 0i, σ ⊙ M ⊙ z, c ⊙ Re z
    c = (-1.0) ** (torch.arange(H, device=DEVICE)[:, None] + torch.arange(W, device=DEVICE))
    sigma = (-1) ** (H // 2 + W // 2) * c  # (H, W)
    z = torch.full((B, H, W, 2), float("nan"), dtype=dtype, device=DEVICE)
    expected = torch.stack([c * x, torch.zeros_like(x)], -1)
    torch.testing.assert_close(mri._modulate(x, z), expected, rtol=0, atol=0)
    z = torch.full((B, H, W, 2), float("nan"), dtype=dtype, device=DEVICE)
    expected = (sigma * mask[:, None, :]).unsqueeze(-1) * y
    torch.testing.assert_close(mri._spectral(y, mask.to(dtype), z), expected, rtol=0, atol=0)
    out = torch.full((B, H, W), float("nan"), dtype=dtype, device=DEVICE)
    torch.testing.assert_close(mri._demodulate(y, out), c * y[..., 0], rtol=0, atol=0)


def test_triton_shared_mask_and_strided_inputs(gen):
    x, y, mask = draw((3, 4, 6), gen)
    mask = mask[0]  # (W,), shared
    x_t = x.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous
    y_t = y.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)
    assert not x_t.is_contiguous() and not y_t.is_contiguous()
    expected = mri_forward_reference(x, mask.expand(3, -1))
    torch.testing.assert_close(mri_forward(x_t, mask, provider="triton"), expected)
    expected = mri_adjoint_reference(y, mask.expand(3, -1))
    torch.testing.assert_close(mri_adjoint(y_t, mask, provider="triton"), expected)


@pytest.mark.parametrize("shape", ODD)
def test_triton_falls_back_on_odd_sizes(shape, gen):
    x, y, mask = draw(shape, gen)
    out = torch.full((*shape, 2), float("nan"), dtype=x.dtype, device=DEVICE)
    torch.testing.assert_close(
        mri_forward_triton(x, mask, out=out), mri_forward_reference(x, mask), rtol=0, atol=0
    )
    torch.testing.assert_close(
        mri_adjoint(y, mask, provider="triton"), mri_adjoint_reference(y, mask), rtol=0, atol=0
    )


@pytest.mark.parametrize("shape", [(1, 4, 6), (1, 4, 8), (1, 5, 6), (1, 4, 7)])
def test_sign_identity(shape, gen):
    # F_c x = σ ⊙ fft2(c ⊙ x) with c = (-1)^(h + w), σ = (-1)^(H/2 + W/2) c: even sizes only,
    # which is why odd ones take the reference
    x, _, _ = draw(shape, gen)
    _, H, W = shape
    c = (-1.0) ** (torch.arange(H, device=DEVICE)[:, None] + torch.arange(W, device=DEVICE))
    sigma = (-1) ** (H // 2 + W // 2) * c  # (H, W)
    even = H % 2 == 0 and W % 2 == 0
    assert torch.allclose(sigma * torch.fft.fft2(c * x, norm="ortho"), centred(x)) == even


@pytest.mark.parametrize("provider", ["ref", "triton"])
@pytest.mark.parametrize("shape", [(2, 8, 6), (2, 5, 6)])
def test_operator_adjoint_and_vjp(shape, provider, gen):
    x, y, mask = draw(shape, gen)
    A = MRIOperator(mask, provider=provider)
    Ax, ATy = A(x), A.T(y)
    assert A.out_shape(x.shape) == tuple(Ax.shape) == (*shape, 2)
    assert ATy.shape == x.shape
    # <A x, y> = <x, A^T y>
    lhs, rhs = (Ax * y).sum(), (x * ATy).sum()
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    # A^T is the VJP of the reference forward
    (vjp,) = torch.autograd.grad(mri_forward_reference(x.requires_grad_(), mask), x, y)
    torch.testing.assert_close(ATy, vjp, rtol=1e-12, atol=1e-12)
    # and the Triton path is differentiable too: its VJP is A^T
    torch.testing.assert_close(AutogradAdjoint(A, x)(y), ATy, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("provider", ["ref", "triton"])
def test_normal_operator(provider, gen):
    x, y, mask = draw((2, 6, 8), gen)
    W = 8
    # Re drops half of what A^T A would keep on complex x: with M~ the mask reflected through
    # the zero frequency (column j <-> W - j), A^T A = F_c^{-1} ((M + M~) / 2) F_c on real x
    mask_flip = mask[:, (-torch.arange(W, device=DEVICE)) % W]
    assert not torch.equal(mask, mask_flip)  # a mask where the halving shows
    A = MRIOperator(mask, provider=provider)
    weight = (mask.double() + mask_flip.double())[:, None, :] / 2  # (B, 1, W)
    expected = centred(weight * centred(x.to(torch.complex128)), inverse=True)
    torch.testing.assert_close(A.T(A(x)), expected.real)
    # a symmetric mask makes A^T A an orthogonal projection: A A^T A = A
    A = MRIOperator(mask | mask_flip, provider=provider)
    torch.testing.assert_close(A(A.T(A(x))), A(x))
    # but A A^T is not M ⊙ (.) on all of R^(B, H, W, 2): A's range is Hermitian-symmetric
    assert not torch.allclose(A(A.T(y)), (mask | mask_flip)[:, None, :, None] * y)
    # without a mask, A^T A = I and A is an isometry (F_c unitary, x real)
    full = MRIOperator(torch.ones(2, W, dtype=torch.float64, device=DEVICE), provider=provider)
    torch.testing.assert_close(full.T(full(x)), x)
    torch.testing.assert_close(full(x).square().sum(), x.square().sum())
    # unobserved columns are zeros, observed ones are not (real parts: some imaginary parts of
    # a real image's spectrum vanish)
    Ax = A(x).transpose(1, 2)  # (B, W, H, 2)
    assert (Ax[~(mask | mask_flip)] == 0).all() and (Ax[mask | mask_flip][..., 0] != 0).all()


def test_operator_slicing_and_repr(gen):
    x, _, mask = draw((3, 4, 6), gen)
    A = MRIOperator(mask)
    torch.testing.assert_close(A[1:3](x[1:3]), A(x)[1:3])
    torch.testing.assert_close(A[[2, 0]](x[[2, 0]]), A(x)[[2, 0]])
    shared = MRIOperator(mask[0])
    assert shared[1:3] is shared
    assert repr(A) == "MRIOperator(mask=(3, 6))"
    assert repr(A.T) == "MRIOperator(mask=(3, 6)).T"


def test_bad_inputs(gen):
    x, y, mask = draw((2, 4, 6), gen)
    A = MRIOperator(mask.double())
    with pytest.raises(ValueError, match=r"x has dtype torch.float32.*torch.float64"):
        A(x.float())
    with pytest.raises(ValueError, match=r"y has dtype torch.float32.*torch.float64"):
        A.T(y.float())
    with pytest.raises(ValueError, match=r"images of shape \(2, H, 6\)"):
        A.out_shape((2, 4, 5))
    with pytest.raises(ValueError, match=r"images of shape \(2, H, 6\)"):
        A.out_shape((3, 4, 6))
    with pytest.raises(ValueError, match="mask must have shape"):
        MRIOperator(torch.ones(2, 3, 6))
    for provider in ("ref", "triton"):
        with pytest.raises(ValueError, match=r"x must have shape \(B, H, W\)"):
            mri_forward(x[0], mask, provider)
        with pytest.raises(ValueError, match=r"y must have shape \(B, H, W, 2\)"):
            mri_adjoint(x, mask, provider)
        with pytest.raises(ValueError, match=r"mask must have shape \(2, 6\) or \(6,\)"):
            mri_forward(x, mask[:, :5], provider)
        with pytest.raises(ValueError, match=r"mask must have shape \(2, 6\) or \(6,\)"):
            mri_adjoint(y, mask[:1], provider)
        with pytest.raises(ValueError, match="float32 or float64"):
            mri_forward(x.half(), mask, provider)
    message = r"out has dtype torch.float32, but x has dtype torch.float64"
    with pytest.raises(ValueError, match=message):
        mri_forward_triton(x, mask, out=torch.empty(2, 4, 6, 2, device=DEVICE))
    message = r"out has dtype torch.float64, but y has dtype torch.float32"
    with pytest.raises(ValueError, match=message):
        mri_adjoint_triton(
            y.float(), mask, out=torch.empty(2, 4, 6, dtype=torch.float64, device=DEVICE)
        )
    with pytest.raises(ValueError, match=r"out must have shape \(2, 4, 6\)"):
        mri_adjoint_triton(
            y, mask, out=torch.empty(2, 4, 6, 2, dtype=torch.float64, device=DEVICE)
        )


def test_dispatch_by_environment(gen, monkeypatch):
    x, y, mask = draw((1, 4, 6), gen)
    calls = []

    def spy(name):
        return lambda x, mask: calls.append(name) or torch.zeros((*x.shape, 2))

    monkeypatch.setattr(mri, "mri_forward_reference", spy("ref"))
    monkeypatch.setattr(mri, "mri_forward_triton", spy("triton"))
    monkeypatch.setenv("EMDM_KERNELS", "ref")
    mri_forward(x, mask)
    monkeypatch.setenv("EMDM_KERNELS", "triton")
    mri_forward(x, mask)
    monkeypatch.setenv("EMDM_KERNELS", "auto")
    mri_forward(x, mask)  # the kernel on CUDA tensors, else the reference
    assert calls == ["ref", "triton", "triton" if DEVICE.type == "cuda" else "ref"]
    monkeypatch.setenv("EMDM_KERNELS", "cuda")
    with pytest.raises(ValueError, match=r"one of \('ref', 'triton', 'auto'\)"):
        mri_adjoint(y, mask)


def test_without_triton(gen, monkeypatch):
    x, y, mask = draw((1, 4, 6), gen)
    monkeypatch.setattr(mri, "triton", None)
    with pytest.raises(RuntimeError, match="needs triton"):
        mri_forward_triton(x, mask)
    with pytest.raises(RuntimeError, match="needs triton"):
        mri_adjoint_triton(y, mask)
