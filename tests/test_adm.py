r"""The ADM U-Net: its parameter count for DPS's FFHQ configuration, counted independently from
the published architecture, the layout of its state dict, shapes, and loading errors."""

import pytest
import torch

from emdm.nn.adm import FFHQ_256, ADMConfig, ADMUNet, load_adm, write_random_adm


def conv(cin, cout, k):
    return cin * cout * k * k + cout


def gn(c):
    return 2 * c


def lin(a, b):
    return a * b + b


def res(cin, cout, emb=512):  # scale-shift norm: the embedding gives 2 cout
    skip = conv(cin, cout, 1) if cin != cout else 0
    return (
        gn(cin) + conv(cin, cout, 3) + lin(emb, 2 * cout) + gn(cout) + conv(cout, cout, 3) + skip
    )


def attn(c):
    return gn(c) + conv(c, 3 * c, 1) + conv(c, c, 1)


def ffhq_count():
    r"""guided-diffusion's UNetModel with channel_mult (1, 1, 2, 2, 4, 4), 128 channels, one
    residual block per level, attention at 16 x 16, learned sigma, written out level by level."""
    n = lin(128, 512) + lin(512, 512) + conv(3, 128, 3)
    # encoder: per level a block (with attention at 16 x 16), then a downsampling block
    n += res(128, 128) + res(128, 128)  # 256 x 256
    n += res(128, 128) + res(128, 128)  # 128
    n += res(128, 256) + res(256, 256)  # 64
    n += res(256, 256) + res(256, 256)  # 32
    n += res(256, 512) + attn(512) + res(512, 512)  # 16
    n += res(512, 512)  # 8
    n += res(512, 512) + attn(512) + res(512, 512)  # middle
    # decoder: two blocks per level, each fed a skip; an upsampling block ends each level but 0
    n += res(1024, 512) + res(1024, 512) + res(512, 512)  # 8
    n += res(1024, 512) + attn(512) + res(768, 512) + attn(512) + res(512, 512)  # 16
    n += res(768, 256) + res(512, 256) + res(256, 256)  # 32
    n += res(512, 256) + res(384, 256) + res(256, 256)  # 64
    n += res(384, 128) + res(256, 128) + res(128, 128)  # 128
    n += res(256, 128) + res(256, 128)  # 256
    return n + gn(128) + conv(128, 6, 3)


def test_ffhq_parameter_count_and_layout():
    model = ADMUNet(FFHQ_256)
    count = sum(p.numel() for p in model.parameters())
    assert count == ffhq_count()
    keys = model.state_dict().keys()
    for key in ("time_embed.0.weight", "input_blocks.0.0.weight",
                "input_blocks.1.0.in_layers.2.weight", "input_blocks.1.0.emb_layers.1.weight",
                "input_blocks.1.0.out_layers.3.weight", "input_blocks.9.1.qkv.weight",
                "middle_block.1.proj_out.weight", "output_blocks.2.1.qkv.weight",
                "output_blocks.3.2.in_layers.0.weight",
                "out.2.weight"):  # fmt: skip
        assert key in keys, key
    assert len(model.input_blocks) == 12 and len(model.output_blocks) == 12


SMALL = ADMConfig(image_size=32, model_channels=32, channel_mult=(1, 2), num_head_channels=16)


def test_forward_shapes_and_zero_init():
    cfg = SMALL
    model = ADMUNet(cfg)
    x = torch.randn(2, 3, 32, 32)
    out = model(x, torch.tensor([10.0, 500.0]))
    assert out.shape == (2, 6, 32, 32)
    assert torch.equal(out, torch.zeros_like(out))  # the output convolution starts at zero


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ffhq_10m\.pt"):
        load_adm(tmp_path / "ffhq_10m.pt")
    cfg = SMALL
    write_random_adm(tmp_path / "ok.pt", cfg, seed=1)  # what a smoke run reads: loads, seeded
    assert isinstance(load_adm(tmp_path / "ok.pt", cfg), ADMUNet)
    again = torch.load(write_random_adm(tmp_path / "again.pt", cfg, seed=1), weights_only=True)
    state = torch.load(tmp_path / "ok.pt", weights_only=True)
    assert all(torch.equal(state[k], again[k]) for k in state)
    state["out.2.weight"] = torch.zeros(6, 32, 1, 1)
    state["extra.weight"] = torch.zeros(1)
    del state["time_embed.0.bias"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"missing keys \['time_embed.0.bias'\].*unexpected keys "
                                          r"\['extra.weight'\].*out.2.weight"):  # fmt: skip
        load_adm(tmp_path / "bad.pt", cfg)


def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path):
    from emdm.errors import UserError

    state = ADMUNet(SMALL).state_dict()
    state["out.2.bias"][0] = float("nan")
    cases = {  # a garbage file used to fail in torch's unpickler, naming neither file nor cure
        "text.pt": (lambda p: p.write_text("<html>404 Not Found</html>"), "not a readable"),
        "empty.pt": (lambda p: p.write_bytes(b""), "not a readable"),
        "list.pt": (lambda p: torch.save([1, 2], p), "holds a list, not a state dict"),
        "nan.pt": (lambda p: torch.save(state, p), r"NaN or infinite weights .*out\.2\.bias"),
    }
    for name, (write, match) in cases.items():
        write(tmp_path / name)
        with pytest.raises(UserError, match=match) as error:
            load_adm(tmp_path / name, SMALL)
        assert str(tmp_path / name) in str(error.value) and "ffhq_10m.pt" in str(error.value)


def test_mmps_through_the_adm_prior():
    from emdm import MMPS, VPSchedule
    from emdm.denoisers import EpsilonDenoiser
    from emdm.operators import Bicubic

    torch.manual_seed(0)
    net = ADMUNet(SMALL)
    for p in net.out.parameters():  # leave the zero initialisation: a non-trivial Jacobian
        torch.nn.init.normal_(p, std=0.01)
    prior = EpsilonDenoiser(net, VPSchedule())
    A = Bicubic(4)
    y = torch.zeros(2, 3, 8, 8)
    out = MMPS(prior, A, y, 0.01, iterations=2, solver="gmres")(torch.randn(2, 3, 32, 32),
                                                                torch.full((2,), 0.5))  # fmt: skip
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
