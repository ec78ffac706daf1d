"""Run folders: the lifecycle every trainer shares, and the one run cache.

A run lives in one folder:

    config.json     the config that produced it (``dataclasses.asdict``)
    metrics.jsonl   one JSON line per finished epoch (rewritten atomically each epoch)
    checkpoint.pt   the trainer's state, the history, the initial measures and the
                    seconds per epoch, after the last finished epoch
    results.json    written last: its presence marks the run as finished
    .snnl.lock      held while a process trains into the folder (a second one refuses)

:func:`run_epochs` drives any :class:`EpochTrainer` (the classifier trainer of
:mod:`snnl.train`, the GAN of :mod:`snnl.gan`, an experiment's small sibling): it
locks and checks the folder, resumes from the checkpoint, runs the epochs the
config asks for, writes a checkpoint after each and the results at the end. It
knows a config only through ``epochs`` and ``asdict(config)``; the trainer draws
its own batches with :func:`epoch_batches` (seeded by the config's seed and the
epoch), so nothing but the checkpoint is needed to resume bit for bit.

Resume and extension: ``resume=True`` continues an unfinished run; it also extends
a finished one when the config asks for more epochs than it was trained for (the
result is bit-identical to a run trained to that length in one go). Fewer epochs
than a finished run holds are refused. ``epochs`` is the only setting that may
change on resume.

:func:`train_or_reuse` is the cache of ``snnl reproduce`` (the zoo, the GAN
experiment, the Szegedy models): a finished run with the config asked for is
reused, one with another config is refused (or retrained with ``force``), an
unfinished one resumes.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from snnl import _io, distributed

__all__ = [
    "CONFIG",
    "METRICS",
    "CHECKPOINT",
    "RESULTS",
    "RunExistsError",
    "DamagedRunError",
    "RunMismatchError",
    "NonFiniteLoss",
    "EpochTrainer",
    "epoch_batches",
    "read_json",
    "load_checkpoint",
    "write_checkpoint",
    "run_folder",
    "require_folder",
    "prepare_folder",
    "run_epochs",
    "reusable",
    "train_or_reuse",
    "show_progress",
    "saved_epochs",
    "config_defaults",
]

CONFIG, METRICS, CHECKPOINT, RESULTS = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "results.json",
)
#: What run_epochs adds to every trainer's state in the checkpoint.
LOOP_KEYS = frozenset({"history", "seconds", "initial"})


class RunExistsError(RuntimeError):
    """The output folder already holds a run that this call would overwrite."""


class DamagedRunError(RuntimeError):
    """A run's saved files cannot be read (truncated, empty or not what snnl wrote)."""


class RunMismatchError(ValueError):
    """A run folder holds a run whose config differs from the one asked for."""


class NonFiniteLoss(Exception):
    """Raised by an epoch step at the first non-finite loss: the run stops there and its
    health is "diverged" (the message says where)."""


# ----------------------------------------------------------------------------- batches


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[Tensor]:
    """The shuffled mini-batches of one epoch: every index of ``range(n)`` exactly once.

    The order is ``torch.randperm(n)`` drawn from a generator seeded with
    ``seed * 100_003 + epoch``; the batches are its consecutive slices of
    ``batch_size``. A last batch of one point (too small for a pair) joins the batch
    before it, when there is one.

    Args:
        n: number of points (>= 1); batch_size: points per batch (>= 1);
        seed, epoch: the run's seed and the epoch (0-based).

    Returns:
        A list of 1-D int64 tensors whose concatenation is a permutation of range(n).

    Example:
        >>> [len(b) for b in epoch_batches(129, 64, seed=0, epoch=0)]
        [64, 65]
        >>> b = epoch_batches(5, 2, seed=0, epoch=0)
        >>> [len(x) for x in b], sorted(torch.cat(b).tolist())
        ([2, 3], [0, 1, 2, 3, 4])
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        last = batches.pop()  # popped first: batches[-2] below is the one before it
        batches[-1] = torch.cat([batches[-1], last])
    return batches


# ----------------------------------------------------------------------------- files


def read_json(path: Path, what: str) -> Any:
    """The JSON content of ``path``; :class:`DamagedRunError` naming the file if unreadable.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "results.json"
    >>> _ = p.write_text("{")
    >>> try:
    ...     read_json(p, "the run's results")
    ... except DamagedRunError as err:
    ...     print(str(err).startswith(str(p)))
    True
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedRunError(
            f"{path} ({what}) is damaged and cannot be read ({type(err).__name__}); "
            "start the run over with --force"
        ) from None


