"""Experiment "entangle": is entangled training (eq. 3) well-posed, and does it help?

Frosst, Papernot & Hinton (2019) train "entangled models" with
loss = CE - alpha * sum over hidden layers of SNNL(h_l, y, T_l) and report that
they "marginally" outperform normal models. This experiment trains, per seed:

- the normal model (alpha = 0) and an alpha sweep of the default objective,
  SNNL at each batch's optimal temperature (``temperature_mode="optimal"``);
  the sweep's point ``ENTANGLED_ALPHA`` is the zoo's "entangled" model that the
  later experiments study;
- the authors' setting: alpha = 10 with T fixed at 100, under the exact formula
  and under the authors' exp-then-log formula (saturating at 11.51);
- the reference CNN (the paper's MNIST network, authors' initialisation), normal, on
  every seed: its per-layer SNNL* over training (the paper shows the per-layer figure on
  a convolutional network, a ResNet on CIFAR-10); 4 epochs by default (one CNN epoch
  costs ~7 s of one core on mnist5k), the recipe's under ``--full``;
- with ``--full``: the "learned" and "reference" temperature modes, and the authors'
  fixed-T setting on the reference CNN;
- the headline, tuned against tuned (issue 20, :mod:`snnl.experiments.tuning`): each
  arm (normal; entangled at the optimal temperature; the authors' fixed T and formula)
  searched on a validation hold-out of the training split, the chosen settings
  retrained on paired seeds (n from a 3-seed pilot's spread, for a 95% half-width of
  0.5 points, within a cap) and compared on the test split. On the MLP by default; the
  reference CNN's headline runs under ``--full`` only (one CNN run costs ~45 s of one
  core on mnist5k against ~3 s for the MLP: a tuned and paired CNN comparison is ~40
  runs, ~15 minutes on 2 cores).

Cost of the default (mnist5k, 2 cores, 2 workers; measured): 223 s in all, of which the
sweep with the reference CNN's three 4-epoch runs ~80 s and the headline's search and 8
paired seeds ~130 s (:func:`expected_seconds`
gives an upper estimate for any config: 5.0 minutes here, ~55 for ``--full``).

Reported per setting: test accuracy, the mean hidden-layer SNNL* with its upper
bound, each run's health verdict (runs that collapsed or diverged are marked and
never averaged into a mean); the per-layer SNNL* over training (normal against
entangled); activation scales over training; a PCA projection of a hidden layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import PCA

from snnl.experiments import entangle_figures
from snnl.experiments.base import (
    Claim,
    Context,
    Section,
    compare_paired,
    failure_rate,
    format_mean_std,
    mean_std,
    unhealthy_lines,
)
from snnl.experiments.config import ReproduceConfig
from snnl.experiments.tuning import (
    ARMS,
    DEFAULT_GRID,
    FULL_GRID,
    Candidate,
    Grid,
    arm_config,
    paired_seeds,
    scores,
    search_figure,
    select,
    stage_one,
    stage_two,
    tuning_config,
    validation_points,
)
from snnl.experiments.zoo import ENTANGLED_ALPHA, Kind, RunRef, outcome, recipe
from snnl.stats import smallest_detectable_effect
from snnl.taps import capture
from snnl.train import TrainConfig

NAME = "entangle"
TITLE = "Entangled training (eq. 3): a well-posed objective, an alpha sweep, the authors' setting"
SOURCE = "Frosst, Papernot & Hinton 2019"


@dataclass(frozen=True)
class Settings:
    """What the experiment trains (beyond the zoo's recipe for the dataset)."""

    seeds: int  # seeds of the normal and the entangled setting (the zoo's models)
    sweep_seeds: int  # seeds of the other sweep points and the authors' settings
    alphas: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)  # optimal-mode sweep (alpha 0 = normal)
    entangled_alpha: float = ENTANGLED_ALPHA  # the zoo's "entangled" setting
    authors_alpha: float = 10.0  # the reference code's factor -10
    authors_temperature: float = 100.0  # and its fixed T (optimize_temperature=False)
    authors_formulas: tuple[str, ...] = ("exact", "reference")
    extra_modes: tuple[str, ...] = ()  # --full: "learned", "reference" at the authors' alpha/T
    reference_cnn: bool = False  # --full: the reference CNN's authors' runs (fixed T)
    # the per-layer SNNL* over training on a convolutional network (issue 21): the
    # reference CNN, normal, authors' init, ``layer_cnn_epochs`` epochs (None: the recipe's)
    layer_cnn: bool = True
    layer_cnn_epochs: int | None = 4
    projection_points: int = 600
    # the headline, tuned against tuned: the models it runs on, each model's search
    headline_models: tuple[str, ...] = ("mlp",)
    grids: tuple[Grid, ...] = (DEFAULT_GRID,)  # one per headline model
    pilot: int = 3  # paired seeds whose spread sets n
    seed_cap: int = 8  # at most this many paired seeds per arm
    half_width: float = 0.005  # the 95% half-width n aims at (0.5 points)


