"""Experiments "dknn" and "transfer" on tiny digits runs, against independent recomputation."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors

from reference import snnl_reference_mean
from snnl import _io
from snnl.experiments import ReproduceConfig, dknn, entangle, transfer
from snnl.report import write_report
from snnl.taps import capture
from snnl.train import load_run

CONFIG = ReproduceConfig(dataset="digits", seeds=1, epochs=1, limit_train=200, limit_test=120)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a busy 2-core machine torch's spinning OpenMP pool made a
    1-epoch tiny training take 80 s instead of 4 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Both experiments run once on tiny settings (trains 2 seeds x 2 kinds, 1 epoch)."""
    out = tmp_path_factory.mktemp("rep")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = entangle.load_data(CONFIG)
        res_dknn = dknn.run(CONFIG, out)
        res_transfer = transfer.run(CONFIG, out)
    for res in (res_dknn, res_transfer):  # JSON-serialisable without NaN / inf
        json.dumps(res, allow_nan=False)
    return out, dataset, res_dknn, res_transfer


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


# --------------------------------------------------------------------------- helpers


def test_split_and_k():
    cal, ev = dknn.split_calibration(120, 0.3)
    assert len(cal) == 36 and len(ev) == 84
    assert sorted(cal.tolist() + ev.tolist()) == list(range(120))
    assert torch.equal(cal, dknn.split_calibration(120, 0.3)[0])  # seeded
    assert dknn.choose_k(200) == 10 and dknn.choose_k(10**5) == 75
    with pytest.raises(ValueError, match="at least 2"):
        dknn.split_calibration(1, 0.3)
    with pytest.raises(ValueError, match="fraction"):
        dknn.split_calibration(10, 1.0)


def test_reliability_against_a_loop():
    rng = np.random.default_rng(0)
    conf = rng.uniform(size=300)
    conf[:5] = [0.0, 1.0, 0.1, 0.2999999, 0.3]
    ok = rng.uniform(size=300) < conf
    r = dknn.reliability(conf, ok, bins=10)
    count, correct, csum = [0] * 10, [0] * 10, [0.0] * 10
    for c, k in zip(conf, ok, strict=True):
        b = min(int(math.floor(c * 10)), 9)
        count[b] += 1
        correct[b] += int(k)
        csum[b] += c
    assert r["count"] == count and r["correct"] == correct
    assert r["confidence_sum"] == pytest.approx(csum, abs=1e-5)
    ece = sum(abs(correct[b] - csum[b]) for b in range(10) if count[b]) / 300
    assert r["ece"] == pytest.approx(ece)
    with pytest.raises(ValueError, match="equal length"):
        dknn.reliability(conf, ok[:10])


def test_auroc_against_pair_count():
    rng = np.random.default_rng(1)
    clean = rng.integers(0, 5, 30) / 4
    odd = rng.integers(0, 5, 20) / 4  # many ties
    assert dknn.auroc(clean, odd) == pytest.approx(_auroc_pairs(clean, odd))


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
    assert torch.equal(d["sign"], g.sign())
    assert torch.allclose(d["normalised"], g / g.norm(dim=1, keepdim=True))


def test_clustering_against_references():
    rng = np.random.default_rng(2)
    y = torch.arange(30) % 3
    f = torch.from_numpy(rng.normal(size=(30, 4))) + y[:, None].double()
    c = transfer.clustering(f, y)
    # silhouette by a plain loop
    fn, yn = f.numpy(), y.numpy()
    dist = np.sqrt(((fn[:, None] - fn[None]) ** 2).sum(-1))
    sil = []
    for i in range(30):
        same = (yn == yn[i]) & (np.arange(30) != i)
        a = dist[i, same].mean()
        b = min(dist[i, yn == k].mean() for k in set(yn.tolist()) - {yn[i]})
        sil.append((b - a) / max(a, b))
    assert c["silhouette"] == pytest.approx(np.mean(sil))
    # SNNL value at the reported temperature, and not above nearby temperatures
    assert c["snnl"] == pytest.approx(snnl_reference_mean(fn, yn, c["temperature"]), rel=1e-6)
    for t in (c["temperature"] / 3, c["temperature"] * 3):
        assert c["snnl"] <= snnl_reference_mean(fn, yn, t) + 1e-9


