"""The outlier detectors the field uses, beside DkNN credibility, for experiment "dknn".

Not an experiment of its own (the registry does not list it): the helper module of
:mod:`snnl.experiments.dknn`, which documents the study. Per healthy model of the zoo
(normal and entangled, every seed) and per odd input set of the DkNN study (FGSM and
the outlier sets), against the same clean evaluation points:

- **detectors** (:mod:`snnl.ood`; higher score = in-distribution): maximum softmax
  probability and the energy score of the logits; Mahalanobis (tied covariance) and
  deep kNN (k-th neighbour distance of L2-normalised features, ``k =
  DeepKNN.default_k(n_train)``) of the last hidden layer, fitted on the training set
  the DkNN uses; and the DkNN credibility itself. Each as AUROC
  (:func:`snnl.measures.auroc`) and FPR at 95% TPR (:func:`snnl.ood.fpr_at_tpr`).
- **separation** of the odd set from the clean points in every hidden layer (and the
  logits): SNNL* (:func:`snnl.measures.layer_snnl_profile`) of the concatenated
  features with clean / odd as the two classes; lower = better separated (0 = the two
  sets never neighbour each other, about log 2 ... 1 = mixed).

``summary`` gives every number as mean +- std per kind; ``section_lines`` the tables
(one per odd set: detectors x kind, AUROC and FPR@95, with the paired-by-seed interval
of the entangled - normal AUROC); ``claims`` the four claim rows (see each).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from snnl.data import DataSplits
from snnl.experiments.base import Claim, compare_paired, format_mean_std, mean_std
from snnl.measures import auroc, layer_snnl_profile
from snnl.ood import DeepKNN, Energy, Mahalanobis, MaxSoftmax, fpr_at_tpr
from snnl.taps import capture, resolve_layers

__all__ = [
    "STANDARD",
    "ROWS",
    "ROW_TEXT",
    "AUROC_MARGIN",
    "study_detectors",
    "summary",
    "paired_by_seed",
    "section_lines",
    "detector_figure",
    "claims",
]

#: The standard detectors (snnl.ood), logit-based first; then DkNN credibility.
STANDARD = ("max_softmax", "energy", "mahalanobis", "deep_knn")
ROWS = (*STANDARD, "dknn_credibility")
ROW_TEXT = {
    "max_softmax": "max softmax (Hendrycks & Gimpel 2017)",
    "energy": "energy (Liu et al. 2020)",
    "mahalanobis": "Mahalanobis (Lee et al. 2018)",
    "deep_knn": "deep kNN (Sun et al. 2022)",
    "dknn_credibility": "DkNN credibility (Papernot & McDaniel 2018)",
}
#: No-effect margins stated in advance: AUROC points, SNNL* and the share of the k
#: neighbours (differences inside +- margin count as no effect).
AUROC_MARGIN = 0.01
SNNL_MARGIN = 0.01
SHARE_MARGIN = 0.01
KINDS = ("normal", "entangled")
SOURCE_THREAD = "Frosst, Papernot & Hinton 2019 (thread; sec. 5)"
SOURCE_FIELD = (
    "Hendrycks & Gimpel 2017; Liu et al. 2020; Lee et al. 2018; Sun et al. 2022 "
    "(the field's detectors)"
)


def study_detectors(
    model: nn.Module,
    dataset: DataSplits,
    inputs: dict[str, Tensor],
    credibility: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Every detector's AUROC and FPR@95 and the per-layer clean/odd SNNL* of one model.

    Args:
        model: the trained classifier (logits out).
        dataset: the split; Mahalanobis and deep kNN are fitted on ``x_train, y_train``.
        inputs: ``{"clean": x, <odd set>: x, ...}`` (the DkNN study's input sets).
        credibility: DkNN credibility per set (N,), the same keys as ``inputs``.

    Returns:
        ``{"feature_layer", "deep_knn_k", "detectors": {odd set: {row: {"auroc",
        "fpr95"}}}, "separation": {odd set: {"layers": {layer: SNNL*}, "hidden_mean"}}}``.
    """
    if "clean" not in inputs:
        raise ValueError(f"inputs need a 'clean' set, got {sorted(inputs)}")
    hidden = resolve_layers(model, "hidden")
    last = hidden[-1]
    k = DeepKNN.default_k(len(dataset.y_train))
    train = capture(model, dataset.x_train, [last, "logits"])
    detectors = {
        "max_softmax": ("logits", MaxSoftmax().fit(train["logits"])),
        "energy": ("logits", Energy().fit(train["logits"])),
        "mahalanobis": (last, Mahalanobis().fit(train[last], dataset.y_train)),
        "deep_knn": (last, DeepKNN(k=k).fit(train[last])),
    }
    scores: dict[str, dict[str, np.ndarray]] = {}
    for name, x in inputs.items():
        feats = capture(model, x, [last, "logits"])
        scores[name] = {
            row: det.score(feats[layer]).numpy().astype(np.float64)
            for row, (layer, det) in detectors.items()
        }
        scores[name]["dknn_credibility"] = np.asarray(credibility[name], dtype=np.float64)
    clean = scores["clean"]
    found: dict[str, Any] = {}
    separation: dict[str, Any] = {}
    for name, x in inputs.items():
        if name == "clean":
            continue
        found[name] = {
            row: {
                "auroc": auroc(clean[row], scores[name][row]),
                "fpr95": fpr_at_tpr(clean[row], scores[name][row]),
            }
            for row in ROWS
        }
        both = torch.cat([inputs["clean"], x])
        labels = torch.cat([torch.zeros(len(inputs["clean"])), torch.ones(len(x))]).long()
        snnl, _ = layer_snnl_profile(model, both, labels, hidden)
        separation[name] = {
            "layers": snnl,
            "hidden_mean": float(np.mean([snnl[la] for la in hidden])),
        }
    return {"feature_layer": last, "deep_knn_k": k, "detectors": found, "separation": separation}