def settings(config: ReproduceConfig) -> Settings:
    if config.full:
        return Settings(
            seeds=config.seeds,
            sweep_seeds=config.seeds,
            extra_modes=("learned", "reference"),
            reference_cnn=True,
            layer_cnn_epochs=None,
            headline_models=("mlp", "cnn"),
            grids=(FULL_GRID, DEFAULT_GRID),  # the CNN: the two-stage search (cost)
            seed_cap=12,
        )
    return Settings(
        seeds=config.seeds,
        sweep_seeds=min(config.seeds, 2),
        layer_cnn=config.dataset != "mnist1d",
        layer_cnn_epochs=None if config.epochs else 4,
    )  # --epochs: every run's


# ----------------------------------------------------------------------------- running


#: The run name (folder prefix) of the authors' settings and the other temperature modes;
#: the normal model and the optimal-temperature sweep run under the zoo's kinds.
AUTHORS = "authors"
#: The reference CNN's normal run (authors' init): its per-layer SNNL* over training.
CNN_NORMAL = "cnn authors-init normal"


@dataclass(frozen=True)
class SettingRun:
    """One run of a setting: its label in the report, its zoo run name (``Kind.NORMAL``
    for alpha 0, ``Kind.ENTANGLED`` for the optimal-temperature sweep, :data:`AUTHORS`
    for the authors' settings and the other temperature modes) and its training config."""

    label: str
    run: str
    config: TrainConfig


def setting_runs(s: Settings, config: ReproduceConfig, seed: int) -> list[SettingRun]:
    """Every run of one seed, normal first (the run name is fixed where the setting is made)."""
    base = recipe(config, Kind.NORMAL, seed)
    out = [SettingRun("normal", Kind.NORMAL.value, base)]
    for alpha in s.alphas:
        run = Kind.NORMAL.value if alpha == 0 else Kind.ENTANGLED.value
        cfg = replace(base, alpha=alpha, temperature_mode="optimal")
        out.append(SettingRun(f"optimal a={alpha:g}", run, cfg))
    authors = dict(alpha=s.authors_alpha, temperature=s.authors_temperature)
    for formula in s.authors_formulas:
        out.append(
            SettingRun(
                f"authors: fixed T={s.authors_temperature:g} a={s.authors_alpha:g} {formula}",
                AUTHORS,
                replace(base, temperature_mode="fixed", snnl_formula=formula, **authors),
            )
        )
    for mode in s.extra_modes:
        for formula in s.authors_formulas:
            out.append(
                SettingRun(
                    f"{mode} T0={s.authors_temperature:g} a={s.authors_alpha:g} {formula}",
                    AUTHORS,
                    replace(base, temperature_mode=mode, snnl_formula=formula, **authors),
                )
            )
    cnn = replace(base, model="cnn", model_kwargs={"init": "authors"})
    if s.reference_cnn or s.layer_cnn:
        epochs = s.layer_cnn_epochs or cnn.epochs
        out.append(SettingRun(CNN_NORMAL, Kind.NORMAL.value, replace(cnn, epochs=epochs)))
    if s.reference_cnn:
        for formula in s.authors_formulas:
            out.append(
                SettingRun(
                    f"cnn authors-init fixed T={s.authors_temperature:g} a={s.authors_alpha:g} "
                    f"{formula}",
                    AUTHORS,
                    replace(cnn, temperature_mode="fixed", snnl_formula=formula, **authors),
                )
            )
    return out


def trained_runs(s: Settings, config: ReproduceConfig) -> list[SettingRun]:
    """Every run the sweep trains: each setting on ``sweep_seeds`` seeds, the normal, the
    entangled and the CNN's normal setting on all ``seeds``."""
    every_seed = ("normal", f"optimal a={s.entangled_alpha:g}", CNN_NORMAL)
    return [
        r
        for seed in range(s.seeds)
        for r in setting_runs(s, config, seed)
        if seed < s.sweep_seeds or r.label in every_seed
    ]


