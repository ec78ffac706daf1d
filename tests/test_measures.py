"""Tests for snnl.measures against independent references: numpy loops, scikit-learn, hands."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score, silhouette_score

from reference import snnl_reference_mean
from snnl.measures import (
    SELECTIVITY_EPS,
    accuracy,
    auroc,
    class_clustering,
    class_selectivity,
    dimensionality,
    layer_selectivity,
    layer_snnl_profile,
    linear_dimensionality,
    participation_ratio,
    reliability,
    softmax_confidence,
)
from snnl.models import MLP

# tiny problems: one torch thread (see conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- references


def _mlp_forward_np(model: MLP, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Hand-run forward of an MLP in float64 numpy from its weights."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    h = x.double().numpy().reshape(len(x), -1)
    h = (h - p["normalize.mean"]) / p["normalize.std"]
    out = {}
    for i in (1, 2):
        h = np.maximum(h @ p[f"fc{i}.weight"].T + p[f"fc{i}.bias"], 0.0)
        out[f"relu{i}"] = h
    out["logits"] = h @ p["logits.weight"].T + p["logits.bias"]
    return out


def _selectivity_np(acts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Plain loop: per unit, class means over the present classes, then the index."""
    a = np.asarray(acts, dtype=np.float64)
    if a.ndim > 2:
        a = a.reshape(a.shape[0], a.shape[1], -1).mean(2)
    classes = sorted(set(labels.tolist()))
    out = np.empty(a.shape[1])
    for u in range(a.shape[1]):
        means = [a[labels == c, u].mean() for c in classes]
        top = int(np.argmax(means))
        mu_max = means[top]
        mu_rest = sum(m for i, m in enumerate(means) if i != top) / (len(means) - 1)
        out[u] = (mu_max - mu_rest) / (mu_max + mu_rest + 1e-7)
    return out


def _model_and_data(n: int = 30, seed: int = 0) -> tuple[MLP, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = MLP((1, 4, 4), 3, widths=(12, 7), mean=0.3, std=0.5)
    g = torch.Generator().manual_seed(seed)
    return model, torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % 3


# ----------------------------------------------------------------------------- SNNL profile


def test_layer_snnl_profile_matches_loop_reference_at_and_around_its_temperature() -> None:
    model, x, y = _model_and_data(24)
    snnl, temps = layer_snnl_profile(model, x, y, "hidden")
    assert list(snnl) == ["relu1", "relu2", "logits"] == list(temps)
    acts = _mlp_forward_np(model, x)
    for name, value in snnl.items():
        t = temps[name]
        # the value is the loop reference's SNNL at the returned temperature ...
        assert value == pytest.approx(snnl_reference_mean(acts[name], y.numpy(), t), rel=1e-5)
        # ... and no temperature on a grid around it does better
        for factor in (0.5, 0.8, 0.95, 1.05, 1.25, 2.0):
            ref = snnl_reference_mean(acts[name], y.numpy(), t * factor)
            assert ref >= value * (1 - 1e-5)  # float32 activations: 1e-5 relative


def test_layer_snnl_profile_named_layers_cosine_and_mode_restored() -> None:
    model, x, y = _model_and_data(18)
    model.train()
    snnl, temps = layer_snnl_profile(model, x, y, ["relu2", "logits"], distance="cosine")
    assert list(snnl) == ["relu2", "logits"] and model.training
    acts = _mlp_forward_np(model, x)
    ref = snnl_reference_mean(acts["relu2"], y.numpy(), temps["relu2"], "cosine")
    assert snnl["relu2"] == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match="expected one of"):
        layer_snnl_profile(model, x, y, "hidden", distance="l1")


# ----------------------------------------------------------------------------- predictions


def test_accuracy_and_softmax_confidence_match_numpy() -> None:
    model, x, y = _model_and_data(50, seed=1)
    y = torch.randint(0, 3, (50,), generator=torch.Generator().manual_seed(3))
    logits = _mlp_forward_np(model, x)["logits"]
    pred = logits.argmax(1)
    assert accuracy(model, x, y, batch_size=7) == pytest.approx(np.mean(pred == y.numpy()))
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    conf, got_pred = softmax_confidence(model, x, batch_size=16)
    np.testing.assert_allclose(conf, p.max(1), rtol=1e-6)
    np.testing.assert_array_equal(got_pred, pred)
    with pytest.raises(TypeError, match="integer tensor"):
        accuracy(model, x, y.float())


