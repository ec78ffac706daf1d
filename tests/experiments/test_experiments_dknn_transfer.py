"""Experiments "dknn" and "transfer" on tiny digits runs, against independent recomputation.

(transfer's own numbers and claims: test_experiment_transfer.py; here the shared report,
health and rerun checks.)

One ``snnl reproduce`` of both experiments (2 seeds x 2 kinds, 1 epoch on 200 digits)
is shared by the module; every number checked is recomputed here from the saved
models with plain autograd, numpy loops or scikit-learn.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as scipy_stats
from sklearn.neighbors import NearestNeighbors

from snnl.cli import main
from snnl.experiments import Context, dknn, transfer
from snnl.experiments.config import ReproduceConfig
from snnl.experiments.zoo import Zoo
from snnl.report import escape_markdown, write_report
from snnl.runner import reproduce
from snnl.taps import capture
from snnl.train import load_run

CONFIG = ReproduceConfig(
    dataset="digits",
    seeds=2,
    epochs=1,
    limit_train=200,
    limit_test=120,
    experiments=["dknn", "transfer"],
)
N_EVAL = 110  # 120 test points; 10 calibrate (750 x 200 / 60,000 = 2.5, at least one per class)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# tiny problems: one torch thread (see conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Both experiments through ``reproduce`` once; the saved results.json."""
    out = tmp_path_factory.mktemp("rep")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reproduce(CONFIG, out)
    saved = json.loads((out / "results.json").read_text())
    assert saved["complete"]
    dataset = Zoo(CONFIG, out).dataset
    return out, dataset, saved["experiments"]["dknn"], saved["experiments"]["transfer"]


def _model(out, rel, dataset):
    model, _ = load_run(out / rel, dataset=dataset)
    return model


def _fgsm_by_hand(model, x, y, eps):
    """x + eps * sign(grad_x CE), clipped to [0, 1] (plain autograd, no snnl.attacks)."""
    xg = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xg), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xg)
    return (x + eps * g.sign()).clamp(0, 1).detach()


def _auroc_pairs(clean, odd):
    """P(odd < clean) + 0.5 P(tie), by a plain double loop in float64."""
    total = 0.0
    for o in odd:
        for c in clean:
            total += 1.0 if o < c else (0.5 if o == c else 0.0)
    return total / (len(odd) * len(clean))


def _mean_sd(values):
    """Mean and sample standard deviation by hand."""
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _side(low, high):
    """The verdict rule (margin 0) on a 95% interval of "the claimed difference"."""
    return "holds" if low > 0 else "does not hold" if high < 0 else "inconclusive"


def _groups_rule(a, b, expect):
    """The verdict rule for two groups: scipy's Welch t interval (issue 20)."""
    x, y = (a, b) if expect == "greater" else (b, a)
    ci = scipy_stats.ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
    return _side(ci.low, ci.high)


def _paired_rule(a, b):
    """The verdict rule for "a < b" paired by seed: scipy's paired t interval (issue 20)."""
    ci = scipy_stats.ttest_rel(b, a).confidence_interval(0.95)
    return _side(ci.low, ci.high)


def _record(res, kind, seed):
    return next(r for r in res["models"] if r["kind"] == kind and r["seed"] == seed)


# --------------------------------------------------------------------------- helpers


def test_split_and_k():
    cal, ev = dknn.split_calibration(120, 0.3)
    assert len(cal) == 36 and len(ev) == 84
    assert sorted(cal.tolist() + ev.tolist()) == list(range(120))
    assert torch.equal(cal, dknn.split_calibration(120, 0.3)[0])  # seeded
    assert not torch.equal(cal, dknn.split_calibration(120, 0.3, seed=1)[0])
    assert [len(p) for p in dknn.split_calibration(120, size=10)] == [10, 110]
    assert torch.equal(dknn.split_calibration(120, size=36)[0], cal)  # one permutation
    with pytest.raises(ValueError, match="exactly one"):
        dknn.split_calibration(10, 0.3, size=3)


