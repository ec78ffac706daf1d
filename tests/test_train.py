"""Trainer: determinism, bit-exact resume after a kill, overwrite protection."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from snnl.data import load_dataset
from snnl.train import RunExistsError, TrainConfig, load_run, train


@pytest.fixture(scope="module")
def small_digits():
    return load_dataset("digits", limit_train=240, limit_test=120)


def _config(**kw) -> TrainConfig:
    base = dict(
        epochs=3,
        batch_size=64,
        alpha=1.0,
        temperature=10.0,
        probe_size=80,
        model_kwargs={"widths": [32, 32]},
        limit_train=240,
        limit_test=120,
    )
    base.update(kw)
    return TrainConfig(**base)


class _Kill(Exception):
    pass


def _kill_at(epoch: int, step: int):
    def hook(e: int, s: int) -> None:
        if (e, s) == (epoch, step):
            raise _Kill

    return hook


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_same_seed_identical_and_files(tmp_path, small_digits):
    a = train(_config(), tmp_path / "a", dataset=small_digits)
    b = train(_config(), tmp_path / "b", dataset=small_digits)
    assert a["history"] == b["history"]
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "results.json"):
        assert (tmp_path / "a" / name).exists()
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    rec = json.loads(lines[-1])
    assert set(rec["probe_snnl"]) == {"relu1", "relu2", "logits"}
    assert set(rec["batch_snnl"]) == {"relu1", "relu2"}
    assert 0.0 <= rec["test_accuracy"] <= 1.0
    # a different seed gives a different run
    c = train(_config(seed=1), tmp_path / "c", dataset=small_digits)
    assert c["history"] != a["history"]


@pytest.mark.parametrize("kill", [(0, 2), (1, 1), (2, 4)])
def test_resume_after_kill_matches_uninterrupted(tmp_path, small_digits, kill):
    full = train(_config(), tmp_path / "full", dataset=small_digits)
    run = tmp_path / "killed"
    with pytest.raises(_Kill):
        train(_config(), run, dataset=small_digits, on_step=_kill_at(*kill))
    assert not (run / "results.json").exists()  # an interrupted run never looks finished
    if kill[0] > 0:  # a checkpoint exists: starting over silently would lose it
        with pytest.raises(RunExistsError, match="--resume"):
            train(_config(), run, dataset=small_digits)
    resumed = train(_config(), run, dataset=small_digits, resume=True)
    assert resumed["history"] == full["history"]
    assert (run / "metrics.jsonl").read_bytes() == (
        tmp_path / "full" / "metrics.jsonl"
    ).read_bytes()
    # checkpoints load with weights_only=True
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert set(state) >= {"model", "optimizer", "regularizer", "history"}


def test_resume_of_normal_model(tmp_path, small_digits):
    full = train(_config(alpha=0.0), tmp_path / "full", dataset=small_digits)
    with pytest.raises(_Kill):
        train(_config(alpha=0.0), tmp_path / "k", dataset=small_digits, on_step=_kill_at(1, 2))
    resumed = train(_config(alpha=0.0), tmp_path / "k", dataset=small_digits, resume=True)
    assert resumed["history"] == full["history"]


def test_overwrite_protection(tmp_path, small_digits):
    run = tmp_path / "r"
    first = train(_config(epochs=1), run, dataset=small_digits)
    with pytest.raises(RunExistsError, match="--force"):
        train(_config(epochs=1), run, dataset=small_digits)
    with pytest.raises(RunExistsError, match="finished"):
        train(_config(epochs=1), run, dataset=small_digits, resume=True)
    again = train(_config(epochs=1), run, dataset=small_digits, force=True)
    assert again["history"] == first["history"]


def test_resume_with_other_settings_is_refused(tmp_path, small_digits):
    run = tmp_path / "r"
    with pytest.raises(_Kill):
        train(_config(), run, dataset=small_digits, on_step=_kill_at(1, 1))
    with pytest.raises(ValueError, match="alpha"):
        train(_config(alpha=2.0), run, dataset=small_digits, resume=True)


def test_load_run_rebuilds_the_trained_model(tmp_path, small_digits):
    res = train(_config(epochs=1), tmp_path / "r", dataset=small_digits)
    model, saved = load_run(tmp_path / "r", dataset=small_digits)
    acc = (model(small_digits.x_test).argmax(1) == small_digits.y_test).double().mean().item()
    assert acc == pytest.approx(res["final"]["test_accuracy"], abs=1e-12)
    assert saved["history"] == res["history"]
    with pytest.raises(FileNotFoundError, match="not a finished training run"):
        load_run(tmp_path / "nothing")


def test_bad_config():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="temperature"):
        TrainConfig(temperature=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"epochz": 3})
