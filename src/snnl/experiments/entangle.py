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
- with ``--full``: the "learned" and "reference" temperature modes, and the
  reference CNN with the authors' initialisation.

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
from snnl.experiments.zoo import ENTANGLED_ALPHA, Kind, RunRef, outcome, recipe
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
    reference_cnn: bool = False  # --full: the reference CNN with the authors' init
    projection_points: int = 600


def settings(config: ReproduceConfig) -> Settings:
    if config.full:
        return Settings(
            seeds=config.seeds,
            sweep_seeds=config.seeds,
            extra_modes=("learned", "reference"),
            reference_cnn=True,
        )
    return Settings(seeds=config.seeds, sweep_seeds=min(config.seeds, 2))


# ----------------------------------------------------------------------------- running


#: The run name (folder prefix) of the authors' settings and the other temperature modes;
#: the normal model and the optimal-temperature sweep run under the zoo's kinds.
AUTHORS = "authors"


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
    if s.reference_cnn:
        cnn = replace(base, model="cnn", model_kwargs={"init": "authors"})
        out.append(SettingRun("cnn authors-init normal", Kind.NORMAL.value, cnn))
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


def run(s: Settings, context: Context) -> dict[str, Any]:
    zoo, out = context.zoo, context.out
    records: list[dict[str, Any]] = []
    entangled_label = f"optimal a={s.entangled_alpha:g}"
    plan = [
        r
        for seed in range(s.seeds)
        for r in setting_runs(s, context.config, seed)
        if seed < s.sweep_seeds or r.label in ("normal", entangled_label)
    ]
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
    }


# ----------------------------------------------------------------------------- report


def _acc_text(summary: dict[str, Any]) -> str:
    acc = summary["accuracy_healthy"]
    return format_mean_std(acc) if acc else "no healthy run"


def _short(label: str) -> str:
    """A setting label, one word a line, for an axis tick."""
    return "\n".join(label.replace("authors: fixed", "authors").split())


def _sweep_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    summary, runs = results["summary"], results["runs"]
    sweep = [k for k in summary if k == "normal" or k.startswith("optimal")]
    others = [k for k in summary if k not in sweep]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, ylabel in (
        (axes[0], "test_accuracy", "test accuracy"),
        (axes[1], "mean_hidden_snnl", "mean hidden-layer SNNL*"),
    ):
        xs = list(range(len(sweep) + len(others)))
        for x, label in zip(xs, sweep + others, strict=True):
            for r in (r for r in runs if r["setting"] == label):
                v = r[key]
                if v is None:
                    continue
                ok = r["health"] == "ok"
                ax.scatter(
                    x + (r["seed"] - 1) * 0.08,
                    v,
                    marker="o" if ok else "x",
                    color="C0" if ok else "C3",
                    s=22,
                    zorder=3,
                )
        if key == "mean_hidden_snnl":
            ax.axhline(runs[0]["bound"], color="k", ls="--", lw=1, label="upper bound (indistinct)")
            ax.legend(frameon=False, fontsize=8, loc="center left")
        ax.set_xticks(xs)
        ax.set_xticklabels(
            [_short(k) for k in sweep + others],
            fontsize=7,
        )
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title("dots: healthy runs, red x: collapsed or diverged", fontsize=9)
    fig.suptitle(f"Entangled objective on {results['dataset']} ({results['model']}), per seed")
    fig.tight_layout()
    save_figure(fig, path)


