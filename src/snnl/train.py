"""Training loop for normal, entangled (eq. 3) and selectivity-regularised models.

A run lives in one folder (config.json, metrics.jsonl, checkpoint.pt, results.json,
.snnl.lock; see :mod:`snnl.runs`, whose loop :func:`train` drives); the checkpoint holds
the model, the optimiser and the regularisers after the last finished epoch.

Determinism: the model is initialised from ``seed``; the data order of epoch e is
drawn from a generator seeded with (seed, e), so nothing else needs saving. A run
killed at any point and resumed with ``resume=True`` gives the same metrics as an
uninterrupted one (same seed, same machine, CPU), and ``resume=True`` with a larger
``epochs`` extends a finished run to what a run of that length gives. Wall-clock times are kept out
of metrics.jsonl (they go to results.json) so that this can be checked byte for byte.

Health: every epoch records, per regularised layer, the activation scale (RMS
of the activations), the spread (RMS distance to the centroid) and SNNL* next to
its upper bound (its value when the classes are indistinguishable), on a fixed
probe subset. The run ends with a verdict (:func:`health_verdict`): ``ok``,
``collapsed`` or ``diverged``; a non-finite loss stops the run at once.

Distributed: started with ``torchrun --nproc_per_node=W -m snnl train ...`` (the
process group initialised from torchrun's environment, see
:mod:`snnl.distributed`), the model is wrapped in DistributedDataParallel and
each global batch, the single-process batch of the same seeded order and size,
is split across the ranks in rank order. Every regulariser's term is computed
over the global batch (features and labels gathered with gradient) and the
cross-entropy is scaled so that DDP's average gives the global mean: loss,
gradients and temperatures are those of one process on the whole batch (to
float rounding), so the history matches one process's. Every rank evaluates
identically; only rank 0 holds the folder lock and writes files, the others
wait for it. The checkpoint holds the plain model's state and the data order
does not depend on W, so a run resumes on any number of ranks. The ranks share
the run folder (one machine or a shared file system).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from snnl import distributed
from snnl._checks import check_choice, check_int, check_positive, check_real
from snnl.data import DataSplits, load_dataset
from snnl.distances import check_distance
from snnl.loss import SNNLWarning
from snnl.measures import accuracy
from snnl.models import build_model
from snnl.regularizers import (
    DEFAULT_TEMPERATURE_MODE,
    SNNL_FORMULAS,
    EntanglementRegularizer,
    check_temperature_mode,
    regularized_loss,
)
from snnl.runs import (
    CHECKPOINT,
    RESULTS,
    DamagedRunError,
    EpochTrainer,
    NonFiniteLoss,
    epoch_batches,
    load_checkpoint,
    read_json,
    run_epochs,
    show_progress,
)
from snnl.taps import capture, resolve_layers
from snnl.temperature import snnl_star

__all__ = [
    "TrainConfig",
    "train",
    "load_run",
    "load_config_dataset",
    "build_run_model",
    "default_threads",
    "one_thread",
    "health_verdict",
    "validation_split",
    "validation_holdout",
    "snnl_upper_bound",
    "HEALTH",
]

HEALTH = ("ok", "collapsed", "diverged")
#: A layer whose SNNL* reaches this share of its upper bound has indistinguishable classes.
INDISTINGUISHABLE = 0.999
#: Activation scale or spread this many times the initial one: growing without bound.
DIVERGED_GROWTH = 1e4
#: Spread below this share of the initial one: the layer's points collapsed together.
COLLAPSED_SHRINK = 1e-4


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved as config.json)."""

    dataset: str = "digits"
    model: str = "mlp"
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3  # Adam, as in the reference code
    alpha: float = 0.0  # eq. 3: loss = CE - alpha * sum_l SNNL_l; > 0 entangles
    # how T_l is chosen: "optimal" (T* of each batch, exact), "learned" (Adam on log T),
    # "reference" (the authors' T = T0 / t with one step on t per batch), "fixed"
    temperature_mode: str = DEFAULT_TEMPERATURE_MODE.value
    snnl_formula: str = "exact"  # "reference": the authors' exp-then-log with eps 1e-5
    # initial / fixed T (T0 of the reference mode); None: each layer's optimal T on the
    # probe subset at initialisation. Not used by the "optimal" mode.
    temperature: float | None = None
    temperature_lr: float = 0.05  # Adam on log T ("learned")
    distance: str = "euclidean"
    layers: list[str] | str = "hidden"  # regularised and probed layers
    selectivity_alpha: float = 0.0  # loss -= selectivity_alpha * mean class selectivity
    seed: int = 0  # model initialisation and data order
    split_seed: int = 0  # the train/test split (fixed across training seeds)
    # points held out of the TRAINING split for validation (tuning; never the test split):
    # a stratified subset drawn from split_seed (so the same for every training seed);
    # 0: none (a config at 0 names and reuses the run folders made before this field)
    validation: int = 0
    probe_size: int = 500  # fixed training subset for the per-epoch SNNL profile
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"widths": [256, 256]}
    data_dir: str | None = None
    limit_train: int | None = None
    limit_test: int | None = None

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, low=1)
        if isinstance(self.batch_size, int) and not isinstance(self.batch_size, bool):
            if self.batch_size < 2:
                raise ValueError(
                    f"batch_size must be >= 2 (SNNL needs pairs), got {self.batch_size}"
                )
        check_int("batch_size", self.batch_size, low=2)
        check_positive("lr", self.lr)
        check_real("alpha", self.alpha)
        check_real("selectivity_alpha", self.selectivity_alpha)
        check_temperature_mode(self.temperature_mode)
        check_choice("snnl_formula", self.snnl_formula, SNNL_FORMULAS)
        if self.temperature is not None:
            check_positive("temperature", self.temperature)
        check_positive("temperature_lr", self.temperature_lr)
        check_distance(self.distance)
        check_int("probe_size", self.probe_size, low=2)
        check_int("seed", self.seed)
        check_int("validation", self.validation, low=0)
        if isinstance(self.layers, tuple):
            self.layers = list(self.layers)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**data)


