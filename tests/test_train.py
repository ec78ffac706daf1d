"""Trainer: determinism, bit-exact resume after a kill, overwrite protection."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

from interrupt import Kill, kill_at, same_state
from snnl import train as train_module
from snnl._io import RunLockedError, folder_lock
from snnl.data import DataSplits, load_dataset
from snnl.regularizers import TEMPERATURE_MODES
from snnl.runs import DamagedRunError, RunExistsError, RunMismatchError
from snnl.train import (
    TrainConfig,
    build_run_model,
    health_verdict,
    load_run,
    snnl_upper_bound,
    train,
)


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
    assert set(rec["batch_terms"]["snnl"]) == {"relu1", "relu2"}
    assert 0.0 <= rec["test_accuracy"] <= 1.0
    # a different seed gives a different run
    c = train(_config(seed=1), tmp_path / "c", dataset=small_digits)
    assert c["history"] != a["history"]


@pytest.mark.parametrize("kill", [(0, 2), (1, 1), (2, 4)])
def test_resume_after_kill_matches_uninterrupted(tmp_path, small_digits, kill):
    full = train(_config(), tmp_path / "full", dataset=small_digits)
    run = tmp_path / "killed"
    with pytest.raises(Kill):
        train(_config(), run, dataset=small_digits, on_step=kill_at(*kill))
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
    assert set(state) >= {"model", "optimizer", "regularizers", "history"}


def test_resume_of_normal_model(tmp_path, small_digits):
    full = train(_config(alpha=0.0), tmp_path / "full", dataset=small_digits)
    with pytest.raises(Kill):
        train(_config(alpha=0.0), tmp_path / "k", dataset=small_digits, on_step=kill_at(1, 2))
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
    with pytest.raises(Kill):
        train(_config(), run, dataset=small_digits, on_step=kill_at(1, 1))
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


@pytest.mark.parametrize("mode", TEMPERATURE_MODES)
def test_every_temperature_mode_resumes_bit_exactly(tmp_path, small_digits, mode):
    cfg = _config(temperature_mode=mode, epochs=2)
    full = train(cfg, tmp_path / "full", dataset=small_digits)
    with pytest.raises(Kill):
        train(cfg, tmp_path / "k", dataset=small_digits, on_step=kill_at(1, 2))
    resumed = train(cfg, tmp_path / "k", dataset=small_digits, resume=True)
    assert resumed["history"] == full["history"]
    assert resumed["health"] == full["health"]


def test_reference_formula_run_resumes(tmp_path, small_digits):
    cfg = _config(
        temperature_mode="reference", snnl_formula="reference", temperature=100.0, epochs=2
    )
    full = train(cfg, tmp_path / "full", dataset=small_digits)
    with pytest.raises(Kill):
        train(cfg, tmp_path / "k", dataset=small_digits, on_step=kill_at(1, 1))
    assert (
        train(cfg, tmp_path / "k", dataset=small_digits, resume=True)["history"] == full["history"]
    )


def test_a_second_process_on_the_same_folder_is_refused(tmp_path, small_digits):
    run = tmp_path / "r"
    with folder_lock(run):  # stands for another live `snnl train` holding the folder
        with pytest.raises(RunLockedError, match=str(run)):
            train(_config(epochs=1), run, dataset=small_digits)
        with pytest.raises(RunLockedError):
            train(_config(epochs=1), run, dataset=small_digits, force=True)
    # a lock file left behind by a killed process does not block --resume
    (run / ".snnl.lock").write_text("99999")
    assert train(_config(epochs=1), run, dataset=small_digits, resume=True)["history"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_damaged_checkpoint_names_the_file(tmp_path, small_digits, damage):
    run = tmp_path / "r"
    with pytest.raises(Kill):
        train(_config(), run, dataset=small_digits, on_step=kill_at(1, 1))
    ckpt = run / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(
        {"truncated": data[: len(data) // 2], "empty": b"", "random": bytes(range(256)) * 8}[damage]
    )
    with pytest.raises(DamagedRunError) as err:
        train(_config(), run, dataset=small_digits, resume=True)
    message = str(err.value)
    assert str(ckpt) in message and "--force" in message
    assert "weights_only" not in message and "unpickl" not in message.lower()


def test_damaged_config_names_the_file(tmp_path, small_digits):
    run = tmp_path / "r"
    with pytest.raises(Kill):
        train(_config(), run, dataset=small_digits, on_step=kill_at(1, 1))
    (run / "config.json").write_text('{"alpha": ')
    with pytest.raises(DamagedRunError, match="config.json"):
        train(_config(), run, dataset=small_digits, resume=True)


def test_failed_run_leaves_no_empty_folder(tmp_path, small_digits):
    run = tmp_path / "new"
    with pytest.raises(ValueError):
        train(_config(layers=["nope"]), run, dataset=small_digits)
    assert not run.exists()


def test_health_of_runs_built_to_diverge_and_to_collapse(tmp_path, small_digits):
    diverged = train(_config(alpha=0.0, lr=1e12, epochs=2), tmp_path / "d", dataset=small_digits)
    assert diverged["health"]["verdict"] == "diverged", diverged["health"]
    # maximising SNNL* with a huge weight makes the classes indistinguishable
    collapsed = train(_config(alpha=1e4, epochs=3, lr=1e-2), tmp_path / "c", dataset=small_digits)
    assert collapsed["health"]["verdict"] == "collapsed", collapsed["health"]
    healthy = train(_config(alpha=0.0, epochs=3, lr=1e-2), tmp_path / "h", dataset=small_digits)
    assert healthy["health"]["verdict"] == "ok", healthy["health"]


def test_health_verdict_rules():
    init = {"scale": {"r": 1.0}, "spread": {"r": 1.0}, "snnl": {"r": 0.5}}

    def epoch(acc=0.9, scale=1.0, spread=1.0, snnl=0.5):
        return {
            "test_accuracy": acc,
            "probe_scale": {"r": scale},
            "probe_spread": {"r": spread},
            "probe_snnl": {"r": snnl},
        }

    def verdict(*history, **kw):
        return health_verdict(list(history), init, num_classes=10, bound=2.0, **kw)["verdict"]

    assert verdict(epoch()) == "ok"
    assert verdict(epoch(acc=0.12)) == "collapsed"
    assert verdict(epoch(snnl=1.999)) == "collapsed"
    assert verdict(epoch(spread=1e-5)) == "collapsed"
    assert verdict(epoch(scale=1e5)) == "diverged"
    assert verdict(epoch(snnl=float("nan"))) == "diverged"
    assert verdict(epoch(), non_finite="non-finite loss at step 3") == "diverged"


def test_snnl_upper_bound_is_the_large_temperature_limit():
    from snnl.loss import soft_nearest_neighbor_loss

    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(0))
    at_huge_t = soft_nearest_neighbor_loss(x.double(), y, 1e12).item()
    assert snnl_upper_bound(y) == pytest.approx(at_huge_t, rel=1e-9)


# ----------------------------------------------------------------------------- issue 18


def _indexed(n: int) -> DataSplits:
    """digits with its first n training images marked by their index (first pixel)."""
    ds = load_dataset("digits", limit_train=n, limit_test=60)
    x = ds.x_train.clone()
    x[:, 0, 0, 0] = torch.arange(n, dtype=x.dtype) / n
    return DataSplits("digits", x, ds.y_train, ds.x_test, ds.y_test, ds.classes)


@pytest.mark.parametrize("batch_size", [64, 128, 43])
def test_every_training_point_once_per_epoch(tmp_path, monkeypatch, batch_size):
    """Issue 18: with 129 points in batches of 64, one batch was trained twice and one
    never (129 rows seen, 65 distinct); batches of 128 raised IndexError."""
    seen: list[int] = []
    ds = _indexed(129)

    def build(config, dataset):
        model = build_run_model(config, dataset)

        def record(module, inputs):
            if module.training:
                seen.extend(torch.round(inputs[0][:, 0, 0, 0] * 129).long().tolist())

        model.register_forward_pre_hook(record)
        return model

    monkeypatch.setattr(train_module, "build_run_model", build)
    train(_config(epochs=2, batch_size=batch_size, limit_train=129), tmp_path / "r", dataset=ds)
    assert len(seen) == 2 * 129
    for epoch in (seen[:129], seen[129:]):
        assert sorted(epoch) == list(range(129))


def test_cli_two_batches_with_a_lone_point(tmp_path, capsys):
    """Issue 18's command: IndexError (pop before assign) with exactly two batches."""
    from snnl.cli import main

    out = tmp_path / "r"
    args = ["train", "--dataset", "digits", "--limit-train", "129", "--batch-size", "128",
            "--limit-test", "60", "--epochs", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["final"]["epochs_completed"] == 1


def test_resume_extends_a_finished_run_bit_identically(tmp_path, small_digits):
    """Issue 17: --resume with a larger --epochs extends a finished run; the run equals
    one trained to that length in one go (metrics.jsonl, state dicts, results)."""
    run, whole = tmp_path / "r", tmp_path / "whole"
    train(_config(epochs=2), run, dataset=small_digits)
    extended = train(_config(epochs=4), run, dataset=small_digits, resume=True)
    one_go = train(_config(epochs=4), whole, dataset=small_digits)
    for name in ("metrics.jsonl", "config.json"):
        assert (run / name).read_bytes() == (whole / name).read_bytes()
    a = torch.load(run / "checkpoint.pt", weights_only=True)
    b = torch.load(whole / "checkpoint.pt", weights_only=True)
    for key in ("model", "optimizer", "regularizers", "history", "initial"):
        assert same_state(a[key], b[key]), key
    a_res, b_res = dict(extended), dict(one_go)
    a_res.pop("timing"), b_res.pop("timing")
    assert a_res == b_res
    saved = json.loads((run / "results.json").read_text())
    saved.pop("timing")
    assert saved == a_res


def test_resume_refuses_a_shorter_run(tmp_path, small_digits):
    run = tmp_path / "r"
    train(_config(epochs=2), run, dataset=small_digits)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(RunMismatchError, match="finished run of 2 epochs.*cannot be shortened"):
        train(_config(epochs=1), run, dataset=small_digits, resume=True)
    with pytest.raises(RunExistsError, match="larger --epochs"):
        train(_config(epochs=2), run, dataset=small_digits, resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_cli_resume_extends_refuses_and_names_a_missing_folder(tmp_path, capsys):
    from snnl.cli import main

    out = tmp_path / "r"
    base = ["train", "--dataset", "digits", "--limit-train", "150", "--limit-test", "60",
            "--out", str(out)]  # fmt: skip
    assert main([*base, "--epochs", "1"]) == 0
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["epoch"] for r in res["history"]] == [1, 2] and res["config"]["epochs"] == 2
    capsys.readouterr()
    assert main([*base, "--epochs", "1", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot be shortened" in err and "--epochs 3" in err
    assert main([*base, "--resume"]) == 2  # --epochs left out: the run's own, finished
    assert "larger --epochs" in capsys.readouterr().err
    missing = tmp_path / "typo"
    assert main([*base[:-1], str(missing), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err and len(err.splitlines()) == 1
    assert not missing.exists()


def test_resume_of_a_missing_folder_is_an_error(tmp_path, small_digits):
    """Issue 18: --resume on a folder that does not exist silently started fresh."""
    with pytest.raises(FileNotFoundError, match="typo"):
        train(_config(epochs=1), tmp_path / "typo", dataset=small_digits, resume=True)
    assert not (tmp_path / "typo").exists()


# ----------------------------------------------------------------------------- validation


def test_validation_split_is_stratified_seeded_and_disjoint():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    kept, held = train_module.validation_split(y, 10, seed=3)
    # hand-computed quotas: 10 * (50, 30, 20) / 100 = (5, 3, 2)
    assert torch.bincount(y[held]).tolist() == [5, 3, 2]
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(100))
    again = train_module.validation_split(y, 10, seed=3)
    assert torch.equal(again[1], held)
    assert not torch.equal(train_module.validation_split(y, 10, seed=4)[1], held)
    # largest remainders: 7 * (50, 30, 20) / 100 = (3.5, 2.1, 1.4) -> (4, 2, 1)
    held7 = train_module.validation_split(y, 7, 0)[1]
    assert torch.bincount(y[held7], minlength=3).tolist() == [4, 2, 1]
    with pytest.raises(ValueError, match="without a training point"):
        train_module.validation_split(y, 98, 0)


def test_validation_holdout_comes_from_training_data_only(tmp_path, small_digits):
    cfg = _config(alpha=0.0, epochs=1, validation=40, seed=5)
    res = train(cfg, tmp_path / "v", dataset=small_digits)
    assert res["dataset"] == {"name": "digits", "train": 200, "test": 120, "validation": 40}
    part, (xv, yv) = train_module.validation_holdout(cfg, small_digits)
    assert torch.equal(part.x_test, small_digits.x_test)  # the test split untouched
    # the same hold-out for every training seed (fixed by split_seed)
    other, (xv2, _) = train_module.validation_holdout(_config(validation=40, seed=9), small_digits)
    assert torch.equal(xv, xv2)
    # every held-out point is a training point, not one the model trains on
    rows = {tuple(r.flatten().tolist()) for r in small_digits.x_train}
    assert all(tuple(r.flatten().tolist()) in rows for r in xv)
    assert len(part.y_train) + len(yv) == len(small_digits.y_train)
    assert sorted(part.y_train.tolist() + yv.tolist()) == sorted(small_digits.y_train.tolist())
    model, _ = load_run(tmp_path / "v", dataset=small_digits)
    with torch.no_grad():
        acc = float((model(xv).argmax(1) == yv).double().mean())
    assert res["final"]["validation_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert res["history"][-1]["validation_accuracy"] == res["final"]["validation_accuracy"]
    assert "validation_accuracy" not in train(_config(alpha=0.0, epochs=1), tmp_path / "n",
                                              dataset=small_digits)["final"]  # fmt: skip


def test_a_run_saved_before_the_validation_field_is_reused_and_resumed(tmp_path, small_digits):
    from snnl.runs import reusable

    cfg = _config(alpha=0.0, epochs=1)
    res = train(cfg, tmp_path / "old", dataset=small_digits)
    for name in ("config.json", "results.json"):  # as written before the field existed
        path = tmp_path / "old" / name
        data = json.loads(path.read_text())
        (data["config"] if name == "results.json" else data).pop("validation")
        path.write_text(json.dumps(data))
    assert reusable(tmp_path / "old", cfg)["history"] == res["history"]
    with pytest.raises(RunMismatchError, match="validation"):
        reusable(tmp_path / "old", _config(alpha=0.0, epochs=1, validation=20))
    longer = train(_config(alpha=0.0, epochs=2), tmp_path / "old", dataset=small_digits,
                   resume=True)  # fmt: skip
    assert longer["history"][0] == res["history"][0]
    with pytest.raises(ValueError, match="validation"):
        TrainConfig(validation=-1)


def test_a_run_stopped_at_a_non_finite_loss_counts_at_its_measured_accuracy(
    tmp_path, small_digits, monkeypatch
):
    """Issue 20: a diverged run is an outcome, not a missing value. The loss of the first
    step is made NaN, so the run stops with its initial parameters (the step is not
    taken): its final test accuracy is that model's, computed here by a plain loop."""
    import snnl.train as train_module

    real = train_module.regularized_loss

    def nan_loss(*args, **kwargs):
        res = real(*args, **kwargs)
        return dataclasses.replace(res, total=res.total * float("nan"))

    monkeypatch.setattr(train_module, "regularized_loss", nan_loss)
    config = _config(alpha=0.0, epochs=2)
    res = train(config, tmp_path / "nan", dataset=small_digits)
    assert res["health"]["verdict"] == "diverged"
    assert res["final"]["epochs_completed"] == 0 and res["final"]["stopped_early"] is True
    splits, _ = train_module.validation_holdout(config, small_digits)
    model = train_module.build_run_model(config, splits).eval()
    with torch.no_grad():
        logits = model(splits.x_test)
    right = sum(int(logits[i].argmax()) == int(splits.y_test[i]) for i in range(len(logits)))
    assert res["final"]["test_accuracy"] == pytest.approx(right / len(logits), abs=1e-12)


def test_accuracy_counts_non_finite_logits_as_wrong():
    """argmax over NaN logits returns the NaN's index; such an input has no prediction."""
    from snnl.measures import accuracy

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.0, 1.0], [float("inf"), 1.0]])
    assert accuracy(net, x, torch.tensor([0, 0, 1, 0])) == 0.5
