import math

import numpy as np
import pytest
import torch

from emdm.data import RandomManifold, observe, random_projections, write_fake_cifar
from emdm.errors import UserError


def test_manifold_shapes_range_and_harmonics():
    g = torch.Generator().manual_seed(0)
    manifold = RandomManifold(5, generator=g)
    assert manifold.harmonics == math.ceil(1e3 ** (1 / 3)) == 10
    x = manifold.sample(65536, generator=g)
    assert x.shape == (65536, 5) and x.dtype == torch.float64
    # the affine map comes from a dense latent grid: a large sample fills [-2, 2] per coordinate
    assert (x >= -2 - 1e-9).all() and (x <= 2 + 1e-9).all()
    assert (x.min(0).values < -1.99).all() and (x.max(0).values > 1.99).all()


def test_manifold_is_a_smooth_curve():
    manifold = RandomManifold(3, generator=torch.Generator().manual_seed(1))
    z = torch.linspace(0, 1, 10001, dtype=torch.float64)[:, None]
    steps = manifold(z).diff(dim=0).norm(dim=-1)
    # a 1-D manifold: consecutive latent points are close in space (Lipschitz, no jumps)
    assert steps.max() < 50 * steps.median()
    assert steps.max() < 0.1


def test_manifold_seeding():
    def draw(seed_params, seed_samples):
        m = RandomManifold(4, generator=torch.Generator().manual_seed(seed_params))
        return m.sample(100, generator=torch.Generator().manual_seed(seed_samples))

    assert torch.equal(draw(0, 0), draw(0, 0))
    assert not torch.allclose(draw(0, 0), draw(1, 0))
    assert not torch.allclose(draw(0, 0), draw(0, 1))


def test_manifold_latent_dimensions():
    m = RandomManifold(3, latent=2, generator=torch.Generator().manual_seed(0))
    x = m.sample(1000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (1000, 3) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="features and latent"):
        RandomManifold(0)
    with pytest.raises(ValueError, match="alpha"):
        RandomManifold(3, eps=2.0)


def test_projections_and_observations():
    g = torch.Generator().manual_seed(0)
    A = random_projections(1000, 5, 2, g)
    assert A.shape == (1000, 2, 5)
    torch.testing.assert_close(A.norm(dim=-1), torch.ones(1000, 2, dtype=torch.float64))
    x = torch.randn((1000, 5), generator=g, dtype=torch.float64)
    y = observe(x, A, 0.01, g)
    residual = y - torch.einsum("nmd,nd->nm", A, x)
    assert residual.std().item() == pytest.approx(0.01, rel=0.1)
    with pytest.raises(ValueError, match="expected x"):
        observe(x[:10], A, 0.01)


