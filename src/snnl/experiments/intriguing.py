"""Experiment "intriguing": Szegedy et al. (2013)'s MNIST study on the embedded real MNIST.

Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow & Fergus, "Intriguing properties
of neural networks" (ICLR 2014, arXiv:1312.6199), section 4 on MNIST, redone on
``mnist5k`` (5,000 real MNIST images, the zoo's fixed 4,000/1,000 split; the paper
used the 60,000/10,000 MNIST sets).

Models (the paper's Table 1), trained here by a small deterministic loop (Adam, batch
128, seeded initialisation and batch order; lr 1e-3 for the FC models, 1e-2 for the
autoencoder and its softmax), inputs in [0, 1] pixels
(the models' ``Normalize`` is the identity, so the weight decay is in the pixel units
the paper used):

* ``FC10(lambda)``: softmax regression (``MLP`` with no hidden layer). The loss is
  ``mean CE + lambda / 2 * ||W||_F^2`` (weights only, not biases): lambda is the
  coefficient of the usual weight-decay term (its gradient is ``lambda * W``) added
  to the *mean* cross-entropy. With this reading FC10(1) is a heavily shrunk,
  class-mean-like classifier, which is what the paper's 20% test error describes.
* ``FC100-100-10`` and ``FC200-200-10``: ReLU MLPs (the paper does not name the
  activation in what we could read; ReLU is the MLP of :mod:`snnl.models`), weight
  decay (1e-5, 1e-5, 1e-6) on the three weight matrices, the values reproductions
  use (FIELD_NOTES section 7).
* ``AE400-10``: the paper's text, as we recall it (it was not retrievable offline),
  describes a single-layer sparse autoencoder with 400 sigmoid units and a softmax
  classifier on its code, the autoencoder layer not fine-tuned; the seed notes say
  only that the AE is trained without labels. We pre-train
  :class:`snnl.models.AutoencoderClassifier` on reconstruction with the UFLDL sparse
  autoencoder objective, ``mean_i 1/2 ||x_hat_i - x_i||^2 + lambda/2 (||W_enc||^2 +
  ||W_dec||^2) + beta * sum_j KL(rho || rho_hat_j)`` (rho_hat_j the mean code of unit
  j over the batch; lambda 3e-3, beta 3, rho 0.1), then train only the softmax on the
  frozen code, computed once (``mean CE + 1e-4 / 2 ||W||^2``).

Training seeds (``Settings.train_seeds``: 2 in the default, ``max(3, --seeds)`` in
``--full``): the first seed gives every table; each further seed retrains the six
Table 1 models and repeats Table 1 (errors, L-BFGS on the same images) and the layer
bounds. Each claim row states its unit (images, units, model pairs, models, seeds) and
carries its comparisons with the margins of :data:`MARGINS`, stated in advance. The
layer claim is tested on the raw bounds (the paper's form, which rescaling consecutive
layers changes, not the function) and on each bound relative to the block's gain in
size on data (:func:`snnl.experiments.szegedy.relative_block_bounds`: rescaling cannot
change it). Default cost on 2 cores: 34 s for a fresh first seed, 25 s for the second.

Measured, per model: train and test error; box-constrained L-BFGS
(:func:`snnl.attacks.lbfgs_search`, its search over c) towards a seeded random wrong
class for a fixed seeded set of test images (the same images and targets for every
model); the success rate and the mean minimal distortion :func:`distortion` over the
successful images. Then the paper's Table 2 (error of every column model on the
examples made for every row model, plus Gaussian noise rows and noise of the same L2
size as each row's perturbations), Table 3 (FC100-100-10 trained on two disjoint
halves of the training set), per-layer upper Lipschitz bounds
(:func:`snnl.lipschitz.layer_bounds`, the style of Table 5), units against random
directions (the top test images of a unit's and of a random direction in a hidden
layer), per-layer SNNL* and the linear CKA between the models' classifier inputs
against how well examples transfer between them.

Each trained model has a run folder ``out/runs/intriguing/<name>`` (``model.pt``, loaded
with ``weights_only=True``, then ``results.json`` with the config that produced it and
its training record) kept by :func:`snnl.runs.train_or_reuse`: reused when the saved
config equals the one asked for; a differing saved config is retrained with ``--force``
and is otherwise an error.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from snnl.attacks import lbfgs_search
from snnl.data import DataSplits, load_dataset
from snnl.experiments.base import (
    Claim,
    Context,
    Section,
    Verdict,
    compare_groups,
    compare_paired,
)
from snnl.experiments.config import ReproduceConfig
from snnl.experiments.szegedy import (
    HALF_MODELS,
    MODELS,
    PAPER_TABLE2,
    UNIT_LAYERS,
    ModelSpec,
    Settings,
    class_purity,
    data_fingerprint,
    distortion,
    distortion_figure,
    error_table,
    examples_figure,
    gaussian_noise,
    model_layer_bounds,
    paper_tables,
    predict,
    pretrain_autoencoder,
    reconstruction_error,
    same_norm_noise,
    settings,
    slug,
    top_activating,
    train_classifier,
    trained_model,
    training_halves,
    units_figure,
    weight_layer_blocks,
)
from snnl.experiments.zoo import Kind, recipe
from snnl.measures import accuracy, cka_estimator, layer_snnl_profile, linear_cka
from snnl.models import ReferenceCNN
from snnl.taps import capture
from snnl.temperature import optimal_temperature

__all__ = [
    "NAME",
    "TITLE",
    "Settings",
    "ModelSpec",
    "MODELS",
    "HALF_MODELS",
    "settings",
    "run",
    "section",
    "claims",
    "distortion",
    "error_table",
    "gaussian_noise",
    "same_norm_noise",
    "class_purity",
    "top_activating",
    "reference_models",
    "weight_layer_blocks",
    "train_classifier",
    "pretrain_autoencoder",
    "reconstruction_error",
]

NAME = "intriguing"
TITLE = "Szegedy et al. (2013) on MNIST: adversarial examples, transfer, units, layer bounds"
SOURCE = "Szegedy et al. 2013 (arXiv:1312.6199)"

# ----------------------------------------------------------------------------- run


def _dataset(context: Context, s: Settings) -> DataSplits:
    """The zoo's data when it is the study's dataset (same split as the zoo), else
    ``s.dataset`` itself (default mnist5k)."""
    if context.config.dataset == s.dataset:
        return context.zoo.dataset
    return load_dataset(
        s.dataset,
        data_dir=context.config.data_dir,
        limit_train=context.config.limit_train,
        limit_test=context.config.limit_test,
    )


def _attack_set(dataset: DataSplits, s: Settings) -> tuple[Tensor, Tensor]:
    """Seeded test image indices and a seeded random wrong target class for each."""
    g = torch.Generator().manual_seed(s.seed + 104_729)
    n = min(s.attack_images, len(dataset.y_test))
    idx = torch.randperm(len(dataset.y_test), generator=g)[:n].sort().values
    shift = torch.randint(1, dataset.num_classes, (n,), generator=g)
    return idx, (dataset.y_test[idx] + shift) % dataset.num_classes


def _classifier_input(model: nn.Module, x: Tensor) -> Tensor:
    """What the model's softmax layer reads: its last hidden layer, or the pixels."""
    names = tuple(getattr(model, "hidden_layer_names", ()))
    if not names:
        return x.flatten(1)
    return capture(model, x, [names[-1]])[names[-1]]