def test_transfer_summary_hand_case():
    m = np.arange(16, dtype=float).reshape(4, 4) / 16
    names = ["normal-0", "normal-1", "entangled-0", "entangled-1"]
    s = transfer.transfer_summary(m, names)
    assert s["normal->normal"] == pytest.approx((1 + 4) / 2 / 16)
    assert s["entangled->entangled"] == pytest.approx((11 + 14) / 2 / 16)
    assert s["normal->entangled"] == pytest.approx((2 + 3 + 6 + 7) / 4 / 16)
    assert s["entangled->normal"] == pytest.approx((8 + 9 + 12 + 13) / 4 / 16)
    assert s["white-box normal"] == pytest.approx((0 + 5) / 2 / 16)
    assert s["white-box entangled"] == pytest.approx((10 + 15) / 2 / 16)


# --------------------------------------------------------------------------- dknn


def test_dknn_structure(tiny):
    _, dataset, res, _ = tiny
    st = res["settings"]
    assert (st["n_calibration"], st["n_eval"], st["k"]) == (36, 84, 10)
    assert res["input_sets"] == ["clean", "fgsm", "letters", "rotated"]
    assert "notmnist" in res["skipped_sets"]
    for kind in ("normal", "entangled"):
        m = res["models"][kind]
        assert m["layers"] == ["relu1", "relu2", "relu3", "logits"]
        assert set(m["auroc"]) == {"fgsm", "letters", "rotated"}
        for name in res["input_sets"]:
            e = m["sets"][name]
            assert e["n"] == 84 and sum(e["credibility_hist"]) == 84
            assert 0.0 <= e["credibility_mean"] <= 1.0 and 0.0 < e["softmax_mean"] <= 1.0
            labelled = name in ("clean", "fgsm")
            assert (e["dknn_accuracy"] is not None) == labelled
            q = e["credibility_quantiles"]
            assert q == sorted(q)
            per_layer = e["neighbours_of_predicted_class"]
            assert all(0 <= v <= st["k"] for v in per_layer.values())
        for score in ("credibility", "softmax"):
            r = m["reliability"][score]
            assert sum(r["count"]) == 2 * 84  # clean + fgsm pooled
            assert 0.0 <= r["ece"] <= 1.0


def test_dknn_auroc_and_means_from_scores(tiny):
    _, _, res, _ = tiny
    for kind in ("normal", "entangled"):
        m = res["models"][kind]
        clean = m["sets"]["clean"]["score_sample"]  # 84 <= SAMPLE_SIZE: all points
        for name in ("fgsm", "letters", "rotated"):
            odd = m["sets"][name]["score_sample"]
            for score in ("credibility", "softmax", "agreement"):
                assert len(odd[score]) == 84
                want = _auroc_pairs(clean[score], odd[score])
                assert m["auroc"][name][score] == pytest.approx(want, abs=1e-12)
                assert m["sets"][name][f"{score}_mean"] == pytest.approx(np.mean(odd[score]))


def test_dknn_softmax_and_fgsm_by_hand(tiny):
    out, dataset, res, _ = tiny
    _, ev = dknn.split_calibration(len(dataset.y_test), dknn.CALIBRATION_FRACTION)
    x, y = dataset.x_test[ev], dataset.y_test[ev]
    for kind in ("normal", "entangled"):
        m = res["models"][kind]
        model = _model(out, m["run"], dataset)
        with torch.no_grad():
            p = torch.softmax(model(x).double(), dim=1)
        assert m["sets"]["clean"]["softmax_mean"] == pytest.approx(p.max(1).values.mean().item())
        acc = (p.argmax(1) == y).double().mean().item()
        assert m["sets"]["clean"]["softmax_accuracy"] == pytest.approx(acc)
        x_adv = _fgsm_by_hand(model, x, y, 0.1)
        with torch.no_grad():
            acc_adv = (model(x_adv).argmax(1) == y).double().mean().item()
        assert m["sets"]["fgsm"]["softmax_accuracy"] == pytest.approx(acc_adv, abs=1.5 / 84)


