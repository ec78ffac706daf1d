"""Experiment "dknn": DkNN credibility of normal and entangled models on odd inputs.

Frosst, Papernot & Hinton (2019, sec. 5) report that entangled models give DkNN
credibility that is better calibrated on outliers (notMNIST for an MNIST model) and on
FGSM adversarial examples, and that outliers have fewer than the usual number of
hidden-layer neighbours from their predicted class; Papernot & McDaniel (2018) report
that DkNN credibility on outliers is far below softmax confidence. This experiment
studies the zoo's normal and entangled model of every seed.

Per model (runs whose health is not "ok" are listed and not studied):

1. DkNN (Papernot & McDaniel 2018) over every hidden layer and the logits, cosine
   search (centred, L2-normalised, as the paper), fitted on the training set, with the
   paper's k scaled to this training set: the paper used k = 75 for 60,000 MNIST
   training points, so ``k = round(75 * n_train / 60,000)``, at least 1
   (:func:`choose_k`; 5 for the 4,000 points of mnist5k).
2. Calibration on a seeded subset of the test set of the paper's size scaled the same
   way: 750 points for 60,000, so ``round(750 * n_train / 60,000)``, at least one per
   class and at most half the test set (:func:`calibration_size`; 50 for mnist5k); the
   rest of the test set is the clean evaluation set (:func:`split_calibration`).
3. Input sets, each as large as the clean evaluation set: ``clean``; ``fgsm`` (FGSM,
   ``eps`` in input units, crafted on the same model from the clean points);
   ``letters`` (generated letters, the offline stand-in for notMNIST); ``rotated``
   (test digits rotated 45 degrees); ``notmnist`` (the real set, only when
   ``--data-dir`` holds it).
4. Per set: mean DkNN credibility, mean softmax confidence
   (:func:`snnl.measures.softmax_confidence`), the agreement signal (mean over layers of
   the fraction of calibration points whose number of neighbours from their predicted
   class is <= the input's; small = unusual), the mean number of the k neighbours from
   the predicted class per layer, and the accuracy of DkNN and softmax where labels exist.
5. AUROC of telling each odd set from clean data (:func:`snnl.measures.auroc`, 1 =
   separated, 0.5 = chance) per score; reliability bins and expected calibration error
   (:func:`snnl.measures.reliability`) of credibility and softmax confidence on the clean
   and on the FGSM inputs.
6. The detectors the field uses beside DkNN credibility, and the clean / odd separation
   in the hidden layers (SNNL*): :mod:`snnl.experiments.dknn_detectors`.

Reported: every number as mean +- std over the healthy seeds, each seed's numbers, and
the claims (``claims``) with verdicts by :func:`snnl.experiments.base.compare_groups` /
:func:`~snnl.experiments.base.compare_paired`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from snnl.attacks import fgsm
from snnl.data import DataSplits, load_outliers
from snnl.dknn import (
    PAPER_CALIBRATION,
    PAPER_K,
    PAPER_TRAIN,
    DkNN,
    calibration_size,
    choose_k,
)
from snnl.experiments.base import (
    Claim,
    Context,
    Section,
    compare_groups,
    compare_paired,
    format_mean_std,
    mean_std,
)
from snnl.experiments.config import ReproduceConfig
from snnl.experiments.dknn_detectors import claims as detector_claims
from snnl.experiments.dknn_detectors import detector_figure, section_lines, study_detectors
from snnl.experiments.dknn_detectors import summary as detector_summary
from snnl.experiments.zoo import Kind, outcome
from snnl.measures import auroc, reliability, softmax_confidence
from snnl.taps import resolve_layers

NAME = "dknn"
TITLE = "DkNN credibility on outliers and adversarial examples"
SOURCE = "Frosst, Papernot & Hinton 2019, sec. 5"
DKNN_SOURCE = "Papernot & McDaniel 2018, sec. 6"
KINDS = (Kind.NORMAL.value, Kind.ENTANGLED.value)
SCORES = ("credibility", "softmax", "agreement")
LABELLED = ("clean", "fgsm")
OUTLIER_SETS = ("letters", "rotated", "notmnist")
#: Papernot & McDaniel 2018 (FIELD_NOTES sec. 2): mean DkNN credibility vs mean softmax
#: confidence of an MNIST model on real notMNIST and on MNIST rotated 45 degrees.
PAPER_DKNN_VS_SOFTMAX = {"notmnist": (0.06, 0.33), "rotated": (0.09, 0.31)}

__all__ = [
    "NAME",
    "TITLE",
    "Settings",
    "settings",
    "run",
    "section",
    "claims",
    "split_calibration",
    "choose_k",
    "calibration_size",
    "PAPER_TRAIN",
    "PAPER_K",
    "PAPER_CALIBRATION",
]


@dataclass(frozen=True)
class Settings:
    """What the experiment measures on the zoo's models (saved with the results)."""

    seeds: int
    eps: float = 0.1  # FGSM L-inf budget, inputs in [0, 1]
    # the paper's k and calibration size for its training-set size, scaled to this one's
    # (choose_k, calibration_size)
    paper_k: int = PAPER_K
    paper_calibration: int = PAPER_CALIBRATION
    paper_train: int = PAPER_TRAIN
    metric: str = "cosine"  # centred, L2-normalised search, as the paper
    outlier_sets: tuple[str, ...] = OUTLIER_SETS
    data_dir: str | None = None  # where real notMNIST is read from (--data-dir)
    split_seed: int = 0  # calibration split, outlier subsets and score samples
    reliability_bins: int = 10
    histogram_bins: int = 20
    sample_size: int = 200  # scores kept per set and model (seeded subset)