def default_threads(model: str) -> int:
    """Size-aware default for torch's intra-op threads.

    Small models (the MLP) take one thread: their per-step kernels are too short
    for a second thread to pay off, and on a machine where another process keeps a
    core busy, OpenMP threads that wait for each other made a 3-epoch digits run
    4.1x slower with 2 threads but 1.4x with 1 (FIELD_NOTES section 7). Larger
    models take half the cores (at least 1), leaving room for other work; under
    torchrun the processes on one machine (``LOCAL_WORLD_SIZE``) share that half.

    >>> default_threads("mlp")
    1
    """
    import os

    if model == "mlp":
        return 1
    try:
        local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_processes = 1
    return max(1, (os.cpu_count() or 1) // 2 // local_processes)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch thread (restored after): runs trained in worker
    processes use one thread, and float results depend on the thread count, so runs
    trained in-process use one too and match them bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_config_dataset(config: Any) -> DataSplits:
    """The dataset (and fixed split) a run's config names: a TrainConfig, a GANConfig or
    any config with ``dataset``, ``data_dir``, ``split_seed``, ``limit_train`` and
    ``limit_test``."""
    return load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        seed=config.split_seed,
        limit_train=config.limit_train,
        limit_test=config.limit_test,
    )


def validation_split(labels: Tensor, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """(kept, held out): sorted indices of a seeded stratified hold-out of ``size`` points.

    Class c of n_c points (of N) gives floor(size n_c / N) points, the remaining ones go
    to the classes with the largest remainders (ties: the lower class); within a class
    the points are the first of a ``torch.randperm`` drawn from one generator seeded
    with ``seed`` (classes in order). Every class keeps at least one training point.

    Args:
        labels: int64 labels (N,) of the training split.
        size: points to hold out, 1 <= size <= N - (number of classes present).
        seed: the data seed (a run's ``split_seed``: the same for every training seed).

    >>> y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    >>> kept, held = validation_split(y, 5, seed=0)
    >>> len(kept), len(held), torch.bincount(y[held]).tolist()
    (5, 5, [2, 3])
    """
    y = torch.as_tensor(labels).long()
    classes, counts = torch.unique(y, return_counts=True)
    check_int("size", size, low=1)
    if size > len(y) - len(classes):
        raise ValueError(
            f"a validation hold-out of {size} points leaves a class of {len(y)} training "
            f"points ({len(classes)} classes) without a training point; hold out at most "
            f"{len(y) - len(classes)}"
        )
    exact = counts.double() * size / len(y)
    quota = exact.floor().long()
    remainder = exact - quota
    order = sorted(range(len(classes)), key=lambda i: (-float(remainder[i]), i))
    for i in order[: size - int(quota.sum())]:
        quota[i] += 1
    quota = torch.minimum(quota, counts - 1)  # keep a training point in every class
    for i in order:  # what the cap took goes to classes with room, largest remainder first
        while int(quota.sum()) < size and quota[i] < counts[i] - 1:
            quota[i] += 1
    g = torch.Generator().manual_seed(20_011 * seed + 7)
    held = []
    for c, q in zip(classes.tolist(), quota.tolist(), strict=True):
        members = torch.nonzero(y == c).flatten()
        held.append(members[torch.randperm(len(members), generator=g)[:q]])
    held_idx = torch.cat(held).sort().values
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx


def validation_holdout(
    config: TrainConfig, dataset: DataSplits
) -> tuple[DataSplits, tuple[Tensor, Tensor] | None]:
    """The training data a run of ``config`` learns from, and its validation hold-out.

    ``config.validation == 0``: ``dataset`` itself and None; otherwise ``dataset`` with
    :func:`validation_split` (``config.split_seed``) taken out of its training split
    (the test split untouched) and the held-out ``(x, y)``.
    """
    if config.validation == 0:
        return dataset, None
    kept, held = validation_split(dataset.y_train, config.validation, config.split_seed)
    train_part = dataclasses.replace(
        dataset, x_train=dataset.x_train[kept], y_train=dataset.y_train[kept]
    )
    return train_part, (dataset.x_train[held], dataset.y_train[held])


# ----------------------------------------------------------------------------- health


def snnl_upper_bound(labels: Tensor) -> float:
    """SNNL of points whose classes are indistinguishable (every distance equal).

    Each valid anchor i then has loss log((N - 1) / (n_{y_i} - 1)); the mean over
    anchors with a positive is an upper bound of SNNL* = min_T SNNL (the limit
    T -> infinity), whatever the features.

    >>> round(snnl_upper_bound(torch.tensor([0, 0, 1, 1])), 6)  # log(3 / 1)
    1.098612
    """
    counts = torch.bincount(labels.long())
    per = counts[labels.long()].double()
    valid = per >= 2
    n = labels.shape[0]
    return float(torch.log((n - 1) / (per[valid] - 1)).mean()) if bool(valid.any()) else 0.0


def _layer_geometry(acts: Tensor) -> tuple[float, float]:
    """(activation scale = RMS of the activations, spread = RMS distance to the centroid)."""
    a = acts.reshape(acts.shape[0], -1).double()
    scale = float(a.pow(2).mean().sqrt())
    spread = float((a - a.mean(0, keepdim=True)).pow(2).sum(1).mean().sqrt())
    return scale, spread


def _snnl_star(acts: Tensor, y: Tensor, distance: str) -> tuple[float, float]:
    """(T*, SNNL*) of a layer on the probe subset, whatever the activations' scale.

    :func:`snnl.temperature.snnl_star` (the search follows the layer's own distance
    range); non-finite activations give (nan, nan).
    """
    a = acts.reshape(acts.shape[0], -1)
    if not bool(torch.isfinite(a).all()):
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        star = snnl_star(a, y, distance=distance)
    return star.temperature, float(star.value)


def _profile(
    model: nn.Module, x: Tensor, y: Tensor, layers: tuple[str, ...], distance: str
) -> dict[str, dict[str, float]]:
    """SNNL* (and T*) of every layer and the logits; activation scale and spread."""
    names = [*layers, "logits"]
    acts = capture(model, x, names)
    out: dict[str, dict[str, float]] = {"snnl": {}, "temperature": {}, "scale": {}, "spread": {}}
    for name in names:
        t, v = _snnl_star(acts[name], y, distance)
        scale, spread = _layer_geometry(acts[name])
        out["snnl"][name], out["temperature"][name] = v, t
        out["scale"][name], out["spread"][name] = scale, spread
    return out


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def health_verdict(
    history: list[dict[str, Any]],
    initial: dict[str, dict[str, float]],
    *,
    num_classes: int,
    bound: float,
    non_finite: str | None = None,
) -> dict[str, Any]:
    """``{"verdict": "ok" | "collapsed" | "diverged", "reasons": [...]}`` of a run.

    - diverged: a non-finite loss (``non_finite`` says where), a non-finite SNNL*
      or activation, or a layer whose activation scale or spread grew more than
      ``DIVERGED_GROWTH`` times its initial value;
    - collapsed: final test accuracy within 0.05 of chance (1 / classes), a layer
      whose SNNL* reached ``INDISTINGUISHABLE`` of its upper bound, or whose
      spread fell below ``COLLAPSED_SHRINK`` of its initial value;
    - ok otherwise.

    >>> init = {"scale": {"relu1": 1.0}, "spread": {"relu1": 1.0}, "snnl": {"relu1": 0.5}}
    >>> epoch = {"test_accuracy": 0.95, "probe_scale": {"relu1": 2.0},
    ...          "probe_spread": {"relu1": 1.5}, "probe_snnl": {"relu1": 0.3}}
    >>> health_verdict([epoch], init, num_classes=10, bound=2.2)["verdict"]
    'ok'
    """
    diverged: list[str] = []
    collapsed: list[str] = []
    if non_finite:
        diverged.append(non_finite)
    if history:
        last = history[-1]
        for layer, v in last["probe_snnl"].items():
            if layer == "logits":
                continue
            v = _num(v)
            scale, spread = _num(last["probe_scale"][layer]), _num(last["probe_spread"][layer])
            s0, p0 = initial["scale"][layer], initial["spread"][layer]
            if not all(math.isfinite(z) for z in (v, scale, spread)):
                diverged.append(f"{layer}: non-finite SNNL* or activations")
                continue
            if scale > DIVERGED_GROWTH * s0 or spread > DIVERGED_GROWTH * p0:
                diverged.append(
                    f"{layer}: activation scale {scale:.3g} / spread {spread:.3g} grew more "
                    f"than {DIVERGED_GROWTH:g}x (initial {s0:.3g} / {p0:.3g})"
                )
            if spread < COLLAPSED_SHRINK * p0:
                collapsed.append(f"{layer}: spread {spread:.3g} (initial {p0:.3g})")
            if bound > 0 and v >= INDISTINGUISHABLE * bound:
                collapsed.append(f"{layer}: SNNL* {v:.4f} at its upper bound {bound:.4f}")
        chance = 1.0 / max(num_classes, 1)
        acc = _num(last["test_accuracy"])
        if not math.isfinite(acc) or acc <= chance + 0.05:
            collapsed.append(f"test accuracy {acc:.4f} near chance {chance:.3f}")
    if diverged:
        return {"verdict": "diverged", "reasons": diverged + collapsed}
    if collapsed:
        return {"verdict": "collapsed", "reasons": collapsed}
    return {"verdict": "ok", "reasons": []}


#: What the checkpoint of a training run holds besides the loop's history, seconds and initial.
CHECKPOINT_KEYS = frozenset({"model", "optimizer", "regularizers"})


# ----------------------------------------------------------------------------- steps


def _normalisation(x: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training inputs (for the model's Normalize)."""
    dims = [0, *range(2, x.dim())]
    return x.mean(dims).tolist(), x.std(dims).clamp_min(1e-6).tolist()


def build_run_model(config: TrainConfig, dataset: DataSplits) -> nn.Module:
    """The run's model, initialised from its seed (normalisation from the training data)."""
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


def _probe_indices(y: Tensor, size: int, seed: int) -> Tensor:
    """A fixed, seeded subset of the training set for the SNNL profile."""
    g = torch.Generator().manual_seed(10_007 * seed + 1)
    perm = torch.randperm(len(y), generator=g)
    return perm[: min(size, len(y))].sort().values


def _build_regularizers(
    config: TrainConfig, model: nn.Module, layers: tuple[str, ...], initial_t: dict[str, float]
) -> list[Any]:
    regs: list[Any] = []
    if config.alpha != 0:
        temperature: float | dict[str, float] = (
            config.temperature
            if config.temperature is not None
            else {n: initial_t[n] for n in layers}
        )
        regs.append(
            EntanglementRegularizer(
                model,
                list(layers),
                alpha=config.alpha,
                temperature=temperature,
                temperature_mode=config.temperature_mode,
                snnl_formula=config.snnl_formula,
                temperature_lr=config.temperature_lr,
                distance=config.distance,
            )
        )
    if config.selectivity_alpha != 0:
        from snnl.regularizers import SelectivityRegularizer  # type: ignore[attr-defined]

        regs.append(SelectivityRegularizer(model, list(layers), alpha=config.selectivity_alpha))
    return regs


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    regs: list[Any],
    dataset: DataSplits,
    batches: list[Tensor],
    epoch: int,
    bar: Any,
    on_step: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    """One pass over ``batches``; raises NonFiniteLoss at the first non-finite loss.

    Under DDP (``model`` wrapped) each rank runs its share of every global batch;
    the loss, cross-entropy and terms :func:`regularized_loss` returns are those of
    the global batch, the same on every rank, so the record is one process's.
    """
    model.train()
    device = distributed.training_device()
    sums = {"loss": 0.0, "ce": 0.0}
    term_sums: dict[str, dict[str, float]] = {}
    steps = 0
    left_out = 0
    for idx in batches:
        mine = distributed.shard(idx)  # this rank's share; the whole batch in one process
        xb, yb = dataset.x_train[mine].to(device), dataset.y_train[mine].to(device)
        optimizer.zero_grad(set_to_none=True)
        y_all = dataset.y_train[idx]
        left_out += int((torch.bincount(y_all)[y_all] < 2).sum())
        with warnings.catch_warnings():  # counted in the record instead, per epoch
            warnings.simplefilter("ignore", SNNLWarning)
            res = regularized_loss(model, xb, yb, regs)
        loss = float(res.total.detach())
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"non-finite loss {loss} at epoch {epoch + 1}, step {steps + 1}")
        res.total.backward()
        optimizer.step()
        sums["loss"] += loss
        sums["ce"] += float(res.cross_entropy)
        for reg_name, per_layer in res.terms.items():
            acc = term_sums.setdefault(reg_name, {})
            for layer, value in per_layer.items():
                acc[layer] = acc.get(layer, 0.0) + float(value)
        steps += 1
        bar.update(1)
        if on_step is not None:
            on_step(epoch, steps)
    return {
        "train_loss": sums["loss"] / steps,
        "cross_entropy": sums["ce"] / steps,
        "batch_terms": {r: {k: v / steps for k, v in t.items()} for r, t in term_sums.items()},
        "left_out_anchors": left_out,  # anchors whose class occurs once in their batch
    }


def _evaluate_epoch(
    model: nn.Module,
    regs: list[Any],
    dataset: DataSplits,
    probe: tuple[Tensor, Tensor],
    layers: tuple[str, ...],
    distance: str,
    validation: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Any]:
    model.eval()
    prof = _profile(model, probe[0], probe[1], layers, distance)
    ent = [r for r in regs if isinstance(r, EntanglementRegularizer)]
    extra = {} if validation is None else {"validation_accuracy": accuracy(model, *validation)}
    return {
        **extra,
        "temperature": dict(ent[0].temperatures) if ent else {},
        "refused_temperature_steps": ent[0].refused_steps if ent else 0,
        "probe_snnl": prof["snnl"],
        "probe_temperature": prof["temperature"],
        "probe_scale": prof["scale"],
        "probe_spread": prof["spread"],
        "train_accuracy": accuracy(model, dataset.x_train, dataset.y_train),
        "test_accuracy": accuracy(model, dataset.x_test, dataset.y_test),
    }


class _Trainer(EpochTrainer):
    """The classifier run of a TrainConfig: model, optimiser, regularisers, epoch step."""

    checkpoint_keys = CHECKPOINT_KEYS

    def __init__(
        self,
        config: TrainConfig,
        dataset: DataSplits | None,
        progress: bool | None,
        on_step: Callable[[int, int], None] | None,
    ) -> None:
        self.config, self.on_step = config, on_step
        self.show = show_progress(progress)
        self.dataset, self.validation = validation_holdout(
            config, dataset if dataset is not None else load_config_dataset(config)
        )
        model = build_run_model(config, self.dataset)
        self.layers = resolve_layers(model, config.layers)
        self.ddp_model = distributed.wrap_model(model)  # model itself in one process
        if self.ddp_model is not model:
            model = self.ddp_model.module  # the plain model (SyncBatchNorm on CUDA)
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        idx = _probe_indices(self.dataset.y_train, config.probe_size, config.seed)
        self.probe = (self.dataset.x_train[idx], self.dataset.y_train[idx])
        self.regs: list[Any] = []

    def begin(self, initial: dict[str, Any] | None) -> dict[str, Any]:
        if initial is None:
            initial = _profile(self.model, *self.probe, self.layers, self.config.distance)
        self.regs = _build_regularizers(
            self.config, self.model, self.layers, initial["temperature"]
        )
        return initial

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "regularizers": [r.state_dict() for r in self.regs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if len(state["regularizers"]) != len(self.regs):
            raise ValueError("regulariser count differs")
        for reg, reg_state in zip(self.regs, state["regularizers"], strict=True):
            reg.load_state_dict(reg_state)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        from tqdm.auto import tqdm

        c = self.config
        batches = epoch_batches(len(self.dataset.y_train), c.batch_size, c.seed, epoch)
        with tqdm(
            total=len(batches),
            desc=f"epoch {epoch + 1}/{c.epochs}",
            disable=not self.show,
            leave=False,
            file=sys.stderr,
        ) as bar:
            return _train_epoch(
                self.ddp_model, self.optimizer, self.regs, self.dataset, batches, epoch, bar,
                self.on_step,
            )  # fmt: skip

    def evaluate(self, epoch: int) -> dict[str, Any]:
        return _evaluate_epoch(
            self.model, self.regs, self.dataset, self.probe, self.layers, self.config.distance,
            self.validation,
        )  # fmt: skip

    def health(
        self, history: list[dict[str, Any]], initial: dict[str, Any], non_finite: str | None
    ) -> dict[str, Any]:
        return health_verdict(
            history,
            initial,
            num_classes=self.dataset.num_classes,
            bound=snnl_upper_bound(self.probe[1]),
            non_finite=non_finite,
        )

    def results(
        self, history: list[dict[str, Any]], initial: dict[str, Any], health: dict[str, Any]
    ) -> dict[str, Any]:
        last = history[-1] if history else {}
        ds = self.dataset
        held = 0 if self.validation is None else len(self.validation[1])
        extra = {"validation": held} if held else {}
        names = ("test_accuracy", "train_accuracy") + (("validation_accuracy",) if held else ())
        measured = {k: last.get(k) for k in names}
        if len(history) < self.config.epochs:  # stopped at a non-finite loss: a failed run
            # counts at the measured accuracy of the parameters it stopped with (the last
            # step's; the step whose loss was non-finite was not taken), not as missing
            sets = {"test_accuracy": (ds.x_test, ds.y_test),
                    "train_accuracy": (ds.x_train, ds.y_train),
                    "validation_accuracy": self.validation}  # fmt: skip
            measured = {k: accuracy(self.model, *sets[k]) for k in names}
            measured["stopped_early"] = True
        return {
            "dataset": {
                "name": ds.name,
                "train": len(ds.y_train),
                "test": len(ds.y_test),
                **extra,
            },  # fmt: skip
            "layers": list(self.layers),
            "health": health,
            "snnl_upper_bound": snnl_upper_bound(self.probe[1]),
            "initial": initial,
            "final": {
                "epochs_completed": len(history),
                **measured,
                "probe_snnl": last.get("probe_snnl", {}),
            },
        }

    def epoch_line(self, record: dict[str, Any]) -> str:
        return (
            f"epoch {record['epoch']}: loss {record['train_loss']:.4f} "
            f"test acc {record['test_accuracy']:.4f}"
        )


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
        out_dir: the run folder (created; locked while training).
        resume: continue from the last finished epoch's checkpoint; a finished run
            whose config asks for more epochs is extended (fewer are refused).
        force: discard whatever the folder holds and start over.
        dataset: an already loaded dataset (else ``load_dataset(config.dataset, ...)``).
        progress: show a progress bar (default: only when stderr is a terminal).
        on_step: called as ``on_step(epoch, step)`` after every optimiser step.

    Returns:
        The content of results.json: config, final figures, per-epoch history and
        ``health`` (``{"verdict", "reasons"}``).

    Raises:
        snnl.runs.RunExistsError, RunMismatchError, DamagedRunError,
        snnl._io.RunLockedError, FileNotFoundError (``resume`` of a missing folder),
        ValueError.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    return run_epochs(
        config,
        out_dir,
        lambda: _Trainer(config, dataset, progress, on_step),
        resume=resume,
        force=force,
        progress=progress,
    )


def load_run(
    out_dir: str | Path, *, dataset: DataSplits | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained model of a finished run and return (model in eval mode, results)."""
    out = Path(out_dir)
    if not (out / RESULTS).exists():
        raise FileNotFoundError(f"{out / RESULTS} not found: {out} is not a finished training run")
    results = read_json(out / RESULTS, "the run's results")
    try:
        config = TrainConfig.from_dict(results["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise DamagedRunError(f"{out / RESULTS} does not hold a valid run config ({err})") from None
    if dataset is None:
        dataset = load_config_dataset(config)
    model = build_run_model(config, validation_holdout(config, dataset)[0])
    state = load_checkpoint(out / CHECKPOINT, CHECKPOINT_KEYS)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise DamagedRunError(f"{out / CHECKPOINT} does not match the run's model") from None
    return model.eval(), results
