"""Experiment "transfer" on a tiny digits run, against independent recomputation.

One ``snnl reproduce --experiments transfer`` (3 seeds x 2 kinds, 1 epoch on 200
digits, 120 test points) is shared by the module. The transfer matrices are recomputed
from the saved models with plain autograd (no snnl.attacks), the seed-pair cells by
indexing, the gradient clustering with scikit-learn and the float64 SNNL reference,
and every claim's verdict from the saved results.json alone with scipy's paired t
interval and the verdict rule written out here.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as scipy_stats
from sklearn.metrics import silhouette_score

from reference import interval_verdict, snnl_reference_mean
from snnl.experiments import transfer
from snnl.experiments import transfer_matrix as tm
from snnl.experiments.config import ReproduceConfig
from snnl.experiments.zoo import Zoo
from snnl.runner import reproduce
from snnl.train import load_run

CONFIG = ReproduceConfig(
    dataset="digits",
    seeds=3,
    epochs=1,
    limit_train=200,
    limit_test=120,
    experiments=["transfer"],
)
NAMES = [f"{k}-{s}" for k in ("normal", "entangled") for s in range(3)]
PAIRS = [(0, 1), (1, 2), (2, 0)]

# tiny problems: one torch thread (see conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The experiment through ``reproduce`` once: folder, dataset, saved results."""
    out = tmp_path_factory.mktemp("transfer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reproduce(CONFIG, out)
    saved = json.loads((out / "results.json").read_text())
    assert saved["complete"]
    return out, Zoo(CONFIG, out).dataset, saved["experiments"]["transfer"]


def _models(out, dataset, res):
    runs = {r["name"]: r["run"] for r in res["models"]}
    return {n: load_run(out / runs[n], dataset=dataset)[0] for n in NAMES}


def _fgsm_by_hand(model, x, labels, eps, targeted):
    """x +- eps * sign(grad_x CE(f(x), labels)), clipped to [0, 1]: plain autograd."""
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), labels, reduction="sum"), xg)
    step = -eps if targeted else eps
    return (x + step * g.sign()).clamp(0, 1).detach()


def _paired_verdict(a, b, expect, margin):
    """scipy's paired t 95% interval of mean(a - b), judged by :func:`_rule`."""
    ci = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    return interval_verdict(ci.low, ci.high, expect, margin)


def _t_interval(values):
    """One-sample t 95% interval of the mean (scipy)."""
    ci = scipy_stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    return float(np.mean(values)), ci.low, ci.high


# --------------------------------------------------------------------------- helpers


def test_seed_pairs_and_settings():
    assert tm.seed_pairs(3) == PAIRS and tm.seed_pairs(2) == [(0, 1), (1, 0)]
    assert tm.seed_pairs(1) == [] and tm.seed_pairs(0) == []
    for n in range(2, 7):  # source and target always differ; each seed once on each side
        pairs = tm.seed_pairs(n)
        assert all(s != t for s, t in pairs)
        assert sorted(s for s, _ in pairs) == sorted(t for _, t in pairs) == list(range(n))
    s = transfer.settings(CONFIG)
    assert s.eps in s.eps_grid and s.shuffles >= 2
    with pytest.raises(ValueError, match="eps 0.3 must be one of eps_grid"):
        replace(s, eps=0.3)
    with pytest.raises(ValueError, match="shuffles"):
        replace(s, shuffles=0)


def test_gradient_directions_of_a_linear_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3)).double()
    x, y = torch.rand(7, 1, 6, dtype=torch.float64), torch.randint(0, 3, (7,))
    net.train()
    d = transfer.gradient_directions(net, x, y)
    assert net.training and all(p.grad is None for p in net.parameters())
    w, b = net[1].weight, net[1].bias
    p = torch.softmax(x.flatten(1) @ w.T + b, dim=1)
    g = ((p - F.one_hot(y, 3)) @ w).detach()  # d CE / dx = W^T (p - onehot)
    assert torch.equal(d, g.sign())


