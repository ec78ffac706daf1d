"""The ``snnl`` command line: every command is also a plain Python call."""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

from snnl.progress import Progress

__all__ = ["main", "build_parser"]


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a mistake of the user's, printed as one line (exit status 2):
    bad input (``ValueError``: a value, a file's contents, a config that differs from a
    run's), files and folders (``OSError``: missing, unwritable, a full disk), a run folder
    in the way (``RunExistsError``, ``DamagedRunError``, ``RunLockedError``), a machine
    too small (``MemoryError``, torch's out-of-memory) and :class:`CommandError`.

    Anything else (``TypeError``, ``AttributeError``, a torch ``RuntimeError`` ...) is a
    bug of snnl's: its traceback is shown. ``--debug`` shows the traceback of every error.
    """
    import torch

    from snnl._io import RunLockedError
    from snnl.runs import DamagedRunError, RunExistsError

    return (
        CommandError,
        ValueError,
        OSError,
        RunExistsError,
        DamagedRunError,
        RunLockedError,
        MemoryError,
        torch.OutOfMemoryError,
    )


@contextlib.contextmanager
def _warnings_as_lines(command: str) -> Iterator[None]:
    """SNNL warnings (a bound that cuts the minimum off, anchors left out) as one line each,
    ``snnl COMMAND: warning: ...``, once per message; other warnings as Python shows them."""
    from snnl.loss import SNNLWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SNNLWarning)
        try:
            yield
        finally:
            seen: set[str] = set()
            for w in caught:
                text = str(w.message)
                if not issubclass(w.category, SNNLWarning):
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
                elif text not in seen:
                    seen.add(text)
                    print(f"snnl {command}: warning: {text}", file=sys.stderr)


def _check_plot_path(path: Path) -> None:
    """Refuse a figure path before anything is computed or printed: unknown suffix (the
    message lists the formats), a directory, a missing or unwritable folder."""
    import tempfile

    from snnl.figures import check_figure_path, figure_format

    check_figure_path(path)
    figure_format(path)
    try:  # a real probe: permission bits say nothing to root, read-only mounts neither
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".snnl-probe-"):
            pass
    except OSError as err:
        raise CommandError(
            f"cannot save a figure to {str(path)!r}: its folder is not writable "
            f"({err.strerror or err})"
        ) from None


def _entanglement(args: argparse.Namespace) -> int:
    import json

    import torch

    from snnl.class_entanglement import feature_entanglement, open_feature_file
    from snnl.data import load_dataset

    for name, count in (("anchors", args.anchors), ("search-anchors", args.search_anchors)):
        if count is not None and count < 2:
            raise CommandError(f"--{name} must be >= 2, got {count}")
    if not 0.0 < args.confidence < 1.0:
        raise CommandError(f"--confidence must be in (0, 1), got {args.confidence}")
    if (args.t_min is None) != (args.t_max is None):
        raise CommandError(
            "--t-min and --t-max go together (leave both out to search the range of the "
            "data's own distances)"
        )
    bounds = None if args.t_min is None else (args.t_min, args.t_max)
    if bounds is not None and not bounds[0] < bounds[1]:
        raise CommandError(f"--t-min must be below --t-max, got {bounds[0]:g} and {bounds[1]:g}")
    if args.plot is not None:
        _check_plot_path(args.plot)
    with contextlib.ExitStack() as stack:
        if args.file is not None:
            features, labels = stack.enter_context(open_feature_file(args.file, args.labels))
            source = str(args.file)
        else:
            ds = load_dataset(args.dataset, data_dir=args.data_dir)
            features = torch.cat([ds.x_train, ds.x_test]).flatten(1)
            labels = torch.cat([ds.y_train, ds.y_test])
            source = f"dataset {ds.name} (inputs, train + test)"
        say = stack.enter_context(Progress("snnl entanglement", bar=False, stage="reading"))
        stack.enter_context(_warnings_as_lines("entanglement"))
        res = feature_entanglement(
            features, labels, temperature=args.temperature, distance=args.distance,
            bounds=bounds, anchors=args.anchors, confidence=args.confidence,
            search_anchors=args.search_anchors, seed=args.seed, curve=args.plot is not None,
            progress=sys.stderr.isatty(), log=say,
        )  # fmt: skip
    curve_note = None
    if res.curve is not None:  # saved before anything is printed: an error leaves no output
        from snnl.figures import save_figure, temperature_curve_figure

        if res.curve.anchors is not None:
            curve_note = f"estimated on {res.curve.anchors} anchors"
        name = Path(source).name if args.file is not None else args.dataset
        fig = temperature_curve_figure(
            res.curve.temperatures, res.curve.values, best=(res.temperature, res.value),
            label="min" if res.optimal else "given", limit=res.upper_bound,
            title=f"SNNL of {name}" + (f" ({curve_note})" if curve_note else ""),
        )  # fmt: skip
        save_figure(fig, args.plot)
    if args.json:
        result = {**res.to_dict(), "source": source}
        if args.plot is not None:
            result["plot"] = str(args.plot)
        print(json.dumps(result))
        return 0
    print(f"source      : {source}")
    print(f"points      : {res.n} x {res.d} features, {res.classes} classes")
    print(f"distance    : {res.distance}")
    print(f"temperature : {res.temperature:.6g} ({res.temperature_choice})")
    print(
        f"SNNL        : {res.value:.7g}   (indistinguishable classes, T -> infinity: "
        f"{res.upper_bound:.4f})"
    )
    est = res.estimate
    if est is None:
        print("method      : exact (every point an anchor, against all points)")
    else:
        print(
            f"method      : estimate from {est.anchors} of {est.population} anchors "
            f"(seed {args.seed}) against all points; {est.confidence:.0%} interval "
            f"[{est.low:.7g}, {est.high:.7g}] (Student t on the mean of the exact "
            "per-anchor terms, finite-population corrected)"
        )
    if args.plot is not None:
        print(f"plot        : {args.plot}" + (f" ({curve_note})" if curve_note else ""))
    return 0


def _train(args: argparse.Namespace) -> int:
    from snnl.train import train

    config = _train_config(args)
    from snnl import distributed

    _threads(args, config.model)
    joined = distributed.init_from_environment()  # under torchrun with WORLD_SIZE > 1: DDP
    main_rank = distributed.is_main_process()
    try:
        with Progress("snnl train", bar=False, stage="preparing", enabled=main_rank) as say:
            res = train(
                config, args.out, resume=args.resume, force=args.force,
                on_step=lambda epoch, step: say(
                    f"epoch {epoch + 1}/{config.epochs}, step {step}"
                ),
            )  # fmt: skip
    finally:
        if joined:
            distributed.shutdown()
    if not main_rank:
        return 0  # rank 0 reports
    final = res["final"]
    print(f"run         : {args.out}")

    def fmt(value: float | None) -> str:
        return "n/a (not finite)" if value is None else f"{value:.4f}"

    print(f"test acc    : {fmt(final['test_accuracy'])}")
    for layer, value in final["probe_snnl"].items():
        print(f"SNNL* {layer:<6}: {fmt(value)}   (upper bound {res['snnl_upper_bound']:.4f})")
    health = res["health"]
    print(f"health      : {health['verdict']}")
    if health["verdict"] != "ok":
        print(
            f"snnl train: warning: run {health['verdict']}: {'; '.join(health['reasons'])}",
            file=sys.stderr,
        )
    return 0


def _config(cls, args: argparse.Namespace, **given):
    """``cls(...)``, a config dataclass: each field from the option of its name where the
    command has one (a path as a string), else the dataclass's default; ``given`` first."""
    from dataclasses import fields

    values = dict(given)
    for f in fields(cls):
        if f.name not in values and hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = str(value) if isinstance(value, Path) else value
    return cls(**values)


def _train_config(args: argparse.Namespace):
    from snnl.train import TrainConfig

    return _config(
        TrainConfig,
        args,
        epochs=_epochs(args, default=TrainConfig().epochs),
        model_kwargs={"init": "authors"} if args.authors_init else {},
    )


def _gan_config(args: argparse.Namespace):
    from snnl.gan import GANConfig

    return _config(GANConfig, args, epochs=_epochs(args, default=GANConfig().epochs))


def _reproduce_config(args: argparse.Namespace):
    from snnl.experiments import ReproduceConfig

    return _config(ReproduceConfig, args, experiments=list(args.experiments or []))


def _threads(args: argparse.Namespace, model: str) -> None:
    """Threads of torch and of the BLAS / OpenMP pools numpy and scipy use: --threads, else
    a size-aware default (see default_threads). Without the BLAS limit, scipy's L-BFGS-B
    and numpy's products spin a second OpenBLAS thread against torch's."""
    import torch
    from threadpoolctl import threadpool_limits

    from snnl.train import default_threads

    threads = args.threads or default_threads(model)
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)


def _reproduce(args: argparse.Namespace) -> int:
    from snnl.experiments.zoo import Kind, recipe
    from snnl.runner import expected_minutes, reproduce

    config = _reproduce_config(args)
    _threads(args, recipe(config, Kind.NORMAL, 0).model)
    lo, hi = expected_minutes(config)
    print(
        f"[snnl] reproduce on {config.dataset} ({'full' if config.full else 'default'} "
        f"settings, {config.seeds} seed(s)): expected {lo:g}-{hi:g} minutes on 2 cores "
        f"({'an estimate' if config.full else 'measured'}) "
        "(finished runs in OUT/runs are reused)",
        flush=True,
    )
    reproduce(config, args.out)
    print(f"report      : {args.out / 'report.html'}")
    print(f"              {args.out / 'report.md'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from snnl.report import write_report

    path = write_report(args.dir)
    print(f"report      : {path}")
    return 0


def _gan(args: argparse.Namespace) -> int:
    from snnl.gan import train_gan

    config = _gan_config(args)
    _threads(args, "mlp" if args.arch == "mlp" else "cnn")
    with Progress("snnl gan", bar=False, stage="training"):
        res = train_gan(config, args.out, resume=args.resume, force=args.force)
    print(f"run         : {args.out}")
    print("SNNL*(real, generated) per epoch (input; discriminator layers; classifier layers):")
    for rec in [res["initial"], *res["history"]]:
        ent = rec["entanglement"]
        layers = [f"D.{k} {v:.4f}" for k, v in ent["discriminator"].items()]
        layers += [f"C.{k} {v:.4f}" for k, v in ent["classifier"].items()]
        line = f"  epoch {rec.get('epoch', 0)}: input {ent['input']:.4f}; " + ", ".join(layers)
        if rec["coverage"] is not None:
            line += (
                f"; missing classes {rec['coverage']['num_missing']}"
                f", FD {rec['frechet_distance']:.3f}"
            )
        print(line)
    health = res["health"]
    print(f"health      : {health['verdict']}")
    if health["verdict"] != "ok":
        print(f"snnl gan: warning: {'; '.join(health['reasons'])}", file=sys.stderr)
    return 0


def _user_model(spec: str, weights: Path):
    """``package.module:factory`` imported (no eval), called with no arguments, weights loaded."""
    import importlib
    import os

    import torch

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise CommandError(f"--model must be package.module:factory, got {spec!r}")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # the user's own modules, as `python -m` would find them
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CommandError(f"cannot import {module_name!r} (--model): {err}") from None
    finally:
        if added:
            sys.path.remove(cwd)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CommandError(f"{module_name!r} has no callable {attr!r} (--model {spec})")
    try:
        model = factory()
    except Exception as err:  # the user's code: report it as one line
        raise CommandError(f"{spec}() failed: {type(err).__name__}: {err}") from None
    if not isinstance(model, torch.nn.Module):
        raise CommandError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # not a tensor file torch can read without unpickling code
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CommandError(f"cannot read weights {str(weights)!r}: {first}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a checkpoint holding the state dict under "model"
    if not isinstance(state, dict):
        raise CommandError(f"{str(weights)!r} holds {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        detail = " ".join(line.strip() for line in str(err).strip().splitlines()[1:2])
        raise CommandError(f"{str(weights)!r} does not fit {spec}(): {first} {detail}") from None
    return model.eval()


def _check_model_takes(model, dataset, spec: str) -> None:
    """A user's model that cannot take the dataset's inputs is the user's mistake (one
    line naming both shapes), not a traceback from deep inside torch."""
    import torch

    x = dataset.x_test[:2]
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CommandError(
            f"{spec}() cannot take the inputs of {dataset.name} (shape "
            f"{tuple(x.shape[1:])} per example): {type(err).__name__}: {first}"
        ) from None


def _profile(args: argparse.Namespace) -> int:
    from snnl.data import load_dataset
    from snnl.profile import format_profile, profile_model, write_profile

    if (args.run is None) == (args.model is None):
        raise CommandError(
            "give either a run folder (snnl profile RUN_DIR) or --model "
            "package.module:factory --weights FILE"
        )
    if args.model is not None:
        if args.weights is None:
            raise CommandError("--model needs --weights FILE (a state dict saved by torch.save)")
        if args.dataset is None:
            raise CommandError("--model needs --dataset (the data the model takes)")
        model = _user_model(args.model, args.weights)
        dataset = load_dataset(args.dataset, data_dir=args.data_dir)
        _check_model_takes(model, dataset, args.model)
        source = f"{args.model} with weights {args.weights}"
        out = args.out if args.out is not None else Path("snnl-profile")
        kind = "cnn"
    else:
        from snnl.train import TrainConfig, load_config_dataset, load_run

        if args.weights is not None:
            raise CommandError("--weights goes with --model, not with a run folder")
        model, results = load_run(args.run)
        config = TrainConfig.from_dict(results["config"])
        if args.dataset is None:
            dataset = load_config_dataset(config)
        else:
            dataset = load_dataset(args.dataset, data_dir=args.data_dir)
        source = f"run {args.run} ({config.model} on {config.dataset})"
        out = args.out if args.out is not None else args.run
        kind = config.model
    _threads(args, kind)
    stage = "profiling clean, corrupted and PGD inputs"
    with Progress("snnl profile", bar=True, stage=stage):
        prof = profile_model(
            model,
            dataset,
            limit=args.limit,
            eps=args.eps,
            steps=args.steps,
            severity=args.severity,
            seed=args.seed,
        )
    prof["model"] = source
    json_path, figure_path = write_profile(prof, out)
    settings = prof["settings"]
    print(f"model       : {source}")
    print(f"data        : {dataset.name}, {settings['split']} split, ", end="")
    print(f"{settings['examples']} examples")
    print(format_profile(prof))
    print(f"profile     : {json_path}")
    print(f"figure      : {figure_path}")
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
    return value


def _epochs(args: argparse.Namespace, default: int) -> int:
    """--epochs; left out: with --resume the run's own (its config.json), else ``default``."""
    if args.epochs is not None:
        return args.epochs
    if args.resume:
        from snnl.runs import saved_epochs

        saved = saved_epochs(args.out)
        if saved is not None:
            return saved
    return default


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with ``(default: ...)``, unless its help already says what
    the default is (options whose default None or False means "not given")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)".strip()
        return text


def _signature_defaults(func) -> dict[str, object]:
    """The keyword defaults of ``func`` (the defaults of a command that wraps it)."""
    import inspect

    return {
        name: p.default
        for name, p in inspect.signature(func).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _add_run_folder_arguments(
    parser: argparse.ArgumentParser, seed: int, threads_help: str
) -> None:
    """The options of a command that trains one run into a folder (train, gan)."""
    parser.add_argument("--seed", type=int, default=seed, help="initialisation, data order")
    parser.add_argument("--out", type=Path, required=True, help="run folder (required)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an unfinished run, or extend a finished one to a larger --epochs "
        "(--epochs left out: the run's own)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite a run in --out")
    parser.add_argument("--threads", type=int, default=None, help=threads_help)


def build_parser() -> argparse.ArgumentParser:
    """The ``snnl`` parser; each command's defaults come from what it calls (TrainConfig,
    ReproduceConfig, GANConfig, feature_entanglement, profile_model, load_dataset)."""
    from snnl import __version__
    from snnl.class_entanglement import EXACT_SEARCH_MAX, feature_entanglement
    from snnl.data import available_datasets, load_dataset
    from snnl.distances import Distance

    distance_names = [d.value for d in Distance]
    debug_help = (
        "print the traceback of every error (without: one line for a mistake in the input "
        "or a file, a traceback for a bug)"
    )
    parser = argparse.ArgumentParser(
        prog="snnl",
        description="Measure and shape the class geometry of neural-network representations.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"snnl {__version__}")
    parser.add_argument("--debug", action="store_true", help=debug_help)
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command, too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    datasets = sorted(available_datasets())
    default_dataset = _signature_defaults(load_dataset)["name"]

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], formatter_class=_HelpFormatter, **kwargs)

    def data_options(p, default: str | None, what: str, limits: bool = False) -> None:
        p.add_argument("--dataset", default=default, choices=datasets, help=what)
        where = "folder of users' data files (default: none)"
        p.add_argument("--data-dir", type=Path, default=None, help=where)
        for split in ("train", "test") if limits else ():
            p.add_argument(
                f"--limit-{split}", type=int, default=None, help=f"{split} examples (default: all)"
            )

    ent_defaults = _signature_defaults(feature_entanglement)
    ent = command(
        "entanglement",
        help="SNNL of saved features (or a dataset's inputs) at the optimal or a given T",
        description="Print the Soft Nearest Neighbor Loss of features and labels read from "
        "FILE (.npz with 'features' and 'labels', .pt dict, or .npy with a labels .npy), or "
        "of an embedded dataset's inputs, at the optimal temperature or --temperature. Up to "
        f"{EXACT_SEARCH_MAX:,} points the optimal T is searched over every point, whatever "
        "the file format; beyond, on --search-anchors sampled anchors (the output says so).",
    )
    ent.add_argument("file", nargs="?", type=Path, help=".npz / .pt / .npy features file")
    ent.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="labels .npy (default: for a .npy FILE, STEM_labels.npy beside it; else the "
        "labels in FILE)",
    )
    data_options(ent, default_dataset, "the inputs, when no FILE")
    ent.add_argument(
        "--temperature",
        type=_positive_float,
        default=ent_defaults["temperature"],
        help="T (default: the optimal T, which minimises the SNNL)",
    )
    ent.add_argument(
        "--distance",
        choices=distance_names,
        default=Distance(ent_defaults["distance"]).value,
        help="squared euclidean or cosine distance",
    )
    bounds_help = "bound of the optimal-T search (default: the range of the data's distances)"
    ent.add_argument("--t-min", type=_positive_float, default=None, help="lower " + bounds_help)
    ent.add_argument("--t-max", type=_positive_float, default=None, help="upper " + bounds_help)
    ent.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="save the SNNL-vs-T curve; the suffix picks the format (.png, .pdf, .svg, .jpg) "
        "(default: no plot)",
    )
    ent.add_argument(
        "--anchors",
        type=int,
        default=ent_defaults["anchors"],
        metavar="M",
        help="estimate SNNL from M anchors drawn at random (each against all points) with a "
        "confidence interval (default: the exact value, every point an anchor)",
    )
    ent.add_argument(
        "--confidence",
        type=float,
        default=ent_defaults["confidence"],
        help="interval level (--anchors)",
    )
    ent.add_argument(
        "--seed", type=int, default=ent_defaults["seed"], help="seed of the anchor draws"
    )
    ent.add_argument(
        "--search-anchors",
        type=int,
        default=ent_defaults["search_anchors"],
        metavar="M",
        help=f"anchors the optimal-T search samples above {EXACT_SEARCH_MAX:,} points",
    )
    ent.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ent.set_defaults(func=_entanglement)

    from snnl.experiments import ReproduceConfig, registry
    from snnl.models import available_models
    from snnl.regularizers import SNNL_FORMULAS, TEMPERATURE_MODES
    from snnl.train import TrainConfig

    threads_help = (
        "torch threads (default: 1 for small models, where a busy core costs more than a "
        "second thread gains; half the cores otherwise)"
    )
    train_defaults = TrainConfig()
    tr = command(
        "train",
        help="train a normal (alpha = 0) or entangled (alpha > 0) model",
        description="Train one model with loss = CE - alpha * sum of hidden-layer SNNL (eq. 3), "
        "logging per epoch the SNNL of every hidden layer at its optimal temperature. "
        "Under `torchrun --nproc_per_node=N -m snnl train ...` it trains with "
        "DistributedDataParallel: each batch is split across the N processes and the SNNL "
        "is computed over the whole batch, so the run matches one process's.",
    )
    data_options(tr, train_defaults.dataset, "training data", limits=True)
    tr.add_argument(
        "--model", default=train_defaults.model, choices=available_models(), help="architecture"
    )
    tr.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs (default: {train_defaults.epochs}; with --resume: the run's own)",
    )
    tr.add_argument(
        "--batch-size", type=int, default=train_defaults.batch_size, help="examples per step"
    )
    tr.add_argument(
        "--lr", type=_positive_float, default=train_defaults.lr, help="Adam's learning rate"
    )
    tr.add_argument(
        "--alpha", type=float, default=train_defaults.alpha, help="> 0 entangles, < 0 separates"
    )
    tr.add_argument(
        "--temperature-mode",
        choices=TEMPERATURE_MODES,
        default=train_defaults.temperature_mode,
        help="how T of each layer is chosen: optimal (T* of every batch), learned (Adam on "
        "log T), reference (the authors' T = T0 / t), fixed",
    )
    tr.add_argument(
        "--snnl-formula",
        choices=SNNL_FORMULAS,
        default=train_defaults.snnl_formula,
        help="exact (log-space) or reference (the authors' exp-then-log, saturating at 11.51)",
    )
    tr.add_argument(
        "--temperature",
        type=_positive_float,
        default=train_defaults.temperature,
        help="initial / fixed T (T0 of the reference mode); default: each layer's optimal T "
        "at initialisation; not used by the optimal mode",
    )
    tr.add_argument(
        "--temperature-lr",
        type=_positive_float,
        default=train_defaults.temperature_lr,
        help="Adam's learning rate on log T (learned mode)",
    )
    tr.add_argument(
        "--selectivity-alpha",
        type=float,
        default=train_defaults.selectivity_alpha,
        help="class-selectivity regulariser",
    )
    tr.add_argument(
        "--authors-init",
        action="store_true",
        help="reference CNN: the authors' initialisation (He-normal, zero biases, raw inputs)",
    )
    tr.add_argument(
        "--distance",
        choices=distance_names,
        default=train_defaults.distance,
        help="distance of the SNNL",
    )
    tr.add_argument(
        "--layers",
        nargs="+",
        default=train_defaults.layers,
        help="regularised and probed layers ('hidden': every hidden layer)",
    )
    _add_run_folder_arguments(tr, train_defaults.seed, threads_help)
    tr.set_defaults(func=_train)

    rep_defaults = ReproduceConfig()
    rp = command(
        "reproduce",
        help="run the registered experiments and write a report with figures",
        description="Run the experiments (" + ", ".join(registry()) + ") and write "
        "OUT/report.html, OUT/report.md, OUT/results.json and OUT/figures/. Trained models "
        "are kept in OUT/runs and reused by the next call.",
    )
    data_options(rp, rep_defaults.dataset, "data", limits=True)
    rp.add_argument("--seeds", type=int, default=rep_defaults.seeds, help="training seeds")
    rp.add_argument("--full", action="store_true", help="the paper's longer settings")
    rp.add_argument(
        "--experiments",
        nargs="+",
        choices=list(registry()),
        default=None,
        help="which to run (default: every one)",
    )
    rp.add_argument(
        "--epochs", type=int, default=None, help="override the epochs (default: each experiment's)"
    )
    rp.add_argument(
        "--model",
        choices=available_models(),
        default=None,
        help="override the model (default: the dataset's)",
    )
    rp.add_argument("--out", type=Path, default=Path("snnl-report"), help="the report's folder")
    rp.add_argument("--force", action="store_true", help="retrain runs whose saved config differs")
    rp.add_argument(
        "--workers",
        type=int,
        default=rep_defaults.workers,
        help="processes that train independent runs in parallel (default: the cores, at most 8)",
    )
    rp.add_argument("--threads", type=int, default=None, help=threads_help)
    rp.set_defaults(func=_reproduce)

    from snnl.gan import SNNL_TARGETS, SNNL_TEMPERATURE_MODES, GANConfig
    from snnl.models import GAN_ARCHITECTURES

    gan_defaults = GANConfig()
    gn = command(
        "gan",
        help="train a GAN and measure the entanglement of real and generated data",
        description="Train a GAN (non-saturating loss, Adam) and record per epoch, on fresh "
        "samples, SNNL*(real, generated) in input space and in the hidden layers of the "
        "discriminator and of --classifier, with that classifier's mode coverage and "
        "Frechet distance. --snnl-alpha > 0 adds -alpha * SNNL* to the generator's loss.",
    )
    data_options(gn, gan_defaults.dataset, "data", limits=True)
    gn.add_argument(
        "--arch", choices=GAN_ARCHITECTURES, default=gan_defaults.arch, help="architecture"
    )
    gn.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs (default: {gan_defaults.epochs}; with --resume: the run's own)",
    )
    gn.add_argument(
        "--batch-size", type=int, default=gan_defaults.batch_size, help="examples per step"
    )
    gn.add_argument(
        "--lr", type=_positive_float, default=gan_defaults.lr, help="Adam's learning rate"
    )
    gn.add_argument(
        "--latent-dim", type=int, default=gan_defaults.latent_dim, help="noise dimensions"
    )
    gn.add_argument(
        "--snnl-alpha",
        type=float,
        default=gan_defaults.snnl_alpha,
        help="> 0: the generator also maximises SNNL*(real, generated)",
    )
    gn.add_argument(
        "--snnl-target",
        choices=SNNL_TARGETS,
        default=gan_defaults.snnl_target,
        help="whose hidden layers the SNNL term uses",
    )
    gn.add_argument(
        "--snnl-temperature-mode",
        choices=SNNL_TEMPERATURE_MODES,
        default=gan_defaults.snnl_temperature_mode,
        help="T of the SNNL term: learned (Adam on log T) or optimal (T* of every batch)",
    )
    gn.add_argument(
        "--classifier",
        type=Path,
        default=None,
        help="a finished `snnl train` run folder: the classifier that measures coverage, FD "
        "and entanglement in its hidden layers (default: none)",
    )
    gn.add_argument(
        "--eval-samples",
        type=int,
        default=gan_defaults.eval_samples,
        help="generated samples for coverage and FD",
    )
    gn.add_argument(
        "--entanglement-samples",
        type=int,
        default=gan_defaults.entanglement_samples,
        help="samples per set for SNNL*(real, generated)",
    )
    _add_run_folder_arguments(gn, gan_defaults.seed, threads_help)
    gn.set_defaults(func=_gan)

    from snnl.profile import profile_model

    prof_defaults = _signature_defaults(profile_model)
    pf = command(
        "profile",
        help="per-layer SNNL*, selectivity, dimensionality and Lipschitz bounds of a model "
        "on clean, corrupted and adversarial inputs",
        description="Profile the hidden layers of a trained model (a `snnl train` run folder, "
        "or --model package.module:factory with --weights FILE) on the test split: SNNL at "
        "the optimal temperature, mean class selectivity, dimensionality (95% variance) and "
        "participation ratio on clean inputs, on corrupted ones (the 15 CIFAR-10-C "
        "corruptions at --severity, example i gets corruption i mod 15) and on PGD L-inf "
        "adversarial ones (--eps, default 0.1, or 8/255 for colour), with each layer's "
        "Lipschitz bound. Writes OUT/profile.json and OUT/profile.png.",
    )
    pf.add_argument("run", nargs="?", type=Path, default=None, help="a `snnl train` run folder")
    pf.add_argument(
        "--model",
        default=None,
        metavar="PACKAGE.MODULE:FACTORY",
        help="a model of your own instead of a run folder (default: none)",
    )
    pf.add_argument(
        "--weights", type=Path, default=None, help="state dict for --model (default: none)"
    )
    data_options(pf, None, "data (default: the run's)")
    pf.add_argument("--limit", type=int, default=prof_defaults["limit"], help="test examples used")
    pf.add_argument(
        "--eps",
        type=float,
        default=prof_defaults["eps"],
        help="PGD L-inf radius (default: 0.1, or 8/255 for colour images)",
    )
    pf.add_argument(
        "--steps", type=int, default=prof_defaults["steps"], help="PGD steps (of eps / 4)"
    )
    pf.add_argument(
        "--severity",
        type=int,
        default=prof_defaults["severity"],
        choices=range(1, 6),
        help="corruption severity",
    )
    pf.add_argument(
        "--seed", type=int, default=prof_defaults["seed"], help="corruptions and PGD start"
    )
    pf.add_argument(
        "--out", type=Path, default=None, help="default: the run folder, or snnl-profile"
    )
    pf.add_argument("--threads", type=int, default=None, help=threads_help)
    pf.set_defaults(func=_profile)

    rep = command("report", help="rebuild the report of DIR from its saved results")
    rep.add_argument("dir", type=Path, help="a `snnl reproduce` folder")
    rep.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``snnl ARGV``; the exit status: 0, 2 for a mistake of the user's (one line on
    stderr, see :func:`user_errors`; with ``--debug`` its traceback first), 130 when
    interrupted. Any other exception is a bug and propagates with its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"snnl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not isinstance(err, user_errors()):
            raise  # a bug: the traceback says where
        if args.debug:
            traceback.print_exc()
        print(f"snnl {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    """The message of a user's error as one line (an OSError as ``file: reason``)."""
    if isinstance(err, OSError) and not isinstance(err, CommandError):
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        return f"{where}{err.strerror or err}"
    text = " ".join(str(err).split("\n")).strip()
    return text or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
