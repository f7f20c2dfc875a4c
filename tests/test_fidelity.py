import pickle
import re
import socket
import urllib.request

import numpy as np
import pytest
import torch
import torch_fidelity
from conftest import write_fake_inception
from torch_fidelity.utils import create_feature_extractor

from emdm.data import load_cifar10
from emdm.errors import UserError
from emdm.metrics import fid, fidelity


def _no_network(*args, **kwargs):
    raise AssertionError("network access attempted")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    r"""Fails any download, and checks that nothing is written under torch's home."""
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_network)
    monkeypatch.setattr(
        "torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", _no_network
    )
    monkeypatch.delenv("EMDM_INCEPTION", raising=False)
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    yield
    assert not home.exists(), "something was written under TORCH_HOME"


def images(n, seed, kind="uniform", size=16, channels=3):
    r"""Synthetic float images in [-2, 2): uniform noise, or smooth blobs (another law)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        x = torch.rand((n, channels, size, size), generator=g) * 4 - 2
    else:
        z = torch.randn((n, channels, 4, 4), generator=g)
        x = torch.nn.functional.interpolate(z, size=size, mode="bilinear").clamp(-2, 1.9)
    return x


def tiny(x, y=None, **kwargs):
    return fidelity.fidelity_metrics(
        x, x if y is None else y, feature_extractor=fidelity.TINY, device="cpu", **kwargs
    )


def test_uint8_round_trip_of_the_cifar_loader(tmp_path):
    # a fake cifar-10-batches-py holding every byte value
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    u = np.arange(4 * 3072, dtype=np.int64).reshape(4, 3072) % 256
    for name in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": u.astype(np.uint8)}, f)
    x = load_cifar10(tmp_path, "train")
    assert torch.equal(
        fidelity.to_uint8(x), torch.from_numpy(np.tile(u, (5, 1))).reshape(-1, 3, 32, 32)
    )


def test_to_uint8_rounds_and_clips():
    x = torch.tensor([-3.0, -2.0, -2 + 0.4 / 64, -2 + 0.6 / 64, 0.0, 2 - 1 / 64, 2.0, 5.0])
    u = fidelity.to_uint8(x.view(1, 1, 1, -1)).flatten().tolist()
    assert u == [0, 0, 0, 1, 128, 255, 255, 255]
    v = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert fidelity.to_uint8(v) is v
    with pytest.raises(ValueError, match="dtype"):
        fidelity.to_uint8(v.long())
    with pytest.raises(ValueError, match="NaN"):
        fidelity.to_uint8(torch.full((1, 1, 2, 2), float("nan")))


def test_dataset_yields_uint8_chw_items():
    u = fidelity.to_uint8(images(5, 0))
    data = fidelity.Uint8Images(u)
    assert len(data) == 5 and torch.equal(data[3], u[3]) and data[0].dtype == torch.uint8
    with pytest.raises(ValueError, match="uint8"):
        fidelity.Uint8Images(u.float())


def test_fid_of_a_set_with_itself_is_zero_and_halves_are_closer_than_other_laws():
    x, y = images(200, 0), images(200, 1, kind="blobs")
    assert abs(tiny(x, x, isc=False)["fid"]) < 1e-6
    same = max(tiny(x[:100], x[100:], isc=False)["fid"], tiny(y[:100], y[100:], isc=False)["fid"])
    other = tiny(x[:100], y[:100], isc=False)["fid"]
    assert other > 5 * same  # about 10 x; the halves' FID is the finite-sample bias


def test_fid_and_is_match_a_direct_computation_on_the_extracted_features():
    x, y = images(96, 3, kind="blobs"), images(80, 4, size=12, channels=1)
    out = tiny(x, y, isc_splits=1, batch_size=32)
    extractor = create_feature_extractor(
        fidelity.TINY, ["features", "logits"], cuda=False, verbose=False
    )
    with torch.no_grad():
        f_x, logits = extractor(fidelity.to_uint8(x))
        f_y, _ = extractor(fidelity.to_uint8(y))
    expected = fid.frechet_distance(
        *fid.gaussian_statistics(f_x), *fid.gaussian_statistics(f_y)
    ).item()
    assert out["fid"] == pytest.approx(expected, rel=1e-3)
    # IS over one split: exp(E KL(p(y|x) || p(y)))
    log_p = logits.double().log_softmax(-1)
    log_q = log_p.exp().mean(0).log()
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    assert out["isc_mean"] == pytest.approx(kl.mean().exp().item(), rel=1e-4)
    assert out["isc_mean"] > 1.01  # the logits vary, so the test can tell layers apart


def test_inception_score_with_ten_splits_lies_between_one_and_the_class_count():
    name = fidelity.register_tiny_extractor(dim=16, num_classes=5, seed=1)
    x = images(100, 5, kind="blobs")
    out = fidelity.fidelity_metrics(x, x, feature_extractor=name, fid=False, device="cpu")
    assert 1 <= out["isc_mean"] <= 5 and out["isc_std"] >= 0
    assert set(out) == {
        "feature_extractor", "isc_mean", "isc_std", "feature_layer_isc", "isc_splits",
        "num_samples", "torch_fidelity_version",
    }  # fmt: skip
    assert out["torch_fidelity_version"] == torch_fidelity.__version__
    assert out["feature_extractor"] == "emdm-tiny-d16-c5-s1"


def test_tiny_extractor_registration_is_idempotent_and_deterministic():
    assert (
        fidelity.register_tiny_extractor()
        == fidelity.TINY
        == fidelity.register_tiny_extractor(64, 10, 0)
    )
    u = fidelity.to_uint8(images(4, 6, size=9, channels=1))
    state = torch.random.get_rng_state()
    a, b = (
        create_feature_extractor(fidelity.TINY, ["logits"], cuda=False, verbose=False)
        for _ in range(2)
    )
    with torch.no_grad():
        (la,), (lb,) = a(u), b(u)
        (rgb,) = a(u.expand(-1, 3, -1, -1))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert torch.equal(la, lb) and torch.equal(la, rgb)  # fixed weights; gray = replicated RGB
    with pytest.raises(ValueError, match="8x8"):
        a(u[..., :7, :7])


def test_cache_dir_keys_the_reference_by_name(tmp_path):
    x, y, z = images(40, 7), images(40, 8, kind="blobs"), images(40, 9)
    first = tiny(x, y, isc=False, cache_dir=tmp_path, reference_name="ref")
    assert any(tmp_path.iterdir())
    # a different tensor under the same name reuses the cached statistics of the first
    again = tiny(x, z, isc=False, cache_dir=tmp_path, reference_name="ref")
    assert again["fid"] == first["fid"] != tiny(x, z, isc=False)["fid"]
    with pytest.raises(ValueError, match="reference_name"):
        tiny(x, y, cache_dir=tmp_path)


@pytest.fixture
def no_work(monkeypatch):
    def fail(**kwargs):
        raise AssertionError("calculate_metrics was called")

    monkeypatch.setattr(torch_fidelity, "calculate_metrics", fail)


def test_missing_inception_weights_fail_before_any_work(tmp_path, monkeypatch, no_work):
    x = images(20, 0)
    missing = tmp_path / "nowhere" / fidelity.INCEPTION_FILE
    with pytest.raises(FileNotFoundError, match=r"nowhere.*releases/download"):
        fidelity.fidelity_metrics(x, x, inception_weights=missing, device="cpu")
    monkeypatch.setenv("EMDM_INCEPTION", str(missing))
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        fidelity.fidelity_metrics(x, x, device="cpu")
    # a folder stands for the file inside it
    with pytest.raises(
        FileNotFoundError, match=re.escape(str(tmp_path / fidelity.INCEPTION_FILE))
    ):
        fidelity.inception_weights_path(tmp_path)


def _wrong_network(path):
    # torchvision's Inception-v3 has 1000 classes, torch-fidelity's 1008
    state = {"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3),
             "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}  # fmt: skip
    torch.save(state, path)


def _nan_weights(path):
    write_fake_inception(path)
    state = torch.load(path)
    state["fc.bias"][3] = float("nan")
    torch.save(state, path)


@pytest.mark.parametrize(
    "write, match",
    [
        (lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\n"), "not a readable"),
        (lambda p: p.write_bytes(b""), "not a readable"),
        (lambda p: p.write_bytes(b"PK\x03\x04truncated"), "not a readable"),
        (lambda p: torch.save([torch.zeros(2)], p), "not a state dict"),
        (_wrong_network, r"fc\.weight: \(1000, 2048\), expected \(1008, 2048\)"),
        (_nan_weights, r"NaN or infinite weights in 1 tensors \(first: \['fc\.bias'\]\)"),
    ],
)
def test_damaged_inception_weights_fail_before_any_work(tmp_path, write, match, no_work):
    # a garbage file used to fail inside torch-fidelity, after the sampling, with
    # "invalid literal for int()"
    weights = tmp_path / fidelity.INCEPTION_FILE
    write(weights)
    x = images(20, 0)
    for call in (
        lambda: fidelity.inception_weights_path(weights),
        lambda: fidelity.fidelity_metrics(x, x, inception_weights=weights, device="cpu"),
    ):
        with pytest.raises(UserError, match=match) as error:
            call()
        message = str(error.value)
        assert str(weights) in message and "download" in message
        assert "invalid literal" not in message
    write_fake_inception(weights)  # mended: the same path passes (the check is not cached)
    assert fidelity.inception_weights_path(weights) == weights


@pytest.mark.parametrize(
    "samples, match",
    [
        (images(20, 0).long(), "dtype"),
        (images(20, 0) * 64 + 128, r"\[0, 255\]"),
        (images(20, 0)[0], "shape"),
        (images(20, 0, channels=2), "shape"),
        (images(9, 0), "fewer than the 10"),
    ],
)
def test_bad_inputs_are_rejected(samples, match, no_work):
    with pytest.raises(ValueError, match=match):
        tiny(samples, images(20, 1))


def test_other_extractors_are_rejected(no_work):
    x = images(20, 0)
    with pytest.raises(ValueError, match="download"):
        fidelity.fidelity_metrics(x, x, feature_extractor="vgg16", device="cpu")
    with pytest.raises(ValueError, match="unknown"):
        fidelity.fidelity_metrics(x, x, feature_extractor="inception", device="cpu")


def test_inception_kwargs_are_the_papers_defaults_offline(tmp_path, monkeypatch):
    weights = write_fake_inception(tmp_path / fidelity.INCEPTION_FILE)
    seen = {}

    def spy(**kwargs):
        seen.update(kwargs)
        return {
            torch_fidelity.KEY_METRIC_FID: 5.0,
            torch_fidelity.KEY_METRIC_ISC_MEAN: 8.0,
            torch_fidelity.KEY_METRIC_ISC_STD: 0.1,
        }

    monkeypatch.setattr(torch_fidelity, "calculate_metrics", spy)
    monkeypatch.setenv("EMDM_INCEPTION", str(weights))
    out = fidelity.fidelity_metrics(images(20, 0, channels=1), images(30, 1), device="cpu")
    assert (
        out["fid"] == 5.0
        and out["isc_mean"] == 8.0
        and out["feature_extractor"] == fidelity.INCEPTION
    )
    assert (out["feature_layer_fid"], out["feature_layer_isc"]) == ("2048", "logits_unbiased")
    x1, x2 = seen.pop("input1"), seen.pop("input2")
    assert len(x1) == 20 and len(x2) == 30
    assert x1[0].dtype == torch.uint8 and x1[0].shape == (3, 16, 16)  # gray replicated to RGB
    assert seen == {
        "fid": True, "isc": True, "kid": False, "prc": False, "ppl": False,
        "feature_extractor": fidelity.INCEPTION, "feature_extractor_weights_path": str(weights),
        "isc_splits": 10, "batch_size": 64, "cuda": False, "save_cpu_ram": True,
        "datasets_download": False, "cache": False, "cache_root": None,
        "input2_cache_name": None, "verbose": False,
    }  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Inception at 299x299 is slow on CPU")
def test_inception_runs_from_a_local_weights_file(tmp_path):
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as inception

    # random weights in the real format: the test checks the plumbing, not the values (mock,
    # not monkeypatch, whose undo would also lift the offline fixture)
    cls = inception.FeatureExtractorInceptionV3
    with (
        mock.patch.object(cls, "load_state_dict", lambda *a: None),
        mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: None),
        torch.random.fork_rng(),
    ):
        torch.manual_seed(0)
        state = cls(fidelity.INCEPTION, ["2048"]).state_dict()
    weights = tmp_path / fidelity.INCEPTION_FILE
    torch.save(state, weights)
    x, y = images(64, 0), images(64, 1, kind="blobs", size=32)
    out = fidelity.fidelity_metrics(x, y, inception_weights=weights, device="cuda")
    assert np.isfinite(out["fid"]) and 1 <= out["isc_mean"] <= 1008


def test_features_build_the_extractor_once_and_draw_nothing_from_the_global_generator(tmp_path):
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as inception

    weights = write_fake_inception(tmp_path / fidelity.INCEPTION_FILE)
    cls = inception.FeatureExtractorInceptionV3
    # random weights: the test checks the generator, not the values
    with mock.patch.object(cls, "load_state_dict", lambda *a: None), torch.random.fork_rng():
        state = torch.get_rng_state()
        cls(fidelity.INCEPTION, ["2048"], feature_extractor_weights_path=str(weights))
        assert not torch.equal(torch.get_rng_state(), state)  # its layers' initialization
        state = torch.get_rng_state()
        features = fidelity.FidelityFeatures(inception_weights=weights, device="cpu")
        out = features(images(2, 0, size=8))
        net = features._net
        features(images(2, 1, size=8))
        assert torch.equal(torch.get_rng_state(), state) and features._net is net
    assert features.layers == {"fid": "2048", "isc": "logits_unbiased"}
    assert out["fid"].shape == (2, 2048) and out["isc"].shape == (2, 1008)


def test_inception_score_equals_fidelity_metrics_on_the_tiny_extractors_logits():
    x = images(30, 0, kind="blobs")
    logits = fidelity.FidelityFeatures(fidelity.TINY, device="cpu")(x)["isc"]
    direct = fidelity.fidelity_metrics(
        x, x, feature_extractor=fidelity.TINY, fid=False, device="cpu"
    )
    assert fidelity.inception_score(logits) == (direct["isc_mean"], direct["isc_std"])
    with pytest.raises(ValueError, match="N >= 10"):
        fidelity.inception_score(logits[:9])
