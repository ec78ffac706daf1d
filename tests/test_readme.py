"""Every code block of README.md runs (issue 18: the quickstart used `images` and `labels`
it never defined): each ```python block is executed in order, in a fresh namespace; each
`snnl ...` line of a ```bash block parses with the real parser, and the quick ones (the
entanglement lines) run in a scratch folder; each `python3 dev.py ...` line names a
command dev.py has."""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest

from snnl.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    text = README.read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def _command_lines() -> list[list[str]]:
    """The command lines of the bash blocks, comments removed; `snnl CMD ...` takes the
    arguments of the block's earlier full `snnl CMD` line for its `...`."""
    lines, full = [], {}
    for block in _blocks("bash"):
        for raw in block.splitlines():
            words = shlex.split(raw, comments=True)
            if not words:
                continue
            if words[:3] == ["torchrun", "--nproc_per_node=2", "-m"]:
                words = words[3:]
            if words[0] == "snnl" and len(words) > 2 and "..." in words:
                at = words.index("...")
                words = [*words[:at], *full[words[1]], *words[at + 1 :]]
            elif words[0] == "snnl" and len(words) > 1:
                full.setdefault(words[1], words[2:])
            lines.append(words)
    return lines


def test_readme_has_the_blocks_this_test_reads():
    assert len(_blocks("python")) >= 1
    assert sum(1 for w in _command_lines() if w[0] == "snnl") >= 10


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(index):
    code = _blocks("python")[index]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, f"README.md python block {index + 1}", "exec"), {"__name__": "readme"})


def _dev_commands() -> tuple[str, ...]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("snnl_dev_script", README.parent / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.COMMANDS


def test_command_lines_parse_and_the_quick_ones_run(tmp_path, monkeypatch, capsys):
    commands = _dev_commands()
    parser = build_parser()
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    np.savez("features.npz", features=rng.normal(size=(90, 4)) + y[:, None], labels=y)
    ran = 0
    for words in _command_lines():
        if words[0] == "python3":
            assert words[1] == "dev.py" and words[2] in commands, words
            continue
        assert words[0] == "snnl", words
        if words[1:] in (["--version"], ["train", "--help"]):
            with pytest.raises(SystemExit) as exc:
                parser.parse_args(words[1:])
            assert exc.value.code == 0
            continue
        parser.parse_args(words[1:])  # exits 2 on a bad option
        if words[1] == "entanglement":
            assert main(words[1:]) == 0, capsys.readouterr().err
            ran += 1
    assert ran == 2 and Path("curve.png").is_file()