def _snnl_profile(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float | None]:
    names = list(getattr(model, "hidden_layer_names", ()))
    snnl, _ = layer_snnl_profile(model, x, y, names)
    return {k: _finite(v) for k, v in snnl.items()}


def _error(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Test or train error: one minus :func:`snnl.measures.accuracy` (the one accuracy)."""
    return 1.0 - accuracy(model, x, y)


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _rounded_images(x: Tensor) -> list[list[float]]:
    return [[round(float(v), 3) for v in img.flatten()] for img in x]


def _units_study(model: nn.Module, layer: str, dataset: DataSplits, s: Settings) -> dict[str, Any]:
    """Top test images of each live unit and of as many random directions; class purity."""
    acts = capture(model, dataset.x_test, [layer])[layer].double()
    live = torch.nonzero(acts.std(dim=0) > 0).flatten()  # units that vary over the test set
    d = acts.shape[1]
    g = torch.Generator().manual_seed(s.seed + 15_485_863)
    random_dirs = torch.randn(len(live), d, generator=g, dtype=torch.float64)
    random_dirs = random_dirs / random_dirs.norm(dim=1, keepdim=True)
    units = torch.eye(d, dtype=torch.float64)[live]
    k = min(s.top_k, acts.shape[0])
    top_units = top_activating(acts, units, k)
    top_random = top_activating(acts, random_dirs, k)
    y = dataset.y_test
    purity_units = class_purity(y[top_units], dataset.num_classes)
    purity_random = class_purity(y[top_random], dataset.num_classes)
    shown_units = torch.randperm(len(live), generator=g)[: s.shown_directions].tolist()
    shown: list[dict[str, Any]] = []
    for kind, picks, top, purity in (
        ("unit", shown_units, top_units, purity_units),
        ("random direction", list(range(min(s.shown_directions, len(live)))), top_random,
         purity_random),
    ):  # fmt: skip
        for j in picks:
            idx = top[j, : s.shown_images]
            label = f"unit {int(live[j])}" if kind == "unit" else f"random direction {j + 1}"
            shown.append({
                "kind": kind,
                "label": label,
                "purity": float(purity[j]),
                "indices": idx.tolist(),
                "labels": y[idx].tolist(),
                "images": _rounded_images(dataset.x_test[idx]),
            })  # fmt: skip
    return {
        "layer": layer,
        "units": d,
        "live_units": len(live),
        "top_k": k,
        "unit_purity": [round(float(v), 6) for v in purity_units],
        "random_purity": [round(float(v), 6) for v in purity_random],
        "shown": shown,
    }


def _attack_record(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    s: Settings,
    keep: dict[str, Tensor] | None = None,
    name: str = "",
) -> dict[str, Any]:
    """L-BFGS towards ``targets``: success rate, mean minimal distortion over the successes
    and each image's distortion (None where it failed); the examples go to ``keep[name]``."""
    res = lbfgs_search(model, x, targets, c_init=s.c_init, c_steps=s.c_steps,
                       max_iter=s.max_iter, batch_size=s.attack_batch)  # fmt: skip
    if keep is not None:
        keep[name] = res.x_adv
    dist, ok = distortion(x, res.x_adv), res.success
    return {
        "success_rate": float(ok.double().mean()),
        "mean_distortion": float(dist[ok].mean()) if bool(ok.any()) else None,
        "distortions": [
            round(float(d), 6) if bool(o) else None for d, o in zip(dist, ok, strict=True)
        ],
    }


def _seed_record(
    models: Mapping[str, nn.Module],
    records: Mapping[str, Mapping[str, Any]],
    bounds: Mapping[str, Any],
    names: Sequence[str],
) -> dict[str, Any]:
    """One training seed's Table 1 models: test error, L-BFGS record, block bounds (raw
    and relative)."""
    return {
        n: {
            "test_error": records[n]["test_error"],
            "attack": records[n]["attack"],
            "blocks": bounds[n]["blocks"],
            "relative": bounds[n].get("relative"),
        }
        for n in names
        if n in models
    }


def reference_models(context: Context, dataset: DataSplits, s: Settings) -> dict[str, nn.Module]:
    """The reference CNN untrained (seeded), and the zoo's normal seed-0 run if it exists
    and was trained on the study's dataset (``context.config.dataset == s.dataset``: a
    zoo model of another dataset, e.g. digits' 64 inputs, cannot read these images)."""
    torch.manual_seed(s.seed)
    models: dict[str, nn.Module] = {
        "ReferenceCNN (untrained)": ReferenceCNN(dataset.input_shape, dataset.num_classes)
    }
    if context.config.dataset != s.dataset:
        return models
    config = recipe(context.config, Kind.NORMAL, 0)
    folder = context.zoo.folder(Kind.NORMAL.value, config)
    results = folder / "results.json"
    if results.exists() and json.loads(results.read_text()).get("config") == asdict(config):
        ref = context.zoo.get(Kind.NORMAL, 0)
        models[f"zoo normal {config.model} (trained)"] = ref.load()
    return models


def expected_seconds(config: ReproduceConfig) -> float:
    """An upper estimate of the study's wall time on 2 cores, nothing reused, from the
    default's measured costs (first seed: 12 s training at 20 epochs, 20 s L-BFGS for 50
    images at 30 iterations, 2 s the rest; each further seed about 0.75 of that), scaled
    by the epochs, images x iterations and training seeds of :func:`settings`, plus 30%.

    >>> 60 < expected_seconds(ReproduceConfig()) < 90
    True
    """
    s = settings(config)
    first = 2.0 + 12.0 * s.epochs / 20 + 20.0 * (s.attack_images / 50) * (s.max_iter / 30)
    return 1.3 * first * (1.0 + 0.75 * (s.train_seeds - 1))


def run(settings: Settings, context: Context) -> dict[str, Any]:
    """Train (or reuse) the models, attack them, and measure everything the report shows."""
    s = settings
    timings: dict[str, dict[str, float]] = {}
    clock = (time.perf_counter(), time.process_time())
    started = clock

    def lap(phase: str) -> None:  # wall and CPU seconds of the phase that just ended
        nonlocal clock
        now = (time.perf_counter(), time.process_time())
        timings[phase] = {"wall": round(now[0] - clock[0], 2), "cpu": round(now[1] - clock[1], 2)}
        clock = now

    dataset = _dataset(context, s)
    fingerprint = data_fingerprint(dataset)
    halves = training_halves(dataset.y_train, s.seed)
    models: dict[str, nn.Module] = {}
    records: dict[str, dict[str, Any]] = {}
    for spec in (*MODELS, *HALF_MODELS):
        sel = halves[spec.subset] if spec.subset != "all" else torch.arange(len(dataset.y_train))
        x_tr, y_tr = dataset.x_train[sel], dataset.y_train[sel]
        model, record, reused = trained_model(spec, s, dataset, x_tr, y_tr, context, fingerprint)
        models[spec.name] = model
        records[spec.name] = {
            "subset": spec.subset,
            "train_size": len(sel),
            "train_error": _error(model, x_tr, y_tr),
            "test_error": _error(model, dataset.x_test, dataset.y_test),
            "train_seconds": record["seconds"],
            "reused": reused,
            "loss": [round(v, 6) for v in record["loss"]],
        }
        if "reconstruction_error" in record:
            records[spec.name]["reconstruction_error"] = [
                round(v, 6) for v in record["reconstruction_error"]
            ]
    lap("train")

    # adversarial examples: the same images and targets for every model
    idx, targets = _attack_set(dataset, s)
    x_att, y_att = dataset.x_test[idx], dataset.y_test[idx]
    adversarial: dict[str, Tensor] = {}
    for name, model in models.items():
        records[name]["attack"] = _attack_record(model, x_att, targets, s, adversarial, name)
    lap("attack")

    # Table 2 and Table 3
    g = torch.Generator().manual_seed(s.seed + 32_452_843)
    table1 = [m.name for m in MODELS]
    halves_names = [m.name for m in HALF_MODELS]

    def rows_for(sources: Sequence[str]) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
        inputs: dict[str, Tensor] = {}
        meta: list[dict[str, Any]] = []
        for src in sources:
            inputs[src] = adversarial[src]
            meta.append({"row": src, "kind": "adversarial", "source": src})
        for sigma in s.noise_sigmas:
            key = f"gaussian {sigma:g}"
            inputs[key] = gaussian_noise(x_att, sigma, g)
            meta.append({"row": key, "kind": "gaussian", "source": sigma})
        for src in sources:
            key = f"noise like {src}"
            inputs[key] = same_norm_noise(x_att, adversarial[src], g)
            meta.append({"row": key, "kind": "same-norm noise", "source": src})
        for m in meta:
            m["distortion"] = float(distortion(x_att, inputs[m["row"]]).mean())
        return inputs, meta

    def table(sources: Sequence[str], columns: Sequence[str]) -> dict[str, Any]:
        inputs, meta = rows_for(sources)
        errors = error_table({c: models[c] for c in columns}, {"clean": x_att, **inputs}, y_att)
        for m in meta:
            m["errors"] = errors[m["row"]]
        return {"columns": list(columns), "clean": errors["clean"], "rows": meta}

    table2 = table(table1, table1)
    table3 = table(halves_names, [*halves_names, "FC100-100-10"])
    lap("tables")

    # representations: SNNL*, CKA between classifier inputs, units vs random directions
    gp = torch.Generator().manual_seed(s.seed + 49_979_687)
    probe = torch.randperm(len(dataset.y_test), generator=gp)[: s.probe_size].sort().values
    x_probe, y_probe = dataset.x_test[probe], dataset.y_test[probe]
    input_snnl = _finite(optimal_temperature(x_probe.flatten(1), y_probe)[1])
    for name, model in models.items():
        records[name]["snnl"] = {"input": input_snnl, **_snnl_profile(model, x_probe, y_probe)}
    reps = {name: _classifier_input(models[name], x_probe) for name in table1}
    widest = max(r.shape[1] for r in reps.values())
    estimator = cka_estimator(len(y_probe), widest, widest, s.cka)
    pairs = []
    for i, a in enumerate(table1):
        for b in table1[i + 1 :]:
            excess = [
                next(r for r in table2["rows"] if r["row"] == src)["errors"][dst]
                - table2["clean"][dst]
                for src, dst in ((a, b), (b, a))
            ]
            pairs.append({
                "a": a, "b": b, "cka": _finite(linear_cka(reps[a], reps[b], estimator=estimator)),
                "excess_transfer": sum(excess) / 2,
            })  # fmt: skip
    valid = [p for p in pairs if p["cka"] is not None]
    rho, p_value = spearmanr([p["cka"] for p in valid], [p["excess_transfer"] for p in valid])
    similarity = {
        "representation": "the input of each model's softmax layer (its last hidden layer; "
        "the pixels for softmax regression)",
        "cka_estimator": estimator,
        "pairs": pairs,
        "spearman": _finite(float(rho)),
        "p_value": _finite(float(p_value)),
    }
    units = {name: _units_study(models[name], layer, dataset, s)
             for name, layer in UNIT_LAYERS.items()}  # fmt: skip
    lap("representations")

    # layer bounds (the paper's Table 5 style)
    bounds = model_layer_bounds(
        {**models, **reference_models(context, dataset, s)}, dataset.input_shape, x_probe
    )
    lap("bounds")
    per_seed = {str(s.seed): _seed_record(models, records, bounds, table1)}
    for k in range(1, s.train_seeds):  # further training seeds: Table 1 and the bounds
        s_k = replace(s, seed=s.seed + k)
        seed_models = {}
        for spec in MODELS:
            seed_models[spec.name], _, _ = trained_model(
                spec, s_k, dataset, dataset.x_train, dataset.y_train, context, fingerprint
            )
        per_seed[str(s_k.seed)] = _seed_record(
            seed_models,
            {n: {"test_error": _error(m, dataset.x_test, dataset.y_test),
                 "attack": _attack_record(m, x_att, targets, s)}
             for n, m in seed_models.items()},
            model_layer_bounds(seed_models, dataset.input_shape, x_probe),
            table1,
        )  # fmt: skip
    lap("seeds")

    # a few attacked images drawn with their adversarial versions
    shown = list(range(min(s.example_images, len(idx))))
    examples = {
        "indices": idx[shown].tolist(),
        "labels": y_att[shown].tolist(),
        "targets": targets[shown].tolist(),
        "original": _rounded_images(x_att[shown]),
        "adversarial": {n: _rounded_images(adversarial[n][shown]) for n in table1},
        "predicted": {n: predict(models[n], adversarial[n][shown]).tolist() for n in table1},
    }
    now = (time.perf_counter(), time.process_time())
    timings["total"] = {"wall": round(now[0] - started[0], 2), "cpu": round(now[1] - started[1], 2)}
    return {
        "dataset": dataset.name,
        "train_size": len(dataset.y_train),
        "test_size": len(dataset.y_test),
        "table1_models": table1,
        "half_models": halves_names,
        "models": records,
        "attack_set": {
            "indices": idx.tolist(),
            "labels": y_att.tolist(),
            "targets": targets.tolist(),
        },  # fmt: skip
        "table2": table2,
        "table3": table3,
        "similarity": similarity,
        "units": units,
        "layer_bounds": bounds,
        "train_seeds": per_seed,
        "zoo_dataset": context.config.dataset,
        "examples": examples,
        "seconds": timings,
    }


# ----------------------------------------------------------------------------- report


def _zoo_note(results: Mapping[str, Any]) -> str:
    """Whether the zoo's trained normal model is among the bounded models, and why."""
    zoo = results.get("zoo_dataset")
    if zoo is None or zoo == results["dataset"]:
        return (
            f"The zoo's trained normal model is included when its seed-0 run exists "
            f"(it was trained on {results['dataset']}, the study's dataset)."
        )
    return (
        f"The zoo's trained normal model is left out: it was trained on {zoo}, "
        f"not on {results['dataset']}, the study's dataset."
    )


def _pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}%"


