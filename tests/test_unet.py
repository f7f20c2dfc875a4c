import math

import pytest
import torch
import torch.nn.functional as F

from emdm.denoisers.edm import EDMDenoiser
from emdm.nn import PixelShuffleNet, UNet
from emdm.nn.unet import AttBlock, Modulation, ResBlock, channel_norm


def closed_form_count(cin, cout, hid, blocks, heads, E):
    r"""Parameters of the architecture of protocols §1.11, counted layer by layer."""

    def linear(i, o, bias=True):
        return i * o + (o if bias else 0)

    def conv3(i, o):
        return 9 * i * o + o

    def modulation(C):
        return linear(E, E) + linear(E, 3 * C)

    def res(C):
        return modulation(C) + 2 * conv3(C, C)  # LayerNorm without affine: no parameters

    def att(C):
        return modulation(C) + 3 * linear(C, C) + linear(C, C, bias=False)

    n = 0
    for i, (C, B) in enumerate(zip(hid, blocks, strict=True)):
        level = B * (res(C) + (att(C) if i in heads else 0))
        n += 2 * level  # descent and ascent
        n += conv3(cin if i == 0 else hid[i - 1], C)  # entry (strided for i > 0)
        if i < len(hid) - 1:
            n += conv3(C + hid[i + 1], C)  # ascent: concat(upsampled C_{i+1}, skip C_i) -> C_i
    return n + linear(hid[0], cout)  # per-pixel head


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "make, config, paper",
    [
        (UNet.cifar, (3, 3, (128, 256, 384), (5, 5, 5), {1: 4}, 256), 57.6e6),
        (UNet.mri, (16, 16, (128, 256, 384, 512), (3, 3, 3, 3), {3: 4}, 256), 77.6e6),
    ],
)
def test_paper_configs_parameter_count(make, config, paper):
    with torch.device("meta"):  # counts only, no memory or init time
        net = make()
    n = count(net)
    assert n == closed_form_count(*config)
    assert abs(n - paper) / paper < 5e-3


@pytest.mark.parametrize(
    "config",
    [
        (3, 5, (6, 10, 14), (1, 2, 1), {1: 2, 2: 7}, 8),
        (1, 1, (4,), (2,), {0: 2}, 4),
        (16, 2, (8, 12), (0, 1), {}, 6),
    ],
)
def test_small_configs_parameter_count(config):
    cin, cout, hid, blocks, heads, E = config
    net = UNet(cin, cout, hid, blocks, heads=heads, emb_features=E)
    assert count(net) == closed_form_count(*config)


@pytest.mark.parametrize(
    "cin, cout, hid, blocks, heads, shape",
    [
        (3, 5, (6, 10, 14), (1, 2, 1), {1: 2, 2: 7}, (8, 12)),
        (1, 1, (4,), (1,), {0: 2}, (5, 3)),
        (7, 3, (8, 12), (1, 1), {}, (6, 2)),
    ],
)
def test_output_shapes(cin, cout, hid, blocks, heads, shape):
    torch.manual_seed(0)
    net = UNet(cin, cout, hid, blocks, heads=heads, emb_features=8)
    y = net(torch.randn(2, cin, *shape), torch.randn(2, 8))
    assert y.shape == (2, cout, *shape)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (2, 3, 8, 10), (3, 8, 8)])
def test_bad_input_shape_raises(shape):
    net = UNet(3, 3, (4, 4, 4), (1, 1, 1), emb_features=4)
    message = r"divisible by 4, got \(" + ", ".join(map(str, shape)) + r"\)"
    with pytest.raises(ValueError, match=message):
        net(torch.randn(shape), torch.randn(shape[0], 4))


def test_descent_and_ascent_wiring():
    torch.manual_seed(0)
    net = UNet(3, 2, (4, 6), (1, 1), emb_features=8)
    x, e = torch.randn(2, 3, 8, 6), torch.randn(2, 8)
    s_0 = net.down[0][0](net.entry[0](x), e)
    down = net.entry[1][0]
    assert down.stride == (2, 2)
    s_1 = net.down[1][0](channel_norm(down(s_0)), e)  # (B, C_1, H / 2, W / 2)
    h = channel_norm(net.up[1][0](s_1, e))
    h = h.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)  # nearest ×2
    h = net.up[0][0](net.mix[0](torch.cat((h, s_0), dim=1)), e)  # (upsampled, skip) order
    head = net.exit[0]
    expected = torch.einsum("oc,bchw->bohw", head.weight[:, :, 0, 0], h)
    expected = expected + head.bias[:, None, None]
    torch.testing.assert_close(net(x, e), expected)


def test_bad_heads_raise():
    with pytest.raises(ValueError, match="divisor"):
        UNet(3, 3, (6, 10), (1, 1), heads={1: 3}, emb_features=4)
    with pytest.raises(ValueError, match="range"):
        UNet(3, 3, (6, 10), (1, 1), heads={2: 2}, emb_features=4)


def test_channel_norm_per_pixel():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64) * 3 + 1
    y = channel_norm(x)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                v = x[b, :, i, j]
                expected = (v - v.mean()) / torch.sqrt(((v - v.mean()) ** 2).mean() + 1e-5)
                torch.testing.assert_close(y[b, :, i, j], expected)


def test_initialization():
    torch.manual_seed(0)
    E = 64
    mod = Modulation(48, E)
    first, last = mod.mlp[0], mod.mlp[-1]
    bound = 1 / math.sqrt(E)
    assert 0.9 * bound < first.weight.abs().max() <= bound
    # the paper's code scales the last layer only
    assert 0.09 * bound < last.weight.abs().max() <= 0.1 * bound
    assert (first.bias == 0).all() and (last.bias == 0).all()

    net = UNet(3, 3, (16, 32), (1, 1), heads={1: 2}, emb_features=E)
    for name, p in net.named_parameters():
        if ".modulation." in name:
            continue
        if name.endswith("bias"):
            assert (p == 0).all(), name
        else:
            bound = 1 / math.sqrt(p[0].numel())  # fan_in = C_in k_h k_w
            assert 0.9 * bound < p.abs().max() <= bound, name


