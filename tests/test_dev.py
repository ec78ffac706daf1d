"""Tests for dev.py: `dev.py test` (the CI gate) lints with ruff before it runs pytest."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def dev(monkeypatch):
    spec = importlib.util.spec_from_file_location("snnl_dev_script", ROOT / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "setup", lambda: Path(sys.executable))  # no installs
    return module


def _record(monkeypatch, dev, codes: dict[str, int]) -> list[list[str]]:
    """Replace subprocess.call: record each command, return codes[tool] (default 0)."""
    calls: list[list[str]] = []

    def call(cmd, cwd=None, env=None):
        calls.append([str(c) for c in cmd[1:]])
        tool = " ".join(str(c) for c in cmd[2:4])  # e.g. "ruff format", "pytest -q"
        return next((rc for key, rc in codes.items() if tool.startswith(key)), 0)

    monkeypatch.setattr(dev.subprocess, "call", call)
    return calls


def test_test_lints_then_runs_pytest(dev, monkeypatch):
    calls = _record(monkeypatch, dev, {})
    assert dev.main(["test", "-q"]) == 0
    assert calls == [
        ["-m", "ruff", "check", "src", "tests", "benchmarks"],
        ["-m", "ruff", "format", "--check", "src", "tests", "benchmarks"],
        ["-m", "pytest", "-q"],
    ]


@pytest.mark.parametrize("failing", ["ruff check", "ruff format"])
def test_a_lint_problem_fails_before_pytest(dev, monkeypatch, capsys, failing):
    calls = _record(monkeypatch, dev, {failing: 1})
    assert dev.main(["test"]) == 1
    assert [c[2] for c in calls] == ["check", "format"]  # both lint steps, no pytest
    assert "lint failed" in capsys.readouterr().out


def test_pytest_status_is_returned_and_lint_alone(dev, monkeypatch):
    _record(monkeypatch, dev, {"pytest": 5})
    assert dev.main(["test"]) == 5
    calls = _record(monkeypatch, dev, {})
    assert dev.main(["lint"]) == 0
    assert [c[1] for c in calls] == ["ruff", "ruff"]


def test_real_ruff_flags_lint_and_format_problems(dev, monkeypatch, tmp_path):
    """The lint step with the real ruff on a small tree: clean passes, each problem fails."""
    for folder in dev.LINT_PATHS:
        (tmp_path / folder).mkdir()
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    module = tmp_path / "src" / "m.py"
    monkeypatch.setattr(dev, "ROOT", tmp_path)
    env = {"PATH": "", "PYTHONUNBUFFERED": "1"}
    module.write_text('"""A clean module."""\n\nVALUE = 1\n')
    assert dev.lint(Path(sys.executable), env) == 0
    module.write_text('"""Unused import."""\n\nimport os\n\nVALUE = 1\n')  # F401
    assert dev.lint(Path(sys.executable), env) != 0
    module.write_text('"""Badly formatted."""\n\nVALUE=[1,2]\n')  # ruff check passes this
    assert dev.lint(Path(sys.executable), env) != 0


def test_run_resolves_relative_paths_from_the_callers_folder(dev, monkeypatch, tmp_path, capfd):
    """Issue 18: `python3 dev.py run ARGS` ran snnl in the repository root, so a relative
    path named a file there instead of in the caller's folder."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    np.savez(tmp_path / "mine.npz", features=rng.normal(size=(40, 3)) + y[:, None], labels=y)
    monkeypatch.chdir(tmp_path)
    args = ["run", "entanglement", "mine.npz", "--temperature", "1", "--plot", "curve.png"]
    assert dev.main(args) == 0
    out = capfd.readouterr().out
    assert "source      : mine.npz" in out
    assert (tmp_path / "curve.png").is_file() and not (ROOT / "curve.png").exists()


def test_run_is_not_shadowed_by_a_snnl_module_in_the_callers_folder(dev, monkeypatch, tmp_path):
    """`python -m snnl` in the caller's folder put that folder first on sys.path: a user's
    snnl.py there was run instead of the package."""
    (tmp_path / "snnl.py").write_text("raise SystemExit(7)\n")
    monkeypatch.chdir(tmp_path)
    assert dev.main(["run", "--version"]) == 0


def test_run_passes_the_callers_folder_and_an_absolute_interpreter(dev, monkeypatch, tmp_path):
    seen = {}

    def call(cmd, cwd=None, env=None):
        seen.update(cmd=cmd, cwd=cwd)
        return 0

    monkeypatch.setattr(dev.subprocess, "call", call)
    monkeypatch.setattr(dev, "setup", lambda: dev._venv_python())
    monkeypatch.chdir(tmp_path)
    assert dev.main(["run", "train", "--out", "runs/a"]) == 0
    assert Path(seen["cwd"]) == tmp_path and Path(seen["cmd"][0]).is_absolute()
    assert seen["cmd"][1:] == ["-P", "-m", "snnl", "train", "--out", "runs/a"]
    assert dev.main(["run"]) == 0 and seen["cmd"][-1] == "reproduce"