def test_accuracy_in_eval_mode_and_flags_restored() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.9), torch.nn.Linear(4, 2))
    x = torch.rand(40, 4)
    y = net[2](x).argmax(1).detach()  # eval-mode predictions: dropout must be off
    net.train()
    assert accuracy(net, x, y) == 1.0
    assert net.training and net[1].training


def test_reliability_matches_plain_loop() -> None:
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 300)
    conf[:5] = [0.0, 1.0, 0.5, 0.1, 0.7]  # bin edges
    correct = rng.uniform(0, 1, 300) < conf
    bins = 7
    out = reliability(conf, correct, bins=bins)
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i in range(300) if lo <= conf[i] < hi or (b == bins - 1 and conf[i] == 1)]
        assert out["count"][b] == len(members)
        assert out["correct"][b] == sum(bool(correct[i]) for i in members)
        if members:
            acc = sum(bool(correct[i]) for i in members) / len(members)
            mean_conf = sum(conf[i] for i in members) / len(members)
            ece += len(members) / 300 * abs(acc - mean_conf)
    assert out["ece"] == pytest.approx(ece, rel=1e-12)
    assert len(out["bin_edges"]) == bins + 1
    with pytest.raises(ValueError, match="equal length"):
        reliability(conf, correct[:-1])


def test_auroc_is_the_pair_probability() -> None:
    rng = np.random.default_rng(1)
    clean = rng.integers(0, 10, 40) / 10  # ties on purpose
    odd = rng.integers(0, 8, 30) / 10
    pairs = [(1.0 if o < c else 0.5 if o == c else 0.0) for c in clean for o in odd]
    assert auroc(clean, odd) == pytest.approx(sum(pairs) / len(pairs), rel=1e-12)
    assert auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    with pytest.raises(ValueError, match="at least one"):
        auroc(np.array([]), odd)


def test_auroc_ranks_the_scores_themselves() -> None:
    """Issue 18: ranking 1 - s rounded 1e-17 away (0.5 instead of 1)."""
    assert auroc(np.array([1e-17]), np.array([0.0])) == 1.0
    assert auroc(np.array([0.0]), np.array([1e-17])) == 0.0
    assert auroc(np.array([1.0 + 2**-52]), np.array([1.0])) == 1.0
    assert auroc(np.array([5e-300, 7e-300]), np.array([1e-300, 0.0])) == 1.0
    g = np.random.default_rng(0)
    for scale in (1e-12, 1.0, 1e12):
        clean, odd = g.random(200) * scale, g.random(150) * scale * 0.8
        labels = np.r_[np.zeros(200), np.ones(150)]
        expected = roc_auc_score(labels, -np.r_[clean, odd])
        assert auroc(clean, odd) == pytest.approx(expected, rel=1e-15)


def test_class_clustering_matches_loop_silhouette_and_snnl() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(21) % 3
    f = torch.randn(21, 2, 2, generator=g) + y[:, None, None]
    out = class_clustering(f, y)
    assert set(out) == {"silhouette", "snnl", "temperature"}
    x = f.double().reshape(21, -1).numpy()
    lab = y.numpy()
    s = []
    for i in range(21):
        d = np.sqrt(((x - x[i]) ** 2).sum(1))
        a = d[(lab == lab[i]) & (np.arange(21) != i)].mean()
        b = min(d[lab == c].mean() for c in set(lab.tolist()) if c != lab[i])
        s.append((b - a) / max(a, b))
    assert out["silhouette"] == pytest.approx(np.mean(s), rel=1e-10)
    assert out["silhouette"] == pytest.approx(silhouette_score(x, lab), rel=1e-10)
    ref = snnl_reference_mean(x, lab, out["temperature"])
    assert out["snnl"] == pytest.approx(ref, rel=1e-5)


# ----------------------------------------------------------------------------- selectivity


def test_class_selectivity_matches_numpy_reference_dense_and_conv() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (60,), generator=g)
    dense = torch.relu(torch.randn(60, 9, generator=g))
    np.testing.assert_allclose(
        class_selectivity(dense, y).numpy(), _selectivity_np(dense.numpy(), y.numpy()), rtol=1e-12
    )
    conv = torch.relu(torch.randn(60, 4, 3, 5, generator=g))
    got = class_selectivity(conv, y, num_classes=5)
    assert got.shape == (4,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _selectivity_np(conv.numpy(), y.numpy()), rtol=1e-12)


