"""Experiment "transfer": FGSM transferability and gradient directions, normal vs entangled.

Frosst, Papernot & Hinton (2019, sec. 5) report that entangled models are less
vulnerable to black-box attacks based on transferability (with a targeted FGSM
attack), and that a t-SNE of the FGSM gradient directions shows class clusters for a
normal model and none for an entangled one. This experiment studies the zoo's normal
and entangled model of every seed (runs whose health is not "ok" are listed and left
out).

1. Transfer matrix (Szegedy et al. 2013, Table 2; :func:`snnl.attacks.transfer_matrix`):
   FGSM at every eps of ``eps_grid`` on a seeded subset of ``transfer_points`` test
   points, untargeted (the target model's error) and targeted (towards
   ``(y + 1) mod C``, :func:`snnl.attacks.next_class_targets`; success = the target
   model predicts that class). Saved between every two models, and as the
   source-kind x target-kind matrix over seed pairs (source seed k, target seed
   (k + 1) mod n; :mod:`snnl.experiments.transfer_matrix`): source and target are
   always different seeds. The claims read it at ``eps``: the *target effect*
   (normal -> entangled minus normal -> normal: the same examples, another target) and
   the *source effect* (entangled -> normal minus normal -> normal: the same target,
   examples from another source), each paired over the seed pairs, for both attacks.
2. Gradient directions (:func:`gradient_directions`): ``sign(g)``, the FGSM step, with
   ``g = grad_x CE(f(x), y)`` (:func:`snnl.attacks.input_gradient`) at a seeded subset
   of ``direction_points`` test points. Primary measure of class clusters: SNNL at its
   optimal temperature by true class (SNNL*, low = clustered), beside the same measure
   on label-shuffled directions (``shuffles`` seeded permutations averaged: the
   no-cluster reference); secondary: the silhouette (high = clustered), real and
   shuffled (:func:`snnl.measures.class_clustering`). For the lowest healthy seed of
   each kind the sign directions are projected to 2-D by t-SNE (scikit-learn, PCA
   initialisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from snnl.attacks import input_gradient
from snnl.experiments.base import (
    Claim,
    Comparison,
    Context,
    Section,
    compare_paired,
    format_mean_std,
    mean_std,
)
from snnl.experiments.config import ReproduceConfig
from snnl.experiments.transfer_matrix import (
    ATTACKS,
    CELLS,
    EFFECTS,
    cell_stats,
    effect_values,
    eps_key,
    kind_cells,
    model_matrices,
    paired_effect,
    seed_pairs,
    shuffled_clustering,
)
from snnl.experiments.zoo import Kind, outcome
from snnl.measures import class_clustering

NAME = "transfer"
TITLE = "FGSM transferability and gradient directions"
SOURCE = "Frosst, Papernot & Hinton 2019, sec. 5"
KINDS = (Kind.NORMAL.value, Kind.ENTANGLED.value)
MEASURES = ("snnl", "silhouette")
#: No-effect margins, stated before any run: a transfer rate difference below 2 points
#: (untargeted error) or 1 point (targeted success, whose rates are several times
#: smaller) counts as none.
MARGINS = {"untargeted": 0.02, "targeted": 0.01}
#: SNNL* of the directions: 0.05 (about 2% of the no-cluster value ln 10 = 2.3) is none.
SNNL_MARGIN = 0.05
#: The silhouette (secondary, in [-1, 1]): 0.02 is none.
SILHOUETTE_MARGIN = 0.02

__all__ = [
    "NAME",
    "TITLE",
    "Settings",
    "settings",
    "run",
    "section",
    "claims",
    "gradient_directions",
    "transfer_summary",
    "transfer_pairs",
    "MARGINS",
    "SNNL_MARGIN",
    "SILHOUETTE_MARGIN",
]


@dataclass(frozen=True)
class Settings:
    """What the experiment measures on the zoo's models (saved with the results)."""

    seeds: int
    eps: float = 0.1  # the claims' FGSM L-inf budget, inputs in [0, 1]
    eps_grid: tuple[float, ...] = (0.05, 0.1, 0.2)  # the matrix at each eps (holds eps)
    transfer_points: int = 500  # test points the transfer matrix is measured on
    direction_points: int = 500  # test points whose gradient directions are clustered
    shuffles: int = 5  # label permutations of the no-cluster reference
    subset_seed: int = 0  # seeds both subsets (directions use subset_seed + 1)
    shuffle_seed: int = 0  # permutation k is seeded shuffle_seed + k
    tsne_seed: int = 0  # t-SNE random_state

    def __post_init__(self) -> None:
        if self.eps not in self.eps_grid:
            raise ValueError(f"eps {self.eps:g} must be one of eps_grid {list(self.eps_grid)}")
        if self.shuffles < 1:
            raise ValueError(f"shuffles must be >= 1, got {self.shuffles}")


