"""GAN training and its measures: entanglement of real and generated data, mode coverage,
Frechet distance, run-folder conventions (bit-exact resume, locks, damaged files)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from interrupt import Kill, kill_at, same_state
from snnl._io import RunLockedError, folder_lock
from snnl.data import load_dataset
from snnl.gan import (
    MISSING_SHARE,
    GANConfig,
    entanglement_star,
    evaluate_generator,
    frechet_distance,
    frechet_distance_gaussians,
    generate,
    held_out_real,
    load_gan_run,
    mode_coverage,
    noise_seed,
    train_gan,
)
from snnl.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
    build_gan,
)
from snnl.runs import DamagedRunError, RunExistsError, RunMismatchError
from snnl.taps import LayerTap, capture
from snnl.temperature import entanglement_between, snnl_temperature_curve
from snnl.train import TrainConfig, load_run, train


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit_train=240, limit_test=120)


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, digits):
    """A small trained digits classifier (the measuring model)."""
    run = tmp_path_factory.mktemp("clf") / "run"
    config = TrainConfig(
        dataset="digits",
        epochs=4,
        batch_size=32,
        model_kwargs={"widths": [64, 32]},
        probe_size=60,
        limit_train=240,
        limit_test=120,
    )
    train(config, run, dataset=digits)
    return run


def _config(classifier=None, **kw) -> GANConfig:
    base = dict(
        dataset="digits",
        epochs=3,
        batch_size=32,
        lr=1e-3,
        latent_dim=8,
        generator_kwargs={"widths": [32]},
        discriminator_kwargs={"widths": [32, 16]},
        eval_samples=60,
        entanglement_samples=30,
        grid_samples=2,
        limit_train=240,
        limit_test=120,
        classifier=None if classifier is None else str(classifier),
    )
    base.update(kw)
    return GANConfig(**base)


# ----------------------------------------------------------------------------- Frechet distance


def _fd_reference(mu_a, cov_a, mu_b, cov_b) -> float:
    """The usual FID formula with a general matrix square root (scipy), float64."""
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    return float(
        np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root).real
    )


def test_frechet_distance_closed_forms():
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    fd = frechet_distance_gaussians(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), [[0.25]])
    assert fd == pytest.approx(9.0 + (2.0 - 0.5) ** 2, rel=1e-12)
    # diagonal covariances: |m_a - m_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    ma, mb = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((ma - mb) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance_gaussians(ma, np.diag(a), mb, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)
    # a singular covariance (a point mass): tr(S_b) and the mean shift only
    got = frechet_distance_gaussians(ma, np.zeros((6, 6)), mb, np.diag(b))
    assert got == pytest.approx(np.sum((ma - mb) ** 2) + b.sum(), rel=1e-10)


def test_frechet_distance_general_covariances_match_scipy_sqrtm():
    rng = np.random.default_rng(1)
    for d in (2, 5, 20):
        x, y = rng.normal(size=(d, d)), rng.normal(size=(d, d))
        cov_a, cov_b = x @ x.T + 0.1 * np.eye(d), y @ y.T + 0.1 * np.eye(d)  # not commuting
        ma, mb = rng.normal(size=d), rng.normal(size=d)
        got = frechet_distance_gaussians(ma, cov_a, mb, cov_b)
        assert got == pytest.approx(_fd_reference(ma, cov_a, mb, cov_b), rel=1e-8)
        assert frechet_distance_gaussians(mb, cov_b, ma, cov_a) == pytest.approx(got, rel=1e-8)


def test_frechet_distance_of_samples():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 4, generator=g, dtype=torch.float64)
    b = (
        torch.randn(200, 4, generator=g, dtype=torch.float64)
        @ torch.tensor(
            [[1.0, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 0.3]], dtype=torch.float64
        )
        + 1.5
    )
    an, bn = a.numpy(), b.numpy()
    expected = _fd_reference(an.mean(0), np.cov(an.T), bn.mean(0), np.cov(bn.T))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(a.float(), a.float()) == pytest.approx(0.0, abs=1e-5)
    # large samples of N(0, I) and N(m, diag(s^2)) approach the closed form
    big = torch.Generator().manual_seed(1)
    s = torch.tensor([0.5, 2.0], dtype=torch.float64)
    x = torch.randn(40_000, 2, generator=big, dtype=torch.float64)
    y = torch.randn(40_000, 2, generator=big, dtype=torch.float64) * s + torch.tensor([1.0, -1.0])
    closed = 2.0 + float(((1.0 - s) ** 2).sum())  # |m|^2 + sum (1 - s_i)^2 = 2 + 1.25
    assert frechet_distance(x, y) == pytest.approx(closed, abs=0.05)


def test_frechet_distance_errors():
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="feature size"):
        frechet_distance(torch.zeros(4, 3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="shape"):
        frechet_distance_gaussians(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


# ----------------------------------------------------------------------------- entanglement


def test_entanglement_star_matches_entanglement_between_at_its_own_search():
    g = torch.Generator().manual_seed(0)
    checked = 0
    for shift in (0.0, 0.7, 2.0):
        real = torch.randn(30, 5, generator=g, dtype=torch.float64)
        fake = torch.randn(30, 5, generator=g, dtype=torch.float64) + shift
        value, log_t = entanglement_star(real, fake)
        # the library's own search (grid of 6 per decade over [1e-4, 1e4], then Brent)
        reference = float(entanglement_between(real, fake))
        assert value <= reference + 1e-7  # never above: the search range is the data's own
        if 1e-3 < math.exp(log_t) < 1e3:  # an interior minimum both searches can reach
            assert value == pytest.approx(reference, abs=1e-6)
            checked += 1
    assert checked == 2  # the shifted pairs (identical distributions: T* beyond 1e4)


def test_identical_sets_give_the_indistinguishable_value_and_far_sets_zero():
    g = torch.Generator().manual_seed(2)
    for n in (10, 50):
        x = torch.rand(n, 7, generator=g)
        value, _ = entanglement_star(x, x.clone())
        # every pair equally weighted (T -> infinity): log((2n - 1) / (n - 1)) per anchor
        assert value == pytest.approx(math.log((2 * n - 1) / (n - 1)), abs=1e-4)
        far, _ = entanglement_star(x, x + 50.0)
        assert far < 1e-8


def test_entanglement_star_is_the_global_minimum_over_temperature():
    # generated points in one tight clump inside the real cloud: the curve in T has a local
    # minimum above its large-T limit, and the global minimum must be found
    g = torch.Generator().manual_seed(3)
    real = torch.randn(60, 4, generator=g, dtype=torch.float64)
    fake = 0.01 * torch.randn(60, 4, generator=g, dtype=torch.float64) + 0.3
    value, log_t = entanglement_star(real, fake)
    x, y = torch.cat([real, fake]), torch.cat([torch.zeros(60), torch.ones(60)]).long()
    grid = np.logspace(-6, 6, 241)
    curve = snnl_temperature_curve(x, y, grid).double().numpy()
    assert value <= curve.min() + 1e-7
    assert value >= curve.min() - 1e-3
    assert value <= math.log(119 / 59) + 1e-9  # never above the indistinguishable value


def test_entanglement_comes_from_fresh_samples_of_the_current_generator(digits):
    torch.manual_seed(0)
    gen, disc = build_gan("mlp", digits.input_shape, latent_dim=8)
    real = held_out_real(digits, 60)
    kw = dict(num_samples=60, entanglement_samples=30, seed=5)
    first = evaluate_generator(gen, disc, real, **kw)
    assert evaluate_generator(gen, disc, real, **kw) == first  # same noise, same weights
    with torch.no_grad():
        gen.fc_out.bias.add_(-1.0)  # darker samples
    changed = evaluate_generator(gen, disc, real, **kw)
    assert changed["entanglement"]["input"] != first["entanglement"]["input"]
    assert changed["entanglement"]["discriminator"] != first["entanglement"]["discriminator"]
    # and the value is SNNL* of exactly those samples
    fake = generate(gen, 60, seed=5)
    expected = float(entanglement_between(real[:30], fake[:30]))
    assert changed["entanglement"]["input"] == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------- mode coverage


def test_mode_coverage_counts_and_missing_classes():
    rng = np.random.default_rng(0)
    pred = rng.choice(5, size=400, p=[0.4, 0.3, 0.25, 0.04, 0.01])
    cov = mode_coverage(torch.from_numpy(pred), 5)
    counts = np.bincount(pred, minlength=5)
    assert cov["counts"] == counts.tolist()
    assert cov["missing"] == [k for k in range(5) if counts[k] / 400 < MISSING_SHARE / 5]
    assert cov["missing"] == [3, 4] and cov["num_missing"] == 2
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        mode_coverage(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="integer"):
        mode_coverage(torch.tensor([0.0, 1.0]), 3)


class _ClassMeanGenerator(nn.Module):
    """Outputs one class's mean training image for every noise vector."""

    def __init__(self, image: torch.Tensor, latent_dim: int = 8) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("image", image)
        self.scale = nn.Parameter(torch.zeros(()))  # generate() needs a parameter's device

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.image.expand(z.shape[0], *self.image.shape) + 0.0 * self.scale