def test_k_and_calibration_size_scale_the_papers_by_the_training_set():
    """Papernot & McDaniel: k = 75 and 750 calibration points for 60,000 MNIST points,
    scaled by n_train / 60,000 and rounded half up (hand-computed values)."""
    assert (dknn.PAPER_K, dknn.PAPER_CALIBRATION, dknn.PAPER_TRAIN) == (75, 750, 60000)
    for n, k, cal in ((60000, 75, 750), (4000, 5, 50), (1437, 2, 18), (6000, 8, 75)):
        assert dknn.choose_k(n) == k and dknn.calibration_size(n, 10**5, 10) == cal
    assert dknn.choose_k(200) == 1 and dknn.choose_k(5) == 1  # 0.25 -> 0 -> at least 1
    assert dknn.choose_k(480) == 1 and dknn.choose_k(1200) == 2  # 0.6 -> 1; 1.5 -> 2 (half up)
    assert dknn.calibration_size(200, 120, 10) == 10  # 2.5 -> 3 -> at least one per class
    assert dknn.calibration_size(60000, 1000, 10) == 500  # at most half the test set
    assert dknn.choose_k(10**5, paper_k=50, paper_train=10**5) == 50
    with pytest.raises(ValueError, match="positive"):
        dknn.choose_k(0)
    with pytest.raises(ValueError, match="at least 2"):
        dknn.split_calibration(1, 0.3)
    with pytest.raises(ValueError, match="fraction"):
        dknn.split_calibration(10, 1.0)


def test_outlier_sets_with_and_without_notmnist(tmp_path):
    from PIL import Image

    from snnl.data import load_dataset

    dataset = load_dataset("digits", limit_train=50, limit_test=60)
    rng = np.random.default_rng(0)
    for letter in "ABCDEFGHIJ":
        (tmp_path / letter).mkdir()
        for i in range(3):
            img = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / letter / f"{i}.png")
    with_dir = dknn.Settings(seeds=1, data_dir=str(tmp_path))
    sets, skipped = dknn._input_sets(with_dir, dataset, 20)
    assert list(sets) == ["letters", "rotated", "notmnist"] and not skipped
    assert all(tuple(x.shape) == (20, 1, 8, 8) for x in sets.values())
    sets, skipped = dknn._input_sets(with_dir, dataset, 40)  # only 30 images on disk
    assert "notmnist" not in sets and "n=40" in skipped["notmnist"]
    sets, skipped = dknn._input_sets(dknn.Settings(seeds=1), dataset, 20)
    assert list(sets) == ["letters", "rotated"] and "--data-dir" in skipped["notmnist"]
    assert dknn.settings(ReproduceConfig(dataset="digits", data_dir="/x")).data_dir == "/x"


# --------------------------------------------------------------------------- dknn


def test_dknn_structure_and_summary(tiny):
    _, _, res, _ = tiny
    assert res["settings"]["seeds"] == 2 and res["k"] == 1 and res["num_classes"] == 10
    assert (res["n_calibration"], res["n_eval"]) == (10, N_EVAL)
    assert res["input_sets"] == ["clean", "fgsm", "letters", "rotated"]
    assert "notmnist" in res["skipped_sets"]
    assert [(r["kind"], r["seed"]) for r in res["models"]] == [
        ("normal", 0),
        ("normal", 1),
        ("entangled", 0),
        ("entangled", 1),
    ]
    for r in res["models"]:
        assert r["health"] == "ok" and r["layers"] == ["relu1", "relu2", "relu3", "logits"]
        assert set(r["auroc"]) == {"fgsm", "letters", "rotated"}
        for name in res["input_sets"]:
            e = r["sets"][name]
            assert e["n"] == N_EVAL and sum(e["credibility_hist"]) == N_EVAL
            assert (e["dknn_accuracy"] is not None) == (name in ("clean", "fgsm"))
            per_layer = e["neighbours_of_predicted_class"]
            assert e["hidden_neighbours_mean"] == pytest.approx(
                (per_layer["relu1"] + per_layer["relu2"] + per_layer["relu3"]) / 3
            )
        for name in ("clean", "fgsm"):
            rel = r["reliability"][name]["credibility"]
            assert sum(rel["count"]) == N_EVAL
    # summary = mean and sample std over the seeds, by hand
    for kind in ("normal", "entangled"):
        runs = [_record(res, kind, s) for s in (0, 1)]
        summ = res["summary"][kind]
        for name in res["input_sets"][1:]:
            m, sd = _mean_sd([r["auroc"][name]["credibility"] for r in runs])
            assert summ["auroc"][name]["credibility"]["mean"] == pytest.approx(m)
            assert summ["auroc"][name]["credibility"]["std"] == pytest.approx(sd)
        m, sd = _mean_sd([r["reliability"]["fgsm"]["softmax"]["ece"] for r in runs])
        assert summ["ece"]["fgsm"]["softmax"]["std"] == pytest.approx(sd)


