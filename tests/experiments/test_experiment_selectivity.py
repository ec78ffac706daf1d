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


# ----------------------------------------------------------------------------- claims


def _record(setting: str, kind: str, alpha: float, seed: int, si: float, **m: float) -> dict:
    layers = ["relu1", "relu2"]
    dims = {
        "clean": {n: m["dim"] for n in layers},
        "corrupted": {n: m["dim"] + m.get("cor_up", 1.0) for n in layers},
        "adversarial": {n: m["dim"] + m.get("adv_up", 3.0) for n in layers},
    }
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
        "dimensionality": dims,
        "participation_ratio": {k: dict(v) for k, v in dims.items()},
    }


def _results(records: list[dict]) -> dict:
    s = sel.Settings(seeds=3, alphas=(-1.0, 1.0))
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


def _synthetic(cor_slope: float, noise: float = 0.002) -> dict:
    """Three seeds x (alpha -1, 0, 1) + entangled; corruption accuracy = 0.8 + slope * SI."""
    rng = np.random.default_rng(0)
    records = []
    for seed in range(3):
        for label, alpha, si in (("a=-1", -1.0, 0.2), ("normal", 0.0, 0.45), ("a=1", 1.0, 0.7)):
            records.append(
                _record(
                    label,
                    "selectivity" if alpha else "normal",
                    alpha,
                    seed,
                    si + 0.01 * seed,
                    acc=0.9,
                    cor=0.8 + cor_slope * si + noise * rng.normal(),
                    fgsm=0.3 + 0.2 * si + noise * rng.normal(),
                    pgd=0.2 + noise * rng.normal(),
                    dim=40 - 20 * si + rng.normal(),
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
                fgsm=1.0,
                pgd=1.0,
                dim=1.0,
            )
        )  # far off every trend: must not enter the slopes
    return _results(records)


def test_claims_follow_the_per_seed_slopes() -> None:
    res = _synthetic(cor_slope=-0.3)
    claims = sel.claims(res)
    assert len(claims) == 5
    cor, fgsm, pgd, dim, adv = claims
    assert cor.verdict == "holds" and "corruption" in cor.measured  # slope -0.3 < 0
    assert fgsm.verdict == "holds"  # slope +0.2 > 0
    assert pgd.verdict == "inconclusive"  # no trend, noise only
    assert dim.verdict == "holds"  # dimensionality falls with selectivity
    assert adv.verdict == "holds"  # +3 vs +1 components
    slopes = []
    for seed in range(3):
        runs = [r for r in res["runs"] if r["seed"] == seed and r["kind"] != "entangled"]
        slopes.append(
            np.polyfit(
                [r["mean_selectivity"] for r in runs], [r["corruption"]["mean"] for r in runs], 1
            )[0]
        )
    assert f"{np.mean(slopes):.3f}" in cor.measured

    flipped = sel.claims(_synthetic(cor_slope=+0.3))[0]
    assert flipped.verdict == "does not hold"


def test_unhealthy_runs_are_left_out_and_named() -> None:
    res = _synthetic(cor_slope=-0.3)
    bad = res["runs"][0]
    bad["health"], bad["corruption"]["mean"] = "collapsed", 5.0  # would flip the slope
    res["summary"] = sel._summary(res["runs"], res["layers"])
    cor = sel.claims(res)[0]
    assert cor.verdict == "holds" and "1 unhealthy" in cor.note
    assert res["summary"]["a=-1"]["health"] == {"ok": 2, "collapsed": 1, "diverged": 0}


def test_section_writes_figures_and_tables(tmp_path: Path) -> None:
    res = _synthetic(cor_slope=-0.3)
    section = sel.section(res, tmp_path)
    for name, _ in section.figures:
        assert (tmp_path / name).stat().st_size > 1000
    text = section.markdown
    for setting in ("a=-1", "normal", "a=1", "entangled"):
        assert f"| {setting} |" in text
    assert "0.210 +- 0.010" in text  # a=-1 mean selectivity: 0.20, 0.21, 0.22


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
    labels = ["a=-3", "a=-1", "normal", "a=1", "entangled"]
    assert list(res["summary"]) == labels
    per_seed = ["normal", "a=-3", "a=-1", "a=1", "entangled"]
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
    for name in ("selectivity_robustness.png", "selectivity_attacks.png"):
        assert (tmp_path / "figures" / name).exists()
