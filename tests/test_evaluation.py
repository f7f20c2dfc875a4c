import math

import pytest
import torch

from emdm.metrics import (
    TINY,
    FidelityFeatures,
    FidelityReference,
    fidelity_metrics,
    frechet_distance,
    gaussian_statistics,
    posterior_calibration,
)


def images(n, seed, size=16):
    r"""Smooth random colour images in [-2, 2)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, 3, 4, 4), generator=g)
    return torch.nn.functional.interpolate(z, size=size, mode="bilinear").clamp(-2, 1.9)


@pytest.fixture
def counted(monkeypatch):
    r"""The number of images each call of the feature extractor was given, in order."""
    calls, extract = [], FidelityFeatures.__call__

    def counting(self, x, *args, **kwargs):
        calls.append(len(x))
        return extract(self, x, *args, **kwargs)

    monkeypatch.setattr(FidelityFeatures, "__call__", counting)
    return calls


@pytest.mark.parametrize("isc", [True, False])
def test_reference_scores_equal_fidelity_metrics_and_the_pixels_frechet_distance(isc):
    reference, samples = images(96, 0), images(40, 1) * 0.8
    scores = FidelityReference(reference, feature_extractor=TINY, device="cpu").scores(
        samples, isc
    )
    direct = fidelity_metrics(samples, reference, feature_extractor=TINY, isc=isc, device="cpu")
    assert list(scores) == (["fid", "isc", "fd_pixels"] if isc else ["fid", "fd_pixels"])
    assert scores["fid"] == pytest.approx(direct["fid"], rel=1e-6) and direct["fid"] > 0.01
    if isc:
        assert scores["isc"] == pytest.approx(direct["isc_mean"], rel=1e-6)
    pixels = [gaussian_statistics(x.flatten(1)) for x in (samples, reference)]
    assert scores["fd_pixels"] == pytest.approx(frechet_distance(*pixels[0], *pixels[1]).item())


def test_reference_statistics_are_computed_once_and_cached_by_the_images(tmp_path, counted):
    reference, samples = images(64, 0), images(20, 1)
    first = FidelityReference(reference, feature_extractor=TINY, device="cpu", cache_dir=tmp_path)
    a = first.scores(samples)
    b = first.scores(samples)
    assert a == b and counted == [20, 64, 20]  # the reference's features once
    assert [p.name for p in tmp_path.iterdir()] == ["reference_emdm-tiny.npz"]
    resumed = FidelityReference(reference, feature_extractor=TINY, cache_dir=tmp_path)
    assert resumed.scores(samples) == a and counted[3:] == [20]  # read from the file
    for name, value in first.statistics.items():
        assert torch.equal(resumed.statistics[name], value)
        assert resumed.statistics[name].dtype == value.dtype
    other = FidelityReference(reference[:32], feature_extractor=TINY, cache_dir=tmp_path)
    assert other.scores(samples)["fid"] != a["fid"] and counted[4:] == [20, 32]  # recomputed
    again = FidelityReference(reference[:32], feature_extractor=TINY, cache_dir=tmp_path)
    assert again.scores(samples) == other.scores(samples)


def test_scores_need_enough_samples_for_the_inception_score_splits():
    reference = FidelityReference(images(16, 0), feature_extractor=TINY, device="cpu")
    with pytest.raises(ValueError, match="fewer than the 10 needed"):
        reference.scores(images(8, 1))
    assert set(reference.scores(images(8, 1), isc=False)) == {"fid", "fd_pixels"}


def _gaussian_posterior(n: int, seed: int):
    r"""Truths x ~ N(0, Σ) in 5 dimensions whose last 3 coordinates are hidden: the exact
    posterior of the hidden ones given the observed ones, its mean (n, 5) and the Cholesky
    factor (3, 3) of its covariance V = Σ_hh - Σ_ho Σ_oo⁻¹ Σ_oh."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn((5, 5), generator=g, dtype=torch.float64)
    cov = W @ W.T + 0.5 * torch.eye(5, dtype=torch.float64)
    x = torch.randn((n, 5), generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    o, h = slice(0, 2), slice(2, 5)
    gain = cov[h, o] @ torch.linalg.inv(cov[o, o])
    V = cov[h, h] - gain @ cov[o, h]
    mean = x.clone()
    mean[:, h] = x[:, o] @ gain.T
    hidden = torch.zeros((n, 5), dtype=torch.bool)
    hidden[:, h] = True
    return x, mean, torch.linalg.cholesky(V), hidden, g


def _draw(mean, L, g, scale=1.0):
    draw = mean.clone()
    z = torch.randn((len(mean), 3), generator=g, dtype=mean.dtype)
    draw[:, 2:] += scale * z @ L.T
    return draw


def test_posterior_calibration_of_exact_narrow_and_wide_gaussian_posteriors():
    x, mean, L, hidden, g = _gaussian_posterior(40000, 0)
    expected = math.sqrt(2 * (L @ L.T).trace().item() / 3)  # √(2 tr V / n), n = 3 hidden
    exact = posterior_calibration(x, _draw(mean, L, g), _draw(mean, L, g), hidden)
    assert exact["rmse"] == pytest.approx(expected, rel=0.02)
    assert exact["spread"] == pytest.approx(expected, rel=0.02)
    # the posterior mean only: no spread, rmse √(tr V / n)
    narrow = posterior_calibration(x, mean, mean, hidden)
    assert narrow["spread"] == 0 and narrow["rmse"] == pytest.approx(expected / 2**0.5, rel=0.02)
    # draws with covariance 4 V: spread² = 8 tr V / n > rmse² = 5 tr V / n
    wide = posterior_calibration(x, _draw(mean, L, g, 2), _draw(mean, L, g, 2), hidden)
    assert wide["spread"] == pytest.approx(expected * 2, rel=0.02)
    assert wide["rmse"] == pytest.approx(expected * 2.5**0.5, rel=0.02)


def test_posterior_calibration_counts_the_hidden_entries_only():
    x = torch.zeros((2, 3))
    first, second = torch.tensor([[3.0, 9, 9], [4, 9, 9]]), torch.tensor([[3.0, 0, 0], [0, 0, 0]])
    hidden = torch.tensor([[True, False, False], [True, False, False]])
    out = posterior_calibration(x, first, second, hidden)
    assert out == {"rmse": pytest.approx(12.5**0.5), "spread": pytest.approx(8**0.5)}
    with pytest.raises(ValueError, match="one shape"):
        posterior_calibration(x, first[:1], second, hidden)
    with pytest.raises(ValueError, match="boolean"):
        posterior_calibration(x, first, second, hidden.float())
    nothing = posterior_calibration(x, first, second, torch.zeros_like(hidden))
    assert all(math.isnan(v) for v in nothing.values())
