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