def test_dknn_auroc_and_means_from_scores(tiny):
    _, _, res, _ = tiny
    for r in res["models"]:
        clean = r["sets"]["clean"]["score_sample"]  # 84 <= sample_size: every point
        for name in ("fgsm", "letters", "rotated"):
            odd = r["sets"][name]["score_sample"]
            for score in ("credibility", "softmax", "agreement"):
                assert len(odd[score]) == N_EVAL
                want = _auroc_pairs(clean[score], odd[score])
                assert r["auroc"][name][score] == pytest.approx(want, abs=1e-12)
                assert r["sets"][name][f"{score}_mean"] == pytest.approx(np.mean(odd[score]))


def test_dknn_softmax_fgsm_and_ece_by_hand(tiny):
    out, dataset, res, _ = tiny
    _, ev = dknn.split_calibration(len(dataset.y_test), size=res["n_calibration"])
    x, y = dataset.x_test[ev], dataset.y_test[ev]
    for kind in ("normal", "entangled"):
        r = _record(res, kind, 1)
        model = _model(out, r["run"], dataset)
        with torch.no_grad():
            p = torch.softmax(model(x).double(), dim=1)
        conf = p.max(1).values.numpy()
        correct = (p.argmax(1) == y).numpy()
        assert r["sets"]["clean"]["softmax_mean"] == pytest.approx(conf.mean())
        assert r["sets"]["clean"]["softmax_accuracy"] == pytest.approx(correct.mean())
        # ECE by a plain loop over 10 bins
        ece = 0.0
        for b in range(10):
            inside = [i for i in range(len(conf)) if min(int(conf[i] * 10), 9) == b]
            if inside:
                ece += abs(sum(correct[inside]) - sum(conf[inside])) / len(conf)
        assert r["reliability"]["clean"]["softmax"]["ece"] == pytest.approx(ece)
        x_adv = _fgsm_by_hand(model, x, y, 0.1)
        with torch.no_grad():
            acc_adv = (model(x_adv).argmax(1) == y).double().mean().item()
        assert r["sets"]["fgsm"]["softmax_accuracy"] == pytest.approx(acc_adv, abs=1.5 / N_EVAL)