def test_single_class_generator_covers_one_mode(digits, classifier_run):
    clf, _ = load_run(classifier_run, dataset=digits)
    cls = 0
    mean_image = digits.x_train[digits.y_train == cls].mean(0)
    assert int(clf(mean_image[None]).argmax()) == cls  # the classifier knows the class mean
    gen = _ClassMeanGenerator(mean_image)
    disc = MLPDiscriminator(digits.input_shape, widths=(16,))
    real = held_out_real(digits, 100)
    res = evaluate_generator(
        gen, disc, real, classifier=clf, num_samples=100, entanglement_samples=30, seed=0
    )
    cov = res["coverage"]
    assert cov["counts"][cls] == 100 and sum(cov["counts"]) == 100
    assert cov["missing"] == [k for k in range(10) if k != cls] and cov["num_missing"] == 9
    # every generated feature vector is the same: FD = |mu_real - f|^2 + tr(cov_real)
    last = clf.hidden_layer_names[-1]
    f_real = capture(clf, real, [last])[last].double().numpy()
    f_fake = capture(clf, mean_image[None], [last])[last].double().numpy()[0]
    expected = np.sum((f_real.mean(0) - f_fake) ** 2) + np.trace(np.cov(f_real.T))
    assert res["frechet_distance"] == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- models


