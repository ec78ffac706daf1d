"""The figures of experiment "entangle" (:mod:`snnl.experiments.entangle`), drawn from
its saved results: the sweep per setting and seed, each layer's SNNL* over training, the
activation scale over training, a 2-D PCA projection of a hidden layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def short_label(label: str) -> str:
    """A setting label, one word a line, for an axis tick."""
    return "\n".join(label.replace("authors: fixed", "authors").split())


def sweep_figure(results: dict[str, Any], path: Path) -> None:
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
            [short_label(k) for k in sweep + others],
            fontsize=7,
        )
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title("dots: healthy runs, red x: collapsed or diverged", fontsize=9)
    fig.suptitle(f"Entangled objective on {results['dataset']} ({results['model']}), per seed")
    fig.tight_layout()
    save_figure(fig, path)


def layers_figure(results: dict[str, Any], path: Path, kinds: dict[str, str], title: str) -> None:
    """SNNL* of every layer (and the logits) against the epoch, one line a setting of
    ``kinds`` (label -> colour), mean +- std over its healthy runs."""
    from snnl.figures import plt, save_figure

    first = next(r for r in results["runs"] if r["setting"] in kinds)
    layers = [*first["layers"], "logits"]
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
    fig.suptitle(f"{title}: SNNL* of every layer during training (healthy runs, mean +- std "
                 "over seeds)")  # fmt: skip
    fig.tight_layout()
    save_figure(fig, path)


def scale_figure(results: dict[str, Any], path: Path) -> None:
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


def projection_figure(results: dict[str, Any], path: Path) -> None:
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