def test_transfer_pairs_hand_case():
    m = np.arange(16, dtype=float).reshape(4, 4) / 16
    names = ["normal-0", "normal-1", "entangled-0", "entangled-1"]
    p = transfer.transfer_pairs(m, names)
    assert p["normal->normal"] == [1 / 16, 4 / 16]
    assert p["entangled->entangled"] == [11 / 16, 14 / 16]
    assert p["normal->entangled"] == [2 / 16, 3 / 16, 6 / 16, 7 / 16]
    assert p["entangled->normal"] == [8 / 16, 9 / 16, 12 / 16, 13 / 16]
    assert p["white-box normal"] == [0.0, 5 / 16] and p["white-box entangled"] == [10 / 16, 15 / 16]
    s = transfer.transfer_summary(m, names)
    assert s["normal->entangled"]["mean"] == pytest.approx(18 / 4 / 16)
    p = transfer.transfer_pairs(m[:3, :3], names[:3])
    assert "entangled->entangled" not in p and p["white-box entangled"] == [10 / 16]


def test_kind_cells_hand_case():
    """6 models, 3 seeds: m[i, j] = 10 i + j, so each value names its (source, target)."""
    m = [[10.0 * i + j for j in range(6)] for i in range(6)]
    cells = tm.kind_cells(m, NAMES, PAIRS)
    # rows/columns: normal-0..2 = 0..2, entangled-0..2 = 3..5; pairs 0->1, 1->2, 2->0
    assert cells["normal->normal"] == [1.0, 12.0, 20.0]
    assert cells["normal->entangled"] == [4.0, 15.0, 23.0]
    assert cells["entangled->normal"] == [31.0, 42.0, 50.0]
    assert cells["entangled->entangled"] == [34.0, 45.0, 53.0]
    assert cells["white-box normal"] == [0.0, 11.0, 22.0]
    assert cells["white-box entangled"] == [33.0, 44.0, 55.0]
    clean = [0.5, 1.0, 2.0, 3.0, 4.0, 5.0]
    over = tm.kind_cells(m, NAMES, PAIRS, clean=clean)
    assert over["normal->entangled"] == [4.0 - 4.0, 15.0 - 5.0, 23.0 - 3.0]
    assert over["white-box normal"] == [0.0 - 0.5, 11.0 - 1.0, 22.0 - 2.0]
    # normal-1 missing (unhealthy): every pair that needs it is None
    names = [n for n in NAMES if n != "normal-1"]
    sub = [[m[i][j] for j in range(6) if j != 1] for i in range(6) if i != 1]
    cells = tm.kind_cells(sub, names, PAIRS)
    assert cells["normal->normal"] == [None, None, 20.0]
    assert cells["normal->entangled"] == [4.0, None, 23.0]
    assert cells["entangled->normal"] == [None, 42.0, 50.0]
    assert tm.effect_values(cells, "target") == ([23.0], [20.0])
    assert tm.effect_values(cells, "source") == ([50.0], [20.0])
    assert tm.paired_effect(cells, "target") is None  # one pair: no interval


def test_cell_stats_and_effect_against_scipy():
    vals = [0.42, 0.55, 0.47]
    got = tm.cell_stats([vals[0], None, vals[1], vals[2]])
    mean, low, high = _t_interval(vals)
    assert got["n"] == 3 and got["mean"] == pytest.approx(mean)
    assert (got["low"], got["high"]) == pytest.approx((low, high))
    assert tm.cell_stats([None]) is None and tm.cell_stats([0.3])["low"] is None
    cells = {"normal->entangled": [0.2, 0.35, 0.3], "normal->normal": [0.5, 0.45, 0.6]}
    iv = tm.paired_effect(cells, "target")
    ci = scipy_stats.ttest_rel(cells["normal->entangled"], cells["normal->normal"])
    ci = ci.confidence_interval(0.95)
    assert (iv.low, iv.high) == pytest.approx((ci.low, ci.high))