def settings(config: ReproduceConfig) -> Settings:
    return Settings(seeds=config.seeds)


# ----------------------------------------------------------------------------- measures


def gradient_directions(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """FGSM directions at ``x`` (N, ...): ``sign(g)`` flattened to (N, D), values in {-1, 0, 1}.

    ``g = grad_x CE(f(x), y)`` per example (:func:`snnl.attacks.input_gradient`: eval
    mode with flags restored, no parameter ``.grad`` touched); FGSM steps
    ``x + eps * sign(g)``. A zero gradient component stays 0.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    >>> with torch.no_grad():
    ...     _ = net[1].weight.copy_(torch.eye(2))
    >>> # CE = logsumexp(x) - x_y: at x = 0, g = (1/2, 1/2) - e_y
    >>> gradient_directions(net, torch.zeros(2, 1, 2), torch.tensor([0, 1]))
    tensor([[-1.,  1.],
            [ 1., -1.]])
    """
    return input_gradient(model, x, y).flatten(1).sign()


def _kind_of(name: str) -> str:
    return name.rsplit("-", 1)[0]


def transfer_pairs(matrix: np.ndarray, names: list[str]) -> dict[str, list[float]]:
    """Transfer errors per (source kind -> target kind) block, every ordered model pair.

    The results' ``"summary"`` (untargeted FGSM at eps); the claims read the seed-pair
    kind matrix instead (:func:`snnl.experiments.transfer_matrix.kind_cells`).

    ``matrix[s, t]`` is the error of target t on examples crafted on source s; names are
    ``"<kind>-<seed>"``. Keys ``"normal->normal"``, ``"normal->entangled"``, ... (source
    -> target) list ``matrix[s, t]`` for every s != t of those kinds, row by row; keys
    ``"white-box <kind>"`` list the diagonal. Blocks without a pair are left out.

    >>> m = np.array([[0.9, 0.5, 0.2], [0.4, 0.8, 0.1], [0.3, 0.6, 0.7]])
    >>> p = transfer_pairs(m, ["normal-0", "normal-1", "entangled-0"])
    >>> p["normal->normal"], p["normal->entangled"], p["white-box entangled"]
    ([0.5, 0.4], [0.2, 0.1], [0.7])
    """
    kinds = [_kind_of(n) for n in names]
    out: dict[str, list[float]] = {}
    for src in KINDS:
        for tgt in KINDS:
            vals = [
                float(matrix[i, j])
                for i in range(len(names))
                for j in range(len(names))
                if i != j and kinds[i] == src and kinds[j] == tgt
            ]
            if vals:
                out[f"{src}->{tgt}"] = vals
    for kind in KINDS:
        diag = [float(matrix[i, i]) for i in range(len(names)) if kinds[i] == kind]
        if diag:
            out[f"white-box {kind}"] = diag
    return out


def transfer_summary(matrix: np.ndarray, names: list[str]) -> dict[str, dict[str, Any]]:
    """:func:`transfer_pairs` of every block as :func:`~snnl.experiments.base.mean_std`.

    >>> m = np.array([[0.9, 0.5, 0.2], [0.4, 0.8, 0.1], [0.3, 0.6, 0.7]])
    >>> s = transfer_summary(m, ["normal-0", "normal-1", "entangled-0"])
    >>> [round(s[k]["mean"], 6) for k in ("normal->normal", "normal->entangled")]
    [0.45, 0.15]
    """
    return {key: mean_std(vals) for key, vals in transfer_pairs(matrix, names).items()}


def _subset(n: int, size: int, seed: int) -> Tensor:
    if n <= size:
        return torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:size].sort().values


