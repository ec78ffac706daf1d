"""Tests for snnl.profile and `snnl profile` on a tiny trained digits run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from snnl.attacks import pgd
from snnl.cli import main
from snnl.corruptions import corrupt, corruption_names
from snnl.lipschitz import layer_bounds
from snnl.profile import MEASURES, profile_model
from snnl.train import TrainConfig, load_config_dataset, load_run, train

LIMIT = 90


# tiny problems: one torch thread (see conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        dataset="digits", model="mlp", epochs=1, limit_train=300, model_kwargs={"widths": [32, 16]}
    )
    train(config, out, progress=False)
    return out


@pytest.fixture(scope="module")
def cli_profile(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    code = main(["profile", str(run_dir), "--limit", str(LIMIT), "--steps", "3", "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "profile.json").read_text())


def _snnl_numpy(h: np.ndarray, y: np.ndarray, t: float) -> float:
    """eq. 1, squared Euclidean distances, self pair excluded, plain float64 loops."""
    d = ((h[:, None, :] - h[None, :, :]) ** 2).sum(-1)
    values = []
    for i in range(len(y)):
        others = np.arange(len(y)) != i
        logits = -d[i, others] / t
        top = logits.max()
        same = y[others] == y[i]
        values.append(
            -(np.log(np.exp(logits[same] - top).sum()) - np.log(np.exp(logits - top).sum()))
        )
    return float(np.mean(values))


def _selectivity_numpy(h: np.ndarray, y: np.ndarray) -> float:
    means = np.stack([h[y == c].mean(0) for c in np.unique(y)])
    top = means.max(0)
    rest = (means.sum(0) - top) / (len(means) - 1)
    return float(np.mean((top - rest) / (top + rest + 1e-7)))


def _spectrum(h: np.ndarray) -> np.ndarray:
    c = h - h.mean(0)
    return np.sort(np.linalg.eigvalsh(c.T @ c / (len(h) - 1)))[::-1].clip(0)


def test_cli_writes_every_layer_measure_and_input(cli_profile, run_dir, capsys):
    out, prof = cli_profile
    assert prof["layers"] == ["relu1", "relu2"]
    assert prof["inputs"] == ["clean", "corrupted", "adversarial"]
    for layer in prof["layers"]:
        for kind in prof["inputs"]:
            assert set(prof["measures"][layer][kind]) == {*MEASURES, "temperature"}
            assert all(math.isfinite(v) for v in prof["measures"][layer][kind].values())
    assert set(prof["accuracy"]) == set(prof["inputs"])
    assert set(prof["lipschitz"]["cumulative"]) == {"relu1", "relu2"}
    assert prof["settings"]["examples"] == LIMIT
    assert prof["settings"]["corruption_mix"] == [[n, 3] for n in corruption_names("hendrycks")]
    assert prof["settings"]["pgd"] == {
        "norm": "inf", "eps": 0.1, "step_size": 0.025, "steps": 3, "random_start": True
    }  # fmt: skip
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "run " in prof["model"]


def test_values_equal_a_direct_computation(cli_profile, run_dir):
    _, prof = cli_profile
    model, results = load_run(run_dir)
    ds = load_config_dataset(TrainConfig.from_dict(results["config"]))
    x, y = ds.x_test[:LIMIT], ds.y_test[:LIMIT]
    # the three inputs, rebuilt from the stated settings
    mixed = x.clone()
    g = torch.Generator().manual_seed(0)
    names = corruption_names("hendrycks")
    for k, name in enumerate(names):
        idx = torch.arange(LIMIT)[torch.arange(LIMIT) % len(names) == k]
        mixed[idx] = corrupt(x[idx], name, 3, generator=g)
    adv = pgd(model, x, y, 0.1, 0.025, 3, generator=torch.Generator().manual_seed(1))
    inputs = {"clean": x, "corrupted": mixed, "adversarial": adv}
    with torch.no_grad():
        for kind, xs in inputs.items():
            # relu1 by hand: relu(fc1(flatten(normalise(x))))
            z = (xs - model.normalize.mean.view(1, -1, 1, 1)) / model.normalize.std.view(
                1, -1, 1, 1
            )
            h1 = torch.relu(model.fc1(z.flatten(1))).double().numpy()
            logits = model.logits(torch.relu(model.fc2(torch.from_numpy(h1).float())))
            acc = float((logits.argmax(1) == y).double().mean())
            assert prof["accuracy"][kind] == pytest.approx(acc, abs=1e-12)
            m = prof["measures"]["relu1"][kind]
            yy = y.numpy()
            assert m["snnl"] == pytest.approx(_snnl_numpy(h1, yy, m["temperature"]), rel=1e-5)
            for factor in (0.9, 1.1):  # the temperature is the optimum
                assert m["snnl"] <= _snnl_numpy(h1, yy, m["temperature"] * factor) + 1e-6
            assert m["selectivity"] == pytest.approx(_selectivity_numpy(h1, yy), rel=1e-6)
            eig = _spectrum(h1)
            k95 = int(np.searchsorted(np.cumsum(eig) / eig.sum(), 0.95 - 1e-12) + 1)
            assert m["dimensionality"] == k95
            assert m["participation_ratio"] == pytest.approx(
                eig.sum() ** 2 / (eig**2).sum(), rel=1e-6
            )
    bounds = layer_bounds(model, (1, 8, 8))
    assert prof["lipschitz"]["cumulative"]["relu2"] == pytest.approx(bounds.cumulative["relu2"])
    assert prof["lipschitz"]["layer"]["relu1"] == 1.0


def test_python_call_is_json_ready_and_respects_settings(run_dir):
    model, results = load_run(run_dir)
    ds = load_config_dataset(TrainConfig.from_dict(results["config"]))
    prof = profile_model(
        model, ds, limit=LIMIT, corruptions=["fog", "contrast"], severity=5, eps=0.05, steps=1,
        bounds=False,
    )  # fmt: skip
    json.dumps(prof, allow_nan=False)
    assert prof["settings"]["corruption_mix"] == [["fog", 5], ["contrast", 5]]
    assert prof["settings"]["pgd"]["eps"] == 0.05 and prof["lipschitz"] == {}
    with pytest.raises(ValueError, match="unknown corruption"):
        profile_model(model, ds, limit=10, corruptions=["nope"])
    with pytest.raises(ValueError, match="one of 1, 2, 3, 4, 5"):
        profile_model(model, ds, limit=10, severity=7)
    with pytest.raises(ValueError, match="unknown split"):
        profile_model(model, ds, split="valid")


MODULE = """
from snnl.models import MLP


