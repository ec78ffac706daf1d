"""Experiment "entangle": normal (alpha = 0) against entangled (alpha > 0) models.

Per seed, both models are trained from the same initialisation and data order.
Reported: test accuracy (mean +- std over seeds), the SNNL of every hidden layer
(and the logits) at its optimal temperature over training, on a fixed probe
subset (the paper's per-layer figure, both models), and a 2-D PCA projection of
a hidden layer of each model.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA

from snnl.data import DataSplits
from snnl.experiments import ReproduceConfig, Section, mean_std
from snnl.train import TrainConfig, load_config_dataset, load_run, train

NAME = "entangle"
TITLE = "Entangled training (eq. 3): accuracy and per-layer SNNL"
KINDS = ("normal", "entangled")
PROJECTION_POINTS = 600


def settings(config: ReproduceConfig) -> dict[str, Any]:
    """Training settings for the dataset; ``--full`` gives the longer ones."""
    small = config.dataset in {"digits", "mnist1d"}  # MLP-sized inputs
    default_model = "mlp" if small else "resnet20" if config.dataset == "cifar10" else "cnn"
    model = config.model or default_model
    long_epochs, short_epochs = (40, 12) if small else (20, 6)
    epochs = config.epochs or (long_epochs if config.full else short_epochs)
    return {
        "model": model,
        "epochs": epochs,
        "batch_size": 128,
        "lr": 1e-3,
        "alpha": 0.003,  # learned T near the optimum: 0.01 already collapses digits MLPs
        "temperature": None,
        "learn_temperature": True,
        "probe_size": 500,
        "model_kwargs": {"widths": [256, 256, 256]} if model == "mlp" and not config.full else {},
    }


def load_data(config: ReproduceConfig) -> DataSplits:
    """The dataset (and fixed split) the experiment's runs are trained on."""
    return load_config_dataset(train_config(config, "normal", 0))


def train_config(config: ReproduceConfig, kind: str, seed: int) -> TrainConfig:
    s = settings(config)
    return TrainConfig(
        dataset=config.dataset,
        model=s["model"],
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        alpha=0.0 if kind == "normal" else s["alpha"],
        temperature=s["temperature"],
        learn_temperature=s["learn_temperature"],
        seed=seed,
        probe_size=s["probe_size"],
        model_kwargs=s["model_kwargs"],
        data_dir=config.data_dir,
        limit_train=config.limit_train,
        limit_test=config.limit_test,
    )


def run_dir(out: Path, kind: str, seed: int) -> Path:
    return out / "runs" / f"{kind}-seed{seed}"


def trained_models(
    config: ReproduceConfig, out: Path, dataset: DataSplits, seeds: int | None = None
) -> dict[str, list[Path]]:
    """Train (or reuse finished / resume unfinished) normal and entangled runs per seed.

    Shared with the other experiments, which study these same models.
    """
    dirs: dict[str, list[Path]] = {k: [] for k in KINDS}
    for seed in range(seeds or config.seeds):
        for kind in KINDS:
            d = run_dir(out, kind, seed)
            if not (d / "results.json").exists():
                train(train_config(config, kind, seed), d, resume=True, dataset=dataset)
            dirs[kind].append(d)
    return dirs


def _projection(model: torch.nn.Module, layer: str, x: torch.Tensor) -> np.ndarray:
    from snnl.taps import capture

    acts = capture(model, x, [layer])[layer].double().numpy()
    return PCA(n_components=2, random_state=0).fit_transform(acts)


