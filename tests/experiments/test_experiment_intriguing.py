"""Experiment "intriguing" (Szegedy et al. 2013 on mnist5k) against independent references."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from torch import nn

from snnl import _io
from snnl.attacks import lbfgs_search
from snnl.data import load_dataset
from snnl.experiments import Context, ReproduceConfig, intriguing, szegedy
from snnl.experiments.zoo import Zoo
from snnl.models import MLP, AutoencoderClassifier
from snnl.runs import RunMismatchError

# tiny problems: one torch thread (see conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- measures


def test_distortion_hand_cases():
    x = torch.zeros(3, 1, 28, 28)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] = 1.0  # one pixel changed by 1: sqrt(1 / 784) = 1 / 28
    x_adv[1, 0, 3, 4], x_adv[1, 0, 5, 6] = 0.3, 0.4  # sqrt((0.09 + 0.16) / 784) = 0.5 / 28
    x_adv[2] = 0.1  # every pixel by 0.1: sqrt(784 * 0.01 / 784) = 0.1
    d = intriguing.distortion(x, x_adv)
    assert d.dtype == torch.float64
    np.testing.assert_allclose(d.numpy(), [1 / 28, 0.5 / 28, 0.1], rtol=1e-6)
    assert float(intriguing.distortion(x_adv, x_adv).abs().max()) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        intriguing.distortion(x, x[:, :, :5])


def _fixed_linear(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    w = torch.randn(3, 4, generator=g) * 3
    with torch.no_grad():  # decision boundaries through the centre of the box
        net[1].weight.copy_(w)
        net[1].bias.copy_(-w @ torch.full((4,), 0.5))
    return net


def test_error_table_recomputed_for_two_models():
    """Table 2 entries for two fixed-weight models against a plain float64 loop."""
    models = {"a": _fixed_linear(1), "b": _fixed_linear(2)}
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 2, 2, generator=g)
    with torch.no_grad():
        y = models["a"](x).argmax(1)  # labels model a gets right
    target = (y + 1) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = {n: lbfgs_search(m, x, target, c_steps=4, max_iter=30) for n, m in models.items()}
    inputs = {n: r.x_adv for n, r in found.items()}
    inputs["clean"] = x
    table = intriguing.error_table(models, inputs, y)

    def ref_error(net, xs):
        w = net[1].weight.detach().double().numpy()
        b = net[1].bias.detach().double().numpy()
        wrong = 0
        for xi, yi in zip(xs.double().numpy().reshape(len(xs), -1), y.tolist(), strict=True):
            scores = [float(np.dot(w[k], xi) + b[k]) for k in range(3)]
            wrong += int(max(range(3), key=lambda k: scores[k]) != yi)
        return wrong / len(xs)

    for row, xs in inputs.items():
        for col, net in models.items():
            assert table[row][col] == ref_error(net, xs), (row, col)
    assert table["clean"]["a"] == 0.0
    # on its own model an example is wrong exactly when the attack reached its target
    assert table["a"]["a"] == float(found["a"].success.double().mean()) > 0.5


def test_same_norm_noise_keeps_the_norm_inside_the_box():
    g = torch.Generator().manual_seed(0)
    x = torch.full((4, 1, 28, 28), 0.5)
    x_adv = x + 0.01 * torch.randn(x.shape, generator=g)  # small: no clipping needed
    x_adv[3] = x[3]
    noisy = intriguing.same_norm_noise(x, x_adv, torch.Generator().manual_seed(1))
    np.testing.assert_allclose(
        (noisy - x).flatten(1).double().norm(dim=1).numpy(),
        (x_adv - x).flatten(1).double().norm(dim=1).numpy(),
        rtol=1e-5,
    )
    assert torch.equal(noisy[3], x[3])  # no perturbation: unchanged
    # at the box edge the noise is clipped, so it can only get shorter
    x0 = torch.zeros(2, 1, 28, 28)
    noisy0 = intriguing.same_norm_noise(x0, x0 + 0.05, torch.Generator().manual_seed(2))
    assert float(noisy0.min()) >= 0.0 and float(noisy0.max()) <= 1.0
    assert bool(((noisy0 - x0).flatten(1).norm(dim=1) <= 0.05 * 28 + 1e-6).all())


def test_gaussian_noise_is_clipped_x_plus_sigma_z():
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    got = intriguing.gaussian_noise(x, 0.3, torch.Generator().manual_seed(4))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    want = np.clip(x.numpy() + 0.3 * z.numpy(), 0.0, 1.0)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-7)


def test_top_activating_and_purity_against_loops():
    g = torch.Generator().manual_seed(5)
    acts = torch.rand(30, 6, generator=g)
    dirs = torch.randn(4, 6, generator=g)
    labels = torch.randint(0, 3, (30,), generator=g)
    top = intriguing.top_activating(acts, dirs, 5)
    purity = intriguing.class_purity(labels[top], 3)
    a, d = acts.double().numpy(), dirs.double().numpy()
    for k in range(4):
        scores = [float(sum(a[i, j] * d[k, j] for j in range(6))) for i in range(30)]
        order = sorted(range(30), key=lambda i: -scores[i])[:5]
        assert top[k].tolist() == order
        counts = [sum(1 for i in order if labels[i] == c) for c in range(3)]
        assert float(purity[k]) == max(counts) / 5


def test_weight_layer_blocks_fold_activations_and_the_input_layers():
    bounds = {"normalize": 3.0, "flatten": 1.0, "fc1": 2.0, "relu1": 1.0, "fc2": 5.0,
              "code": 0.25, "logits": 4.0}  # fmt: skip
    blocks = intriguing.weight_layer_blocks(bounds, ["fc1", "fc2", "logits"])
    assert blocks == {"fc1": 6.0, "fc2": 1.25, "logits": 4.0}
    assert math.prod(blocks.values()) == math.prod(bounds.values())


# --------------------------------------------------------------------------- training


def test_weight_decay_is_lambda_over_two_times_the_squared_norm():
    """With one batch per epoch the first recorded loss is the objective at initialisation:
    mean CE + sum_k lambda_k / 2 ||W_k||_F^2 (weights only), recomputed in numpy."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand(40, 1, 2, 3, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    torch.manual_seed(0)
    net = MLP((1, 2, 3), 3, widths=(5,))
    p = {k: v.detach().double().numpy().copy() for k, v in net.state_dict().items()}
    lams = [0.3, 2.0]
    history = intriguing.train_classifier(
        net, x, y, weight_decay=lams, epochs=30, batch_size=40, lr=0.05, seed=0
    )
    xs = x.double().numpy().reshape(40, -1)
    h = np.maximum(xs @ p["fc1.weight"].T + p["fc1.bias"], 0.0)
    z = h @ p["logits.weight"].T + p["logits.bias"]
    ce = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(40), y.numpy()])
    penalty = (
        lams[0] / 2 * (p["fc1.weight"] ** 2).sum() + lams[1] / 2 * (p["logits.weight"] ** 2).sum()
    )
    assert abs(history[0] - (ce + penalty)) <= 1e-5 * (ce + penalty)
    assert len(history) == 30 and history[-1] < history[0]
    with pytest.raises(ValueError, match="one lambda per weight matrix"):
        intriguing.train_classifier(net, x, y, weight_decay=[0.1], epochs=1, batch_size=40,
                                    lr=0.05, seed=0)  # fmt: skip