def test_dknn_credibility_against_sklearn_neighbours(tiny):
    """Plain DkNN: sklearn exact neighbours on centred, L2-normalised layers, numpy p-values."""
    out, dataset, res, _ = tiny
    cal, ev = dknn.split_calibration(len(dataset.y_test), size=res["n_calibration"])
    r = _record(res, "normal", 1)
    model = _model(out, r["run"], dataset)
    k, layers = res["k"], r["layers"]
    ytr = dataset.y_train.numpy()

    def counts(x):
        reps_tr = capture(model, dataset.x_train, layers)
        reps = capture(model, x, layers)
        per_layer = np.zeros((len(layers), len(x), 10))
        for li, name in enumerate(layers):
            tr = reps_tr[name].double().numpy()
            mu = tr.mean(0)
            tr = (tr - mu) / np.linalg.norm(tr - mu, axis=1, keepdims=True)
            q = reps[name].double().numpy() - mu
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            idx = NearestNeighbors(n_neighbors=k).fit(tr).kneighbors(q)[1]
            for i, row in enumerate(idx):
                for j in row:
                    per_layer[li, i, ytr[j]] += 1
        return per_layer

    a_cal = len(layers) * k - counts(dataset.x_test[cal]).sum(0)  # nonconformity (N, C)
    scores = a_cal[np.arange(len(cal)), dataset.y_test[cal].numpy()]
    c_ev = counts(dataset.x_test[ev])
    a_ev = len(layers) * k - c_ev.sum(0)
    p = (scores[None, None, :] >= a_ev[:, :, None]).mean(-1)
    cred = p.max(1)
    sample = np.array(r["sets"]["clean"]["score_sample"]["credibility"])
    # exact ties between float32/float64 neighbour distances may differ for a point or two
    assert np.mean(np.abs(sample - cred) < 1e-6) > 0.95
    assert r["sets"]["clean"]["credibility_mean"] == pytest.approx(cred.mean(), abs=0.02)
    pred = p.argmax(1)
    acc = (pred == dataset.y_test[ev].numpy()).mean()
    assert r["sets"]["clean"]["dknn_accuracy"] == pytest.approx(acc, abs=2.5 / N_EVAL)
    agree = c_ev[:, np.arange(len(ev)), pred].mean(1)  # neighbours of the predicted class
    for li, name in enumerate(layers):
        got = r["sets"]["clean"]["neighbours_of_predicted_class"][name]
        assert got == pytest.approx(agree[li], abs=0.1)


def test_dknn_claims_from_the_per_seed_numbers(tiny):
    _, _, res, _ = tiny
    found = dknn.claims(res)
    assert len(found) == 9  # the last four: test_experiment_dknn_detectors.py
    outlier, adversarial, neighbours, vs_letters, vs_rotated = found[:5]
    runs = {k: [_record(res, k, s) for s in (0, 1)] for k in ("normal", "entangled")}
    ent = [r["auroc"]["letters"]["credibility"] for r in runs["entangled"]]
    nor = [r["auroc"]["letters"]["credibility"] for r in runs["normal"]]
    assert outlier.verdict == _groups_rule(ent, nor, "greater")
    assert f"entangled {np.mean(ent):.3f} +- {np.std(ent, ddof=1):.3f} (n=2)" in outlier.measured
    assert "generated letters" in outlier.setting and "digits, mlp" in outlier.setting
    ent = [r["reliability"]["fgsm"]["credibility"]["ece"] for r in runs["entangled"]]
    nor = [r["reliability"]["fgsm"]["credibility"]["ece"] for r in runs["normal"]]
    assert adversarial.verdict == _groups_rule(ent, nor, "less")
    assert f"normal {np.mean(nor):.3f} +- {np.std(nor, ddof=1):.3f}" in adversarial.measured
    # paired over seeds: the differences' mean against twice their standard error
    a = [r["sets"]["letters"]["hidden_neighbours_mean"] for r in runs["normal"]]
    b = [r["sets"]["clean"]["hidden_neighbours_mean"] for r in runs["normal"]]
    assert neighbours.verdict == _paired_rule(a, b)
    assert f"letters {np.mean(a):.2f} +- {np.std(a, ddof=1):.2f} (n=2)" in neighbours.measured
    for claim, name, paper in (
        (vs_letters, "letters", "0.06 vs 0.33"),
        (vs_rotated, "rotated", "0.09 vs 0.31"),
    ):
        a = [r["sets"][name]["credibility_mean"] for r in runs["normal"]]
        b = [r["sets"][name]["softmax_mean"] for r in runs["normal"]]
        assert claim.verdict == _paired_rule(a, b) and paper in claim.measured
        assert f"softmax confidence {np.mean(b):.3f} +- {np.std(b, ddof=1):.3f}" in claim.measured


