"""Issue 18: long commands show signs of life where stderr is not a terminal (a log file,
a pipe): one line at least every PROGRESS_INTERVAL seconds (10 s; shortened here), not a
tqdm bar redrawn with carriage returns. Under pytest stderr is captured: not a terminal."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import snnl.progress
from snnl.cli import main


@pytest.fixture(autouse=True)
def _often(monkeypatch):
    monkeypatch.setattr(snnl.progress, "PROGRESS_INTERVAL", 0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _progress_lines(err: str, command: str) -> list[str]:
    assert "\r" not in err  # real lines, no bar redrawn in place
    pattern = re.compile(rf"^snnl {command}: .+ \(\d+ s\)$")
    return [line for line in err.splitlines() if pattern.match(line)]


def test_train_and_profile_print_progress_lines(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--epochs", "2", "--limit-train", "300"]
    assert main([*args, "--limit-test", "100", "--batch-size", "16", "--out", str(out)]) == 0
    lines = _progress_lines(capsys.readouterr().err, "train")
    assert len(lines) >= 3
    steps = [line for line in lines if re.search(r": epoch [12]/2, step \d+ \(", line)]
    assert steps, lines  # the stage names the epoch and the step
    assert main(["profile", str(out), "--limit", "60", "--steps", "2"]) == 0
    lines = _progress_lines(capsys.readouterr().err, "profile")
    assert len(lines) >= 2 and "profiling clean, corrupted and PGD inputs" in lines[0]


def test_entanglement_search_prints_progress_lines(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = np.arange(3000) % 5
    x = (rng.normal(size=(3000, 16)) + 0.5 * y[:, None]).astype(np.float32)
    np.save(tmp_path / "f.npy", x)
    np.save(tmp_path / "f_labels.npy", y)
    assert main(["entanglement", str(tmp_path / "f.npy"), "--plot", str(tmp_path / "c.png")]) == 0
    captured = capsys.readouterr()
    lines = _progress_lines(captured.err, "entanglement")
    assert len(lines) >= 2
    assert any("searching the optimal T over all 3000 anchors" in line for line in lines)
    assert "SNNL        :" in captured.out  # stdout holds the result only
    assert not _progress_lines(captured.out, "entanglement")


def test_no_progress_lines_in_a_quick_command_at_the_default_interval(capsys, monkeypatch):
    monkeypatch.setattr(snnl.progress, "PROGRESS_INTERVAL", 10.0)
    assert main(["entanglement", "--temperature", "1"]) == 0
    assert _progress_lines(capsys.readouterr().err, "entanglement") == []
