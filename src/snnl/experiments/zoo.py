"""The shared model zoo of ``snnl reproduce``: trained runs, as typed references.

Several experiments study the same trained models (the normal and the entangled
model of every seed). They get them here, never from each other:

    zoo = Zoo(config, out)
    ref = zoo.get(Kind.ENTANGLED, seed=0)    # trains, or reuses a finished run
    model = ref.load()                       # (eval mode) on the zoo's dataset
    ref.results()["health"]["verdict"]

A run folder is named by its kind, a short hash of its training config and its
seed (``runs/entangled-1a2b3c4d-seed0``), so a changed setting (``--epochs``,
``--limit-train``, ...) trains a new run instead of reusing an old one; a
finished run is reused only when its saved config equals the one asked for
(otherwise :class:`RunMismatchError`, or retrain with ``force``), and an
unfinished one resumes.

Every run goes through the one cache, :func:`snnl.runs.train_or_reuse`: the
classifiers (:meth:`Zoo.get`, :meth:`Zoo.train`, in parallel worker processes by
:meth:`Zoo.train_many`) and any other trainer's runs (:meth:`Zoo.serve`: the GANs of
experiment "gan", the Szegedy models), each trained in-process with one torch thread.

The recipes (plain data, one place): :func:`recipe` gives the training config of
each kind for a reproduce config. Custom runs (sweeps) go through
:meth:`Zoo.train` with any :class:`~snnl.train.TrainConfig`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from torch import nn

from snnl.data import DataSplits
from snnl.experiments.config import ReproduceConfig
from snnl.runs import (
    RESULTS,
    read_json,
    reusable,
    train_or_reuse,
)
from snnl.train import TrainConfig, load_config_dataset, load_run, one_thread, train

__all__ = ["Kind", "RunRef", "Zoo", "recipe", "outcome", "config_key", "ENTANGLED_ALPHA"]

#: alpha of the zoo's entangled models (optimal temperature mode): chosen from the
#: alpha sweep of experiment "entangle" (see its report section for the evidence).
ENTANGLED_ALPHA = 0.1


class Kind(StrEnum):
    """The kinds of trained model the zoo serves."""

    NORMAL = "normal"  # cross-entropy only
    ENTANGLED = "entangled"  # eq. 3 at the optimal temperature, alpha = ENTANGLED_ALPHA


@dataclass(frozen=True)
class RunRef:
    """A trained (finished) run: what it is, which seed, where it lives."""

    kind: str
    seed: int
    path: Path
    config: TrainConfig
    dataset: DataSplits

    def results(self) -> dict[str, Any]:
        """The run's results.json (health, history, final accuracy)."""
        return read_json(self.path / RESULTS, "the run's results")

    def load(self) -> nn.Module:
        """The trained model, in eval mode."""
        model, _ = load_run(self.path, dataset=self.dataset)
        return model

    @property
    def health(self) -> str:
        return str(self.results()["health"]["verdict"])

    def describe(self, root: Path) -> dict[str, Any]:
        """JSON-ready summary (relative path) for experiment results."""
        return {"kind": self.kind, "seed": self.seed, "path": str(self.path.relative_to(root))}


