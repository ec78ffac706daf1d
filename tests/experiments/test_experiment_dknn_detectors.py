"""Experiment "dknn"'s standard detectors and separation rows (snnl.experiments.dknn_detectors)
on a tiny digits run, against independent recomputation.

One ``snnl reproduce --experiments dknn`` (2 seeds x 2 kinds, 1 epoch on 200 digits) is
shared by the module; every detector score is recomputed from the saved models with
numpy, scipy and scikit-learn (no snnl.ood), AUROC by a pair loop, FPR@95 from sorted
scores, SNNL* by the float64 reference, verdicts by scipy's paired t interval.
"""

from __future__ import annotations

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from scipy.special import logsumexp, softmax
from sklearn.neighbors import NearestNeighbors

from reference import snnl_star_reference
from snnl.data import load_outliers
from snnl.experiments import dknn
from snnl.experiments import dknn_detectors as det
from snnl.experiments.config import ReproduceConfig
from snnl.experiments.zoo import Zoo
from snnl.runner import reproduce
from snnl.taps import capture
from snnl.train import load_run

CONFIG = ReproduceConfig(
    dataset="digits", seeds=2, epochs=1, limit_train=200, limit_test=120, experiments=["dknn"]
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("det")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reproduce(CONFIG, out)
    saved = json.loads((out / "results.json").read_text())
    return out, Zoo(CONFIG, out).dataset, saved["experiments"]["dknn"]


def _record(res, kind, seed):
    return next(r for r in res["models"] if r["kind"] == kind and r["seed"] == seed)


def _auroc_pairs(clean, odd):
    """P(odd < clean) + 0.5 P(tie), by a plain double loop."""
    clean, odd = np.asarray(clean), np.asarray(odd)
    return float(((odd[:, None] < clean[None]) + 0.5 * (odd[:, None] == clean[None])).mean())


def _fpr95(clean, odd):
    """Threshold = the highest score keeping >= 95% of the clean points; share of odd >= it."""
    ranked = np.sort(np.asarray(clean))[::-1]
    threshold = ranked[math.ceil(0.95 * len(ranked)) - 1]
    return float(np.mean(np.asarray(odd) >= threshold))


def _letters(dataset, n):
    """The study's letters: the same call and seed as the experiment's."""
    return load_outliers("letters", like=dataset, n=n, seed=0)


def _scores_by_hand(model, dataset, x, k):
    """Every standard detector's score of ``x``, written out from the papers' formulas."""
    layer = "relu3"
    tr = capture(model, dataset.x_train, [layer, "logits"])
    h_tr, ytr = tr[layer].double().numpy(), dataset.y_train.numpy()
    q = capture(model, x, [layer, "logits"])
    f, h = q["logits"].double().numpy(), q[layer].double().numpy()
    classes = np.unique(ytr)
    means = np.stack([h_tr[ytr == c].mean(0) for c in classes])
    centred = h_tr - means[np.searchsorted(classes, ytr)]
    prec = np.linalg.pinv(centred.T @ centred / len(h_tr), hermitian=True)
    maha = np.array([max(-(v - m) @ prec @ (v - m) for m in means) for v in h])
    z_tr = h_tr / np.linalg.norm(h_tr, axis=1, keepdims=True)
    z = h / np.linalg.norm(h, axis=1, keepdims=True)
    dist = NearestNeighbors(n_neighbors=k).fit(z_tr).kneighbors(z)[0][:, -1]
    return {
        "max_softmax": softmax(f, axis=1).max(1),
        "energy": logsumexp(f, axis=1),
        "mahalanobis": maha,
        "deep_knn": -dist,
    }


def test_saved_structure_and_summary(tiny):
    _, _, res = tiny
    odd_sets = ["fgsm", "letters", "rotated"]
    for r in res["models"]:
        assert r["feature_layer"] == "relu3" and r["deep_knn_k"] == 1  # round(50 * 200 / 5e4)
        assert sorted(r["detectors"]) == sorted(odd_sets) == sorted(r["separation"])
        for name in odd_sets:
            assert tuple(r["detectors"][name]) == det.ROWS
            sep = r["separation"][name]
            assert list(sep["layers"]) == ["relu1", "relu2", "relu3", "logits"]
            assert sep["hidden_mean"] == pytest.approx(
                np.mean([sep["layers"][la] for la in ("relu1", "relu2", "relu3")])
            )
    for kind in ("normal", "entangled"):
        runs = [_record(res, kind, s) for s in (0, 1)]
        for name in odd_sets:
            for row in det.ROWS:
                for m in ("auroc", "fpr95"):
                    v = [r["detectors"][name][row][m] for r in runs]
                    got = res["detector_summary"][kind][name]["detectors"][row][m]
                    assert got["mean"] == pytest.approx(np.mean(v))
                    assert got["std"] == pytest.approx(np.std(v, ddof=1))


def test_detector_numbers_against_independent_scores(tiny):
    out, dataset, res = tiny
    _, ev = dknn.split_calibration(len(dataset.y_test), size=res["n_calibration"])
    x_clean = dataset.x_test[ev]
    for kind in ("normal", "entangled"):
        r = _record(res, kind, 1)
        model, _ = load_run(out / r["run"], dataset=dataset)
        clean = _scores_by_hand(model, dataset, x_clean, 1)
        odd = {"letters": _letters(dataset, len(ev))}
        for name, x in odd.items():
            scores = _scores_by_hand(model, dataset, x, 1)
            for row in det.STANDARD:
                saved = r["detectors"][name][row]
                assert saved["auroc"] == pytest.approx(
                    _auroc_pairs(clean[row], scores[row]), abs=1e-9
                ), (kind, name, row)
                assert saved["fpr95"] == pytest.approx(_fpr95(clean[row], scores[row]), abs=1e-9)
        # DkNN credibility: the study's own credibility scores (every point is sampled)
        for name in ("fgsm", "letters", "rotated"):
            c = r["sets"]["clean"]["score_sample"]["credibility"]
            o = r["sets"][name]["score_sample"]["credibility"]
            saved = r["detectors"][name]["dknn_credibility"]
            assert saved["auroc"] == pytest.approx(_auroc_pairs(c, o), abs=1e-12)
            assert saved["auroc"] == pytest.approx(r["auroc"][name]["credibility"], abs=1e-12)
            assert saved["fpr95"] == pytest.approx(_fpr95(c, o), abs=1e-12)


def test_separation_against_the_float64_reference(tiny):
    out, dataset, res = tiny
    _, ev = dknn.split_calibration(len(dataset.y_test), size=res["n_calibration"])
    x_clean = dataset.x_test[ev]
    r = _record(res, "entangled", 0)
    model, _ = load_run(out / r["run"], dataset=dataset)
    letters = _letters(dataset, len(ev))
    both = torch.cat([x_clean, letters])
    labels = np.r_[np.zeros(len(ev)), np.ones(len(letters))].astype(int)
    feats = capture(model, both, ["relu2", "relu3"])
    for layer in ("relu2", "relu3"):
        _, want = snnl_star_reference(feats[layer].double().numpy(), labels)
        got = r["separation"]["letters"]["layers"][layer]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)