def load_checkpoint(path: Path, keys: frozenset[str], kind: str = "checkpoint") -> dict[str, Any]:
    """The checkpoint at ``path`` (``weights_only``), which must hold ``keys``.

    Raises:
        DamagedRunError naming the file when it cannot be read or lacks a key.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types; its advice (unpickling) must not reach users
        raise DamagedRunError(
            f"{path} is damaged (truncated, empty or not a checkpoint written by snnl); "
            "start the run over with --force"
        ) from None
    if not isinstance(state, dict) or not keys <= set(state):
        raise DamagedRunError(
            f"{path} is not a {kind} of this snnl version (missing "
            f"{sorted(keys - set(state)) if isinstance(state, dict) else 'everything'}); "
            "start the run over with --force"
        )
    return state


def write_checkpoint(out: Path, checkpoint: dict[str, Any], history: list) -> None:
    """The checkpoint and the per-epoch metrics (one JSON line each), each atomically."""
    out = Path(out)
    _io.save_torch(out / CHECKPOINT, checkpoint)
    _io.write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in history))


@contextlib.contextmanager
def run_folder(out: Path, *, main: bool = True) -> Iterator[None]:
    """Guard a run that writes into ``out``: if the block fails and this call found no
    folder there, the folder it leaves holding nothing but the lock is removed (a failed
    run leaves no empty folder behind). ``main``: whether this process owns the folder
    (rank 0)."""
    out = Path(out)
    created = not out.exists()
    try:
        yield
    except BaseException:
        leftovers = out.is_dir() and any(p.name != _io.LOCK_NAME for p in out.iterdir())
        if main and created and out.is_dir() and not leftovers:
            (out / _io.LOCK_NAME).unlink(missing_ok=True)
            out.rmdir()
        raise


def require_folder(out: Path) -> None:
    """``out`` is a folder or does not exist yet (NotADirectoryError otherwise)."""
    if Path(out).exists() and not Path(out).is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")


def _require_existing(out: Path) -> None:
    if not out.exists():
        raise FileNotFoundError(
            f"cannot resume {out}: the folder does not exist; check the path, or leave out "
            "--resume to start a new run there"
        )


def config_defaults(config: Any) -> dict[str, Any]:
    """The default value of every field of the config dataclass ``config`` that has one.

    A saved config without a field that its class gained later (at its default) is the
    config asked for: :func:`reusable` and :func:`prepare_folder` read absent keys as these.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     epochs: int
    ...     validation: int = 0
    >>> config_defaults(C(3))
    {'validation': 0}
    """
    out: dict[str, Any] = {}
    for f in fields(config):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def _with_defaults(saved: Any, defaults: dict[str, Any] | None) -> Any:
    if not isinstance(saved, dict) or not defaults:
        return saved
    return {**{k: v for k, v in defaults.items() if k not in saved}, **saved}


def _differences(saved: Any, current: dict[str, Any]) -> list[str]:
    saved = saved if isinstance(saved, dict) else {}
    return sorted(k for k in {*current, *saved} if saved.get(k) != current.get(k))


def prepare_folder(
    out: Path,
    config: dict[str, Any],
    *,
    resume: bool,
    force: bool,
    defaults: dict[str, Any] | None = None,
) -> str:
    """Check what ``out`` holds against ``config`` (a dict); say how the run starts.

    Returns:
        ``"fresh"`` (nothing to resume: train from the start), ``"resume"`` (an
        unfinished run's checkpoint) or ``"extend"`` (a finished run trained for fewer
        epochs than ``config["epochs"]``; resume only).

    Raises:
        FileNotFoundError: ``resume`` on a folder that does not exist.
        RunExistsError: a finished run without ``force`` (not extendable), or an
            unfinished one without ``resume``.
        RunMismatchError: ``resume`` with a config that differs in more than ``epochs``,
            or with fewer epochs than the finished run holds.
        DamagedRunError: a checkpoint without config.json, or an unreadable config.json.

    ``defaults`` (:func:`config_defaults`): a saved config without one of these keys
    reads as having it at this value (a field added to the config class later).

    ``force``: start over whatever the folder holds (a damaged results.json included);
    nothing is deleted here: :func:`run_epochs` replaces the old files only once the
    new run has started, so a failed start leaves the folder as it was.
    """
    out = Path(out)
    if force:
        return "fresh"
    if resume:
        _require_existing(out)
    finished = (out / RESULTS).exists()
    has_ckpt = (out / CHECKPOINT).exists()
    if finished and not resume:
        raise RunExistsError(
            f"{out} holds a finished run ({RESULTS} exists); pass --force (force=True) to "
            "train again and overwrite it, or --resume with a larger --epochs to extend it"
        )
    if not (out / CONFIG).exists():
        if has_ckpt and resume:
            raise DamagedRunError(
                f"{out} has {CHECKPOINT} but no {CONFIG}: the run folder is damaged; "
                "start over with --force"
            )
        if finished:
            raise DamagedRunError(
                f"{out} has {RESULTS} but no {CONFIG}: the run folder is damaged; "
                "start over with --force"
            )
        return "fresh"
    saved = read_json(out / CONFIG, "the run's config")
    if not isinstance(saved, dict):
        raise DamagedRunError(f"{out / CONFIG} does not hold a run config; start over with --force")
    saved = _with_defaults(saved, defaults)
    if not resume:
        if has_ckpt:
            raise RunExistsError(
                f"{out} holds an unfinished run; pass --resume to continue it or --force "
                "to start over"
            )
        return "fresh"
    diff = [k for k in _differences(saved, config) if k != "epochs"]
    if diff:
        raise RunMismatchError(
            f"cannot resume {out}: its {CONFIG} differs in {', '.join(diff)}; "
            "use the same settings or --force to start over"
        )
    saved_epochs, epochs = saved.get("epochs"), config.get("epochs")
    if finished:
        if not has_ckpt:
            raise DamagedRunError(
                f"{out} has {RESULTS} but no {CHECKPOINT}: it cannot be extended; "
                "start over with --force"
            )
        if not isinstance(saved_epochs, int) or not isinstance(epochs, int):
            raise DamagedRunError(f"{out / CONFIG} holds no epochs; start over with --force")
        if epochs < saved_epochs:
            raise RunMismatchError(
                f"cannot resume {out} with epochs={epochs}: it is a finished run of "
                f"{saved_epochs} epochs and a run cannot be shortened; pass --epochs "
                f"{saved_epochs + 1} or more to extend it, or --force to start over"
            )
        if epochs == saved_epochs:
            raise RunExistsError(
                f"{out} holds a finished run of {saved_epochs} epochs; pass a larger "
                "--epochs to extend it, or --force to train again and overwrite it"
            )
        return "extend"
    return "resume" if has_ckpt else "fresh"


def saved_epochs(out: Path) -> int | None:
    """The ``epochs`` of the run in ``out`` (its config.json), None when it has none.

    What ``--resume`` without ``--epochs`` continues to: the run's own length.
    """
    path = Path(out) / CONFIG
    if not path.exists():
        return None
    saved = read_json(path, "the run's config")
    epochs = saved.get("epochs") if isinstance(saved, dict) else None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def show_progress(progress: bool | None) -> bool:
    """Whether to show progress: ``progress``, or (None) whether stderr is a terminal;
    only in the main process."""
    show = sys.stderr.isatty() if progress is None else bool(progress)
    return show and distributed.is_main_process()


# ----------------------------------------------------------------------------- the loop


class EpochTrainer(ABC):
    """A run's networks, optimisers and epoch step, driven by :func:`run_epochs`.

    A subclass builds everything in its constructor (from its seed), and writes:

    - :meth:`begin`: the measures before training (saved once, in the checkpoint),
      and whatever depends on them;
    - :meth:`state_dict` / :meth:`load_state_dict`: what the checkpoint holds
      (keys ``checkpoint_keys``; tensors, numbers, strings, lists, dicts);
    - :meth:`train_epoch`: one pass over :func:`epoch_batches` of (seed, epoch); it
      raises :class:`NonFiniteLoss` at a non-finite loss;
    - :meth:`evaluate` (after each epoch), :meth:`health` (default: "diverged" at a
      non-finite loss, else "ok"), :meth:`results` (the part of results.json between
      its ``config`` and its ``history``) and :meth:`epoch_line` (progress).
    """

    #: The keys of :meth:`state_dict` (checked when a checkpoint is loaded).
    checkpoint_keys: frozenset[str] = frozenset()
    #: What the checkpoint is called in error messages.
    kind: str = "checkpoint"

    @abstractmethod
    def begin(self, initial: dict[str, Any] | None) -> dict[str, Any]:
        """Called once before training: ``initial`` is the saved initial measures when
        resuming, None on a fresh start (measure them); returns the initial measures."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The state to checkpoint after an epoch."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state (``state`` is the whole checkpoint)."""

    @abstractmethod
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train epoch ``epoch`` (0-based); return its record (JSON-ready values)."""

    def evaluate(self, epoch: int) -> dict[str, Any]:
        """Measures after epoch ``epoch`` (added to its record)."""
        return {}

    def health(
        self, history: list[dict[str, Any]], initial: dict[str, Any], non_finite: str | None
    ) -> dict[str, Any]:
        """``{"verdict", "reasons"}`` of the finished run."""
        if non_finite:
            return {"verdict": "diverged", "reasons": [non_finite]}
        return {"verdict": "ok", "reasons": []}

    def results(
        self, history: list[dict[str, Any]], initial: dict[str, Any], health: dict[str, Any]
    ) -> dict[str, Any]:
        """results.json between ``config`` and ``history``."""
        return {
            "health": health,
            "initial": initial,
            "final": {"epochs_completed": len(history)},
        }

    def epoch_line(self, record: dict[str, Any]) -> str | None:
        """One progress line after an epoch (None: none)."""
        return None


