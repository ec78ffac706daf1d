"""``snnl reproduce`` (snnl.runner): nothing lost, nothing read twice.

Stand-in experiments (tests/fake_experiments.py, no training) on the embedded digits:
a failed start leaves the folder byte-identical, a failed or interrupted run keeps the
previous report, a subset rerun keeps the other sections and the report says which
experiment ran when, and the run health the report lists is recorded in results.json.
The real experiments go through the same paths in tests/experiments/.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import fake_experiments as fake
from snnl.experiments.config import ReproduceConfig
from snnl.report import read_results, write_report
from snnl.runner import check, experiment_names, reproduce

CONFIG = ReproduceConfig(dataset="digits", seeds=1, limit_train=100, limit_test=60)


def _hashes(folder: Path) -> dict[str, str]:
    """Every file (and folder) under ``folder``: relative path -> sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def finished(tmp_path):
    """A folder holding a finished reproduction of experiments a and b."""
    out = tmp_path / "rep"
    reproduce(CONFIG, out, experiments=fake.registry(fake.experiment("a"), fake.experiment("b")))
    return out


def test_experiment_names_in_registry_order_and_unknown_ones_named():
    known = ["entangle", "dknn", "transfer"]
    assert experiment_names([], known) == known
    assert experiment_names(["transfer", "entangle", "transfer"], known) == ["entangle", "transfer"]
    with pytest.raises(ValueError, match="unknown experiment.s. bogus, nope; known: entangle"):
        experiment_names(["nope", "dknn", "bogus"], known)
    # the real registry by default (ReproduceConfig itself no longer asks it)
    assert "dknn" in experiment_names([])
    with pytest.raises(ValueError, match="unknown experiment"):
        experiment_names(["nope"])


def test_reproduce_saves_sections_with_their_provenance(finished):
    saved = json.loads((finished / "results.json").read_text())
    assert saved["format"] == 2 and saved["complete"] is True
    assert list(saved["experiments"]) == ["a", "b"]
    a = saved["experiments"]["a"]
    assert a["settings"] == {"value": 1.0, "seeds": 1} and a["test_points"] == 60
    for name in ("a", "b"):
        p = saved["provenance"][name]
        assert p["config"]["dataset"] == "digits" and p["config"]["limit_test"] == 60
        assert p["unhealthy_runs"] == [] and p["seconds"] >= 0 and p["finished"].endswith("+00:00")
    md = (finished / "report.md").read_text()
    assert md.count("| digits | 1 | --limit-train 100, --limit-test 60 |") == 2
    assert not list(finished.glob(".report-*"))  # the staging folder is gone


BAD_STARTS = {
    "dataset without --data-dir": (dict(dataset="mnist"), {}, "pass data_dir"),
    "missing --data-dir": (dict(dataset="mnist", data_dir="/nonexistent"), {}, "not a directory"),
    "unknown experiment": (dict(experiments=["a", "nope"]), {}, "unknown experiment.s. nope"),
    "settings fail": (
        dict(experiments=["a", "c"]),
        {"c": fake.experiment("c", settings_error=ValueError("c needs more seeds"))},
        "c needs more seeds",
    ),
}


@pytest.mark.parametrize("case", BAD_STARTS)
def test_failed_start_leaves_the_folder_byte_identical(finished, case):
    """Issue 18: a rerun with a bad input overwrote report.md and results.json with an
    empty placeholder before failing. Every input is checked before the folder is touched."""
    changes, extra, message = BAD_STARTS[case]
    modules = fake.registry(fake.experiment("a"), fake.experiment("b"), *extra.values())
    config = replace(CONFIG, **changes)
    before = _hashes(finished)
    for call in (check, reproduce):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            call(config, finished, experiments=modules)
        assert _hashes(finished) == before


def test_damaged_results_json_is_named_and_left_as_it_is(finished):
    (finished / "results.json").write_text('{"experiments": {"a": ')
    before = _hashes(finished)
    modules = fake.registry(fake.experiment("a"), fake.experiment("b"))
    with pytest.raises(ValueError, match=r"results.json is damaged .* remove it"):
        reproduce(CONFIG, finished, experiments=modules)
    assert _hashes(finished) == before


def test_results_of_an_unknown_experiment_fail_before_any_work(finished):
    before = _hashes(finished)
    with pytest.raises(ValueError, match="unknown experiment.s. b .an older snnl"):
        reproduce(CONFIG, finished, experiments=fake.registry(fake.experiment("a")))
    assert _hashes(finished) == before