def test_shuffled_reference_is_a_null():
    """Labels shuffled: no class clusters (SNNL* near ln C, silhouette near 0), and the
    same permutations as torch.randperm seeded seed + k."""
    g = torch.Generator().manual_seed(3)
    y = torch.arange(90) % 3
    x = torch.randn(90, 5, generator=g) + 4.0 * y[:, None]
    real = tm.class_clustering(x, y)
    ref = tm.shuffled_clustering(x, y, shuffles=4, seed=7)
    assert real["snnl"] < 0.1 and ref["snnl"] > 0.8  # ln 3 = 1.10 without clusters
    assert real["silhouette"] > 0.5 and abs(ref["silhouette"]) < 0.1
    for k in range(4):
        perm = torch.randperm(90, generator=torch.Generator().manual_seed(7 + k))
        want = silhouette_score(x.double().numpy(), y[perm].numpy())
        assert ref["silhouette_each"][k] == pytest.approx(want, abs=1e-9)
    assert ref["snnl"] == pytest.approx(np.mean(ref["snnl_each"]))
    with pytest.raises(ValueError, match="shuffles"):
        tm.shuffled_clustering(x, y, shuffles=0, seed=0)


# --------------------------------------------------------------------------- tiny run


def test_matrices_by_hand(tiny):
    """Every model pair, both attacks, every eps, against plain autograd FGSM; the seed
    pair cells by indexing; targeted: the target class is (y + 1) mod C."""
    out, dataset, res = tiny
    assert res["names"] == NAMES and res["pairs"] == [list(p) for p in PAIRS]
    assert res["n_points"] == 120 and res["target_rule"] == "(y + 1) mod C"
    models = _models(out, dataset, res)
    x, y = dataset.x_test, dataset.y_test
    c = (y + 1) % 10
    assert not bool((c == y).any())
    for attack in ("untargeted", "targeted"):
        labels = c if attack == "targeted" else y
        for eps in res["settings"]["eps_grid"]:
            saved = res["model_matrices"][attack][f"{eps:g}"]
            adv = {
                n: _fgsm_by_hand(m, x, labels, eps, attack == "targeted") for n, m in models.items()
            }
            for t, target in enumerate(models.values()):
                with torch.no_grad():
                    clean = target(x).argmax(1)
                    want = (clean == c) if attack == "targeted" else (clean != y)
                    assert saved["clean"][t] == pytest.approx(want.double().mean().item())
                    for s, src in enumerate(NAMES):
                        pred = target(adv[src]).argmax(1)
                        hit = (pred == c) if attack == "targeted" else (pred != y)
                        # float32 sign flips of near-zero gradient entries: a point or so
                        assert saved["matrix"][s][t] == pytest.approx(
                            hit.double().mean().item(), abs=1.5 / 120
                        )
            m = np.array(saved["matrix"])
            cells = res["kind_matrix"][attack][f"{eps:g}"]
            i = {n: k for k, n in enumerate(NAMES)}
            for cell in tm.CELLS:
                a, b = cell.split("->")
                assert cells[cell] == [m[i[f"{a}-{s}"], i[f"{b}-{t}"]] for s, t in PAIRS]
            assert cells["white-box entangled"] == [m[k, k] for k in (3, 4, 5)]
    main = res["model_matrices"]["untargeted"]["0.1"]
    assert res["matrix"] == main["matrix"] and res["clean_error"] == main["clean"]
    # the targeted attack reaches its class far more often on its own model than clean
    tgt = np.array(res["model_matrices"]["targeted"]["0.2"]["matrix"])
    clean_rate = np.array(res["model_matrices"]["targeted"]["0.2"]["clean"])
    assert (np.diag(tgt) > clean_rate).all()