def outcome(results: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's results every experiment records: its health verdict, the
    reasons for it, and its final test accuracy."""
    return {
        "health": results["health"]["verdict"],
        "health_reasons": results["health"]["reasons"],
        "test_accuracy": results["final"]["test_accuracy"],
    }


def recipe(config: ReproduceConfig, kind: Kind | str, seed: int) -> TrainConfig:
    """The training config of a zoo kind for a reproduce config.

    Default (mnist5k, digits, mnist1d): an MLP 256-256-256, 8 epochs; ``--full``:
    the paper's reference CNN (ResNet-20 on CIFAR-10), 6 epochs on MNIST-sized
    data (as the authors' MNIST script), 20 on the others.
    """
    kind = Kind(kind)
    small = config.dataset in {"digits", "mnist1d", "mnist5k"}
    if config.full:
        model = config.model or ("resnet20" if config.dataset == "cifar10" else "cnn")
        if config.dataset == "mnist1d":
            model = config.model or "mlp"
        epochs = config.epochs or (6 if config.dataset in {"mnist", "mnist5k"} else 20)
        kwargs: dict[str, Any] = {}
    else:
        model = config.model or ("mlp" if small else "cnn")
        epochs = config.epochs or (8 if small else 6)
        kwargs = {"widths": [256, 256, 256]} if model == "mlp" else {}
    base = TrainConfig(
        dataset=config.dataset,
        model=model,
        epochs=epochs,
        batch_size=128,
        lr=1e-3,
        probe_size=300,
        model_kwargs=kwargs,
        data_dir=config.data_dir,
        limit_train=config.limit_train,
        limit_test=config.limit_test,
        seed=seed,
    )
    if kind is Kind.NORMAL:
        return base
    return replace(base, alpha=ENTANGLED_ALPHA, temperature_mode="optimal")


#: Config fields added after run folders were first named, with their defaults: a field
#: at its default is left out of :func:`config_key`, so the folders keep their names.
LATER_FIELDS: dict[str, Any] = {"validation": 0}


def config_key(config: Any) -> str:
    """8 hex digits of a run config (a dataclass) without its seed (the seed is in the
    folder name), without a ``classifier`` path (a GAN's measuring classifier is
    identified by its weights, see experiment "gan") and without the fields of
    :data:`LATER_FIELDS` at their defaults.

    >>> config_key(TrainConfig(seed=0)) == config_key(TrainConfig(seed=3))
    True
    >>> config_key(TrainConfig()) == config_key(TrainConfig(validation=100))
    False
    """
    data = asdict(config)
    data.pop("seed")
    data.pop("classifier", None)
    for name, default in LATER_FIELDS.items():  # at its default: the folder's old name
        if name in data and data[name] == default:
            data.pop(name)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def _train_worker(config: TrainConfig, folder: Path, force: bool, data: DataSplits) -> None:
    """One run in a worker process (one torch thread; warnings counted in the run)."""
    import warnings

    import torch

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_or_reuse(folder, config, partial(train, dataset=data), force=force)


class Zoo:
    """Trains or reuses the runs experiments ask for, under ``out/runs``."""

    def __init__(self, config: ReproduceConfig, out: Path, *, log: Any = None) -> None:
        self.config = config
        self.out = Path(out)
        self._log = log or (lambda message: print(f"[snnl]   {message}", flush=True))

    @cached_property
    def dataset(self) -> DataSplits:
        """The data every zoo run trains on (one split for all seeds and kinds)."""
        return load_config_dataset(recipe(self.config, Kind.NORMAL, 0))

    def folder(self, name: str, config: Any) -> Path:
        """``out/runs/NAME-KEY-seedS``: the folder of run ``name`` of ``config``."""
        return self.out / "runs" / f"{name}-{config_key(config)}-seed{config.seed}"

    def _announce(self, folder: Path) -> None:
        forced = self.config.force and (folder / RESULTS).exists()
        self._log(f"training {folder.name}" + (" (--force)" if forced else ""))

    def train(self, name: str, config: TrainConfig) -> RunRef:
        """Train ``config`` as run ``name`` (e.g. "sweep-a0.3"), or reuse it if finished."""
        return self.train_many([(name, config)])[0]

    def train_many(self, items: list[tuple[str, TrainConfig]]) -> list[RunRef]:
        """Train (or reuse) several runs; missing ones train in parallel worker processes.

        ``config.workers`` processes (default: the machine's cores, at most 8), each
        with one torch thread: the runs of a sweep are independent, so on 2 cores two
        of them train at once. With one worker the runs train in this process, also
        with one thread, so results are identical whatever ``workers`` is (each run is
        deterministic given its config and thread count).
        """
        force = self.config.force
        todo = [
            (self.folder(name, config), config)
            for name, config in items
            if reusable(self.folder(name, config), config, force=force) is None
        ]
        workers = min(len(todo), self.workers)
        if workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            data = self.dataset
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                futures = []
                for folder, config in todo:
                    self._announce(folder)
                    futures.append(pool.submit(_train_worker, config, folder, force, data))
                for future in futures:
                    future.result()
        else:
            trainer = partial(train, dataset=self.dataset)
            with one_thread():  # as in the workers: results do not depend on --workers
                for folder, config in todo:
                    self._announce(folder)
                    train_or_reuse(folder, config, trainer, force=force)
        return [
            RunRef(name, config.seed, self.folder(name, config), config, self.dataset)
            for name, config in items
        ]

    @property
    def workers(self) -> int:
        import os

        requested = getattr(self.config, "workers", None)
        return max(1, requested if requested else min(os.cpu_count() or 1, 8))

    def serve(
        self,
        name: str,
        config: Any,
        train: Callable[..., dict[str, Any]],
        *,
        same: Callable[[dict[str, Any]], bool] | None = None,
    ) -> tuple[Path, dict[str, Any]]:
        """Train (in this process, one torch thread) or reuse the run ``name`` of any
        trainer, through :func:`snnl.runs.train_or_reuse`; returns (folder, results).

        ``config`` is the trainer's config dataclass (it names the folder, see
        :func:`config_key`); ``train(config, folder, resume=..., force=...)`` trains it
        (e.g. ``functools.partial(snnl.gan.train_gan, dataset=zoo.dataset)``); ``same``
        as in :func:`snnl.runs.reusable`.
        """
        folder = self.folder(name, config)

        def one_threaded(*args: Any, **kwargs: Any) -> dict[str, Any]:
            with one_thread():  # as in the workers, so results do not depend on where
                return train(*args, **kwargs)

        results = train_or_reuse(
            folder, config, one_threaded, force=self.config.force, log=self._log, same=same
        )
        return folder, results

    def get(self, kind: Kind | str, seed: int) -> RunRef:
        """The zoo's run of ``kind`` and ``seed`` (trained on first use)."""
        kind = Kind(kind)
        return self.train(kind.value, recipe(self.config, kind, seed))

    def runs(self, kind: Kind | str, seeds: int | None = None) -> list[RunRef]:
        """Runs of ``kind`` for seeds 0 .. seeds - 1 (default: the reproduce config's)."""
        return [self.get(kind, s) for s in range(seeds or self.config.seeds)]
