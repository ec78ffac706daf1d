"""Experiment "selectivity": class selectivity, robustness and dimensionality (Leavitt & Morcos).

Leavitt & Morcos (2020, 2021) regularise the class selectivity index of hidden units,
``loss = CE - alpha * mean_layers mean_units SI`` (alpha < 0 lowers selectivity),
and report that networks with lower selectivity are more robust to average-case
corruptions and less robust to worst-case (FGSM, PGD) perturbations, that
early-layer dimensionality falls as selectivity rises, and that adversarial inputs
raise early-layer dimensionality more than corrupted inputs do.

Models, per seed (the zoo's recipe for the dataset: an MLP 256-256-256 on mnist5k by
default): the zoo's normal model (alpha 0), one model per ``alphas`` value trained
with :class:`snnl.SelectivityRegularizer` on every hidden layer (same initialisation
and data order as the normal model), and the zoo's entangled model (reported beside
them, not part of the selectivity trends). Runs whose health verdict is not "ok" are
reported and left out of every mean and claim.

Per model, on a fixed seeded subset of ``eval_points`` test points:

1. Class selectivity of every unit (:func:`snnl.measures.layer_selectivity`, whole
   test set), the mean per layer and over layers; the run's SNNL* per layer (the
   trainer's final probe profile); test accuracy (whole test set).
2. Corruption accuracy: the unweighted mean accuracy over the ``corruptions`` x
   ``severities`` cells (:func:`snnl.corruptions.corrupt`, each cell seeded from its
   name and severity). The corrupted sets are made once and shared by every model
   (what :func:`snnl.corruptions.corruption_accuracy` computes per model, without
   corrupting the images again for each of the models).
3. FGSM and PGD (L-inf, ``pgd_steps`` steps of 2.5 eps / steps, seeded random start)
   accuracy at every eps of ``eps``.
4. Dimensionality (components for 95% of the variance, :func:`snnl.measures.dimensionality`)
   and participation ratio of every hidden layer on the clean subset, on each corrupted
   copy of it at ``dimensionality_severity`` (the mean over corruptions is "corrupted")
   and on its PGD examples at ``dimensionality_eps`` ("adversarial").
5. The robustness measures divided by the clean accuracy on the same points
   (regularising selectivity also moves clean accuracy): what the robustness claims judge.
6. The input-unit gradient d(unit activation)/d(input) of every hidden layer on the first
   ``gradient_points`` evaluation points: its variance across samples and across units
   (:func:`snnl.measures.input_gradient_variability`).

Claims (:mod:`snnl.experiments.selectivity_claims`, failed runs at their measured values):
per seed the Spearman rank correlation of measured selectivity with relative robustness
over the sweep, interval over seeds: lower selectivity -> more robust to corruptions
(negative), higher selectivity -> more robust to FGSM and PGD (positive); the
input-unit gradient is more variable in the highest- than in the lowest-selectivity run of
each seed (paired by seed). Healthy runs only: first-layer dimensionality falls as
selectivity rises (per-seed least-squares slope); and, paired per seed, adversarial inputs
raise first-layer dimensionality more than corrupted inputs.

Cost of the default (mnist5k, 3 seeds, 6 regularised alphas): 18 sweep runs of about 5 s
CPU each (their trainer monitors a 100-point probe subset, see ``sweep_probe_size``) and
24 models measured at about 2-3 s each (corrupted sets made once), beside the zoo's
normal and entangled runs that the other experiments share; :func:`expected_seconds`.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from snnl.attacks import fgsm, pgd
from snnl.experiments.base import (
    Claim,
    Context,
    Section,
    compare_paired,
    format_mean_std,
    mean_std,
    unhealthy_lines,
)
from snnl.experiments.config import ReproduceConfig
from snnl.experiments.selectivity_claims import (
    SOURCE,
    clean_accuracy_lines,
    gradient_claim,
    gradient_lines,
    relative_robustness_figure,
    robustness_claim,
)
from snnl.experiments.zoo import Kind, RunRef, outcome, recipe
from snnl.measures import (
    accuracy,
    input_gradient_variability,
    layer_selectivity,
    layer_snnl_profile,
    linear_dimensionality,
)
from snnl.taps import capture

NAME = "selectivity"
TITLE = "Class selectivity: robustness to corruptions and attacks, and dimensionality"
INPUT_SETS = ("clean", "corrupted", "adversarial")
ATTACKS = ("fgsm", "pgd")

#: Default corruptions: the MNIST-C ones that cost under ~0.6 s per cell on 1,000
#: 28x28 images here (fog, zigzag, glass blur and canny edges cost 1-7 s a cell and
#: come with --full, which uses all fifteen).
FAST_CORRUPTIONS = (
    "shot_noise",
    "impulse_noise",
    "motion_blur",
    "brightness",
    "shear",
    "scale",
    "rotate",
    "translate",
    "stripe",
    "dotted_line",
    "spatter",
)


@dataclass(frozen=True)
class Settings:
    """What the experiment trains and measures (beyond the zoo's recipe for the dataset)."""

    seeds: int
    # selectivity sweep (alpha 0 = the zoo's normal model); on mnist5k alpha 3 reached about
    # the selectivity of alpha 1 (0.75 vs 0.70) at lower accuracy, so the default stops at 1;
    # seven points with alpha 0 for the per-seed rank correlations
    alphas: tuple[float, ...] = (-3.0, -2.0, -1.0, -0.5, 0.5, 1.0)
    include_entangled: bool = True  # the zoo's entangled models, beside the sweep
    eval_points: int = 500  # seeded test subset for corruptions, attacks, dimensionality
    snnl_points: int = 150  # the first this many of the eval subset for SNNL* per layer
    gradient_points: int = 50  # the first this many for the input-unit gradient variability
    # probe subset of the sweep's runs: the trainer's per-epoch SNNL* profile of 500 probe
    # points costs about 3x the training steps of these runs; it does not change training
    sweep_probe_size: int = 100
    corruptions: tuple[str, ...] = FAST_CORRUPTIONS
    severities: tuple[int, ...] = (1, 3, 5)
    eps: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)  # FGSM and PGD budgets, inputs in [0, 1]
    pgd_steps: int = 10
    dimensionality_eps: float = 0.1  # PGD eps of the adversarial set for dimensionality
    dimensionality_severity: int = 3  # corrupted sets for dimensionality: this severity
    variance: float = 0.95  # share of variance that defines dimensionality
    subset_seed: int = 0

    def __post_init__(self) -> None:
        if self.dimensionality_severity not in self.severities:
            raise ValueError(
                f"dimensionality_severity {self.dimensionality_severity} must be one of the "
                f"severities {self.severities}"
            )
        if 0.0 in self.alphas:
            raise ValueError("alphas must not contain 0: the zoo's normal model is alpha 0")
        if not self.eps or not self.alphas:
            raise ValueError("eps and alphas must not be empty")