def test_dknn_claims_without_outlier_sets(tiny):
    """Data without image outliers (e.g. mnist1d): the outlier claims say why they are open."""
    _, _, res, _ = tiny
    res = copy.deepcopy(res)
    res["input_sets"] = ["clean", "fgsm"]
    res["skipped_sets"] = {"letters": "needs an image dataset", "rotated": "needs an image"}
    found = dknn.claims(res)
    assert [c.verdict for c in found[:1]] == ["inconclusive"] and len(found) == 2
    assert "letters: needs an image dataset" in found[0].note
    assert found[1].verdict == dknn.claims(tiny[2])[1].verdict  # FGSM claim unchanged
    res["input_sets"] = ["clean", "fgsm", "rotated"]  # a notMNIST model: rotated plays outlier
    assert "rotated 45 degrees" in dknn.claims(res)[0].setting


# --------------------------------------------------------------------------- report, health


def test_report_rebuilt_from_saved_results(tiny):
    out, _, res_dknn, res_transfer = tiny
    for name in ("report.md", "report.html"):
        (out / name).unlink()
    shutil.rmtree(out / "figures")
    html = write_report(out).read_text()
    md = (out / "report.md").read_text()
    assert html.count("data:image/png;base64,") == 7  # the sections' 6 and the forest plot
    for module, res in ((dknn, res_dknn), (transfer, res_transfer)):
        assert f"## {module.TITLE}" in md
        for c in module.claims(res):
            cells = [escape_markdown(x) for x in (c.claim, c.source, c.setting, c.measured)]
            assert " | " + " | ".join(cells) + " | " in md and f" | **{c.verdict}**" in md
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == sorted(
        [f"dknn_{n}.png" for n in ("reliability", "histograms", "neighbours", "detectors")]
        + [f"transfer_{n}.png" for n in ("matrix", "directions")]
        + ["claims_forest.png"]
    )
    assert all(f"figures/{name}" in md for name in figures)
    assert "`notmnist` not used: no --data-dir given" in md


def test_unhealthy_runs_left_out(tiny, tmp_path):
    """A run whose saved health is not ok is listed, not studied, and left out of means."""
    out, _, res_dknn, res_transfer = tiny
    shutil.copytree(out / "runs", tmp_path / "runs")
    bad = tmp_path / _record(res_dknn, "normal", 1)["run"] / "results.json"
    saved = json.loads(bad.read_text())
    saved["health"] = {"verdict": "collapsed", "reasons": ["relu3 constant"]}
    bad.write_text(json.dumps(saved))
    context = Context(CONFIG, tmp_path, Zoo(CONFIG, tmp_path))
    s = replace(dknn.settings(CONFIG), outlier_sets=("letters",))
    res = {"settings": asdict(s), **dknn.run(s, context)}
    rec = _record(res, "normal", 1)
    assert rec["health"] == "collapsed" and "sets" not in rec
    assert res["summary"]["normal"]["seeds"] == [0]
    good = _record(res_dknn, "normal", 0)["auroc"]["letters"]["credibility"]
    assert res["summary"]["normal"]["auroc"]["letters"]["credibility"]["mean"] == good
    outlier = dknn.claims(res)[0]
    assert outlier.verdict == "inconclusive" and "1 unhealthy run(s) left out" in outlier.note
    sec = dknn.section(res, tmp_path)
    assert "**collapsed** (not studied)" in sec.markdown and "relu3 constant" in sec.markdown
    s = replace(transfer.settings(CONFIG), transfer_points=40, direction_points=40)
    res = {"settings": asdict(s), **transfer.run(s, context)}
    assert res["names"] == ["normal-0", "entangled-0", "entangled-1"]
    assert np.array(res["matrix"]).shape == (3, 3) and "normal->normal" not in res["summary"]
    assert res["directions"]["by_kind"]["normal"]["snnl"]["n"] == 1
    for claim in transfer.claims(res):
        assert claim.verdict == "inconclusive" and "1 unhealthy run(s) left out" in claim.note
    assert "**collapsed** (left out)" in transfer.section(res, tmp_path).markdown


# ------------------------------------------------------------ reruns: nothing lost (issue 18)


