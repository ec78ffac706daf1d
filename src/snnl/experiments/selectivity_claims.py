"""Claims, tables and the relative-robustness figure of experiment "selectivity", tested
as Leavitt & Morcos state them (a helper module of :mod:`snnl.experiments.selectivity`,
not a registered experiment; it reads only the saved results dict).

Robustness is judged *relative to clean accuracy* (regularising selectivity also moves
clean accuracy): per run, corrupted / clean and adversarial / clean accuracy on the same
evaluation points. Per seed, the Spearman rank correlation between the runs' measured mean
selectivity and that relative robustness over the sweep (the normal model and every
selectivity-regularised model of the seed; failed runs count at their measured values)
summarises the trend without assuming a straight line; the claim's 95% interval is the
paired t interval of the per-seed correlations against 0 (:func:`compare_paired`), with a
no-effect margin of :data:`RHO_MARGIN` stated here in advance.

The input-unit gradient claim compares, per seed, the sweep run of highest measured
selectivity with the one of lowest: the log ratio of their gradient variances across
samples and across units (:func:`snnl.measures.input_gradient_variability`, first hidden
layer), margin :data:`LOG_RATIO_MARGIN`; it holds only when both comparisons hold.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from snnl.experiments.base import Claim, Comparison, compare_paired
from snnl.stats import spearman

SOURCE = "Leavitt & Morcos 2020, 2021"
#: |Spearman rho| below this is no monotone association (stated before any run).
RHO_MARGIN = 0.2
#: A high/low-selectivity gradient-variance ratio within 10% either way is no effect.
LOG_RATIO_MARGIN = math.log(1.1)

#: (key, name, relative measure, raw measure, expected sign of rho(selectivity, measure))
PERTURBATIONS: tuple[tuple[str, str, str, Any, str], ...] = (
    ("corruption", "corruptions", "corruption_relative", lambda r: r["corruption"]["mean"],
     "less"),
    ("fgsm", "FGSM", "fgsm_relative", lambda r: r["fgsm_mean"], "greater"),
    ("pgd", "PGD", "pgd_relative", lambda r: r["pgd_mean"], "greater"),
)  # fmt: skip


def sweep_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep's runs (the normal model and the selectivity-regularised ones), every
    health: a failed run counts at its measured values."""
    return [r for r in results["runs"] if r["kind"] != "entangled"]


def per_seed_spearman(results: dict[str, Any], measure: Any) -> dict[int, float | None]:
    """Per seed: Spearman rho of (mean selectivity, ``measure(run)``) over the sweep's runs."""
    sweep = sweep_runs(results)
    out: dict[int, float | None] = {}
    for seed in sorted({r["seed"] for r in sweep}):
        mine = [r for r in sweep if r["seed"] == seed]
        out[seed] = spearman([r["mean_selectivity"] for r in mine], [measure(r) for r in mine])
    return out


def _alphas_text(results: dict[str, Any]) -> str:
    alphas = sorted({r["alpha"] for r in sweep_runs(results)})
    return ", ".join(f"{a:g}" for a in alphas)


def _unhealthy_text(results: dict[str, Any]) -> str:
    sweep = sweep_runs(results)
    bad = sum(r["health"] != "ok" for r in sweep)
    return (
        f"failed (collapsed/diverged) runs count at their measured values ({bad} of {len(sweep)})"
    )


def _rhos_text(rhos: dict[int, float | None]) -> str:
    return ", ".join("-" if v is None else f"{v:+.2f}" for v in rhos.values())


