"""Each reproduce script end to end at toy size: files written, numbers finite, resume works."""

import importlib
import json
import re
import time

import pandas as pd
import pytest
import torch
from conftest import write_fake_inception

from reproduce import fig1, fig2, fig3, fig6, fig7, fig15, table1


def test_fig7(tmp_path):
    assert fig7.main(["--quick", "--samples", "512", "--out", str(tmp_path)]) == 0
    for suffix in (".png", ".csv", ".json", "_samples.npy"):
        assert (tmp_path / f"fig7_quick{suffix}").exists()
    assert json.loads((tmp_path / "fig7_quick.json").read_text())["scale"] == "quick"


def test_fig1(tmp_path):
    argv = ["--quick", "--samples", "2048", "--ot-samples", "256", "--out", str(tmp_path)]
    assert fig1.main(argv) == 0
    frame = pd.read_csv(tmp_path / "fig1_quick.csv")
    assert set(frame.covariance) == {"exact", "tweedie", "cov_x", "sigma_t", "zero"}
    assert (tmp_path / "fig1_quick.png").exists()


def test_fig2(tmp_path):
    argv = ["--quick", "--seeds", "1", "--prior-samples", "4096", "--ot-samples", "128",
            "--sigmas", "0.1", "1.0", "--quiet", "--out", str(tmp_path)]  # fmt: skip
    assert fig2.main(argv) == 0
    frame = pd.read_csv(tmp_path / "fig2_quick.csv")
    assert len(frame) == 2 * 6 and (frame.value > 0).all()  # 4 covariances and 2 floors
    assert (tmp_path / "fig2_quick.png").exists()


TINY = ["--quick", "--observations", "256", "--start-iterations", "1", "--start-steps",
        "4", "--em-iterations", "2", "--em-train-steps", "4", "--em-batch-size", "64",
        "--em-steps", "4", "--ot-samples", "64", "--quiet"]  # fmt: skip


