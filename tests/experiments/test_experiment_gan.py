"""Experiment "gan": results from the runs' own files, figures and claims from saved results
alone, reuse of finished runs, registration."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict

import numpy as np
import pytest
from scipy import stats as scipy_stats

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
    assert all(isinstance(c, Claim) for c in claims) and len(claims) == 10
    # the rise claims: last vs first epoch of the plain runs, recomputed here
    plain = saved["runs"]["plain"]
    last = [r["curves"]["input"][-1] for r in plain]
    first = [r["curves"]["input"][1] for r in plain]
    assert claims[0].verdict == compare_paired(last, first, expect="greater")[0]
    assert "input space" in claims[0].claim and f"{np.mean(last):.3f}" in claims[0].measured
    # the comparison claims: snnl vs plain, same seed, last epoch
    fd_snnl = [r["curves"]["frechet_distance"][-1] for r in saved["runs"]["snnl"]]
    fd_plain = [r["curves"]["frechet_distance"][-1] for r in plain]
    fd_claim = [c for c in claims if "lowers the Frechet" in c.claim][0]
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


def test_spearman_against_scipy():
    rng = np.random.default_rng(0)
    for n in (3, 5, 6, 11):
        for _ in range(20):
            x = rng.integers(0, 4, n).astype(float)  # many ties
            y = rng.normal(size=n) if n % 2 else rng.integers(0, 3, n).astype(float)
            want = scipy_stats.spearmanr(x, y).statistic
            got = experiment.spearman(list(x), list(y))
            if np.isnan(want):
                assert got is None
            else:
                assert got == pytest.approx(want, abs=1e-12)
    assert experiment.spearman([1, 2, None, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert experiment.spearman([1, 2], [2, 1]) is None  # fewer than 3 pairs
    with pytest.raises(ValueError, match="same length"):
        experiment.spearman([1, 2, 3], [1, 2])


def test_coverage_entropy_against_scipy():
    rng = np.random.default_rng(1)
    for c in (2, 3, 10):
        share = rng.dirichlet(np.ones(c))
        want = scipy_stats.entropy(share) / np.log(c)
        assert experiment.coverage_entropy(list(share)) == pytest.approx(want, abs=1e-12)
    assert experiment.coverage_entropy([0.5, 0.5, 0.0, 0.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="histogram"):
        experiment.coverage_entropy([0.5, 0.2])


def _t_rule(values, expect, margin):
    """The verdict rule on scipy's one-sample t interval of the mean (against 0)."""
    ci = scipy_stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    low, high = (ci.low, ci.high) if expect == "greater" else (-ci.high, -ci.low)
    if low > 0:
        return "holds"
    if high < 0 or (-margin < low and high < margin):
        return "does not hold"
    return "inconclusive"


def test_tracking_rows_from_saved_curves_alone(done, tmp_path):
    """Five trained epochs written into the saved curves: each seed's rho is scipy's
    spearmanr over epochs 1..5 (epoch 0 left out), the verdict the t rule on the rhos."""
    _, _, _, s, results = done
    saved = _saved(results, s)
    saved["settings"]["epochs"] = 5
    rng = np.random.default_rng(3)
    for v in ("plain", "snnl"):  # every per-epoch curve to 6 points (the figures plot them)
        for r in saved["runs"][v]:
            for key, curve in r["curves"].items():
                if isinstance(curve, dict):
                    for layer, values in curve.items():
                        curve[layer] = values + values[-1:] * 3
                elif isinstance(curve, list) and key != "final_share":
                    r["curves"][key] = curve + curve[-1:] * 3
    want: dict[str, dict[str, list[float]]] = {}
    for seed_shift, r in enumerate(saved["runs"]["plain"]):
        c = r["curves"]
        c["epochs"] = list(range(6))
        base = np.linspace(0.1, 0.6, 6)
        for key in ("classifier_mean", "input", "discriminator_mean"):
            c[key] = list(base + rng.normal(0, 0.05 * (1 + seed_shift), 6))
        c["frechet_distance"] = list(900 - 1000 * base + rng.normal(0, 60, 6))
        c["coverage_entropy"] = list(np.clip(0.5 + base + rng.normal(0, 0.1, 6), 0, 1))
        c["missing"] = [0] * 6
        for quality in ("frechet_distance", "coverage_entropy"):
            for space in ("classifier_mean", "input", "discriminator_mean"):
                rho = scipy_stats.spearmanr(c[space][1:], c[quality][1:]).statistic
                want.setdefault(quality, {}).setdefault(space, []).append(float(rho))
    rows = [c for c in experiment.claims(saved) if "good tool" in c.claim]
    assert len(rows) == 2
    for claim, (quality, expect) in zip(rows, experiment.QUALITY, strict=True):
        rhos = want[quality]["classifier_mean"]
        assert claim.verdict == _t_rule(rhos, expect, experiment.RHO_MARGIN)
        assert claim.comparisons[0].interval.estimate == pytest.approx(np.mean(rhos))
        head, secondary = claim.measured.split("secondary (not the verdict): ")
        for seed, rho in enumerate(rhos):
            assert f"seed {seed} {rho:+.2f}" in head
        for seed, rho in enumerate(want[quality]["input"]):
            assert f"seed {seed} {rho:+.2f}" in secondary.split(";")[0]
        assert ("negative" if expect == "less" else "positive") in claim.claim
        assert "1..5, the untrained epoch 0 left out" in claim.setting
    section = experiment.section(saved, tmp_path)
    assert (tmp_path / "gan_tracking.png").stat().st_size > 1000
    assert f"| 0 | 5 | {want['frechet_distance']['classifier_mean'][0]:+.2f} |" in section.markdown
    # the run's own curves: 2 trained epochs give no Spearman rho, so the rows stay open
    for claim in (c for c in experiment.claims(_saved(results, s)) if "good tool" in c.claim):
        assert claim.verdict == "inconclusive" and "without one" in claim.note


def test_tracking_ranks_rounded_values_float_noise_near_zero_is_flat(done):
    _, _, _, s, results = done
    saved = _saved(results, s)
    c = saved["runs"]["plain"][0]["curves"]
    c["epochs"] = list(range(5))
    for key in ("input", "discriminator_mean", "coverage_entropy"):
        c[key] = [0.5] * 5
    c["classifier_mean"] = [0.0, 3e-130, 2e-125, 5e-160, 1e-6]  # all 0 at 4 decimals
    c["frechet_distance"] = [9.0, 4.0, 3.0, 2.0, 1.0]
    assert experiment.tracking(saved)[0]["rho"]["frechet_distance"]["classifier_mean"] is None
    c["classifier_mean"] = [0.0, 0.10001, 0.10004, 0.3, 0.2]  # 0.1000 ties 0.1000
    rho = experiment.tracking(saved)[0]["rho"]["frechet_distance"]["classifier_mean"]
    want = scipy_stats.spearmanr([0.1, 0.1, 0.3, 0.2], [4.0, 3.0, 2.0, 1.0]).statistic
    assert rho == pytest.approx(want, abs=1e-12)