def _run_record(label: str, ref: RunRef, out: Path) -> dict[str, Any]:
    res = ref.results()
    layers = res["layers"]
    hist = res["history"]
    last = hist[-1] if hist else {}
    hidden = [last.get("probe_snnl", {}).get(layer) for layer in layers]
    finite = [v for v in hidden if v is not None]
    initial = res["initial"]
    return {
        "setting": label,
        "alpha": res["config"]["alpha"],
        "mode": res["config"]["temperature_mode"],
        "formula": res["config"]["snnl_formula"],
        "model": res["config"]["model"],
        "seed": ref.seed,
        "dir": str(ref.path.relative_to(out)),
        **outcome(res),
        "epochs_completed": res["final"]["epochs_completed"],
        "layers": layers,
        "bound": res["snnl_upper_bound"],
        "initial_snnl": initial["snnl"],
        "final_snnl": last.get("probe_snnl", {}),
        "mean_hidden_snnl": float(np.mean(finite)) if len(finite) == len(hidden) else None,
        "probe_snnl": [h["probe_snnl"] for h in hist],
        "scale_ratio": [
            {
                layer: (h["probe_scale"][layer] / initial["scale"][layer])
                if h["probe_scale"].get(layer) is not None and initial["scale"][layer]
                else None
                for layer in layers
            }
            for h in hist
        ],
        "seconds": res["timing"]["total_seconds"],
    }


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting: accuracy and SNNL* over healthy runs only, and the health counts."""
    out: dict[str, Any] = {}
    for label in dict.fromkeys(r["setting"] for r in records):
        runs = [r for r in records if r["setting"] == label]
        healthy = [r for r in runs if r["health"] == "ok"]
        counts = {v: sum(r["health"] == v for r in runs) for v in ("ok", "collapsed", "diverged")}
        out[label] = {
            "alpha": runs[0]["alpha"],
            "mode": runs[0]["mode"],
            "formula": runs[0]["formula"],
            "model": runs[0]["model"],
            "health": counts,
            "accuracy_healthy": mean_std([r["test_accuracy"] for r in healthy])
            if healthy
            else None,
            "accuracy_all": [r["test_accuracy"] for r in runs],
            "snnl_healthy": mean_std([r["mean_hidden_snnl"] for r in healthy]) if healthy else None,
            "snnl_all": [r["mean_hidden_snnl"] for r in runs],
            "bound": runs[0]["bound"],
        }
    return out


#: The zoo run name of each arm's paired runs: the normal and entangled arms at the zoo's
#: recipe (lr 1e-3, alpha ENTANGLED_ALPHA) are the zoo's own runs (trained once).
ARM_RUNS = {"normal": Kind.NORMAL.value, "entangled": Kind.ENTANGLED.value, "authors": AUTHORS}

#: Seconds one run takes on one core, per epoch on 4,000 mnist5k training points
#: (measured on this project's 2-core VM; plus RUN_OVERHEAD per run), for estimates.
EPOCH_SECONDS = {
    ("mlp", "normal"): 0.3, ("mlp", "entangled"): 0.9, ("mlp", "authors"): 0.55,
    ("cnn", "normal"): 6.6, ("cnn", "entangled"): 8.6, ("cnn", "authors"): 7.5,
}  # fmt: skip
RUN_OVERHEAD = 1.5
ARM_OF_RUN = {run: arm for arm, run in ARM_RUNS.items()}
#: Training points of the datasets, for :func:`expected_seconds` (others: as mnist5k).
TRAIN_POINTS = {"digits": 1437, "mnist5k": 4000, "mnist": 60000, "fashion-mnist": 60000,
                "cifar10": 50000, "svhn": 73257}  # fmt: skip


def headline_base(config: ReproduceConfig, model: str) -> TrainConfig:
    """The normal run's config (seed 0) the headline of ``model`` starts from: the zoo's
    recipe, with ``model`` (the MLP 256-256-256 or the reference CNN) when it differs."""
    base = recipe(config, Kind.NORMAL, 0)
    if base.model == model:
        return base
    return replace(base, model=model, model_kwargs={"widths": [256, 256, 256]}
                   if model == "mlp" else {})  # fmt: skip


def _tuning_record(c: Candidate, ref: RunRef) -> dict[str, Any]:
    res = ref.results()
    return {
        "candidate": c.to_dict(),
        "seed": ref.seed,
        "name": c.name,
        "validation_accuracy": res["final"].get("validation_accuracy"),
        **outcome(res),
    }


def _seed_plan(runs: dict[str, list[dict[str, Any]]], s: Settings) -> Any:
    """n from the pilot: the paired differences (test accuracy, arm - normal) of the arm
    whose spread is the larger (pairs with a measured value in both arms; an arm with
    fewer than two such pairs gives none)."""
    plans = []
    for arm in ARMS[1:]:
        diffs = [a["test_accuracy"] - n["test_accuracy"]
                 for a, n in zip(runs[arm], runs["normal"], strict=True)
                 if a["test_accuracy"] is not None and n["test_accuracy"] is not None]  # fmt: skip
        if len(diffs) >= 2:
            plans.append(paired_seeds(diffs, half_width=s.half_width,
                                      cap=max(s.seed_cap, s.pilot)))  # fmt: skip
    if not plans:
        raise RuntimeError("the pilot left fewer than two measured pairs in every arm")
    return max(plans, key=lambda p: p.sd)


def _headline(s: Settings, context: Context, model: str, grid: Grid) -> dict[str, Any]:
    """Search each arm on the validation hold-out, then retrain the chosen settings on
    paired seeds: a pilot first, then as many as its spread asks for; the spread is
    re-estimated on every pair trained so far until it asks for no more (or the cap)."""
    zoo = context.zoo
    base = headline_base(context.config, model)
    validation = validation_points(len(zoo.dataset.y_train))

    def search(points: list[Candidate]) -> list[dict[str, Any]]:
        items = [(c, tuning_config(base, c, validation, seed)) for c in points
                 for seed in range(grid.seeds)]  # fmt: skip
        refs = zoo.train_many([(c.name, cfg) for c, cfg in items])
        return [_tuning_record(c, ref) for (c, _), ref in zip(items, refs, strict=True)]

    context.log(f"headline ({model}): tuning on {validation} held-out training points")
    first = stage_one(grid)
    records = search(first)
    second = stage_two(grid, select(records, first))
    records += search(second)
    chosen = select(records, first + second)

    def paired(seeds: range) -> dict[str, list[dict[str, Any]]]:
        items = [(arm, replace(arm_config(base, chosen[arm]), seed=seed))
                 for seed in seeds for arm in ARMS]  # fmt: skip
        refs = zoo.train_many([(ARM_RUNS[arm], cfg) for arm, cfg in items])
        out: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
        for (arm, _), ref in zip(items, refs, strict=True):
            out[arm].append({"seed": ref.seed, "dir": str(ref.path.relative_to(context.out)),
                             **outcome(ref.results())})  # fmt: skip
        return out

    runs = paired(range(s.pilot))
    plan = _seed_plan(runs, s)
    steps = [plan.to_dict()]
    while plan.n > len(runs["normal"]):  # re-estimated on every pair so far, up to the cap
        context.log(
            f"headline ({model}): sd {plan.sd:.4f} over {len(runs['normal'])} seeds -> "
            f"{plan.n} paired seeds ({plan.needed} needed for +-{s.half_width:g})"
        )
        more = paired(range(len(runs["normal"]), plan.n))
        for arm in ARMS:
            runs[arm] += more[arm]
        plan = _seed_plan(runs, s)
        steps.append(plan.to_dict())
    n = len(runs["normal"])
    return {
        "model": model,
        "epochs": base.epochs,
        "validation": validation,
        "grid": asdict(grid),
        "tuning": records,
        "chosen": {arm: chosen[arm].to_dict() for arm in ARMS},
        "pilot_seeds": s.pilot,
        "plan": {**plan.to_dict(), "n": n, "detectable": smallest_detectable_effect(plan.sd, n)},
        "plan_steps": steps,
        "paired": runs,
    }


def _plan_runs(s: Settings, config: ReproduceConfig) -> list[tuple[str, str, int]]:
    """(model, arm, epochs) of every run the experiment trains at most (n at its cap)."""
    out = []
    for model, grid in zip(s.headline_models, s.grids, strict=True):
        epochs = headline_base(config, model).epochs
        points = stage_one(grid)
        arms = [c.arm for c in points]
        if not grid.product:  # stage two: each arm's winner at the other rates
            arms += [arm for arm in ARMS for _ in grid.lrs[1:]]
        out += [(model, arm, epochs) for arm in arms for _ in range(grid.seeds)]
        out += [(model, arm, epochs) for arm in ARMS for _ in range(max(s.seed_cap, s.pilot))]
    base = recipe(config, Kind.NORMAL, 0)
    for r in trained_runs(s, config):
        model = "cnn" if r.config.model == "cnn" else "mlp"
        out.append((model, ARM_OF_RUN[r.run], r.config.epochs or base.epochs))
    return out


def expected_seconds(config: ReproduceConfig) -> float:
    """An upper estimate of experiment "entangle"'s wall time for ``config`` in seconds
    (every run of :func:`settings`, paired seeds at their cap, nothing reused, on
    ``config.workers`` workers (default: the cores, at most 8), from
    :data:`EPOCH_SECONDS` scaled by the training points (mnist5k: 4,000)).

    For ``snnl reproduce --full`` to state its expected time first.

    >>> round(expected_seconds(ReproduceConfig(workers=2)) / 60) < 10
    True
    """
    import os

    s = settings(config)
    n_train = TRAIN_POINTS.get(config.dataset, 4000)
    if config.limit_train:
        n_train = min(n_train, config.limit_train)
    scale = n_train / 4000
    total = sum(
        RUN_OVERHEAD + epochs * EPOCH_SECONDS[(model, arm)] * scale
        for model, arm, epochs in _plan_runs(s, config)
    )
    workers = config.workers or min(os.cpu_count() or 1, 8)
    return total / workers


def run(s: Settings, context: Context) -> dict[str, Any]:
    zoo, out = context.zoo, context.out
    records: list[dict[str, Any]] = []
    entangled_label = f"optimal a={s.entangled_alpha:g}"
    plan = trained_runs(s, context.config)
    refs = zoo.train_many([(r.run, r.config) for r in plan])  # in parallel processes
    for r, ref in zip(plan, refs, strict=True):
        records.append(_run_record(r.label, ref, out))
    normal0, ent0 = zoo.get(Kind.NORMAL, 0), zoo.get(Kind.ENTANGLED, 0)
    layers = normal0.results()["layers"]
    layer = layers[len(layers) // 2]
    data = zoo.dataset
    rng = np.random.default_rng(0)
    pick = np.sort(rng.permutation(len(data.y_test))[: s.projection_points])
    projections = {}
    for name, ref in (("normal", normal0), ("entangled", ent0)):
        acts = capture(ref.load(), data.x_test[pick], [layer])[layer].double().numpy()
        projections[name] = (
            PCA(n_components=2, random_state=0).fit_transform(acts).round(5).tolist()
        )
    return {
        "dataset": data.name,
        "model": normal0.config.model,
        "epochs": normal0.config.epochs,
        "train_config_normal": asdict(normal0.config),
        "entangled_setting": entangled_label,
        "layers": layers,
        "runs": records,
        "summary": _summary(records),
        "projection": {
            "layer": layer,
            "labels": data.y_test[pick].tolist(),
            "points": projections,
        },
        "headline": [
            _headline(s, context, model, grid)
            for model, grid in zip(s.headline_models, s.grids, strict=True)
        ],
    }


# ----------------------------------------------------------------------------- report


def _acc_text(summary: dict[str, Any]) -> str:
    acc = summary["accuracy_healthy"]
    return format_mean_std(acc) if acc else "no healthy run"


def _mean_std_text(values: list[float | None]) -> str:
    """``mean +- std (n=..)`` of the measured values; says so when every run failed."""
    measured = [v for v in values if v is not None]
    return format_mean_std(mean_std(measured)) if measured else "no run measured (all failed)"


def _headline_lines(head: dict[str, Any], results: dict[str, Any]) -> list[str]:
    g, plan = head["grid"], head["plan"]
    sc = scores(head["tuning"])
    search = (
        "the whole product in one stage"
        if g["product"]
        else f"two stages: (1) every alpha (x T) at lr {g['base_lr']:g}, (2) each arm's "
        "stage-1 winner at the other learning rates"
    )
    lines = [
        "",
        f"### Headline on the {head['model']}: tuned against tuned, paired seeds",
        "",
        f"Search on a validation hold-out of {head['validation']} points carved from the "
        "training split (stratified, fixed by the split seed; the test split is never "
        f"looked at), {head['epochs']} epochs, {g['seeds']} seeds per point, {search}. "
        f"Grids: learning rate {', '.join(f'{v:g}' for v in g['lrs'])} (every arm); "
        f"entangled (SNNL at each batch's T*) alpha {', '.join(f'{v:g}' for v in g['alphas'])}"
        f"; authors (T fixed, their exp-then-log formula) alpha "
        f"{', '.join(f'{v:g}' for v in g['authors_alphas'])} x T "
        f"{', '.join(f'{v:g}' for v in g['authors_temperatures'])}. Selection: the highest "
        "mean validation accuracy (failed runs at their measured accuracy).",
        "",
        "| arm | chosen setting | validation accuracy (search seeds) | points searched | "
        "test accuracy (paired seeds) | failure rate (95% CI) |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        c = Candidate.from_dict(head["chosen"][arm])
        runs = head["paired"][arm]
        acc = [r["test_accuracy"] for r in runs if r["test_accuracy"] is not None]
        failed = sum(r["health"] != "ok" for r in runs)
        lines.append(
            f"| {arm} | {c.label} | {_mean_std_text(sc[c]['values'])} | "
            f"{sum(cc.arm == arm for cc in sc)} | {_mean_std_text(acc)} | "
            f"{failure_rate(failed, len(runs)).text()} |"
        )
    cmp = _headline_comparison(head, "entangled")
    iv = cmp.interval
    lines += [
        "",
        f"Paired seeds (same seed = same initialisation and data order in every arm): a "
        f"pilot of {head['pilot_seeds']} seeds, then as many as the spread (sd of the per-seed "
        "test accuracy differences arm - normal, the larger of the two arms, re-estimated on "
        f"every pair so far) asks for a 95% half-width of {plan['half_width']:g}, at most "
        f"{plan['cap']}: "
        + "; ".join(
            f"sd {st['sd']:.4f} over {st['pilot']} pairs -> {st['n']}"
            for st in head.get("plan_steps", [plan])
        )
        + f"; **n = {plan['n']}**"
        + (f" (the cap; {plan['needed']} needed)" if plan["needed"] > plan["n"] else "")
        + ".",
    ]
    if iv is not None:
        lines.append(
            f"Entangled - normal: {iv.estimate:+.4f}, 95% CI [{iv.low:+.4f}, {iv.high:+.4f}], "
            f"half-width achieved **{iv.half_width:.4f}**; the smallest effect n = {plan['n']} "
            f"pairs detect (80% power, at the last spread): **{plan['detectable']:.4f}**; "
            f"verdict **{cmp.verdict}** (margin {MARGIN:g} stated in advance)."
        )
    ent = Candidate.from_dict(head["chosen"]["entangled"])
    if ent.alpha != ENTANGLED_ALPHA or ent.lr != 1e-3:
        lines.append(
            f"The tuned entangled setting ({ent.label}) is not the zoo's recipe (alpha "
            f"{ENTANGLED_ALPHA:g}, lr 0.001): the downstream experiments study the zoo's "
            f"alpha = {ENTANGLED_ALPHA:g} models."
        )
    return lines


def section(results: dict[str, Any], fig_dir: Path) -> Section:
    heads = results.get("headline", [])
    if heads:
        search_figure(heads, fig_dir / "entangle_tuning.png")
    figures = entangle_figures
    figures.sweep_figure(results, fig_dir / "entangle_sweep.png")
    pair = {"normal": "C0", results["entangled_setting"]: "C3"}
    figures.layers_figure(results, fig_dir / "entangle_layers.png", pair, results["model"])
    cnn_fig = []
    if results["model"] != "cnn" and any(r["setting"] == CNN_NORMAL for r in results["runs"]):
        title = "reference CNN (normal, authors' init)"
        figures.layers_figure(results, fig_dir / "entangle_layers_cnn.png", {CNN_NORMAL: "C0"},
                              title)  # fmt: skip
        cnn_fig = [("entangle_layers_cnn.png", "SNNL* of every layer of the reference CNN "
                    "(normal) over training: the per-layer figure on a convolutional "
                    "network")]  # fmt: skip
    figures.scale_figure(results, fig_dir / "entangle_scale.png")
    figures.projection_figure(results, fig_dir / "entangle_projection.png")
    s = results["settings"]
    lines = [
        f"Dataset `{results['dataset']}`, model `{results['model']}`, {results['epochs']} "
        f"epochs, Adam 1e-3, batch 128, {s['seeds']} seed(s) for the normal and the entangled "
        f"setting, {s['sweep_seeds']} for the other settings. Loss = CE - alpha * sum of "
        "hidden-layer SNNL. Default objective (`optimal`): each batch's SNNL at its own "
        "optimal temperature T* (exact search per batch and layer, T held fixed for the "
        "gradient), i.e. SNNL* = min_T SNNL, which cannot be raised by shrinking or "
        "inflating the layer. Authors' setting: alpha = 10, T fixed at 100, with the exact "
        "formula and with the authors' exp-then-log formula (saturating at 11.51).",
        "",
        "| setting | health (ok / collapsed / diverged; failure rate, 95% CI) | "
        "test accuracy (healthy runs) | "
        "per seed | mean hidden SNNL* (healthy) | upper bound |",
        "|---|---|---|---|---|---|",
    ]
    for label, sm in results["summary"].items():
        h = sm["health"]
        per_seed = ", ".join(f"{v:.4f}" if v is not None else "-" for v in sm["accuracy_all"])
        snnl = format_mean_std(sm["snnl_healthy"], 3) if sm["snnl_healthy"] else "-"
        rate = failure_rate(h["collapsed"] + h["diverged"], sum(h.values())).text()
        lines.append(
            f"| {label} | {h['ok']} / {h['collapsed']} / {h['diverged']}; {rate} "
            f"| {_acc_text(sm)} | {per_seed} | {snnl} | {sm['bound']:.3f} |"
        )
    lines += unhealthy_lines(results["runs"], "every mean above")
    ent = results["summary"].get(results["entangled_setting"])
    normal = results["summary"].get("normal")
    lines += [
        "",
        f'**The setting called "entangled" in the later experiments** is '
        f"`{results['entangled_setting']}` (SNNL* objective, alpha = {s['entangled_alpha']:g}), "
        "fixed before this run from a sweep on mnist5k: alpha = 0.01 barely moves SNNL*, "
        "alpha >= 1 costs most of the accuracy or collapses the network; alpha = 0.1 is the "
        "sweep point where hidden-layer SNNL* rises far above the normal model's while "
        "every run stays healthy.",
    ]
    if ent and normal and ent["accuracy_healthy"] and normal["accuracy_healthy"]:
        cost = normal["accuracy_healthy"]["mean"] - ent["accuracy_healthy"]["mean"]
        lines.append(
            f"In this run it reached accuracy {_acc_text(ent)} (normal: {_acc_text(normal)}, "
            f"a cost of {cost:+.4f}) and mean hidden SNNL* "
            f"{format_mean_std(ent['snnl_healthy'], 3)} (normal: "
            f"{format_mean_std(normal['snnl_healthy'], 3)}); health: "
            + ", ".join(f"{n} {v}" for v, n in ent["health"].items())
            + "."
        )
    for head in heads:
        lines += _headline_lines(head, results)
    if heads and "cnn" not in [h["model"] for h in heads]:
        lines += [
            "",
            "The reference CNN's headline runs under `--full` only: one CNN run costs ~45 s "
            "of one core on mnist5k (the MLP ~3 s), and a tuned and paired comparison is "
            "~40 runs (~15 minutes on 2 cores), beyond the default's budget.",
        ]
    tuning_fig = [("entangle_tuning.png", "The search: validation accuracy against alpha "
                   "per arm (log x), chosen settings starred")] if heads else []  # fmt: skip
    return Section(
        title=TITLE,
        markdown="\n".join(lines),
        figures=[
            *tuning_fig,
            ("entangle_sweep.png", "Accuracy and hidden-layer SNNL* per setting and seed"),
            ("entangle_layers.png", "SNNL* of every layer over training, normal and entangled"),
            *cnn_fig,
            ("entangle_scale.png", "Activation scale over training, per setting (seed 0)"),
            ("entangle_projection.png", "2-D PCA projection of a hidden layer, per model"),
        ],
    )


#: "Marginally" stated in advance: an accuracy difference under a quarter of a point
#: (0.0025) is no effect.
MARGIN = 0.0025


def _accuracy_claim(results: dict[str, Any], label: str, what: str) -> Claim:
    """Paired by seed (same initialisation and data order in both arms); collapsed or
    diverged runs count at their measured accuracy, the healthy-only result beside."""
    summary = results["summary"]
    setting = f"{results['dataset']}, {results['model']}, {what}, paired by seed"
    text = (
        "Entangled models marginally outperform their normal counterparts (test accuracy; "
        f"margin stated in advance: a difference under {100 * MARGIN:g} points is no effect)"
    )
    cmp = _paired_accuracy(
        [r for r in results["runs"] if r["setting"] == label],
        [r for r in results["runs"] if r["setting"] == "normal"],
        label=f"test accuracy, {what} - normal",
        arms=("authors" if label.startswith("authors") else "entangled", "normal"),
    )
    measured = f"{_acc_text(summary[label])} vs normal {_acc_text(summary['normal'])}"
    return Claim(text, f"{SOURCE}, Table 1", setting, measured, cmp.verdict, cmp.note, (cmp,))


def _headline_comparison(head: dict[str, Any], arm: str) -> Any:
    """The paired test-accuracy comparison of a tuned arm against the tuned normal arm."""
    return _paired_accuracy(
        head["paired"][arm],
        head["paired"]["normal"],
        label=f"test accuracy, tuned {arm} - tuned normal ({head['model']})",
        arms=(arm, "normal"),
    )


def _paired_accuracy(
    runs: list[dict[str, Any]],
    normal_runs: list[dict[str, Any]],
    *,
    label: str,
    arms: tuple[str, str],
) -> Any:
    """Test accuracy of ``runs`` against ``normal_runs`` on the seeds both have, paired by
    seed, the claim's margin stated in advance; failed runs count (health flags)."""
    normal = {r["seed"]: r for r in normal_runs}
    other = {r["seed"]: r for r in runs}
    seeds = sorted(set(normal) & set(other))
    return compare_paired(
        [other[s]["test_accuracy"] for s in seeds],
        [normal[s]["test_accuracy"] for s in seeds],
        expect="greater",
        margin=MARGIN,
        label=label,
        a_ok=[other[s]["health"] == "ok" for s in seeds],
        b_ok=[normal[s]["health"] == "ok" for s in seeds],
        arms=arms,
    )


