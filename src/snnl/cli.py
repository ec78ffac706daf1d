"""The ``snnl`` command line: every command is also a plain Python call."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _entanglement(args: argparse.Namespace) -> int:
    import json
    import math
    import tempfile

    import numpy as np
    import torch

    from snnl.data import load_dataset, load_features
    from snnl.figures import check_figure_path, figure_format
    from snnl.loss import (
        estimate_optimal_temperature,
        estimate_snnl,
        estimate_temperature_curve,
        open_npy,
        optimal_temperature,
        snnl_streamed,
        snnl_temperature_curve,
        soft_nearest_neighbor_loss,
    )

    # Up to this many points in memory, the optimal T is searched over every anchor;
    # beyond (and for .npy files, read block by block), on --search-anchors anchors.
    exact_search_max = 20_000
    for name, count in (("anchors", args.anchors), ("search-anchors", args.search_anchors)):
        if count is not None and count < 2:
            raise CommandError(f"--{name} must be >= 2, got {count}")
    if not 0.0 < args.confidence < 1.0:
        raise CommandError(f"--confidence must be in (0, 1), got {args.confidence}")
    if not args.t_min < args.t_max:
        raise CommandError(f"--t-min must be below --t-max, got {args.t_min:g} and {args.t_max:g}")
    if args.plot is not None:
        # Refused before anything is computed or printed: unknown suffix (the message
        # lists the formats), a directory, a missing folder, an unwritable folder.
        check_figure_path(args.plot)
        figure_format(args.plot)
        try:  # a real probe: permission bits say nothing to root, read-only mounts neither
            with tempfile.NamedTemporaryFile(dir=args.plot.parent, prefix=".snnl-probe-"):
                pass
        except OSError as err:
            raise CommandError(
                f"cannot save a figure to {str(args.plot)!r}: its folder is not writable "
                f"({err.strerror or err})"
            ) from None
    # .npy features are read block by block (never loaded, never mapped whole); labels
    # (N integers) are loaded
    streamed = args.file is not None and args.file.suffix.lower() == ".npy"
    if streamed:
        if not args.file.is_file():
            raise FileNotFoundError(f"features file not found: {args.file}")
        stem = args.file.with_suffix("")
        beside = [Path(f"{stem}_labels.npy"), Path(f"{stem}.labels.npy")]
        labels_path = args.labels or next((p for p in beside if p.is_file()), None)
        if labels_path is None:
            raise CommandError(
                f"{args.file}: a .npy features file needs its labels: --labels LABELS.npy "
                f"(or {beside[0].name} beside it)"
            )
        try:
            labels_np = np.load(labels_path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise CommandError(f"{labels_path}: not a readable .npy array ({err})") from None
        if labels_np.ndim != 1 or labels_np.dtype.kind not in "iu":
            raise CommandError(
                f"{labels_path}: labels must be a 1-D integer array, got shape "
                f"{labels_np.shape} and dtype {labels_np.dtype}"
            )
        features = open_npy(args.file)
        labels = torch.from_numpy(labels_np.astype(np.int64))
        source = str(args.file)
    elif args.file is not None:
        features, labels = load_features(args.file, args.labels)
        features = features.reshape(features.shape[0], -1)
        source = str(args.file)
    else:
        ds = load_dataset(args.dataset, data_dir=args.data_dir)
        features = torch.cat([ds.x_train, ds.x_test])
        features = features.reshape(features.shape[0], -1)
        labels = torch.cat([ds.y_train, ds.y_test])
        source = f"dataset {ds.name} (inputs, train + test)"
    try:
        n, d = features.shape
        if len(labels) != n:
            raise CommandError(f"{n} feature rows but {len(labels)} labels")
        _, counts = torch.unique(labels, return_counts=True)
        classes = int(counts.numel())
        population = int(counts[counts >= 2].sum())
        if population == 0:
            raise CommandError(
                f"SNNL is undefined for {source}: no label occurs twice among its {n} points, "
                "so no point has another point of its class (the SNNL of a point needs one)"
            )
        bounds = (args.t_min, args.t_max)
        distance = args.distance
        in_memory_search = not streamed and n <= exact_search_max
        value = None
        if args.temperature is not None:
            t, t_note = args.temperature, "given"
        elif in_memory_search:
            t, value = optimal_temperature(features, labels, distance=distance, bounds=bounds)
            t_note = f"optimal within [{bounds[0]:g}, {bounds[1]:g}]"
        else:
            searched = min(args.search_anchors, population)
            t, _ = estimate_optimal_temperature(
                features, labels, anchors=searched, bounds=bounds, distance=distance,
                generator=torch.Generator().manual_seed(args.seed), progress=True,
            )  # fmt: skip
            t_note = (
                f"optimal within [{bounds[0]:g}, {bounds[1]:g}], searched on {searched} "
                f"anchors (seed {args.seed}) against all {n} points"
            )
        estimate = None
        if args.anchors is not None:
            estimate = estimate_snnl(
                features, labels, t, anchors=args.anchors, confidence=args.confidence,
                generator=torch.Generator().manual_seed(args.seed + 1), distance=distance,
                progress=True,
            )  # fmt: skip
            value = estimate.value
        elif value is None and (streamed or n > exact_search_max):
            value = snnl_streamed(features, labels, t, distance=distance, progress=True)
        elif value is None:
            with torch.no_grad():
                value = float(soft_nearest_neighbor_loss(features, labels, t, distance=distance))
        if not math.isfinite(value) and not streamed and features.dtype != torch.float64:
            with torch.no_grad():  # beyond float32's range: float64 holds it
                value = float(
                    soft_nearest_neighbor_loss(features.double(), labels, t, distance=distance)
                )
        if not math.isfinite(value):
            raise CommandError(f"SNNL at T = {t:g} is {value}, beyond the range of float64")
        curve_note = None
        if args.plot is not None:  # saved before anything is printed: an error leaves no output
            from snnl.figures import save_figure, temperature_curve_figure

            lo, hi = min(bounds[0], t), max(bounds[1], t)
            if in_memory_search:
                grid = np.logspace(np.log10(lo), np.log10(hi), 200)
                curve = snnl_temperature_curve(features, labels, grid, distance=distance).numpy()
            else:
                grid = np.logspace(np.log10(lo), np.log10(hi), 49)
                curve_anchors = min(args.search_anchors, population)
                curve = estimate_temperature_curve(
                    features, labels, grid, anchors=curve_anchors, distance=distance,
                    generator=torch.Generator().manual_seed(args.seed), progress=True,
                ).numpy()  # fmt: skip
                curve_note = f"estimated on {curve_anchors} anchors"
            name = Path(source).name if args.file is not None else args.dataset
            title = f"SNNL of {name}" + (f" ({curve_note})" if curve_note else "")
            fig = temperature_curve_figure(grid, curve, best=(t, value), title=title)
            save_figure(fig, args.plot)
    finally:
        if streamed:
            features.close()
    method = "estimate" if estimate is not None else "exact"
    if args.json:
        result = {
            "value": value,
            "temperature": t,
            "temperature_choice": t_note,
            "method": method,
            "n": n,
            "d": d,
            "classes": classes,
            "distance": distance,
            "source": source,
        }
        if estimate is not None:
            result.update(
                interval=[estimate.low, estimate.high],
                confidence=estimate.confidence,
                anchors=estimate.anchors,
                population=estimate.population,
                std_error=estimate.std_error,
            )
        if args.plot is not None:
            result["plot"] = str(args.plot)
        print(json.dumps(result))
        return 0
    print(f"source      : {source}")
    print(f"points      : {n} x {d} features, {classes} classes")
    print(f"distance    : {distance}")
    print(f"temperature : {t:.6g} ({t_note})")
    print(f"SNNL        : {value:.7g}   (log C = {np.log(max(classes, 1)):.4f})")
    if estimate is None:
        print("method      : exact (every point an anchor, against all points)")
    else:
        print(
            f"method      : estimate from {estimate.anchors} of {estimate.population} anchors "
            f"(seed {args.seed}) against all points; {estimate.confidence:.0%} interval "
            f"[{estimate.low:.7g}, {estimate.high:.7g}] (Student t on the mean of the exact "
            "per-anchor terms, finite-population corrected)"
        )
    if args.plot is not None:
        print(f"plot        : {args.plot}" + (f" ({curve_note})" if curve_note else ""))
    return 0


def _train(args: argparse.Namespace) -> int:
    from snnl.train import TrainConfig, train

    layers = args.layers if args.layers else "hidden"
    config = TrainConfig(
        dataset=args.dataset,
        model=args.model,
        epochs=_epochs(args, default=20),
        batch_size=args.batch_size,
        lr=args.lr,
        alpha=args.alpha,
        temperature_mode=args.temperature_mode,
        snnl_formula=args.snnl_formula,
        temperature=args.temperature,
        temperature_lr=args.temperature_lr,
        selectivity_alpha=args.selectivity_alpha,
        model_kwargs={"init": "authors"} if args.authors_init else {},
        distance=args.distance,
        layers=layers,
        seed=args.seed,
        data_dir=str(args.data_dir) if args.data_dir else None,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
    )
    from snnl import distributed

    _threads(args, config.model)
    joined = distributed.init_from_environment()  # under torchrun with WORLD_SIZE > 1: DDP
    main_rank = distributed.is_main_process()
    try:
        res = train(config, args.out, resume=args.resume, force=args.force)
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


def _reproduce_config(args: argparse.Namespace):
    from snnl.experiments import ReproduceConfig

    return ReproduceConfig(
        dataset=args.dataset,
        seeds=args.seeds,
        full=args.full,
        data_dir=str(args.data_dir) if args.data_dir else None,
        experiments=list(args.experiments or []),
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        epochs=args.epochs,
        model=args.model,
        force=args.force,
        workers=args.workers,
    )


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
    from snnl.gan import GANConfig, train_gan

    config = GANConfig(
        dataset=args.dataset,
        arch=args.arch,
        epochs=_epochs(args, default=GANConfig().epochs),
        batch_size=args.batch_size,
        lr=args.lr,
        latent_dim=args.latent_dim,
        snnl_alpha=args.snnl_alpha,
        snnl_target=args.snnl_target,
        snnl_temperature_mode=args.snnl_temperature_mode,
        classifier=str(args.classifier) if args.classifier else None,
        eval_samples=args.eval_samples,
        entanglement_samples=args.entanglement_samples,
        seed=args.seed,
        data_dir=str(args.data_dir) if args.data_dir else None,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
    )
    _threads(args, "mlp" if args.arch == "mlp" else "cnn")
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


def _add_run_folder_arguments(
    parser: argparse.ArgumentParser, seed: int, threads_help: str
) -> None:
    """The options of a command that trains one run into a folder (train, gan)."""
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an unfinished run, or extend a finished one to a larger --epochs "
        "(--epochs left out: the run's own)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite a run in --out")
    parser.add_argument("--threads", type=int, default=None, help=threads_help)


def build_parser() -> argparse.ArgumentParser:
    from snnl.data import available_datasets
    from snnl.distances import Distance

    distance_names = [d.value for d in Distance]

    parser = argparse.ArgumentParser(
        prog="snnl",
        description="Measure and shape the class geometry of neural-network representations.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    datasets = sorted(available_datasets())

    ent = sub.add_parser(
        "entanglement",
        help="SNNL of saved features (or a dataset's inputs) at the optimal or a given T",
        description="Print the Soft Nearest Neighbor Loss of features and labels read from "
        "FILE (.npz with 'features' and 'labels', .pt dict, or .npy with a labels .npy), or "
        "of an embedded dataset's inputs, at the optimal temperature or --temperature.",
    )
    ent.add_argument("file", nargs="?", type=Path, help=".npz / .pt / .npy features file")
    ent.add_argument("--labels", type=Path, default=None, help="labels .npy for a .npy FILE")
    ent.add_argument("--dataset", default="digits", choices=datasets, help="when no FILE")
    ent.add_argument("--data-dir", type=Path, default=None, help="folder of users' data files")
    ent.add_argument("--temperature", type=_positive_float, default=None)
    ent.add_argument("--distance", choices=distance_names, default=Distance.EUCLIDEAN.value)
    ent.add_argument("--t-min", type=_positive_float, default=1e-4, help="search bound")
    ent.add_argument("--t-max", type=_positive_float, default=1e4, help="search bound")
    ent.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="save the SNNL-vs-T curve; the suffix picks the format (.png, .pdf, .svg, .jpg)",
    )
    ent.add_argument(
        "--anchors",
        type=int,
        default=None,
        metavar="M",
        help="estimate SNNL from M anchors drawn at random (each against all points) with a "
        "confidence interval, instead of the exact value",
    )
    ent.add_argument("--confidence", type=float, default=0.95, help="interval level (--anchors)")
    ent.add_argument("--seed", type=int, default=0, help="seed of the anchor draws")
    ent.add_argument(
        "--search-anchors",
        type=int,
        default=256,
        metavar="M",
        help="anchors the optimal-T search uses on a .npy file or above 20,000 points",
    )
    ent.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ent.set_defaults(func=_entanglement)

    from snnl.experiments import registry
    from snnl.models import available_models
    from snnl.regularizers import DEFAULT_TEMPERATURE_MODE, SNNL_FORMULAS, TEMPERATURE_MODES

    threads_help = (
        "torch threads (default: 1 for small models, where a busy core costs more than a "
        "second thread gains; half the cores otherwise)"
    )
    tr = sub.add_parser(
        "train",
        help="train a normal (alpha = 0) or entangled (alpha > 0) model",
        description="Train one model with loss = CE - alpha * sum of hidden-layer SNNL (eq. 3), "
        "logging per epoch the SNNL of every hidden layer at its optimal temperature. "
        "Under `torchrun --nproc_per_node=N -m snnl train ...` it trains with "
        "DistributedDataParallel: each batch is split across the N processes and the SNNL "
        "is computed over the whole batch, so the run matches one process's.",
    )
    tr.add_argument("--dataset", default="digits", choices=datasets)
    tr.add_argument("--data-dir", type=Path, default=None)
    tr.add_argument("--model", default="mlp", choices=available_models())
    tr.add_argument("--epochs", type=int, default=None, help="default 20; --resume: the run's")
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--lr", type=_positive_float, default=1e-3)
    tr.add_argument("--alpha", type=float, default=0.0, help="> 0 entangles, < 0 separates")
    tr.add_argument(
        "--temperature-mode",
        choices=TEMPERATURE_MODES,
        default=DEFAULT_TEMPERATURE_MODE.value,
        help="how T of each layer is chosen: optimal (T* of every batch, the default), "
        "learned (Adam on log T), reference (the authors' T = T0 / t), fixed",
    )
    tr.add_argument(
        "--snnl-formula",
        choices=SNNL_FORMULAS,
        default="exact",
        help="exact (log-space) or reference (the authors' exp-then-log, saturating at 11.51)",
    )
    tr.add_argument(
        "--temperature",
        type=_positive_float,
        default=None,
        help="initial / fixed T (T0 of the reference mode); default: each layer's optimal T "
        "at initialisation; not used by the optimal mode",
    )
    tr.add_argument("--temperature-lr", type=_positive_float, default=0.05)
    tr.add_argument(
        "--selectivity-alpha", type=float, default=0.0, help="class-selectivity regulariser"
    )
    tr.add_argument(
        "--authors-init",
        action="store_true",
        help="reference CNN: the authors' initialisation (He-normal, zero biases, raw inputs)",
    )
    tr.add_argument("--distance", choices=distance_names, default=Distance.EUCLIDEAN.value)
    tr.add_argument("--layers", nargs="+", default=None, help="layer names (default: hidden)")
    _add_run_folder_arguments(tr, 0, threads_help)
    tr.set_defaults(func=_train)

    rp = sub.add_parser(
        "reproduce",
        help="run the registered experiments and write a report with figures",
        description="Run the experiments (" + ", ".join(registry()) + ") and write "
        "OUT/report.html, OUT/report.md, OUT/results.json and OUT/figures/. Trained models "
        "are kept in OUT/runs and reused by the next call.",
    )
    rp.add_argument("--dataset", default="mnist5k", choices=datasets)
    rp.add_argument("--data-dir", type=Path, default=None)
    rp.add_argument("--seeds", type=int, default=3)
    rp.add_argument("--full", action="store_true", help="longer settings")
    rp.add_argument("--experiments", nargs="+", choices=list(registry()), default=None)
    rp.add_argument("--epochs", type=int, default=None, help="override the default epochs")
    rp.add_argument("--model", choices=available_models(), default=None)
    rp.add_argument("--limit-train", type=int, default=None)
    rp.add_argument("--limit-test", type=int, default=None)
    rp.add_argument("--out", type=Path, default=Path("snnl-report"))
    rp.add_argument("--force", action="store_true", help="retrain runs whose saved config differs")
    rp.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that train independent runs in parallel (default: the cores, at most 8)",
    )
    rp.add_argument("--threads", type=int, default=None, help=threads_help)
    rp.set_defaults(func=_reproduce)

    from snnl.gan import SNNL_TARGETS, SNNL_TEMPERATURE_MODES, GANConfig
    from snnl.models import GAN_ARCHITECTURES

    gan_defaults = GANConfig()
    gn = sub.add_parser(
        "gan",
        help="train a GAN and measure the entanglement of real and generated data",
        description="Train a GAN (non-saturating loss, Adam) and record per epoch, on fresh "
        "samples, SNNL*(real, generated) in input space and in the hidden layers of the "
        "discriminator and of --classifier, with that classifier's mode coverage and "
        "Frechet distance. --snnl-alpha > 0 adds -alpha * SNNL* to the generator's loss.",
    )
    gn.add_argument("--dataset", default=gan_defaults.dataset, choices=datasets)
    gn.add_argument("--data-dir", type=Path, default=None)
    gn.add_argument("--arch", choices=GAN_ARCHITECTURES, default=gan_defaults.arch)
    gn.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"default {gan_defaults.epochs}; --resume: the run's",
    )
    gn.add_argument("--batch-size", type=int, default=gan_defaults.batch_size)
    gn.add_argument("--lr", type=_positive_float, default=gan_defaults.lr)
    gn.add_argument("--latent-dim", type=int, default=gan_defaults.latent_dim)
    gn.add_argument("--snnl-alpha", type=float, default=gan_defaults.snnl_alpha)
    gn.add_argument("--snnl-target", choices=SNNL_TARGETS, default=gan_defaults.snnl_target)
    gn.add_argument(
        "--snnl-temperature-mode",
        choices=SNNL_TEMPERATURE_MODES,
        default=gan_defaults.snnl_temperature_mode,
    )
    gn.add_argument(
        "--classifier",
        type=Path,
        default=None,
        help="a finished `snnl train` run folder: the classifier that measures coverage, FD "
        "and entanglement in its hidden layers",
    )
    gn.add_argument("--eval-samples", type=int, default=gan_defaults.eval_samples)
    gn.add_argument("--entanglement-samples", type=int, default=gan_defaults.entanglement_samples)
    _add_run_folder_arguments(gn, gan_defaults.seed, threads_help)
    gn.set_defaults(func=_gan)

    pf = sub.add_parser(
        "profile",
        help="per-layer SNNL*, selectivity, dimensionality and Lipschitz bounds of a model "
        "on clean, corrupted and adversarial inputs",
        description="Profile the hidden layers of a trained model (a `snnl train` run folder, "
        "or --model package.module:factory with --weights FILE) on the test split: SNNL at "
        "the optimal temperature, mean class selectivity, dimensionality (95%% variance) and "
        "participation ratio on clean inputs, on corrupted ones (the 15 CIFAR-10-C "
        "corruptions at --severity, example i gets corruption i mod 15) and on PGD L-inf "
        "adversarial ones (--eps, default 0.1, or 8/255 for colour), with each layer's "
        "Lipschitz bound. Writes OUT/profile.json and OUT/profile.png.",
    )
    pf.add_argument("run", nargs="?", type=Path, default=None, help="a `snnl train` run folder")
    pf.add_argument("--model", default=None, metavar="PACKAGE.MODULE:FACTORY")
    pf.add_argument("--weights", type=Path, default=None, help="state dict for --model")
    pf.add_argument("--dataset", default=None, choices=datasets, help="default: the run's")
    pf.add_argument("--data-dir", type=Path, default=None)
    pf.add_argument("--limit", type=int, default=1000, help="test examples used")
    pf.add_argument("--eps", type=float, default=None, help="PGD L-inf radius")
    pf.add_argument("--steps", type=int, default=10, help="PGD steps (of eps / 4)")
    pf.add_argument("--severity", type=int, default=3, choices=range(1, 6))
    pf.add_argument("--seed", type=int, default=0)
    pf.add_argument("--out", type=Path, default=None, help="default: the run folder")
    pf.add_argument("--threads", type=int, default=None, help=threads_help)
    pf.set_defaults(func=_profile)

    rep = sub.add_parser("report", help="rebuild the report of DIR from its saved results")
    rep.add_argument("dir", type=Path)
    rep.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CommandError, ValueError, TypeError, RuntimeError) as err:
        print(f"snnl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # missing, unwritable, a file where a folder is expected, ...
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        reason = err.strerror or str(err)
        print(f"snnl {args.command}: error: {where}{reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"snnl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
