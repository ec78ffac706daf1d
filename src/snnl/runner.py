"""``snnl reproduce``: run the registered experiments and save their results.

Output folder:

    results.json   every experiment's latest results and its provenance (snnl version,
                   reproduce config, finish time, seconds, the training runs that were not
                   healthy); the format is described in :mod:`snnl.report`
    report.md, report.html, figures/
                   made from results.json alone (:func:`snnl.report.write_report`)
    runs/          the zoo's trained models (reused by later calls when their config matches)
    .snnl.lock     held while a process writes the folder

Nothing is lost by a call that fails or is interrupted:

- every input is checked before the folder is touched (the output path, the experiment
  names, each experiment's settings, the dataset and its files, a results.json already
  there): a bad one is an error and the folder stays byte-identical;
- results.json and the report are replaced only when every requested experiment has
  finished and the new report is complete (built aside, then moved into place); until
  then the folder keeps the previous call's report (trained runs are kept in runs/
  and reused by the next call);
- a call with ``--experiments`` updates the sections it names and keeps the others
  (the report says which experiment ran when).
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from snnl import __version__, _io
from snnl.experiments import Context, ReproduceConfig, registry
from snnl.experiments.zoo import Zoo
from snnl.report import FORMAT, REPORT_FILES, RESULTS, read_results, write_report

__all__ = [
    "reproduce",
    "check",
    "experiment_names",
    "unhealthy_runs",
    "RESULTS",
    "REPORT_FILES",
    "expected_minutes",
]


def experiment_names(
    requested: Sequence[str], known: Sequence[str] | Mapping[str, Any] | None = None
) -> list[str]:
    """The experiments to run, in registry order (empty ``requested``: all of them).

    ``known``: the registered names (default: :func:`snnl.experiments.registry`'s).
    An unknown name is a ValueError listing the known ones.

    >>> experiment_names(["transfer", "dknn", "transfer"], ["entangle", "dknn", "transfer"])
    ['dknn', 'transfer']
    >>> experiment_names(["nope"], ["dknn"])
    Traceback (most recent call last):
    ...
    ValueError: unknown experiment(s) nope; known: dknn
    """
    names = list(registry() if known is None else known)
    unknown = sorted(set(requested) - set(names))
    if unknown:
        raise ValueError(f"unknown experiment(s) {', '.join(unknown)}; known: {', '.join(names)}")
    return [n for n in names if n in requested] if requested else names


def expected_minutes(config: ReproduceConfig) -> tuple[float, float]:
    """A stated range for the run's wall time on 2 cores (minutes).

    An experiment module that defines ``expected_seconds(config)`` (an upper estimate
    from its own plan of runs, e.g. :func:`snnl.experiments.entangle.expected_seconds`)
    counts with that, from 60% of it up to it. Every other experiment counts with a
    share of the measured default (the five others 0.6-1.2 minutes each at 3 seeds on
    mnist5k, 2 cores), scaled by the seeds, and 8x that under ``--full`` (the
    reference CNN costs about 6x the MLP per epoch on 28x28 inputs): an estimate, not
    a measurement.

    >>> lo, hi = expected_minutes(ReproduceConfig(experiments=["dknn"]))
    >>> 0 < lo < hi < 5
    True
    """
    modules = registry()
    lo = hi = 0.0
    for name in experiment_names(config.experiments):
        estimate = getattr(modules[name], "expected_seconds", None)
        if estimate is not None:
            seconds = float(estimate(config))
            lo, hi = lo + 0.6 * seconds / 60, hi + seconds / 60
            continue
        minutes = 0.3 + 0.3 * config.seeds
        if config.full:
            minutes *= 8.0
        lo, hi = lo + 0.5 * minutes, hi + minutes
    return round(lo, 1), round(hi, 1)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"--out {out}: {parent} is a file, not a folder")
            break


@dataclass
class _Plan:
    """A checked reproduce call: what to run, with which settings, on which data."""

    names: list[str]
    settings: dict[str, Any]
    zoo: Zoo


def check(
    config: ReproduceConfig,
    out_dir: str | Path,
    *,
    experiments: Mapping[str, ModuleType] | None = None,
) -> list[str]:
    """Check every input of ``reproduce(config, out_dir)`` without writing anything;
    returns the experiments it would run.

    Checked: the output path (a folder, or creatable), the experiment names, each
    experiment's settings for ``config``, the dataset (loaded: its files and
    ``--data-dir`` must be there), and a results.json already in the folder (readable,
    every experiment in it known). A bad input raises an error naming it.
    """
    return _plan(config, Path(out_dir), registry() if experiments is None else experiments).names


def _plan(config: ReproduceConfig, out: Path, modules: Mapping[str, ModuleType]) -> _Plan:
    if not isinstance(config, ReproduceConfig):
        raise TypeError(f"config must be a ReproduceConfig, got {type(config).__name__}")
    _check_out(out)
    names = experiment_names(config.experiments, modules)
    settings = {name: modules[name].settings(config) for name in names}
    if (out / RESULTS).exists():
        kept = read_results(out)["experiments"]
        unknown = sorted(set(kept) - set(modules))
        if unknown:
            raise ValueError(
                f"{out / RESULTS} holds results of unknown experiment(s) {', '.join(unknown)} "
                "(an older snnl?); choose another output folder"
            )
    zoo = Zoo(config, out)
    zoo.dataset  # noqa: B018  (load it now: missing files fail before the folder is touched)
    return _Plan(names, settings, zoo)


def _run_paths(obj: Any) -> set[str]:
    """Every "runs/<folder>" string anywhere in an experiment's results."""
    if isinstance(obj, str):
        return {obj} if obj.startswith("runs/") else set()
    if isinstance(obj, dict):
        return set().union(*(_run_paths(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_run_paths(v) for v in obj)) if obj else set()
    return set()


def unhealthy_runs(out_dir: str | Path, results: dict[str, Any]) -> list[dict[str, Any]]:
    """The training runs an experiment's ``results`` refer to (``"runs/..."`` paths under
    ``out_dir``) whose health is not "ok": ``{"run", "health", "reasons"}`` each, sorted
    by run folder. Recorded in results.json at reproduce time, so that the report never
    reads run folders."""
    out = Path(out_dir)
    bad = []
    for rel in sorted(_run_paths(results)):
        path = out / rel / RESULTS
        if not path.exists():
            continue
        try:
            health = json.loads(path.read_text()).get("health", {})
        except (OSError, ValueError):
            bad.append({"run": path.parent.name, "health": "unreadable", "reasons": [str(path)]})
            continue
        if health.get("verdict", "ok") != "ok":
            reasons = [str(r) for r in health.get("reasons", [])]
            bad.append({"run": path.parent.name, "health": health["verdict"], "reasons": reasons})
    return bad


def reproduce(
    config: ReproduceConfig,
    out_dir: str | Path,
    *,
    experiments: Mapping[str, ModuleType] | None = None,
) -> dict[str, Any]:
    """Run the experiments of ``config`` into ``out_dir``, then write the report.

    Every input is checked first (:func:`check`); results.json and the report are
    replaced only once every experiment asked for has finished, keeping the sections of
    experiments this call did not run. ``experiments``: name -> experiment module, in
    report order (default: :func:`snnl.experiments.registry`). Returns the saved results.
    """
    modules = registry() if experiments is None else experiments
    out = Path(out_dir)
    plan = _plan(config, out, modules)
    with _io.folder_lock(out):
        kept = read_results(out) if (out / RESULTS).exists() else None  # under the lock
        context = Context(config=config, out=out, zoo=plan.zoo)
        fresh: dict[str, Any] = {}
        provenance: dict[str, Any] = {}
        for name in plan.names:
            started = time.perf_counter()
            print(f"[snnl] experiment {name} ...", flush=True)
            settings = plan.settings[name]
            res = modules[name].run(settings, context)
            if "settings" in res:
                raise RuntimeError(f"experiment {name} returned a 'settings' key (reserved)")
            fresh[name] = _io.json_safe({"settings": asdict(settings), **res})
            seconds = round(time.perf_counter() - started, 2)
            provenance[name] = {
                "snnl_version": __version__,
                "config": asdict(config),
                "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "seconds": seconds,
                "unhealthy_runs": unhealthy_runs(out, fresh[name]),
            }
            print(f"[snnl] experiment {name} done in {seconds:.1f} s", flush=True)
        old = kept or {"experiments": {}, "provenance": {}}
        order = [n for n in modules if n in fresh or n in old["experiments"]]
        results: dict[str, Any] = {
            "format": FORMAT,
            "snnl_version": __version__,
            "complete": True,
            "experiments": {n: fresh.get(n, old["experiments"].get(n)) for n in order},
            "provenance": {n: provenance.get(n, old["provenance"].get(n)) for n in order},
        }
        write_report(out, results, experiments=modules)
    return results