def test_load_images(tmp_path):
    from PIL import Image

    from emdm.data import load_images

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "00001.png")
    Image.fromarray(pixels[..., 0]).save(tmp_path / "00002.png")  # grey: converted to RGB
    x = load_images(tmp_path, 8)
    assert x.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), pixels / 255 * 2 - 1, atol=1e-6)
    assert load_images(tmp_path, 8, limit=1).shape[0] == 1
    Image.fromarray(pixels[:4]).save(tmp_path / "00003.png")
    with pytest.raises(ValueError, match=r"00003\.png is 8x4 pixels, expected 8x8"):
        load_images(tmp_path, 8)
    (tmp_path / "00003.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"00003\.png is not a readable image"):
        load_images(tmp_path, 8)
    # PNGs damaged in their header, or in their data (which fail only when decoded)
    png = (tmp_path / "00001.png").read_bytes()
    idat = png.index(b"IDAT")
    for damaged in (png[:16] + b"\x00" * 8 + png[24:], png[: idat + 20]):
        (tmp_path / "00003.png").write_bytes(damaged)
        with pytest.raises(UserError, match=r"00003\.png is not a readable image .*replace or"):
            load_images(tmp_path, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        load_images(tmp_path / "empty", 8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_images(tmp_path / "missing", 8)


def test_cifar_loader_and_observations(tmp_path, monkeypatch):
    import pickle

    from emdm.data import cifar_observations, load_cifar10

    folder = write_fake_cifar(tmp_path)
    x = load_cifar10(tmp_path)
    assert x.shape == (20, 3, 32, 32) and x.min() >= -2 and x.max() < 2
    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="bytes")[b"data"][0]
    # channel-major rows: the first 1024 bytes are the red plane
    np.testing.assert_allclose(x[0, 0].flatten().numpy(), first[:1024] / 64 - 2, atol=1e-6)
    monkeypatch.setenv("EMDM_DATA", str(tmp_path))
    assert load_cifar10(split="test").shape == (4, 3, 32, 32)
    mask, y = cifar_observations(x, 75, torch.Generator().manual_seed(0))
    assert mask.shape == (20, 1, 32, 32)
    assert abs(mask.mean().item() - 0.25) < 0.02  # 75 % deleted in expectation
    assert ((y - mask * x).abs() < 1e-2).all() and (y[mask.expand_as(y) == 0] != 0).any()
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python\.tar\.gz"):
        load_cifar10(tmp_path / "nowhere")
    (folder / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="is not a CIFAR-10 batch"):
        load_cifar10(tmp_path, split="test")


def _pixels(value, dtype):
    data = np.full((4, 3072), 7, dtype=dtype)
    data[1, 5] = value
    return {b"data": data, b"labels": [0] * 4}


@pytest.mark.parametrize(
    "batch, match",
    [  # each used to be accepted: wrapped to uint8 (300 -> 44, -1 -> 255) or cast from NaN
        (_pixels(300, np.int64), r"pixels in \[7, 300\], expected bytes in \[0, 255\]"),
        (_pixels(-1, np.int16), r"pixels in \[-1, 7\], expected bytes in \[0, 255\]"),
        (_pixels(np.nan, np.float32), "1 NaN or infinite pixels"),
        (_pixels(np.inf, np.float64), "1 NaN or infinite pixels"),
        (_pixels(3.5, np.float64), "pixels that are not integers"),
        (_pixels(b"x", object), "pixels of dtype object"),
        ([1, 2, 3], r"is not a CIFAR-10 batch \(TypeError"),
        ({b"labels": []}, r"is not a CIFAR-10 batch \(KeyError"),
    ],
)
def test_cifar_loader_refuses_what_is_not_bytes(tmp_path, batch, match):
    import pickle

    from emdm.data import load_cifar10
    from emdm.errors import UserError

    folder = write_fake_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(UserError, match=match) as error:
        load_cifar10(tmp_path, split="test")
    assert str(folder / "test_batch") in str(error.value)
    assert "cifar-10-python.tar.gz" in str(error.value)  # what to do
    # integers in range, in a wider dtype, are the same bytes
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(_pixels(255, np.int64), f)
    assert load_cifar10(tmp_path, split="test")[1].flatten()[5] == 4 * 255 / 256 - 2


def test_color_shapes_are_seeded_images_in_the_cifar_range():
    from emdm.data import color_shapes

    x = color_shapes(64, 16, torch.Generator().manual_seed(0))
    assert x.shape == (64, 3, 16, 16)
    assert x.min() >= -2 and x.max() < 2
    assert torch.equal(x, color_shapes(64, 16, torch.Generator().manual_seed(0)))
    # sharp edges: neighbouring pixels often differ by a lot, images differ from each other
    jumps = (x[..., 1:] - x[..., :-1]).abs().amax(dim=(1, 2, 3))
    assert (jumps > 0.5).float().mean() > 0.9
    assert x.std(dim=0).mean() > 0.3
    with pytest.raises(ValueError, match="size"):
        color_shapes(4, 2)


def test_manifold_problem_is_figure_3s_data_drawn_in_one_order():
    from emdm.data import manifold_problem

    p = manifold_problem(64, sigma_y=0.05, seed=3, truth=10)
    assert p.x.shape == (64, 5) and p.truth.shape == (10, 5) and p.obs.y.shape == (64, 2)
    A = p.obs.A.matrix
    assert A.shape == (64, 2, 5) and A.dtype == torch.float32
    torch.testing.assert_close(A.norm(dim=-1), torch.ones(64, 2))
    noise = p.obs.y - (A @ p.x[..., None])[..., 0]
    assert 0.03 < noise.std() < 0.07  # y = A x + 0.05 ε
    again = manifold_problem(64, sigma_y=0.05, seed=3)  # the truth points are drawn last
    assert torch.equal(again.obs.y, p.obs.y) and len(again.truth) == 0
    assert not torch.equal(manifold_problem(64, 0.05, seed=4).x, p.x)
    assert max(p.x.abs().max(), p.truth.abs().max()) <= 2.5  # the curve scaled to [-2, 2]