def test_class_selectivity_hand_cases() -> None:
    y = torch.arange(12) % 4
    one_hot = torch.nn.functional.one_hot(y, 4).double() * 3.0  # unit c fires for class c only
    si = class_selectivity(one_hot, y)
    # mu_max = 3, mu_-max = 0: SI = 3 / (3 + eps)
    torch.testing.assert_close(
        si, torch.full((4,), 3.0 / (3.0 + SELECTIVITY_EPS), dtype=torch.float64)
    )
    assert float((1 - si).max()) < 1e-7
    equal = torch.full((12, 3), 2.5)
    assert class_selectivity(equal, y).tolist() == [0.0, 0.0, 0.0]
    dead = torch.zeros(12, 2)
    assert class_selectivity(dead, y).tolist() == [0.0, 0.0]
    # class means 4, 2, 0, 0 -> mu_max 4, mu_-max 2/3: SI = (10/3) / (14/3 + eps)
    unit = torch.tensor([4.0, 2.0, 0.0, 0.0])[y][:, None]
    assert class_selectivity(unit, y).item() == pytest.approx((10 / 3) / (14 / 3 + 1e-7), rel=1e-14)


def test_class_selectivity_only_present_classes_count() -> None:
    y = torch.tensor([0, 0, 3, 3, 7])  # classes 1, 2, 4, 5, 6 absent
    a = torch.tensor([[1.0], [3.0], [1.0], [1.0], [0.0]])
    # present class means 2, 1, 0: (2 - 0.5) / (2.5 + eps)
    assert class_selectivity(a, y, num_classes=8).item() == pytest.approx(1.5 / 2.5, rel=1e-6)
    assert class_selectivity(a, y).item() == class_selectivity(a, y, num_classes=10).item()
    with pytest.raises(ValueError, match="num_classes"):
        class_selectivity(a, y, num_classes=5)
    with pytest.raises(ValueError, match="non-negative"):
        class_selectivity(a, torch.tensor([0, 0, -1, 3, 3]), num_classes=4)
    with pytest.raises(ValueError, match="two classes"):
        class_selectivity(a, torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="shape"):
        class_selectivity(a, y[:4])
    with pytest.raises(TypeError, match="floating"):
        class_selectivity(torch.ones(5, 2, dtype=torch.int64), y)
    with pytest.raises(ValueError, match="dimension"):
        class_selectivity(torch.ones(5), y)