class FixedModulation(torch.nn.Module):
    def __init__(self, a, b, c):
        super().__init__()
        self.abc = a, b, c

    def forward(self, emb):
        return self.abc


def random_abc(C):
    return [torch.randn(1, C, 1, 1, dtype=torch.float64) for _ in range(3)]


def test_res_block_formula():
    torch.manual_seed(0)
    C = 5
    block = ResBlock(C, 4, dropout=0.0).double()
    a, b, c = random_abc(C)
    block.modulation = FixedModulation(a, b, c)
    x = torch.randn(2, C, 6, 7, dtype=torch.float64)
    conv1, conv2 = block.block[1], block.block[4]
    with torch.no_grad():  # nonzero biases so that a misplaced bias shows
        conv1.bias.normal_(), conv2.bias.normal_()
    h = (1 + a) * x + b
    h = (h - h.mean(1, keepdim=True)) / torch.sqrt(h.var(1, unbiased=False, keepdim=True) + 1e-5)
    h = F.conv2d(h, conv1.weight, conv1.bias, padding=1)
    h = F.conv2d(F.silu(h), conv2.weight, conv2.bias, padding=1)
    expected = (x + c * h) / torch.sqrt(1 + c**2)
    torch.testing.assert_close(block(x, torch.zeros(2, 4)), expected)

    block.modulation = FixedModulation(a, b, torch.zeros_like(c))  # c = 0: the identity
    torch.testing.assert_close(block(x, torch.zeros(2, 4)), x)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_att_block_matches_hand_written_attention(checkpoint):
    torch.manual_seed(0)
    C, N, H, W = 6, 3, 3, 4
    block = AttBlock(C, 4, heads=N, checkpoint=checkpoint).double()
    with torch.no_grad():  # nonzero biases so that a misplaced bias shows
        for lin in (block.q, block.k, block.v):
            lin.bias.normal_()
    a, b, c = random_abc(C)
    block.modulation = FixedModulation(a, b, c)
    x = torch.randn(2, C, H, W, dtype=torch.float64, requires_grad=True)

    h = channel_norm((1 + a) * x + b)
    h = h.reshape(2, C, H * W).permute(0, 2, 1)  # (B, HW, C)
    d = C // N
    heads = []
    for n in range(N):
        rows = slice(n * d, (n + 1) * d)
        q = h @ block.q.weight[rows].T + block.q.bias[rows]
        k = h @ block.k.weight[rows].T + block.k.bias[rows]
        v = h @ block.v.weight[rows].T + block.v.bias[rows]
        heads.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1) @ v)
    y = torch.cat(heads, dim=-1) @ block.out.weight.T  # (B, HW, C)
    y = y.permute(0, 2, 1).reshape(2, C, H, W)
    expected = (x + c * y) / torch.sqrt(1 + c**2)

    out = block(x, torch.zeros(2, 4))
    torch.testing.assert_close(out, expected)
    (g,) = torch.autograd.grad(out.square().sum(), x)
    (g_expected,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(g, g_expected)


def test_pixel_shuffle_net():
    torch.manual_seed(0)
    r, E = 4, 8
    net = UNet(r * r, r * r, (8, 12), (1, 1), emb_features=E)
    wrapped = PixelShuffleNet(net, factor=r)
    x, emb = torch.randn(2, 16, 24), torch.randn(2, E)

    # the paper's rearrange '(H h) (W w) C -> H W (h w C)' with C = 1
    u = x.reshape(2, 4, r, 6, r).permute(0, 2, 4, 1, 3).reshape(2, r * r, 4, 6)
    v = net(u, emb).reshape(2, r, r, 4, 6).permute(0, 3, 1, 4, 2).reshape(2, 16, 24)

    y = wrapped(x, emb)
    assert y.shape == x.shape
    torch.testing.assert_close(y, v)
    torch.testing.assert_close(wrapped(x[:, None], emb), v[:, None])
    with pytest.raises(ValueError, match=r"divisible by 4, got \(2, 16, 22\)"):
        wrapped(x[..., :22], emb)


def test_gradients_flow():
    torch.manual_seed(0)
    net = UNet(3, 2, (8, 12), (1, 1), heads={1: 2}, emb_features=8)
    x, emb = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 8, requires_grad=True)
    net(x, emb).square().sum().backward()
    assert x.grad.abs().sum() > 0 and emb.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        # a key bias shifts every score of a query equally, which the softmax ignores
        if not name.endswith("k.bias"):
            assert p.grad.abs().sum() > 0, name


def test_edm_denoiser_end_to_end():
    torch.manual_seed(0)
    E = 32
    net = UNet(3, 3, (16, 32), (1, 1), heads={1: 2}, emb_features=E, dropout=0.1)
    denoiser = EDMDenoiser(net, emb_features=E)
    x_t, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.1, 10.0])
    d = denoiser(x_t, sigma)
    assert d.shape == x_t.shape and torch.isfinite(d).all()
    d.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_dropout_only_in_training():
    torch.manual_seed(0)
    net = UNet(3, 3, (8, 12), (1, 1), emb_features=8, dropout=0.5)
    x, emb = torch.randn(2, 3, 8, 8), torch.randn(2, 8)
    assert not torch.equal(net(x, emb), net(x, emb))
    net.eval()
    assert torch.equal(net(x, emb), net(x, emb))
