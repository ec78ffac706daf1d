"""Experiment "dknn": DkNN credibility of normal and entangled models on odd inputs.

The SNNL paper (section 5) reports that models trained to entangle their hidden
layers give DkNN credibility that is better calibrated on outliers and on FGSM
adversarial examples. This experiment studies the seed-0 normal and entangled
runs of experiment "entangle" (the same trained models).

Per model:

1. DkNN (Papernot & McDaniel 2018) over every hidden layer and the logits,
   cosine search (centred, L2-normalised, as the paper), ``k = min(75, n_train // 20)``
   (the paper's 75 unless the training set is small), fitted on the training set.
2. Calibration on a seeded ``CALIBRATION_FRACTION`` of the test set (the paper used
   the first 750 test points); the rest of the test set is the clean evaluation set.
3. Input sets: ``clean`` (evaluation points), ``fgsm`` (FGSM, eps 0.1, crafted on the
   same model from the clean evaluation points), ``letters`` (generated
   notMNIST-like letters), ``rotated`` (test digits rotated 45 degrees) and
   ``notmnist`` (the real set, only when ``--data-dir`` holds it). Each outlier
   set has as many points as the clean evaluation set.
4. Per set: mean DkNN credibility, mean softmax confidence (max softmax
   probability), the neighbour-agreement signal (mean over layers of the fraction
   of calibration points whose agreement with their predicted class is <= the
   input's; small = unusual) and the accuracy of DkNN and softmax where labels exist.
5. AUROC of telling each outlier / adversarial set from clean data, per score,
   with "outlier-ness" ``1 - score`` (1 = perfectly separated, 0.5 = chance).
6. Reliability diagrams (accuracy against confidence in 10 equal bins) for
   credibility and for softmax confidence on clean + FGSM data pooled, with the
   expected calibration error ``ECE = sum_b (n_b / n) |acc_b - conf_b|``.

The results hold bin counts, quantiles and means (enough for every figure), plus
``score_sample``: the scores of at most ``SAMPLE_SIZE`` seeded points per set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from snnl.attacks import fgsm
from snnl.data import DataSplits, load_outliers
from snnl.dknn import DkNN
from snnl.experiments import ReproduceConfig, Section
from snnl.experiments import entangle as ent
from snnl.taps import capture, resolve_layers
from snnl.train import load_run

NAME = "dknn"
TITLE = "DkNN credibility on outliers and adversarial examples"
KINDS = ent.KINDS
EPS = 0.1  # FGSM budget for inputs in [0, 1]
CALIBRATION_FRACTION = 0.3
K_MAX = 75  # the paper's k
METRIC = "cosine"
N_BINS = 10  # reliability diagram bins
HIST_BINS = 20  # credibility histogram bins
SAMPLE_SIZE = 200  # scores kept per set in the results
SPLIT_SEED = 0
SCORES = ("credibility", "softmax", "agreement")
LABELLED = ("clean", "fgsm")
OUTLIER_SETS = ("letters", "rotated", "notmnist")

__all__ = [
    "NAME",
    "TITLE",
    "run",
    "section",
    "split_calibration",
    "choose_k",
    "reliability",
    "auroc",
]


def choose_k(n_train: int) -> int:
    """The paper's k = 75, lowered to ``n_train // 20`` (at least 1) for small training sets.

    >>> choose_k(60000), choose_k(1437), choose_k(10)
    (75, 71, 1)
    """
    return max(1, min(K_MAX, n_train // 20))


def split_calibration(n: int, fraction: float, seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """Seeded split of ``range(n)`` into (calibration, evaluation) index tensors, each sorted.

    The calibration part has ``round(fraction * n)`` points, clipped to [1, n - 1].

    >>> cal, ev = split_calibration(10, 0.3)
    >>> len(cal), len(ev), sorted(cal.tolist() + ev.tolist()) == list(range(10))
    (3, 7, True)
    """
    if n < 2:
        raise ValueError(f"need at least 2 test points to calibrate and evaluate, got {n}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"calibration fraction must be in (0, 1), got {fraction}")
    n_cal = min(max(1, round(fraction * n)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_cal].sort().values, perm[n_cal:].sort().values


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = N_BINS) -> dict[str, Any]:
    """Reliability-diagram bins over [0, 1] and the expected calibration error.

    Bin b holds confidences in [b/bins, (b+1)/bins) (the last bin includes 1).
    ``ECE = sum_b (count_b / n) * |correct_b / count_b - confidence_sum_b / count_b|``.

    >>> r = reliability(np.array([0.05, 0.95, 0.95, 1.0]), np.array([0, 1, 0, 1]), bins=2)
    >>> r["count"], r["correct"], round(r["ece"], 4)
    ([1, 3], [0, 2], 0.2375)
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if conf.shape != ok.shape or conf.ndim != 1 or conf.size == 0:
        raise ValueError(
            f"confidence and correct must be non-empty 1-D of equal length, got "
            f"{conf.shape} and {ok.shape}"
        )
    idx = np.clip((conf * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    n_correct = np.bincount(idx, weights=ok.astype(np.float64), minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    nz = count > 0
    ece = float(np.sum(np.abs(n_correct[nz] - conf_sum[nz])) / conf.size)
    return {
        "bin_edges": np.linspace(0.0, 1.0, bins + 1).round(6).tolist(),
        "count": count.astype(int).tolist(),
        "correct": n_correct.round().astype(int).tolist(),
        "confidence_sum": conf_sum.round(6).tolist(),
        "ece": ece,
    }


def auroc(clean_scores: np.ndarray, odd_scores: np.ndarray) -> float:
    """AUROC of flagging ``odd`` against ``clean`` with outlier-ness ``1 - score``.

    Equals P(score_odd < score_clean) + 0.5 P(tie): 1 = every odd input scores lower.

    >>> auroc(np.array([0.9, 0.8]), np.array([0.1, 0.85]))
    0.75
    """
    clean = np.asarray(clean_scores, dtype=np.float64)
    odd = np.asarray(odd_scores, dtype=np.float64)
    labels = np.r_[np.zeros(clean.size), np.ones(odd.size)]
    return float(roc_auc_score(labels, 1.0 - np.r_[clean, odd]))


def _quantiles(v: np.ndarray) -> list[float]:
    return np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0]).round(6).tolist()


def _softmax(model: nn.Module, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(max softmax probability, argmax) per input."""
    logits = capture(model, x, ["logits"])["logits"].double()
    p = logits.softmax(dim=1)
    conf, pred = p.max(dim=1)
    return conf.numpy(), pred.numpy()


def _input_sets(
    config: ReproduceConfig, dataset: DataSplits, n: int
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Outlier sets of ``n`` points each, and {set: reason} for the ones left out."""
    sets: dict[str, Tensor] = {}
    skipped: dict[str, str] = {}
    for name in OUTLIER_SETS:
        if dataset.name == "notmnist" and name in {"letters", "notmnist"}:
            skipped[name] = "letters are in-distribution for a notMNIST model"
            continue
        if name == "notmnist" and config.data_dir is None:
            skipped[name] = "no --data-dir given"
            continue
        try:
            sets[name] = load_outliers(name, like=dataset, n=n, seed=0, data_dir=config.data_dir)
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
) -> dict[str, Any]:
    layers = [*resolve_layers(model, "hidden"), "logits"]
    dknn = DkNN(model, layers, k=k, metric=METRIC)
    dknn.fit(dataset.x_train, dataset.y_train, num_classes=dataset.num_classes)
    dknn.calibrate(dataset.x_test[cal], dataset.y_test[cal])
    x_clean, y_clean = dataset.x_test[ev], dataset.y_test[ev]
    inputs = {"clean": x_clean, "fgsm": fgsm(model, x_clean, y_clean, EPS), **outliers}
    sample_rng = np.random.default_rng(SPLIT_SEED)
    scores: dict[str, dict[str, np.ndarray]] = {}
    sets: dict[str, dict[str, Any]] = {}
    correct: dict[str, dict[str, np.ndarray]] = {}
    for name, x in inputs.items():
        res = dknn.predict(x)
        agreement = dknn.compare_agreement(res)
        soft_conf, soft_pred = _softmax(model, x)
        # rounded to 12 decimals: credibility and agreement are ratios of small
        # integers, and the float noise of summing them in another order must not
        # break their ties (it would change the AUROCs)
        s = {
            "credibility": res.credibility.numpy().astype(np.float64).round(12),
            "softmax": soft_conf.round(12),
            "agreement": agreement.mean_fraction.numpy().astype(np.float64).round(12),
        }
        scores[name] = s
        entry: dict[str, Any] = {
            "n": len(x),
            **{f"{score}_mean": float(v.mean()) for score, v in s.items()},
            "credibility_quantiles": _quantiles(s["credibility"]),
            "softmax_quantiles": _quantiles(s["softmax"]),
            "credibility_hist": np.histogram(s["credibility"], HIST_BINS, (0.0, 1.0))[0].tolist(),
            "softmax_hist": np.histogram(s["softmax"], HIST_BINS, (0.0, 1.0))[0].tolist(),
            "neighbours_of_predicted_class": dict(
                zip(layers, agreement.mean.tolist(), strict=True)
            ),
            "dknn_accuracy": None,
            "softmax_accuracy": None,
        }
        if name in LABELLED:
            y = y_clean.numpy()
            correct[name] = {"credibility": res.labels.numpy() == y, "softmax": soft_pred == y}
            entry["dknn_accuracy"] = float(correct[name]["credibility"].mean())
            entry["softmax_accuracy"] = float(correct[name]["softmax"].mean())
        keep = np.sort(sample_rng.permutation(len(x))[:SAMPLE_SIZE])
        entry["score_sample"] = {score: v[keep].tolist() for score, v in s.items()}
        sets[name] = entry
    aurocs = {
        name: {score: auroc(scores["clean"][score], scores[name][score]) for score in SCORES}
        for name in inputs
        if name != "clean"
    }
    pooled = {
        score: reliability(
            np.concatenate([scores[n][score] for n in LABELLED]),
            np.concatenate([correct[n][score] for n in LABELLED]),
        )
        for score in ("credibility", "softmax")
    }
    return {
        "layers": layers,
        "calibration_scores_mean": float(dknn.calibration_scores.double().mean()),
        "sets": sets,
        "auroc": aurocs,
        "reliability": pooled,
    }


def run(config: ReproduceConfig, out: Path) -> dict[str, Any]:
    dataset = ent.load_data(config)
    dirs = ent.trained_models(config, out, dataset, seeds=1)
    cal, ev = split_calibration(len(dataset.y_test), CALIBRATION_FRACTION)
    k = choose_k(len(dataset.y_train))
    outliers, skipped = _input_sets(config, dataset, len(ev))
    models: dict[str, Any] = {}
    for kind in KINDS:
        model, run_results = load_run(dirs[kind][0], dataset=dataset)
        models[kind] = {
            "run": str(dirs[kind][0].relative_to(out)),
            "test_accuracy": run_results["final"]["test_accuracy"],
            **_study_model(model, dataset, cal, ev, outliers, k),
        }
    return {
        "dataset": dataset.name,
        "settings": {
            "k": k,
            "metric": METRIC,
            "eps": EPS,
            "calibration_fraction": CALIBRATION_FRACTION,
            "n_train": len(dataset.y_train),
            "n_calibration": len(cal),
            "n_eval": len(ev),
            "split_seed": SPLIT_SEED,
            "reliability_bins": N_BINS,
            "histogram_bins": HIST_BINS,
        },
        "input_sets": ["clean", "fgsm", *outliers],
        "skipped_sets": skipped,
        "models": models,
    }


# --------------------------------------------------------------------------- report

_SET_TEXT = {
    "clean": "clean test points (not used for calibration)",
    "fgsm": "FGSM examples (crafted on the same model from the clean points)",
    "letters": "generated notMNIST-like letters",
    "rotated": "test digits rotated 45 degrees",
    "notmnist": "real notMNIST images",
}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _reliability_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    colors = {"normal": "C0", "entangled": "C3"}
    for ax, score in zip(axes, ("credibility", "softmax"), strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
        for kind in KINDS:
            r = results["models"][kind]["reliability"][score]
            count = np.array(r["count"], dtype=np.float64)
            nz = count > 0
            conf = np.array(r["confidence_sum"])[nz] / count[nz]
            acc = np.array(r["correct"])[nz] / count[nz]
            label = f"{kind} (ECE {r['ece']:.3f})"
            ax.plot(conf, acc, "-", color=colors[kind], label=label)
            # marker area proportional to the number of inputs in the bin
            ax.scatter(conf, acc, s=200 * count[nz] / count.sum() + 6, color=colors[kind])
        ax.set_title(f"{'DkNN credibility' if score == 'credibility' else 'softmax confidence'}")
        ax.set_xlabel("mean confidence in bin")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8)
    axes[0].set_ylabel("accuracy in bin")
    fig.suptitle("Reliability on clean + FGSM inputs pooled (marker area ~ inputs in bin)")
    fig.tight_layout()
    save_figure(fig, path)


def _credibility_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    sets = results["input_sets"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, score in zip(axes, ("credibility", "softmax"), strict=True):
        stats, positions, colors = [], [], []
        for i, name in enumerate(sets):
            for j, kind in enumerate(KINDS):
                entry = results["models"][kind]["sets"][name]
                q = entry[f"{score}_quantiles"]
                stats.append(
                    {
                        "label": "",
                        "whislo": q[0],
                        "q1": q[1],
                        "med": q[2],
                        "q3": q[3],
                        "whishi": q[4],
                        "mean": entry[f"{score}_mean"],
                        "fliers": [],
                    }
                )
                positions.append(i * 3 + j)
                colors.append("C0" if kind == "normal" else "C3")
        parts = ax.bxp(stats, positions=positions, showmeans=True, patch_artist=True, widths=0.8)
        for box, c in zip(parts["boxes"], colors, strict=True):
            box.set_facecolor(c)
            box.set_alpha(0.5)
        ax.set_xticks([i * 3 + 0.5 for i in range(len(sets))], sets)
        ax.set_title("DkNN credibility" if score == "credibility" else "softmax confidence")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3, axis="y")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.5) for c in ("C0", "C3")
    ]  # legend proxies
    fig.legend(handles, list(KINDS), frameon=False, fontsize=9, loc="upper right")
    axes[0].set_ylabel("score (box: quartiles, whiskers: min/max, triangle: mean)")
    fig.suptitle("Scores per input set and model")
    fig.tight_layout()
    save_figure(fig, path)


