"""Training loop for normal and entangled models (eq. 3), resumable bit-exactly.

A run lives in one folder:

    config.json     the TrainConfig that produced it
    metrics.jsonl   one JSON line per finished epoch (rewritten atomically each epoch)
    checkpoint.pt   model, optimiser, regulariser and history after the last finished epoch
    results.json    written last: its presence marks the run as finished

Determinism: the model is initialised from ``seed``; the data order of epoch e is
drawn from a generator seeded with (seed, e), so nothing else needs saving. A run
killed at any point and resumed with ``resume=True`` gives the same metrics as an
uninterrupted one (same seed, same machine, CPU). Wall-clock times are kept out
of metrics.jsonl (they go to results.json) so that this can be checked byte for byte.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snnl import _io
from snnl.data import DataSplits, load_dataset
from snnl.loss import optimal_temperature
from snnl.models import build_model
from snnl.regularizers import EntanglementRegularizer
from snnl.taps import capture, resolve_layers

__all__ = ["TrainConfig", "train", "load_run", "RunExistsError", "evaluate_accuracy"]

CONFIG, METRICS, CHECKPOINT, RESULTS = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "results.json",
)


class RunExistsError(RuntimeError):
    """The output folder already holds a run that this call would overwrite."""


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved as config.json)."""

    dataset: str = "digits"
    model: str = "mlp"
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3  # Adam, as in the reference code
    alpha: float = 0.0  # eq. 3: loss = CE - alpha * sum_l SNNL_l; > 0 entangles
    # initial T of the regularised layers; None: each layer's optimal temperature for the
    # initial model on the probe subset (the reference code's fixed 100 is far too hot
    # for small activations: there maximising SNNL shrinks the representation instead)
    temperature: float | None = None
    learn_temperature: bool = True  # T_l follows argmin_T SNNL_l, no gradient to the net
    temperature_lr: float = 0.05  # Adam on log T
    distance: str = "euclidean"
    layers: list[str] | str = "hidden"  # regularised and probed layers
    seed: int = 0  # model initialisation and data order
    split_seed: int = 0  # the train/test split (fixed across training seeds)
    probe_size: int = 500  # fixed training subset for the per-epoch SNNL profile
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"widths": [256, 256]}
    data_dir: str | None = None
    limit_train: int | None = None
    limit_test: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (SNNL needs pairs), got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be finite, got {self.alpha}")
        t = self.temperature
        if t is not None and not (math.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be positive and finite, got {t}")
        if not (math.isfinite(self.temperature_lr) and self.temperature_lr > 0):
            raise ValueError(f"temperature_lr must be positive, got {self.temperature_lr}")
        if self.probe_size < 2:
            raise ValueError(f"probe_size must be >= 2, got {self.probe_size}")
        if isinstance(self.layers, tuple):
            self.layers = list(self.layers)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**data)


def load_config_dataset(config: TrainConfig) -> DataSplits:
    """The dataset (and fixed split) a run's config names."""
    return load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        seed=config.split_seed,
        limit_train=config.limit_train,
        limit_test=config.limit_test,
    )


def evaluate_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1024) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (eval mode, mode restored)."""
    logits = capture(model, x, ["logits"], batch_size=batch_size)["logits"]
    return float((logits.argmax(1) == y).double().mean())


def _probe_indices(y: Tensor, size: int, seed: int) -> Tensor:
    """A fixed, seeded subset of the training set for the SNNL profile."""
    g = torch.Generator().manual_seed(10_007 * seed + 1)
    perm = torch.randperm(len(y), generator=g)
    return perm[: min(size, len(y))].sort().values


def _normalisation(x: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training inputs (for the model's Normalize)."""
    dims = [0, *range(2, x.dim())]
    return x.mean(dims).tolist(), x.std(dims).clamp_min(1e-6).tolist()


def build_run_model(config: TrainConfig, dataset: DataSplits) -> nn.Module:
    mean, std = _normalisation(dataset.x_train)
    torch.manual_seed(config.seed)
    return build_model(
        config.model,
        dataset.input_shape,
        dataset.num_classes,
        mean=mean,
        std=std,
        **config.model_kwargs,
    )


def _profile(model: nn.Module, x: Tensor, y: Tensor, layers: tuple[str, ...], distance: str):
    """SNNL of every layer (and the logits) at its optimal temperature."""
    names = [*layers, "logits"]
    acts = capture(model, x, names)
    snnl, temps = {}, {}
    for name in names:
        t, v = optimal_temperature(acts[name], y, distance=distance)
        snnl[name], temps[name] = v, t
    return snnl, temps


