import json

import pandas as pd
import pytest

from emdm.__main__ import COMMANDS
from emdm.__main__ import main as cli
from emdm.mmps_check import main

SMALL = ["--observations", "4", "--samples", "256", "--steps", "32", "--quiet"]


def _medians(csv):
    frame = pd.read_csv(csv)
    return frame.pivot_table(
        index="covariance", columns="metric", values="value", aggfunc="median"
    )


def test_mmps_check(tmp_path):
    argv = [*SMALL, "--covariances", "tweedie", "zero", "--out", str(tmp_path)]
    assert main(argv) == 0
    csv, js = tmp_path / "mmps_check.csv", tmp_path / "mmps_check.json"
    assert csv.exists() and js.exists()
    frame = pd.read_csv(csv)
    assert set(frame["covariance"]) == {"tweedie", "zero", "exact"}
    assert set(frame["metric"]) == {"mean_error", "mass_tv", "mean_mc_se"}
    assert len(frame) == 3 * 4 * 3
    meta = json.loads(js.read_text())
    assert meta["scale"] == "quick" and meta["config"]["samples"] == 256
    medians = _medians(csv)
    assert medians.loc["tweedie", "mean_error"] < medians.loc["zero", "mean_error"]
    # exact posterior samples: the Monte-Carlo floor of both metrics
    assert medians.loc["exact", "mean_error"] < 3 * medians.loc["exact", "mean_mc_se"]


def test_mmps_check_gaussian_prior_is_exact(tmp_path):
    # With one component the prior is Gaussian and MMPS with the Tweedie covariance is exact,
    # so the sample mean must agree with the posterior mean up to Monte-Carlo error. A broad
    # prior (std 1) makes the prior matter: 'zero' diverges here.
    argv = [*SMALL, "--components", "1", "--std", "1.0", "--covariances", "tweedie"]
    argv += ["--out", str(tmp_path)]
    assert main(argv) == 0
    medians = _medians(tmp_path / "mmps_check.csv")
    assert medians.loc["tweedie", "mean_error"] < 2 * medians.loc["tweedie", "mean_mc_se"]


def test_dry_run_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--dry-run", "--samples", "7", "--out", str(out)]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["samples"] == 7 and config["covariances"] == [
        "tweedie",
        "identity",
        "sigma_t",
        "zero",
    ]
    assert not out.exists()


def test_cli_dispatch(tmp_path, capsys):
    assert COMMANDS["mmps-check"] is main
    assert cli(["mmps-check", "--dry-run", "--out", str(tmp_path / "x")]) == 0
    assert cli(["--help"]) == 0
    assert "mmps-check" in capsys.readouterr().out
    assert cli(["nope"]) == 2
    assert "mmps-check" in capsys.readouterr().err
    assert cli([]) == 2


def test_bad_flag():
    with pytest.raises(SystemExit) as error:
        main(["--covariances", "nope"])
    assert error.value.code == 2


def test_mmps_check_tweedie_is_best_with_two_components(tmp_path):
    # With two components the posterior is nearly unimodal for most observations: the Tweedie
    # covariance stays close to the Monte-Carlo error, the heuristics do not.
    argv = [*SMALL, "--components", "2", "--out", str(tmp_path)]
    assert main(argv) == 0
    medians = _medians(tmp_path / "mmps_check.csv")
    errors = medians["mean_error"].drop("exact")
    assert errors.idxmin() == "tweedie"
    assert errors["tweedie"] < 3 * medians.loc["tweedie", "mean_mc_se"]


def test_sampler_choices_are_those_that_run_on_the_checks_ve_schedule(tmp_path, capsys):
    import dataclasses

    from emdm.mmps_check import MMPSCheckConfig

    sampler = {f.name: f for f in dataclasses.fields(MMPSCheckConfig)}["sampler"]
    assert sampler.metadata["choices"] == ("ddpm", "ddim", "pc")  # not "ddim_vp" (VP only)
    with pytest.raises(SystemExit) as error:
        main(["--sampler", "ddim_vp", "--out", str(tmp_path)])
    assert error.value.code == 2 and "invalid choice: 'ddim_vp'" in capsys.readouterr().err
    for name in sampler.metadata["choices"]:  # each choice runs
        argv = ["--observations", "1", "--samples", "2", "--steps", "2", "--covariances",
                "tweedie", "--sampler", name, "--quiet", "--out", str(tmp_path)]  # fmt: skip
        assert main(argv) == 0
