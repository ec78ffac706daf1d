"""Tests for snnl.dknn against a float64 brute-force reference and hand-computed cases."""

from __future__ import annotations

import copy
from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.neighbors import NearestNeighbors
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from snnl.dknn import DkNN, conformal_p_values, neighbour_counts, nonconformity
from snnl.models import MLP

# ----------------------------------------------------------------------------- reference


def _reference_layers(model: MLP, x: torch.Tensor) -> list[np.ndarray]:
    """relu1, relu2 and logits of an MLP, computed by hand in float64."""
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        h = m.flatten(m.normalize(x.double()))
        r1 = torch.clamp(m.fc1(h), min=0)
        r2 = torch.clamp(m.fc2(r1), min=0)
        out = m.logits(r2)
    return [r1.numpy(), r2.numpy(), out.numpy()]


def _reference_dknn(
    train: list[np.ndarray],
    y_train: np.ndarray,
    cal: list[np.ndarray],
    y_cal: np.ndarray,
    test: list[np.ndarray],
    k: int,
    num_classes: int,
    metric: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour counts (L, N, C) and p-values (N, C) with plain loops."""

    def prep(tr: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if metric == "cosine":
            mu = tr.mean(0)
            tr, q = tr - mu, q - mu
            tr = tr / np.linalg.norm(tr, axis=1, keepdims=True)
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
        return tr, q

    def counts(queries: list[np.ndarray]) -> np.ndarray:
        n = queries[0].shape[0]
        out = np.zeros((len(train), n, num_classes), dtype=np.int64)
        for layer, (tr, q) in enumerate(zip(train, queries, strict=True)):
            tr, q = prep(tr, q)
            nn_ = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(tr)
            _, idx = nn_.kneighbors(q)
            for i in range(n):
                for j in idx[i]:
                    out[layer, i, y_train[j]] += 1
        return out

    cal_counts = counts(cal)
    scores = []
    for i in range(len(y_cal)):
        scores.append(sum(k - cal_counts[layer, i, y_cal[i]] for layer in range(len(train))))
    test_counts = counts(test)
    p = np.zeros((test_counts.shape[1], num_classes))
    for i in range(test_counts.shape[1]):
        for j in range(num_classes):
            alpha = sum(k - test_counts[layer, i, j] for layer in range(len(train)))
            p[i, j] = sum(1 for a in scores if a >= alpha) / len(scores)
    return test_counts, p


def _blobs(n: int, seed: int, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, centers.shape[0], (n,), generator=g)
    x = centers[y] + 0.8 * torch.randn(n, centers.shape[1], generator=g)
    return x, y


@pytest.fixture(scope="module")
def blob_setup() -> dict[str, object]:
    torch.manual_seed(0)
    centers = 1.5 * torch.randn(3, 6)
    model = MLP((6,), 3, widths=(16, 12))
    xtr, ytr = _blobs(200, 1, centers)
    xcal, ycal = _blobs(60, 2, centers)
    xte, yte = _blobs(40, 3, centers)
    return {"model": model, "tr": (xtr, ytr), "cal": (xcal, ycal), "te": (xte, yte)}


LAYERS = ["relu1", "relu2", "logits"]

# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_dknn_matches_float64_bruteforce(blob_setup: dict, metric: str, backend: str) -> None:
    model = blob_setup["model"]
    (xtr, ytr), (xcal, ycal), (xte, _) = blob_setup["tr"], blob_setup["cal"], blob_setup["te"]
    k = 7
    ref_counts, ref_p = _reference_dknn(
        _reference_layers(model, xtr),
        ytr.numpy(),
        _reference_layers(model, xcal),
        ycal.numpy(),
        _reference_layers(model, xte),
        k,
        3,
        metric,
    )
    dknn = DkNN(model, LAYERS, k=k, metric=metric, backend=backend, batch_size=64)
    res = dknn.fit(xtr, ytr).calibrate(xcal, ycal).predict(xte)
    np.testing.assert_array_equal(res.layer_counts.numpy(), ref_counts)
    np.testing.assert_array_equal(res.p_values.numpy(), ref_p)
    # prediction, credibility and confidence from the reference p-values
    np.testing.assert_array_equal(res.labels.numpy(), ref_p.argmax(1))
    srt = np.sort(ref_p, axis=1)
    np.testing.assert_array_equal(res.credibility.numpy(), srt[:, -1])
    np.testing.assert_array_equal(res.confidence.numpy(), 1.0 - srt[:, -2])
    agree = ref_counts[:, np.arange(len(xte)), ref_p.argmax(1)]
    np.testing.assert_array_equal(res.neighbour_agreement.numpy(), agree)
    assert res.layers == tuple(LAYERS)


def test_conformal_p_values_hand_computed() -> None:
    a = torch.tensor([0, 0, 1, 3])
    alpha = torch.tensor([[0, 1], [2, 3], [4, -1]])
    # |{a >= 0}| = 4, |{a >= 1}| = 2, |{a >= 2}| = 1, |{a >= 3}| = 1, |{a >= 4}| = 0
    expected = [[1.0, 0.5], [0.25, 0.25], [0.0, 1.0]]
    assert conformal_p_values(alpha, a).tolist() == expected
    # unsorted input gives the same
    assert conformal_p_values(alpha, torch.tensor([3, 0, 1, 0])).tolist() == expected
    assert nonconformity(torch.tensor([[[2, 1]], [[0, 3]]]), k=3).tolist() == [[4, 2]]


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_dknn_hand_computed_keeps_zero_scores(backend: str) -> None:
    # 1-D identity "network"; training points 0,1,2 (class 0) and 10,11,12 (class 1), k=3.
    model = nn.Sequential(nn.Identity())
    xtr = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    ytr = torch.tensor([0, 0, 0, 1, 1, 1])
    # calibration: 1.0 (y=0) -> counts (3,0), alpha 0; 11.0 (y=1) -> alpha 0;
    # 6.2 (y=1): neighbours 10 (3.8), 2 (4.2), 11 (4.8) -> counts (1,2), alpha 1;
    # 1.0 (y=1) -> counts (3,0), alpha 3.  A = [0, 0, 1, 3].
    xcal = torch.tensor([[1.0], [11.0], [6.2], [1.0]])
    ycal = torch.tensor([0, 1, 1, 1])
    dknn = DkNN(model, ["0"], k=3, backend=backend).fit(xtr, ytr).calibrate(xcal, ycal)
    assert dknn.calibration_scores.tolist() == [0, 0, 1, 3]
    res = dknn.predict(torch.tensor([[1.5], [6.2]]))
    # z=1.5: counts (3,0), alpha = (0, 3) -> p = (4/4, 1/4)
    # z=6.2: counts (1,2), alpha = (2, 1) -> p = (1/4, 2/4)
    # (with zeros trimmed, A = [1, 3] would give p = (1, 1/2) and (1/2, 1))
    want = [[Fraction(1), Fraction(1, 4)], [Fraction(1, 4), Fraction(1, 2)]]
    assert res.p_values.tolist() == [[float(f) for f in row] for row in want]
    assert res.labels.tolist() == [0, 1]
    assert res.credibility.tolist() == [1.0, 0.5]
    assert res.confidence.tolist() == [0.75, 0.75]
    assert res.layer_counts.tolist() == [[[3, 0], [1, 2]]]
    assert res.neighbour_agreement.tolist() == [[3, 2]]


def test_faiss_and_torch_backends_agree() -> None:
    torch.manual_seed(5)
    model = MLP((20,), 4, widths=(64, 32))
    xtr, ytr = torch.randn(500, 20), torch.randint(0, 4, (500,))
    xcal, ycal = torch.randn(100, 20), torch.randint(0, 4, (100,))
    xte = torch.randn(80, 20)
    for metric in ("euclidean", "cosine"):
        results = []
        for backend in ("faiss", "torch"):
            d = DkNN(model, "hidden", k=15, metric=metric, backend=backend)
            results.append(d.fit(xtr, ytr).calibrate(xcal, ycal).predict(xte))
        torch.testing.assert_close(results[0].layer_counts, results[1].layer_counts)
        torch.testing.assert_close(results[0].p_values, results[1].p_values)


def test_torch_backend_blocks_match_single_block() -> None:
    from snnl.dknn import _TorchIndex

    g = torch.Generator().manual_seed(0)
    data, q = torch.randn(300, 5, generator=g), torch.randn(50, 5, generator=g)
    small = _TorchIndex(data, False, torch.float32, query_block=7, train_block=13)
    d = torch.cdist(q.double(), data.double())
    ref = d.topk(9, largest=False).indices
    got = small.search(q, 9)
    assert torch.equal(got.sort(1).values, ref.sort(1).values)


def test_dataloader_input_matches_tensors(blob_setup: dict) -> None:
    model = blob_setup["model"]
    (xtr, ytr), (xcal, ycal), (xte, yte) = blob_setup["tr"], blob_setup["cal"], blob_setup["te"]
    a = DkNN(model, LAYERS, k=5, backend="torch").fit(xtr, ytr).calibrate(xcal, ycal)
    b = DkNN(model, LAYERS, k=5, backend="torch")
    b.fit(DataLoader(TensorDataset(xtr, ytr), batch_size=33))
    b.calibrate(DataLoader(TensorDataset(xcal, ycal), batch_size=17))
    ra, rb = a.predict(xte), b.predict(DataLoader(TensorDataset(xte, yte), batch_size=9))
    torch.testing.assert_close(ra.p_values, rb.p_values)
    torch.testing.assert_close(ra.layer_counts, rb.layer_counts)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_float16_and_pca_reduce_memory(backend: str) -> None:
    torch.manual_seed(0)
    centers = 3.0 * torch.randn(4, 10)
    model = MLP((10,), 4, widths=(128, 64))
    xtr, ytr = _blobs(300, 1, centers)
    xcal, ycal = _blobs(80, 2, centers)
    xte, _ = _blobs(60, 3, centers)
    base = DkNN(model, "hidden", k=10, backend=backend).fit(xtr, ytr).calibrate(xcal, ycal)
    half = DkNN(model, "hidden", k=10, backend=backend, store_dtype=torch.float16)
    pca = DkNN(model, "hidden", k=10, backend=backend, pca_components=16)
    half.fit(xtr, ytr).calibrate(xcal, ycal)
    pca.fit(xtr, ytr).calibrate(xcal, ycal)
    mb, mh, mp = base.memory_report(), half.memory_report(), pca.memory_report()
    assert set(mb) == {"relu1", "relu2"}
    assert mb["relu1"] >= 300 * 128 * 4
    for name in mb:
        assert mh[name] < mb[name] and mh[name] <= 0.55 * mb[name]
    assert mp["relu1"] < mb["relu1"] and mp["relu1"] <= 300 * 17 * 4
    rb, rh, rp = base.predict(xte), half.predict(xte), pca.predict(xte)
    # well-separated blobs: the compressed indexes predict like the exact one
    assert (rb.labels == rh.labels).float().mean() >= 0.95
    assert (rb.labels == rp.labels).float().mean() >= 0.9
    assert torch.isfinite(rh.p_values).all() and torch.isfinite(rp.p_values).all()


def test_pca_projection_matches_sklearn() -> None:
    from sklearn.decomposition import PCA

    from snnl.dknn import _LayerTransform

    x = torch.randn(100, 12, generator=torch.Generator().manual_seed(0))
    t = _LayerTransform(x, 4, cosine=False)
    ref = PCA(n_components=4, random_state=0).fit(x.numpy()).transform(x.numpy())
    np.testing.assert_allclose(t(x).numpy(), ref, atol=1e-4)


def test_compare_agreement_fraction_by_hand(blob_setup: dict) -> None:
    model = blob_setup["model"]
    (xtr, ytr), (xcal, ycal), (xte, _) = blob_setup["tr"], blob_setup["cal"], blob_setup["te"]
    dknn = DkNN(model, LAYERS, k=9).fit(xtr, ytr).calibrate(xcal, ycal)
    cal_res = dknn.predict(xcal)  # agreement of calibration points with their prediction
    res = dknn.predict(xte)
    rep = dknn.compare_agreement(res)
    cal_agree = cal_res.neighbour_agreement.tolist()
    for layer in range(len(LAYERS)):
        for n in range(len(xte)):
            a = int(res.neighbour_agreement[layer, n])
            frac = sum(1 for c in cal_agree[layer] if c <= a) / len(xcal)
            assert rep.fraction_at_or_below[layer, n].item() == frac
        assert rep.calibration_mean[layer].item() == pytest.approx(np.mean(cal_agree[layer]))
    torch.testing.assert_close(rep.mean_fraction, rep.fraction_at_or_below.mean(0))


def test_errors(blob_setup: dict) -> None:
    model = blob_setup["model"]
    (xtr, ytr), (xcal, ycal) = blob_setup["tr"], blob_setup["cal"]
    with pytest.raises(ValueError, match="k must be"):
        DkNN(model, LAYERS, k=0)
    with pytest.raises(ValueError, match="unknown layer"):
        DkNN(model, ["relu9"])
    with pytest.raises(ValueError, match="unknown metric"):
        DkNN(model, LAYERS, metric="manhattan")
    with pytest.raises(ValueError, match="unknown backend"):
        DkNN(model, LAYERS, backend="annoy")
    d = DkNN(model, LAYERS, k=5)
    with pytest.raises(RuntimeError, match="not fitted"):
        d.predict(xcal)
    with pytest.raises(RuntimeError, match="not fitted"):
        d.calibrate(xcal, ycal)
    with pytest.raises(ValueError, match="only 4 points"):
        d.fit(xtr[:4], ytr[:4])
    with pytest.raises(ValueError, match="shape"):
        d.fit(xtr, ytr[:, None])
    with pytest.raises(ValueError, match="shape"):
        d.fit(xtr, ytr[:-1])
    with pytest.raises(TypeError, match="integer"):
        d.fit(xtr, ytr.float())
    bad = xtr.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        d.fit(bad, ytr)
    d.fit(xtr, ytr)
    with pytest.raises(RuntimeError, match="not calibrated"):
        d.predict(xcal)
    with pytest.raises(ValueError, match="outside"):
        d.calibrate(xcal, torch.full_like(ycal, 7))
    d.calibrate(xcal, ycal)
    with pytest.raises(ValueError, match="NaN"):
        d.predict(bad)


# ----------------------------------------------------------------------------- outliers


@pytest.fixture(scope="module")
def digits_model() -> dict[str, torch.Tensor | nn.Module]:
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, widths=(64, 64), mean=0.3, std=0.4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xtr, ytr = x[:1000], y[:1000]
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        idx = torch.randint(0, 1000, (128,), generator=g)
        loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return {"model": model, "x": x, "y": y}


def test_neighbour_agreement_lower_on_noise(digits_model: dict) -> None:
    model, x, y = digits_model["model"], digits_model["x"], digits_model["y"]
    with torch.no_grad():
        acc = (model(x[1300:]).argmax(1) == y[1300:]).float().mean().item()
    assert acc > 0.9  # the fixture's network did learn the digits
    dknn = DkNN(model, "hidden", k=25, metric="cosine")
    dknn.fit(x[:1000], y[:1000]).calibrate(x[1000:1300], y[1000:1300])
    clean = dknn.predict(x[1300:])
    noise = dknn.predict(torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(2)))
    rc, rn = dknn.compare_agreement(clean), dknn.compare_agreement(noise)
    assert (clean.labels == y[1300:]).float().mean() > 0.9
    for layer in range(2):
        assert rn.mean[layer] < rc.mean[layer]
    assert rn.mean_fraction.mean() < rc.mean_fraction.mean()
    assert noise.credibility.mean() < clean.credibility.mean()


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "dtype", [torch.int8, torch.int16, torch.int32, torch.uint8, torch.uint16, torch.uint32]
)
def test_labels_of_any_integer_dtype(blob_setup: dict, dtype: torch.dtype) -> None:
    """The same labels in another integer dtype give the very same DkNN."""
    model = blob_setup["model"]
    (xtr, ytr), (xcal, ycal), (xte, _) = blob_setup["tr"], blob_setup["cal"], blob_setup["te"]

    def run(to: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        d = DkNN(model, LAYERS, k=5, backend="torch")
        res = d.fit(xtr, ytr.to(to)).calibrate(xcal, ycal.to(to)).predict(xte)
        return res.p_values, d.calibration_scores

    p64, scores64 = run(torch.int64)
    p, scores = run(dtype)
    assert torch.equal(p, p64) and torch.equal(scores, scores64)
    batches = DataLoader(TensorDataset(xtr, ytr.to(torch.int32)), batch_size=64)
    d = DkNN(model, LAYERS, k=5, backend="torch").fit(batches).calibrate(xcal, ycal.to(dtype))
    assert torch.equal(d.predict(xte).p_values, p64)


def test_neighbour_counts_any_integer_dtype_and_checks() -> None:
    idx = torch.tensor([[0, 2, 2], [1, 1, 1]])
    for dtype in (torch.int16, torch.uint8, torch.int32):
        assert neighbour_counts(idx.to(dtype), 3).tolist() == [[1, 0, 2], [0, 3, 0]]
    with pytest.raises(TypeError, match="integer"):
        neighbour_counts(idx.float(), 3)
    with pytest.raises(ValueError, match="non-negative"):
        neighbour_counts(idx - 1, 3)
    with pytest.raises(TypeError, match="num_classes"):
        neighbour_counts(idx, 3.0)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"k": True}, TypeError, "k must be an integer"),
        ({"k": 2.5}, TypeError, "k must be an integer"),
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"pca_components": True}, TypeError, "pca_components"),
        ({"pca_components": 0}, ValueError, "pca_components must be >= 1"),
        ({"metric": "manhattan"}, ValueError, "expected one of: euclidean, cosine"),
        ({"backend": "annoy"}, ValueError, "expected one of: faiss, torch"),
    ],
)
def test_settings_are_checked(blob_setup: dict, kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        DkNN(blob_setup["model"], LAYERS, **kwargs)


def test_label_and_num_classes_checks(blob_setup: dict) -> None:
    model = blob_setup["model"]
    xtr, ytr = blob_setup["tr"]
    d = DkNN(model, LAYERS, k=5, backend="torch")
    with pytest.raises(TypeError, match="integer"):
        d.fit(xtr, ytr.bool())
    with pytest.raises(ValueError, match="non-negative"):
        d.fit(xtr, ytr - 1)
    with pytest.raises(TypeError, match="num_classes"):
        d.fit(xtr, ytr, num_classes=3.5)
    with pytest.raises(ValueError, match="num_classes=2 but training labels go up to 2"):
        d.fit(xtr, ytr, num_classes=2)
    assert d.fit(xtr, ytr, num_classes=5).num_classes == 5