def _prepare_dir(out: Path, config: TrainConfig, resume: bool, force: bool) -> bool:
    """Check what the folder holds; return True when there is a checkpoint to resume."""
    if (out / RESULTS).exists() and not force:
        raise RunExistsError(
            f"{out} holds a finished run ({RESULTS} exists); pass --force (force=True) to "
            "train again and overwrite it"
        )
    if force:
        for name in (RESULTS, CHECKPOINT, METRICS, CONFIG):
            (out / name).unlink(missing_ok=True)
        return False
    has_ckpt = (out / CHECKPOINT).exists()
    if (out / CONFIG).exists():
        saved = json.loads((out / CONFIG).read_text())
        if not resume and has_ckpt:
            raise RunExistsError(
                f"{out} holds an unfinished run; pass --resume to continue it or --force "
                "to start over"
            )
        if resume and saved != asdict(config):
            diff = sorted(k for k in asdict(config) if saved.get(k) != asdict(config)[k])
            raise ValueError(
                f"cannot resume {out}: its config.json differs in {', '.join(diff)}; "
                "use the same settings or --force to start over"
            )
    return resume and has_ckpt


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    dataset: DataSplits | None = None,
    progress: bool | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train one model per ``config`` into ``out_dir`` and return its results dict.

    Args:
        config: the run's settings.
        out_dir: the run folder (created).
        resume: continue from the last finished epoch's checkpoint.
        force: discard whatever the folder holds and start over.
        dataset: an already loaded dataset (else ``load_dataset(config.dataset, ...)``).
        progress: show progress bars (default: only when stderr is a terminal).
        on_step: called as ``on_step(epoch, step)`` after every optimiser step.

    Returns:
        The content of results.json: config, final figures, per-epoch history.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start_from_ckpt = _prepare_dir(out, config, resume, force)
    if dataset is None:
        dataset = load_config_dataset(config)
    model = build_run_model(config, dataset)
    layers = resolve_layers(model, config.layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    probe = _probe_indices(dataset.y_train, config.probe_size, config.seed)
    x_probe, y_probe = dataset.x_train[probe], dataset.y_train[probe]
    reg = None
    if config.alpha != 0:
        if config.temperature is None:  # recomputed identically on resume, then overwritten
            _, initial_t = _profile(model, x_probe, y_probe, layers, config.distance)
            temperature: float | dict[str, float] = {n: initial_t[n] for n in layers}
        else:
            temperature = config.temperature
        reg = EntanglementRegularizer(
            model,
            list(layers),
            alpha=config.alpha,
            temperature=temperature,
            learn_temperature=config.learn_temperature,
            temperature_lr=config.temperature_lr,
            distance=config.distance,
        )
    history: list[dict[str, Any]] = []
    seconds: list[float] = []
    if start_from_ckpt:
        state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if reg is not None:
            reg.load_state_dict(state["regularizer"])
        history = json.loads(state["history"])
        seconds = list(state["seconds"])
    else:
        _io.write_json(out / CONFIG, asdict(config))

    show = sys.stderr.isatty() if progress is None else progress
    n = len(dataset.y_train)
    from tqdm.auto import tqdm

    for epoch in range(len(history), config.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        )
        sums: dict[str, float] = {"loss": 0.0, "ce": 0.0}
        term_sums: dict[str, float] = {}
        steps = 0
        batches = [order[i : i + config.batch_size] for i in range(0, n, config.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches[-2] = torch.cat([batches[-2], batches.pop()])
        bar = tqdm(
            batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show, leave=False
        )
        for idx in bar:
            xb, yb = dataset.x_train[idx], dataset.y_train[idx]
            optimizer.zero_grad(set_to_none=True)
            if reg is None:
                logits = model(xb)
                ce = F.cross_entropy(logits, yb)
                total = ce
            else:
                res = reg(xb, yb)
                total, ce = res.total, res.cross_entropy
                for name, value in res.snnl.items():
                    term_sums[name] = term_sums.get(name, 0.0) + float(value)
            total.backward()
            optimizer.step()
            sums["loss"] += float(total.detach())
            sums["ce"] += float(ce.detach())
            steps += 1
            if on_step is not None:
                on_step(epoch, steps)
        model.eval()
        probe_snnl, probe_t = _profile(model, x_probe, y_probe, layers, config.distance)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": sums["loss"] / steps,
            "cross_entropy": sums["ce"] / steps,
            "batch_snnl": {k: v / steps for k, v in term_sums.items()},
            "temperature": dict(reg.temperatures) if reg is not None else {},
            "probe_snnl": probe_snnl,
            "probe_temperature": probe_t,
            "train_accuracy": evaluate_accuracy(model, dataset.x_train, dataset.y_train),
            "test_accuracy": evaluate_accuracy(model, dataset.x_test, dataset.y_test),
        }
        history.append(record)
        seconds.append(time.perf_counter() - started)
        checkpoint = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "regularizer": reg.state_dict() if reg is not None else {},
            "history": json.dumps(history),
            "seconds": seconds,
        }
        _io.save_torch(out / CHECKPOINT, checkpoint)
        _io.write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in history))
        if show:
            tqdm.write(
                f"epoch {epoch + 1}: loss {record['train_loss']:.4f} "
                f"test acc {record['test_accuracy']:.4f}"
            )
    results = {
        "config": asdict(config),
        "dataset": {"name": dataset.name, "train": n, "test": len(dataset.y_test)},
        "layers": list(layers),
        "final": {
            "test_accuracy": history[-1]["test_accuracy"],
            "train_accuracy": history[-1]["train_accuracy"],
            "probe_snnl": history[-1]["probe_snnl"],
        },
        "history": history,
        "timing": {"seconds_per_epoch": seconds, "total_seconds": sum(seconds)},
    }
    _io.write_json(out / RESULTS, results)
    return results


def load_run(out_dir: str | Path, *, dataset: DataSplits | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the trained model of a finished run and return (model in eval mode, results)."""
    out = Path(out_dir)
    if not (out / RESULTS).exists():
        raise FileNotFoundError(f"{out / RESULTS} not found: {out} is not a finished training run")
    results = json.loads((out / RESULTS).read_text())
    config = TrainConfig.from_dict(results["config"])
    if dataset is None:
        dataset = load_config_dataset(config)
    model = build_run_model(config, dataset)
    state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.eval(), results