def _paired_rule(a, b, expect, margin):
    """The verdict rule on scipy's paired t interval of a - b."""
    ci = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    low, high = (ci.low, ci.high) if expect == "greater" else (-ci.high, -ci.low)
    if low > 0:
        return "holds"
    if high < 0 or (-margin < low and high < margin):
        return "does not hold"
    return "inconclusive"


def test_claims_from_saved_results_alone(tiny):
    _, _, res = tiny
    res = json.loads(json.dumps(res))  # plain JSON: nothing but the saved numbers
    found = dknn.claims(res)[5:]
    assert [c.claim.split()[0] for c in found] == ["Entanglement", "DkNN", "Entangled", "Outliers'"]
    standard, vs_best, separation, neighbours = found
    ent = {s: _record(res, "entangled", s) for s in (0, 1)}
    nor = {s: _record(res, "normal", s) for s in (0, 1)}
    a = [
        np.mean([ent[s]["detectors"]["letters"][d]["auroc"] for d in det.STANDARD]) for s in (0, 1)
    ]
    b = [
        np.mean([nor[s]["detectors"]["letters"][d]["auroc"] for d in det.STANDARD]) for s in (0, 1)
    ]
    assert standard.verdict == _paired_rule(a, b, "greater", 0.01)
    assert f"entangled {np.mean(a):.3f} +- {np.std(a, ddof=1):.3f} (n=2)" in standard.measured
    # the best standard detector is chosen on `rotated` (the other outlier set)
    means = {
        d: np.mean([nor[s]["detectors"]["rotated"][d]["auroc"] for s in (0, 1)])
        for d in det.STANDARD
    }
    best = max(means, key=means.get)
    assert f"`rotated` (not on the tested set): {best}" in vs_best.setting
    a = [nor[s]["detectors"]["letters"]["dknn_credibility"]["auroc"] for s in (0, 1)]
    b = [nor[s]["detectors"]["letters"][best]["auroc"] for s in (0, 1)]
    assert vs_best.verdict == _paired_rule(a, b, "greater", 0.01)
    a = [ent[s]["separation"]["letters"]["hidden_mean"] for s in (0, 1)]
    b = [nor[s]["separation"]["letters"]["hidden_mean"] for s in (0, 1)]
    assert separation.verdict == _paired_rule(a, b, "less", 0.01)
    k = res["k"]

    def drop(r):
        return (
            r["sets"]["clean"]["hidden_neighbours_mean"]
            - r["sets"]["letters"]["hidden_neighbours_mean"]
        ) / k

    a, b = [drop(ent[s]) for s in (0, 1)], [drop(nor[s]) for s in (0, 1)]
    assert neighbours.verdict == _paired_rule(a, b, "greater", 0.01)
    assert f"normal {np.mean(b):.3f} +- {np.std(b, ddof=1):.3f}" in neighbours.measured