def robustness_claim(results: dict[str, Any], key: str) -> Claim:
    """The claim on perturbation ``key`` ("corruption", "fgsm" or "pgd")."""
    _, name, relative, raw, expect = next(p for p in PERTURBATIONS if p[0] == key)
    if key == "corruption":
        claim = (
            "Networks with lower class selectivity are more robust to average-case "
            "(naturalistic) perturbations: corruptions"
        )
    else:
        claim = f"Class selectivity increases robustness to worst-case ({name}) perturbations"
    setting = (
        f"{results['dataset']}, {results['model']}, selectivity sweep (alpha "
        f"{_alphas_text(results)}); per seed Spearman rho(mean selectivity, {_acc(key)} / "
        f"clean accuracy) over the sweep; {_unhealthy_text(results)}"
    )
    rel = per_seed_spearman(results, lambda r: r.get(relative))
    raw_rho = per_seed_spearman(results, raw)
    values = [v for v in rel.values() if v is not None]
    raw_values = [v for v in raw_rho.values() if v is not None]
    measured = (
        f"rho(selectivity, {_acc(key)} / clean) per seed {_rhos_text(rel)}"
        + (f", mean {np.mean(values):+.3f}" if values else "")
        + f"; secondary, raw {_acc(key)}: rho per seed {_rhos_text(raw_rho)}"
        + (f", mean {np.mean(raw_values):+.3f}" if raw_values else "")
    )
    side = "negative" if expect == "less" else "positive"
    cmp = compare_paired(
        values, [0.0] * len(values), expect=expect, margin=RHO_MARGIN,
        label=f"Spearman rho, selectivity vs {name} relative robustness ({side} claimed)",
    )  # fmt: skip
    note = cmp.note + f"; claimed sign {side}, margin |rho| {RHO_MARGIN:g} stated in advance"
    if len(values) < len(rel):
        note += f"; {len(rel) - len(values)} seed(s) without a correlation (constant values)"
    return Claim(claim, SOURCE, setting, measured, cmp.verdict, note, (cmp,))


def _acc(key: str) -> str:
    return "corrupted accuracy" if key == "corruption" else f"{key.upper()} accuracy"


