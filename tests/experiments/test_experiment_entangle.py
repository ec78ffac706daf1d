"""Experiment "entangle": which zoo run name each setting trains under (no training).

The run name was picked from the label (``label[:3] == "opt"``); it is now fixed where
the setting is made (:class:`SettingRun`). Checked against the rule the folders have
always followed, stated here from the training config alone: alpha 0 is a normal run,
the optimal-temperature sweep is entangled, everything else is the authors' settings.
"""

from __future__ import annotations

import pytest

from snnl.experiments import entangle
from snnl.experiments.config import ReproduceConfig
from snnl.experiments.zoo import Kind, Zoo, recipe


def _expected_run(config) -> str:
    if config.alpha == 0:
        return "normal"
    return "entangled" if config.temperature_mode == "optimal" else "authors"


@pytest.mark.parametrize("full", [False, True])
def test_every_setting_runs_under_its_kind(full):
    config = ReproduceConfig(dataset="digits", seeds=2, full=full)
    s = entangle.settings(config)
    runs = entangle.setting_runs(s, config, seed=1)
    assert runs[0].label == "normal" and runs[0].run == Kind.NORMAL
    assert [r.run for r in runs] == [_expected_run(r.config) for r in runs]
    assert {r.run for r in runs} == {"normal", "entangled", "authors"}
    assert len({r.label for r in runs}) == len(runs)
    assert all(r.config.seed == 1 for r in runs)
    if full:  # the reference CNN's normal run is a normal run too
        cnn = [r for r in runs if r.config.model_kwargs.get("init") == "authors"]
        assert [r.run for r in cnn] == ["normal", "authors", "authors"]


def test_the_zoo_models_are_the_sweep_runs(tmp_path):
    """The sweep's normal and entangled points are the zoo's normal and entangled models
    (same run name and config, so the same folder: trained once, studied by all)."""
    config = ReproduceConfig(dataset="digits", seeds=1)
    s = entangle.settings(config)
    runs = {r.label: r for r in entangle.setting_runs(s, config, seed=0)}
    zoo = Zoo(config, tmp_path)
    for label, kind in (
        ("normal", Kind.NORMAL),
        (f"optimal a={s.entangled_alpha:g}", Kind.ENTANGLED),
    ):
        run = runs[label]
        assert run.run == kind and run.config == recipe(config, kind, 0)
        assert zoo.folder(run.run, run.config) == zoo.folder(kind.value, recipe(config, kind, 0))