def run_epochs(
    config: Any,
    out_dir: str | Path,
    make: Callable[[], EpochTrainer],
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train the run of ``config`` into ``out_dir`` and return its results dict.

    ``config`` is a dataclass with ``epochs`` (saved as config.json); ``make()``
    builds the trainer once the folder is locked and checked. Epochs
    ``len(history) .. config.epochs - 1`` are trained; after each the record
    (``{"epoch": e + 1, **train_epoch(e), **evaluate(e)}``, non-finite floats as
    None) is appended to the history and the checkpoint written. results.json is
    ``{"config": asdict(config), **trainer.results(...), "history": [...], "timing":
    {"seconds_per_epoch", "total_seconds"}}``.

    Distributed (torchrun): rank 0 alone locks the folder and writes files; every
    rank trains and returns once the results are on disk.

    Raises:
        RunExistsError, RunMismatchError, DamagedRunError, FileNotFoundError (``resume``
        on a missing folder), snnl._io.RunLockedError, NotADirectoryError.

    Example:
        >>> import tempfile
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Count:
        ...     epochs: int = 2
        ...     seed: int = 0
        >>> class Counter(EpochTrainer):
        ...     checkpoint_keys = frozenset({"seen"})
        ...     def __init__(self):
        ...         self.seen = 0
        ...     def begin(self, initial):
        ...         return initial or {}
        ...     def state_dict(self):
        ...         return {"seen": self.seen}
        ...     def load_state_dict(self, state):
        ...         self.seen = state["seen"]
        ...     def train_epoch(self, epoch):
        ...         self.seen += sum(len(b) for b in epoch_batches(5, 2, 0, epoch))
        ...         return {"seen": self.seen}
        >>> out = Path(tempfile.mkdtemp()) / "run"
        >>> [r["seen"] for r in run_epochs(Count(), out, Counter)["history"]]
        [5, 10]
        >>> res = run_epochs(Count(epochs=3), out, Counter, resume=True)  # extends it
        >>> [r["seen"] for r in res["history"]]
        [5, 10, 15]
    """
    out = Path(out_dir)
    wanted = asdict(config)
    main = distributed.is_main_process()
    with run_folder(out, main=main), contextlib.ExitStack() as stack:

        def prepare() -> bool:  # rank 0 only: lock the folder, check what it holds
            require_folder(out)
            if resume and not force:
                _require_existing(out)
            stack.enter_context(_io.folder_lock(out))
            defaults = config_defaults(config)
            return prepare_folder(out, wanted, resume=resume, force=force, defaults=defaults) != (
                "fresh"
            )

        from_checkpoint = distributed.run_on_main(prepare)
        trainer = make()
        history: list[dict[str, Any]] = []
        seconds: list[float] = []
        if from_checkpoint:
            keys = trainer.checkpoint_keys | LOOP_KEYS
            state = load_checkpoint(out / CHECKPOINT, keys, trainer.kind)
            try:
                history = json.loads(state["history"])
                seconds = [float(s) for s in state["seconds"]]
                initial = trainer.begin(json.loads(state["initial"]))
                trainer.load_state_dict(state)
            except (RunMismatchError, DamagedRunError):
                raise
            except (ValueError, RuntimeError, KeyError, TypeError):
                raise DamagedRunError(
                    f"{out / CHECKPOINT} does not match this run's config (or is damaged); "
                    "start over with --force"
                ) from None
            if len(history) > config.epochs:
                raise RunMismatchError(
                    f"cannot resume {out} with epochs={config.epochs}: it has already "
                    f"trained {len(history)} epochs; pass --epochs {len(history)} or more"
                )
            if main:  # extension: the new target; the old results no longer describe it
                (out / RESULTS).unlink(missing_ok=True)
                if read_json(out / CONFIG, "the run's config") != wanted:
                    _io.write_json(out / CONFIG, wanted)
        else:
            initial = trainer.begin(None)
            if main:  # started: only now are an old run's files (--force) replaced
                for name in (RESULTS, CHECKPOINT, METRICS):
                    (out / name).unlink(missing_ok=True)
                _io.write_json(out / CONFIG, wanted)
        show = show_progress(progress)
        non_finite = None
        for epoch in range(len(history), config.epochs):
            started = time.perf_counter()
            record: dict[str, Any] = {"epoch": epoch + 1}
            try:
                record.update(trainer.train_epoch(epoch))
            except NonFiniteLoss as err:
                non_finite = str(err)
                break
            record.update(trainer.evaluate(epoch))
            history.append(_io.json_safe(record))
            seconds.append(time.perf_counter() - started)
            if main:
                checkpoint = {
                    **trainer.state_dict(),
                    "history": json.dumps(history),
                    "seconds": list(seconds),
                    "initial": json.dumps(initial),
                }
                write_checkpoint(out, checkpoint, history)
            line = trainer.epoch_line(record) if show else None
            if line:
                print(line, file=sys.stderr, flush=True)
        health = trainer.health(history, initial, non_finite)
        results = {
            "config": wanted,
            **trainer.results(history, initial, health),
            "history": history,
            "timing": {"seconds_per_epoch": seconds, "total_seconds": sum(seconds)},
        }
        results = _io.json_safe(results)
        if main:
            _io.write_json(out / RESULTS, results)
        distributed.barrier()  # every rank returns once the run is complete on disk
        return results


# ----------------------------------------------------------------------------- the cache


def reusable(
    folder: Path,
    config: Any,
    *,
    force: bool = False,
    same: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any] | None:
    """The results of the finished run in ``folder`` if it is the run ``config`` asks
    for, else None (it must be trained, resumed or extended).

    ``same(results)`` decides whether a finished run is the one asked for (default:
    its saved config equals ``asdict(config)``). A finished run of the same config but
    fewer ``epochs`` is extended (None). Another finished run raises
    :class:`RunMismatchError` unless ``force``; a damaged results.json raises
    :class:`DamagedRunError` naming it unless ``force``.
    """
    path = Path(folder) / RESULTS
    if not path.exists():
        return None
    try:
        saved = read_json(path, "the run's results")
    except DamagedRunError:
        if force:
            return None
        raise
    wanted = asdict(config)
    got = saved.get("config") if isinstance(saved, dict) else None
    got = _with_defaults(got, config_defaults(config))  # fields added since it was saved
    if same(saved) if same is not None else got == wanted:
        return saved
    diff = _differences(got, wanted)
    if diff == ["epochs"] and isinstance(got.get("epochs"), int):
        if got["epochs"] < wanted["epochs"] and same is None:
            return None
    if force:
        return None
    what = f"whose config differs in {', '.join(diff)}" if diff else "made from other inputs"
    raise RunMismatchError(
        f"{folder} holds a finished run {what}; rerun with --force to retrain it"
    )


def train_or_reuse(
    folder: Path,
    config: Any,
    train: Callable[..., dict[str, Any]],
    *,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    same: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """The results of run ``config`` in ``folder``: reused when finished, else trained.

    - a finished run that is the one asked for (:func:`reusable`) is reused: its
      results.json is returned;
    - a finished run of another config raises :class:`RunMismatchError` unless
      ``force`` (then it is retrained: ``train(config, folder, force=True)``); a
      finished run of the same config and fewer epochs is extended;
    - otherwise ``train(config, folder, resume=folder.exists())``: an unfinished run
      resumes, a new one starts.

    ``train`` is a trainer with the signature of :func:`snnl.train.train` or
    :func:`snnl.gan.train_gan` (``train(config, folder, resume=..., force=...)``);
    ``log`` gets one line when training starts.
    """
    folder = Path(folder)
    say = log or (lambda message: None)
    saved = reusable(folder, config, force=force, same=same)
    if saved is not None:
        return saved
    if force and (folder / RESULTS).exists():
        say(f"retraining {folder.name} (--force)")
        return train(config, folder, resume=False, force=True)
    say(f"training {folder.name}")
    return train(config, folder, resume=folder.is_dir(), force=False)