def _headline_claims(results: dict[str, Any]) -> list[Claim]:
    out = []
    for head in results.get("headline", []):
        plan = head["plan"]
        for arm, what in (("entangled", "entangled = SNNL* objective"),
                          ("authors", "authors' fixed T and formula")):  # fmt: skip
            cmp = _headline_comparison(head, arm)
            chosen = {a: Candidate.from_dict(c).label for a, c in head["chosen"].items()}
            accs = {
                a: _mean_std_text([r["test_accuracy"] for r in head["paired"][a]])
                for a in (arm, "normal")
            }
            hw = cmp.interval.half_width if cmp.interval is not None else float("nan")
            note = (
                f"{cmp.note}; n = {plan['n']} paired seeds (sd {plan['sd']:.4f}, "
                f"{plan['needed']} needed for +-{plan['half_width']:g}, cap {plan['cap']}); "
                f"half-width achieved {hw:.4f}; smallest detectable effect "
                f"{plan['detectable']:.4f}"
            )
            out.append(
                Claim(
                    "Entangled models marginally outperform their normal counterparts, both "
                    "tuned on a validation split (test accuracy; margin stated in advance: a "
                    f"difference under {100 * MARGIN:g} points is no effect)",
                    f"{SOURCE}, Table 1",
                    f"{results['dataset']}, {head['model']}, {what} ({chosen[arm]}) vs normal "
                    f"({chosen['normal']}), each tuned on {head['validation']} held-out "
                    f"training points, paired by seed",
                    f"{accs[arm]} vs normal {accs['normal']}",
                    cmp.verdict,
                    note,
                    (cmp,),
                )
            )
    return out