def test_gan_models_shapes_ranges_and_taps():
    z = torch.randn(4, 16)
    for gen, disc in (
        (MLPGenerator(16, (1, 28, 28), widths=(32, 64)), MLPDiscriminator((1, 28, 28), (64, 32))),
        (DCGANGenerator(16, (1, 28, 28), channels=4), DCGANDiscriminator((1, 28, 28), channels=4)),
    ):
        x = gen(z)
        assert x.shape == (4, 1, 28, 28) and float(x.min()) >= 0 and float(x.max()) <= 1
        with LayerTap(disc, "hidden") as tap:
            logits = disc(x)
        assert logits.shape == (4,) and list(tap.outputs) == ["act1", "act2"]
        with LayerTap(gen, "hidden") as tap:
            gen(z)
        assert list(tap.outputs) == list(gen.hidden_layer_names)
    with pytest.raises(ValueError, match="multiples of 4"):
        DCGANGenerator(8, (1, 30, 30))
    with pytest.raises(ValueError, match="mlp, dcgan"):
        build_gan("vae", (1, 28, 28))


# ----------------------------------------------------------------------------- config


def test_config_validation(classifier_run):
    with pytest.raises(ValueError, match="mlp, dcgan"):
        _config(arch="resnet")
    with pytest.raises(ValueError, match="discriminator, classifier"):
        _config(snnl_target="generator")
    with pytest.raises(ValueError, match="needs a classifier"):
        _config(snnl_alpha=1.0, snnl_target="classifier")
    with pytest.raises(ValueError, match="entanglement_samples"):
        _config(eval_samples=10, entanglement_samples=20)
    with pytest.raises(ValueError, match="learned, optimal"):
        _config(snnl_temperature_mode="fixed")
    assert _config(generator_kwargs={"widths": (8,)}).generator_kwargs == {"widths": [8]}
    assert noise_seed(0, "train", 0) != noise_seed(0, "eval", 0)


# ----------------------------------------------------------------------------- runs