def run(config: ReproduceConfig, out: Path) -> dict[str, Any]:
    dataset = load_data(config)
    dirs = trained_models(config, out, dataset)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for kind in KINDS:
        for d in dirs[kind]:
            res = json.loads((d / "results.json").read_text())
            runs[kind].append(
                {
                    "seed": res["config"]["seed"],
                    "dir": str(d.relative_to(out)),
                    "test_accuracy": res["final"]["test_accuracy"],
                    "probe_snnl": [h["probe_snnl"] for h in res["history"]],
                    "temperature": [h["temperature"] for h in res["history"]],
                    "seconds": res["timing"]["total_seconds"],
                }
            )
    layers = json.loads((dirs["normal"][0] / "results.json").read_text())["layers"]
    projected_layer = layers[len(layers) // 2]
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(dataset.y_test), generator=g)[:PROJECTION_POINTS]
    projections = {}
    for kind in KINDS:
        model, _ = load_run(dirs[kind][0], dataset=dataset)
        xy = _projection(model, projected_layer, dataset.x_test[pick])
        projections[kind] = xy.round(5).tolist()
    return {
        "settings": settings(config),
        "dataset": dataset.name,
        "layers": [*layers, "logits"],
        "runs": runs,
        "accuracy": {k: mean_std([r["test_accuracy"] for r in runs[k]]) for k in KINDS},
        "final_snnl": {
            k: {
                layer: mean_std([r["probe_snnl"][-1][layer] for r in runs[k]])
                for layer in [*layers, "logits"]
            }
            for k in KINDS
        },
        "projection": {
            "layer": projected_layer,
            "labels": dataset.y_test[pick].tolist(),
            "points": projections,
        },
        "train_config_example": asdict(train_config(config, "entangled", 0)),
    }


def section(results: dict[str, Any], fig_dir: Path) -> Section:
    from snnl.figures import plt, save_figure

    layers = results["layers"]
    colors = {"normal": "C0", "entangled": "C3"}
    # per-layer SNNL over training
    cols = min(4, len(layers))
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, layer in zip(axes.flat, layers, strict=False):
        for kind in KINDS:
            curves = np.array([[e[layer] for e in r["probe_snnl"]] for r in results["runs"][kind]])
            epochs = np.arange(1, curves.shape[1] + 1)
            mean, std = curves.mean(0), curves.std(0)
            ax.plot(epochs, mean, color=colors[kind], label=kind)
            ax.fill_between(epochs, mean - std, mean + std, color=colors[kind], alpha=0.2)
        ax.set_title(layer, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(layers) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("SNNL at optimal T")
    axes[0, 0].legend(frameon=False, fontsize=8)
    fig.suptitle("SNNL of every layer during training (probe subset, mean +- std over seeds)")
    fig.tight_layout()
    save_figure(fig, fig_dir / "entangle_layers.png")

    # projections
    proj = results["projection"]
    labels = np.array(proj["labels"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, kind in zip(axes, KINDS, strict=True):
        pts = np.array(proj["points"][kind])
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=labels, cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
        ax.set_title(f"{kind} model, layer {proj['layer']} (PCA)")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes, ticks=range(10), label="class")
    save_figure(fig, fig_dir / "entangle_projection.png")

    acc = results["accuracy"]
    lines = [
        f"Dataset `{results['dataset']}`, model `{results['settings']['model']}`, "
        f"{results['settings']['epochs']} epochs, alpha = {results['settings']['alpha']} "
        f"for the entangled model (loss = CE - alpha * sum of hidden-layer SNNL), "
        f"{acc['normal']['n']} seed(s).",
        "",
        "| model | test accuracy (mean +- std) | per seed |",
        "|---|---|---|",
    ]
    for kind in KINDS:
        a = acc[kind]
        per_seed = ", ".join(f"{v:.4f}" for v in a["values"])
        lines.append(f"| {kind} | {a['mean']:.4f} +- {a['std']:.4f} | {per_seed} |")
    lines += ["", "Final SNNL at the optimal temperature (probe subset):", ""]
    lines.append("| layer | normal | entangled |")
    lines.append("|---|---|---|")
    for layer in layers:
        cells = [
            f"{results['final_snnl'][k][layer]['mean']:.4f} +- "
            f"{results['final_snnl'][k][layer]['std']:.4f}"
            for k in KINDS
        ]
        lines.append(f"| {layer} | {cells[0]} | {cells[1]} |")
    return Section(
        title=TITLE,
        markdown="\n".join(lines),
        figures=[
            ("entangle_layers.png", "SNNL of every layer over training, both models"),
            ("entangle_projection.png", "2-D PCA projection of a hidden layer, per model"),
        ],
    )