def section(results: dict[str, Any], fig_dir: Path) -> Section:
    sets = results["input_sets"]
    st = results["settings"]
    _reliability_figure(results, fig_dir / "dknn_reliability.png")
    _credibility_figure(results, fig_dir / "dknn_credibility.png")
    m = results["models"]
    lines = [
        f"Dataset `{results['dataset']}`; the seed-0 normal and entangled models of "
        f"experiment entangle. DkNN over the hidden layers and the logits "
        f"({', '.join(m['normal']['layers'])}), k = {st['k']}, {st['metric']} search, "
        f"fitted on {st['n_train']} training points, calibrated on a seeded "
        f"{st['calibration_fraction']:.0%} of the test set ({st['n_calibration']} points), "
        f"evaluated on the other {st['n_eval']}. FGSM eps = {st['eps']}.",
        "",
        "Input sets used:",
        "",
    ]
    lines += [f"- `{name}`: {_SET_TEXT.get(name, name)}" for name in sets]
    for name, why in results["skipped_sets"].items():
        lines.append(f"- `{name}` not used: {why}")
    lines += [
        "",
        "Mean scores per input set (agreement = mean over layers of the fraction of "
        "calibration points with at most as many neighbours of their predicted class; "
        "accuracy only where labels exist):",
        "",
        "| model | input set | n | DkNN credibility | softmax confidence | agreement "
        "| DkNN accuracy | softmax accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        for name in sets:
            e = m[kind]["sets"][name]
            lines.append(
                f"| {kind} | {name} | {e['n']} | {_fmt(e['credibility_mean'])} | "
                f"{_fmt(e['softmax_mean'])} | {_fmt(e['agreement_mean'])} | "
                f"{_fmt(e['dknn_accuracy'])} | {_fmt(e['softmax_accuracy'])} |"
            )
    lines += [
        "",
        "AUROC of telling each set from clean test data (1 = perfectly separated, "
        "0.5 = chance; lower score = flagged):",
        "",
        "| model | input set | DkNN credibility | softmax confidence | agreement |",
        "|---|---|---|---|---|",
    ]
    for kind in KINDS:
        for name in sets[1:]:
            a = m[kind]["auroc"][name]
            lines.append(
                f"| {kind} | {name} | {a['credibility']:.3f} | {a['softmax']:.3f} | "
                f"{a['agreement']:.3f} |"
            )
    lines += [
        "",
        "Calibration on clean + FGSM inputs pooled (expected calibration error, "
        f"{st['reliability_bins']} bins; lower is better):",
        "",
        "| model | ECE of DkNN credibility | ECE of softmax confidence |",
        "|---|---|---|",
    ]
    for kind in KINDS:
        r = m[kind]["reliability"]
        lines.append(f"| {kind} | {r['credibility']['ece']:.3f} | {r['softmax']['ece']:.3f} |")
    layers = m["normal"]["layers"]
    lines += [
        "",
        f"Mean number of the k = {st['k']} neighbours that belong to the DkNN-predicted "
        "class, per layer:",
        "",
        "| model | input set | " + " | ".join(layers) + " |",
        "|---|---|" + "---|" * len(layers),
    ]
    for kind in KINDS:
        for name in sets:
            per = m[kind]["sets"][name]["neighbours_of_predicted_class"]
            lines.append(
                f"| {kind} | {name} | " + " | ".join(f"{per[la]:.1f}" for la in layers) + " |"
            )
    return Section(
        title=TITLE,
        markdown="\n".join(lines),
        figures=[
            ("dknn_reliability.png", "Reliability diagrams: DkNN credibility and softmax"),
            ("dknn_credibility.png", "DkNN credibility and softmax confidence per input set"),
        ],
    )
