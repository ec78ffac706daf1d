"""The command line: entanglement, reproduce, report (end to end, tiny settings)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from reference import snnl_reference_mean
from snnl.cli import main


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _features_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    y = np.arange(60) % 3
    x[y == 1] += 1.5
    path = tmp_path / "f.npz"
    np.savez(path, features=x, labels=y)
    return path, x, y


def test_entanglement_on_a_file_at_a_given_temperature(tmp_path, capsys):
    path, x, y = _features_file(tmp_path)
    assert main(["entanglement", str(path), "--temperature", "3.0"]) == 0
    out = capsys.readouterr().out
    value = float(out.split("SNNL        :")[1].split()[0])
    assert value == pytest.approx(snnl_reference_mean(x, y, 3.0), rel=1e-5)


def test_entanglement_optimal_temperature_and_plot(tmp_path, capsys):
    path, x, y = _features_file(tmp_path)
    plot = tmp_path / "curve.png"
    assert main(["entanglement", str(path), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    t = float(out.split("temperature :")[1].split()[0])
    value = float(out.split("SNNL        :")[1].split()[0])
    assert value == pytest.approx(snnl_reference_mean(x, y, t), rel=1e-4)
    for other in (t / 1.5, t * 1.5):
        assert value <= snnl_reference_mean(x, y, other) + 1e-6
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_entanglement_default_dataset(capsys):
    assert main(["entanglement", "--temperature", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "1797 x 64 features, 10 classes" in out


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.npz", "not found"),
        (lambda p: (p / "bad.txt").write_text("x") and p / "bad.txt", "bad.txt"),
        (lambda p: (np.savez(p / "k.npz", a=np.ones((3, 2))), p / "k.npz")[1], "k.npz"),
    ],
)
def test_entanglement_bad_files_name_the_file(tmp_path, capsys, make, message):
    path = make(tmp_path)
    assert main(["entanglement", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_temperature_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["entanglement", "--temperature", "0"])
    assert exc.value.code == 2
    assert "positive" in capsys.readouterr().err


_TINY = ["--dataset", "digits", "--epochs", "1", "--limit-train", "200", "--limit-test", "100"]
_TINY += ["--workers", "1"]


def _run_folders(out):
    return sorted(p.name for p in (out / "runs").iterdir())


def test_reproduce_end_to_end_and_report_rebuild(tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["reproduce", "--experiments", "entangle", "--seeds", "1", *_TINY, "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True
    ent = results["experiments"]["entangle"]
    assert ent["settings"]["seeds"] == 1 and ent["epochs"] == 1
    assert {r["setting"] for r in ent["runs"]} >= {"normal", "optimal a=0.1"}
    assert all(r["health"] in ("ok", "collapsed", "diverged") for r in ent["runs"])
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "<table>" in html
    md = (out / "report.md").read_text()
    assert "What the papers claim, and what we saw" in md and "Verdict rule" in md
    assert "| normal |" in md and "figures/entangle_layers.png" in md
    # rebuilt from saved results only, without training again
    (out / "report.html").unlink()
    (out / "report.md").unlink()
    folders = _run_folders(out)
    mtimes = {f: (out / "runs" / f / "results.json").stat().st_mtime_ns for f in folders}
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists() and (out / "report.md").read_text() == md
    # a second reproduce reuses the finished runs
    assert main(args) == 0
    assert _run_folders(out) == folders
    for f in folders:
        assert (out / "runs" / f / "results.json").stat().st_mtime_ns == mtimes[f]


def test_reproduce_with_other_epochs_trains_new_runs(tmp_path, capsys):
    out = tmp_path / "rep"
    base = ["reproduce", "--experiments", "entangle", "--seeds", "1", "--out", str(out)]
    tiny = ["--dataset", "digits", "--limit-train", "120", "--limit-test", "60", "--workers", "1"]
    assert main([*base, *tiny, "--epochs", "1"]) == 0
    first = set(_run_folders(out))
    assert main([*base, *tiny, "--epochs", "2"]) == 0
    second = set(_run_folders(out)) - first
    assert len(second) == len(first)  # every run trained again, none reused
    ent = json.loads((out / "results.json").read_text())["experiments"]["entangle"]
    assert ent["epochs"] == 2
    assert all(r["epochs_completed"] == 2 for r in ent["runs"])
    assert "2 epochs" in (out / "report.md").read_text()


def test_interrupted_rerun_keeps_the_finished_report(tmp_path, capsys, monkeypatch):
    """Issue 18: results.json and the report are replaced only when a rerun has finished
    (they used to be replaced by an INCOMPLETE placeholder when it started)."""
    out = tmp_path / "rep"
    args = ["reproduce", "--experiments", "entangle", "--seeds", "1", *_TINY, "--out", str(out)]
    assert main(args) == 0
    names = ("report.md", "report.html", "results.json")
    kept = {name: (out / name).read_bytes() for name in names}
    from snnl.experiments import entangle

    def interrupted(settings, context):
        raise KeyboardInterrupt

    monkeypatch.setattr(entangle, "run", interrupted)
    assert main(args) == 130
    assert {name: (out / name).read_bytes() for name in kept} == kept


@pytest.mark.parametrize("where", ["file", "under-file", "read-only"])
def test_output_folder_errors_are_one_line(tmp_path, capsys, where):
    import os

    if where == "file":
        out = tmp_path / "f"
        out.write_text("x")
    elif where == "under-file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "rep"
    else:
        if os.geteuid() == 0:
            pytest.skip("root ignores folder permissions")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "rep"
    for cmd in (
        ["reproduce", "--experiments", "entangle", "--seeds", "1", *_TINY, "--out", str(out)],
        [
            "train",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--limit-train",
            "100",
            "--out",
            str(out),
        ],
    ):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"snnl {cmd[0]}: error:"), err
        assert "Traceback" not in err[0]


def test_train_warns_in_one_line_when_a_run_is_not_healthy(tmp_path, capsys):
    out = tmp_path / "r"
    cmd = ["train", "--dataset", "digits", "--epochs", "1", "--limit-train", "100"]
    cmd += ["--lr", "1e12", "--out", str(out)]
    assert main(cmd) == 0
    captured = capsys.readouterr()
    assert "health      : diverged" in captured.out
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "diverged" in warning[0]


def test_damaged_checkpoint_on_resume_is_one_line(tmp_path, capsys):
    out = tmp_path / "r"
    cmd = ["train", "--dataset", "digits", "--epochs", "1", "--limit-train", "100"]
    cmd += ["--out", str(out)]
    assert main(cmd) == 0
    (out / "results.json").unlink()
    (out / "checkpoint.pt").write_bytes(b"\x00garbage")
    assert main([*cmd, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint.pt" in err and "damaged" in err and "--force" in err
    assert "weights_only" not in err and len(err.splitlines()) == 1


def test_report_of_an_empty_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- errors, help


@pytest.mark.parametrize(
    "bug", [TypeError("a bug"), AttributeError("a bug"), RuntimeError("a torch bug"), KeyError("k")]
)
def test_a_bug_shows_its_traceback(tmp_path, monkeypatch, bug):
    """Issue 17: main() turned every TypeError and RuntimeError, bugs included, into one
    line; a bug now propagates (Python prints its traceback, exit status 1)."""
    import snnl.report

    def broken(folder):
        raise bug

    monkeypatch.setattr(snnl.report, "write_report", broken)
    with pytest.raises(type(bug), match=str(bug.args[0])):
        main(["report", str(tmp_path)])


@pytest.mark.parametrize("kind", ["locked", "exists", "damaged", "mismatch", "memory", "disk"])
def test_the_users_mistakes_are_one_line(tmp_path, capsys, monkeypatch, kind):
    import errno

    import snnl.report
    from snnl._io import RunLockedError, WriteFailedError
    from snnl.runs import DamagedRunError, RunExistsError, RunMismatchError

    err = {
        "locked": RunLockedError("folder R is locked by process 7"),
        "exists": RunExistsError("R holds a finished run; pass --force"),
        "damaged": DamagedRunError("R/results.json is damaged"),
        "mismatch": RunMismatchError("R holds a run with another config"),
        "memory": MemoryError("out of memory"),
        "disk": WriteFailedError(errno.ENOSPC, "No space left on device", "R/results.json"),
    }[kind]

    def failing(folder):
        raise err

    monkeypatch.setattr(snnl.report, "write_report", failing)
    assert main(["report", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snnl report: error: "), lines
    assert "Traceback" not in lines[0]
    if kind == "disk":
        assert lines[0] == "snnl report: error: R/results.json: No space left on device"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_prints_the_traceback_of_every_error(tmp_path, capsys, where):
    args = ["report", str(tmp_path)]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.strip().splitlines()[-1].startswith("snnl report: error: ")
    assert "results.json not found" in err.strip().splitlines()[-1]


def test_version(capsys):
    import snnl

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"snnl {snnl.__version__}"


def _subparsers():
    import argparse

    from snnl.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def test_every_options_help_shows_its_default():
    """Issue 18: every option's help shows its default (flags and required options aside);
    the profile's '95%%' showed doubled."""
    import re

    parser, commands = _subparsers()
    missing = []
    for name, sub in {"snnl": parser, **commands}.items():
        text = sub.format_help()
        blocks = re.split(r"\n(?=  -)", text.split("options:", 1)[1])
        for action in sub._actions:
            flag = action.nargs == 0  # store_true, --help, --version
            if not action.option_strings or flag or action.required:
                continue
            option = max(action.option_strings, key=len)
            block = next(b for b in blocks if b.lstrip().startswith(option))
            if "default" not in block:
                missing.append(f"{name} {option}")
        assert "%%" not in text, name
    assert missing == []
    assert "dimensionality (95% variance)" in " ".join(commands["profile"].format_help().split())