def _tsne(points: Tensor, seed: int) -> np.ndarray:
    """2-D t-SNE, perplexity min(30, (n - 1) / 3), scikit-learn's OpenMP limited to one thread.

    scikit-learn ships its own libgomp; once torch's OpenMP threads have run, the
    two pools spin against each other and Barnes-Hut t-SNE gets ~10x slower on
    2 cores (seen here: 34 s instead of 2 s for 120 points).
    """
    n = points.shape[0]
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    with threadpool_limits(limits=1):
        return tsne.fit_transform(points.double().numpy())


def run(s: Settings, context: Context) -> dict[str, Any]:
    zoo, out = context.zoo, context.out
    data = zoo.dataset
    records: list[dict[str, Any]] = []
    models: dict[str, nn.Module] = {}
    model_name = None
    for kind in KINDS:
        for ref in zoo.runs(kind, s.seeds):
            res = ref.results()
            model_name = ref.config.model
            name = f"{kind}-{ref.seed}"
            records.append(
                {
                    "name": name,
                    "kind": kind,
                    "seed": ref.seed,
                    "run": ref.describe(out)["path"],
                    **outcome(res),
                }
            )
            if records[-1]["health"] == "ok":
                models[name] = ref.load()
    names = list(models)
    pairs = seed_pairs(s.seeds)
    results: dict[str, Any] = {
        "dataset": data.name,
        "model": model_name,
        "num_classes": data.num_classes,
        "models": records,
        "names": names,
        "pairs": [list(p) for p in pairs],
        "target_rule": "(y + 1) mod C",
    }
    if not names:
        return {
            **results,
            "matrix": [],
            "clean_error": [],
            "summary": {},
            "model_matrices": {},
            "kind_matrix": {},
            "directions": None,
        }

    pick = _subset(len(data.y_test), s.transfer_points, s.subset_seed)
    x, y = data.x_test[pick], data.y_test[pick]
    context.log(
        f"transfer: FGSM matrices (untargeted, targeted) over {len(names)} models, "
        f"{len(pick)} points, eps {', '.join(f'{e:g}' for e in s.eps_grid)}"
    )
    matrices = model_matrices(models, x, y, data.num_classes, s.eps_grid)
    kind_matrix = {
        attack: {e: kind_cells(m["matrix"], names, pairs) for e, m in by_eps.items()}
        for attack, by_eps in matrices.items()
    }
    main = matrices["untargeted"][eps_key(s.eps)]
    matrix = np.array(main["matrix"])

    pick_d = _subset(len(data.y_test), s.direction_points, s.subset_seed + 1)
    xd, yd = data.x_test[pick_d], data.y_test[pick_d]
    context.log(f"transfer: class clustering of the FGSM directions, {s.shuffles} shuffles")
    per_model: dict[str, dict[str, Any]] = {}
    projections: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        directions = gradient_directions(model, xd, yd)
        per_model[name] = {
            **class_clustering(directions, yd),
            "shuffled": shuffled_clustering(directions, yd, s.shuffles, s.shuffle_seed),
        }
        kind = _kind_of(name)
        if kind not in projections:  # the lowest healthy seed of each kind
            context.log(f"transfer: t-SNE of {name}'s sign directions")
            points = _tsne(directions, s.tsne_seed).round(4).tolist()
            projections[kind] = {"model": name, "points": points}
    by_kind = {
        kind: {
            **{
                m: mean_std([per_model[n][m] for n in names if _kind_of(n) == kind])
                for m in MEASURES
            },
            "shuffled": {
                m: mean_std([per_model[n]["shuffled"][m] for n in names if _kind_of(n) == kind])
                for m in MEASURES
            },
        }
        for kind in KINDS
        if any(_kind_of(n) == kind for n in names)
    }
    return {
        **results,
        "n_points": len(pick),
        "n_directions": len(pick_d),
        "matrix": main["matrix"],  # untargeted at eps, every model pair
        "clean_error": main["clean"],
        "summary": transfer_summary(matrix, names),
        "model_matrices": matrices,
        "kind_matrix": kind_matrix,
        "directions": {
            "per_model": per_model,
            "by_kind": by_kind,
            "inputs": class_clustering(xd, yd),
            "labels": yd.tolist(),
            "projection": projections,
        },
    }