def settings(config: ReproduceConfig) -> Settings:
    """The default sweep; ``--full``: a wider sweep, all 15 MNIST-C corruptions, 5 severities."""
    if config.full:
        from snnl.corruptions import corruption_names

        return Settings(
            seeds=config.seeds,
            alphas=(-10.0, -3.0, -1.0, -0.3, 0.3, 1.0, 3.0, 10.0),
            eval_points=1000,
            corruptions=corruption_names("mnist-c"),
            severities=(1, 2, 3, 4, 5),
            eps=(0.02, 0.05, 0.1, 0.15, 0.2, 0.3),
            pgd_steps=20,
        )
    return Settings(seeds=config.seeds)


#: Seconds per training run on mnist5k (4,000 points, the default MLP, one thread on this
#: project's 2-core machine): a sweep run (selectivity regulariser), the zoo's normal and
#: entangled runs; measuring one model at 500 evaluation points; one corruption cell.
#: Measured default (3 seeds, 24 runs trained on 2 workers, nothing reused): training
#: 52 s wall, measuring 41 s (1.7 s a model), 94 s in all; these give 121 s.
SWEEP_RUN_SECONDS, NORMAL_RUN_SECONDS, ENTANGLED_RUN_SECONDS = 4.0, 3.0, 7.0
MEASURE_SECONDS, CELL_SECONDS = 2.5, 0.3
_TRAIN_POINTS = {"digits": 1437, "mnist5k": 4000}


def expected_seconds(config: ReproduceConfig) -> float:
    """An upper estimate of experiment "selectivity"'s wall time for ``config`` in seconds:
    every run of its plan trained (nothing reused; ``config.workers`` parallel workers,
    default the cores, at most 8), scaled by the training points (mnist5k: 4,000) and
    epochs (8), then every model measured in turn (scaled by the evaluation points).

    >>> round(expected_seconds(ReproduceConfig(workers=2)))
    121
    """
    import os

    s = settings(config)
    n_train = _TRAIN_POINTS.get(config.dataset, 60000)
    if config.limit_train:
        n_train = min(n_train, config.limit_train)
    cfg = recipe(config, Kind.NORMAL, 0)
    scale = n_train / 4000 * cfg.epochs / 8 * (1 if cfg.model == "mlp" else 20)
    per_seed = len(s.alphas) * SWEEP_RUN_SECONDS + NORMAL_RUN_SECONDS + ENTANGLED_RUN_SECONDS
    workers = config.workers or min(os.cpu_count() or 1, 8)
    train = s.seeds * per_seed * scale / workers
    models = s.seeds * (len(s.alphas) + 1 + s.include_entangled)
    measure = models * MEASURE_SECONDS * s.eval_points / 500 * (1 if cfg.model == "mlp" else 10)
    cells = len(s.corruptions) * len(s.severities) * CELL_SECONDS * s.eval_points / 500
    return train + measure + cells


