"""Experiment "transfer": FGSM transferability and gradient directions, normal vs entangled.

Frosst, Papernot & Hinton (2019, sec. 5) report that FGSM examples transfer less
between entangled models, and that a t-SNE of the FGSM gradient directions shows
class clusters for a normal model and none for an entangled one. This experiment
studies the zoo's normal and entangled model of every seed (runs whose health is not
"ok" are listed and left out).

1. Transfer matrix (Szegedy et al. 2013, Table 2; :func:`snnl.attacks.transfer_matrix`):
   FGSM with ``eps`` on a seeded subset of ``transfer_points`` test points;
   ``matrix[s, t]`` = error of target t on the examples crafted on source s (the
   diagonal is the white-box error). Within a kind, every ordered pair of different
   seeds (s -> t) is one transfer measurement.
2. Gradient directions (:func:`gradient_directions`): ``sign(g)``, the FGSM step, with
   ``g = grad_x CE(f(x), y)`` (:func:`snnl.attacks.input_gradient`) at a seeded subset
   of ``direction_points`` test points. Their class clustering is
   :func:`snnl.measures.class_clustering`: SNNL at its optimal temperature by true class
   (high = no class clusters) and the silhouette (high = clustered), also for the raw
   inputs as a reference. For the lowest healthy seed of each kind the sign directions
   are projected to 2-D by t-SNE (scikit-learn, PCA initialisation).
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

from snnl.attacks import fgsm, input_gradient, transfer_matrix
from snnl.experiments.base import (
    Claim,
    Context,
    Section,
    compare_groups,
    format_mean_std,
    mean_std,
)
from snnl.experiments.config import ReproduceConfig
from snnl.experiments.zoo import Kind, outcome
from snnl.measures import class_clustering

NAME = "transfer"
TITLE = "FGSM transferability and gradient directions"
SOURCE = "Frosst, Papernot & Hinton 2019, sec. 5"
KINDS = (Kind.NORMAL.value, Kind.ENTANGLED.value)
MEASURES = ("snnl", "silhouette")

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
]


@dataclass(frozen=True)
class Settings:
    """What the experiment measures on the zoo's models (saved with the results)."""

    seeds: int
    eps: float = 0.1  # FGSM L-inf budget, inputs in [0, 1]
    transfer_points: int = 500  # test points the transfer matrix is measured on
    direction_points: int = 500  # test points whose gradient directions are clustered
    subset_seed: int = 0  # seeds both subsets (directions use subset_seed + 1)
    tsne_seed: int = 0  # t-SNE random_state


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
    """Transfer errors per (source kind -> target kind) block, one per ordered model pair.

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
    results: dict[str, Any] = {
        "dataset": data.name,
        "model": model_name,
        "num_classes": data.num_classes,
        "models": records,
        "names": names,
    }
    if not names:
        return {**results, "matrix": [], "clean_error": [], "summary": {}, "directions": None}

    pick = _subset(len(data.y_test), s.transfer_points, s.subset_seed)
    x, y = data.x_test[pick], data.y_test[pick]
    context.log(f"transfer: FGSM matrix over {len(names)} models, {len(pick)} points")
    res = transfer_matrix(models, x, y, lambda m, xb, yb: fgsm(m, xb, yb, s.eps))
    matrix = res.matrix.numpy()

    pick_d = _subset(len(data.y_test), s.direction_points, s.subset_seed + 1)
    xd, yd = data.x_test[pick_d], data.y_test[pick_d]
    per_model: dict[str, dict[str, float]] = {}
    projections: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        directions = gradient_directions(model, xd, yd)
        per_model[name] = class_clustering(directions, yd)
        kind = _kind_of(name)
        if kind not in projections:  # the lowest healthy seed of each kind
            context.log(f"transfer: t-SNE of {name}'s sign directions")
            points = _tsne(directions, s.tsne_seed).round(4).tolist()
            projections[kind] = {"model": name, "points": points}
    by_kind = {
        kind: {
            m: mean_std([per_model[n][m] for n in names if _kind_of(n) == kind]) for m in MEASURES
        }
        for kind in KINDS
        if any(_kind_of(n) == kind for n in names)
    }
    return {
        **results,
        "n_points": len(pick),
        "n_directions": len(pick_d),
        "matrix": matrix.tolist(),
        "clean_error": res.clean_error.tolist(),
        "summary": transfer_summary(matrix, names),
        "directions": {
            "per_model": per_model,
            "by_kind": by_kind,
            "inputs": class_clustering(xd, yd),
            "labels": yd.tolist(),
            "projection": projections,
        },
    }


# ----------------------------------------------------------------------------- report


def _ms(stats: dict[str, Any] | None, digits: int = 3) -> str:
    if stats is None:
        return "-"
    return f"{stats['mean']:.{digits}f} +- {stats['std']:.{digits}f} (n={stats['n']})"


def _heatmap(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    names = results["names"]
    m = np.array(results["matrix"])
    size = 1.5 + 0.75 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(len(names)):
        for j in range(len(names)):
            color = "white" if m[i, j] < 0.6 else "black"
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("target model")
    ax.set_ylabel("source model (FGSM crafted on)")
    fig.colorbar(im, ax=ax, label="error of the target")
    eps = results["settings"]["eps"]
    ax.set_title(f"FGSM transfer error, eps = {eps:g}, {results['n_points']} test points")
    fig.tight_layout()
    save_figure(fig, path)


def _projection_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    d = results["directions"]
    labels = np.array(d["labels"])
    classes = int(results["num_classes"])
    kinds = [k for k in KINDS if k in d["projection"]]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4.6), squeeze=False)
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
            f"{proj['model']}: SNNL* {c['snnl']:.3f}, silhouette {c['silhouette']:.3f}",
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
    m = results["matrix"]
    lines += [
        "",
        f"FGSM with eps = {s['eps']:g} on {results['n_points']} test points (seeded subset). "
        "Entry (row s, column t) = error of target t on the examples crafted on source s; "
        "the diagonal is the white-box error.",
        "",
        "| source \\ target | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for i, src in enumerate(names):
        lines.append(f"| {src} | " + " | ".join(f"{v:.3f}" for v in m[i]) + " |")
    lines.append("| clean error | " + " | ".join(f"{v:.3f}" for v in results["clean_error"]) + " |")
    summary = results["summary"]
    lines += [
        "",
        "Transfer error per block, mean +- std over the ordered pairs of different models "
        "(n = pairs; pairs share models, so they are not independent):",
        "",
        "| source -> target | error of the target |",
        "|---|---|",
    ]
    for key in (
        "normal->normal",
        "entangled->entangled",
        "normal->entangled",
        "entangled->normal",
        "white-box normal",
        "white-box entangled",
    ):
        if key in summary:
            lines.append(f"| {key.replace('->', ' -> ')} | {_ms(summary[key])} |")
    for kind in KINDS:
        errs = [
            e for n, e in zip(names, results["clean_error"], strict=True) if _kind_of(n) == kind
        ]
        if errs:
            lines.append(f"| clean error, {kind} | {_ms(mean_std(errs))} |")
    d = results["directions"]
    lines += [
        "",
        f"Class clustering of the FGSM gradient directions at {results['n_directions']} test "
        "points: SNNL at its optimal temperature by true class (SNNL*: high = no class "
        "clusters) and the silhouette by true class (high = clustered) of sign(grad_x loss), "
        "the FGSM step. Mean +- std over the healthy seeds of each kind, then per model:",
        "",
        "| model | SNNL* | optimal temperature | silhouette |",
        "|---|---|---|---|",
    ]
    for kind, b in d["by_kind"].items():
        lines.append(f"| {kind} | {_ms(b['snnl'])} | | {_ms(b['silhouette'])} |")
    for name in names:
        pm = d["per_model"][name]
        lines.append(
            f"| {name} | {pm['snnl']:.4f} | {pm['temperature']:.4g} | {pm['silhouette']:.4f} |"
        )
    inp = d["inputs"]
    lines += [
        "",
        f"Reference: the raw inputs themselves have SNNL* {inp['snnl']:.3f} and silhouette "
        f"{inp['silhouette']:.3f}. Projection: t-SNE (scikit-learn, PCA initialisation, "
        f"random_state {s['tsne_seed']}) of the sign directions of the lowest healthy seed "
        "of each kind.",
    ]
    _heatmap(results, fig_dir / "transfer_matrix.png")
    _projection_figure(results, fig_dir / "transfer_directions.png")
    return Section(
        title=TITLE,
        markdown="\n".join(lines),
        figures=[
            ("transfer_matrix.png", "FGSM transfer error between all healthy models"),
            ("transfer_directions.png", "t-SNE of FGSM directions, normal vs entangled"),
        ],
    )


# ----------------------------------------------------------------------------- claims


def _values_text(values: list[float]) -> str:
    return format_mean_std(mean_std(values), 3) if values else "-"


def claims(results: dict[str, Any]) -> list[Claim]:
    s = results["settings"]
    bad = sum(r["health"] != "ok" for r in results["models"])
    left_out = f"; {bad} unhealthy run(s) left out" if bad else ""
    base = f"{results['dataset']}, {results['model']}"
    pairs = (
        transfer_pairs(np.array(results["matrix"]), results["names"]) if results["names"] else {}
    )
    ent, nor = pairs.get("entangled->entangled", []), pairs.get("normal->normal", [])
    measured = (
        f"error of the target on FGSM examples from another model of its kind: entangled -> "
        f"entangled {_values_text(ent)} vs normal -> normal {_values_text(nor)} (n = ordered "
        "pairs of different seeds)"
    )
    cmp = compare_groups(ent, nor, expect="less", label="transfer error, entangled - normal")
    verdict, note = cmp
    if len(ent) < 2 or len(nor) < 2:
        note = "needs two healthy models of each kind (two seeds)"
    else:
        note += "; pairs share models, so the interval is optimistic"
    out = [
        Claim(
            "FGSM examples transfer less between entangled models",
            SOURCE,
            f"{base}; FGSM eps={s['eps']:g} on {results.get('n_points', 0)} test points",
            measured,
            verdict,  # type: ignore[arg-type]
            note + left_out,
            (cmp,),
        )
    ]
    d = results["directions"]
    per_model = d["per_model"] if d else {}
    values = {
        kind: [v["snnl"] for n, v in per_model.items() if _kind_of(n) == kind] for kind in KINDS
    }
    sil = {
        kind: [v["silhouette"] for n, v in per_model.items() if _kind_of(n) == kind]
        for kind in KINDS
    }
    measured = (
        f"SNNL* by true class of sign(grad_x loss): entangled {_values_text(values['entangled'])} "
        f"vs normal {_values_text(values['normal'])}; silhouette: entangled "
        f"{_values_text(sil['entangled'])} vs normal {_values_text(sil['normal'])}"
    )
    cmp = compare_groups(
        values["entangled"], values["normal"], expect="greater", label="SNNL*, entangled - normal"
    )
    verdict, note = cmp
    if len(values["entangled"]) < 2 or len(values["normal"]) < 2:
        note = "fewer than two healthy seeds of a kind"
    out.append(
        Claim(
            "The FGSM gradient directions of normal models form class clusters and those of "
            "entangled models do not (higher SNNL* of the directions for entangled models)",
            SOURCE,
            f"{base}; {results.get('n_directions', 0)} test points",
            measured,
            verdict,  # type: ignore[arg-type]
            note + left_out,
            (cmp,),
        )
    )
    return out
