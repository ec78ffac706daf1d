"""Experiment "gan": results from the runs' own files, figures and claims from saved results
alone, reuse of finished runs, registration."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict

import numpy as np
import pytest

from snnl.experiments import ReproduceConfig, registry
from snnl.experiments import gan as experiment
from snnl.experiments.base import Claim, Context, compare_paired
from snnl.experiments.zoo import Zoo
from snnl.runs import RunMismatchError


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _small(seeds: int = 2, **kw) -> experiment.Settings:
    base = dict(
        seeds=seeds,
        epochs=2,
        batch_size=32,
        latent_dim=8,
        generator_kwargs=(("widths", (32,)),),
        discriminator_kwargs=(("widths", (32, 16)),),
        eval_samples=60,
        entanglement_samples=30,
        grid_samples=3,
    )
    base.update(kw)
    return experiment.Settings(**base)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The experiment run once on a small digits setting (2 seeds)."""
    out = tmp_path_factory.mktemp("repro")
    config = ReproduceConfig(dataset="digits", seeds=2, epochs=2, limit_train=200, limit_test=80)
    context = Context(config=config, out=out, zoo=Zoo(config, out, log=lambda m: None))
    s = _small()
    results = experiment.run(s, context)
    return out, config, context, s, results


def _saved(results, s):
    """The results as the runner saves them (JSON round trip, settings added)."""
    return json.loads(json.dumps({"settings": asdict(s), **results}, allow_nan=False))


def test_registered_and_settings():
    assert registry()["gan"] is experiment
    default = experiment.settings(ReproduceConfig())
    assert default.arch == "mlp" and default.epochs == 5 and default.seeds == 3
    full = experiment.settings(ReproduceConfig(full=True))
    assert full.arch == "dcgan" and full.epochs > default.epochs
    assert experiment.settings(ReproduceConfig(dataset="mnist1d", full=True)).arch == "mlp"
    assert experiment.settings(ReproduceConfig(epochs=2)).epochs == 2


def test_results_come_from_the_run_folders(done):
    out, _, _, s, results = done
    assert "settings" not in results
    json.dumps(results, allow_nan=False)
    assert set(results["runs"]) == {"plain", "snnl"}
    for variant in ("plain", "snnl"):
        assert [r["seed"] for r in results["runs"][variant]] == [0, 1]
        for r in results["runs"][variant]:
            saved = json.loads((out / r["path"] / "results.json").read_text())
            lines = [
                json.loads(x) for x in (out / r["path"] / "metrics.jsonl").read_text().splitlines()
            ]
            assert saved["config"]["snnl_alpha"] == (0.0 if variant == "plain" else s.snnl_alpha)
            curves = r["curves"]
            assert curves["epochs"] == [0, 1, 2]
            assert curves["input"] == [saved["initial"]["entanglement"]["input"]] + [
                x["entanglement"]["input"] for x in lines
            ]
            d_mean = [
                float(np.mean(list(x["entanglement"]["discriminator"].values()))) for x in lines
            ]
            assert curves["discriminator_mean"][1:] == pytest.approx(d_mean, rel=1e-12)
            assert curves["missing"][1:] == [x["coverage"]["num_missing"] for x in lines]
            assert curves["frechet_distance"][1:] == [x["frechet_distance"] for x in lines]
    # both variants start from the same generator (same seed): identical initial measures
    for k in range(2):
        p, q = results["runs"]["plain"][k]["curves"], results["runs"]["snnl"][k]["curves"]
        assert (
            p["input"][0] == q["input"][0] and p["frechet_distance"][0] == q["frechet_distance"][0]
        )
        assert p["input"][1:] != q["input"][1:]  # the SNNL term changed the training
    assert len(results["samples"]["plain"]) == 3 and len(results["samples"]["plain"][0]) == 3
    assert results["indistinguishable"] == pytest.approx(math.log(59 / 29))
    assert results["classifier"]["path"].startswith("runs/normal-")


def test_section_and_claims_from_saved_results_alone(done, tmp_path):
    _, _, _, s, results = done
    saved = _saved(results, s)
    section = experiment.section(saved, tmp_path)
    for name, _caption in section.figures:
        assert (tmp_path / name).stat().st_size > 1000
    assert "| classes missing |" in section.markdown
    claims = experiment.claims(saved)
    assert all(isinstance(c, Claim) for c in claims) and len(claims) == 8
    # the rise claims: last vs first epoch of the plain runs, recomputed here
    plain = saved["runs"]["plain"]
    last = [r["curves"]["input"][-1] for r in plain]
    first = [r["curves"]["input"][1] for r in plain]
    assert claims[0].verdict == compare_paired(last, first, expect="greater")[0]
    assert "input space" in claims[0].claim and f"{np.mean(last):.3f}" in claims[0].measured
    # the comparison claims: snnl vs plain, same seed, last epoch
    fd_snnl = [r["curves"]["frechet_distance"][-1] for r in saved["runs"]["snnl"]]
    fd_plain = [r["curves"]["frechet_distance"][-1] for r in plain]
    fd_claim = [c for c in claims if "Frechet" in c.claim][0]
    assert fd_claim.verdict == compare_paired(fd_snnl, fd_plain, expect="less")[0]
    assert fd_claim.source.startswith("not in the paper")


def test_one_seed_is_inconclusive_and_unhealthy_runs_are_left_out(done, tmp_path):
    _, _, _, s, results = done
    saved = _saved(results, s)
    one = json.loads(json.dumps(saved))
    for v in ("plain", "snnl"):
        one["runs"][v] = one["runs"][v][:1]
    assert {c.verdict for c in experiment.claims(one)} == {"inconclusive"}
    bad = json.loads(json.dumps(saved))
    bad["runs"]["plain"][1]["health"] = "diverged"
    rise = experiment.claims(bad)[0]
    assert rise.verdict == "inconclusive" and "unhealthy" in rise.note
    experiment.section(bad, tmp_path)  # figures without the diverged run


def test_finished_runs_are_reused_and_checked(done):
    out, config, context, s, results = done
    folder = out / results["runs"]["plain"][0]["path"]
    stamp = (folder / "results.json").stat().st_mtime_ns
    again = experiment.run(s, context)
    assert again == results
    assert (folder / "results.json").stat().st_mtime_ns == stamp  # not retrained
    saved = json.loads((folder / "results.json").read_text())
    saved["classifier"]["sha256"] = "0" * 64  # as if trained against another classifier
    (folder / "results.json").write_text(json.dumps(saved))
    with pytest.raises(RunMismatchError, match="--force"):
        experiment.run(s, context)
    forced = ReproduceConfig(**{**asdict(config), "force": True})
    context_force = Context(config=forced, out=out, zoo=Zoo(forced, out, log=lambda m: None))
    retrained = experiment.run(s, context_force)
    assert (folder / "results.json").stat().st_mtime_ns != stamp
    for v in ("plain", "snnl"):  # bit-identical measures (only the wall time differs)
        for a, b in zip(retrained["runs"][v], results["runs"][v], strict=True):
            assert a["curves"] == b["curves"]
