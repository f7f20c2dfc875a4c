import pytest
import torch

from emdm.metrics import ot_cost, ot_score

DT = torch.float64


def samples(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, 3), generator=g, dtype=DT) + shift


def test_cost_of_a_sample_with_itself_is_zero():
    u = samples(512, 0)
    assert ot_cost(u, u).item() == pytest.approx(0.0, abs=1e-12)


def test_exact_cost_of_a_translation():
    # moving every point by s costs exactly |s|² under the squared Euclidean cost
    u = samples(256, 0)
    s = torch.tensor([0.3, -0.2, 0.5], dtype=DT)
    assert ot_cost(u, u + s).item() == pytest.approx((s**2).sum().item(), rel=1e-9)


def test_score_is_near_zero_for_the_same_law_and_grows_with_a_shift():
    n = 512
    u1, u2, v = samples(n, 1), samples(n, 2), samples(n, 3)
    same = ot_score(u1, u2, v).item()
    shifted = [ot_score(u1, u2, samples(n, 3, s)).item() for s in (0.5, 1.0)]
    assert same < 0.1 * shifted[0]
    assert shifted[0] < shifted[1]
    # the debiased score tracks the squared shift, 3 s² for a shift of s in each coordinate
    assert shifted[1] == pytest.approx(3.0, rel=0.2)


def test_paper_sinkhorn_orders_but_underestimates():
    """The paper's solver (reg 1e-3, 1024 log-domain iterations) does not converge on spread
    samples: its cost is below exact OT, yet the score still orders shifts correctly."""
    n = 64
    u1, u2 = samples(n, 1), samples(n, 2)
    same = ot_score(u1, u2, samples(n, 3), "sinkhorn").item()
    shifted = ot_score(u1, u2, samples(n, 3, 1.0), "sinkhorn").item()
    assert same < 0.1 * shifted
    v = samples(n, 3, 1.0)
    assert ot_cost(u1, v, "sinkhorn") < ot_cost(u1, v, "emd")


def test_score_is_clamped_and_bad_method():
    u = samples(64, 0)
    assert ot_score(u, u + 1.0, u).item() == 1e-6
    with pytest.raises(ValueError, match="method must be one of"):
        ot_cost(u, u, "wasserstein")
    with pytest.raises(ValueError, match="expected u"):
        ot_cost(u, u[:, :2])


def test_psnr_and_ssim_closed_forms():
    from emdm.metrics import psnr, ssim, to_unit

    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, 3, 16, 16), generator=g, dtype=torch.float64)
    # PSNR: 10 log10(1 / MSE), a constant offset of 0.1 has MSE 0.01: 20 dB
    torch.testing.assert_close(psnr(x, x + 0.1), torch.full((2,), 20.0, dtype=torch.float64))
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    # constant images a, b: the structure term is 1, SSIM = (2ab + C1) / (a² + b² + C1)
    a, b, c1 = 0.2, 0.6, 0.01**2
    s = ssim(torch.full((1, 1, 12, 12), a, dtype=torch.float64),
             torch.full((1, 1, 12, 12), b, dtype=torch.float64))  # fmt: skip
    torch.testing.assert_close(s, torch.tensor([(2 * a * b + c1) / (a**2 + b**2 + c1)],
                                               dtype=torch.float64))  # fmt: skip
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert (ssim(x, noisy) < 0.9).all() and (psnr(x, noisy) < 20).all()
    torch.testing.assert_close(to_unit(torch.tensor([-2.0, 0.0, 1.0])), torch.tensor([0, 0.5, 1]))
    with pytest.raises(ValueError, match="one shape"):
        psnr(x, x[:1])