def test_run_files_measures_and_recomputation(tmp_path, digits, classifier_run):
    config = _config(classifier_run)
    res = train_gan(config, tmp_path / "r", dataset=digits)
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "results.json"):
        assert (tmp_path / "r" / name).exists()
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    last = res["history"][-1]
    assert set(last["entanglement"]["discriminator"]) == {"act1", "act2"}
    assert set(last["entanglement"]["classifier"]) == {"relu1", "relu2"}
    assert len(last["coverage"]["counts"]) == 10 and sum(last["coverage"]["counts"]) == 60
    assert len(last["samples"]) == 2 and np.array(last["samples"]).shape == (2, 1, 8, 8)
    assert res["health"]["verdict"] == "ok"
    # the recorded last-epoch measures, recomputed from the saved generator
    gen, disc, saved = load_gan_run(tmp_path / "r")
    real = held_out_real(digits, 60)
    fake = generate(gen, 60, noise_seed(config.seed, "eval", config.epochs - 1))
    assert last["entanglement"]["input"] == pytest.approx(
        float(entanglement_between(real[:30], fake[:30])), abs=1e-6
    )
    h_real = capture(disc, real[:30], ["act2"])["act2"]
    h_fake = capture(disc, fake[:30], ["act2"])["act2"]
    assert last["entanglement"]["discriminator"]["act2"] == pytest.approx(
        float(entanglement_between(h_real, h_fake)), abs=1e-6
    )
    clf, _ = load_run(classifier_run, dataset=digits)
    feats = capture(clf, torch.cat([real, fake]), ["relu2", "logits"])
    assert last["frechet_distance"] == pytest.approx(
        frechet_distance(feats["relu2"][:60], feats["relu2"][60:]), rel=1e-9
    )
    counts = torch.bincount(feats["logits"][60:].argmax(1), minlength=10).tolist()
    assert last["coverage"]["counts"] == counts


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"snnl_alpha": 1.0},
        {"snnl_alpha": 1.0, "snnl_temperature_mode": "optimal"},
        {"snnl_alpha": 1.0, "snnl_target": "classifier"},
    ],
    ids=["plain", "snnl-d-learned", "snnl-d-optimal", "snnl-classifier"],
)
def test_resume_after_kill_is_byte_identical(tmp_path, digits, classifier_run, variant):
    config = _config(classifier_run, epochs=2, **variant)
    full = train_gan(config, tmp_path / "full", dataset=digits)
    run = tmp_path / "killed"
    with pytest.raises(Kill):
        train_gan(config, run, dataset=digits, on_step=kill_at(1, 3))
    assert not (run / "results.json").exists()
    with pytest.raises(RunExistsError, match="--resume"):
        train_gan(config, run, dataset=digits)
    resumed = train_gan(config, run, dataset=digits, resume=True)
    assert (run / "metrics.jsonl").read_bytes() == (
        tmp_path / "full" / "metrics.jsonl"
    ).read_bytes()
    assert resumed["history"] == full["history"]
    if variant:
        assert set(full["history"][0]["snnl_term"]) == set(
            full["layers"][variant.get("snnl_target", "discriminator")]
        )
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert {"generator", "discriminator", "optimizer_g", "regularizer"} <= set(state)


def test_kill_before_the_first_checkpoint_resumes(tmp_path, digits):
    config = _config(epochs=2)
    full = train_gan(config, tmp_path / "full", dataset=digits)
    with pytest.raises(Kill):
        train_gan(config, tmp_path / "k", dataset=digits, on_step=kill_at(0, 2))
    resumed = train_gan(config, tmp_path / "k", dataset=digits, resume=True)
    assert resumed["history"] == full["history"]


def test_overwrite_lock_and_mismatch(tmp_path, digits):
    run = tmp_path / "r"
    first = train_gan(_config(epochs=1), run, dataset=digits)
    with pytest.raises(RunExistsError, match="--force"):
        train_gan(_config(epochs=1), run, dataset=digits)
    again = train_gan(_config(epochs=1), run, dataset=digits, force=True)
    assert again["history"] == first["history"]
    with folder_lock(run):
        with pytest.raises(RunLockedError, match=str(run)):
            train_gan(_config(epochs=1), run, dataset=digits, force=True)
    other = tmp_path / "o"
    with pytest.raises(Kill):
        train_gan(_config(), other, dataset=digits, on_step=kill_at(1, 1))
    with pytest.raises(ValueError, match="lr"):
        train_gan(_config(lr=5e-4), other, dataset=digits, resume=True)