def test_directions_and_shuffled_null_by_hand(tiny):
    out, dataset, res = tiny
    d = res["directions"]
    models = _models(out, dataset, res)
    x, y = dataset.x_test, dataset.y_test  # 120 <= direction_points: every test point
    assert d["labels"] == y.tolist() and res["settings"]["shuffles"] == 5
    perms = [torch.randperm(120, generator=torch.Generator().manual_seed(k)) for k in range(5)]
    for name, model in models.items():
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
        sign = g.flatten(1).sign().double().numpy()
        c = d["per_model"][name]
        assert c["silhouette"] == pytest.approx(silhouette_score(sign, y.numpy()), abs=1e-6)
        assert c["snnl"] == pytest.approx(
            snnl_reference_mean(sign, y.numpy(), c["temperature"]), rel=1e-6
        )
        sh = c["shuffled"]
        sils = [silhouette_score(sign, y[p].numpy()) for p in perms]
        assert sh["silhouette"] == pytest.approx(np.mean(sils), abs=1e-6)
        for k, p in enumerate(perms):
            t, labels = sh["temperature_each"][k], y[p].numpy()
            value = snnl_reference_mean(sign, labels, t)
            assert sh["snnl_each"][k] == pytest.approx(value, rel=1e-6)
            for other in (t / 2, t * 2):  # a minimum over T
                assert sh["snnl_each"][k] <= snnl_reference_mean(sign, labels, other) + 1e-9
        assert sh["snnl"] == pytest.approx(np.mean(sh["snnl_each"]))
        # shuffled labels: no clusters (ln 10 = 2.30); the true labels cluster
        assert sh["snnl"] > 2.0 > c["snnl"]


def _per_seed(res, kind, key):
    pm = res["directions"]["per_model"]
    return [key(pm[f"{kind}-{s}"]) for s in range(3)]


def test_claims_from_the_saved_json_alone(tiny):
    out, _, _ = tiny
    res = json.loads((out / "results.json").read_text())["experiments"]["transfer"]
    found = transfer.claims(res)
    assert len(found) == 6
    m = {a: np.array(res["model_matrices"][a]["0.1"]["matrix"]) for a in ("untargeted", "targeted")}
    i = {n: k for k, n in enumerate(NAMES)}
    k = 0
    for attack, margin in (("untargeted", 0.02), ("targeted", 0.01)):
        nn_ = [m[attack][i[f"normal-{s}"], i[f"normal-{t}"]] for s, t in PAIRS]
        ne = [m[attack][i[f"normal-{s}"], i[f"entangled-{t}"]] for s, t in PAIRS]
        en = [m[attack][i[f"entangled-{s}"], i[f"normal-{t}"]] for s, t in PAIRS]
        target, source = found[k], found[k + 1]
        k += 2
        assert "target effect" in target.claim and attack in target.claim
        assert "source effect" in source.claim and attack in source.claim
        assert target.verdict == _paired_verdict(ne, nn_, "less", margin)
        assert source.verdict == _paired_verdict(en, nn_, "less", margin)
        assert target.comparisons[0].margin == margin == transfer.MARGINS[attack]
        ci = scipy_stats.ttest_rel(ne, nn_).confidence_interval(0.95)
        assert target.comparisons[0].interval.low == pytest.approx(ci.low)
        assert f"{np.mean(ne):.3f} +- {np.std(ne, ddof=1):.3f} (n=3)" in target.measured
        assert f"{np.mean(en):.3f} +- {np.std(en, ddof=1):.3f} (n=3)" in source.measured
        # the secondary: the same over each target's clean value
        clean = res["model_matrices"][attack]["0.1"]["clean"]
        over_ne = [v - clean[i[f"entangled-{t}"]] for v, (_, t) in zip(ne, PAIRS, strict=True)]
        over_nn = [v - clean[i[f"normal-{t}"]] for v, (_, t) in zip(nn_, PAIRS, strict=True)]
        ci = scipy_stats.ttest_rel(over_ne, over_nn).confidence_interval(0.95)
        assert f"[{ci.low:+.3g}, {ci.high:+.3g}]" in target.note
    normal, shuffled = found[4], found[5]
    real = _per_seed(res, "normal", lambda v: v["snnl"])
    shuf = _per_seed(res, "normal", lambda v: v["shuffled"]["snnl"])
    assert normal.verdict == _paired_verdict(real, shuf, "less", transfer.SNNL_MARGIN)
    sil = _per_seed(res, "normal", lambda v: v["silhouette"])
    sil_shuf = _per_seed(res, "normal", lambda v: v["shuffled"]["silhouette"])
    secondary = _paired_verdict(sil, sil_shuf, "greater", transfer.SILHOUETTE_MARGIN)
    agree = "agree" if secondary == normal.verdict else "disagree"
    assert f"secondary (silhouette, margin 0.02): {secondary}" in normal.note
    assert f"the two measures {agree}" in normal.note
    gap = {
        kind: [
            s - r
            for s, r in zip(
                _per_seed(res, kind, lambda v: v["shuffled"]["snnl"]),
                _per_seed(res, kind, lambda v: v["snnl"]),
                strict=True,
            )
        ]
        for kind in ("normal", "entangled")
    }
    assert shuffled.verdict == _paired_verdict(
        gap["entangled"], gap["normal"], "less", transfer.SNNL_MARGIN
    )
    e = gap["entangled"]
    assert f"entangled {np.mean(e):.3f} +- {np.std(e, ddof=1):.3f} (n=3)" in shuffled.measured


