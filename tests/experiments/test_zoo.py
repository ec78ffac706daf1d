"""The model zoo: config-keyed run folders, reuse only on an equal config, parallel training."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import pytest

from snnl.experiments import ReproduceConfig
from snnl.experiments.zoo import Kind, Zoo, config_key, recipe
from snnl.runs import DamagedRunError, RunMismatchError


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _config(**kw) -> ReproduceConfig:
    base = dict(dataset="digits", seeds=2, epochs=1, limit_train=150, limit_test=60, workers=1)
    base.update(kw)
    return ReproduceConfig(**base)


def test_folder_names_follow_the_config(tmp_path):
    cfg = _config()
    a = recipe(cfg, Kind.NORMAL, 0)
    assert config_key(a) == config_key(replace(a, seed=5))  # the seed is in the name instead
    assert config_key(a) != config_key(replace(a, epochs=2))
    assert config_key(a) != config_key(recipe(cfg, Kind.ENTANGLED, 0))
    zoo = Zoo(cfg, tmp_path)
    assert zoo.folder("normal", a).name == f"normal-{config_key(a)}-seed0"


def test_reuse_only_an_equal_config_and_refuse_a_changed_one(tmp_path):
    zoo = Zoo(_config(), tmp_path, log=lambda m: None)
    ref = zoo.get(Kind.NORMAL, 0)
    mtime = (ref.path / "results.json").stat().st_mtime_ns
    again = zoo.get(Kind.NORMAL, 0)
    assert again.path == ref.path and (ref.path / "results.json").stat().st_mtime_ns == mtime
    assert ref.health == "ok" and ref.describe(tmp_path)["path"].startswith("runs/")
    # a folder whose finished run has another config (edited by hand) is refused...
    res = json.loads((ref.path / "results.json").read_text())
    res["config"]["lr"] = 0.5
    (ref.path / "results.json").write_text(json.dumps(res))
    with pytest.raises(RunMismatchError, match="lr"):
        zoo.get(Kind.NORMAL, 0)
    # ...and retrained with force
    forced = Zoo(_config(force=True), tmp_path, log=lambda m: None).get(Kind.NORMAL, 0)
    assert json.loads((forced.path / "results.json").read_text())["config"]["lr"] == 1e-3


def test_damaged_results_is_named_and_force_retrains(tmp_path):
    """Issue 18: a damaged run results.json gave a JSONDecodeError without the file name,
    and --force did not clear it (the zoo read it before looking at --force)."""
    zoo = Zoo(_config(), tmp_path, log=lambda m: None)
    ref = zoo.get(Kind.NORMAL, 0)
    history = ref.results()["history"]
    (ref.path / "results.json").write_text('{"config": {"lr"')
    with pytest.raises(DamagedRunError, match=str(ref.path / "results.json")):
        zoo.get(Kind.NORMAL, 0)
    with pytest.raises(DamagedRunError, match="results.json"):
        ref.results()
    logs: list[str] = []
    forced = Zoo(_config(force=True), tmp_path, log=logs.append).get(Kind.NORMAL, 0)
    assert forced.results()["history"] == history and logs == [
        f"training {ref.path.name} (--force)"
    ]


def _items(cfg):
    return [("normal", recipe(cfg, Kind.NORMAL, s)) for s in range(2)] + [
        ("entangled", recipe(cfg, Kind.ENTANGLED, 0))
    ]


def test_parallel_training_equals_one_by_one(tmp_path):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's thread count must not change the runs
    one = Zoo(_config(workers=1), tmp_path / "one", log=lambda m: None)
    two = Zoo(_config(workers=2), tmp_path / "two", log=lambda m: None)
    refs1 = one.train_many(_items(one.config))
    refs2 = two.train_many(_items(two.config))
    for a, b in zip(refs1, refs2, strict=True):
        assert a.path.name == b.path.name
        assert a.results()["history"] == b.results()["history"]
    assert torch.get_num_threads() == 2  # restored after training
    torch.set_num_threads(before)
