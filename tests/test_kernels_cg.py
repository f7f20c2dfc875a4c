r"""The fused CG iteration (kernels/cg.py): Triton, interpreted on the CPU, against the
reference, over odd and even shapes, both dot modes, fp32 and fp64, outputs pre-filled with NaN;
then whole solves and an MMPS call through each provider."""

import pytest
import torch

from emdm import MMPS, DenseOperator, GaussianDenoiser, cg
from emdm.dplr import DPLR
from emdm.kernels.cg import ROW_MAX, batched_dot, cg_update, cg_update_reference, cg_update_triton

pytest.importorskip("triton")
# the infinite row makes inf - inf and inf * 0 on purpose (numpy warns, in the interpreter)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

TOL = {torch.float32: {"rtol": 2e-5, "atol": 2e-5}, torch.float64: {"rtol": 1e-11, "atol": 1e-11}}


def state(shape, dtype, acc, dot, gen, device="cpu"):
    r"""A mid-solve state with every case a row can be in: active, guarded (p^T C p < 0 or
    infinite), already inactive, and solved (r = 0)."""
    x, r, p = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
    Cp = 2 * p + 0.3 * torch.randn(shape, generator=gen, dtype=torch.float64)
    if dot == "sample" and shape[0] >= 4:
        Cp[1] = -p[1]  # negative curvature: the guard fires
        r[3], p[3] = 0, 0  # solved
    if dot == "sample" and shape[0] >= 5:
        Cp[4, 0] = float("inf")  # an overflowed product: guarded too
    x, r, p, Cp = (t.to(dtype=dtype, device=device) for t in (x, r, p, Cp))
    rr = batched_dot(r, r, dot, acc)
    tol = torch.full_like(rr, 1e-12)
    active = rr > tol
    if dot == "sample" and shape[0] >= 3:
        active[2] = False  # frozen earlier
    return x, r, p, Cp, rr, tol, active


def nan_buffers(x):
    return tuple(torch.full_like(x, float("nan")) for _ in range(3))


def compare(out, ref, dtype, acc):
    tol = TOL[torch.float32] if torch.float32 in (dtype, acc) else TOL[torch.float64]
    for name in ("x", "r", "p"):
        got, want = getattr(out, name), getattr(ref, name)
        assert not got.isnan().any(), f"{name} has unwritten (NaN) elements"
        torch.testing.assert_close(got, want, **tol, msg=name)
    torch.testing.assert_close(out.rr, ref.rr, **tol)
    assert torch.equal(out.active, ref.active) and torch.equal(out.fired, ref.fired)


