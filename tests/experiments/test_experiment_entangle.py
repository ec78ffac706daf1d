"""Experiment "entangle": which zoo run name each setting trains under (no training); the
headline tuned against tuned on a tiny digits run (choices read back from the run folders,
pairing by seed, the interval against scipy's paired t); its stability (slow).

The run name was picked from the label (``label[:3] == "opt"``); it is now fixed where
the setting is made (:class:`SettingRun`). Checked against the rule the folders have
always followed, stated here from the training config alone: alpha 0 is a normal run,
the optimal-temperature sweep is entangled, everything else is the authors' settings.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, replace

import pytest
import torch
from scipy import stats

from snnl.experiments import entangle
from snnl.experiments.base import Context
from snnl.experiments.config import ReproduceConfig
from snnl.experiments.tuning import Candidate, Grid, tuning_config
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


# ----------------------------------------------------------------------------- the headline


def _tiny(pilot: int = 2, cap: int = 3):
    config = ReproduceConfig(dataset="digits", seeds=2, epochs=1, limit_train=240,
                             limit_test=120, workers=1)  # fmt: skip
    grid = Grid((1e-3, 3e-3), (0.01, 0.3), (1.0,), (100.0,), seeds=2)
    s = replace(entangle.settings(config), alphas=(0.1,), sweep_seeds=1,
                authors_formulas=("exact",), grids=(grid,), pilot=pilot, seed_cap=cap)  # fmt: skip
    return config, s


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    config, s = _tiny()
    out = tmp_path_factory.mktemp("entangle")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = entangle.run(s, Context(config, out, Zoo(config, out)))
    return config, s, out, json.loads(json.dumps({"settings": asdict(s), **res}))


def test_headline_chooses_by_validation_read_from_the_run_folders(tiny_run):
    config, s, out, results = tiny_run
    (head,) = results["headline"]
    zoo = Zoo(config, out)
    base = entangle.headline_base(config, "mlp")
    assert head["validation"] == 30  # an eighth of the 240 training points
    searched: dict = {}
    for rec in head["tuning"]:
        c = Candidate.from_dict(rec["candidate"])
        folder = zoo.folder(c.name, tuning_config(base, c, 30, rec["seed"]))
        saved = json.loads((folder / "results.json").read_text())
        # trained on the training split minus the hold-out; the test split untouched
        assert saved["dataset"] == {"name": "digits", "train": 210, "test": 120,
                                    "validation": 30}  # fmt: skip
        searched.setdefault(c, []).append(saved["final"]["validation_accuracy"])
    assert all(len(v) == 2 for v in searched.values())
    for arm in entangle.ARMS:
        mine = {c: sum(v) / 2 for c, v in searched.items() if c.arm == arm}
        top = max(mine.values())
        assert mine[Candidate.from_dict(head["chosen"][arm])] >= top - 1e-9
    # every arm searched its learning rates (stage two at the winner's alpha)
    for arm in entangle.ARMS:
        assert {c.lr for c in searched if c.arm == arm} == {1e-3, 3e-3}


def test_headline_pairs_seeds_and_its_interval_is_scipys(tiny_run):
    config, s, out, results = tiny_run
    (head,) = results["headline"]
    plan = head["plan"]
    assert head["pilot_seeds"] == 2 and 2 <= plan["n"] <= 3
    # the spread re-estimated after each round of seeds until it asks for no more
    steps = head["plan_steps"]
    assert steps[0]["pilot"] <= 2 and steps[-1]["n"] <= plan["n"]
    assert all(a["n"] > a["pilot"] for a in steps[:-1])
    for arm in entangle.ARMS:
        assert [r["seed"] for r in head["paired"][arm]] == list(range(plan["n"]))
    # same seed = same initialisation in every arm: the probe's initial SNNL* agrees
    for k in range(plan["n"]):
        folders = [out / head["paired"][arm][k]["dir"] for arm in entangle.ARMS]
        initial = [json.loads((f / "results.json").read_text())["initial"]["snnl"]
                   for f in folders]  # fmt: skip
        assert initial[0] == initial[1] == initial[2]
    claims = entangle.claims(results)
    headline = [c for c in claims if "tuned on" in c.setting]
    assert len(headline) == 2
    ent = [r["test_accuracy"] for r in head["paired"]["entangled"]]
    nor = [r["test_accuracy"] for r in head["paired"]["normal"]]
    ci = stats.ttest_rel(ent, nor).confidence_interval(0.95)
    iv = headline[0].comparisons[0].interval
    assert (iv.low, iv.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert f"n = {plan['n']} paired seeds" in headline[0].note
    assert "smallest detectable effect" in headline[0].note


def test_headline_section_and_figure(tiny_run, tmp_path):
    config, s, out, results = tiny_run
    sec = entangle.section(results, tmp_path)
    assert (tmp_path / "entangle_tuning.png").stat().st_size > 10_000
    assert sec.figures[0][0] == "entangle_tuning.png"
    assert "### Headline on the mlp" in sec.markdown
    assert "half-width achieved" in sec.markdown and "`--full` only" in sec.markdown


def test_expected_seconds_grows_with_full():
    small = entangle.expected_seconds(ReproduceConfig(workers=2))
    full = entangle.expected_seconds(ReproduceConfig(workers=2, full=True))
    assert 60 < small < 600 and full > 5 * small
    assert entangle.expected_seconds(ReproduceConfig(workers=1)) == pytest.approx(2 * small)


@pytest.mark.slow
def test_headline_verdict_survives_a_one_ulp_perturbation_of_the_initial_weights(
    tmp_path, monkeypatch
):
    """Rounding-level change of training (every initial weight moved by one ulp): the
    headline verdicts at the chosen n stay the same."""
    from snnl import train as train_module

    config, s = _tiny(pilot=3, cap=4)

    def verdicts(out):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            head = entangle._headline(s, Context(config, out, Zoo(config, out)), "mlp",
                                      s.grids[0])  # fmt: skip
        results = {"headline": [json.loads(json.dumps(head))], "dataset": "digits"}
        return [c.verdict for c in entangle._headline_claims(results)], head

    plain, head = verdicts(tmp_path / "plain")
    build = train_module.build_run_model

    def nudged(cfg, dataset):
        model = build(cfg, dataset)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.nextafter(p, torch.full_like(p, math.inf)))
        return model

    monkeypatch.setattr(train_module, "build_run_model", nudged)
    moved, head2 = verdicts(tmp_path / "moved")

    def losses(out, h):  # the perturbation reached training: the losses differ
        return [json.loads((out / r["dir"] / "results.json").read_text())["history"][-1]
                ["train_loss"] for r in h["paired"]["normal"]]  # fmt: skip

    assert losses(tmp_path / "plain", head) != losses(tmp_path / "moved", head2)
    accs = [r["test_accuracy"] for r in head["paired"]["normal"]]
    assert moved == plain, (plain, moved, accs)
    assert head2["chosen"] == head["chosen"]


def test_seed_plan_follows_the_arm_with_the_larger_spread():
    _, s = _tiny(pilot=3, cap=10)

    def arm(values):
        return [{"seed": k, "test_accuracy": v, "health": "ok" if v else "diverged"}
                for k, v in enumerate(values)]  # fmt: skip

    runs = {"normal": arm([0.90, 0.91, 0.92]), "entangled": arm([0.905, 0.915, 0.925]),
            "authors": arm([None, 0.95, 0.90])}  # fmt: skip
    plan = entangle._seed_plan(runs, s)
    # entangled: differences all 0.005 (sd 0); authors: the two measured pairs 0.04, -0.02
    assert plan.sd == pytest.approx(float(torch.tensor([0.04, -0.02]).double().std()))
    assert plan.pilot == 2 and plan.n == 10
    runs["authors"] = arm([None, None, 0.9])
    assert entangle._seed_plan(runs, s).sd == pytest.approx(0.0, abs=1e-12)


def test_an_arm_whose_every_run_failed_is_reported_not_an_error(tiny_run, tmp_path):
    """`snnl reproduce --full` stopped with 'mean_std needs at least one value' after
    40 minutes of training, when every paired run of the CNN's authors' arm diverged."""
    config, s, out, results = tiny_run
    results = json.loads(json.dumps(results))
    (head,) = results["headline"]
    for r in head["paired"]["authors"]:
        r.update(test_accuracy=None, health="diverged")
    for rec in head["tuning"]:
        if rec["candidate"]["arm"] == "authors":
            rec["validation_accuracy"] = None
    sec = entangle.section(results, tmp_path)
    assert "no run measured (all failed)" in sec.markdown
    authors = [c for c in entangle.claims(results) if "authors' fixed T" in c.setting]
    assert len(authors) == 1 and authors[0].verdict == "inconclusive"
    assert "no run measured" in authors[0].measured


# ----------------------------------------------------------------------------- the CNN's layers


def test_the_default_trains_the_reference_cnn_on_every_seed():
    """Issue 21: the per-layer SNNL* over training on a convolutional network in the
    default run: the reference CNN (normal, authors' init) on all seeds, 4 epochs; the
    recipe's epochs under --full; none on mnist1d (not an image)."""
    config = ReproduceConfig(dataset="mnist5k", seeds=3)
    s = entangle.settings(config)
    cnn = [r for r in entangle.trained_runs(s, config) if r.label == entangle.CNN_NORMAL]
    assert [r.config.seed for r in cnn] == [0, 1, 2]
    assert {(r.run, r.config.model, r.config.epochs, r.config.alpha) for r in cnn} == {
        ("normal", "cnn", 4, 0.0)
    }
    assert all(r.config.model_kwargs == {"init": "authors"} for r in cnn)
    full = ReproduceConfig(dataset="mnist5k", seeds=3, full=True)
    cnn_full = [r for r in entangle.trained_runs(entangle.settings(full), full)
                if r.label == entangle.CNN_NORMAL]  # fmt: skip
    assert {r.config.epochs for r in cnn_full} == {recipe(full, Kind.NORMAL, 0).epochs}
    two = ReproduceConfig(dataset="mnist5k", seeds=1, epochs=2)  # --epochs: every run's
    assert {r.config.epochs for r in entangle.trained_runs(entangle.settings(two), two)} == {2}
    oned = ReproduceConfig(dataset="mnist1d", seeds=2)
    assert not any(r.config.model == "cnn"
                   for r in entangle.trained_runs(entangle.settings(oned), oned))  # fmt: skip


def _layer_record(setting, seed, model, layers, initial, final):
    """A saved run record as :func:`entangle.run` writes it (the logits' SNNL* beside the
    hidden layers' in the per-epoch and initial values)."""
    final_all = {**dict(zip(layers, final, strict=True)), "logits": 0.01}
    return {"setting": setting, "seed": seed, "model": model, "health": "ok",
            "layers": layers,
            "initial_snnl": {**dict(zip(layers, initial, strict=True)), "logits": 1.0},
            "final_snnl": final_all, "probe_snnl": [final_all] * 4,
            "mean_hidden_snnl": sum(final) / len(final)}  # fmt: skip


def test_cnn_layer_rows_and_figure_from_saved_results(tmp_path):
    """The CNN's two layer rows (falls with depth, falls over training) from its own
    runs, their intervals scipy's paired t; the MLP's rows unchanged beside them."""
    mlp = ["relu1", "relu2", "relu3"]
    cnn = ["relu1", "relu2", "relu3"]
    finals = {0: [0.5, 0.3, 0.1], 1: [0.45, 0.2, 0.12], 2: [0.6, 0.35, 0.05]}
    runs = [_layer_record("normal", k, "mlp", mlp, [1.0, 1.0, 1.0], [0.4, 0.3, 0.2])
            for k in range(3)]  # fmt: skip
    runs += [_layer_record(entangle.CNN_NORMAL, k, "cnn", cnn, [0.9, 0.7, 0.6], finals[k])
             for k in range(3)]  # fmt: skip
    results = {"dataset": "mnist5k", "model": "mlp", "layers": mlp, "runs": runs}
    rows = entangle._layer_claims(results, entangle.CNN_NORMAL)
    assert [r.claim for r in rows] == ["Hidden-layer SNNL falls with depth: each layer "
                                       "separates classes more than the one before",
                                       "Hidden-layer SNNL falls over training"]  # fmt: skip
    assert all("cnn, cnn authors-init normal (4 epochs)" in r.setting for r in rows)
    first = [finals[k][0] for k in range(3)]
    last = [finals[k][-1] for k in range(3)]
    diffs = [a - b for a, b in zip(first, last, strict=True)]
    t = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    iv = rows[0].comparisons[0].interval
    assert math.isclose(iv.low, t.low, rel_tol=1e-9) and math.isclose(iv.high, t.high, rel_tol=1e-9)
    assert rows[0].verdict == "holds"
    init = [sum([0.9, 0.7, 0.6]) / 3] * 3
    fin = [sum(finals[k]) / 3 for k in range(3)]
    t2 = stats.ttest_1samp([a - b for a, b in zip(init, fin, strict=True)], 0).confidence_interval()
    assert math.isclose(rows[1].comparisons[0].interval.low, t2.low, rel_tol=1e-9)
    from snnl.experiments import entangle_figures

    path = tmp_path / "layers_cnn.png"
    entangle_figures.layers_figure(results, path, {entangle.CNN_NORMAL: "C0"}, "reference CNN")
    assert path.stat().st_size > 5000