def claims(results: dict[str, Any]) -> list[Claim]:
    s = results["settings"]
    if results.get("headline"):  # tuned against tuned replaces the hand-picked alpha
        out = _headline_claims(results)
    else:
        out = [_accuracy_claim(results, results["entangled_setting"],
                               "entangled = SNNL* objective")]  # fmt: skip
    for formula in s["authors_formulas"]:
        label = f"authors: fixed T={s['authors_temperature']:g} a={s['authors_alpha']:g} {formula}"
        out.append(_accuracy_claim(results, label, f"authors' setting, {formula} formula"))
    out += _layer_claims(results, "normal")
    if results["model"] != "cnn" and any(r["setting"] == CNN_NORMAL for r in results["runs"]):
        out += _layer_claims(results, CNN_NORMAL)
    return out


def _layer_claims(results: dict[str, Any], label: str) -> list[Claim]:
    """The per-layer SNNL* claims on the healthy runs of setting ``label`` (the zoo's
    normal model, or the reference CNN's): falls with depth, falls over training."""
    normal = [r for r in results["runs"] if r["setting"] == label and r["health"] == "ok"]
    if len(normal) < 2:
        return []
    layers = normal[0]["layers"]
    model, epochs = normal[0]["model"], len(normal[0]["probe_snnl"])
    what = "normal models" if label == "normal" else f"{label} ({epochs} epochs)"
    setting = f"{results['dataset']}, {model}, {what}, probe subset"
    out: list[Claim] = []
    if len(layers) >= 2:
        first = [r["final_snnl"][layers[0]] for r in normal]
        last = [r["final_snnl"][layers[-1]] for r in normal]
        depth = compare_paired(first, last, expect="greater", label="SNNL*, first - last layer")
        monotone = sum(
            all(
                r["final_snnl"][a] > r["final_snnl"][b]
                for a, b in zip(layers, layers[1:], strict=False)
            )
            for r in normal
        )
        out.append(
            Claim(
                "Hidden-layer SNNL falls with depth: each layer separates classes more than the "
                "one before",
                f"{SOURCE}, sec. 4 (per-layer SNNL figure)",
                setting,
                f"{layers[0]} {format_mean_std(mean_std(first), 3)} vs {layers[-1]} "
                f"{format_mean_std(mean_std(last), 3)}; strictly falling in {monotone} of "
                f"{len(normal)} seeds",
                depth.verdict,
                depth.note,
                (depth,),
            )
        )
        init = [float(np.mean([r["initial_snnl"][x] for x in layers])) for r in normal]
        final = [r["mean_hidden_snnl"] for r in normal]
        fall = compare_paired(init, final, expect="greater", label="SNNL*, initial - final")
        out.append(
            Claim(
                "Hidden-layer SNNL falls over training",
                f"{SOURCE}, sec. 4",
                setting,
                f"mean hidden SNNL* at initialisation {format_mean_std(mean_std(init), 3)} vs "
                f"after training {format_mean_std(mean_std(final), 3)}",
                fall.verdict,
                fall.note,
                (fall,),
            )
        )
    return out