def _num(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _mean(values: Sequence[float], digits: int = 3) -> str:
    return _num(float(np.mean(values)) if len(values) else None, digits)


def _row(table: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in table["rows"] if r["row"] == name)


def _table_markdown(table: dict[str, Any], paper: Mapping[str, Mapping[str, float]]) -> list[str]:
    cols = table["columns"]
    lines = [
        "| examples made for / noise | " + " | ".join(cols) + " | mean distortion |",
        "|---" * (len(cols) + 2) + "|",
        "| clean (the attacked images) | "
        + " | ".join(_pct(table["clean"][c]) for c in cols)
        + " | 0 |",
    ]
    for r in table["rows"]:
        known = paper.get(r["row"], {})
        cells = []
        for c in cols:
            cell = _pct(r["errors"][c])
            if c in known:
                cell += f" ({_pct(known[c])})"
            cells.append(cell)
        lines.append(f"| {r['row']} | " + " | ".join(cells) + f" | {_num(r['distortion'])} |")
    return lines


def section(results: dict[str, Any], fig_dir: Path) -> Section:
    """Tables 1-3 next to the paper's numbers, bounds, SNNL*, similarity and the figures."""
    st = results["settings"]
    models = results["models"]
    table1 = results["table1_models"]
    unit_figs = []
    for name, study in results["units"].items():
        file = f"intriguing_units_{slug(name).lower()}.png"
        units_figure(study, name, fig_dir / file)
        unit_figs.append((file, f"{name}, layer {study['layer']}: units vs random directions"))
    examples_figure(results["examples"], table1, fig_dir / "intriguing_examples.png")
    distortion_figure(results, fig_dir / "intriguing_distortions.png")

    n_att = len(results["attack_set"]["indices"])
    seeds_text = ", ".join(results.get("train_seeds") or [str(st["seed"])])
    lines = [
        f"Szegedy et al. (2013)'s MNIST models on `{results['dataset']}` "
        f"({results['train_size']} training / {results['test_size']} test images; the paper "
        f"used 60,000 / 10,000), training seeds {seeds_text} "
        f"(the tables below are the first one's). FC models: Adam lr "
        f"{st['lr']}, {st['epochs']} epochs, batch {st['batch_size']}, loss = mean CE + "
        f"sum_k lambda_k / 2 ||W_k||^2 on [0, 1] pixels; FC100/FC200 hidden layers are ReLU. "
        f"AE400-10: sparse sigmoid autoencoder (UFLDL objective, lambda "
        f"{st['ae_weight_decay']}, beta {st['ae_sparsity_weight']}, rho "
        f"{st['ae_sparsity_target']}), {st['ae_pretrain_epochs']} epochs of reconstruction at "
        f"Adam lr {st['ae_lr']}, then the softmax alone on the frozen code ({st['epochs']} "
        f"epochs). Adversarial examples: box-constrained L-BFGS (c search from "
        f"{st['c_init']}, {st['c_steps']} solves of at most {st['max_iter']} L-BFGS-B "
        f"iterations) towards a seeded random wrong class, for the same {n_att} seeded test "
        f"images on every model. Distortion = sqrt(sum (x' - x)^2 / 784), pixels in [0, 1]. "
        f"Paper values in parentheses in Table 2 (Szegedy et al. 2013, via FIELD_NOTES).",
        "",
    ]
    lines += paper_tables(results)
    lines += [
        "",
        "**Table 2**: error of each column model on the examples made for each row model "
        "(diagonal: the attacked model itself), on Gaussian noise (clipped to [0, 1]) and on "
        "noise of the same L2 size as each row model's perturbations (random direction, "
        "then clipped to [0, 1], which can only shorten it; the realised distortion is shown). "
        "All rows on the same attacked images.",
        "",
        *_table_markdown(results["table2"], PAPER_TABLE2),
        "",
        "**Table 3**: FC100-100-10 trained on two disjoint, class-stratified halves P1 and P2 "
        "of the training set (and on all of it).",
        "",
        *_table_markdown(results["table3"], {}),
    ]
    bounds = results["layer_bounds"]
    if bounds:
        lines += [
            "",
            "**Layer instability** (the style of the paper's Table 5, which is AlexNet's): upper "
            "bounds on each weight layer's Lipschitz constant (L2) from "
            "`snnl.lipschitz.layer_bounds`, each weight layer with the parameter-free layers "
            "after it (ReLU 1, sigmoid 1/4), input to output; their product bounds the network.",
            _zoo_note(results),
            "",
            "Beside each bound, in parentheses, the form layer rescaling cannot change: the "
            "bound relative to the block's gain in size on the probe images, "
            "L_k * mean ||h_k-1|| / mean ||h_k|| (`szegedy.relative_block_bounds`).",
            "",
            "| model | per weight layer, input -> output: bound (relative) | product |",
            "|---|---|---|",
        ]
        for name, b in bounds.items():
            rel = b.get("relative") or {}
            per = ", ".join(
                f"{k} {v:.3g}" + (f" ({rel[k]:.3g})" if rel.get(k) is not None else "")
                for k, v in b["blocks"].items()
            )
            lines.append(f"| {name} | {per} | {b['product']:.4g} |")
    lines += [
        "",
        f"**SNNL\\* per layer** (soft nearest neighbour loss at its optimal temperature, "
        f"{st['probe_size']} seeded test images; lower = classes better separated):",
        "",
        "| model | layers: SNNL* |",
        "|---|---|",
    ]
    for name in [*table1, *results["half_models"]]:
        per = ", ".join(f"{k} {_num(v)}" for k, v in models[name]["snnl"].items())
        lines.append(f"| {name} | {per} |")
    sim = results["similarity"]
    lines += [
        "",
        f"**Transfer against representation similarity**: linear CKA "
        f"({sim.get('cka_estimator', 'biased')} estimator; unbiased where the widest "
        "representation has more than N / 10 features) between "
        f"{sim['representation']} of two models on the same test images, against the mean "
        "excess transfer error of the pair (error of one on the other's examples minus its "
        "error on the clean images, both directions averaged). "
        f"Spearman correlation over the {len(sim['pairs'])} pairs: "
        f"{_num(sim['spearman'])} (p = {_num(sim['p_value'])}).",
        "",
        "| pair | CKA | excess transfer error |",
        "|---|---|---|",
    ]
    for p in sim["pairs"]:
        lines.append(f"| {p['a']} / {p['b']} | {_num(p['cka'])} | {_pct(p['excess_transfer'])} |")
    lines += ["", "**Units against random directions** (class purity of the top "
              f"{st['top_k']} test images; a dead unit, constant over the test set, is left out):",
              "", "| model, layer | live units | unit purity | random-direction purity |",
              "|---|---|---|---|"]  # fmt: skip
    for name, u in results["units"].items():
        lines.append(
            f"| {name}, {u['layer']} | {u['live_units']} / {u['units']} | "
            f"{np.mean(u['unit_purity']):.3f} +- {np.std(u['unit_purity'], ddof=1):.3f} | "
            f"{np.mean(u['random_purity']):.3f} +- {np.std(u['random_purity'], ddof=1):.3f} |"
        )
    secs = results["seconds"]
    lines += [
        "",
        "Cost (this run; models reused from an earlier run cost nothing to train): "
        + ", ".join(f"{k} {v['wall']:.1f} s wall / {v['cpu']:.1f} s CPU" for k, v in secs.items())
        + ".",
    ]
    return Section(
        title=TITLE,
        markdown="\n".join(lines),
        figures=[
            ("intriguing_examples.png", "Adversarial examples for every Table 1 model"),
            ("intriguing_distortions.png", "Minimal distortion per model, with the paper's means"),
            *unit_figs,
        ],
    )


# ----------------------------------------------------------------------------- claims

#: No-effect margins, stated before the runs: unit purity (fraction of the top images of
#: one class), transfer error (fraction of images), log10 of a bound ratio (0.05: 12%),
#: minimal distortion (pixel RMS), Table 2 error (fraction of images).
MARGINS = {"purity": 0.1, "transfer": 0.02, "log10_bound": 0.05, "distortion": 0.005,
           "table2": 0.01}  # fmt: skip


def _all_of(verdicts: Sequence[str]) -> Verdict:
    """ "does not hold" if any part does not hold, "holds" if all hold, else "inconclusive"."""
    if "does not hold" in verdicts:
        return "does not hold"
    return "holds" if all(v == "holds" for v in verdicts) else "inconclusive"


_NEGATE: dict[str, Verdict] = {
    "holds": "does not hold",
    "does not hold": "holds",
    "inconclusive": "inconclusive",
}


def _seeds(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per training seed, the Table 1 models' records (older results: the one seed)."""
    if "train_seeds" in results:
        return results["train_seeds"]
    bounds = results["layer_bounds"]
    return {
        str(results["settings"]["seed"]): {
            n: {**results["models"][n], "blocks": bounds.get(n, {}).get("blocks")}
            for n in results["table1_models"]
        }
    }


def _claim_units(results: dict[str, Any], setting: str) -> Claim:
    verdicts, measured, comps = [], [], []
    for name, u in results["units"].items():
        # "units are purer than random directions" by more than the margin: the claim is
        # its negation (holds where that is refuted, the interval inside the margin or below)
        units, rand = u["unit_purity"], u["random_purity"]
        c = compare_groups(units, rand, expect="greater", margin=MARGINS["purity"],
                           label=f"{name} {u['layer']}: units - random purity "
                           "(the claim's negation)")  # fmt: skip
        comps.append(c)
        verdicts.append(_NEGATE[c.verdict])
        measured.append(
            f"{name} {u['layer']}: units {np.mean(units):.3f} (n={len(units)}) vs random "
            f"{np.mean(rand):.3f} (n={len(rand)})"
        )
    return Claim(
        claim="Individual high-level units are no more semantically meaningful than random "
        "directions in their layer.",
        source=f"{SOURCE}, sec. 3",
        setting=setting + "; measure: class purity of the top test images of a unit vs a "
        f"random direction (first training seed); 'more meaningful' = units purer by more "
        f"than {MARGINS['purity']} (Welch 95% CI over units/directions); the claim holds "
        "where that is refuted",
        measured="; ".join(measured),
        verdict=_all_of(verdicts),
        note="; ".join(f"{c.label}: {c.verdict}, {c.note}" for c in comps),
        comparisons=tuple(comps),
    )


def _claim_transfer(results: dict[str, Any], setting: str) -> Claim:
    seeds = _seeds(results)
    success = [m["attack"]["success_rate"] for rec in seeds.values() for m in rec.values()]
    success += [results["models"][n]["attack"]["success_rate"] for n in results["half_models"]]
    exists: Verdict = "holds" if min(success) >= 0.95 else "does not hold"
    adv, same, gauss = [], [], []
    for tab in (results["table2"], results["table3"]):
        sources = [r["source"] for r in tab["rows"] if r["kind"] == "adversarial"]
        g = _row(tab, f"gaussian {min(results['settings']['noise_sigmas']):g}")
        for src in sources:
            for col in tab["columns"]:
                if col == src or (src in results["half_models"] and col not in sources):
                    continue  # own model; Table 3: only the other half
                adv.append(_row(tab, src)["errors"][col])
                same.append(_row(tab, f"noise like {src}")["errors"][col])
                gauss.append(g["errors"][col])
    sigma = min(results["settings"]["noise_sigmas"])
    m = MARGINS["transfer"]
    c_same = compare_paired(adv, same, expect="greater", margin=m,
                            label="transfer error - same-size noise error")  # fmt: skip
    c_gauss = compare_paired(adv, gauss, expect="greater", margin=m,
                             label=f"transfer error - Gaussian {sigma:g} error")  # fmt: skip
    return Claim(
        claim="Adversarial examples exist for every model and transfer to models with other "
        "architectures, hyper-parameters and training sets.",
        source=f"{SOURCE}, sec. 4.2 (Tables 1-3)",
        setting=setting + "; holds when every model's L-BFGS success rate (every training "
        "seed) is >= 95% and the other models' error on the examples exceeds, by more than "
        f"{m} (paired t 95% CI over the {len(adv)} model pairs of Tables 2 and 3, first "
        f"seed), both their error under noise of the same L2 size and under Gaussian noise "
        f"sigma {sigma:g}",
        measured=f"success rates {min(success):.0%}-{max(success):.0%}; "
        f"transfer error {np.mean(adv):.3f} vs same-size noise {np.mean(same):.3f} vs "
        f"Gaussian {sigma:g} {np.mean(gauss):.3f} (means over {len(adv)} pairs)",
        verdict=_all_of([exists, c_same.verdict, c_gauss.verdict]),
        note=f"existence: {exists}; vs same-size noise: {c_same.verdict}, {c_same.note}; "
        f"vs Gaussian: {c_gauss.verdict}, {c_gauss.note}",
        comparisons=(c_same, c_gauss),
    )


def _halves(results: dict[str, Any], form: str) -> tuple[list[float], list[float], list[str]]:
    """Per bounded model (every training seed of the Table 1 models, the Table 3 halves and
    the reference models) with >= 2 weight layers: mean log10 of its upper half of block
    bounds and of its lower half (``form``: "blocks" raw, "relative" relative to the gain)."""
    units: dict[str, Mapping[str, float] | None] = {}
    first = str(results["settings"]["seed"])
    for seed, rec in _seeds(results).items():
        for name, m in rec.items():
            units[name if seed == first else f"{name} seed {seed}"] = m.get(form)
    for name, b in results["layer_bounds"].items():
        units.setdefault(name, b.get(form))
    upper, lower, shown = [], [], []
    for name, blocks in units.items():
        values = list((blocks or {}).values())
        half = len(values) // 2
        if half == 0 or not all(v is not None and v > 0 for v in values):
            continue  # one weight layer (or a block with no output on the data)
        lower.append(float(np.mean(np.log10(values[:half]))))
        upper.append(float(np.mean(np.log10(values[-half:]))))
        shown.append(f"{name} {10 ** lower[-1]:.3g} -> {10 ** upper[-1]:.3g}")
    return upper, lower, shown


def _claim_layers(results: dict[str, Any], setting: str, form: str = "blocks") -> Claim:
    upper, lower, shown = _halves(results, form)
    c = compare_paired(upper, lower, expect="greater", margin=MARGINS["log10_bound"],
                       label=f"log10 upper - lower half ({form})")  # fmt: skip
    what = (
        "the raw bounds (the paper's form; rescaling W_k by c and W_k+1 by 1/c changes them, "
        "not the function)"
        if form == "blocks"
        else "each block's bound relative to its gain in size on the probe images, "
        "L_k * mean||h_k-1|| / mean||h_k|| (the form layer rescaling cannot change)"
    )
    return Claim(
        claim="Higher layers are less stable: their upper Lipschitz bounds are larger"
        + ("." if form == "blocks" else " (rescaling-invariant form)."),
        source=f"{SOURCE}, sec. 4.3 (Table 5)",
        setting=setting + f"; {what}; per model with >= 2 weight layers (every training seed "
        "counted as a model): mean log10 bound of the upper half of its weight layers (each "
        "with its activation) vs the lower half (the middle layer of an odd count left out), "
        f"paired t 95% CI over models, margin {MARGINS['log10_bound']} in log10",
        measured="geometric-mean bound, lower half -> upper half: " + "; ".join(shown),
        verdict=c.verdict,
        note=c.note + " (difference in log10)",
        comparisons=(c,),
    )


def _claim_autoencoder(results: dict[str, Any], setting: str) -> Claim:
    ae, others = "AE400-10", ("FC100-100-10", "FC200-200-10")
    a, b = [], []  # per image (one seed) or per seed (the mean over the images solved on all)
    for rec in _seeds(results).values():
        d = {n: rec[n]["attack"]["distortions"] for n in (ae, *others)}
        both = [i for i in range(len(d[ae])) if all(d[m][i] is not None for m in d)]
        a.append([d[ae][i] for i in both])
        b.append([float(np.mean([d[m][i] for m in others])) for i in both])
    unit = "images" if len(a) == 1 else "training seeds"
    if len(a) == 1:
        a, b = a[0], b[0]
    else:
        kept = [j for j, v in enumerate(a) if v]  # a seed with no image solved on all three
        a, b = [float(np.mean(a[j])) for j in kept], [float(np.mean(b[j])) for j in kept]
    c_dist = compare_paired(a, b, expect="greater", margin=MARGINS["distortion"],
                            label=f"AE - FC distortion (paired over {unit})")  # fmt: skip
    t2 = results["table2"]
    col_ae, col_min = [], []
    for r in results["table1_models"]:
        if r == ae:
            continue
        errs = _row(t2, r)["errors"]
        col_ae.append(errs[ae])
        col_min.append(min(v for c, v in errs.items() if c not in (ae, r)))
    c_col = compare_paired(col_ae, col_min, expect="less", margin=MARGINS["table2"],
                           label="AE column - lowest other column")  # fmt: skip
    return Claim(
        claim="The autoencoder-based model is more resilient: it needs larger perturbations, "
        "and the other models' examples fool it least.",
        source=f"{SOURCE}, sec. 4.2 (Tables 1, 2)",
        setting=setting + "; (a) on the images solved on all three, AE400-10's minimal "
        "distortion vs the mean of FC100-100-10's and FC200-200-10's (the models of "
        f"comparable error), paired over {unit}, margin {MARGINS['distortion']}; (b) per "
        "row of Table 2 (first seed), the AE400-10 column vs the lowest other column (the "
        f"row's own model left out), paired, margin {MARGINS['table2']}; both must hold",
        measured=f"(a) distortion {_mean(a, 4)} vs {_mean(b, 4)} ({len(a)} {unit}); "
        f"(b) AE column {np.mean(col_ae):.3f} vs lowest other {np.mean(col_min):.3f} "
        f"({len(col_ae)} rows)",
        verdict=_all_of([c_dist.verdict, c_col.verdict]),
        note=f"(a) {c_dist.verdict}, {c_dist.note}; (b) {c_col.verdict}, {c_col.note}",
        comparisons=(c_dist, c_col),
    )


def claims(results: dict[str, Any]) -> list[Claim]:
    """The paper's four MNIST claims (the layer claim in its form and in the form layer
    rescaling cannot change), each with its comparisons and stated margins."""
    n_seeds = len(_seeds(results))
    setting = (
        f"{results['dataset']}, {results['train_size']}/{results['test_size']}, "
        f"{n_seeds} training seed{'s' if n_seeds > 1 else ''}, "
        f"{len(results['attack_set']['indices'])} attacked test images"
    )
    rows = [
        _claim_units(results, setting),
        _claim_transfer(results, setting),
        _claim_layers(results, setting),
    ]
    if any("relative" in b for b in results["layer_bounds"].values()):
        rows.append(_claim_layers(results, setting, form="relative"))
    return [*rows, _claim_autoencoder(results, setting)]
