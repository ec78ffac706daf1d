#!/usr/bin/env python3
"""Set up the project's environment (idempotent) and run its main job or its tests.

    python3 dev.py run [snnl arguments...]   # set up, then `snnl reproduce` (default data),
                                              # in the current folder
    python3 dev.py test [pytest arguments...] # set up, lint (ruff), then the test suite
    python3 dev.py lint                       # set up, then only the lint step

The environment is ``.venv`` next to this file. torch 2.13.0 (the CPU wheel)
is installed before the project so that no CUDA build is pulled; the project
is then installed in editable mode with its test extras. A stamp file keyed
on pyproject.toml makes a second call skip the installs.

``test`` first runs ``ruff check`` and ``ruff format --check`` over
``src tests benchmarks`` (both, so every problem is listed) and stops with
their exit status if either finds a problem; otherwise it runs pytest. CI
(.ci/run) calls ``python3 dev.py test``, so this one command is the whole gate.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH = "torch==2.13.0"
LINT_PATHS = ("src", "tests", "benchmarks")
COMMANDS = ("run", "test", "lint", "setup")


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def setup() -> Path:
    py = _venv_python()
    if not py.exists():
        print(f"[dev] creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH.encode()).hexdigest()
    stamp = VENV / ".snnl-setup"
    if stamp.exists() and stamp.read_text().strip() == key:
        return py
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    print(f"[dev] installing {TORCH} (CPU wheel) first", flush=True)
    subprocess.run([*pip, "-q", TORCH], check=True)
    print("[dev] installing snnl and its test extras", flush=True)
    subprocess.run([*pip, "-q", "-e", f"{ROOT}[test]"], check=True)
    stamp.write_text(key)
    return py


def lint(py: Path, env: dict[str, str]) -> int:
    """``ruff check`` and ``ruff format --check`` over LINT_PATHS; 0 if both are clean."""
    status = 0
    for step in (["check"], ["format", "--check"]):
        cmd = [str(py), "-m", "ruff", *step, *LINT_PATHS]
        print(f"[dev] ruff {' '.join(step)} {' '.join(LINT_PATHS)}", flush=True)
        rc = subprocess.call(cmd, cwd=ROOT, env=env)
        status = status or rc
    if status:
        print(
            "[dev] lint failed: fix the problems above (`ruff format <files>` rewrites "
            "formatting) and run again",
            flush=True,
        )
    return status


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 2
    py = setup()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if argv[0] == "setup":
        return 0
    if argv[0] == "run":
        # In the caller's folder, so relative paths mean what they say there; -P keeps that
        # folder off sys.path (as for the `snnl` script), so a snnl.py there cannot shadow
        # the package (`--model pkg:fn` adds the folder itself, for that import only).
        args = argv[1:] or ["reproduce"]
        return subprocess.call([str(py), "-P", "-m", "snnl", *args], cwd=os.getcwd(), env=env)
    status = lint(py, env)
    if status or argv[0] == "lint":
        return status
    return subprocess.call([str(py), "-m", "pytest", *argv[1:]], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
