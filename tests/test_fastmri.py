import math
import re

import h5py
import numpy as np
import pytest
import torch

from emdm.data import fastmri
from emdm.operators import MRIOperator


def _expected(path, start=10, stop=41):
    with h5py.File(path, "r") as f:
        r = f["reconstruction_rss"][start:stop]
    return torch.from_numpy(r / r.max() * 4 - 2)


def test_load_fake_volumes(tmp_path):
    g = torch.Generator().manual_seed(0)
    paths = fastmri.write_fake_fastmri(
        tmp_path / "singlecoil_train", 3, slices=45, size=32, generator=g
    )
    x = fastmri.load_fastmri(tmp_path, size=32)
    assert x.shape == (3 * 31, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -2 and x.max() <= 2
    for i, path in enumerate(paths):
        volume = x[31 * i : 31 * (i + 1)]
        # the oracle read straight from the file: slices [10, 41), one maximum per volume
        torch.testing.assert_close(volume, _expected(path))
        peaks = volume.amax(dim=(1, 2))
        assert peaks.max() == 2 and peaks.min() < 1.9  # one maximum per volume, not per slice
    # the folder itself is accepted; fewer volumes; another slice range
    assert torch.equal(fastmri.load_fastmri(tmp_path / "singlecoil_train", size=None), x)
    assert fastmri.load_fastmri(tmp_path, max_volumes=2, size=32).shape[0] == 62
    torch.testing.assert_close(
        fastmri.load_fastmri(tmp_path, slices=(0, 5), size=32)[:5], _expected(paths[0], 0, 5)
    )


def test_load_env_order_and_short_volumes(tmp_path, monkeypatch):
    folder = tmp_path / "singlecoil_val"
    g = torch.Generator().manual_seed(1)
    a, b = fastmri.write_fake_fastmri(folder, 2, slices=45, size=16, generator=g)
    # sorted by name, not by writing order
    a, b = a.rename(folder / "zz.h5"), b.rename(folder / "aa.h5")
    fastmri.write_fake_fastmri(tmp_path / "short", 1, slices=20, size=16, generator=g)[0].rename(
        folder / "mm.h5"
    )
    monkeypatch.setenv("EMDM_DATA", str(tmp_path))
    x = fastmri.load_fastmri(split="val", size=16)
    assert x.shape == (31 + 10 + 31, 16, 16)  # the 20-slice volume gives slices 10..19
    torch.testing.assert_close(x[:31], _expected(b))
    torch.testing.assert_close(x[31:41], _expected(folder / "mm.h5"))
    torch.testing.assert_close(x[41:], _expected(a))
    assert torch.equal(fastmri.load_fastmri(split="val", size=16), x)  # deterministic


def test_load_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing / "singlecoil_train"))):
        fastmri.load_fastmri(missing)
    with pytest.raises(FileNotFoundError, match=r"fastmri\.med\.nyu\.edu.*knee_singlecoil_train"):
        fastmri.load_fastmri(missing)
    (tmp_path / "singlecoil_train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no \.h5 file"):
        fastmri.load_fastmri(tmp_path)
    with pytest.raises(ValueError, match="split"):
        fastmri.load_fastmri(tmp_path, split="test")

    folder = tmp_path / "singlecoil_train"
    fastmri.write_fake_fastmri(folder, 2, slices=12, size=16)
    with pytest.raises(ValueError, match=r"file1000000\.h5.*expected \(slices, 320, 320\)"):
        fastmri.load_fastmri(tmp_path)
    (folder / "file1000001.h5").write_bytes(b"not an HDF5 file" * 64)
    with pytest.raises(ValueError, match=r"file1000001\.h5 is not a readable HDF5 file"):
        fastmri.load_fastmri(tmp_path, size=16)
    with h5py.File(folder / "file1000001.h5", "w") as f:
        f.create_dataset("kspace", data=np.zeros((12, 32, 16), np.complex64))
    with pytest.raises(ValueError, match=r"file1000001\.h5 has no dataset 'reconstruction_rss'"):
        fastmri.load_fastmri(tmp_path, size=16)
    with h5py.File(folder / "file1000001.h5", "w") as f:
        f.create_dataset("reconstruction_rss", data=np.ones((12, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"file1000001\.h5.*\(12, 8, 8\).*earlier volumes"):
        fastmri.load_fastmri(tmp_path, size=None)
    with h5py.File(folder / "file1000001.h5", "w") as f:
        f.create_dataset("reconstruction_rss", data=np.ones((12, 16, 8), np.float32))
    with pytest.raises(ValueError, match=r"file1000001\.h5.*\(12, 16, 8\)"):
        fastmri.load_fastmri(tmp_path, size=16)


@pytest.mark.parametrize(
    "value, match",
    [
        (np.nan, r"has 1 NaN or infinite values and maximum 1\.0 over the finite ones"),
        (np.inf, r"has 1 NaN or infinite values"),
        (None, r"has 0 NaN or infinite values and maximum 0\.0"),  # an all-zero volume
    ],
)
def test_a_volume_with_non_finite_or_no_positive_values_is_named(tmp_path, value, match):
    from emdm.errors import UserError

    folder = tmp_path / "singlecoil_train"
    fastmri.write_fake_fastmri(folder, 2, slices=12, size=16)
    r = np.ones((12, 16, 16), np.float32)
    if value is None:
        r[:] = 0
    else:
        r[10, 3, 4] = value
    with h5py.File(folder / "file1000001.h5", "w") as f:
        f.create_dataset("reconstruction_rss", data=r)
    with pytest.raises(UserError, match=match) as error:
        fastmri.load_fastmri(tmp_path, size=16)
    message = str(error.value)
    assert "file1000001.h5: reconstruction_rss[10:12]" in message and "extract it again" in message


def test_line_mask_statistics():
    n, W, R = 4000, 320, 4
    g = torch.Generator().manual_seed(0)
    mask = fastmri.line_mask(n, W, R, generator=g)
    assert mask.shape == (n, W) and mask.dtype == torch.bool
    c = 2 * math.ceil(60 / R)
    assert mask[:, W // 2 - c // 2 : W // 2 + c // 2].all()
    assert not mask[:, : W // 2 - c // 2].all(dim=0).any()  # no other column always kept
    # the kept fraction is 1/R in expectation; its standard error over n masks
    p = (W / R - c) / (W - c)
    se = math.sqrt((W - c) * p * (1 - p) / n) / W
    assert abs(mask.float().mean().item() - 1 / R) < 4 * se
    # a new mask per slice, reproducible from the seed
    assert len({tuple(m.tolist()) for m in mask[:100]}) == 100
    torch.manual_seed(0)
    assert torch.equal(
        fastmri.line_mask(n, W, R, generator=torch.Generator().manual_seed(0)), mask
    )
    assert not torch.equal(
        fastmri.line_mask(n, W, R, generator=torch.Generator().manual_seed(1)), mask
    )


def test_line_mask_paper_and_explicit_center():
    # the paper (W = 320): p = 200 / (320 R - 120) and 2 ceil(60 / R) centre columns, equal to
    # the rule here wherever 60 / R is an integer; at R = 6, p = 1/9 and 20 centre columns
    W = 320
    for R in (1, 2, 3, 4, 5, 6, 10, 12):
        c = 2 * math.ceil(60 / R)
        assert (W / R - c) / (W - c) == pytest.approx(200 / (320 * R - 120))
    mask = fastmri.line_mask(20000, W, 6, generator=torch.Generator().manual_seed(0))
    always = mask.all(dim=0)
    assert always.sum() == 20 and always[150:170].all()
    outside = torch.cat([mask[:, :150], mask[:, 170:]], dim=1).float()
    se = math.sqrt((1 / 9) * (8 / 9) / outside.numel())
    assert abs(outside.mean().item() - 1 / 9) < 4 * se
    assert fastmri.line_mask(3, W, 1, generator=torch.Generator()).all()  # R = 1 keeps everything

    mask = fastmri.line_mask(4000, 64, 4, center=6, generator=torch.Generator().manual_seed(2))
    assert mask.all(dim=0).nonzero().flatten().tolist() == list(range(29, 35))
    p = (16 - 6) / (64 - 6)
    se = math.sqrt(58 * p * (1 - p) / 4000) / 64
    assert abs(mask.float().mean().item() - 1 / 4) < 4 * se


def test_line_mask_errors():
    with pytest.raises(ValueError, match="R must be >= 1"):
        fastmri.line_mask(1, 320, 0.5)
    with pytest.raises(ValueError, match="cannot keep 1/R"):
        fastmri.line_mask(1, 32, 8, center=6)
    with pytest.raises(ValueError, match="cannot keep 1/R"):
        fastmri.line_mask(1, 32, 20)  # the default centre (2 lines) exceeds 32/20 = 1.6 lines
    with pytest.raises(ValueError, match="center"):
        fastmri.line_mask(1, 32, 2, center=40)


def test_phantoms():
    x = fastmri.phantoms(16, 48, torch.Generator().manual_seed(0))
    assert x.shape == (16, 48, 48) and x.dtype == torch.float32
    assert x.min() == -2 and (x.amax(dim=(1, 2)) == 2).all()
    assert (x[:, 0, 0] == -2).all()  # the corners are background
    assert torch.equal(x, fastmri.phantoms(16, 48, torch.Generator().manual_seed(0)))
    assert not torch.equal(x, fastmri.phantoms(16, 48, torch.Generator().manual_seed(1)))
    # structure: a background, an object, and more than two levels inside it; images differ
    for image in x:
        assert image.std() > 0.5 and 0.2 < (image == -2).float().mean() < 0.8
        assert len(image[image > -2].unique()) > 3
    assert (x[1:] - x[:-1]).abs().mean() > 0.1
    for size in (1, 7, 320):
        assert torch.isfinite(fastmri.phantoms(2, size)).all()


def test_mri_observations_and_zero_filled():
    g = torch.Generator().manual_seed(0)
    x = fastmri.phantoms(64, 32, g)
    mask, y = fastmri.mri_observations(x, 4, g, sigma_y=0.1)
    assert mask.shape == (64, 32) and mask.dtype == torch.bool and y.shape == (64, 32, 32, 2)
    # noise on every entry: pure noise where unobserved, A x + noise where observed
    noise = y - MRIOperator(mask)(x)
    unobserved = noise.movedim(2, 1)[~mask]  # (#columns, H, 2)
    observed = noise.movedim(2, 1)[mask]
    assert unobserved.numel() > 10000 and observed.numel() > 10000
    for e in (unobserved, observed):
        assert e.std().item() == pytest.approx(0.1, rel=0.05) and abs(e.mean()) < 0.005
    # zero-filled = A^T y = Re F_c^-1 (M y), against torch.fft
    z = torch.view_as_complex(y.contiguous()) * mask[:, None, :]
    z = torch.fft.fftshift(
        torch.fft.ifft2(torch.fft.ifftshift(z, dim=(1, 2)), norm="ortho"), dim=(1, 2)
    )
    torch.testing.assert_close(fastmri.zero_filled(y, mask), z.real.float(), atol=1e-5, rtol=1e-5)
    # without noise at R = 1 everything is observed and F_c is unitary: A^T A x = x
    mask, y = fastmri.mri_observations(x, 1, g, sigma_y=0)
    torch.testing.assert_close(fastmri.zero_filled(y, mask), x, atol=1e-5, rtol=1e-5)