SHAPES = [(5, 7), (4, 3, 5, 5), (6, 42), (2, 130)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("acc", [torch.float32, torch.float64])
def test_row_form_equals_reference(shape, dtype, acc, gen, kernel_device):
    x, r, p, Cp, rr, tol, active = state(shape, dtype, acc, "sample", gen, kernel_device)
    ref = cg_update_reference(x, r, p, Cp, rr, tol, active, fired=True)
    out = cg_update_triton(
        x, r, p, Cp, rr, tol, active, fired=True, out=nan_buffers(x), split=False
    )
    compare(out, ref, dtype, acc)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dot", ["sample", "batch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_split_form_equals_reference(shape, dot, dtype, gen, kernel_device):
    acc = torch.float64
    x, r, p, Cp, rr, tol, active = state(shape, dtype, acc, dot, gen, kernel_device)
    ref = cg_update_reference(x, r, p, Cp, rr, tol, active, dot=dot, fired=True)
    # chunks of 16 elements: several chunks per row, the last one partial
    out = cg_update_triton(
        x, r, p, Cp, rr, tol, active, dot=dot, fired=True, out=nan_buffers(x), split=True,
        chunk=16,
    )  # fmt: skip
    compare(out, ref, dtype, acc)


def test_guard_and_frozen_rows(gen, kernel_device):
    x, r, p, Cp, rr, tol, active = state(
        (5, 9), torch.float64, torch.float64, "sample", gen, kernel_device
    )
    out = cg_update_triton(x, r, p, Cp, rr, tol, active, fired=True)
    assert out.fired.tolist() == [False, True, False, False, True]
    assert out.active.tolist() == [True, False, False, False, False]
    for row in (1, 2, 3, 4):  # guarded, frozen and solved rows keep x and r; p = r
        torch.testing.assert_close(out.x[row], x[row])
        torch.testing.assert_close(out.r[row], r[row])
        torch.testing.assert_close(out.p[row], r[row])


def test_non_contiguous_inputs(gen, kernel_device):
    x, r, p, Cp, rr, tol, active = state(
        (6, 8), torch.float32, torch.float64, "sample", gen, kernel_device
    )
    xt, rt, pt, Cpt = (t.T.contiguous().T for t in (x, r, p, Cp))  # column-major copies
    assert not xt.is_contiguous()
    ref = cg_update_reference(x, r, p, Cp, rr, tol, active, fired=True)
    compare(cg_update_triton(xt, rt, pt, Cpt, rr, tol, active, fired=True), ref, x.dtype, rr.dtype)


def test_bad_input(gen, kernel_device):
    x, r, p, Cp, rr, tol, active = state(
        (3, 5), torch.float32, torch.float64, "sample", gen, kernel_device
    )
    with pytest.raises(
        ValueError, match=r"Cp has dtype torch.float64, but x has dtype torch.float32"
    ):
        cg_update_triton(x, r, p, Cp.double(), rr, tol, active)
    with pytest.raises(ValueError, match="shape"):
        cg_update_triton(x, r, p[:2], Cp, rr, tol, active)
    with pytest.raises(ValueError, match="float32 or float64"):
        cg_update_triton(x.half(), r.half(), p.half(), Cp.half(), rr, tol, active)
    with pytest.raises(ValueError, match="row form holds at most"):
        big = torch.zeros(1, ROW_MAX + 1, device=kernel_device)
        cg_update_triton(big, big, big, big, rr[:1], tol[:1], active[:1], split=False)


@pytest.mark.parametrize("dot", ["sample", "batch"])
def test_solve_through_each_provider(dot, gen, kernel_device):
    B, N = 4, 6
    Q, _ = torch.linalg.qr(torch.randn((B, N, N), generator=gen, dtype=torch.float64))
    C = Q @ torch.diag_embed(torch.linspace(1, 10, N, dtype=torch.float64)) @ Q.mT
    b = torch.randn((B, N), generator=gen, dtype=torch.float64)
    C, b = C.to(kernel_device), b.to(kernel_device)
    matvec = lambda v: (C @ v[..., None])[..., 0]  # noqa: E731
    ref = cg(matvec, b, 4, dot=dot, provider="ref", return_info=True)
    tri = cg(matvec, b, 4, dot=dot, provider="triton", return_info=True)
    torch.testing.assert_close(tri[0], ref[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tri[1].residual, ref[1].residual, rtol=1e-8, atol=1e-12)
    x = cg(matvec, b, N, provider="triton")  # exact after N iterations
    torch.testing.assert_close(x, torch.linalg.solve(C, b))


def test_mmps_same_with_each_provider(gen, monkeypatch, kernel_device):
    B, D, M = 3, 5, 2
    mu = torch.randn(D, generator=gen)
    cov = DPLR(torch.rand(D, generator=gen) + 0.5, torch.randn(D, 2, generator=gen))
    A = torch.randn((B, M, D), generator=gen)
    y, x_t = torch.randn((B, M), generator=gen), torch.randn((B, D), generator=gen)
    sigma = torch.full((B,), 0.7)
    mu, cov, A, y, x_t, sigma = (t.to(kernel_device) for t in (mu, cov, A, y, x_t, sigma))
    out = {}
    for provider in ("ref", "triton"):
        monkeypatch.setenv("EMDM_KERNELS", provider)
        out[provider] = MMPS(GaussianDenoiser(mu, cov), DenseOperator(A), y, 0.01, iterations=3)(
            x_t, sigma
        )
    torch.testing.assert_close(out["triton"], out["ref"], rtol=1e-5, atol=1e-5)


def test_dispatcher(gen, monkeypatch):
    x, r, p, Cp, rr, tol, active = state((3, 5), torch.float64, torch.float64, "sample", gen)
    monkeypatch.setenv("EMDM_KERNELS", "auto")  # CPU tensors: the reference, bit for bit
    ref = cg_update_reference(x, r, p, Cp, rr, tol, active)
    assert torch.equal(cg_update(x, r, p, Cp, rr, tol, active).x, ref.x)
    monkeypatch.setenv("EMDM_KERNELS", "fast")
    with pytest.raises(ValueError, match=r"one of \('ref', 'triton', 'auto'\)"):
        cg_update(x, r, p, Cp, rr, tol, active)
    monkeypatch.setenv("EMDM_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        cg_update(x, r, p, Cp, rr, tol, active)
