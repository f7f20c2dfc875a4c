import json

import pandas as pd
import pytest

from emdm.__main__ import COMMANDS
from emdm.__main__ import main as cli
from emdm.demo import main

SMALL = ["--observations", "4", "--samples", "256", "--steps", "32", "--quiet"]


def _medians(csv):
    frame = pd.read_csv(csv)
    return frame.pivot_table(
        index="covariance", columns="metric", values="value", aggfunc="median"
    )


def test_demo(tmp_path):
    argv = [*SMALL, "--covariances", "tweedie", "zero", "--out", str(tmp_path)]
    assert main(argv) == 0
    csv, js = tmp_path / "demo.csv", tmp_path / "demo.json"
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


def test_demo_gaussian_prior_is_exact(tmp_path):
    # With one component the prior is Gaussian and MMPS with the Tweedie covariance is exact,
    # so the sample mean must agree with the posterior mean up to Monte-Carlo error. A broad
    # prior (std 1) makes the prior matter: 'zero' diverges here.
    argv = [*SMALL, "--components", "1", "--std", "1.0", "--covariances", "tweedie"]
    argv += ["--out", str(tmp_path)]
    assert main(argv) == 0
    medians = _medians(tmp_path / "demo.csv")
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
    assert COMMANDS["demo"] is main
    assert cli(["demo", "--dry-run", "--out", str(tmp_path / "x")]) == 0
    assert cli(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert cli(["nope"]) == 2
    assert "demo" in capsys.readouterr().err
    assert cli([]) == 2


def test_bad_flag():
    with pytest.raises(SystemExit) as error:
        main(["--covariances", "nope"])
    assert error.value.code == 2


def test_demo_tweedie_is_best_with_two_components(tmp_path):
    # With two components the posterior is nearly unimodal for most observations: the Tweedie
    # covariance stays close to the Monte-Carlo error, the heuristics do not.
    argv = [*SMALL, "--components", "2", "--out", str(tmp_path)]
    assert main(argv) == 0
    medians = _medians(tmp_path / "demo.csv")
    errors = medians["mean_error"].drop("exact")
    assert errors.idxmin() == "tweedie"
    assert errors["tweedie"] < 3 * medians.loc["tweedie", "mean_mc_se"]
