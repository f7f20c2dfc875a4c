"""The README's library example runs as written (in a temporary folder)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_library_example_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## The library\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    # EMConfig.keep_range drops the samples with a coordinate outside (-3, 3), as the paper
    samples = scope["samples"]
    assert samples.shape[1:] == (5,) and 400 < len(samples) <= 512
    assert torch.isfinite(samples).all()
    assert scope["x_post"].shape == (8, 5) and torch.isfinite(scope["x_post"]).all()
    assert (tmp_path / "runs" / "toy" / "model.json").exists()