def test_dknn_credibility_against_sklearn_neighbours(tiny):
    """Plain DkNN: sklearn exact neighbours on centred, L2-normalised layers, numpy p-values."""
    out, dataset, res, _ = tiny
    cal, ev = dknn.split_calibration(len(dataset.y_test), dknn.CALIBRATION_FRACTION)
    m = res["models"]["normal"]
    model = _model(out, m["run"], dataset)
    k, layers = res["settings"]["k"], m["layers"]
    ytr = dataset.y_train.numpy()

    def counts(x):
        reps_tr = capture(model, dataset.x_train, layers)
        reps = capture(model, x, layers)
        total = np.zeros((len(x), 10))
        for name in layers:
            tr = reps_tr[name].double().numpy()
            mu = tr.mean(0)
            tr = (tr - mu) / np.linalg.norm(tr - mu, axis=1, keepdims=True)
            q = reps[name].double().numpy() - mu
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            idx = NearestNeighbors(n_neighbors=k).fit(tr).kneighbors(q)[1]
            for i, row in enumerate(idx):
                for j in row:
                    total[i, ytr[j]] += 1
        return len(layers) * k - total  # nonconformity alpha (N, C)

    a_cal = counts(dataset.x_test[cal])
    scores = a_cal[np.arange(len(cal)), dataset.y_test[cal].numpy()]
    a_ev = counts(dataset.x_test[ev])
    p = (scores[None, None, :] >= a_ev[:, :, None]).mean(-1)
    cred = p.max(1)
    sample = np.array(m["sets"]["clean"]["score_sample"]["credibility"])
    # exact ties between float32/float64 neighbour distances may differ for a point or two
    assert np.mean(np.abs(sample - cred) < 1e-6) > 0.95
    assert m["sets"]["clean"]["credibility_mean"] == pytest.approx(cred.mean(), abs=0.02)
    pred = p.argmax(1)
    acc = (pred == dataset.y_test[ev].numpy()).mean()
    assert m["sets"]["clean"]["dknn_accuracy"] == pytest.approx(acc, abs=2.5 / 84)


def test_dknn_section(tiny, tmp_path):
    _, _, res, _ = tiny
    sec = dknn.section(res, tmp_path)
    for fname, _ in sec.figures:
        assert (tmp_path / fname).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("clean", "fgsm", "letters", "rotated", "notmnist"):
        assert f"`{name}`" in sec.markdown
    assert "`notmnist` not used" in sec.markdown
    a = res["models"]["entangled"]["auroc"]["letters"]["credibility"]
    assert f"| entangled | letters | {a:.3f} |" in sec.markdown


# --------------------------------------------------------------------------- transfer


def test_transfer_structure_and_diagonal(tiny):
    out, dataset, _, res = tiny
    names = ["normal-0", "normal-1", "entangled-0", "entangled-1"]  # seeds=1 -> 2 per kind
    assert res["names"] == names and res["settings"]["n_points"] == 120
    matrix = np.array(res["matrix"])
    assert matrix.shape == (4, 4)
    x, y = dataset.x_test, dataset.y_test
    models = {n: _model(out, res["runs"][n], dataset) for n in names}
    x_adv = {n: _fgsm_by_hand(m, x, y, 0.1) for n, m in models.items()}
    for t, (name, model) in enumerate(models.items()):
        with torch.no_grad():
            clean_err = (model(x).argmax(1) != y).double().mean().item()
            white_box = (model(x_adv[name]).argmax(1) != y).double().mean().item()
            from_first = (model(x_adv["normal-0"]).argmax(1) != y).double().mean().item()
        assert res["clean_error"][t] == pytest.approx(clean_err)
        assert matrix[t, t] == pytest.approx(white_box, abs=1.5 / 120)
        assert matrix[0, t] == pytest.approx(from_first, abs=1.5 / 120)
    s = res["summary"]
    assert s["normal->entangled"] == pytest.approx(matrix[:2, 2:].mean())
    assert s["entangled->normal"] == pytest.approx(matrix[2:, :2].mean())