def test_autoencoder_reconstruction_error_falls_during_pretraining():
    x = load_dataset("digits", limit_train=120, limit_test=10).x_train  # real 8x8 digits
    torch.manual_seed(0)
    ae = AutoencoderClassifier((1, 8, 8), 10, code_size=16)
    history = intriguing.pretrain_autoencoder(
        ae, x, epochs=8, batch_size=30, lr=1e-2, seed=0, weight_decay=1e-3,
        sparsity_weight=0.5, sparsity_target=0.1,
    )  # fmt: skip
    assert len(history) == 9
    assert history[-1] < 0.8 * history[0]
    assert history[-1] < history[len(history) // 2]
    # the last value, recomputed in numpy from the weights: mean 1/2 ||x_hat - x||^2
    p = {k: v.detach().double().numpy() for k, v in ae.state_dict().items()}
    xs = x.double().numpy().reshape(len(x), -1)
    code = 1 / (1 + np.exp(-(xs @ p["fc1.weight"].T + p["fc1.bias"])))
    x_hat = 1 / (1 + np.exp(-(code @ p["decoder.weight"].T + p["decoder.bias"])))
    want = float(np.mean(0.5 * ((x_hat - xs) ** 2).sum(1)))
    assert abs(history[-1] - want) <= 1e-5 * want
    # training the classifier never touches the decoder
    before = ae.decoder.weight.detach().clone()
    intriguing.train_classifier(
        ae.logits,
        ae.encode(x).detach(),
        torch.arange(120) % 2,
        weight_decay=[0.0],
        epochs=1,
        batch_size=30,
        lr=1e-2,
        seed=0,
    )
    assert torch.equal(before, ae.decoder.weight)


# --------------------------------------------------------------------------- end to end
# One tiny run (about 15 s of CPU with the data loading), shared by the slow tests below.

TINY = intriguing.Settings(
    epochs=2, ae_pretrain_epochs=1, attack_images=6, c_steps=2, max_iter=5, attack_batch=6,
    top_k=4, shown_directions=2, shown_images=3, example_images=2, probe_size=40,
    train_seeds=2,
)  # fmt: skip
CONFIG = ReproduceConfig(dataset="mnist5k", seeds=1, limit_train=200, limit_test=100)


@pytest.fixture(scope="module")
def dataset():
    """The zoo's data for CONFIG, loaded once (reading mnist5k's text file is slow)."""
    return Zoo(CONFIG, "unused").dataset


def _context(out, data, config=CONFIG):
    zoo = Zoo(config, out, log=lambda m: None)
    zoo.__dict__["dataset"] = data  # the cached_property's slot: same data, no reload
    return Context(config=config, out=out, zoo=zoo)


def _saved(results, settings=TINY):
    """What the runner saves and the report reads: JSON with the settings added."""
    text = json.dumps(_io.json_safe({"settings": asdict(settings), **results}), allow_nan=False)
    return json.loads(text)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, dataset):
    out = tmp_path_factory.mktemp("intriguing")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = intriguing.run(TINY, _context(out, dataset))
    return out, results


