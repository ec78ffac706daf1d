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


def test_reproduce_end_to_end_and_report_rebuild(tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["reproduce", "--seeds", "2", "--epochs", "1", "--limit-train", "200"]
    args += ["--limit-test", "100", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True
    ent = results["experiments"]["entangle"]
    assert ent["accuracy"]["normal"]["n"] == 2
    accs = ent["accuracy"]["entangled"]["values"]
    assert np.std(accs, ddof=1) == pytest.approx(ent["accuracy"]["entangled"]["std"])
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "<table>" in html
    md = (out / "report.md").read_text()
    assert "| normal |" in md and "figures/entangle_layers.png" in md
    # rebuilt from saved results only, without training again
    (out / "report.html").unlink()
    (out / "report.md").unlink()
    mtime = (out / "runs" / "normal-seed0" / "results.json").stat().st_mtime_ns
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists() and (out / "report.md").read_text() == md
    # a second reproduce reuses the finished runs
    assert main(args) == 0
    assert (out / "runs" / "normal-seed0" / "results.json").stat().st_mtime_ns == mtime


def test_report_of_an_empty_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json not found" in capsys.readouterr().err