def _extremes(results: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Per seed: (highest-, lowest-selectivity sweep run)."""
    sweep = [r for r in sweep_runs(results) if "input_gradient" in r]
    out = []
    for seed in sorted({r["seed"] for r in sweep}):
        mine = sorted((r for r in sweep if r["seed"] == seed), key=lambda r: r["mean_selectivity"])
        if len(mine) >= 2:
            out.append((mine[-1], mine[0]))
    return out


def _log(value: float) -> float:
    return math.log(value) if value > 0 else float("-inf")


def gradient_claim(results: dict[str, Any]) -> Claim:
    """High- vs low-selectivity input-unit gradient variability, paired by seed."""
    layer = results["layers"][0]
    claim = (
        "The input-unit gradient is more variable across samples and units in "
        "high-selectivity networks than in low-selectivity networks"
    )
    pairs = _extremes(results)
    setting = (
        f"{results['dataset']}, {results['model']}, layer {layer}, d(unit activation)/d(input) "
        f"on the first {results['settings'].get('gradient_points', '?')} evaluation points; per "
        "seed the sweep run of highest vs lowest measured selectivity; " + _unhealthy_text(results)
    )
    if not pairs:
        return Claim(claim, SOURCE, setting, "-", "inconclusive", "no gradient measurements")
    comparisons: list[Comparison] = []
    parts = []
    for what in ("across_samples", "across_units"):
        hi = [_log(h["input_gradient"][layer][what]) for h, _ in pairs]
        lo = [_log(lo_["input_gradient"][layer][what]) for _, lo_ in pairs]
        comparisons.append(
            compare_paired(
                hi,
                lo,
                expect="greater",
                margin=LOG_RATIO_MARGIN,
                label=f"log variance {what.replace('_', ' ')}, high - low selectivity",
            )  # fmt: skip
        )
        ratio = [math.exp(a - b) for a, b in zip(hi, lo, strict=True)]
        scaled = [
            (h["input_gradient"][layer][what] / h["input_gradient"][layer]["mean_square"])
            / (lo_["input_gradient"][layer][what] / lo_["input_gradient"][layer]["mean_square"])
            for h, lo_ in pairs
        ]
        parts.append(
            f"variance {what.replace('_', ' ')}: high/low ratio per seed "
            + ", ".join(f"{v:.2f}" for v in ratio)
            + "; secondary, relative to the mean squared gradient: "
            + ", ".join(f"{v:.2f}" for v in scaled)
        )
    sel = ", ".join(
        f"{h['mean_selectivity']:.2f} ({h['setting']}) vs {lo_['mean_selectivity']:.2f} "
        f"({lo_['setting']})"
        for h, lo_ in pairs
    )
    measured = "; ".join(parts) + f"; selectivity high vs low per seed: {sel}"
    verdicts = [c.verdict for c in comparisons]
    if all(v == "holds" for v in verdicts):
        verdict = "holds"
    elif "does not hold" in verdicts:
        verdict = "does not hold"
    else:
        verdict = "inconclusive"
    note = (
        "holds only if both hold; "
        + "; ".join(f"{c.label}: {c.verdict}, {c.note}" for c in comparisons)
        + f"; margin log(1.1) = {LOG_RATIO_MARGIN:.4f} stated in advance"
    )
    return Claim(claim, SOURCE, setting, measured, verdict, note, tuple(comparisons))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- report


def clean_accuracy_lines(results: dict[str, Any]) -> list[str]:
    """The cost of regularising selectivity: clean test accuracy per alpha, mean over every
    seed (failed runs at their measured values) and over healthy ones."""
    sweep = sweep_runs(results)
    lines = [
        "Clean test accuracy per alpha (what regularising selectivity costs), mean +- std over "
        "seeds; failed runs count at their measured values in the first column:",
        "",
        "| alpha | setting | mean SI | clean test acc. (all runs) | healthy runs | "
        "clean test acc. (healthy) |",
        "|---|---|---|---|---|---|",
    ]
    for alpha in sorted({r["alpha"] for r in sweep}):
        runs = [r for r in sweep if r["alpha"] == alpha]
        ok = [r for r in runs if r["health"] == "ok"]

        def ms(values: list[float]) -> str:
            if not values:
                return "-"
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            return f"{np.mean(values):.3f} +- {std:.3f}"

        lines.append(
            f"| {alpha:g} | {runs[0]['setting']} | {ms([r['mean_selectivity'] for r in runs])} | "
            f"{ms([r['test_accuracy'] for r in runs])} | {len(ok)} / {len(runs)} | "
            f"{ms([r['test_accuracy'] for r in ok])} |"
        )
    return lines


def gradient_lines(results: dict[str, Any]) -> list[str]:
    """Input-unit gradient variability (first hidden layer) per alpha, mean over seeds."""
    sweep = [r for r in sweep_runs(results) if "input_gradient" in r]
    if not sweep:
        return []
    layer = results["layers"][0]
    lines = [
        f"Input-unit gradient variability, layer {layer} (population variance of "
        "d(unit)/d(input); mean over seeds, all runs):",
        "",
        "| alpha | mean SI | var. across samples | var. across units | mean square |",
        "|---|---|---|---|---|",
    ]
    for alpha in sorted({r["alpha"] for r in sweep}):
        runs = [r for r in sweep if r["alpha"] == alpha]
        g = [r["input_gradient"][layer] for r in runs]
        lines.append(
            f"| {alpha:g} | {np.mean([r['mean_selectivity'] for r in runs]):.3f} | "
            + " | ".join(
                f"{np.mean([v[k] for v in g]):.3e}"
                for k in ("across_samples", "across_units", "mean_square")
            )
            + " |"
        )
    return lines


def relative_robustness_figure(results: dict[str, Any], path: Path) -> None:
    """Relative robustness against measured selectivity: one panel per perturbation kind,
    one line per seed (its sweep runs in order of selectivity; red x: a failed run)."""
    from snnl.figures import plt, save_figure

    panels = [p for p in PERTURBATIONS if not (p[0] == "corruption" and _no_corruption(results))]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.6), squeeze=False)
    sweep = sweep_runs(results)
    seeds = sorted({r["seed"] for r in sweep})
    for ax, (key, name, relative, _, _) in zip(axes[0], panels, strict=True):
        rhos = per_seed_spearman(results, lambda r, k=relative: r.get(k))
        for i, seed in enumerate(seeds):
            mine = sorted(
                (r for r in sweep if r["seed"] == seed and r.get(relative) is not None),
                key=lambda r: r["mean_selectivity"],
            )
            xs = [r["mean_selectivity"] for r in mine]
            ys = [r[relative] for r in mine]
            rho = rhos.get(seed)
            label = f"seed {seed} (rho {'-' if rho is None else f'{rho:+.2f}'})"
            ax.plot(xs, ys, marker="o", ms=3.5, lw=1.2, color=f"C{i}", label=label)
            bad = [r for r in mine if r["health"] != "ok"]
            if bad:
                ax.scatter([r["mean_selectivity"] for r in bad], [r[relative] for r in bad],
                           marker="x", s=50, color="C3", zorder=4)  # fmt: skip
        ax.set_xlabel("measured mean class selectivity")
        ax.set_ylabel(f"{_acc(key)} / clean accuracy")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=7)
    fig.suptitle(
        f"Relative robustness against selectivity ({results['dataset']}, {results['model']}; "
        "one line per seed over the sweep)",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)


def _no_corruption(results: dict[str, Any]) -> bool:
    return bool(results["skipped"].get("corruptions"))
