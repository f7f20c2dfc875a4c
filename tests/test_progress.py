from tqdm import tqdm

import emdm.progress as progress
from emdm.progress import bar, say


def test_plain_lines_when_not_a_terminal(capsys):  # capsys: a log file, not a terminal
    for i in bar(range(3), desc="EM", initial=13, total=16):
        say(f"EM iteration {14 + i}: score 0.1")
    out, text = capsys.readouterr()
    assert "\x1b" not in text and "\r" not in text  # no escape codes in a log
    lines = text.splitlines()
    assert lines[0].startswith("EM: 13/16 (81 %)")  # a resumed run counts k/K, not k/(K - k)
    assert lines[-1].startswith("EM: 16/16 (100 %)")
    assert out.splitlines() == [f"EM iteration {k}: score 0.1" for k in (14, 15, 16)]


def test_lines_at_most_every_interval(capsys, monkeypatch):
    clock = iter(range(0, 1000, 10))  # each step takes 10 s
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    list(bar(range(10), desc="M-step", every=30.0))
    lines = capsys.readouterr().err.splitlines()
    assert 3 <= len(lines) <= 6  # start, every 30 s, end: not one per step
    assert "left" in lines[1] and lines[-1].startswith("M-step: 10/10")


def test_silent_and_postfix(capsys):
    steps = bar(range(2), False)
    steps.set_postfix(loss="0.5")
    assert list(steps) == [0, 1] and capsys.readouterr() == ("", "")
    steps = bar(range(2), desc="M-step")
    steps.set_postfix(loss="0.5")
    list(steps)
    assert "loss 0.5" in capsys.readouterr().err


def test_a_bar_on_a_terminal(monkeypatch):
    monkeypatch.setattr(progress, "_terminal", lambda: True)
    steps = bar(range(2), desc="EM", initial=1, total=3)
    assert isinstance(steps, tqdm) and steps.total == 3 and steps.n == 1
    steps.close()