def _layers_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    layers = [*results["layers"], "logits"]
    kinds = {"normal": "C0", results["entangled_setting"]: "C3"}
    fig, axes = plt.subplots(1, len(layers), figsize=(3.0 * len(layers), 2.8), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        for label, color in kinds.items():
            runs = [r for r in results["runs"] if r["setting"] == label and r["health"] == "ok"]
            if not runs:
                continue
            curves = np.array(
                [[r["initial_snnl"][layer]] + [e[layer] for e in r["probe_snnl"]] for r in runs],
                dtype=float,
            )
            epochs = np.arange(curves.shape[1])
            mean, std = curves.mean(0), curves.std(0)
            ax.plot(epochs, mean, color=color, label=label)
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
        ax.set_title(layer, fontsize=10)
        ax.set_xlabel("epoch (0 = initialisation)")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("SNNL* (probe subset)")
    axes[0, 0].legend(frameon=False, fontsize=8)
    fig.suptitle("SNNL* of every layer during training (healthy runs, mean +- std over seeds)")
    fig.tight_layout()
    save_figure(fig, path)


def _scale_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    labels = list(results["summary"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, label in enumerate(labels):
        for r in (r for r in results["runs"] if r["setting"] == label and r["seed"] == 0):
            ratios = [
                np.nanmax([v if v is not None else np.nan for v in e.values()])
                for e in r["scale_ratio"]
            ]
            if ratios:
                ax.plot(range(1, len(ratios) + 1), ratios, color=f"C{i % 10}", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("largest activation scale / initial")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7, ncol=2)
    ax.set_title("Activation scale of the hidden layers (seed 0)")
    fig.tight_layout()
    save_figure(fig, path)


def _projection_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    proj = results["projection"]
    labels = np.array(proj["labels"])
    classes = int(labels.max()) + 1
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    sc = None
    for ax, kind in zip(axes, ("normal", "entangled"), strict=True):
        pts = np.array(proj["points"][kind])
        sc = ax.scatter(
            pts[:, 0], pts[:, 1], c=labels, cmap="tab10", s=6, vmin=-0.5, vmax=classes - 0.5
        )
        ax.set_title(f"{kind} model (seed 0), layer {proj['layer']} (PCA)", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes, ticks=range(classes), label="class")
    save_figure(fig, path)


def section(results: dict[str, Any], fig_dir: Path) -> Section:
    _sweep_figure(results, fig_dir / "entangle_sweep.png")
    _layers_figure(results, fig_dir / "entangle_layers.png")
    _scale_figure(results, fig_dir / "entangle_scale.png")
    _projection_figure(results, fig_dir / "entangle_projection.png")
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
    return Section(
        title=TITLE,
        markdown="\n".join(lines),
        figures=[
            ("entangle_sweep.png", "Accuracy and hidden-layer SNNL* per setting and seed"),
            ("entangle_layers.png", "SNNL* of every layer over training, normal and entangled"),
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
    normal = {r["seed"]: r for r in results["runs"] if r["setting"] == "normal"}
    other = {r["seed"]: r for r in results["runs"] if r["setting"] == label}
    seeds = sorted(set(normal) & set(other))
    text = (
        "Entangled models marginally outperform their normal counterparts (test accuracy; "
        f"margin stated in advance: a difference under {100 * MARGIN:g} points is no effect)"
    )
    cmp = compare_paired(
        [other[s]["test_accuracy"] for s in seeds],
        [normal[s]["test_accuracy"] for s in seeds],
        expect="greater",
        margin=MARGIN,
        label=f"test accuracy, {what} - normal",
        a_ok=[other[s]["health"] == "ok" for s in seeds],
        b_ok=[normal[s]["health"] == "ok" for s in seeds],
        arms=("entangled", "normal"),
    )
    measured = f"{_acc_text(summary[label])} vs normal {_acc_text(summary['normal'])}"
    return Claim(text, f"{SOURCE}, Table 1", setting, measured, cmp.verdict, cmp.note, (cmp,))


def claims(results: dict[str, Any]) -> list[Claim]:
    s = results["settings"]
    out = [_accuracy_claim(results, results["entangled_setting"], "entangled = SNNL* objective")]
    for formula in s["authors_formulas"]:
        label = f"authors: fixed T={s['authors_temperature']:g} a={s['authors_alpha']:g} {formula}"
        out.append(_accuracy_claim(results, label, f"authors' setting, {formula} formula"))
    normal = [r for r in results["runs"] if r["setting"] == "normal" and r["health"] == "ok"]
    layers = results["layers"]
    setting = f"{results['dataset']}, {results['model']}, normal models, probe subset"
    if len(normal) >= 2 and len(layers) >= 2:
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