def _run_files(out):
    folder = out / "runs" / "intriguing"
    return {
        p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow  # the tiny run: 8 models trained and attacked, SNNL*, bounds
def test_run_trains_on_the_zoo_split_and_saves_each_model(tiny, dataset):
    out, results = tiny
    assert (results["train_size"], results["test_size"]) == (200, 100)
    names = [*results["table1_models"], *results["half_models"]]
    assert len(names) == 8 and all(not results["models"][n]["reused"] for n in names)
    files = _run_files(out)
    # per model and training seed a run folder: its weights, its config and record
    assert len(files) == 2 * (8 + 6)
    assert {"AE400-10-seed1/model.pt", "AE400-10/model.pt"} <= set(files)
    half = [results["models"][n]["train_size"] for n in results["half_models"]]
    assert half == [100, 100]
    # a saved number recomputed from the saved weights
    model = MLP((1, 28, 28), 10, widths=())
    model.load_state_dict(torch.load(out / "runs/intriguing/FC10_1/model.pt", weights_only=True))
    with torch.no_grad():
        pred = model(dataset.x_test).argmax(1)
    wrong = sum(int(p != t) for p, t in zip(pred.tolist(), dataset.y_test.tolist(), strict=True))
    assert results["models"]["FC10(1)"]["test_error"] == wrong / 100
    idx = torch.tensor(results["attack_set"]["indices"])
    with torch.no_grad():
        pred = model(dataset.x_test[idx]).argmax(1)
    clean = sum(
        int(p != t) for p, t in zip(pred.tolist(), results["attack_set"]["labels"], strict=True)
    )
    assert results["table2"]["clean"]["FC10(1)"] == clean / len(idx)
    targets = results["attack_set"]["targets"]
    assert all(t != y for t, y in zip(targets, results["attack_set"]["labels"], strict=True))


@pytest.mark.slow  # the tiny run: 8 models trained and attacked, SNNL*, bounds
def test_report_and_claims_come_from_saved_results(tiny, tmp_path):
    _, results = tiny
    saved = _saved(results)
    saved["models"]["FC10(1)"]["test_error"] = 0.4321  # the report must show what is saved
    sec = intriguing.section(saved, tmp_path)
    # Table 1: our value and the paper's in columns side by side
    assert "| FC10(1) | " in sec.markdown and "| 43.21% | 20.00% |" in sec.markdown
    assert "| FC100-100-10 | FC10(1e-4) | " in sec.markdown  # a Table 2 entry, here | paper
    assert "| 28.90% |" in sec.markdown
    assert "conv5 11" in sec.markdown and "mnist5k: 4,000 / 1,000" in sec.markdown  # Table 5
    assert "Over the 2 training seeds" in sec.markdown
    assert len(sec.figures) == 4
    for name, _ in sec.figures:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    found = intriguing.claims(saved)  # from the saved JSON alone
    assert len(found) == 5
    assert {c.verdict for c in found} <= {"holds", "does not hold", "inconclusive"}
    assert all(c.source.startswith("Szegedy") for c in found)
    assert all(c.comparisons and all(x.margin > 0 for x in c.comparisons) for c in found)
    assert all("2 training seeds" in c.setting for c in found)
    raw, relative = found[2], found[3]
    assert "rescaling-invariant" in relative.claim and "rescaling" not in raw.claim
    # every training seed's multi-layer Table 1 models count in the layer rows
    # FC100, FC200, AE400 at two seeds (+ the halves, the reference CNN)
    assert raw.comparisons[0].interval.n[0] >= 2 * 3
    # the autoencoder row pairs over the training seeds when there are several
    assert "paired over training seeds" in found[4].comparisons[0].label


@pytest.mark.slow  # the tiny run: 8 models trained and attacked, SNNL*, bounds
def test_second_run_reuses_the_saved_models(tiny, dataset):
    out, first = tiny
    before = _run_files(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second = intriguing.run(TINY, _context(out, dataset))
    assert _run_files(out) == before  # nothing rewritten
    assert all(m["reused"] for m in second["models"].values())
    for key in ("table2", "table3", "attack_set", "units", "similarity"):
        assert second[key] == first[key], key
    # a changed setting is refused (before anything is trained), and retrained with force
    with pytest.raises(RunMismatchError, match="epochs"):
        intriguing.run(replace(TINY, epochs=3), _context(out, dataset))
    assert _run_files(out) == before
    spec = intriguing.MODELS[0]
    forced = _context(out, dataset, replace(CONFIG, force=True))
    x, y = dataset.x_train, dataset.y_train
    fingerprint = szegedy.data_fingerprint(dataset)
    changed = replace(TINY, epochs=3)
    _, _, reused = szegedy.trained_model(spec, changed, dataset, x, y, forced, fingerprint)
    assert not reused
    after = _run_files(out)
    assert after["FC10_1e-4/model.pt"] != before["FC10_1e-4/model.pt"]
    assert {k: v for k, v in after.items() if not k.startswith("FC10_1e-4/")} == {
        k: v for k, v in before.items() if not k.startswith("FC10_1e-4/")
    }
    saved = json.loads((out / "runs/intriguing/FC10_1e-4/results.json").read_text())
    assert saved["config"]["epochs"] == 3 and len(saved["record"]["loss"]) == 3


def test_study_dataset_is_a_setting_and_a_zoo_model_of_another_dataset_is_left_out(tmp_path):
    """`snnl reproduce --dataset digits` failed in intriguing ("mat1 and mat2 shapes cannot
    be multiplied (1x784 and 64x256)"): the zoo's normal MLP, trained on digits, was
    bounded on mnist5k's 28 x 28 input. It is included only when the zoo's dataset is
    the study's dataset."""
    assert intriguing.Settings().dataset == "mnist5k"
    config = ReproduceConfig(dataset="digits", seeds=1, epochs=1, limit_train=100, limit_test=50)
    zoo = Zoo(config, tmp_path, log=lambda m: None)
    zoo.get("normal", 0)  # the zoo's normal run on digits exists
    context = Context(config=config, out=tmp_path, zoo=zoo)
    mnist_like = type("Shape", (), {"input_shape": (1, 28, 28), "num_classes": 10})()
    models = intriguing.reference_models(context, mnist_like, intriguing.Settings())
    assert list(models) == ["ReferenceCNN (untrained)"]
    for model in models.values():
        assert model.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    # the study on digits itself: the zoo's model is the study's and is included
    study = replace(intriguing.Settings(), dataset="digits")
    models = intriguing.reference_models(context, zoo.dataset, study)
    assert len(models) == 2
    x = zoo.dataset.x_test[:3]
    for model in models.values():
        assert model.eval()(x).shape == (3, 10)
    note = intriguing._zoo_note({"dataset": "mnist5k", "zoo_dataset": "digits"})
    assert "left out" in note and "digits" in note


def test_relative_bounds_do_not_change_when_layers_are_rescaled():
    """Issue 21: W1, b1 * c and W2 / c give the same ReLU net; the raw per-layer bounds
    change (x c, x 1/c), the relative form L_k * mean||h_{k-1}|| / mean||h_k|| does not,
    and it equals a float64 numpy computation (spectral norms, norms of the activations)."""
    from snnl.models import MLP

    torch.manual_seed(3)
    net = MLP((1, 3, 3), 4, widths=(6, 5))
    x = torch.rand(40, 1, 3, 3)
    before = szegedy.model_layer_bounds({"m": net}, (1, 3, 3), x)["m"]
    y0 = net(x).detach()
    c = 7.0
    with torch.no_grad():
        net.fc1.weight.mul_(c)
        net.fc1.bias.mul_(c)
        net.fc2.weight.div_(c)
    assert torch.allclose(net(x).detach(), y0, atol=1e-5)  # the same function
    after = szegedy.model_layer_bounds({"m": net}, (1, 3, 3), x)["m"]
    assert after["blocks"]["fc1"] == pytest.approx(c * before["blocks"]["fc1"], rel=1e-4)
    assert after["blocks"]["fc2"] == pytest.approx(before["blocks"]["fc2"] / c, rel=1e-4)
    for k in ("fc1", "fc2", "logits"):
        assert after["relative"][k] == pytest.approx(before["relative"][k], rel=1e-4)
    # independent reference on the rescaled net
    w = [net.fc1.weight, net.fc2.weight, net.logits.weight]
    b = [net.fc1.bias, net.fc2.bias, net.logits.bias]
    h = [x.flatten(1).double().numpy()]
    for i in range(3):
        z = h[-1] @ w[i].detach().double().numpy().T + b[i].detach().double().numpy()
        h.append(np.maximum(z, 0.0) if i < 2 else z)
    for i, k in enumerate(("fc1", "fc2", "logits")):
        spec = np.linalg.norm(w[i].detach().double().numpy(), 2)
        sizes = [np.linalg.norm(h[j], axis=1).mean() for j in (i, i + 1)]
        assert after["relative"][k] == pytest.approx(spec * sizes[0] / sizes[1], rel=1e-4)


def test_training_seeds_default_two_full_at_least_three():
    assert szegedy.settings(ReproduceConfig()).train_seeds == 2
    assert szegedy.settings(ReproduceConfig(full=True, seeds=2)).train_seeds == 3
    assert szegedy.settings(ReproduceConfig(full=True, seeds=5)).train_seeds == 5
    with pytest.raises(ValueError, match="train_seeds must be an int >= 1"):
        szegedy.Settings(train_seeds=0)


def test_paper_numbers_are_the_published_ones():
    """Table 1 (test error, mean minimal distortion) and the Table 2 row FIELD_NOTES quote."""
    assert szegedy.PAPER_TABLE1["FC100-100-10"][1:] == (0.0164, 0.058)
    assert szegedy.PAPER_TABLE1["AE400-10"][1:] == (0.019, 0.086)
    assert szegedy.PAPER_TABLE2["FC100-100-10"]["FC10(1e-4)"] == 0.289
    assert szegedy.PAPER_TABLE5["conv5"] == 11.0 and len(szegedy.PAPER_TABLE5) == 8