# ----------------------------------------------------------------------------- summary


def _studied(results: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [
        r
        for r in results["models"]
        if r["kind"] == kind and r["health"] == "ok" and "detectors" in r
    ]


def _odd_sets(results: dict[str, Any]) -> list[str]:
    return [n for n in results["input_sets"] if n != "clean"]


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Per kind: every detector's AUROC and FPR@95 and the hidden-layer SNNL* per odd set,
    as :func:`~snnl.experiments.base.mean_std` over the studied seeds (None: no run)."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        runs = _studied(results, kind)
        if not runs:
            out[kind] = None
            continue
        out[kind] = {
            name: {
                "detectors": {
                    row: {
                        m: mean_std([r["detectors"][name][row][m] for r in runs])
                        for m in ("auroc", "fpr95")
                    }
                    for row in ROWS
                },
                "separation_hidden": mean_std([r["separation"][name]["hidden_mean"] for r in runs]),
            }
            for name in _odd_sets(results)
        }
    return out


def paired_by_seed(
    results: dict[str, Any], measure: Callable[[dict[str, Any]], float]
) -> tuple[list[int], list[float], list[float]]:
    """``(seeds, entangled, normal)``: ``measure(record)`` of the seeds where both kinds'
    runs were studied, in seed order (the zoo's two models of a seed share their seed).

    >>> rec = lambda kind, seed, v: {"kind": kind, "seed": seed, "health": "ok",
    ...                              "detectors": {}, "v": v}
    >>> res = {"models": [rec("normal", 0, 1.0), rec("normal", 1, 2.0),
    ...                   rec("entangled", 1, 5.0)]}
    >>> paired_by_seed(res, lambda r: r["v"])
    ([1], [5.0], [2.0])
    """
    by = {kind: {r["seed"]: r for r in _studied(results, kind)} for kind in KINDS}
    seeds = sorted(set(by["entangled"]) & set(by["normal"]))
    return (
        seeds,
        [measure(by["entangled"][s]) for s in seeds],
        [measure(by["normal"][s]) for s in seeds],
    )


# ----------------------------------------------------------------------------- report


def _ms(stats: dict[str, Any] | None, digits: int = 3) -> str:
    return "-" if stats is None else f"{stats['mean']:.{digits}f} +- {stats['std']:.{digits}f}"


def _interval_text(cmp: Any) -> str:
    iv = cmp.interval
    if iv is None:
        return "- (fewer than 2 pairs)"
    return f"{iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"


def section_lines(results: dict[str, Any]) -> list[str]:
    """The report's detector tables (markdown lines; none when the results have none)."""
    summ = results.get("detector_summary")
    if not summ or not any(summ[kind] for kind in KINDS):
        return []
    studied = [r for r in results["models"] if "detectors" in r]
    layer, k = studied[0]["feature_layer"], studied[0]["deep_knn_k"]
    lines = [
        "",
        "### The detectors the field uses",
        "",
        "Every detector tells each odd set from the same clean points (higher score = "
        "in-distribution): max softmax and energy (T = 1) read the logits; Mahalanobis (class "
        f"means, tied covariance) and deep kNN (k = {k} = 50 x n_train / 50,000, L2-normalised "
        f"features) read the last hidden layer `{layer}`, fitted on the {results['n_train']} "
        "training points the DkNN uses; no detector sees outlier data. AUROC (higher is "
        "better) and FPR at 95% TPR (the share of odd inputs kept when 95% of the clean "
        "ones are; lower is better), mean +- std over seeds; the last column is the "
        "entangled - normal AUROC paired by seed with its 95% paired t interval "
        "(descriptive; the claims below test the rows they name).",
    ]
    for name in _odd_sets(results):
        lines += [
            "",
            f"`{name}`:",
            "",
            "| detector | AUROC normal | AUROC entangled | FPR@95 normal | FPR@95 entangled "
            "| AUROC entangled - normal [95% CI] |",
            "|---|---|---|---|---|---|",
        ]
        for row in ROWS:
            cells = []
            for m in ("auroc", "fpr95"):
                for kind in KINDS:
                    cells.append(_ms(summ[kind][name]["detectors"][row][m]) if summ[kind] else "-")
            _, ent, nor = paired_by_seed(
                results, lambda r, n=name, d=row: r["detectors"][n][d]["auroc"]
            )
            cmp = compare_paired(ent, nor, expect="greater", margin=AUROC_MARGIN)
            lines.append(
                f"| {ROW_TEXT[row]} | " + " | ".join(cells) + f" | {_interval_text(cmp)} |"
            )
    layers = list(studied[0]["separation"][_odd_sets(results)[0]]["layers"])
    lines += [
        "",
        "Separation of each odd set from the clean points, per layer: SNNL* of the "
        "concatenated features with clean / odd as the two classes (lower = the odd inputs "
        "lie farther from the clean ones; mean +- std over seeds):",
        "",
        "| model | odd set | " + " | ".join(layers) + " |",
        "|---|---|" + "---|" * len(layers),
    ]
    for kind in KINDS:
        runs = _studied(results, kind)
        for name in _odd_sets(results) if runs else []:
            cells = [
                _ms(mean_std([r["separation"][name]["layers"][la] for r in runs])) for la in layers
            ]
            lines.append(f"| {kind} | {name} | " + " | ".join(cells) + " |")
    return lines


def detector_figure(results: dict[str, Any], path: Path) -> None:
    """AUROC per detector, normal vs entangled, one panel per odd set (mean +- std)."""
    from snnl.figures import plt, save_figure

    summ = results["detector_summary"]
    sets = _odd_sets(results)
    fig, axes = plt.subplots(1, len(sets), figsize=(3.6 * len(sets), 4.2), sharey=True)
    axes = np.atleast_1d(axes)
    xs = np.arange(len(ROWS))
    for ax, name in zip(axes, sets, strict=True):
        for i, kind in enumerate(KINDS):
            if not summ[kind]:
                continue
            stats = [summ[kind][name]["detectors"][row]["auroc"] for row in ROWS]
            ax.bar(
                xs + (i - 0.5) * 0.38,
                [s["mean"] for s in stats],
                0.38,
                yerr=[s["std"] for s in stats],
                color={"normal": "C0", "entangled": "C3"}[kind],
                label=kind,
                capsize=2,
            )
        ax.axhline(0.5, color="0.5", lw=1, ls="--")
        ax.set_xticks(xs, ["MSP", "energy", "Mahal.", "deep kNN", "DkNN cred."], rotation=35)
        ax.set_title(name, fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("AUROC (clean vs odd set)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle("Outlier and adversarial detection per detector (mean +- std over seeds)")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.legend(handles, labels, loc="upper right", ncols=2, frameon=False, fontsize=9)
    save_figure(fig, path)


# ----------------------------------------------------------------------------- claims


def _values(values: list[float], digits: int = 3) -> str:
    return format_mean_std(mean_std(values), digits) if values else "no studied pair"


def _claim(text: str, source: str, setting: str, measured: str, cmp: Any, n: int) -> Claim:
    verdict, note = cmp
    if n < 2:
        note = f"fewer than two seeds with both kinds studied ({n})"
    return Claim(text, source, setting, measured, verdict, note, (cmp,))  # type: ignore[arg-type]


def _selection_set(results: dict[str, Any], odd: str, outlier_sets: tuple[str, ...]) -> str | None:
    """The set the 'best standard detector' is chosen on: another outlier set if any,
    else FGSM; never ``odd`` (the set the claim tests)."""
    others = [n for n in results["input_sets"] if n in outlier_sets and n != odd]
    if others:
        return others[0]
    return "fgsm" if "fgsm" in results["input_sets"] else None


def claims(
    results: dict[str, Any],
    odd: str | None,
    setting: Callable[[str], str],
    outlier_sets: tuple[str, ...],
) -> list[Claim]:
    """The four detector rows on the outlier set ``odd`` (the notMNIST role), from the
    saved results; none when the results have no detector numbers or no outlier set.

    ``setting(what)`` writes the row's setting (the dknn experiment's wording).
    """
    if odd is None or not results.get("detector_summary"):
        return []
    if not any(_studied(results, kind) for kind in KINDS):
        return []
    out: list[Claim] = []
    # (a) the standard detectors' mean AUROC, entangled vs normal, paired by seed
    seeds, ent, nor = paired_by_seed(
        results, lambda r: float(np.mean([r["detectors"][odd][d]["auroc"] for d in STANDARD]))
    )
    per = []
    for d in STANDARD:
        _, e, n = paired_by_seed(results, lambda r, d=d: r["detectors"][odd][d]["auroc"])
        c = compare_paired(e, n, expect="greater", margin=AUROC_MARGIN)
        per.append(f"{d} {c.verdict} ({_interval_text(c)})")
    cmp = compare_paired(
        ent, nor, expect="greater", margin=AUROC_MARGIN, label="mean AUROC, entangled - normal"
    )
    out.append(
        _claim(
            "Entanglement improves outlier detection for the standard detectors too",
            SOURCE_THREAD + "; " + SOURCE_FIELD,
            setting(
                f"clean vs {odd}; the mean AUROC of max softmax, energy, Mahalanobis and deep "
                f"kNN, entangled vs normal paired by seed; margin {AUROC_MARGIN:g} AUROC"
            ),
            f"mean AUROC of the four detectors: entangled {_values(ent)} vs normal "
            f"{_values(nor)}; per detector (secondary, entangled - normal [95% CI]): "
            + "; ".join(per),
            cmp,
            len(seeds),
        )
    )
    # (b) DkNN credibility vs the best standard detector, normal models
    chosen_on = _selection_set(results, odd, outlier_sets)
    normal = _studied(results, "normal")
    if chosen_on is not None and normal:
        means = {
            d: float(np.mean([r["detectors"][chosen_on][d]["auroc"] for r in normal]))
            for d in STANDARD
        }
        best = max(STANDARD, key=lambda d: means[d])
        a = [r["detectors"][odd]["dknn_credibility"]["auroc"] for r in normal]
        b = [r["detectors"][odd][best]["auroc"] for r in normal]
        fa = [r["detectors"][odd]["dknn_credibility"]["fpr95"] for r in normal]
        fb = [r["detectors"][odd][best]["fpr95"] for r in normal]
        cmp = compare_paired(
            a, b, expect="greater", margin=AUROC_MARGIN, label="AUROC, DkNN - best standard"
        )
        out.append(
            _claim(
                "DkNN credibility tells outliers from clean inputs better than the best "
                "standard detector (normal models)",
                "Papernot & McDaniel 2018; " + SOURCE_FIELD,
                setting(
                    f"normal models, clean vs {odd}, paired by seed; the best standard "
                    f"detector chosen by its mean AUROC on `{chosen_on}` (not on the tested "
                    f"set): {best}; margin {AUROC_MARGIN:g} AUROC"
                ),
                f"AUROC: DkNN credibility {_values(a)} vs {best} {_values(b)}; FPR@95 "
                f"(secondary): {_values(fa)} vs {_values(fb)}",
                cmp,
                len(a),
            )
        )
    # (c) outliers projected far from the clean test data: hidden-layer SNNL*
    seeds, ent, nor = paired_by_seed(results, lambda r: r["separation"][odd]["hidden_mean"])
    cmp = compare_paired(
        ent, nor, expect="less", margin=SNNL_MARGIN, label="hidden SNNL*, entangled - normal"
    )
    out.append(
        _claim(
            "Entangled models project outlier data far away from the real test data",
            SOURCE_THREAD,
            setting(
                f"clean test points vs {odd} as the two classes; SNNL* of the hidden layers' "
                "features (mean over the hidden layers; lower = farther apart), entangled vs "
                f"normal paired by seed; margin {SNNL_MARGIN:g}"
            ),
            f"hidden-layer SNNL* clean vs {odd}: entangled {_values(ent)} vs normal {_values(nor)}",
            cmp,
            len(seeds),
        )
    )
    # (d) the neighbour-count signal, entangled vs normal
    k = results["k"]
    seeds, ent, nor = paired_by_seed(
        results,
        lambda r: (
            (
                r["sets"]["clean"]["hidden_neighbours_mean"]
                - r["sets"][odd]["hidden_neighbours_mean"]
            )
            / k
        ),
    )
    _, ae, an = paired_by_seed(results, lambda r: r["auroc"][odd]["agreement"])
    cmp = compare_paired(
        ent, nor, expect="greater", margin=SHARE_MARGIN, label="neighbour drop, ent. - normal"
    )
    out.append(
        _claim(
            "Outliers' deficit of hidden-layer neighbours from the predicted class is larger "
            "in entangled models than in normal ones",
            SOURCE_THREAD,
            setting(
                f"clean vs {odd}; the drop (clean - outlier) of the share of the k={k} "
                "neighbours from the predicted class, mean over the hidden layers, entangled "
                f"vs normal paired by seed; margin {SHARE_MARGIN:g}"
            ),
            f"drop in neighbour share: entangled {_values(ent)} vs normal {_values(nor)}; "
            f"AUROC of the agreement signal (secondary): entangled {_values(ae)} vs normal "
            f"{_values(an)}",
            cmp,
            len(seeds),
        )
    )
    return out