# ----------------------------------------------------------------------------- report

_ATTACK_TEXT = {
    "untargeted": "untargeted FGSM: error of the target",
    "targeted": "targeted FGSM: the target predicts (y + 1) mod C",
}


def _ms(stats: dict[str, Any] | None, digits: int = 3) -> str:
    if stats is None:
        return "-"
    return f"{stats['mean']:.{digits}f} +- {stats['std']:.{digits}f} (n={stats['n']})"


def _ci(stats: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean [low, high] (n)`` of :func:`cell_stats`, or of an Interval's fields."""
    if stats is None:
        return "-"
    if stats["low"] is None:
        return f"{stats['mean']:.{digits}f} (n=1)"
    return (
        f"{stats['mean']:.{digits}f} [{stats['low']:.{digits}f}, {stats['high']:.{digits}f}] "
        f"(n={stats['n']})"
    )


def _effect_text(cells: dict[str, list[float | None]], effect: str) -> str:
    iv = paired_effect(cells, effect)
    if iv is None:
        return "- (fewer than two pairs)"
    return f"{iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}] (n={iv.n[0]})"


def _eps_keys(results: dict[str, Any]) -> list[str]:
    return [eps_key(e) for e in results["settings"]["eps_grid"]]


def _over_clean(results: dict[str, Any], attack: str, eps: str) -> dict[str, list[float | None]]:
    """The kind matrix as the excess over each target's clean value (clean error, or its
    clean rate of predicting the target class), from the saved model matrices."""
    m = results["model_matrices"][attack][eps]
    pairs = [tuple(p) for p in results["pairs"]]
    return kind_cells(m["matrix"], results["names"], pairs, clean=m["clean"])  # type: ignore[arg-type]


def _matrix_figure(results: dict[str, Any], path: Path) -> None:
    """Per attack kind: the kind matrix at eps as a heatmap (mean and 95% interval over
    the seed pairs in each cell) above the cells' means against eps."""
    from snnl.figures import plt, save_figure

    eps = eps_key(results["settings"]["eps"])
    keys = _eps_keys(results)
    grid = np.array([float(k) for k in keys])
    shift = 0.012 * (grid.max() - grid.min() or 1.0)  # side by side: error bars readable
    fig, axes = plt.subplots(2, 2, figsize=(11.5, 9.5))
    for col, attack in enumerate(ATTACKS):
        ax = axes[0, col]
        cells = results["kind_matrix"][attack][eps]
        stats = {c: cell_stats(cells[c]) for c in CELLS}
        m = np.array([[np.nan if stats[c] is None else stats[c]["mean"] for c in CELLS[i : i + 2]]
                      for i in (0, 2)])  # fmt: skip
        top = 1.0 if attack == "untargeted" else max(0.05, float(np.nanmax(m, initial=0.0)) * 1.5)
        im = ax.imshow(m, vmin=0.0, vmax=min(top, 1.0), cmap="viridis")
        for i in range(2):
            for j in range(2):
                st = stats[CELLS[2 * i + j]]
                text = "-" if st is None else f"{st['mean']:.3f}"
                if st is not None and st["low"] is not None:
                    text += f"\n[{st['low']:.3f}, {st['high']:.3f}]"
                color = "white" if st is None or st["mean"] < 0.6 * top else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=10, color=color)
        ax.set_xticks(range(2), KINDS)
        ax.set_yticks(range(2), KINDS)
        ax.set_xlabel("target model kind (another seed)")
        if col == 0:  # the right one shares it (a second label would hit the colour bar)
            ax.set_ylabel("source model kind (FGSM crafted on)")
        ax.set_title(f"{_ATTACK_TEXT[attack]}\neps = {eps}, mean [95% CI] over seed pairs",
                     fontsize=10)  # fmt: skip
        label = "error of the target" if attack == "untargeted" else "targeted success rate"
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
        ax = axes[1, col]
        for n, (cell, style) in enumerate(zip(CELLS, ("-o", "--o", "-s", "--s"), strict=True)):
            st = [cell_stats(results["kind_matrix"][attack][k][cell]) for k in keys]
            if all(v is None for v in st):
                continue
            mean = [np.nan if v is None else v["mean"] for v in st]
            ci = [(v["mean"] - v["low"], v["high"] - v["mean"]) if v and v["low"] is not None
                  else (0.0, 0.0) for v in st]  # fmt: skip
            ax.errorbar(grid + (n - 1.5) * shift, mean, yerr=np.array(ci).T, fmt=style,
                        capsize=3, label=cell.replace("->", " -> "))  # fmt: skip
        ax.set_xlabel("eps (L-inf); the four cells side by side at each eps")
        ax.set_ylabel(label)
        ax.set_xticks(grid, keys)
        ax.set_ylim(bottom=0.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="source -> target, mean and 95% CI", title_fontsize=8)
    fig.suptitle(f"FGSM transfer between different seeds, {results['n_points']} test points")
    fig.tight_layout()
    save_figure(fig, path)


