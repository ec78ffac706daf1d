"""Experiment "transfer": FGSM transferability and gradient directions, normal vs entangled.

The SNNL paper (section 5) reports that FGSM examples transfer less between
entangled models, and that a 2-D t-SNE of the FGSM gradient directions shows
class clusters for a normal model and none for an entangled one. This
experiment studies the runs of experiment "entangle" (the same trained models):
``max(2, min(seeds, 3))`` seeds of each kind, so there are always >= 2 models of
each kind (with ``--seeds 1`` a second seed is trained).

1. Transfer matrix (Szegedy et al. 2013, Table 2): FGSM with eps = 0.1 on a
   seeded subset of up to ``MAX_POINTS`` test points; ``matrix[s, t]`` = error
   of target t on the examples crafted on source s (diagonal = white-box error).
   Summary: mean off-diagonal error within normal models, within entangled
   models, normal -> entangled and entangled -> normal, the white-box error and
   the clean error per kind.
2. Gradient directions: ``d_i = sign(grad_x CE(f(x_i), y_i))`` (the FGSM step
   direction, flattened) at a seeded subset of up to ``MAX_DIRECTIONS`` test
   points. Class clustering of these directions is measured for every model by
   the silhouette score by true class (euclidean; high = clustered) and by the
   SNNL at its optimal temperature (:func:`snnl.optimal_temperature`; low =
   clustered), both also for the L2-normalised gradient ``g / ||g||`` and, as a
   reference, for the raw inputs. For the seed-0 model of each kind the sign
   directions are projected to 2-D with t-SNE (scikit-learn, ``random_state=0``,
   PCA initialisation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from snnl.attacks import fgsm, transfer_matrix
from snnl.experiments import ReproduceConfig, Section, mean_std
from snnl.experiments import entangle as ent
from snnl.loss import optimal_temperature
from snnl.taps import eval_mode
from snnl.train import load_run

NAME = "transfer"
TITLE = "FGSM transferability and gradient directions"
KINDS = ent.KINDS
EPS = 0.1  # FGSM budget for inputs in [0, 1]
MAX_POINTS = 1000  # test points for the transfer matrix
MAX_DIRECTIONS = 500  # test points for the gradient directions
MAX_SEEDS = 3
SUBSET_SEED = 0
DIRECTIONS = ("sign", "normalised")

__all__ = [
    "NAME",
    "TITLE",
    "run",
    "section",
    "gradient_directions",
    "clustering",
    "transfer_summary",
    "seeds_used",
]


def seeds_used(config_seeds: int) -> int:
    """Seeds of each kind studied: ``max(2, min(config_seeds, 3))``.

    >>> seeds_used(1), seeds_used(3), seeds_used(5)
    (2, 3, 3)
    """
    return max(2, min(config_seeds, MAX_SEEDS))


def gradient_directions(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """FGSM directions at ``x``: {"sign": sign(g), "normalised": g / ||g||_2}, each (N, D).

    ``g = grad_x CE(f(x), y)`` per example, flattened; taken in eval mode (the
    model's train/eval flags are restored) with ``torch.autograd.grad`` so no
    parameter ``.grad`` changes. A zero gradient stays zero in both.

    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> d = gradient_directions(net, torch.rand(5, 1, 4), torch.randint(0, 3, (5,)))
    >>> d["sign"].shape, bool(torch.allclose(d["normalised"].norm(dim=1), torch.ones(5)))
    (torch.Size([5, 4]), True)
    """
    with eval_mode(model), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(xg), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    g = g.flatten(1)
    return {"sign": g.sign(), "normalised": g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)}


def clustering(features: Tensor, labels: Tensor) -> dict[str, float]:
    """Class clustering of ``features`` (N, D): silhouette by class and SNNL at the optimal T.

    silhouette (scikit-learn, euclidean) is in [-1, 1], high = clustered by class;
    ``snnl`` = min_T SNNL(features, labels, T), low = clustered by class.

    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(40) % 2
    >>> tight = clustering(torch.randn(40, 3, generator=g) + 10 * y[:, None], y)
    >>> loose = clustering(torch.randn(40, 3, generator=g), y)
    >>> tight["silhouette"] > loose["silhouette"], tight["snnl"] < loose["snnl"]
    (True, True)
    """
    f = features.detach().double().flatten(1)
    with threadpool_limits(limits=1):  # see _tsne
        sil = float(silhouette_score(f.numpy(), labels.numpy(), metric="euclidean"))
    temperature, value = optimal_temperature(f, labels)
    return {"silhouette": sil, "snnl": float(value), "temperature": float(temperature)}


def transfer_summary(matrix: np.ndarray, names: list[str]) -> dict[str, float]:
    """Mean transfer error per (source kind, target kind) block, off the diagonal.

    Keys ``normal->normal``, ``normal->entangled``, ``entangled->normal``,
    ``entangled->entangled`` (source -> target) and ``white-box normal`` /
    ``white-box entangled`` (diagonal means). A name's kind is its part before "-".

    >>> m = np.array([[0.9, 0.5, 0.2], [0.4, 0.8, 0.1], [0.3, 0.6, 0.7]])
    >>> s = transfer_summary(m, ["normal-0", "normal-1", "entangled-0"])
    >>> [round(s[k], 6) for k in ("normal->normal", "normal->entangled", "entangled->normal")]
    [0.45, 0.15, 0.45]
    """
    kinds = [n.split("-")[0] for n in names]
    out: dict[str, float] = {}
    for src in KINDS:
        for tgt in KINDS:
            vals = [
                matrix[i, j]
                for i in range(len(names))
                for j in range(len(names))
                if i != j and kinds[i] == src and kinds[j] == tgt
            ]
            if vals:
                out[f"{src}->{tgt}"] = float(np.mean(vals))
    for kind in KINDS:
        diag = [matrix[i, i] for i in range(len(names)) if kinds[i] == kind]
        if diag:
            out[f"white-box {kind}"] = float(np.mean(diag))
    return out


def _subset(n: int, size: int, seed: int) -> Tensor:
    if n <= size:
        return torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:size].sort().values


def _tsne(points: Tensor) -> np.ndarray:
    """2-D t-SNE, perplexity min(30, (n - 1) / 3), sklearn's OpenMP limited to one thread.

    scikit-learn ships its own libgomp; once torch's OpenMP threads have run, the
    two pools spin against each other and Barnes-Hut t-SNE gets ~10x slower on
    2 cores (seen here: 34 s instead of 2 s for 120 points).
    """
    n = points.shape[0]
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0)
    with threadpool_limits(limits=1):
        return tsne.fit_transform(points.double().numpy())


def run(config: ReproduceConfig, out: Path) -> dict[str, Any]:
    dataset = ent.load_data(config)
    n_seeds = seeds_used(config.seeds)
    dirs = ent.trained_models(config, out, dataset, seeds=n_seeds)
    models: dict[str, nn.Module] = {}
    for kind in KINDS:
        for seed, d in enumerate(dirs[kind]):
            models[f"{kind}-{seed}"], _ = load_run(d, dataset=dataset)

    pick = _subset(len(dataset.y_test), MAX_POINTS, SUBSET_SEED)
    x, y = dataset.x_test[pick], dataset.y_test[pick]
    res = transfer_matrix(models, x, y, lambda m, xb, yb: fgsm(m, xb, yb, EPS))
    names = list(res.names)
    matrix = res.matrix.numpy()

    pick_d = _subset(len(dataset.y_test), MAX_DIRECTIONS, SUBSET_SEED + 1)
    xd, yd = dataset.x_test[pick_d], dataset.y_test[pick_d]
    per_model: dict[str, dict[str, dict[str, float]]] = {}
    projections: dict[str, list[list[float]]] = {}
    for name, model in models.items():
        dirs_m = gradient_directions(model, xd, yd)
        per_model[name] = {k: clustering(dirs_m[k], yd) for k in DIRECTIONS}
        if name.endswith("-0"):
            projections[name.split("-")[0]] = _tsne(dirs_m["sign"]).round(4).tolist()
    inputs_clustering = clustering(xd.flatten(1), yd)
    by_kind = {
        kind: {
            direction: {
                measure: mean_std(
                    [per_model[n][direction][measure] for n in names if n.startswith(kind)]
                )
                for measure in ("silhouette", "snnl")
            }
            for direction in DIRECTIONS
        }
        for kind in KINDS
    }
    return {
        "dataset": dataset.name,
        "settings": {
            "eps": EPS,
            "seeds_per_kind": n_seeds,
            "n_points": len(pick),
            "n_directions": len(pick_d),
            "subset_seed": SUBSET_SEED,
            "projection": "t-SNE (scikit-learn, random_state=0, init='pca') of sign directions",
        },
        "names": names,
        "runs": {
            name: str(dirs[name.split("-")[0]][int(name.split("-")[1])].relative_to(out))
            for name in names
        },
        "matrix": matrix.round(6).tolist(),
        "clean_error": res.clean_error.numpy().round(6).tolist(),
        "summary": transfer_summary(matrix, names),
        "clean_error_by_kind": {
            kind: mean_std(
                [
                    float(e)
                    for n, e in zip(names, res.clean_error.tolist(), strict=True)
                    if n.startswith(kind)
                ]
            )
            for kind in KINDS
        },
        "directions": {
            "per_model": per_model,
            "by_kind": by_kind,
            "inputs": inputs_clustering,
            "labels": yd.tolist(),
            "projection": projections,
        },
    }


# --------------------------------------------------------------------------- report


def _heatmap(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    names = results["names"]
    m = np.array(results["matrix"])
    size = 1.0 + 0.75 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j,
                i,
                f"{m[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if m[i, j] < 0.6 else "black",
            )
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("target model")
    ax.set_ylabel("source model (FGSM crafted on)")
    fig.colorbar(im, ax=ax, label="error of target")
    ax.set_title(f"FGSM transfer error, eps = {results['settings']['eps']}")
    save_figure(fig, path)


def _projection_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    d = results["directions"]
    labels = np.array(d["labels"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    sc = None
    for ax, kind in zip(axes, KINDS, strict=True):
        pts = np.array(d["projection"][kind])
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=labels, cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
        c = d["per_model"][f"{kind}-0"]["sign"]
        ax.set_title(
            f"{kind}-0\nsilhouette {c['silhouette']:.3f}, SNNL* {c['snnl']:.3f}", fontsize=10
        )
        ax.set_xticks([])
        ax.set_yticks([])
    assert sc is not None
    fig.colorbar(sc, ax=axes, ticks=range(10), label="true class")
    fig.suptitle("t-SNE of FGSM directions sign(grad_x loss)", y=1.05)
    save_figure(fig, path)


def section(results: dict[str, Any], fig_dir: Path) -> Section:
    _heatmap(results, fig_dir / "transfer_matrix.png")
    _projection_figure(results, fig_dir / "transfer_directions.png")
    st = results["settings"]
    names = results["names"]
    m = results["matrix"]
    lines = [
        f"Dataset `{results['dataset']}`; {st['seeds_per_kind']} normal and "
        f"{st['seeds_per_kind']} entangled models from experiment entangle. FGSM with "
        f"eps = {st['eps']} on {st['n_points']} test points. Entry (row s, column t) = "
        "error of target t on the examples crafted on source s; the diagonal is the "
        "white-box error.",
        "",
        "| source \\ target | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for i, src in enumerate(names):
        lines.append(f"| {src} | " + " | ".join(f"{v:.3f}" for v in m[i]) + " |")
    lines.append("| clean error | " + " | ".join(f"{v:.3f}" for v in results["clean_error"]) + " |")
    s = results["summary"]
    ce = results["clean_error_by_kind"]
    lines += [
        "",
        "Summary (mean over model pairs, off the diagonal unless white-box):",
        "",
        "| quantity | error |",
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
        if key in s:
            lines.append(f"| {key.replace('->', ' -> ')} | {s[key]:.3f} |")
    for kind in KINDS:
        lines.append(f"| clean {kind} | {ce[kind]['mean']:.3f} +- {ce[kind]['std']:.3f} |")
    d = results["directions"]
    lines += [
        "",
        f"Class clustering of the FGSM gradient directions at {st['n_directions']} test "
        "points (silhouette by true class: high = clustered; SNNL at its optimal "
        "temperature: low = clustered). `sign` = sign(grad), the FGSM step; "
        "`normalised` = grad / ||grad||. Mean +- std over models of each kind:",
        "",
        "| model | silhouette (sign) | SNNL* (sign) | silhouette (normalised) "
        "| SNNL* (normalised) |",
        "|---|---|---|---|---|",
    ]
    for kind in KINDS:
        b = d["by_kind"][kind]
        cells = [
            f"{b[direction][measure]['mean']:.3f} +- {b[direction][measure]['std']:.3f}"
            for direction in DIRECTIONS
            for measure in ("silhouette", "snnl")
        ]
        lines.append(f"| {kind} (all seeds) | " + " | ".join(cells) + " |")
    for name in names:
        pm = d["per_model"][name]
        cells = [f"{pm[di][me]:.3f}" for di in DIRECTIONS for me in ("silhouette", "snnl")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    inp = d["inputs"]
    lines += [
        "",
        f"Reference: the raw inputs themselves have silhouette {inp['silhouette']:.3f} and "
        f"SNNL* {inp['snnl']:.3f}. Projection: {st['projection']}.",
    ]
    return Section(
        title=TITLE,
        markdown="\n".join(lines),
        figures=[
            ("transfer_matrix.png", "FGSM transfer error between all models"),
            ("transfer_directions.png", "t-SNE of FGSM directions, normal vs entangled"),
        ],
    )