def test_section_and_claims_pair_by_seed_and_survive_old_results(tiny, tmp_path):
    _, _, res = tiny
    lines = det.section_lines(res)
    text = "\n".join(lines)
    for name in ("fgsm", "letters", "rotated"):
        assert f"`{name}`:" in text
    for row in det.ROWS:
        assert text.count(det.ROW_TEXT[row]) == 3
    cell = res["detector_summary"]["normal"]["letters"]["detectors"]["mahalanobis"]["fpr95"]
    assert f"{cell['mean']:.3f} +- {cell['std']:.3f}" in text
    # a seed whose entangled run failed drops out of every pair
    broken = copy.deepcopy(res)
    _record(broken, "entangled", 1)["health"] = "collapsed"
    seeds, ent, nor = det.paired_by_seed(broken, lambda r: r["seed"])
    assert (seeds, ent, nor) == ([0], [0], [0])
    found = det.claims(broken, "letters", str, ("letters", "rotated"))
    assert [c.verdict for c in (found[0], found[2], found[3])] == ["inconclusive"] * 3
    assert "fewer than two seeds" in found[0].note
    assert found[1].verdict == det.claims(res, "letters", str, ("letters", "rotated"))[1].verdict
    # results saved before the detectors existed: no rows, no table, no failure
    old = copy.deepcopy(res)
    del old["detector_summary"]
    for r in old["models"]:
        for key in ("detectors", "separation", "feature_layer", "deep_knn_k"):
            r.pop(key)
    assert det.section_lines(old) == [] and len(dknn.claims(old)) == 5
    section = dknn.section(old, tmp_path)
    assert "dknn_detectors.png" not in [f for f, _ in section.figures]


def _welch_rule(a, b, expect):
    """The verdict rule (margin 0) on scipy's Welch t interval of a - b."""
    ci = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    low, high = (ci.low, ci.high) if expect == "greater" else (-ci.high, -ci.low)
    return "holds" if low > 0 else "does not hold" if high < 0 else "inconclusive"


def test_dknn_rows_name_the_papers_metric_primary_and_the_others_secondary(tiny):
    """Outliers: the AUROC of credibility decides; FGSM: the ECE decides; every other
    measure is shown with its own verdict (scipy's Welch interval), from the JSON alone."""
    _, _, res = tiny
    res = json.loads(json.dumps(res))
    outlier, adversarial = dknn.claims(res)[:2]
    runs = {k: [_record(res, k, s) for s in (0, 1)] for k in ("entangled", "normal")}
    for claim, primary, expect, secondaries in (
        (outlier, lambda r: r["auroc"]["letters"]["credibility"], "greater", [
            ("mean credibility on letters", "less",
             lambda r: r["sets"]["letters"]["credibility_mean"]),
            ("FPR@95 of credibility", "less",
             lambda r: r["detectors"]["letters"]["dknn_credibility"]["fpr95"]),
        ]),
        (adversarial, lambda r: r["reliability"]["fgsm"]["credibility"]["ece"], "less", [
            ("AUROC of credibility (clean vs FGSM)", "greater",
             lambda r: r["auroc"]["fgsm"]["credibility"]),
            ("mean credibility on FGSM", "less", lambda r: r["sets"]["fgsm"]["credibility_mean"]),
            ("FPR@95 of credibility", "less",
             lambda r: r["detectors"]["fgsm"]["dknn_credibility"]["fpr95"]),
        ]),
    ):  # fmt: skip
        assert "primary measure, the paper's" in claim.claim
        ent, nor = ([primary(r) for r in runs[k]] for k in ("entangled", "normal"))
        assert claim.verdict == _welch_rule(ent, nor, expect)
        head, tail = claim.measured.split("; secondary (not the verdict): ")
        disagree = []
        for label, direction, measure in secondaries:
            e, n = ([measure(r) for r in runs[k]] for k in ("entangled", "normal"))
            verdict = _welch_rule(e, n, direction)
            assert (
                f"{label} ({'lower' if direction == 'less' else 'higher'} = better): entangled "
                f"{np.mean(e):.3f} +- {np.std(e, ddof=1):.3f} (n=2) vs normal "
                f"{np.mean(n):.3f} +- {np.std(n, ddof=1):.3f} (n=2), {verdict}"
            ) in tail
            if verdict not in ("inconclusive", claim.verdict):
                disagree.append(f"{label} {verdict}")
        assert ("disagree with the primary" in claim.note) == bool(disagree)
        for d in disagree:
            assert d in claim.note
        # the k and calibration rule and its values are stated in the row
        assert (
            f"k = {res['k']} = round(75 x 200 / 60,000) and {res['n_calibration']} calibration"
            in claim.setting
        )