@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_damaged_checkpoint_names_the_file(tmp_path, digits, damage):
    run = tmp_path / "r"
    with pytest.raises(Kill):
        train_gan(_config(), run, dataset=digits, on_step=kill_at(1, 1))
    ckpt = run / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(
        {"truncated": data[: len(data) // 2], "empty": b"", "random": bytes(range(256)) * 8}[damage]
    )
    with pytest.raises(DamagedRunError) as err:
        train_gan(_config(), run, dataset=digits, resume=True)
    assert str(ckpt) in str(err.value) and "--force" in str(err.value)
    assert "unpickl" not in str(err.value).lower()


def test_a_changed_classifier_refuses_resume(tmp_path, digits, classifier_run):
    import shutil

    clf = tmp_path / "clf"
    shutil.copytree(classifier_run, clf)
    run = tmp_path / "r"
    with pytest.raises(Kill):
        train_gan(_config(clf), run, dataset=digits, on_step=kill_at(1, 1))
    state = torch.load(clf / "checkpoint.pt", weights_only=True)
    state["model"]["logits.bias"] += 1.0
    torch.save(state, clf / "checkpoint.pt")
    with pytest.raises(ValueError, match="changed"):
        train_gan(_config(clf), run, dataset=digits, resume=True)


def test_cli_gan(tmp_path, classifier_run, capsys):
    from snnl.cli import main

    out = tmp_path / "g"
    args = [
        "gan", "--dataset", "digits", "--epochs", "1", "--limit-train", "120",
        "--limit-test", "60", "--eval-samples", "40", "--entanglement-samples", "20",
        "--classifier", str(classifier_run), "--snnl-alpha", "0.5", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "SNNL*(real, generated)" in text and "missing classes" in text
    assert main(args) == 2  # a finished run is not overwritten without --force
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


@pytest.mark.parametrize("variant", [{}, {"snnl_alpha": 1.0}], ids=["plain", "snnl"])
def test_resume_extends_a_finished_gan_run_bit_identically(tmp_path, digits, variant):
    """Issue 17: --resume with a larger epochs extends a finished GAN run to what a run
    of that length gives (metrics.jsonl, both networks, optimisers, the SNNL term)."""
    run, whole = tmp_path / "r", tmp_path / "whole"
    train_gan(_config(epochs=2, **variant), run, dataset=digits)
    with pytest.raises(RunMismatchError, match="cannot be shortened"):
        train_gan(_config(epochs=1, **variant), run, dataset=digits, resume=True)
    extended = train_gan(_config(epochs=3, **variant), run, dataset=digits, resume=True)
    one_go = train_gan(_config(epochs=3, **variant), whole, dataset=digits)
    for name in ("metrics.jsonl", "config.json"):
        assert (run / name).read_bytes() == (whole / name).read_bytes()
    a = torch.load(run / "checkpoint.pt", weights_only=True)
    b = torch.load(whole / "checkpoint.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a.keys() - {"seconds"}:
        assert same_state(a[key], b[key]), key
    extended.pop("timing"), one_go.pop("timing")
    assert extended == one_go


@pytest.mark.slow
def test_mnist5k_gan_entanglement_rises_in_input_space(tmp_path):
    """The default experiment's plain MLP GAN: SNNL*(real, generated) rises from epoch 1."""
    config = GANConfig(
        epochs=4,
        lr=1e-3,
        generator_kwargs={"widths": [128, 256]},
        discriminator_kwargs={"widths": [256, 128]},
        eval_samples=300,
        entanglement_samples=150,
    )
    res = train_gan(config, tmp_path / "r")
    curve = [r["entanglement"]["input"] for r in res["history"]]
    assert res["initial"]["entanglement"]["input"] < 0.05  # noise images: separated
    assert curve[-1] > curve[0] + 0.2, curve


@pytest.mark.slow
def test_dcgan_trains_on_mnist5k(tmp_path):
    config = GANConfig(
        arch="dcgan",
        epochs=1,
        generator_kwargs={"channels": 16},
        discriminator_kwargs={"channels": 16},
        limit_train=1000,
        eval_samples=200,
        entanglement_samples=100,
        snnl_alpha=1.0,
    )
    res = train_gan(config, tmp_path / "r")
    assert res["health"]["verdict"] == "ok"
    assert set(res["history"][0]["entanglement"]["discriminator"]) == {"act1", "act2"}
    assert np.array(res["history"][0]["samples"]).shape == (8, 1, 28, 28)