def test_transfer_directions(tiny):
    out, dataset, _, res = tiny
    d = res["directions"]
    assert len(d["labels"]) == 120 and set(d["projection"]) == {"normal", "entangled"}
    assert np.array(d["projection"]["normal"]).shape == (120, 2)
    # the clustering numbers of normal-0, recomputed from directions taken by hand
    model = _model(out, res["runs"]["normal-0"], dataset)
    x, y = dataset.x_test, dataset.y_test
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    sign = g.flatten(1).sign().double()
    from sklearn.metrics import silhouette_score

    want = silhouette_score(sign.numpy(), y.numpy())
    assert d["per_model"]["normal-0"]["sign"]["silhouette"] == pytest.approx(want, abs=1e-6)
    by = d["by_kind"]["entangled"]["sign"]["snnl"]
    vals = [d["per_model"][n]["sign"]["snnl"] for n in ("entangled-0", "entangled-1")]
    assert by["mean"] == pytest.approx(np.mean(vals))


def test_transfer_section(tiny, tmp_path):
    _, _, _, res = tiny
    sec = transfer.section(res, tmp_path)
    for fname, _ in sec.figures:
        assert (tmp_path / fname).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in res["names"]:
        assert f"| {name} |" in sec.markdown
    assert "normal -> entangled" in sec.markdown and "t-SNE" in sec.markdown


def test_report_with_all_three_experiments(tiny):
    out, _, res_dknn, res_transfer = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res_ent = entangle.run(CONFIG, out)  # reuses the trained seed-0 runs
    _io.write_json(
        out / "results.json",
        {
            "snnl_version": "test",
            "config": asdict(CONFIG),
            "complete": True,
            "experiments": {"entangle": res_ent, "dknn": res_dknn, "transfer": res_transfer},
        },
    )
    html = write_report(out).read_text()
    assert html.count("data:image/png;base64,") == 6
    for title in (entangle.TITLE, dknn.TITLE, transfer.TITLE):
        assert title in html
    md = (out / "report.md").read_text()
    for fname in ("dknn_reliability.png", "transfer_matrix.png", "transfer_directions.png"):
        assert f"figures/{fname}" in md


def test_outlier_sets_with_and_without_notmnist(tmp_path):
    from PIL import Image

    dataset = entangle.load_data(CONFIG)
    rng = np.random.default_rng(0)
    for letter in "ABCDEFGHIJ":
        (tmp_path / letter).mkdir()
        for i in range(3):
            img = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / letter / f"{i}.png")
    with_dir = ReproduceConfig(dataset="digits", data_dir=str(tmp_path))
    sets, skipped = dknn._input_sets(with_dir, dataset, 20)
    assert list(sets) == ["letters", "rotated", "notmnist"] and not skipped
    assert all(tuple(x.shape) == (20, 1, 8, 8) for x in sets.values())
    sets, skipped = dknn._input_sets(with_dir, dataset, 40)  # only 30 images on disk
    assert "notmnist" not in sets and "n=40" in skipped["notmnist"]
    empty = ReproduceConfig(dataset="digits", data_dir=str(tmp_path / "A"))
    sets, skipped = dknn._input_sets(empty, dataset, 20)
    assert "notmnist" not in sets and "missing letter folder" in skipped["notmnist"]
