"""Tests for the "selectivity" experiment: measures recomputed independently, claims on
synthetic results with known slopes, and (slow) an end-to-end run on digits."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

from snnl.experiments import selectivity as sel
from snnl.experiments import selectivity_claims as sclaims
from snnl.experiments.config import ReproduceConfig
from snnl.experiments.zoo import Zoo
from snnl.models import MLP
from snnl.temperature import optimal_temperature

# tiny problems: one torch thread (see conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- helpers


def test_least_squares_slope_matches_numpy_polyfit() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=7), rng.normal(size=7)
    assert sel.least_squares_slope(list(x), list(y)) == pytest.approx(np.polyfit(x, y, 1)[0])
    with pytest.raises(ValueError, match="two distinct"):
        sel.least_squares_slope([1.0, 1.0], [0.0, 2.0])


def test_corrupted_cells_do_not_depend_on_the_other_cells_asked_for() -> None:
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    both = sel.corrupted_sets(x, ("shot_noise", "brightness"), (1, 3))
    alone = sel.corrupted_sets(x, ("shot_noise",), (3,))
    assert list(both) == ["shot_noise/1", "shot_noise/3", "brightness/1", "brightness/3"]
    assert torch.equal(both["shot_noise/3"], alone["shot_noise/3"])
    assert not torch.equal(both["shot_noise/1"], both["shot_noise/3"])


# ----------------------------------------------------------------------------- one model


def _selectivity_np(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    classes = sorted(set(y.tolist()))
    out = []
    for u in range(a.shape[1]):
        means = [a[y == c, u].mean() for c in classes]
        top = int(np.argmax(means))
        rest = (sum(means) - means[top]) / (len(means) - 1)
        out.append((means[top] - rest) / (means[top] + rest + 1e-7))
    return np.array(out)


def _hidden_np(model: MLP, x: torch.Tensor) -> list[np.ndarray]:
    p = {k: v.double().numpy() for k, v in model.state_dict().items()}
    h = (x.double().numpy().reshape(len(x), -1) - p["normalize.mean"]) / p["normalize.std"]
    out = []
    for i in (1, 2):
        h = np.maximum(h @ p[f"fc{i}.weight"].T + p[f"fc{i}.bias"], 0.0)
        out.append(h)
    return out


def test_evaluate_model_against_independent_recomputation() -> None:
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 4, widths=(12, 9)).eval()
    g = torch.Generator().manual_seed(1)
    x_test = torch.rand(80, 1, 8, 8, generator=g)
    y_test = torch.arange(80) % 4
    x, y = x_test[:40], y_test[:40]
    cells = sel.corrupted_sets(x, ("brightness", "shot_noise"), (1, 3))
    s = replace(sel.Settings(seeds=1), eps=(0.05, 0.1), pgd_steps=3, snnl_points=30)
    data = {"x": x, "y": y, "x_test": x_test, "y_test": y_test}
    rec = sel.evaluate_model(model, ["relu1", "relu2"], data, cells, s)

    hidden_test = _hidden_np(model, x_test)
    for name, h in zip(("relu1", "relu2"), hidden_test, strict=True):
        ref = _selectivity_np(h, y_test.numpy()).mean()
        assert rec["selectivity"][name] == pytest.approx(ref, rel=1e-5)
    assert rec["mean_selectivity"] == pytest.approx(np.mean(list(rec["selectivity"].values())))

    def acc(inputs: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model(inputs).argmax(1) == y).double().mean())

    for key, xc in cells.items():
        assert rec["corruption"]["cells"][key] == acc(xc)
    assert rec["corruption"]["mean"] == pytest.approx(np.mean([acc(c) for c in cells.values()]))
    for eps in s.eps:  # FGSM written out: one signed gradient step, clipped to [0, 1]
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
        assert rec["fgsm"][f"{eps:g}"] == acc((x + eps * grad.sign()).clamp(0, 1))
        assert 0.0 <= rec["pgd"][f"{eps:g}"] <= rec["fgsm"][f"{eps:g}"] + 0.1

    hidden_eval = _hidden_np(model, x)
    for name, h in zip(("relu1", "relu2"), hidden_eval, strict=True):
        ev = PCA(svd_solver="full").fit(h).explained_variance_
        k = int(np.argmax(np.cumsum(ev) / ev.sum() >= 0.95)) + 1
        assert rec["dimensionality"]["clean"][name] == k
        assert rec["participation_ratio"]["clean"][name] == pytest.approx(
            ev.sum() ** 2 / (ev**2).sum(), rel=1e-5
        )
        _, ref_snnl = optimal_temperature(torch.from_numpy(h[:30]), y[:30])
        assert rec["snnl"][name] == pytest.approx(ref_snnl, rel=1e-5)
    assert list(rec["dimensionality"]) == ["clean", "corrupted", "adversarial"]
    for name in ("relu1", "relu2"):  # corrupted: mean over the corruptions at severity 3
        per = [rec["dimensionality_by_corruption"][c][name] for c in ("brightness", "shot_noise")]
        assert rec["dimensionality"]["corrupted"][name] == pytest.approx(np.mean(per))
    with torch.no_grad():
        h = torch.relu(model.fc1(model.flatten(model.normalize(cells["shot_noise/3"]))))
    ev = PCA(svd_solver="full").fit(h.double().numpy()).explained_variance_
    k = int(np.argmax(np.cumsum(ev) / ev.sum() >= 0.95)) + 1
    assert rec["dimensionality_by_corruption"]["shot_noise"]["relu1"] == k
    assert rec["pgd_relative"] == pytest.approx(rec["pgd_mean"] / acc(x))
    assert rec["corruption_relative"] == pytest.approx(rec["corruption"]["mean"] / acc(x))


def test_input_gradient_variability_against_a_plain_loop() -> None:
    from snnl.measures import input_gradient_variability

    torch.manual_seed(0)
    model = MLP((1, 4, 4), 3, widths=(7, 5)).eval()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    got = input_gradient_variability(model, x, ["relu1", "relu2"], unit_chunk=3)
    model64 = MLP((1, 4, 4), 3, widths=(7, 5)).double().eval()
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    for layer, units in (("relu1", 7), ("relu2", 5)):
        g = np.zeros((6, units, 16))  # G[n, u, d], one sample and one unit at a time
        for n in range(6):
            for u in range(units):
                xn = x[n : n + 1].double().requires_grad_(True)
                h = model64.flatten(model64.normalize(xn))
                for i in range(1, 3):
                    h = torch.relu(getattr(model64, f"fc{i}")(h))
                    if f"relu{i}" == layer:
                        break
                (grad,) = torch.autograd.grad(h[0, u], xn)
                g[n, u] = grad.reshape(-1).numpy()
        assert np.abs(g).sum() > 0
        ref = {
            "across_samples": g.var(axis=0).mean(),
            "across_units": g.var(axis=1).mean(),
            "mean_square": (g**2).mean(),
        }
        for key, value in ref.items():
            assert got[layer][key] == pytest.approx(value, rel=1e-4, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 samples"):
        input_gradient_variability(model, x[:1], ["relu1"])


# ----------------------------------------------------------------------------- claims

ALPHAS = (-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0)


def _record(setting: str, kind: str, alpha: float, seed: int, si: float, **m: float) -> dict:
    layers = ["relu1", "relu2"]
    dims = {
        "clean": {n: m["dim"] for n in layers},
        "corrupted": {n: m["dim"] + m.get("cor_up", 1.0) for n in layers},
        "adversarial": {n: m["dim"] + m.get("adv_up", 3.0) for n in layers},
    }
    grad = {"across_samples": m.get("g_s", 1e-3), "across_units": m.get("g_u", 2e-3),
            "mean_square": m.get("g_m", 3e-3)}  # fmt: skip
    return {
        "setting": setting,
        "kind": kind,
        "alpha": alpha,
        "seed": seed,
        "dir": f"runs/{setting}-{seed}",
        "health": m.get("health", "ok"),
        "health_reasons": [] if m.get("health", "ok") == "ok" else ["collapsed layer relu2"],
        "test_accuracy": m["acc"],
        "train_seconds": 1.0,
        "selectivity": {n: si for n in layers},
        "mean_selectivity": si,
        "eval_accuracy": m["acc"],
        "corruption_relative": m["cor"] / m["acc"],
        "fgsm_relative": m["fgsm"] / m["acc"],
        "pgd_relative": m["pgd"] / m["acc"],
        "snnl": {"relu1": 0.5, "relu2": 0.4, "logits": 0.3},
        "corruption": {"mean": m["cor"], "cells": {"brightness/1": m["cor"]}},
        "fgsm": {"0.1": m["fgsm"]},
        "pgd": {"0.1": m["pgd"]},
        "fgsm_mean": m["fgsm"],
        "pgd_mean": m["pgd"],
        "input_gradient": {n: dict(grad) for n in layers},
        "dimensionality": dims,
        "participation_ratio": {k: dict(v) for k, v in dims.items()},
    }


def _results(records: list[dict]) -> dict:
    s = sel.Settings(seeds=4, alphas=tuple(a for a in ALPHAS if a))
    return json.loads(
        json.dumps(
            {
                "settings": asdict(s),
                "dataset": "mnist5k",
                "model": "mlp",
                "epochs": 8,
                "layers": ["relu1", "relu2"],
                "eval_points": 500,
                "cells": ["brightness/1"],
                "skipped": {},
                "runs": records,
                "summary": sel._summary(records, ["relu1", "relu2"]),
                "timing": {
                    "train_or_load_seconds": 1.0,
                    "measure_seconds": 1.0,
                    "train_or_load_cpu_seconds": 1.0,
                    "measure_cpu_seconds": 1.0,
                    "train_seconds_sweep": 1.0,
                },
            }
        )
    )


def _synthetic(cor_trend: float, noise: float = 0.01, seeds: int = 4) -> dict:
    """Seeds x the 7-point sweep + entangled. Selectivity rises with alpha; clean accuracy
    falls away from alpha 0; corrupted / clean = 0.9 + cor_trend * SI, FGSM / clean =
    0.3 + 0.2 * SI (+ noise), PGD / clean noise only; gradient variances rise with SI."""
    rng = np.random.default_rng(0)
    records = []
    for seed in range(seeds):
        for i, alpha in enumerate(ALPHAS):
            si = 0.2 + 0.08 * i + 0.01 * seed
            acc = 0.9 - 0.02 * abs(alpha)
            records.append(
                _record(
                    sel.setting_label(alpha),
                    "selectivity" if alpha else "normal",
                    alpha,
                    seed,
                    si,
                    acc=acc,
                    cor=acc * (0.9 + cor_trend * si + noise * rng.normal()),
                    fgsm=acc * (0.3 + 0.2 * si + noise * rng.normal()),
                    pgd=acc * (0.2 + noise * rng.normal()),
                    dim=40 - 20 * si + rng.normal(),
                    g_s=1e-3 * (1 + 2 * si) * np.exp(0.05 * rng.normal()),
                    g_u=2e-3 * (1 + 3 * si) * np.exp(0.05 * rng.normal()),
                )
            )
        records.append(
            _record(
                "entangled",
                "entangled",
                0.0,
                seed,
                0.9,
                acc=0.5,
                cor=0.0,
                fgsm=0.5,
                pgd=0.5,
                dim=1.0,
                g_s=1.0,
                g_u=1.0,
            )  # fmt: skip
        )  # far off every trend: must not enter the claims
    return _results(records)


def test_spearman_matches_scipy() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    for _ in range(20):
        x = list(rng.integers(0, 4, size=7).astype(float))  # ties
        y = list(rng.normal(size=7))
        if len(set(x)) < 2:
            continue
        assert sclaims.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-10)
    assert sclaims.spearman([1.0, 2.0, None, 3.0], [3.0, 2.0, 9.0, 1.0]) == pytest.approx(-1.0)
    assert sclaims.spearman([1.0, 2.0], [1.0, 2.0]) is None
    assert sclaims.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None


def test_per_seed_spearman_matches_scipy_and_counts_failed_runs() -> None:
    from scipy.stats import spearmanr

    res = _synthetic(cor_trend=-0.3, noise=0.05)
    res["runs"][2]["health"] = "collapsed"  # counts at its measured values
    rhos = sclaims.per_seed_spearman(res, lambda r: r["corruption_relative"])
    for seed, rho in rhos.items():
        runs = [r for r in res["runs"] if r["seed"] == seed and r["kind"] != "entangled"]
        assert len(runs) == len(ALPHAS)
        ref = spearmanr(
            [r["mean_selectivity"] for r in runs], [r["corruption_relative"] for r in runs]
        )
        assert rho == pytest.approx(ref.statistic, abs=1e-10)


def _t_interval(values: list[float]) -> tuple[float, float]:
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    half = t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return v.mean() - half, v.mean() + half


def _rule(low: float, high: float, expect: str, margin: float) -> str:
    if expect == "less":
        low, high = -high, -low
    if low > 0:
        return "holds"
    if high < 0 or (-margin < low and high < margin):
        return "does not hold"
    return "inconclusive"


def _check_rows_from_json(res: dict) -> list:
    """Every new row recomputed from the saved JSON alone with scipy."""
    from scipy.stats import spearmanr

    res = json.loads(json.dumps(res))
    claims = sel.claims(res)
    cor, fgsm, pgd, grad = claims[0], claims[1], claims[2], claims[3]
    sweep = [r for r in res["runs"] if r["kind"] != "entangled"]
    seeds = sorted({r["seed"] for r in sweep})
    for row, key, raw, expect in (
        (cor, "corruption_relative", lambda r: r["corruption"]["mean"], "less"),
        (fgsm, "fgsm_relative", lambda r: r["fgsm_mean"], "greater"),
        (pgd, "pgd_relative", lambda r: r["pgd_mean"], "greater"),
    ):
        rel_rho, raw_rho = [], []
        for seed in seeds:
            runs = [r for r in sweep if r["seed"] == seed]
            si = [r["mean_selectivity"] for r in runs]
            rel_rho.append(spearmanr(si, [r[key] for r in runs]).statistic)
            raw_rho.append(spearmanr(si, [raw(r) for r in runs]).statistic)
        low, high = _t_interval(rel_rho)
        iv = row.comparisons[0].interval
        assert (iv.low, iv.high) == (pytest.approx(low), pytest.approx(high))
        assert row.verdict == _rule(low, high, expect, 0.2)
        assert row.comparisons[0].margin == 0.2
        assert f"mean {np.mean(rel_rho):+.3f}" in row.measured
        assert "raw" in row.measured and f"mean {np.mean(raw_rho):+.3f}" in row.measured
        assert "count at their measured values" in row.setting
    layer = res["layers"][0]
    verdicts = []
    for i, what in enumerate(("across_samples", "across_units")):
        diffs = []
        for seed in seeds:
            runs = sorted(
                (r for r in sweep if r["seed"] == seed), key=lambda r: r["mean_selectivity"]
            )
            hi, lo = runs[-1]["input_gradient"][layer][what], runs[0]["input_gradient"][layer][what]
            diffs.append(np.log(hi) - np.log(lo))
        low, high = _t_interval(diffs)
        iv = grad.comparisons[i].interval
        assert (iv.low, iv.high) == (pytest.approx(low), pytest.approx(high))
        verdicts.append(_rule(low, high, "greater", np.log(1.1)))
    both = "holds" if verdicts == ["holds"] * 2 else (
        "does not hold" if "does not hold" in verdicts else "inconclusive")  # fmt: skip
    assert grad.verdict == both
    return claims


def test_claims_from_the_saved_json_alone() -> None:
    claims = _check_rows_from_json(_synthetic(cor_trend=-0.3))
    assert len(claims) == 6
    cor, fgsm, _, grad, dim, adv = claims
    assert cor.verdict == "holds" and "corrupted accuracy" in cor.measured  # rho -1 per seed
    assert fgsm.verdict == "holds" and grad.verdict == "holds"
    assert dim.verdict == "holds"  # dimensionality falls with selectivity (slope)
    assert adv.verdict == "holds"  # +3 vs +1 components
    flipped = _check_rows_from_json(_synthetic(cor_trend=+0.3))[0]
    assert flipped.verdict == "does not hold"
    noisy = _check_rows_from_json(_synthetic(cor_trend=-0.3, noise=0.2))
    assert noisy[2].verdict != "holds"  # PGD / clean: noise only
    flat = _synthetic(cor_trend=-0.3)
    for r in flat["runs"]:
        r["corruption_relative"] = 0.9  # constant: no correlation in any seed
    assert sel.claims(flat)[0].verdict == "inconclusive"


def test_failed_runs_count_in_robustness_claims_and_are_left_out_of_slopes() -> None:
    res = _synthetic(cor_trend=-0.3)
    bad = next(r for r in res["runs"] if r["setting"] == "a=-3" and r["seed"] == 0)
    bad["health"], bad["corruption_relative"] = "collapsed", 0.1  # moves seed 0's rho
    res["summary"] = sel._summary(res["runs"], res["layers"])
    claims = _check_rows_from_json(res)
    assert "(1 of 28)" in claims[0].setting
    assert claims[4].verdict == "holds" and "1 unhealthy" in claims[4].note
    assert res["summary"]["a=-3"]["health"] == {"ok": 3, "collapsed": 1, "diverged": 0}


def test_section_writes_figures_and_tables(tmp_path: Path) -> None:
    res = _synthetic(cor_trend=-0.3)
    section = sel.section(res, tmp_path)
    names = [name for name, _ in section.figures]
    assert "selectivity_relative_robustness.png" in names
    for name in names:
        assert (tmp_path / name).stat().st_size > 1000
    text = section.markdown
    for setting in ("a=-3", "a=-0.5", "normal", "a=1", "entangled"):
        assert f"| {setting} |" in text
    assert "0.215 +- 0.013" in text  # a=-3 mean selectivity: 0.20, 0.21, 0.22, 0.23
    # clean-accuracy table: alpha -3 costs 6 points (0.84 on every seed)
    assert "| -3 | a=-3 | 0.215 +- 0.013 | 0.840 +- 0.000 | 4 / 4 | 0.840 +- 0.000 |" in text


def test_settings_default_and_full() -> None:
    default = sel.settings(ReproduceConfig(seeds=2))
    full = sel.settings(ReproduceConfig(seeds=2, full=True))
    assert default.seeds == 2 and min(default.alphas) < 0 < max(default.alphas)
    assert len(full.corruptions) == 15 and full.severities == (1, 2, 3, 4, 5)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_reproduce_and_report_on_digits(tmp_path: Path) -> None:
    from snnl.report import write_report
    from snnl.runner import reproduce

    config = ReproduceConfig(
        dataset="digits",
        seeds=2,
        epochs=1,
        limit_train=300,
        limit_test=120,
        experiments=["selectivity"],
    )
    reproduce(config, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["complete"]
    res = saved["experiments"]["selectivity"]
    labels = ["a=-3", "a=-2", "a=-1", "a=-0.5", "normal", "a=0.5", "a=1", "entangled"]
    assert list(res["summary"]) == labels
    per_seed = ["normal", "a=-3", "a=-2", "a=-1", "a=-0.5", "a=0.5", "a=1", "entangled"]
    assert [r["setting"] for r in res["runs"]] == per_seed * 2
    zoo = Zoo(config, tmp_path, log=lambda m: None)
    normal = zoo.get("normal", 1)
    run = next(r for r in res["runs"] if r["setting"] == "normal" and r["seed"] == 1)
    assert run["test_accuracy"] == normal.results()["final"]["test_accuracy"]
    model = normal.load()
    with torch.no_grad():  # clean accuracy on the evaluation points, recomputed
        pick = sel._eval_subset(len(zoo.dataset.y_test), res["eval_points"], 0)
        x, y = zoo.dataset.x_test[pick], zoo.dataset.y_test[pick]
        assert run["eval_accuracy"] == float((model(x).argmax(1) == y).double().mean())
    sweep = [r for r in res["runs"] if r["kind"] == "selectivity"]
    assert all(r["dir"].startswith("runs/selectivity-") for r in sweep)
    write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert sel.TITLE in report
    for name in ("selectivity_robustness.png", "selectivity_relative_robustness.png"):
        assert (tmp_path / "figures" / name).exists()
