"""The command-line front of `emdm.errors`: bad input a user can mend ends a script with one
`error: ...` line naming what to put where, status 2 and no traceback; defects keep theirs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from emdm.errors import UserError, cli

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reports_user_errors_and_missing_files_and_keeps_defects(capsys):
    def main(argv):
        kind = argv[0]
        if kind == "user":
            raise UserError("/data/x.pth is damaged: download it again")
        if kind == "missing":
            raise FileNotFoundError("/data/y does not exist: put the images there")
        if kind == "defect":
            raise KeyError("a bug")
        return 0

    assert cli(main, ["ok"]) == 0
    assert cli(main, ["user"]) == 2
    assert capsys.readouterr().err == "error: /data/x.pth is damaged: download it again\n"
    assert cli(main, ["missing"]) == 2
    assert capsys.readouterr().err == "error: /data/y does not exist: put the images there\n"
    with pytest.raises(KeyError):
        cli(main, ["defect"])


def test_python_m_emdm_dispatches_through_cli(monkeypatch, capsys):
    import emdm.__main__ as entry

    def damaged(argv):
        raise UserError(f"{argv[0]} is damaged: delete it")

    monkeypatch.setitem(entry.COMMANDS, "damaged", damaged)
    assert entry.main(["damaged", "/runs/last.pt"]) == 2
    assert capsys.readouterr().err == "error: /runs/last.pt is damaged: delete it\n"


def run_script(script, *argv, tmp_path):
    env = os.environ | {"TORCH_HOME": str(tmp_path / "torch_home"), "EMDM_DATA": ""}
    env.pop("EMDM_INCEPTION", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "reproduce" / script), *argv, "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip


def run_in_process(script, *argv, tmp_path, monkeypatch, capsys):
    r"""`run_script` without a new process (a second of imports saved per call): the same
    `cli(main)` the script's `__main__` calls, with the same environment and folder."""
    import importlib
    import types

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("EMDM_DATA", "")
    monkeypatch.delenv("EMDM_INCEPTION", raising=False)
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(f"reproduce.{script.removesuffix('.py')}")
    status = cli(module.main, [*argv, "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    return types.SimpleNamespace(returncode=status, stdout=out.out, stderr=out.err)


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_table1_without_cifar10_says_what_to_put_where(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    result = run_in_process("table1.py", "--data", "cifar", "--data-dir", str(empty),
                            "--feature-extractor", "emdm-tiny", tmp_path=tmp_path,
                            monkeypatch=monkeypatch, capsys=capsys)  # fmt: skip
    line = one_error_line(result)
    assert f"{empty / 'cifar-10-batches-py' / 'data_batch_1'} does not exist" in line
    assert "cifar-10-python.tar.gz" in line and f"extract it under {empty}" in line


def test_table1_with_a_garbage_inception_file_names_it(tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights.pth"
    weights.write_text("version https://git-lfs.github.com/spec/v1\n")  # a Git LFS pointer
    result = run_in_process("table1.py", "--inception-weights", str(weights),
                            tmp_path=tmp_path, monkeypatch=monkeypatch, capsys=capsys)  # fmt: skip
    line = one_error_line(result)
    assert f"error: {weights} is not a readable weights file" in line
    assert "download https://github.com/toshas/torch-fidelity/releases" in line
    assert "invalid literal" not in line


def test_fig6_without_fastmri_says_what_to_put_where(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    result = run_script("fig6.py", "--data", "fastmri", "--data-dir", str(empty),
                        tmp_path=tmp_path)  # fmt: skip
    line = one_error_line(result)
    assert f"{empty / 'singlecoil_train'} does not exist" in line
    assert "knee_singlecoil_train.tar.xz" in line and f"extract it under {empty}" in line