def test_fig3_both_e_steps_and_resume(tmp_path):
    assert fig3.main([*TINY, "--out", str(tmp_path)]) == 0
    frame = pd.read_csv(tmp_path / "fig3_quick.csv")
    scores = frame[frame.metric == "score_emd"].sort_values(["covariance", "em_iteration"])
    laps = scores.groupby("covariance").em_iteration.apply(list).to_dict()
    assert laps == {"cov_x": [0, 1, 2], "tweedie": [0, 1, 2]}  # the paper's E-step, then Tweedie
    assert scores[scores.em_iteration == 0].value.nunique() == 1  # one q_0 for both
    assert {"loss", "kept", "guard"} <= set(frame.metric)
    # q_0's V_t is positive definite: the paper's E-step never needs the solve's guard
    assert (frame.query("covariance == 'cov_x' and metric == 'guard'").value == 0).all()
    for name in ("fig3_quick.png", "fig3_quick_score.png", "fig3_quick_q1.npy",
                 "fig3_quick_tweedie.png", "fig3_quick_tweedie_q2.npy"):  # fmt: skip
        assert (tmp_path / name).exists()
    # a finished run resumes to the same result without recomputing its iterations
    assert fig3.main([*TINY, "--out", str(tmp_path), "--resume"]) == 0
    again = pd.read_csv(tmp_path / "fig3_quick.csv")
    pd.testing.assert_frame_equal(frame, again)
    with pytest.raises(ValueError, match="differing keys"):
        fig3.main([*TINY, "--out", str(tmp_path), "--resume", "--em-lr", "0.01"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
@pytest.mark.parametrize("script", [fig2, fig3])
def test_device_is_checked_before_any_work(script, capsys):
    with pytest.raises(SystemExit):
        script.main(["--quick", "--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err


def test_table4_quick_tiny(tmp_path):
    from reproduce import table4

    argv = ["--quick", "--images", "1", "--samples", "4", "--size", "16", "--components", "4",
            "--steps", "3", "--tasks", "box", "sr4", "--methods", "dps", "mmps3",
            "--quiet", "--out", str(tmp_path)]  # fmt: skip
    assert table4.main(argv) == 0
    frame = pd.read_csv(tmp_path / "table4_quick.csv")
    assert set(frame.metric) == {"psnr", "ssim", "mean_rmse", "nearest_mass_tv", "ot_score"}
    assert len(frame) == 2 * 2 * 5 and frame.value.notna().all()
    # the paper configuration stops before any work when a file is missing
    none = ["--images", "1", "--image-dir", str(tmp_path / "none"), "--device", "cpu"]
    assert table4.main(none) == 2


def test_table4_paper_path_on_tiny_files(tmp_path):
    # the paper's protocol end to end, with a tiny ADM checkpoint, one 32 x 32 image and
    # LPIPS weight files of random values in the real files' formats
    import numpy as np
    import torchvision
    from PIL import Image

    from emdm.metrics.lpips import CHANNELS
    from emdm.nn.adm import ADMConfig, ADMUNet
    from reproduce import table4

    torch.manual_seed(0)
    cfg = ADMConfig(image_size=32, model_channels=32, channel_mult=(1, 2), num_head_channels=16)
    torch.save(ADMUNet(cfg).state_dict(), tmp_path / "adm.pt")
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "alexnet.pth")
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(CHANNELS)}
    torch.save(lin, tmp_path / "alex.pth")
    (tmp_path / "images").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "images" / "00000.png")
    argv = ["--images", "1", "--tasks", "box", "sr4", "--methods", "dps", "mmps1", "--steps",
            "2", "--device", "cpu", "--checkpoint", str(tmp_path / "adm.pt"),
            "--image-dir", str(tmp_path / "images"), "--lpips-alexnet",
            str(tmp_path / "alexnet.pth"), "--lpips-linear", str(tmp_path / "alex.pth"),
            "--adm-image-size", "32", "--adm-model-channels", "32", "--adm-channel-mult", "1",
            "2", "--adm-num-head-channels", "16", "--quiet", "--out", str(tmp_path)]  # fmt: skip
    assert table4.main(argv) == 0
    frame = pd.read_csv(tmp_path / "table4.csv")
    assert set(frame.metric) == {"psnr", "ssim", "lpips"} and len(frame) == 2 * 2 * 3
    assert frame.value.notna().all()


def test_table5_quick_tiny(tmp_path):
    from reproduce import table5

    argv = ["--quick", "--batch", "2", "--size", "16", "--components", "4", "--steps", "2",
            "--methods", "tmpd", "mmps1", "--quiet", "--out", str(tmp_path)]  # fmt: skip
    assert table5.main(argv) == 0  # non-zero if a counted VJP number differs from the declared
    frame = pd.read_csv(tmp_path / "table5_quick.csv")
    vjps = frame[frame.metric == "vjps_per_step"].set_index("method").value
    assert vjps.to_dict() == {"tmpd": 2.0, "mmps1": 2.0}
    # the paper configuration stops before any work without its checkpoint
    assert table5.main(["--device", "cpu", "--checkpoint", str(tmp_path / "none.pt")]) == 2


def test_table5_paper_path_on_a_tiny_checkpoint(tmp_path):
    from emdm.nn.adm import ADMConfig, ADMUNet
    from reproduce import table5

    cfg = ADMConfig(image_size=32, model_channels=32, channel_mult=(1, 2), num_head_channels=16)
    torch.save(ADMUNet(cfg).state_dict(), tmp_path / "adm.pt")
    argv = ["--device", "cpu", "--checkpoint", str(tmp_path / "adm.pt"), "--steps", "2",
            "--methods", "pgdm", "mmps3", "--adm-image-size", "32", "--adm-model-channels",
            "32", "--adm-channel-mult", "1", "2", "--adm-num-head-channels", "16", "--quiet",
            "--out", str(tmp_path)]  # fmt: skip
    assert table5.main(argv) == 0
    frame = pd.read_csv(tmp_path / "table5.csv")
    vjps = frame[frame.metric == "vjps_per_step"].set_index("method").value
    assert vjps.to_dict() == {"pgdm": 1.0, "mmps3": 4.0}


IMAGES = ["--quick", "--observations", "48", "--size", "8", "--em-iterations", "1",
          "--em-train-steps", "2", "--em-batch-size", "16", "--em-steps", "2",
          "--em-sample-batch", "24", "--start-iterations", "1", "--start-steps", "2",
          "--start-rank", "4", "--start-observations", "32", "--net-hid-channels", "8", "16",
          "--net-emb-features", "16", "--quiet"]  # fmt: skip


def test_table1_fig4_tiny_and_resume(tmp_path):
    argv = [*IMAGES, "--eval-samples", "20", "--eval-steps", "2", "--reference", "24",
            "--heuristics", "identity", "--out", str(tmp_path)]  # fmt: skip
    assert table1.main(argv) == 0
    frame = pd.read_csv(tmp_path / "table1_quick.csv")
    assert set(frame.covariance) == {"tweedie", "identity", "truth"}  # truth: the floor
    fid = frame[frame.metric == "fid"]
    assert sorted(fid.em_iteration.unique()) == [0, 1] and (fid.value >= 0).all()
    metrics = {"isc", "loss", "guard", "fid_floor", "fd_pixels", "fd_pixels_floor"}
    assert metrics <= set(frame.metric)
    estep = frame[frame.metric.isin(("fid_estep", "fd_pixels_estep"))]  # laps 0 and 1, 2 runs
    assert len(estep) == 8 and (estep.value >= 0).all()
    assert {"fid_estep_floor", "fd_pixels_estep_floor"} <= set(frame.metric)
    check = frame[frame.metric.str.startswith("posterior_")]  # every prior x covariance
    assert len(check) == 8 and (check.em_iteration == 1).all() and (check.value > 0).all()
    assert set(check.metric) == {f"posterior_{m}_{c}" for m in ("rmse", "spread")
                                 for c in ("tweedie", "identity")}  # fmt: skip
    for name in ("fig4_quick.png", "table1_quick_samples.png", "table1_quick.json"):
        assert (tmp_path / name).exists()
    assert (tmp_path / "table1_quick_run" / "reference_emdm-tiny.npz").exists()  # FID's, once
    assert table1.main([*argv, "--resume"]) == 0  # finished: re-reports, recomputes nothing
    pd.testing.assert_frame_equal(frame, pd.read_csv(tmp_path / "table1_quick.csv"))


def test_table1_stops_before_work_without_inception_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("EMDM_INCEPTION", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="weights-inception"):
        table1.main(["--inception-weights", str(tmp_path / "absent.pth"), "--out", str(tmp_path)])
    assert not (tmp_path / "table1_run").exists()


def test_fig6_tiny(tmp_path):
    argv = [*IMAGES, "--size", "16", "--net-channels", "4", "--test-slices", "3",
            "--posterior-samples", "2", "--eval-steps", "2", "--accelerations", "4", "8",
            "--out", str(tmp_path)]  # fmt: skip
    assert fig6.main(argv) == 0
    frame = pd.read_csv(tmp_path / "fig6_quick.csv")
    assert set(frame.method) == {"posterior_mean", "zero_filled"}
    assert set(frame.acceleration) == {4.0, 8.0} and set(frame.metric) == {"psnr", "ssim"}
    assert (tmp_path / "fig6_quick.png").exists()


def test_fig15_tiny_and_resume(tmp_path):
    argv = [*IMAGES, "--size", "16", "--net-channels", "4", "--em-iterations", "1", "--lap", "1",
            "--em-cg-iterations", "1", "--start-cg-iterations", "1", "--samples", "4",
            "--eval-steps", "2", "--out", str(tmp_path)]  # fmt: skip
    assert fig15.main(argv) == 0
    frame = pd.read_csv(tmp_path / "fig15_quick.csv")
    assert set(frame.covariance) == {"truth", "identity", "tweedie"}
    assert set(frame.metric) == {"column_difference", "row_difference", "stripe_ratio"}
    assert (frame[frame.covariance != "truth"].em_iteration == 1).all()
    assert (frame.value > 0).all() and (tmp_path / "fig15_quick.png").exists()
    run = tmp_path / "fig15_quick_run"
    checkpoints = {p: p.stat().st_mtime_ns for p in run.glob("*/*.pt")}
    assert {p.parent.name for p in checkpoints} == {"identity", "tweedie"}
    assert fig15.main([*argv, "--resume"]) == 0  # finished: re-reports, relearns nothing
    pd.testing.assert_frame_equal(frame, pd.read_csv(tmp_path / "fig15_quick.csv"))
    assert {p: p.stat().st_mtime_ns for p in run.glob("*/*.pt")} == checkpoints


@pytest.mark.parametrize("script", [table1, fig6, fig15])
def test_image_scripts_stop_before_work_without_data(script, tmp_path, monkeypatch):
    monkeypatch.setenv("EMDM_INCEPTION", str(tmp_path))  # a folder without the weights file
    write_fake_inception(tmp_path / "weights-inception-2015-12-05-6726825d.pth")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        script.main(["--data-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


REFUSED = [
    ("fig3", ["--quick", "--sigma-y", "-1"], "sigma_y"),
    ("fig3", ["--quick", "--ot-samples", "0"], "ot_samples"),
    ("fig3", ["--quick", "--em-sample-batch", "0"], "sample_batch"),
    ("fig3", ["--quick", "--observations", "0"], "observations"),
    ("fig3", ["--quick", "--em-lr", "-1"], "lr"),
    ("fig3", ["--quick", "--compare", "cov_x"], "compare"),
    ("fig1", ["--sigma-t", "-1"], "sigma_t"),
    ("fig1", ["--samples", "0"], "samples"),
    ("table4", ["--quick", "--steps", "0"], "steps"),
    ("table5", ["--quick", "--batch", "0"], "batch"),
    ("fig2", ["--quick", "--seeds", "0"], "seeds"),
    ("fig15", ["--quick", "--lap", "3"], "lap"),  # beyond the quick preset's 2 laps
    ("mmps_check", ["--name", "a/b"], "name"),
]


def _main(script: str):
    module = "emdm.mmps_check" if script == "mmps_check" else f"reproduce.{script}"
    return importlib.import_module(module).main


@pytest.mark.parametrize(
    "script, argv, field", REFUSED, ids=[f"{s} {' '.join(a)}" for s, a, _ in REFUSED]
)
def test_bad_values_are_refused_at_parse_time(script, argv, field, tmp_path, capsys):
    main, out = _main(script), tmp_path / "out"
    start = time.perf_counter()
    with pytest.raises(SystemExit) as error:
        main([*argv, "--out", str(out)])
    assert time.perf_counter() - start < 1.0  # refused before any work
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert re.search(rf"error: (each value of )?{field} must be ", err), err
    assert not out.exists()


SCRIPTS = ["fig1", "fig2", "fig3", "fig6", "fig7", "fig15", "table1", "table4", "table5",
           "mmps_check"]  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("quick", [[], ["--quick"]], ids=["paper", "quick"])
def test_help_gives_every_flag_a_help_text(script, quick, capsys, monkeypatch):
    if script == "mmps_check" and quick:
        pytest.skip("the MMPS check has one scale")
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as error:
        _main(script)([*quick, "--help"])
    assert error.value.code == 0
    text = capsys.readouterr().out
    entries = re.split(r"\n(?=  -)", text[text.index("options:") :])[1:]  # one per flag
    assert len(entries) > 5
    for entry in entries:
        parts = re.split(r"\s{2,}", " ".join(entry.split("\n")).strip(), maxsplit=1)
        flag = parts[0]
        help = re.sub(r"\(default: .*\)$", "", parts[1] if len(parts) > 1 else "").strip()
        assert help and not help.startswith("must be"), f"{script}: {flag} has no help"
