"""The smoke presets of the lighter reproduce scripts end to end on the CPU: the paper's shapes,
networks and operators with every loop cut to a step or two (slow: about 3 min together)."""

import json
import math

import pandas as pd
import pytest

from reproduce import fig2, fig3, table5

SCRIPTS = {"fig2": fig2, "fig3": fig3, "table5": table5}


def _check_outputs(tmp_path, name: str) -> pd.DataFrame:
    meta = json.loads((tmp_path / f"{name}.json").read_text())
    # write_results labels the top level "quick" or "paper" only; the config holds "smoke"
    assert meta["scale"] == meta["config"]["scale"] == "smoke" and meta["config"]["name"] == name
    frame = pd.read_csv(tmp_path / f"{name}.csv")
    assert len(frame) > 0 and all(math.isfinite(v) for v in frame.value)
    return frame


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_help_and_dry_run(script, capsys):
    main = SCRIPTS[script].main
    with pytest.raises(SystemExit) as exit_:
        main(["--smoke", "--help"])
    assert exit_.value.code == 0 and "the smoke preset's" in capsys.readouterr().out
    assert main(["--smoke", "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["scale"] == "smoke" and config["name"] == f"{script}_smoke"
    with pytest.raises(SystemExit):
        main(["--smoke", "--quick", "--dry-run"])


@pytest.mark.slow
def test_fig2_smoke(tmp_path):
    assert fig2.main(["--smoke", "--out", str(tmp_path), "--quiet"]) == 0
    frame = _check_outputs(tmp_path, "fig2_smoke")
    # the 4 covariances, the resampling floor and the noise floor, at the one σ_t
    assert len(frame) == 6 and set(frame.method) == {"sinkhorn"}
    assert (tmp_path / "fig2_smoke.png").exists()


@pytest.mark.slow
def test_fig3_smoke(tmp_path):
    assert fig3.main(["--smoke", "--out", str(tmp_path), "--quiet"]) == 0
    frame = _check_outputs(tmp_path, "fig3_smoke")
    assert sorted(set(frame[frame.metric == "score_emd"].em_iteration)) == [0, 1]
    for suffix in (".png", "_score.png", "_q1.npy"):
        assert (tmp_path / f"fig3_smoke{suffix}").exists()


@pytest.mark.slow  # the 256 x 256 ADM U-Net: a minute on 2 idle CPU cores
def test_table5_smoke(tmp_path):
    assert table5.main(["--smoke", "--out", str(tmp_path), "--quiet"]) == 0
    frame = _check_outputs(tmp_path, "table5_smoke")
    costs = frame.set_index(["method", "metric"]).value
    assert costs["mmps1", "vjps_per_step"] == costs["mmps1", "declared_vjps_per_step"] == 2


@pytest.mark.slow
def test_table5_network_and_smoke_are_two_presets(capsys):
    with pytest.raises(SystemExit):
        table5.main(["--network", "--smoke", "--dry-run"])
    assert "presets: pass one" in capsys.readouterr().err