def test_class_selectivity_compiles_with_num_classes() -> None:
    """Under torch.compile(fullgraph=True) with num_classes (static class slots, absent
    classes left out) it equals the numpy reference, gradient included (finite)."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(3)
    y = torch.tensor([0, 0, 3, 3, 7, 7, 7, 0])  # classes 1, 2, 4, 5, 6 absent
    a = torch.relu(torch.randn(8, 5, 2, 2, generator=g, dtype=torch.float64))
    compiled = torch.compile(lambda u, v: class_selectivity(u, v, num_classes=8), fullgraph=True)
    got = compiled(a, y)
    np.testing.assert_allclose(got.numpy(), _selectivity_np(a.numpy(), y.numpy()), rtol=1e-12)
    leaf = a.clone().requires_grad_()
    compiled(leaf, y).sum().backward()
    eager = a.clone().requires_grad_()
    class_selectivity(eager, y).sum().backward()
    torch.testing.assert_close(leaf.grad, eager.grad, rtol=1e-12, atol=1e-15)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="needs num_classes"):
        torch.compile(lambda u, v: class_selectivity(u, v), fullgraph=True)(a, y)


def test_class_selectivity_negative_activations_warn_and_are_unbounded() -> None:
    y = torch.tensor([0, 0, 1, 1])
    a = torch.tensor([[1.0], [1.0], [-0.9], [-0.9]], dtype=torch.float64)
    with pytest.warns(UserWarning, match="class mean activation is negative"):
        si = class_selectivity(a, y)
    assert si.item() == pytest.approx(1.9 / (0.1 + 1e-7), rel=1e-9) and si.item() > 1
    mixed = torch.tensor([[1.0], [-0.5], [0.2], [0.0]], dtype=torch.float64)  # means 0.25, 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        class_selectivity(a.abs(), y)  # non-negative: no warning
        assert class_selectivity(mixed, y).item() == pytest.approx(0.15 / (0.35 + 1e-7))


def test_class_selectivity_gradient_matches_finite_differences() -> None:
    g = torch.Generator().manual_seed(2)
    y = torch.arange(15) % 3
    a = (torch.rand(15, 4, 2, 2, generator=g, dtype=torch.float64) + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: class_selectivity(t, y), (a,))
    # float32 input: the gradient reaches it in its own dtype
    b = torch.rand(15, 3, generator=g).requires_grad_(True)
    class_selectivity(b, y).sum().backward()
    assert b.grad is not None and b.grad.dtype == torch.float32 and bool(b.grad.abs().sum() > 0)


def test_layer_selectivity_matches_reference_on_hand_forward() -> None:
    model, x, y = _model_and_data(40, seed=4)
    model.train()
    si = layer_selectivity(model, x, y, batch_size=9)
    assert model.training
    acts = _mlp_forward_np(model, x)
    for name in ("relu1", "relu2"):
        np.testing.assert_allclose(
            si[name].numpy(), _selectivity_np(acts[name], y.numpy()), rtol=1e-6, atol=1e-9
        )


def test_layer_selectivity_averages_conv_maps_over_space() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2)
    )
    x = torch.rand(20, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(20) % 4
    got = layer_selectivity(net, x, y, ["1"], batch_size=6)["1"]
    maps = torch.nn.functional.conv2d(x.double(), net[0].weight.double(), net[0].bias.double())
    ref = _selectivity_np(np.maximum(maps.detach().numpy(), 0.0), y.numpy())
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- dimensionality


def _sklearn_spectrum(x: np.ndarray) -> np.ndarray:
    return PCA(svd_solver="full").fit(x.reshape(len(x), -1)).explained_variance_


def _k_from_spectrum(ev: np.ndarray, share: float) -> int:
    cum = np.cumsum(ev) / ev.sum()
    return int(np.argmax(cum >= share)) + 1


def _datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    scales = np.geomspace(10, 0.01, 12)
    low_rank = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 40)) + 5.0
    return {
        "random N>D": rng.normal(size=(400, 12)) * scales,
        "random N<D": rng.normal(size=(25, 80)) * np.geomspace(5, 0.1, 80),
        "low-rank N>D": low_rank,
        "low-rank N<D": (rng.normal(size=(30, 3)) @ rng.normal(size=(3, 200))).reshape(
            30, 2, 10, 10
        ),
    }


@pytest.mark.parametrize("name", list(_datasets()))
def test_dimensionality_and_participation_ratio_match_sklearn_pca(name: str) -> None:
    x = _datasets()[name]
    ev = _sklearn_spectrum(x)
    xt = torch.from_numpy(x).float() if "random" in name else torch.from_numpy(x)
    if xt.dtype == torch.float32:  # compare against the spectrum of the float32 values
        ev = _sklearn_spectrum(xt.double().numpy())
    for share in (0.5, 0.8, 0.9, 0.95, 0.99):
        assert dimensionality(xt, share) == _k_from_spectrum(ev, share), share
    pr = ev.sum() ** 2 / (ev**2).sum()
    assert participation_ratio(xt) == pytest.approx(pr, rel=1e-9)
    k, ratio = linear_dimensionality(xt, 0.9)
    assert k == _k_from_spectrum(ev, 0.9) and ratio == pytest.approx(pr, rel=1e-9)
    if "low-rank" in name:
        rank = 4 if "N>D" in name else 3
        assert dimensionality(xt, 0.999999) <= rank
        assert 1.0 <= participation_ratio(xt) <= rank


def test_dimensionality_hand_cases_and_errors() -> None:
    # variance 9 along e1, 1 along e2: 90% needs one component, more needs two
    x = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert dimensionality(x, 0.9) == 1 and dimensionality(x, 0.9001) == 2
    assert dimensionality(x, 1.0) == 2
    assert participation_ratio(x) == pytest.approx(100 / 82, rel=1e-14)
    assert dimensionality(torch.ones(6, 4)) == 0 and participation_ratio(torch.ones(6, 4)) == 0.0
    with pytest.raises(ValueError, match="variance"):
        dimensionality(x, 0.0)
    with pytest.raises(ValueError, match="variance"):
        dimensionality(x, 1.5)
    with pytest.raises(ValueError, match="at least 2 points"):
        dimensionality(torch.ones(1, 4))
    with pytest.raises(TypeError, match="floating"):
        participation_ratio(torch.ones(4, 4, dtype=torch.int64))


def test_measures_do_not_change_the_model() -> None:
    model, x, y = _model_and_data(20)
    before = copy.deepcopy(model.state_dict())
    layer_snnl_profile(model, x, y, "hidden")
    layer_selectivity(model, x, y)
    accuracy(model, x, y)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