def test_failed_start_in_a_new_folder_creates_nothing(tmp_path):
    out = tmp_path / "new" / "rep"
    with pytest.raises(ValueError, match="pass data_dir"):
        reproduce(ReproduceConfig(dataset="mnist"), out, experiments=fake.registry())
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("error", [RuntimeError("bug in b"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_run_keeps_the_previous_report(finished, error):
    """results.json and the report are replaced only once every experiment finished."""
    before = _hashes(finished)
    modules = fake.registry(fake.experiment("a", 2.0), fake.experiment("b", run_error=error))
    with pytest.raises(type(error)):
        reproduce(CONFIG, finished, experiments=modules)
    assert _hashes(finished) == before


def test_a_failing_section_keeps_the_previous_report(finished):
    before = _hashes(finished)
    modules = fake.registry(
        fake.experiment("a", 2.0), fake.experiment("b", section_error=ValueError("no figure"))
    )
    with pytest.raises(ValueError, match="no figure"):
        reproduce(CONFIG, finished, experiments=modules)
    assert _hashes(finished) == before
    with pytest.raises(ValueError, match="no figure"):  # `snnl report DIR` alike
        write_report(finished, experiments=modules)
    assert _hashes(finished) == before


def test_subset_rerun_updates_its_sections_and_keeps_the_others(finished):
    """Issue 18: `--experiments transfer` into a folder holding dknn dropped dknn."""
    old = json.loads((finished / "results.json").read_text())
    modules = fake.registry(fake.experiment("a"), fake.experiment("b", 5.0))
    config = replace(CONFIG, experiments=["b"], seeds=2)
    reproduce(config, finished, experiments=modules)
    new = json.loads((finished / "results.json").read_text())
    assert list(new["experiments"]) == ["a", "b"]
    assert new["experiments"]["a"] == old["experiments"]["a"]
    assert new["provenance"]["a"] == old["provenance"]["a"]
    assert (
        new["experiments"]["b"]["value"] == 5.0 and new["provenance"]["b"]["config"]["seeds"] == 2
    )
    assert new["provenance"]["b"]["finished"] >= old["provenance"]["b"]["finished"]
    md = (finished / "report.md").read_text()
    assert "## Experiment a" in md and "## Experiment b" in md and "Value 5 on 60" in md
    stamp = new["provenance"]["a"]["finished"].replace("T", " ").removesuffix("+00:00")
    assert f"| a | {stamp} |" in md and "| digits | 1 |" in md and "| digits | 2 |" in md
    # and the other way round: a run of a alone keeps b's new section
    reproduce(replace(CONFIG, experiments=["a"]), finished, experiments=modules)
    again = json.loads((finished / "results.json").read_text())
    assert again["experiments"]["b"] == new["experiments"]["b"]


def _mark_unhealthy(out: Path, folder: str) -> None:
    run = out / "runs" / folder
    run.mkdir(parents=True)
    health = {"verdict": "collapsed", "reasons": ["relu3 constant | dead"]}
    (run / "results.json").write_text(json.dumps({"health": health}))


def test_report_is_rebuilt_from_results_json_alone(tmp_path):
    """Issue 17: the report re-read run folders for the unhealthy-runs list. Their health
    is recorded in results.json at reproduce time: a copy of results.json (and figures)
    in an empty folder gives the same report.md."""
    out = tmp_path / "rep"
    _mark_unhealthy(out, "normal-1234-seed0")
    _mark_unhealthy(out, "sweep-5678-seed1")
    modules = fake.registry(
        fake.experiment("a", runs=("runs/normal-1234-seed0", "runs/healthy")),
        fake.experiment("b", runs=("runs/normal-1234-seed0", "runs/sweep-5678-seed1")),
    )
    reproduce(CONFIG, out, experiments=modules)
    saved = read_results(out)
    assert [r["run"] for r in saved["provenance"]["b"]["unhealthy_runs"]] == [
        "normal-1234-seed0",
        "sweep-5678-seed1",
    ]
    md = (out / "report.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("- `")]
    assert lines == [  # each run once, however many experiments use it
        "- `normal-1234-seed0`: collapsed: relu3 constant \\| dead",
        "- `sweep-5678-seed1`: collapsed: relu3 constant \\| dead",
    ]
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(out / "results.json", copy / "results.json")
    shutil.copytree(out / "figures", copy / "figures")
    write_report(copy, experiments=modules)
    assert (copy / "report.md").read_text() == md
    shutil.rmtree(out / "runs")  # the run folders are never read by the report
    write_report(out, experiments=modules)
    assert (out / "report.md").read_text() == md


def test_format_1_results_are_reported_and_upgraded_by_a_rerun(tmp_path):
    """A results.json of the earlier format (one config, no provenance) is read: its
    sections are kept by a rerun of another experiment, its run health said unrecorded."""
    out = tmp_path / "rep"
    out.mkdir()
    modules = fake.registry(fake.experiment("a"), fake.experiment("b"))
    old = {
        "snnl_version": "0.0.9",
        "config": {"dataset": "digits", "seeds": 3, "full": True},
        "complete": False,
        "experiments": {
            "a": {"settings": {"value": 1.0, "seeds": 3}, "value": 1.0, "test_points": 60}
        },
        "seconds": {"a": 12.0},
    }
    (out / "results.json").write_text(json.dumps(old))
    write_report(out, experiments=modules)
    md = (out / "report.md").read_text()
    assert "| a | (not recorded) | 0.0.9 | digits | 3 | --full | 12 s |" in md
    assert "INCOMPLETE" in md and "health of the training runs of a was not recorded" in md
    reproduce(replace(CONFIG, experiments=["b"]), out, experiments=modules)
    new = read_results(out)
    assert new["format"] == 2 and list(new["experiments"]) == ["a", "b"]
    assert new["experiments"]["a"] == old["experiments"]["a"]
    assert new["provenance"]["a"]["snnl_version"] == "0.0.9"
    assert "INCOMPLETE" not in (out / "report.md").read_text()


def test_results_of_a_newer_format_are_refused(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"format": 99, "experiments": {}}))
    with pytest.raises(ValueError, match="format 99, newer than this snnl reads"):
        read_results(tmp_path)