def build():
    return MLP((1, 8, 8), 10, widths=(12,))


NOT_A_FACTORY = 3
"""


def test_user_model_from_a_factory_and_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "usernet.py").write_text(MODULE)
    torch.manual_seed(0)
    from snnl.models import MLP

    torch.save(MLP((1, 8, 8), 10, widths=(12,)).state_dict(), tmp_path / "w.pt")
    args = ["profile", "--model", "usernet:build", "--weights", "w.pt", "--dataset", "digits"]
    code = main([*args, "--limit", str(LIMIT), "--steps", "1", "--out", "prof"])
    assert code == 0, capsys.readouterr().err
    prof = json.loads((tmp_path / "prof" / "profile.json").read_text())
    assert prof["layers"] == ["relu1"] and prof["model"] == "usernet:build with weights w.pt"
    capsys.readouterr()
    torch.save(MLP((1, 8, 8), 10, widths=(7,)).state_dict(), tmp_path / "other.pt")
    bad = {
        "must be package.module:factory": ["--model", "usernet", "--weights", "w.pt"],
        "cannot import 'nowhere'": ["--model", "nowhere:build", "--weights", "w.pt"],
        "no callable 'NOT_A_FACTORY'": ["--model", "usernet:NOT_A_FACTORY", "--weights", "w.pt"],
        "does not fit usernet:build()": ["--model", "usernet:build", "--weights", "other.pt"],
        "needs --weights": ["--model", "usernet:build"],
        "give either a run folder": [],
        "needs --dataset": ["--model", "usernet:build", "--weights", "w.pt", "--no-dataset"],
    }
    for message, argv in bad.items():
        if "--no-dataset" in argv:
            argv = [a for a in argv if a != "--no-dataset"]
        elif argv and "--dataset" not in argv:
            argv = [*argv, "--dataset", "digits"]
        assert main(["profile", *argv]) == 2, message
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_run_folder_errors_are_one_line(tmp_path, capsys):
    assert main(["profile", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a finished training run" in err and len(err.splitlines()) == 1