def test_command_defaults_are_those_of_the_dataclasses_and_functions():
    """Issue 17: build_parser restated TrainConfig's and ReproduceConfig's defaults."""
    import inspect
    from dataclasses import fields

    from snnl import feature_entanglement
    from snnl.experiments import ReproduceConfig
    from snnl.gan import GANConfig
    from snnl.profile import profile_model
    from snnl.train import TrainConfig

    _, commands = _subparsers()
    checked = 0
    for name, source in (("train", TrainConfig()), ("reproduce", ReproduceConfig()),
                         ("gan", GANConfig())):  # fmt: skip
        defaults = {a.dest: a.default for a in commands[name]._actions}
        for f in fields(source):
            if f.name in defaults and f.name not in ("epochs", "experiments"):
                assert defaults[f.name] == getattr(source, f.name), (name, f.name)
                checked += 1
    for name, func in (("entanglement", feature_entanglement), ("profile", profile_model)):
        signature = inspect.signature(func)
        defaults = {a.dest: a.default for a in commands[name]._actions}
        for param in signature.parameters.values():
            if param.name in defaults and param.default is not inspect.Parameter.empty:
                assert defaults[param.name] == param.default, (name, param.name)
                checked += 1
    assert checked >= 30


@pytest.mark.parametrize("command", ["train", "gan", "reproduce"])
def test_a_command_without_options_builds_the_dataclass_defaults(tmp_path, command):
    """Issue 17: the config a command builds from no options is its dataclass's default
    (through the path the command takes: its options, --epochs left out, the init)."""
    from snnl import cli
    from snnl.experiments import ReproduceConfig
    from snnl.gan import GANConfig
    from snnl.train import TrainConfig

    args = cli.build_parser().parse_args([command, "--out", str(tmp_path / "r")])
    build, cls = {
        "train": (cli._train_config, TrainConfig),
        "gan": (cli._gan_config, GANConfig),
        "reproduce": (cli._reproduce_config, ReproduceConfig),
    }[command]
    assert build(args) == cls()


def test_a_user_model_that_cannot_take_the_datasets_inputs_is_one_line(
    tmp_path, monkeypatch, capsys
):
    """A --model whose first layer expects another input size raised torch's RuntimeError
    ("mat1 and mat2 shapes cannot be multiplied") with a traceback from deep inside the
    profile: the user's mistake, now one line naming the dataset's input shape."""
    import torch

    from snnl.models import MLP

    monkeypatch.chdir(tmp_path)
    (tmp_path / "widenet.py").write_text(
        "from snnl.models import MLP\n\n\n"
        "def build():\n    return MLP((1, 5, 5), 10, widths=(6,))\n"
    )
    torch.save(MLP((1, 5, 5), 10, widths=(6,)).state_dict(), tmp_path / "w.pt")
    args = ["profile", "--model", "widenet:build", "--weights", "w.pt", "--dataset", "digits"]
    assert main([*args, "--out", "prof"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("snnl profile: error: widenet:build() cannot take the inputs of digits")
    assert "(1, 8, 8) per example" in err and "Traceback" not in err
    assert not (tmp_path / "prof").exists()