def test_lpips_against_torchvision_alexnet(tmp_path, monkeypatch):
    # random weights in the two files' formats; the metric is recomputed with torchvision
    torchvision = pytest.importorskip("torchvision")
    from emdm.metrics import LPIPS
    from emdm.metrics.lpips import CHANNELS

    torch.manual_seed(0)
    alexnet = torchvision.models.alexnet(weights=None)
    torch.save(alexnet.state_dict(), tmp_path / "alexnet.pth")
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(CHANNELS)}
    torch.save(lin, tmp_path / "alex.pth")
    metric = LPIPS(tmp_path / "alexnet.pth", tmp_path / "alex.pth")
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand((2, 3, 64, 64), generator=g), torch.rand((2, 3, 64, 64), generator=g)

    def reference(a, b):
        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        ha, hb, total = (a - mean) / std, (b - mean) / std, 0
        for i, layer in enumerate(alexnet.features[:12]):
            ha, hb = layer(ha), layer(hb)
            if isinstance(layer, torch.nn.ReLU):
                k = [1, 4, 7, 9, 11].index(i)
                na = ha / (ha.norm(dim=1, keepdim=True) + 1e-10)
                nb = hb / (hb.norm(dim=1, keepdim=True) + 1e-10)
                w = lin[f"lin{k}.model.1.weight"]
                total = total + torch.nn.functional.conv2d((na - nb) ** 2, w).mean(dim=(1, 2, 3))
        return total

    with torch.no_grad():
        torch.testing.assert_close(metric(x, y), reference(x, y), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(metric(x, x), torch.zeros(2))
        torch.testing.assert_close(metric(x, y), metric(y, x))
    # absent files: a clear error naming where to get them, never a download
    monkeypatch.delenv("EMDM_LPIPS_LINEAR", raising=False)
    with pytest.raises(FileNotFoundError, match="PerceptualSimilarity"):
        LPIPS(tmp_path / "alexnet.pth", None)
    with pytest.raises(FileNotFoundError, match="alexnet-owt"):
        LPIPS(tmp_path / "nowhere.pth", tmp_path / "alex.pth")
    torch.save({"lin0.model.1.weight": torch.rand(1, 3, 1, 1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"not LPIPS's alex\.pth"):
        LPIPS(tmp_path / "alexnet.pth", tmp_path / "bad.pth")


def test_random_lpips_files_load_under_torchvisions_key_names(tmp_path):
    from emdm.metrics import LPIPS
    from emdm.metrics.lpips import write_random_lpips

    alexnet, linear = write_random_lpips(tmp_path)
    metric = LPIPS(alexnet, linear)
    x = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    assert metric(x, x).abs().max() < 1e-6 and metric(x, 1 - x).min() > 0
    torchvision = pytest.importorskip("torchvision")
    names = {k for k in torchvision.models.alexnet().state_dict() if k.startswith("features.")}
    assert set(torch.load(alexnet, weights_only=True)) == names


def test_lpips_names_a_damaged_weights_file(tmp_path):
    from emdm.errors import UserError
    from emdm.metrics import LPIPS
    from emdm.metrics.lpips import CHANNELS, _features

    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(CHANNELS)}
    torch.save(lin, tmp_path / "alex.pth")
    features = {f"features.{k}": v for k, v in _features().state_dict().items()}
    torch.save(features, tmp_path / "alexnet.pth")
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, tmp_path / "partial.pth")
    (tmp_path / "garbage.pth").write_text("version https://git-lfs.github.com/spec/v1\n")
    cases = [  # a garbage file used to fail in torch's unpickler, naming neither file nor cure
        ("garbage.pth", "alex.pth", "garbage.pth is not a readable weights file", "alexnet-owt"),
        ("partial.pth", "alex.pth", "partial.pth is not torchvision's AlexNet", "alexnet-owt"),
        ("alexnet.pth", "garbage.pth", "garbage.pth is not a readable", "PerceptualSimilarity"),
    ]
    for alexnet, linear, match, cure in cases:
        with pytest.raises(UserError, match=match) as error:
            LPIPS(tmp_path / alexnet, tmp_path / linear)
        assert cure in str(error.value)
    LPIPS(tmp_path / "alexnet.pth", tmp_path / "alex.pth")  # the same files, whole, load


def test_frechet_distance_against_scipy_and_closed_forms():
    import numpy as np
    import scipy.linalg

    from emdm.metrics import frechet_distance, gaussian_statistics

    g = torch.Generator().manual_seed(0)
    a = torch.randn((500, 6), generator=g, dtype=torch.float64)
    mix = torch.rand((6, 6), generator=g, dtype=torch.float64)
    b = torch.randn((400, 6), generator=g, dtype=torch.float64) @ mix
    mu1, s1 = gaussian_statistics(a)
    mu2, s2 = gaussian_statistics(b + 1)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = ((mu1 - mu2) ** 2).sum().item() + np.trace(s1.numpy() + s2.numpy() - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2).item() == pytest.approx(expected, rel=1e-8)
    # identical Gaussians: 0; a mean shift only: its squared norm
    assert abs(frechet_distance(mu1, s1, mu1, s1).item()) < 1e-9
    shift = torch.full((6,), 0.5, dtype=torch.float64)
    torch.testing.assert_close(frechet_distance(mu1, s1, mu1 + shift, s1),
                               torch.tensor(1.5, dtype=torch.float64))  # fmt: skip
    with pytest.raises(ValueError, match="of one D"):
        frechet_distance(mu1, s1, mu1[:3], s1[:3, :3])


def test_to_unit_maps_each_named_pixel_range_onto_the_unit_interval():
    from emdm.metrics import PIXEL_RANGES, to_unit

    x = torch.linspace(-2.5, 2.5, 101)
    assert torch.equal(to_unit(x), ((x + 1) / 2).clamp(0, 1))  # the default: [-1, 1]
    assert torch.equal(to_unit(x, "paper"), ((x + 2) / 4).clamp(0, 1))  # bit for bit
    for name, (low, high) in PIXEL_RANGES.items():
        ends = to_unit(torch.tensor([low, (low + high) / 2, high]), name)
        assert ends.tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="'benchmark', 'paper'"):
        to_unit(x, "unit")