def settings(config: ReproduceConfig) -> Settings:
    return Settings(seeds=config.seeds, data_dir=config.data_dir)


# ----------------------------------------------------------------------------- helpers


def split_calibration(
    n: int, fraction: float | None = None, seed: int = 0, *, size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Seeded split of ``range(n)`` into (calibration, evaluation) index tensors, each sorted.

    The calibration part has ``size`` points, or ``round(fraction * n)`` (give one of
    the two), clipped to [1, n - 1].

    >>> cal, ev = split_calibration(10, 0.3)
    >>> len(cal), len(ev), sorted(cal.tolist() + ev.tolist()) == list(range(10))
    (3, 7, True)
    >>> [len(part) for part in split_calibration(10, size=4)]
    [4, 6]
    """
    if n < 2:
        raise ValueError(f"need at least 2 test points to calibrate and evaluate, got {n}")
    if (fraction is None) == (size is None):
        raise ValueError("give the calibration fraction or its size, exactly one of them")
    if size is not None:
        if size < 1:
            raise ValueError(f"calibration size must be >= 1, got {size}")
        n_cal = min(size, n - 1)
    else:
        if not 0.0 < fraction < 1.0:  # type: ignore[operator]
            raise ValueError(f"calibration fraction must be in (0, 1), got {fraction}")
        n_cal = min(max(1, round(fraction * n)), n - 1)  # type: ignore[operator]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_cal].sort().values, perm[n_cal:].sort().values


def _input_sets(
    s: Settings, dataset: DataSplits, n: int
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Outlier sets of ``n`` points each, and {set: reason} for the ones left out."""
    sets: dict[str, Tensor] = {}
    skipped: dict[str, str] = {}
    for name in s.outlier_sets:
        if dataset.name == "notmnist" and name in {"letters", "notmnist"}:
            skipped[name] = "letters are in-distribution for a notMNIST model"
            continue
        if name == "notmnist" and s.data_dir is None:
            skipped[name] = "no --data-dir given"
            continue
        try:
            sets[name] = load_outliers(
                name, like=dataset, n=n, seed=s.split_seed, data_dir=s.data_dir
            )
        except (FileNotFoundError, ValueError) as err:
            skipped[name] = str(err).splitlines()[0]
    return sets, skipped


def _study_model(
    model: nn.Module,
    dataset: DataSplits,
    cal: Tensor,
    ev: Tensor,
    outliers: dict[str, Tensor],
    k: int,
    s: Settings,
) -> dict[str, Any]:
    """Every DkNN and softmax number of one trained model (see the module docstring)."""
    layers = [*resolve_layers(model, "hidden"), "logits"]
    dknn = DkNN(model, layers, k=k, metric=s.metric)
    dknn.fit(dataset.x_train, dataset.y_train, num_classes=dataset.num_classes)
    dknn.calibrate(dataset.x_test[cal], dataset.y_test[cal])
    x_clean, y_clean = dataset.x_test[ev], dataset.y_test[ev]
    inputs = {"clean": x_clean, "fgsm": fgsm(model, x_clean, y_clean, s.eps), **outliers}
    sample_rng = np.random.default_rng(s.split_seed)
    scores: dict[str, dict[str, np.ndarray]] = {}
    sets: dict[str, dict[str, Any]] = {}
    reliabilities: dict[str, dict[str, Any]] = {}
    calibration_agreement: dict[str, float] = {}
    for name, x in inputs.items():
        res = dknn.predict(x)
        agreement = dknn.compare_agreement(res)
        # the calibration points' agreement: the same in every report
        calibration_agreement = dict(zip(layers, agreement.calibration_mean.tolist(), strict=True))
        soft_conf, soft_pred = softmax_confidence(model, x)
        # rounded to 12 decimals: credibility and agreement are ratios of small
        # integers, and the float noise of summing them in another order must not
        # break their ties (it would change the AUROCs)
        sc = {
            "credibility": res.credibility.numpy().astype(np.float64).round(12),
            "softmax": soft_conf.round(12),
            "agreement": agreement.mean_fraction.numpy().astype(np.float64).round(12),
        }
        scores[name] = sc
        per_layer = dict(zip(layers, agreement.mean.tolist(), strict=True))
        entry: dict[str, Any] = {
            "n": len(x),
            **{f"{score}_mean": float(v.mean()) for score, v in sc.items()},
            "credibility_hist": np.histogram(sc["credibility"], s.histogram_bins, (0.0, 1.0))[
                0
            ].tolist(),
            "softmax_hist": np.histogram(sc["softmax"], s.histogram_bins, (0.0, 1.0))[0].tolist(),
            "neighbours_of_predicted_class": per_layer,
            "hidden_neighbours_mean": float(np.mean([per_layer[la] for la in layers[:-1]])),
            "dknn_accuracy": None,
            "softmax_accuracy": None,
        }
        if name in LABELLED:
            y = y_clean.numpy()
            correct = {"credibility": res.labels.numpy() == y, "softmax": soft_pred == y}
            entry["dknn_accuracy"] = float(correct["credibility"].mean())
            entry["softmax_accuracy"] = float(correct["softmax"].mean())
            reliabilities[name] = {
                score: reliability(sc[score], correct[score], s.reliability_bins)
                for score in ("credibility", "softmax")
            }
        keep = np.sort(sample_rng.permutation(len(x))[: s.sample_size])
        entry["score_sample"] = {score: v[keep].tolist() for score, v in sc.items()}
        sets[name] = entry
    aurocs = {
        name: {score: auroc(scores["clean"][score], scores[name][score]) for score in SCORES}
        for name in inputs
        if name != "clean"
    }
    credibility = {name: sc["credibility"] for name, sc in scores.items()}
    return {
        "layers": layers,
        "calibration_neighbours_of_predicted_class": calibration_agreement,
        "sets": sets,
        "auroc": aurocs,
        "reliability": reliabilities,
        **study_detectors(model, dataset, inputs, credibility),
    }


def _healthy(results: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in results["models"] if r["kind"] == kind and r["health"] == "ok"]


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    """Per kind: every per-set mean, AUROC and ECE as mean_std over the healthy seeds."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        runs = _healthy(results, kind)
        if not runs:
            out[kind] = None
            continue
        sets = {
            name: {
                key: mean_std([r["sets"][name][key] for r in runs])
                for key in (
                    *(f"{score}_mean" for score in SCORES),
                    "hidden_neighbours_mean",
                    *(("dknn_accuracy", "softmax_accuracy") if name in LABELLED else ()),
                )
            }
            for name in results["input_sets"]
        }
        out[kind] = {
            "seeds": [r["seed"] for r in runs],
            "sets": sets,
            "auroc": {
                name: {score: mean_std([r["auroc"][name][score] for r in runs]) for score in SCORES}
                for name in results["input_sets"][1:]
            },
            "ece": {
                name: {
                    score: mean_std([r["reliability"][name][score]["ece"] for r in runs])
                    for score in ("credibility", "softmax")
                }
                for name in LABELLED
            },
        }
    return out


def run(s: Settings, context: Context) -> dict[str, Any]:
    zoo, out = context.zoo, context.out
    data = zoo.dataset
    n_cal = calibration_size(
        len(data.y_train), len(data.y_test), data.num_classes, s.paper_calibration, s.paper_train
    )
    cal, ev = split_calibration(len(data.y_test), seed=s.split_seed, size=n_cal)
    k = choose_k(len(data.y_train), s.paper_k, s.paper_train)
    outliers, skipped = _input_sets(s, data, len(ev))
    records: list[dict[str, Any]] = []
    model_name = None
    for kind in KINDS:
        for ref in zoo.runs(kind, s.seeds):
            res = ref.results()
            model_name = ref.config.model
            record: dict[str, Any] = {
                "kind": kind,
                "seed": ref.seed,
                "run": ref.describe(out)["path"],
                **outcome(res),
            }
            if record["health"] == "ok":
                context.log(f"dknn: {kind} seed {ref.seed}")
                record.update(_study_model(ref.load(), data, cal, ev, outliers, k, s))
            records.append(record)
    results: dict[str, Any] = {
        "dataset": data.name,
        "model": model_name,
        "num_classes": data.num_classes,
        "k": k,
        "n_train": len(data.y_train),
        "n_calibration": len(cal),
        "n_eval": len(ev),
        "input_sets": ["clean", "fgsm", *outliers],
        "skipped_sets": skipped,
        "models": records,
    }
    results["summary"] = _summary(results)
    results["detector_summary"] = detector_summary(results)
    return results


# ----------------------------------------------------------------------------- report

_SET_TEXT = {
    "clean": "clean test points (not used for calibration)",
    "fgsm": "FGSM examples (crafted on the same model from the clean points)",
    "letters": "generated letters A-J in assorted fonts (the offline stand-in for notMNIST)",
    "rotated": "test digits rotated 45 degrees",
    "notmnist": "real notMNIST images (from --data-dir)",
}
_COLORS = {"normal": "C0", "entangled": "C3"}


def _ms(stats: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean +- std`` without the count (the section states the seeds once)."""
    if stats is None:
        return "-"
    return f"{stats['mean']:.{digits}f} +- {stats['std']:.{digits}f}"


def _notmnist_role(results: dict[str, Any]) -> str | None:
    """The outlier set of the SNNL paper's claims: real notMNIST when read, else the
    generated letters, else (a notMNIST model) the rotated test images; None if none."""
    for name in ("notmnist", "letters", "rotated"):
        if name in results["input_sets"]:
            return name
    return None


def _pooled_bins(runs: list[dict[str, Any]], name: str, score: str) -> dict[str, np.ndarray]:
    keys = ("count", "correct", "confidence_sum")
    return {
        key: np.sum([np.array(r["reliability"][name][score][key], dtype=float) for r in runs], 0)
        for key in keys
    }


def _reliability_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    fig, axes = plt.subplots(2, 2, figsize=(9, 7.5), sharex=True, sharey=True)
    for row, name in enumerate(LABELLED):
        for col, score in enumerate(("credibility", "softmax")):
            ax = axes[row, col]
            ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
            for kind in KINDS:
                runs = _healthy(results, kind)
                if not runs:
                    continue
                b = _pooled_bins(runs, name, score)
                nz = b["count"] > 0
                conf = b["confidence_sum"][nz] / b["count"][nz]
                acc = b["correct"][nz] / b["count"][nz]
                ece = results["summary"][kind]["ece"][name][score]
                ax.plot(conf, acc, "-", color=_COLORS[kind], label=f"{kind} (ECE {_ms(ece)})")
                # marker area proportional to the share of inputs in the bin
                size = 200 * b["count"][nz] / b["count"].sum() + 6
                ax.scatter(conf, acc, s=size, color=_COLORS[kind])
            label = "DkNN credibility" if score == "credibility" else "softmax confidence"
            ax.set_title(f"{label}, {name} inputs", fontsize=10)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(frameon=False, fontsize=8, loc="upper left")
    for ax in axes[1]:
        ax.set_xlabel("mean confidence in bin")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy in bin")
    fig.suptitle(
        "Reliability, bins pooled over the healthy seeds (marker area ~ inputs in bin)",
        fontsize=11,
    )
    fig.tight_layout()
    save_figure(fig, path)


def _histogram_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    sets = results["input_sets"]
    bins = results["settings"]["histogram_bins"]
    edges = np.linspace(0.0, 1.0, bins + 1)
    fig, axes = plt.subplots(
        2, len(sets), figsize=(2.6 * len(sets), 5.2), sharex=True, sharey="row", squeeze=False
    )
    for row, score in enumerate(("credibility", "softmax")):
        for col, name in enumerate(sets):
            ax = axes[row, col]
            for kind in KINDS:
                runs = _healthy(results, kind)
                if not runs:
                    continue
                counts = np.sum([r["sets"][name][f"{score}_hist"] for r in runs], 0)
                share = counts / counts.sum()
                mean = results["summary"][kind]["sets"][name][f"{score}_mean"]["mean"]
                ax.stairs(
                    share, edges, color=_COLORS[kind], lw=1.5, label=f"{kind}, mean {mean:.2f}"
                )
            ax.grid(alpha=0.3)
            ax.legend(frameon=False, fontsize=7, loc="upper center")
            if row == 0:
                ax.set_title(name, fontsize=10)
            if row == 1:
                ax.set_xlabel("softmax confidence" if score == "softmax" else "")
        axes[row, 0].set_ylabel(
            "share of inputs\n" + ("(DkNN credibility)" if score == "credibility" else "(softmax)")
        )
    for ax in axes[0]:
        ax.set_xlabel("DkNN credibility")
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle("Score distribution per input set, pooled over the healthy seeds", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def _neighbours_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    sets = results["input_sets"]
    fig, axes = plt.subplots(1, len(KINDS), figsize=(11, 3.8), sharey=True)
    for ax, kind in zip(axes, KINDS, strict=True):
        runs = _healthy(results, kind)
        if not runs:
            ax.set_title(f"{kind}: no healthy run")
            continue
        layers = runs[0]["layers"]
        width = 0.8 / (len(sets) + 1)
        xs = np.arange(len(layers))
        groups = [("calibration", None), *((name, name) for name in sets)]
        for i, (label, name) in enumerate(groups):
            values = (
                np.array(
                    [
                        [
                            (
                                r["calibration_neighbours_of_predicted_class"]
                                if name is None
                                else r["sets"][name]["neighbours_of_predicted_class"]
                            )[layer]
                            for layer in layers
                        ]
                        for r in runs
                    ]
                )
                / results["k"]
            )
            err = values.std(0, ddof=1) if len(runs) > 1 else None
            ax.bar(
                xs + (i - len(groups) / 2 + 0.5) * width,
                values.mean(0),
                width,
                yerr=err,
                color="0.6" if name is None else f"C{i % 10}",
                label=label,
                capsize=2,
            )
        ax.set_xticks(xs, layers)
        ax.set_title(f"{kind} models ({len(runs)} healthy seed(s))", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel(f"share of the k = {results['k']} neighbours\nfrom the predicted class")
    axes[-1].legend(frameon=False, fontsize=8, loc="lower left")
    fig.suptitle("Neighbours from the DkNN-predicted class per layer (mean +- std over seeds)")
    fig.tight_layout()
    save_figure(fig, path)


def section(results: dict[str, Any], fig_dir: Path) -> Section:
    s = results["settings"]
    sets = results["input_sets"]
    summary = results["summary"]
    figures = []
    if any(summary[kind] for kind in KINDS):
        _reliability_figure(results, fig_dir / "dknn_reliability.png")
        _histogram_figure(results, fig_dir / "dknn_histograms.png")
        _neighbours_figure(results, fig_dir / "dknn_neighbours.png")
        figures = [
            ("dknn_reliability.png", "Reliability diagrams on clean and on FGSM inputs"),
            ("dknn_histograms.png", "DkNN credibility and softmax confidence per input set"),
            ("dknn_neighbours.png", "Neighbours from the predicted class, per layer and set"),
        ]
        if results.get("detector_summary"):
            detector_figure(results, fig_dir / "dknn_detectors.png")
            figures.append(("dknn_detectors.png", "AUROC of every detector, normal vs entangled"))
    studied = [r for r in results["models"] if r["health"] == "ok"]
    layers = studied[0]["layers"] if studied else []
    lines = [
        f"Dataset `{results['dataset']}`, model `{results['model']}`: the zoo's normal and "
        f"entangled model of each of {s['seeds']} seed(s). DkNN over the hidden layers and "
        f"the logits ({', '.join(layers)}), {s['metric']} search, fitted on "
        f"{results['n_train']} training points, calibrated on a seeded subset of the test "
        f"set, evaluated on the other {results['n_eval']} test points; {_sizes_rule(results)}. "
        f"FGSM eps = {s['eps']:g}. "
        "Every number below is mean +- std over the healthy seeds of each kind.",
        "",
        "Input sets used (each as large as the clean set):",
        "",
    ]
    lines += [f"- `{name}`: {_SET_TEXT.get(name, name)}" for name in sets]
    lines += [f"- `{name}` not used: {why}" for name, why in results["skipped_sets"].items()]
    bad = [r for r in results["models"] if r["health"] != "ok"]
    lines += ["", "| model | seed | run | health | test accuracy |", "|---|---|---|---|---|"]
    for r in results["models"]:
        health = r["health"] if r["health"] == "ok" else f"**{r['health']}** (not studied)"
        lines.append(
            f"| {r['kind']} | {r['seed']} | `{r['run']}` | {health} | {r['test_accuracy']:.4f} |"
        )
    if bad:
        lines += [
            "",
            f"{len(bad)} run(s) were not healthy and are left out of every mean below: "
            + "; ".join(
                f"{r['kind']} seed {r['seed']} {r['health']} ({'; '.join(r['health_reasons'])})"
                for r in bad
            )
            + ".",
        ]
    lines += [
        "",
        "Mean scores per input set (agreement = mean over layers of the fraction of "
        "calibration points with at most as many neighbours from their predicted class; "
        "accuracy only where labels exist):",
        "",
        "| model | input set | DkNN credibility | softmax confidence | agreement "
        "| DkNN accuracy | softmax accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        if not summary[kind]:
            lines.append(f"| {kind} | (no healthy run) | | | | | |")
            continue
        for name in sets:
            e = summary[kind]["sets"][name]
            lines.append(
                f"| {kind} | {name} | {_ms(e['credibility_mean'])} | {_ms(e['softmax_mean'])} "
                f"| {_ms(e['agreement_mean'])} | {_ms(e.get('dknn_accuracy'))} "
                f"| {_ms(e.get('softmax_accuracy'))} |"
            )
    lines += [
        "",
        "AUROC of telling each set from the clean inputs by a low score (1 = perfectly "
        "separated, 0.5 = chance):",
        "",
        "| model | input set | DkNN credibility | softmax confidence | agreement |",
        "|---|---|---|---|---|",
    ]
    for kind in KINDS:
        for name in sets[1:] if summary[kind] else []:
            a = summary[kind]["auroc"][name]
            lines.append(
                f"| {kind} | {name} | {_ms(a['credibility'])} | {_ms(a['softmax'])} "
                f"| {_ms(a['agreement'])} |"
            )
    lines += [
        "",
        f"Expected calibration error ({s['reliability_bins']} equal bins; lower is better):",
        "",
        "| model | inputs | ECE of DkNN credibility | ECE of softmax confidence |",
        "|---|---|---|---|",
    ]
    for kind in KINDS:
        for name in LABELLED if summary[kind] else []:
            e = summary[kind]["ece"][name]
            lines.append(f"| {kind} | {name} | {_ms(e['credibility'])} | {_ms(e['softmax'])} |")
    if layers:
        lines += [
            "",
            f"Mean number of the k = {results['k']} neighbours that belong to the "
            "DkNN-predicted class, per layer (calibration = the calibration points, the "
            "usual number):",
            "",
            "| model | inputs | " + " | ".join(layers) + " |",
            "|---|---|" + "---|" * len(layers),
        ]
        for kind in KINDS:
            runs = _healthy(results, kind)
            if not runs:
                continue
            rows = [("calibration", [r["calibration_neighbours_of_predicted_class"] for r in runs])]
            rows += [
                (n, [r["sets"][n]["neighbours_of_predicted_class"] for r in runs]) for n in sets
            ]
            for label, per_run in rows:
                cells = [_ms(mean_std([p[la] for p in per_run]), 1) for la in layers]
                lines.append(f"| {kind} | {label} | " + " | ".join(cells) + " |")
    paper = [n for n in sets if n in PAPER_DKNN_VS_SOFTMAX or n == "letters"]
    if paper and summary["normal"]:
        lines += [
            "",
            "DkNN against softmax on outliers, side by side with Papernot & McDaniel (2018; "
            "an MNIST model, real notMNIST and MNIST rotated 45 degrees), normal models:",
            "",
            "| input set | DkNN credibility | softmax confidence | paper: DkNN | paper: softmax |",
            "|---|---|---|---|---|",
        ]
        for name in paper:
            e = summary["normal"]["sets"][name]
            ref = PAPER_DKNN_VS_SOFTMAX["notmnist" if name == "letters" else name]
            lines.append(
                f"| {name} | {_ms(e['credibility_mean'])} | {_ms(e['softmax_mean'])} "
                f"| {ref[0]:.2f} | {ref[1]:.2f} |"
            )
    lines += [
        "",
        "Per seed (AUROC of DkNN credibility against the clean inputs; ECE of credibility "
        "on FGSM inputs):",
        "",
        "| model | seed | " + " | ".join(f"AUROC {n}" for n in sets[1:]) + " | ECE fgsm |",
        "|---|---|" + "---|" * len(sets),
    ]
    for r in studied:
        cells = [f"{r['auroc'][n]['credibility']:.3f}" for n in sets[1:]]
        ece = r["reliability"]["fgsm"]["credibility"]["ece"]
        lines.append(f"| {r['kind']} | {r['seed']} | " + " | ".join(cells) + f" | {ece:.3f} |")
    lines += section_lines(results)
    return Section(title=TITLE, markdown="\n".join(lines), figures=figures)


# ----------------------------------------------------------------------------- claims


def _sizes_rule(results: dict[str, Any]) -> str:
    """The k and calibration-size rule with this run's values (older results: the values)."""
    r, s = results, results["settings"]
    if "paper_k" not in s:
        return f"k = {r['k']}, {r['n_calibration']} calibration points"
    n, pt = r["n_train"], s["paper_train"]
    return (
        f"k = {r['k']} = round({s['paper_k']} x {n} / {pt:,}) and {r['n_calibration']} "
        f"calibration points (round({s['paper_calibration']} x {n} / {pt:,}), at least one "
        f"per class, at most half the test set): the DkNN paper's k = {s['paper_k']} and "
        f"{s['paper_calibration']} calibration points for {pt:,} MNIST training points, "
        "scaled to this training set"
    )


def _setting(results: dict[str, Any], what: str) -> str:
    r, s = results, results["settings"]
    return (
        f"{r['dataset']}, {r['model']}; {what}; DkNN {s['metric']}, {_sizes_rule(r)}; "
        f"{r['n_eval']} clean points"
    )


def _values_text(values: list[float], digits: int = 3) -> str:
    return format_mean_std(mean_std(values), digits) if values else "no healthy run"


def _unhealthy_note(results: dict[str, Any], kinds: tuple[str, ...]) -> str:
    bad = sum(r["health"] != "ok" for r in results["models"] if r["kind"] in kinds)
    return f"; {bad} unhealthy run(s) left out" if bad else ""


def _kinds_claim(
    results: dict[str, Any], text: str, setting: str, measure: Any, expect: str, label: str
) -> Claim:
    """Entangled against normal models over the healthy seeds (two independent groups).

    ``measure(run record) -> float``; the measured text names ``label``.
    """
    ent = [measure(r) for r in _healthy(results, "entangled")]
    nor = [measure(r) for r in _healthy(results, "normal")]
    measured = f"{label}: entangled {_values_text(ent)} vs normal {_values_text(nor)}"
    cmp = compare_groups(ent, nor, expect=expect, label=f"{label}, entangled - normal")
    verdict, note = cmp
    if len(ent) < 2 or len(nor) < 2:
        note = f"fewer than two healthy seeds of a kind ({len(ent)} entangled, {len(nor)} normal)"
    note += _unhealthy_note(results, KINDS)
    return Claim(text, SOURCE, setting, measured, verdict, note, (cmp,))  # type: ignore[arg-type]


def _with_secondaries(
    results: dict[str, Any], claim: Claim, specs: list[tuple[str, str, Any]]
) -> Claim:
    """``claim`` (its verdict from the primary measure) with the secondary measures
    ``(label, expect, measure(record))`` in its measured text, each with its own verdict
    by the same rule (entangled vs normal), and a note when a decided one disagrees."""
    parts, disagree = [], []
    for label, expect, measure in specs:
        try:
            ent = [measure(r) for r in _healthy(results, "entangled")]
            nor = [measure(r) for r in _healthy(results, "normal")]
        except KeyError:  # results saved before the measure existed
            continue
        verdict = compare_groups(ent, nor, expect=expect).verdict
        better = "lower" if expect == "less" else "higher"
        parts.append(
            f"{label} ({better} = better): entangled {_values_text(ent)} vs normal "
            f"{_values_text(nor)}, {verdict}"
        )
        if verdict != "inconclusive" and verdict != claim.verdict:
            disagree.append(f"{label} {verdict}")
    measured = claim.measured + "; secondary (not the verdict): " + "; ".join(parts)
    note = claim.note
    if disagree:
        note += "; the secondary measures disagree with the primary: " + ", ".join(disagree)
    return replace(claim, measured=measured, note=note)


def _paired_claim(
    results: dict[str, Any],
    text: str,
    source: str,
    setting: str,
    a: list[float],
    b: list[float],
    measured: str,
) -> Claim:
    """``a < b`` paired by seed (the same normal model)."""
    cmp = compare_paired(a, b, expect="less")
    verdict, note = cmp
    if len(a) < 2:
        note = f"fewer than two healthy seeds ({len(a)})"
    note += _unhealthy_note(results, ("normal",))
    return Claim(text, source, setting, measured, verdict, note, (cmp,))  # type: ignore[arg-type]


def claims(results: dict[str, Any]) -> list[Claim]:
    out: list[Claim] = []
    odd = _notmnist_role(results)
    odd_text = {
        "notmnist": "real notMNIST",
        "letters": "generated letters (notMNIST stand-in)",
        "rotated": "test digits rotated 45 degrees",
    }
    eps = results["settings"]["eps"]
    outlier_claim = (
        "Entangled models give better-calibrated DkNN credibility on outliers (notMNIST for "
        "an MNIST model)"
    )
    if odd is None:
        why = "; ".join(f"{n}: {w}" for n, w in results["skipped_sets"].items())
        setting = _setting(results, "no outlier set")
        out.append(Claim(outlier_claim, SOURCE, setting, "-", "inconclusive", why))
    else:
        claim = _kinds_claim(
            results,
            outlier_claim + ": low credibility tells outliers from clean inputs better "
            "(primary measure, the paper's: the AUROC of credibility)",
            _setting(results, f"clean test points vs {odd_text[odd]}"),
            lambda r: r["auroc"][odd]["credibility"],
            "greater",
            "AUROC of credibility (clean vs outliers)",
        )
        out.append(
            _with_secondaries(
                results,
                claim,
                [
                    (f"mean credibility on {odd}", "less",
                     lambda r: r["sets"][odd]["credibility_mean"]),
                    ("FPR@95 of credibility", "less",
                     lambda r: r["detectors"][odd]["dknn_credibility"]["fpr95"]),
                ],
            )
        )  # fmt: skip
    claim = _kinds_claim(
        results,
        "Entangled models give better-calibrated DkNN credibility on FGSM adversarial examples "
        "(primary measure, the paper's: lower expected calibration error)",
        _setting(results, f"FGSM eps={eps:g} crafted on each model from the clean points"),
        lambda r: r["reliability"]["fgsm"]["credibility"]["ece"],
        "less",
        "ECE of credibility on FGSM inputs",
    )
    secondaries = [
        ("AUROC of credibility (clean vs FGSM)", "greater",
         lambda r: r["auroc"]["fgsm"]["credibility"]),
        ("mean credibility on FGSM", "less", lambda r: r["sets"]["fgsm"]["credibility_mean"]),
        ("FPR@95 of credibility", "less",
         lambda r: r["detectors"]["fgsm"]["dknn_credibility"]["fpr95"]),
    ]  # fmt: skip
    out.append(_with_secondaries(results, claim, secondaries))
    normal = _healthy(results, "normal")
    if odd is not None:
        a = [r["sets"][odd]["hidden_neighbours_mean"] for r in normal]
        b = [r["sets"]["clean"]["hidden_neighbours_mean"] for r in normal]
        out.append(
            _paired_claim(
                results,
                "Outliers have fewer than the usual number of hidden-layer neighbours from "
                "their predicted class",
                SOURCE,
                _setting(results, f"normal models, {odd_text[odd]} vs clean, paired by seed"),
                a,
                b,
                f"mean over hidden layers of the k={results['k']} neighbours from the predicted "
                f"class: {odd} {_values_text(a, 2)} vs clean {_values_text(b, 2)}",
            )
        )
    for name in dict.fromkeys(n for n in (odd, "rotated") if n in results["input_sets"]):
        a = [r["sets"][name]["credibility_mean"] for r in normal]
        b = [r["sets"][name]["softmax_mean"] for r in normal]
        paper = PAPER_DKNN_VS_SOFTMAX["notmnist" if name == "letters" else name]
        out.append(
            _paired_claim(
                results,
                "DkNN credibility on outliers is lower than softmax confidence",
                DKNN_SOURCE,
                _setting(results, f"normal models, {odd_text[name]}, paired by seed"),
                a,
                b,
                f"mean DkNN credibility {_values_text(a)} vs mean softmax confidence "
                f"{_values_text(b)} (paper, MNIST model: {paper[0]:.2f} vs {paper[1]:.2f})",
            )
        )
    out += detector_claims(results, odd, lambda what: _setting(results, what), OUTLIER_SETS)
    return out
