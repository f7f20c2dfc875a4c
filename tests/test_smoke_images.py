"""The image scripts' smoke presets end to end on the CPU: the paper's shapes, networks and
operators (CIFAR's U-Net at 32x32, the MRI U-Net behind the 4x4 pixel unshuffle at 320x320, the
ADM U-Net at 256x256) with every loop cut to a step or two, on fake data files in the real
formats. What a paper run would hit first (a shape, dtype or memory error) fails here."""

import json
import resource

import numpy as np
import pandas as pd
import pytest
import torch

from emdm.data import write_fake_cifar, write_fake_fastmri, write_fake_images
from emdm.em import checkpoint_bytes
from emdm.metrics.lpips import write_random_lpips
from emdm.nn.adm import write_random_adm
from reproduce import fig6, fig15, table1, table4

pytestmark = pytest.mark.slow
# Figures 6 and 15 and Table 4 run in 25-45 s each on 2 idle CPU cores, Table 1 in 100 s; all in
# `make test` (bench/gpu_all.sh runs every preset on CUDA)


def _published(out, name: str) -> pd.DataFrame:
    r"""The result `name` in `out`: its table, every value finite, labelled a smoke run."""
    meta = json.loads((out / f"{name}.json").read_text())
    assert meta["config"]["scale"] == "smoke" and meta["config"]["name"] == name
    frame = pd.read_csv(out / f"{name}.csv")
    assert len(frame) > 0 and np.isfinite(frame.value).all(), frame
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"{name}: peak RSS of the session so far {peak:.2f} GiB")
    return frame


@pytest.mark.parametrize("script", [table1, fig6, fig15, table4])
def test_smoke_help_and_dry_run(script, capsys):
    with pytest.raises(SystemExit) as error:
        script.main(["--smoke", "--help"])
    assert error.value.code == 0
    assert "Defaults shown: the smoke preset's." in capsys.readouterr().out
    assert script.main(["--smoke", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["scale"] == "smoke" and cfg["name"] == f"{script.__name__.split('.')[-1]}_smoke"
    with pytest.raises(SystemExit):  # one preset at a time
        script.main(["--smoke", "--quick", "--dry-run"])


def test_table1_smoke(tmp_path):
    write_fake_cifar(tmp_path / "data", per_batch=10)  # 10 test images: the IS's 10 splits
    argv = ["--smoke", "--data-dir", str(tmp_path / "data"), "--quiet", "--out", str(tmp_path)]
    assert table1.main(argv) == 0
    frame = _published(tmp_path, "table1_smoke")
    assert set(frame.covariance) == {"tweedie", "identity", "sigma_t", "truth"}
    fid = frame[frame.metric == "fid"]
    assert sorted(fid.em_iteration.unique()) == [0, 1]  # q_0 and the one lap
    check = frame[frame.metric.str.startswith("posterior_rmse_")]
    assert len(check) == 3 * 3  # every run's prior with every covariance
    for name in ("fig4_smoke.png", "table1_smoke_samples.png"):
        assert (tmp_path / name).exists()
    samples = torch.load(tmp_path / "table1_smoke_run" / "tweedie_75" / "samples_1.pt")
    assert samples.shape == (10, 3, 32, 32) and samples.isfinite().all()


def _fastmri(root):
    r"""Fake fastMRI knees at the real 320x320: 2 train slices and 2 held-out ones (a volume
    of 12 slices gives its slices 10 and 11)."""
    for split in ("train", "val"):
        write_fake_fastmri(root / f"singlecoil_{split}", 1, slices=12, size=320)
    return ["--data-dir", str(root)]


def test_fig6_smoke(tmp_path):
    argv = ["--smoke", *_fastmri(tmp_path / "data"), "--quiet", "--out", str(tmp_path)]
    assert fig6.main(argv) == 0
    frame = _published(tmp_path, "fig6_smoke")
    assert set(frame.method) == {"posterior_mean", "zero_filled"}
    assert set(frame.metric) == {"psnr", "ssim"} and np.isfinite(frame["std"]).all()
    assert (tmp_path / "fig6_smoke.png").exists()
    # the disk check's sizes, from a model and samples on the meta device, against the files
    with torch.device("meta"):
        sizes = checkpoint_bytes(fig6.SMOKE.net.build(), torch.empty(2, 1, 320, 320), True, 1)
    for name, key in (("last.pt", "last.pt"), ("prior_1.pt", "prior_<k>.pt"), ("q0.pt", "q0.pt")):
        size, written = sizes[key], (tmp_path / "fig6_smoke_run" / name).stat().st_size
        assert written <= size <= 1.001 * written + 8192, (name, written, size)


def test_fig15_smoke(tmp_path):
    argv = ["--smoke", *_fastmri(tmp_path / "data"), "--quiet", "--out", str(tmp_path)]
    assert fig15.main(argv) == 0
    frame = _published(tmp_path, "fig15_smoke")
    assert set(frame.covariance) == {"truth", "identity", "tweedie"}
    assert (frame[frame.covariance != "truth"].em_iteration == 1).all()
    assert (frame.value > 0).all() and (tmp_path / "fig15_smoke.png").exists()


def test_table4_smoke(tmp_path):
    # the paper's protocol with DPS's FFHQ U-Net at full size, its weights seeded random values
    # (no download), one random 256 x 256 image and LPIPS weight files of random values
    write_random_adm(tmp_path / "ffhq_10m.pt")
    write_random_lpips(tmp_path)
    write_fake_images(tmp_path / "images", 1, 256)
    argv = ["--smoke", "--checkpoint", str(tmp_path / "ffhq_10m.pt"), "--image-dir",
            str(tmp_path / "images"), "--lpips-alexnet", str(tmp_path / "alexnet.pth"),
            "--lpips-linear", str(tmp_path / "alex.pth"), "--quiet",
            "--out", str(tmp_path)]  # fmt: skip
    # on 2 CPU cores a VJP of this U-Net takes ~30 s: one task and two methods of the preset's
    # 4 x 7 (a GPU runs them all), 1 step
    argv += ["--tasks", "box", "--methods", "dps", "mmps1", "--steps", "1"]
    assert table4.main(argv) == 0
    frame = _published(tmp_path, "table4_smoke")
    assert set(frame.metric) == {"psnr", "ssim", "lpips"} and len(frame) == 2 * 3
    for name in ("fig17_smoke.png", "fig18_smoke.png"):
        assert (tmp_path / name).exists()


def test_fig15_smoke_under_torchrun_in_a_group_of_one(tmp_path):
    # what bench/gpu_all.sh's step 4b runs with NCCL on one GPU, here with gloo: the launcher,
    # a process group of one (EMDM_PROCESS_GROUP=1), DDP and the collectives
    from reproduce.__main__ import main as runner

    out, data = tmp_path / "out", tmp_path / "data"
    assert runner(["smoke", "fig15", "--torchrun", "1", "--quiet", "--out", str(out),
                   "--data", str(data)]) == 0  # fmt: skip
    meta = json.loads((out / "fig15_smoke.json").read_text())
    assert meta["provenance"]["processes"] == {"world": 1, "backend": "gloo"}
    _published(out, "fig15_smoke")