# ----------------------------------------------------------------------------- measuring


def setting_label(alpha: float) -> str:
    """Name of a sweep setting: ``"normal"`` for alpha 0, else ``"a=<alpha>"``.

    >>> setting_label(0.0), setting_label(-3.0), setting_label(0.3)
    ('normal', 'a=-3', 'a=0.3')
    """
    return "normal" if alpha == 0 else f"a={alpha:g}"


def _cell_seed(name: str, severity: int, seed: int) -> int:
    return zlib.crc32(f"{name}/{severity}/{seed}".encode())


def corrupted_sets(
    x: Tensor, names: tuple[str, ...], severities: tuple[int, ...], seed: int = 0
) -> dict[str, Tensor]:
    """Every (corruption, severity) cell of ``x`` (N, C, H, W), keyed ``"name/severity"``.

    Each cell has its own generator seeded from (name, severity, seed), so a cell does
    not depend on which others are asked for.
    """
    from snnl.corruptions import corrupt

    out: dict[str, Tensor] = {}
    for name in names:
        for s in severities:
            g = torch.Generator().manual_seed(_cell_seed(name, s, seed))
            out[f"{name}/{s}"] = corrupt(x, name, s, generator=g)
    return out


def least_squares_slope(x: list[float], y: list[float]) -> float:
    """Slope of the least-squares line of ``y`` on ``x`` (at least two distinct x).

    >>> least_squares_slope([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
    2.0
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.size < 2 or np.ptp(xa) == 0:
        raise ValueError(f"need at least two distinct x values, got {x}")
    xc = xa - xa.mean()
    return float((xc * (ya - ya.mean())).sum() / (xc * xc).sum())


def snnl_profile(model: nn.Module, x: Tensor, y: Tensor, layers: list[str]) -> dict[str, float]:
    """SNNL* = min_T SNNL of every layer and the logits on a small set
    (:func:`snnl.measures.layer_snnl_profile`)."""
    return layer_snnl_profile(model, x, y, layers)[0]


def _layer_dims(
    model: nn.Module, x: Tensor, layers: list[str], variance: float
) -> tuple[dict[str, int], dict[str, float]]:
    acts = capture(model, x, layers)
    both = {n: linear_dimensionality(a, variance) for n, a in acts.items()}
    return {n: d for n, (d, _) in both.items()}, {n: r for n, (_, r) in both.items()}


def evaluate_model(
    model: nn.Module,
    layers: list[str],
    data: dict[str, Tensor],
    cells: dict[str, Tensor],
    s: Settings,
) -> dict[str, Any]:
    """Every measure of the experiment for one trained model (see the module docstring).

    ``data`` holds ``x_test``/``y_test`` (selectivity) and ``x``/``y`` (the eval subset);
    ``cells`` the corrupted eval subsets (may be empty: corruptions skipped).
    """
    x, y = data["x"], data["y"]
    si = layer_selectivity(model, data["x_test"], data["y_test"], layers)
    selectivity = {n: float(v.mean()) for n, v in si.items()}
    record: dict[str, Any] = {
        "selectivity": selectivity,
        "mean_selectivity": float(np.mean(list(selectivity.values()))),
        "eval_accuracy": accuracy(model, x, y),
        "snnl": snnl_profile(model, x[: s.snnl_points], y[: s.snnl_points], layers),
    }
    if cells:
        table = {key: accuracy(model, xc, y) for key, xc in cells.items()}
        record["corruption"] = {"mean": float(np.mean(list(table.values()))), "cells": table}
    adversarial: dict[str, dict[str, float]] = {a: {} for a in ATTACKS}
    x_dim_adv = None
    for eps in s.eps:
        x_fgsm = fgsm(model, x, y, eps)
        adversarial["fgsm"][f"{eps:g}"] = accuracy(model, x_fgsm, y)
        g = torch.Generator().manual_seed(_cell_seed("pgd", 0, s.subset_seed))
        x_pgd = pgd(model, x, y, eps, 2.5 * eps / s.pgd_steps, s.pgd_steps, generator=g)
        adversarial["pgd"][f"{eps:g}"] = accuracy(model, x_pgd, y)
        if eps == s.dimensionality_eps:
            x_dim_adv = x_pgd
    if x_dim_adv is None:
        g = torch.Generator().manual_seed(_cell_seed("pgd", 0, s.subset_seed))
        eps = s.dimensionality_eps
        x_dim_adv = pgd(model, x, y, eps, 2.5 * eps / s.pgd_steps, s.pgd_steps, generator=g)
    record.update(adversarial)
    record["input_gradient"] = input_gradient_variability(model, x[: s.gradient_points], layers)
    record["fgsm_mean"] = float(np.mean(list(adversarial["fgsm"].values())))
    record["pgd_mean"] = float(np.mean(list(adversarial["pgd"].values())))
    clean = record["eval_accuracy"]
    for key in ("fgsm_mean", "pgd_mean"):
        record[key.replace("_mean", "_relative")] = record[key] / clean if clean > 0 else None
    if cells:
        mean = record["corruption"]["mean"]
        record["corruption_relative"] = mean / clean if clean > 0 else None
    dims: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, float]] = {}
    dims["clean"], ratios["clean"] = _layer_dims(model, x, layers, s.variance)
    dims["adversarial"], ratios["adversarial"] = _layer_dims(model, x_dim_adv, layers, s.variance)
    suffix = f"/{s.dimensionality_severity}"
    if any(key.endswith(suffix) for key in cells):
        per = {
            key.removesuffix(suffix): _layer_dims(model, xc, layers, s.variance)
            for key, xc in cells.items()
            if key.endswith(suffix)
        }
        dims["corrupted"] = {n: float(np.mean([d[n] for d, _ in per.values()])) for n in layers}
        ratios["corrupted"] = {n: float(np.mean([r[n] for _, r in per.values()])) for n in layers}
        record["dimensionality_by_corruption"] = {name: d for name, (d, _) in per.items()}
    record["dimensionality"] = {k: dims[k] for k in INPUT_SETS if k in dims}
    record["participation_ratio"] = {k: ratios[k] for k in INPUT_SETS if k in ratios}
    return record


def _eval_subset(n: int, size: int, seed: int) -> Tensor:
    if n <= size:
        return torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:size].sort().values


def _skip_reasons(x: Tensor) -> dict[str, str]:
    reasons: dict[str, str] = {}
    if x.dim() != 4 or min(x.shape[-2:]) < 8:
        reasons["corruptions"] = f"inputs {tuple(x.shape[1:])} are not images of side >= 8"
    return reasons


def _runs(s: Settings, context: Context) -> list[tuple[str, str, float, RunRef]]:
    """(setting, kind, alpha, run) for every seed: normal, the sweep, then entangled."""
    zoo = context.zoo
    sweep = [
        (
            seed,
            alpha,
            replace(
                recipe(context.config, Kind.NORMAL, seed),
                selectivity_alpha=alpha,
                probe_size=s.sweep_probe_size,
            ),
        )
        for seed in range(s.seeds)
        for alpha in s.alphas
    ]
    refs = iter(zoo.train_many([("selectivity", cfg) for _, _, cfg in sweep]))  # in parallel
    out: list[tuple[str, str, float, RunRef]] = []
    for seed in range(s.seeds):
        out.append(("normal", "normal", 0.0, zoo.get(Kind.NORMAL, seed)))
        for alpha in s.alphas:
            out.append((setting_label(alpha), "selectivity", alpha, next(refs)))
        if s.include_entangled:
            out.append(("entangled", "entangled", 0.0, zoo.get(Kind.ENTANGLED, seed)))
    return out


def run(s: Settings, context: Context) -> dict[str, Any]:
    started, cpu_started = time.perf_counter(), time.process_time()
    runs = _runs(s, context)
    trained_at, cpu_trained_at = time.perf_counter(), time.process_time()
    data = context.zoo.dataset
    pick = _eval_subset(len(data.y_test), s.eval_points, s.subset_seed)
    x, y = data.x_test[pick], data.y_test[pick]
    skipped = _skip_reasons(x)
    cells = {} if "corruptions" in skipped else corrupted_sets(x, s.corruptions, s.severities)
    tensors = {"x": x, "y": y, "x_test": data.x_test, "y_test": data.y_test}
    records: list[dict[str, Any]] = []
    layers: list[str] = []
    for setting, kind, alpha, ref in runs:
        res = ref.results()
        layers = list(res["layers"])
        context.log(f"selectivity: measuring {ref.path.name}")
        record = {
            "setting": setting,
            "kind": kind,
            "alpha": alpha,
            "seed": ref.seed,
            "dir": str(ref.path.relative_to(context.out)),
            **outcome(res),
            "train_seconds": res["timing"]["total_seconds"],
        }
        record.update(evaluate_model(ref.load(), layers, tensors, cells, s))
        records.append(record)
    ended, cpu_ended = time.perf_counter(), time.process_time()
    first = runs[0][3]
    return {
        "dataset": data.name,
        "model": first.config.model,
        "epochs": first.config.epochs,
        "layers": layers,
        "eval_points": int(len(pick)),
        "cells": list(cells),
        "skipped": skipped,
        "runs": records,
        "summary": _summary(records, layers),
        "timing": {
            "train_or_load_seconds": trained_at - started,
            "measure_seconds": ended - trained_at,
            "train_or_load_cpu_seconds": cpu_trained_at - cpu_started,
            "measure_cpu_seconds": cpu_ended - cpu_trained_at,
            "train_seconds_sweep": sum(
                r["train_seconds"] for r in records if r["kind"] == "selectivity"
            ),
        },
    }


# ----------------------------------------------------------------------------- summaries


def _healthy(records: list[dict[str, Any]], setting: str) -> list[dict[str, Any]]:
    return [r for r in records if r["setting"] == setting and r["health"] == "ok"]


def _settings_order(records: list[dict[str, Any]]) -> list[str]:
    """Sweep settings by alpha (normal at 0), then entangled."""
    sweep = sorted(
        {(r["alpha"], r["setting"]) for r in records if r["kind"] != "entangled"},
        key=lambda t: t[0],
    )
    out = [label for _, label in sweep]
    if any(r["kind"] == "entangled" for r in records):
        out.append("entangled")
    return out


def _summary(records: list[dict[str, Any]], layers: list[str]) -> dict[str, Any]:
    """Per setting: mean +- std over healthy runs of every headline measure."""
    out: dict[str, Any] = {}
    for setting in _settings_order(records):
        runs = [r for r in records if r["setting"] == setting]
        ok = _healthy(records, setting)
        entry: dict[str, Any] = {
            "alpha": runs[0]["alpha"],
            "kind": runs[0]["kind"],
            "health": {
                v: sum(r["health"] == v for r in runs) for v in ("ok", "collapsed", "diverged")
            },
        }
        if ok:
            entry["mean_selectivity"] = mean_std([r["mean_selectivity"] for r in ok])
            entry["selectivity"] = {n: mean_std([r["selectivity"][n] for r in ok]) for n in layers}
            entry["test_accuracy"] = mean_std([r["test_accuracy"] for r in ok])
            entry["eval_accuracy"] = mean_std([r["eval_accuracy"] for r in ok])
            if "corruption" in ok[0]:
                entry["corruption"] = mean_std([r["corruption"]["mean"] for r in ok])
            for key in ("corruption_relative", "fgsm_relative", "pgd_relative"):
                values = [r.get(key) for r in ok]
                if all(v is not None for v in values):
                    entry[key] = mean_std(values)
            for attack in ATTACKS:
                entry[f"{attack}_mean"] = mean_std([r[f"{attack}_mean"] for r in ok])
                entry[attack] = {e: mean_std([r[attack][e] for r in ok]) for e in ok[0][attack]}
            entry["dimensionality"] = {
                kind: {n: mean_std([r["dimensionality"][kind][n] for r in ok]) for n in layers}
                for kind in ok[0]["dimensionality"]
            }
            entry["snnl"] = {
                n: mean_std([r["snnl"][n] for r in ok])
                for n in [*layers, "logits"]
                if all(r["snnl"].get(n) is not None for r in ok)
            }
        out[setting] = entry
    return out


def _per_seed_slopes(results: dict[str, Any], measure: Any) -> tuple[list[float], str]:
    """Per seed: slope of ``measure(run)`` against mean selectivity over healthy sweep runs."""
    sweep = [r for r in results["runs"] if r["kind"] != "entangled" and r["health"] == "ok"]
    slopes: list[float] = []
    notes: list[str] = []
    for seed in sorted({r["seed"] for r in sweep}):
        pairs = [(r["mean_selectivity"], measure(r)) for r in sweep if r["seed"] == seed]
        pairs = [(x, float(v)) for x, v in pairs if v is not None]
        xs = [x for x, _ in pairs]
        if len(pairs) < 3 or np.ptp(xs) == 0:
            notes.append(f"seed {seed}: {len(pairs)} healthy sweep runs, no slope")
            continue
        slopes.append(least_squares_slope(xs, [v for _, v in pairs]))
    return slopes, "; ".join(notes)


def _unhealthy_note(results: dict[str, Any]) -> str:
    bad = [r for r in results["runs"] if r["health"] != "ok" and r["kind"] != "entangled"]
    return f"; {len(bad)} unhealthy sweep run(s) left out" if bad else ""


def _slope_claim(
    results: dict[str, Any],
    claim: str,
    what: str,
    measure: Any,
    expect: str,
) -> Claim:
    """Verdict on the per-seed slopes of ``measure`` against mean selectivity (healthy runs)."""
    slopes, note = _per_seed_slopes(results, measure)
    setting = (
        f"{results['dataset']}, {results['model']}, selectivity sweep "
        f"(alpha {', '.join(f'{r:g}' for r in _alphas(results))})"
    )
    sel = [
        results["summary"][k]["mean_selectivity"]["mean"]
        for k in results["summary"]
        if k != "entangled" and "mean_selectivity" in results["summary"][k]
    ]
    span = f"mean selectivity {min(sel):.3f} to {max(sel):.3f}" if sel else "no healthy runs"
    if len(slopes) < 2:
        measured = f"slopes {slopes}; {span}"
        return Claim(
            claim, SOURCE, setting, measured, "inconclusive", note or "fewer than two seeds"
        )
    cmp = compare_paired(slopes, [0.0] * len(slopes), expect=expect, label=f"slope of {what}")
    verdict, rule_note = cmp
    measured = (
        f"slope of {what} against mean selectivity {format_mean_std(mean_std(slopes), 3)} "
        f"over seeds; {span}"
    )
    note = rule_note + _unhealthy_note(results)
    return Claim(claim, SOURCE, setting, measured, verdict, note, (cmp,))  # type: ignore[arg-type]


def _alphas(results: dict[str, Any]) -> list[float]:
    return sorted({r["alpha"] for r in results["runs"] if r["kind"] != "entangled"})


def _dimension_increase_claim(results: dict[str, Any]) -> Claim:
    layer = results["layers"][0]
    claim = "Adversarial inputs raise early-layer dimensionality more than corrupted inputs do"
    setting = (
        f"{results['dataset']}, {results['model']}, layer {layer}, healthy sweep models "
        f"(averaged per seed), PGD eps {results['settings']['dimensionality_eps']:g} vs the "
        "mixed corrupted set"
    )
    sweep = [r for r in results["runs"] if r["kind"] != "entangled" and r["health"] == "ok"]
    if not sweep or "corrupted" not in sweep[0]["dimensionality"]:
        return Claim(claim, SOURCE, setting, "-", "inconclusive", "corruptions were skipped")
    adv: list[float] = []
    cor: list[float] = []
    for seed in sorted({r["seed"] for r in sweep}):
        mine = [r for r in sweep if r["seed"] == seed]
        d = [r["dimensionality"] for r in mine]
        adv.append(float(np.mean([v["adversarial"][layer] - v["clean"][layer] for v in d])))
        cor.append(float(np.mean([v["corrupted"][layer] - v["clean"][layer] for v in d])))
    measured = (
        f"increase over clean: adversarial {format_mean_std(mean_std(adv), 1)} vs corrupted "
        f"{format_mean_std(mean_std(cor), 1)} components"
    )
    if len(adv) < 2:
        return Claim(claim, SOURCE, setting, measured, "inconclusive", "fewer than two seeds")
    cmp = compare_paired(adv, cor, expect="greater", label="dimension increase, adv - cor")
    note = cmp.note + _unhealthy_note(results)
    return Claim(claim, SOURCE, setting, measured, cmp.verdict, note, (cmp,))


def claims(results: dict[str, Any]) -> list[Claim]:
    first = results["layers"][0]
    out: list[Claim] = []
    if not results["skipped"].get("corruptions"):
        out.append(robustness_claim(results, "corruption"))
    out += [robustness_claim(results, "fgsm"), robustness_claim(results, "pgd")]
    out.append(gradient_claim(results))
    out.append(
        _slope_claim(
            results,
            "Early-layer dimensionality falls as class selectivity rises",
            f"{first} dimensionality (clean, {results['settings']['variance']:.0%} variance)",
            lambda r: r["dimensionality"]["clean"][first],
            "less",
        )
    )
    if not results["skipped"].get("corruptions"):
        out.append(_dimension_increase_claim(results))
    return out


# ----------------------------------------------------------------------------- report


def _fmt(stats: dict[str, Any] | None, digits: int = 3) -> str:
    if not stats:
        return "-"
    return f"{stats['mean']:.{digits}f} +- {stats['std']:.{digits}f}"


def _setting_colors(results: dict[str, Any]) -> dict[str, Any]:
    """One colour per setting: the sweep by alpha along viridis, entangled black."""
    from snnl.figures import plt

    sweep = [k for k in _settings_order(results["runs"]) if k != "entangled"]
    cmap = plt.get_cmap("viridis")
    colors: dict[str, Any] = {
        k: cmap(i / max(len(sweep) - 1, 1) * 0.9) for i, k in enumerate(sweep)
    }
    colors["entangled"] = "k"
    return colors


def _robustness_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    panels = [
        ("test_accuracy", "test accuracy"),
        ("fgsm_mean", "FGSM accuracy (mean over eps)"),
        ("pgd_mean", "PGD accuracy (mean over eps)"),
    ]
    if not results["skipped"].get("corruptions"):
        panels.insert(1, ("corruption", "corruption accuracy (mean over cells)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    colors = _setting_colors(results)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for setting, color in colors.items():
            for r in (r for r in results["runs"] if r["setting"] == setting):
                v = r[key]["mean"] if key == "corruption" else r[key]
                marker = "^" if setting == "entangled" else "o"
                if r["health"] != "ok":
                    marker, color = "x", "C3"
                ax.scatter(r["mean_selectivity"], v, s=22, zorder=3, marker=marker, color=color)
        ax.set_xlabel("mean class selectivity (test set)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], marker="^" if k == "entangled" else "o", ls="", color=c, label=k)
        for k, c in colors.items()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8)
    fig.suptitle(
        f"Robustness against class selectivity ({results['dataset']}, {results['model']}; "
        "one point per model, red x: unhealthy run)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    save_figure(fig, path)


def _attack_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    summary = results["summary"]
    colors = _setting_colors(results)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, attack in zip(axes, ATTACKS, strict=True):
        for setting, entry in summary.items():
            if attack not in entry:
                continue
            eps = [float(e) for e in entry[attack]]
            mean = [entry[attack][e]["mean"] for e in entry[attack]]
            std = [entry[attack][e]["std"] for e in entry[attack]]
            ax.errorbar(
                eps,
                mean,
                yerr=std,
                color=colors[setting],
                marker="^" if setting == "entangled" else "o",
                ms=3,
                capsize=2,
                ls="--" if setting == "entangled" else "-",
                label=f"{setting} (SI {entry['mean_selectivity']['mean']:.2f})",
            )
        ax.set_xlabel("eps (L-inf, inputs in [0, 1])")
        ax.set_ylabel("accuracy")
        ax.set_title(attack.upper(), fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(frameon=False, fontsize=7)
    fig.suptitle("Accuracy under attack, mean +- std over healthy seeds", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _dimensionality_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    layers = results["layers"]
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers), 3.3), squeeze=False)
    colors = {"clean": "C0", "corrupted": "C2", "adversarial": "C3"}
    sweep = [r for r in results["runs"] if r["kind"] != "entangled" and r["health"] == "ok"]
    for ax, layer in zip(axes[0], layers, strict=True):
        for kind, color in colors.items():
            pts = [
                (r["mean_selectivity"], r["dimensionality"][kind][layer])
                for r in sweep
                if kind in r["dimensionality"]
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.scatter(xs, ys, s=16, color=color, label=kind)
        ax.set_title(layer, fontsize=10)
        ax.set_xlabel("mean class selectivity")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(f"components for {results['settings']['variance']:.0%} variance")
    axes[0, 0].legend(frameon=False, fontsize=8)
    fig.suptitle(
        "Dimensionality of each hidden layer on clean, corrupted and adversarial inputs "
        "(sweep models)",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)


def _peaks_text(results: dict[str, Any]) -> str:
    """Where along the sweep each headline measure is highest (trends need not be monotone)."""
    sweep = {
        k: e for k, e in results["summary"].items() if k != "entangled" and "test_accuracy" in e
    }
    first = results["layers"][0]
    measures = {
        "test accuracy": lambda e: e["test_accuracy"]["mean"],
        "corruption accuracy": lambda e: e["corruption"]["mean"] if "corruption" in e else None,
        "FGSM accuracy": lambda e: e["fgsm_mean"]["mean"],
        "PGD accuracy": lambda e: e["pgd_mean"]["mean"],
        f"{first} dimensionality (clean)": lambda e: e["dimensionality"]["clean"][first]["mean"],
    }
    parts = []
    for name, get in measures.items():
        values = {k: get(e) for k, e in sweep.items()}
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            parts.append(f"{name} at {max(values, key=values.__getitem__)}")
    order = ", ".join(sweep)
    return (
        f"Along the sweep ({order}, by alpha) the highest mean is reached by: "
        + "; ".join(parts)
        + ". A peak inside the sweep means the trend is not monotone: the robustness claims "
        "below use rank correlations, the dimensionality claim one straight line per seed."
    )


def section(results: dict[str, Any], fig_dir: Path) -> Section:
    s = results["settings"]
    _robustness_figure(results, fig_dir / "selectivity_robustness.png")
    _attack_figure(results, fig_dir / "selectivity_attacks.png")
    _dimensionality_figure(results, fig_dir / "selectivity_dimensionality.png")
    relative_robustness_figure(results, fig_dir / "selectivity_relative_robustness.png")
    layers = results["layers"]
    first = layers[0]
    corr = not results["skipped"].get("corruptions")
    lines = [
        f"Dataset `{results['dataset']}`, model `{results['model']}` ({results['epochs']} "
        f"epochs, the zoo's recipe), {s['seeds']} seed(s). Loss = CE - alpha * mean over "
        "hidden layers of the mean unit class selectivity SI = (mu_max - mu_-max) / "
        "(mu_max + mu_-max + 1e-7), per mini-batch; alpha 0 is the zoo's normal model. "
        f"Measured on {results['eval_points']} seeded test points: "
        + (
            f"corruption accuracy = mean over {len(results['cells'])} cells "
            f"({len(s['corruptions'])} corruptions x severities "
            f"{', '.join(map(str, s['severities']))}); "
            if corr
            else f"corruptions skipped ({results['skipped']['corruptions']}); "
        )
        + f"FGSM and PGD (L-inf, {s['pgd_steps']} steps) at eps "
        f"{', '.join(f'{e:g}' for e in s['eps'])}, reported as the mean over eps; "
        f"dimensionality = principal components for {s['variance']:.0%} of the variance "
        "on the clean points, on their corrupted copies at severity "
        f"{s['dimensionality_severity']} (mean over corruptions) and on their PGD examples at "
        f"eps {s['dimensionality_eps']:g}. Selectivity is on the whole test set; SNNL* on the "
        f"first {s['snnl_points']} evaluation points. The entangled models are the zoo's "
        "(shown beside the sweep, not part of its trends).",
        "",
        "| setting | health ok | mean SI | test accuracy | "
        + ("corruption acc. | " if corr else "")
        + f"FGSM acc. | PGD acc. | {first} dim. clean / corr. / adv. | "
        f"{first} SNNL* |",
        "|---|---|---|---|" + ("---|" if corr else "") + "---|---|---|---|",
    ]
    for setting, e in results["summary"].items():
        n = sum(e["health"].values())
        if "mean_selectivity" not in e:
            lines.append(
                f"| {setting} | 0 / {n} | - | - |" + (" - |" if corr else "") + " - | - | - | - |"
            )
            continue
        dims = e["dimensionality"]
        dim_text = " / ".join(
            f"{dims[k][first]['mean']:.1f}" if k in dims else "-" for k in INPUT_SETS
        )
        lines.append(
            f"| {setting} | {e['health']['ok']} / {n} | {_fmt(e['mean_selectivity'])} | "
            f"{_fmt(e['test_accuracy'])} | "
            + (f"{_fmt(e.get('corruption'))} | " if corr else "")
            + f"{_fmt(e['fgsm_mean'])} | {_fmt(e['pgd_mean'])} | {dim_text} | "
            f"{_fmt(e['snnl'].get(first))} |"
        )
    lines += [
        "",
        "Per-layer selectivity and dimensionality (clean / corrupted / adversarial), mean over "
        "healthy seeds:",
        "",
        "| setting | " + " | ".join(f"{n} SI | {n} dim." for n in layers) + " |",
        "|---|" + "---|---|" * len(layers),
    ]
    for setting, e in results["summary"].items():
        if "mean_selectivity" not in e:
            continue
        cells = []
        for n in layers:
            dims = " / ".join(
                f"{e['dimensionality'][k][n]['mean']:.1f}" if k in e["dimensionality"] else "-"
                for k in INPUT_SETS
            )
            cells.append(f"{e['selectivity'][n]['mean']:.3f} | {dims}")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    lines += ["", _peaks_text(results)]
    lines += [
        "",
        "Regularising selectivity also moves clean accuracy, so robustness is shown relative "
        "to the clean accuracy on the same evaluation points as well:",
        "",
        "| setting | clean acc. (eval points) | "
        + ("corruption / clean | " if corr else "")
        + "FGSM / clean | PGD / clean |",
        "|---|---|" + ("---|" if corr else "") + "---|---|",
    ]
    for setting, e in results["summary"].items():
        if "mean_selectivity" not in e:
            continue
        lines.append(
            f"| {setting} | {_fmt(e.get('eval_accuracy'))} | "
            + (f"{_fmt(e.get('corruption_relative'))} | " if corr else "")
            + f"{_fmt(e.get('fgsm_relative'))} | {_fmt(e.get('pgd_relative'))} |"
        )
    lines += ["", *clean_accuracy_lines(results), "", *gradient_lines(results)]
    lines += unhealthy_lines(
        results["runs"],
        "the means above and the dimensionality claims; the robustness and "
        "gradient claims count them at their measured values",
    )
    t = results["timing"]
    lines += [
        "",
        f"Cost of this run: training or loading the runs {t['train_or_load_seconds']:.1f} s "
        f"wall, {t['train_or_load_cpu_seconds']:.1f} s CPU (the sweep's own training "
        f"{t['train_seconds_sweep']:.1f} s wall); measuring {t['measure_seconds']:.1f} s wall, "
        f"{t['measure_cpu_seconds']:.1f} s CPU.",
    ]
    return Section(
        title=TITLE,
        markdown="\n".join(lines),
        figures=[
            (
                "selectivity_robustness.png",
                "Accuracy, corruption and attack robustness against "
                "mean class selectivity, one point per model",
            ),
            ("selectivity_attacks.png", "FGSM and PGD accuracy over eps per setting"),
            (
                "selectivity_relative_robustness.png",
                "Robustness relative to clean accuracy against measured selectivity, one line "
                "per seed (the robustness claims' per-seed Spearman rho in the legends)",
            ),
            (
                "selectivity_dimensionality.png",
                "Per-layer dimensionality on clean, corrupted "
                "and adversarial inputs against selectivity",
            ),
        ],
    )