def _projection_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    d = results["directions"]
    labels = np.array(d["labels"])
    classes = int(results["num_classes"])
    kinds = [k for k in KINDS if k in d["projection"]]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 5.2), squeeze=False)
    fig.subplots_adjust(top=0.8)  # room for the suptitle above the two-line titles
    cmap = plt.get_cmap("tab10" if classes <= 10 else "tab20", classes)
    sc = None
    for ax, kind in zip(axes[0], kinds, strict=True):
        proj = d["projection"][kind]
        pts = np.array(proj["points"])
        sc = ax.scatter(
            pts[:, 0], pts[:, 1], c=labels, cmap=cmap, s=6, vmin=-0.5, vmax=classes - 0.5
        )
        c = d["per_model"][proj["model"]]
        ax.set_title(
            f"{proj['model']}: SNNL* {c['snnl']:.3f} (shuffled {c['shuffled']['snnl']:.3f}),\n"
            f"silhouette {c['silhouette']:.3f} (shuffled {c['shuffled']['silhouette']:.3f})",
            fontsize=10,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    assert sc is not None
    fig.colorbar(sc, ax=axes[0].tolist(), ticks=range(classes), label="true class")
    fig.suptitle("t-SNE of the FGSM directions sign(grad_x loss), coloured by true class")
    save_figure(fig, path)


def section(results: dict[str, Any], fig_dir: Path) -> Section:
    s = results["settings"]
    names = results["names"]
    records = results["models"]
    bad = [r for r in records if r["health"] != "ok"]
    lines = [
        f"Dataset `{results['dataset']}`, model `{results['model']}`: the zoo's normal and "
        f"entangled model of each of {s['seeds']} seed(s).",
        "",
        "| model | run | health | test accuracy |",
        "|---|---|---|---|",
    ]
    for r in records:
        health = r["health"] if r["health"] == "ok" else f"**{r['health']}** (left out)"
        lines.append(f"| {r['name']} | `{r['run']}` | {health} | {r['test_accuracy']:.4f} |")
    if bad:
        lines += [
            "",
            f"{len(bad)} run(s) were not healthy and are left out of the matrix and every "
            "mean: "
            + "; ".join(
                f"{r['name']} {r['health']} ({'; '.join(r['health_reasons'])})" for r in bad
            )
            + ".",
        ]
    if not names:
        return Section(TITLE, "\n".join([*lines, "", "No healthy model: nothing measured."]))
    eps, keys = eps_key(s["eps"]), _eps_keys(results)
    pairs = ", ".join(f"{a} -> {b}" for a, b in results["pairs"]) or "none (one seed)"
    km = results["kind_matrix"]
    lines += [
        "",
        f"FGSM at eps {', '.join(keys)} on {results['n_points']} test points (seeded subset), "
        "untargeted (value: the error of the target model) and targeted towards the class "
        f"{results['target_rule']} (value: the rate at which the target model predicts that "
        "class). Source and target are always different seeds: seed pairs (source seed -> "
        f"target seed) {pairs}. Each cell: mean and 95% t interval over the pairs "
        "whose two models are healthy (n); white-box: the source attacking itself.",
        "",
        "| attack | eps | " + " | ".join(c.replace("->", " -> ") for c in CELLS)
        + " | white-box normal | white-box entangled |",
        "|---|---|" + "---|" * (len(CELLS) + 2),
    ]  # fmt: skip
    cols = [*CELLS, "white-box normal", "white-box entangled"]
    for attack in ATTACKS:
        for k in keys:
            row = " | ".join(_ci(cell_stats(km[attack][k][c])) for c in cols)
            lines.append(f"| {attack} | {k} | {row} |")
    lines += [
        "",
        "Effects, paired over the seed pairs (mean difference [95% paired t interval] (n)): "
        "the target effect = normal -> entangled minus normal -> normal (the same examples, "
        "crafted on normal seed k, against the entangled or the normal model of seed k + 1); "
        "the source effect = entangled -> normal minus normal -> normal (the same target, "
        "examples crafted on the entangled or the normal model of seed k); both = entangled "
        "-> entangled minus normal -> normal (the comparison of the earlier row, which mixes "
        f"the two). The claims read eps {eps}; margins stated in advance: "
        f"{MARGINS['untargeted']:g} (untargeted), {MARGINS['targeted']:g} (targeted).",
        "",
        "| attack | eps | target effect | source effect | both | target effect over the "
        "targets' clean values |",
        "|---|---|---|---|---|---|",
    ]
    for attack in ATTACKS:
        for k in keys:
            row = " | ".join(_effect_text(km[attack][k], e) for e in EFFECTS)
            over = _effect_text(_over_clean(results, attack, k), "target")
            lines.append(f"| {attack} | {k} | {row} | {over} |")
    lines += [
        "",
        "The last column subtracts each target's own clean value (its clean error; for "
        "targeted FGSM its clean rate of predicting (y + 1) mod C) first, so a target that is "
        "less accurate on clean inputs does not count as more vulnerable (the source effect "
        "has the same target in both arms: the clean values cancel).",
    ]
    for attack in ATTACKS:
        m = results["model_matrices"][attack][eps]
        clean = "clean error" if attack == "untargeted" else "clean rate of (y + 1) mod C"
        lines += [
            "",
            f"Every model pair, {_ATTACK_TEXT[attack]}, eps {eps} (row: source, column: "
            "target; the diagonal is white-box):",
            "",
            "| source \\ target | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for i, src in enumerate(names):
            lines.append(f"| {src} | " + " | ".join(f"{v:.3f}" for v in m["matrix"][i]) + " |")
        lines.append(f"| {clean} | " + " | ".join(f"{v:.3f}" for v in m["clean"]) + " |")
    d = results["directions"]
    lines += [
        "",
        f"Class clustering of the FGSM gradient directions sign(grad_x loss) at "
        f"{results['n_directions']} test points. Primary measure: SNNL at its optimal "
        "temperature by true class (SNNL\\*, low = clustered), beside the same measure with "
        f"the labels shuffled ({s['shuffles']} seeded permutations, averaged), the "
        "no-cluster reference; gap = shuffled - real (high = clustered). Secondary: the "
        "silhouette by true class (high = clustered), real and shuffled. Mean +- std over "
        "the healthy seeds of each kind, then per model:",
        "",
        "| model | SNNL\\* | shuffled SNNL\\* | gap | optimal temperature | silhouette | "
        "shuffled silhouette |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, b in d["by_kind"].items():
        lines.append(
            f"| {kind} | {_ms(b['snnl'])} | {_ms(b['shuffled']['snnl'])} | | | "
            f"{_ms(b['silhouette'])} | {_ms(b['shuffled']['silhouette'])} |"
        )
    for name in names:
        pm = d["per_model"][name]
        sh = pm["shuffled"]
        lines.append(
            f"| {name} | {pm['snnl']:.4f} | {sh['snnl']:.4f} | {sh['snnl'] - pm['snnl']:.4f} | "
            f"{pm['temperature']:.4g} | {pm['silhouette']:.4f} | {sh['silhouette']:.4f} |"
        )
    inp = d["inputs"]
    lines += [
        "",
        f"Reference: the raw inputs themselves have SNNL\\* {inp['snnl']:.3f} and silhouette "
        f"{inp['silhouette']:.3f}. Projection: t-SNE (scikit-learn, PCA initialisation, "
        f"random_state {s['tsne_seed']}) of the sign directions of the lowest healthy seed "
        "of each kind.",
    ]
    _matrix_figure(results, fig_dir / "transfer_matrix.png")
    _projection_figure(results, fig_dir / "transfer_directions.png")
    return Section(
        title=TITLE,
        markdown="\n".join(lines),
        figures=[
            (
                "transfer_matrix.png",
                "FGSM transfer between different seeds, source kind x target kind, untargeted "
                "and targeted",
            ),
            ("transfer_directions.png", "t-SNE of FGSM directions, normal vs entangled"),
        ],
    )


# ----------------------------------------------------------------------------- claims


def _values_text(values: list[float]) -> str:
    return format_mean_std(mean_std(values), 3) if values else "-"


def _transfer_claims(results: dict[str, Any], setting: str, left_out: str) -> list[Claim]:
    """Target and source effect, untargeted and targeted FGSM, at the claims' eps."""
    eps = eps_key(results["settings"]["eps"])
    out = []
    texts = {
        "target": (
            "Entangled models are less vulnerable to black-box attacks based on transferability "
            "(target effect, {attack} FGSM): examples crafted on a normal model succeed less "
            "against an entangled model than against a normal one",
            "examples from normal seed k against the model of seed k + 1: entangled target",
            "normal target",
        ),
        "source": (
            "FGSM examples crafted on an entangled model transfer less (source effect, {attack} "
            "FGSM): they succeed less against a normal model than examples crafted on a normal "
            "model",
            "normal target of seed k + 1 on examples from seed k: entangled source",
            "normal source",
        ),
    }
    for attack in ATTACKS:
        cells = results.get("kind_matrix", {}).get(attack, {}).get(eps)
        for effect in ("target", "source"):
            a, b = effect_values(cells, effect) if cells else ([], [])
            claim, arm_a, arm_b = texts[effect]
            value = "error" if attack == "untargeted" else "targeted success rate ((y + 1) mod C)"
            cmp = compare_paired(
                a, b, expect="less", margin=MARGINS[attack],
                label=f"{effect} effect, {attack} FGSM {value}: {' - '.join(EFFECTS[effect])}",
                arms=(arm_a, arm_b),
            )  # fmt: skip
            note = cmp.note if len(a) >= 2 else "needs two seed pairs with healthy models"
            if effect == "target" and cells:
                over = effect_values(_over_clean(results, attack, eps), "target")
                sec = compare_paired(*over, expect="less", margin=MARGINS[attack])
                iv = sec.interval
                note += (
                    "; secondary, over each target's clean value: "
                    + ("no interval" if iv is None else
                       f"{iv.estimate:+.3g} [{iv.low:+.3g}, {iv.high:+.3g}], {sec.verdict}")
                )  # fmt: skip
            out.append(
                Claim(
                    claim.format(attack=attack),
                    SOURCE,
                    f"{setting}; {attack} FGSM eps={eps} on {results.get('n_points', 0)} test "
                    "points; source seed k, target seed k + 1 mod n",
                    f"{value} of the target, {arm_a} {_values_text(a)} vs {arm_b} "
                    f"{_values_text(b)} (n = seed pairs)",
                    cmp.verdict,
                    f"{note}; margin fixed before any run{left_out}",
                    (cmp,),
                )
            )
    return out


def _secondary(primary: Comparison, secondary: Comparison) -> str:
    """The note's sentence on the silhouette: agrees, or says the measures disagree."""
    iv = secondary.interval
    text = "no interval" if iv is None else f"{iv.estimate:+.3g} [{iv.low:+.3g}, {iv.high:+.3g}]"
    head = f"secondary (silhouette, margin {secondary.margin:g}): {secondary.verdict}, {text}"
    if secondary.verdict == primary.verdict:
        return f"{head}: the two measures agree"
    return f"{head}: the two measures disagree (the verdict is the primary measure's, SNNL*)"


def _cluster_claims(results: dict[str, Any], setting: str, left_out: str) -> list[Claim]:
    """Normal models' directions cluster (real vs shuffled SNNL*); entangled ones less."""
    d = results["directions"]
    pm = d["per_model"] if d else {}
    by_seed = {kind: {int(n.rsplit("-", 1)[1]): v for n, v in pm.items() if _kind_of(n) == kind}
               for kind in KINDS}  # fmt: skip
    normal = [by_seed["normal"][k] for k in sorted(by_seed["normal"])]
    real = [v["snnl"] for v in normal]
    shuf = [v["shuffled"]["snnl"] for v in normal]
    cmp = compare_paired(real, shuf, expect="less", margin=SNNL_MARGIN,
                         label="SNNL* of normal models' directions, real - shuffled labels",
                         arms=("true labels", "shuffled labels"))  # fmt: skip
    sil = compare_paired([v["silhouette"] for v in normal],
                         [v["shuffled"]["silhouette"] for v in normal], expect="greater",
                         margin=SILHOUETTE_MARGIN)  # fmt: skip
    note = cmp.note if len(real) >= 2 else "fewer than two healthy normal seeds"
    out = [
        Claim(
            "The FGSM gradient directions of normal models form class clusters (SNNL* of the "
            "directions by true class below the same measure on label-shuffled directions)",
            SOURCE,
            f"{setting}; {results.get('n_directions', 0)} test points",
            f"SNNL* of sign(grad_x loss), normal models: true labels {_values_text(real)} vs "
            f"shuffled labels {_values_text(shuf)}; silhouette "
            f"{_values_text([v['silhouette'] for v in normal])} vs shuffled "
            f"{_values_text([v['shuffled']['silhouette'] for v in normal])}",
            cmp.verdict,
            f"{note}; margin fixed before any run; {_secondary(cmp, sil)}" + left_out,
            (cmp,),
        )
    ]
    both = sorted(set(by_seed["normal"]) & set(by_seed["entangled"]))
    gap = {kind: [by_seed[kind][k]["shuffled"]["snnl"] - by_seed[kind][k]["snnl"] for k in both]
           for kind in KINDS}  # fmt: skip
    sgap = {kind: [by_seed[kind][k]["silhouette"] - by_seed[kind][k]["shuffled"]["silhouette"]
                   for k in both] for kind in KINDS}  # fmt: skip
    cmp = compare_paired(gap["entangled"], gap["normal"], expect="less", margin=SNNL_MARGIN,
                         label="clustering gap (shuffled - real SNNL*), entangled - normal",
                         arms=("entangled", "normal"))  # fmt: skip
    sil = compare_paired(sgap["entangled"], sgap["normal"], expect="less",
                         margin=SILHOUETTE_MARGIN)  # fmt: skip
    ent = [by_seed["entangled"][k] for k in sorted(by_seed["entangled"])]
    ent_real, ent_shuf = [v["snnl"] for v in ent], [v["shuffled"]["snnl"] for v in ent]
    ent_text = "fewer than two entangled seeds"
    if len(ent) >= 2:
        own = compare_paired(ent_real, ent_shuf, expect="less", margin=SNNL_MARGIN)
        assert own.interval is not None
        ent_text = (
            f"entangled directions themselves, real - shuffled SNNL*: "
            f"{own.interval.estimate:+.3g} [{own.interval.low:+.3g}, {own.interval.high:+.3g}] "
            f"({'clustered' if own.verdict == 'holds' else 'not shown clustered'})"
        )
    note = cmp.note if len(both) >= 2 else "needs two seeds with both models healthy"
    out.append(
        Claim(
            "The FGSM gradient directions of entangled models do not form the class clusters "
            "of normal models (a smaller clustering gap, shuffled - real SNNL*, paired by seed)",
            SOURCE,
            f"{setting}; {results.get('n_directions', 0)} test points",
            f"gap (shuffled - real SNNL*, high = clustered): entangled "
            f"{_values_text(gap['entangled'])} vs normal {_values_text(gap['normal'])}; "
            f"silhouette gap (real - shuffled): entangled {_values_text(sgap['entangled'])} vs "
            f"normal {_values_text(sgap['normal'])}; {ent_text}",
            cmp.verdict,
            f"{note}; margin fixed before any run; {_secondary(cmp, sil)}" + left_out,
            (cmp,),
        )
    )
    return out


def claims(results: dict[str, Any]) -> list[Claim]:
    bad = sum(r["health"] != "ok" for r in results["models"])
    left_out = f"; {bad} unhealthy run(s) left out" if bad else ""
    setting = f"{results['dataset']}, {results['model']}"
    return _transfer_claims(results, setting, left_out) + _cluster_claims(
        results, setting, left_out
    )
