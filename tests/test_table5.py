import dataclasses
import json

import pandas as pd
import pytest
import torch

from emdm.denoisers import EpsilonDenoiser, MixtureDenoiser
from emdm.nn.adm import ADMConfig, ADMUNet
from reproduce import table5

# a tiny ADM U-Net: 16 x 16 images, two levels, attention at the second
TINY = ["--adm-image-size", "16", "--adm-model-channels", "32", "--adm-channel-mult", "1", "2",
        "--adm-attention-resolutions", "8", "--adm-num-head-channels", "16"]  # fmt: skip


def test_network_preset_tiny(tmp_path):
    argv = ["--network", *TINY, "--steps", "2", "--methods", "mmps1", "mmps2", "--quiet",
            "--out", str(tmp_path)]  # fmt: skip
    assert table5.main(argv) == 0  # non-zero if a counted VJP number differs from the declared
    frame = pd.read_csv(tmp_path / "table5_network.csv")
    value = frame.set_index(["method", "metric"]).value
    assert value["mmps1", "vjps_per_step"] == 2 and value["mmps2", "vjps_per_step"] == 3
    assert value["mmps1", "declared_vjps_per_step"] == 2
    ms1, ms2 = value["mmps1", "ms_per_step"], value["mmps2", "ms_per_step"]
    # through two points, the least-squares line is the line through them
    b, a = value["mmps", "ms_per_iteration"], value["mmps", "ms_intercept"]
    assert b == pytest.approx(ms2 - ms1) and a == pytest.approx(2 * ms1 - ms2)
    config = json.loads((tmp_path / "table5_network.json").read_text())["config"]
    assert config["prior"] == "adm-random" and config["task"] == "sr4"
    assert config["adm"]["image_size"] == 16


def test_summarize_fits_a_line_and_divides_memory():
    costs = {"dps": {"ms_per_step": 5.0, "peak_memory_mb": 100.0},
             "pgdm": {"ms_per_step": 6.0, "peak_memory_mb": 50.0}}  # fmt: skip
    noise = {1: 0.5, 3: -1.0, 5: 0.5}  # orthogonal to 1 and k: the line is 3 + 2 k
    for k, e in noise.items():
        costs[f"mmps{k}"] = {"ms_per_step": 3 + 2 * k + e, "peak_memory_mb": 110.0}
    out = table5.summarize(costs)
    assert out["mmps", "ms_per_iteration"] == pytest.approx(2.0)
    assert out["mmps", "ms_intercept"] == pytest.approx(3.0)
    assert out["mmps3", "memory_over_dps"] == pytest.approx(1.1)
    assert out["mmps5", "memory_over_pgdm"] == pytest.approx(2.2)
    # one k: no line; a zero baseline: no ratio
    costs = {"dps": {"ms_per_step": 1.0, "peak_memory_mb": 0.0},
             "mmps1": {"ms_per_step": 2.0, "peak_memory_mb": 1.0}}  # fmt: skip
    assert table5.summarize(costs) == {}


def test_network_prior_is_the_seeded_adm_unet():
    cfg = table5.parse(["--network", *TINY])
    g = torch.Generator().manual_seed(0)
    prior, shape = table5.build_prior(cfg, g)
    assert shape == (3, 16, 16)
    assert isinstance(prior, EpsilonDenoiser) and type(prior.network) is ADMUNet
    tiny = ADMConfig(image_size=16, model_channels=32, channel_mult=(1, 2),
                     attention_resolutions=(8,), num_head_channels=16)  # fmt: skip
    assert prior.network.cfg == tiny
    again, _ = table5.build_prior(cfg, g)
    other, _ = table5.build_prior(table5.parse(["--network", *TINY, "--seed", "1"]), g)
    x = torch.randn((1, *shape), generator=g)
    with torch.no_grad():
        eps = prior.network(x, torch.tensor([500.0]))
        assert torch.equal(eps, again.network(x, torch.tensor([500.0])))  # seeded
        assert not torch.equal(eps, other.network(x, torch.tensor([500.0])))
    assert eps.abs().mean() > 1e-3  # not the zero-initialised output layer of a fresh U-Net
    quick, shape = table5.build_prior(table5.parse(["--quick"]), g)
    assert isinstance(quick, MixtureDenoiser) and shape == (1, 32, 32)


def test_presets_and_their_refusals(capsys):
    def fields(cfg):  # but the run-wide `threads` spec, which parse_run may resolve
        return {k: v for k, v in vars(cfg).items() if k != "threads"}

    paper = dataclasses.replace(table5.PAPER, device="cpu")
    assert fields(table5.parse(["--device", "cpu"])) == fields(paper)
    assert fields(table5.parse(["--network"])) == fields(table5.NETWORK)
    assert table5.NETWORK.methods == ("dps", "pgdm", "tmpd", "diffpir", "mmps1", "mmps2",
                                      "mmps3", "mmps4", "mmps5")  # fmt: skip
    assert table5.parse(["--quick"]).prior == "mixture" and not table5.QUICK.summary
    with pytest.raises(SystemExit) as error:
        table5.parse(["--quick", "--network"])
    assert error.value.code == 2 and "are presets: pass one" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        table5.parse(["--network", "--prior", "vae"])