def test_disagreeing_measures_are_said(tiny):
    """Silhouettes edited so that the secondary measure contradicts the primary one."""
    _, _, res = tiny
    res = copy.deepcopy(res)
    pm = res["directions"]["per_model"]
    for s, (sil, shuf) in enumerate(((0.10, 0.30), (0.11, 0.32), (0.12, 0.31))):
        pm[f"normal-{s}"]["silhouette"] = sil  # real BELOW shuffled: not clustered
        pm[f"normal-{s}"]["shuffled"]["silhouette"] = shuf
    claim = transfer.claims(res)[4]
    assert claim.verdict == "holds"  # SNNL*: far below the shuffled reference
    assert "secondary (silhouette, margin 0.02): does not hold" in claim.note
    assert "the two measures disagree (the verdict is the primary measure's, SNNL*)" in claim.note


def test_section_tables_and_figures(tiny, tmp_path):
    _, _, res = tiny
    sec = transfer.section(res, tmp_path)
    md = sec.markdown
    assert [f for f, _ in sec.figures] == ["transfer_matrix.png", "transfer_directions.png"]
    for name, _ in sec.figures:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = res["kind_matrix"]["targeted"]["0.05"]["entangled->normal"]
    mean, low, high = _t_interval(cells)
    assert f"{mean:.3f} [{low:.3f}, {high:.3f}] (n=3)" in md
    row = next(line for line in md.splitlines() if line.startswith("| untargeted | 0.2 | +"))
    ne = res["kind_matrix"]["untargeted"]["0.2"]["normal->entangled"]
    nn_ = res["kind_matrix"]["untargeted"]["0.2"]["normal->normal"]
    ci = scipy_stats.ttest_rel(ne, nn_).confidence_interval(0.95)
    assert (
        row.split(" | ")[2]
        == f"{np.mean(np.subtract(ne, nn_)):+.3f} [{ci.low:+.3f}, {ci.high:+.3f}] (n=3)"
    )
    assert "seed pairs (source seed -> target seed) 0 -> 1, 1 -> 2, 2 -> 0" in md
    rows = [line for line in md.splitlines() if line.startswith("| normal-0 | ")]
    assert len(rows) == 4  # the models table, two model matrices, the clustering table


def test_without_healthy_models_or_pairs(tiny):
    _, _, res = tiny
    empty = copy.deepcopy(res)
    for r in empty["models"]:
        r["health"] = "collapsed"
    empty.update(names=[], matrix=[], model_matrices={}, kind_matrix={}, directions=None)
    assert all(c.verdict == "inconclusive" for c in transfer.claims(empty))
    assert "No healthy model" in transfer.section(empty, Path("/nonexistent")).markdown
