"""``snnl reproduce``: run the registered experiments and save their results.

Output folder:

    results.json   {"snnl_version", "config", "complete", "experiments": {name: results},
                    "seconds": {name: s}}; each experiment's results carry its "settings"
    report.md, report.html, figures/   written by :func:`snnl.report.write_report`
    runs/          the zoo's trained models (reused by later calls when their config matches)
    .snnl.lock     held while a process writes the folder

``complete`` is false until every requested experiment has finished. Before the
first experiment starts, a report left by an earlier call is replaced by an
INCOMPLETE placeholder, so an interrupted rerun never shows the old report next
to new, incomplete results.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from snnl import __version__, _io
from snnl.experiments import Context, ReproduceConfig, registry
from snnl.experiments.zoo import Zoo

__all__ = ["reproduce", "RESULTS", "REPORT_FILES", "expected_minutes"]

RESULTS = "results.json"
REPORT_FILES = ("report.md", "report.html")

_PLACEHOLDER = (
    "# snnl report: INCOMPLETE\n\n"
    "`snnl reproduce` is running (or was interrupted) in this folder; the report is written "
    'when every experiment has finished. Results so far: results.json ("complete": false).\n'
)


def expected_minutes(config: ReproduceConfig) -> tuple[float, float]:
    """A stated range for the run's wall time on 2 cores (minutes).

    Default settings: measured (all six experiments, 3 seeds, mnist5k: 7-10.5 minutes on
    2 cores with another job running), scaled by the experiments and seeds asked for.
    ``--full``: an estimate, not a measurement: the reference CNN costs about 6x the
    MLP per epoch on 28x28 inputs, and the entangle experiment trains every
    temperature mode under both formulas.
    """
    names = config.experiments or list(registry())
    share = len(names) / max(len(registry()), 1)
    minutes = (1.5 + 2.0 * config.seeds) * share
    if config.full:
        minutes *= 8.0
    return round(0.7 * minutes, 1), round(1.4 * minutes, 1)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"--out {out}: {parent} is a file, not a folder")
            break


def reproduce(config: ReproduceConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run the experiments of ``config`` into ``out_dir``, then write the report."""
    from snnl.report import write_report

    out = Path(out_dir)
    _check_out(out)
    names = config.experiments or list(registry())
    with _io.folder_lock(out):
        for name in REPORT_FILES:  # never leave an old report beside new results
            if (out / name).exists() or name == "report.md":
                text = _PLACEHOLDER if name == "report.md" else f"<pre>{_PLACEHOLDER}</pre>"
                _io.write_text(out / name, text)
        results: dict[str, Any] = {
            "snnl_version": __version__,
            "config": asdict(config),
            "complete": False,
            "experiments": {},
            "seconds": {},
        }
        _io.write_json(out / RESULTS, results)
        zoo = Zoo(config, out)
        context = Context(config=config, out=out, zoo=zoo)
        modules = registry()
        for name in names:
            module = modules[name]
            started = time.perf_counter()
            print(f"[snnl] experiment {name} ...", flush=True)
            settings = module.settings(config)
            res = module.run(settings, context)
            if "settings" in res:
                raise RuntimeError(f"experiment {name} returned a 'settings' key (reserved)")
            results["experiments"][name] = _io.json_safe({"settings": asdict(settings), **res})
            results["seconds"][name] = round(time.perf_counter() - started, 2)
            print(f"[snnl] experiment {name} done in {results['seconds'][name]:.1f} s", flush=True)
            _io.write_json(out / RESULTS, results)
        results["complete"] = True
        _io.write_json(out / RESULTS, results)
        write_report(out)
    return results