def _hashes(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_failed_rerun_leaves_a_finished_report_byte_identical(tiny, tmp_path, capsys):
    """Issue 18: `snnl reproduce --dataset mnist` without --data-dir into a finished folder
    exited 2 after overwriting report.md and results.json with a placeholder."""
    out = tmp_path / "rep"
    shutil.copytree(tiny[0], out)
    before = _hashes(out)
    assert main(["reproduce", "--dataset", "mnist", "--out", str(out)]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert _hashes(out) == before


def test_subset_rerun_keeps_the_other_experiment(tiny, tmp_path):
    """Issue 18: `--experiments transfer` into a folder holding dknn dropped dknn."""
    out = tmp_path / "rep"
    shutil.copytree(tiny[0], out)
    old = json.loads((out / "results.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reproduce(replace(CONFIG, experiments=["transfer"]), out)
    new = json.loads((out / "results.json").read_text())
    assert list(new["experiments"]) == ["dknn", "transfer"]
    assert new["experiments"]["dknn"] == old["experiments"]["dknn"]
    assert new["provenance"]["dknn"] == old["provenance"]["dknn"]
    assert new["provenance"]["transfer"]["config"]["experiments"] == ["transfer"]
    assert new["provenance"]["transfer"]["finished"] >= old["provenance"]["transfer"]["finished"]
    md = (out / "report.md").read_text()
    assert f"## {dknn.TITLE}" in md and f"## {transfer.TITLE}" in md
    for name in ("dknn", "transfer"):
        stamp = new["provenance"][name]["finished"].replace("T", " ").removesuffix("+00:00")
        assert f"| {name} | {stamp} | " in md


def test_report_from_results_json_alone(tiny, tmp_path, capsys):
    """Issue 17: copying results.json and figures/ into an empty folder and running
    `snnl report DIR` gives the same report.md, unhealthy runs listed (their health is
    recorded at reproduce time; the report used to read it from the run folders)."""
    out = tmp_path / "rep"
    shutil.copytree(tiny[0], out)
    bad = _record(tiny[2], "normal", 1)["run"]
    saved = json.loads((out / bad / "results.json").read_text())
    saved["health"] = {"verdict": "collapsed", "reasons": ["relu3 constant"]}
    (out / bad / "results.json").write_text(json.dumps(saved))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reproduce(CONFIG, out)  # the runs are reused: their (edited) health is recorded
    md = (out / "report.md").read_text()
    assert f"- `{Path(bad).name}`: collapsed: relu3 constant" in md
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(out / "results.json", copy)
    shutil.copytree(out / "figures", copy / "figures")
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.md").read_text() == md
    assert sorted(p.name for p in copy.iterdir()) == [
        "figures",
        "report.html",
        "report.md",
        "results.json",
    ]


def test_report_html_of_real_sections(tiny):
    """report.html of the real sections: lists are lists, italics only where meant."""
    from html.parser import HTMLParser

    class Ems(HTMLParser):
        def __init__(self):
            super().__init__()
            self.ems, self.tags, self.inside = [], [], None

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.inside = "" if tag == "em" else self.inside

        def handle_endtag(self, tag):
            if tag == "em":
                self.ems.append(self.inside)
                self.inside = None

        def handle_data(self, data):
            if self.inside is not None:
                self.inside += data

    out, _, res_dknn, res_transfer = tiny
    page = Ems()
    page.feed((out / "report.html").read_text())
    captions = {
        caption
        for module, res in ((dknn, res_dknn), (transfer, res_transfer))
        for _, caption in module.section(res, out / "figures").figures
    }
    forest = {e for e in page.ems if e.startswith("Every claim's effect (dot)")}
    assert len(forest) == 1  # the forest plot's caption, above the claims table
    rule = {"holds", "does not hold", "inconclusive", "fragile"}
    assert set(page.ems) == rule | captions | forest
    bullets = [line for line in (out / "report.md").read_text().splitlines() if line[:2] == "- "]
    assert page.tags.count("ul") >= 1 and page.tags.count("li") == len(bullets) >= 5
    assert page.tags.count("table") == page.tags.count("div") >= 3
