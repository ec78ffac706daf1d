"""Tiny stand-in experiments for the runner and report tests (no training).

Each follows the contract of :mod:`snnl.experiments.base`: ``settings(config)``,
``run(settings, context)``, ``section(results, fig_dir)``, ``claims(results)``. Their
section holds the markdown the report must render faithfully (a bullet list, a table,
``SNNL*`` in text and caption, ``|`` in a claim).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from snnl.experiments.base import Claim, Section

VERDICT_WORDS = {"holds", "does not hold", "inconclusive"}  # in italics in VERDICT_RULE


@dataclass(frozen=True)
class Settings:
    value: float
    seeds: int


def experiment(
    name: str,
    value: float = 1.0,
    *,
    runs: tuple[str, ...] = (),
    settings_error: Exception | BaseException | None = None,
    run_error: Exception | BaseException | None = None,
    section_error: Exception | None = None,
) -> SimpleNamespace:
    """An experiment module named ``name`` whose results hold ``value`` and the run
    folders ``runs`` (``"runs/<folder>"`` paths, as real experiments record them)."""

    def settings(config: Any) -> Settings:
        if settings_error is not None:
            raise settings_error
        return Settings(value=value, seeds=config.seeds)

    def run(s: Settings, context: Any) -> dict[str, Any]:
        if run_error is not None:
            raise run_error
        return {
            "value": s.value,
            "test_points": len(context.zoo.dataset.y_test),
            "runs": [{"dir": r} for r in runs],
        }

    def section(results: dict[str, Any], fig_dir: Any) -> Section:
        from snnl.figures import plt, save_figure

        if section_error is not None:
            raise section_error
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot([0, 1], [0, results["value"]])
        save_figure(fig, fig_dir / f"{name}_curve.png", dpi=40)
        markdown = "\n".join(
            [
                f"Value {results['value']:g} on {results['test_points']} test points; "
                "SNNL* is scale-invariant, T*(c x) = c^2 T*(x).",
                "What was measured:",
                "- first item with SNNL*",
                "- second item",
                "",
                "| layer | SNNL* |",
                "|---|---|",
                "| relu1 | 0.5 |",
            ]
        )
        caption = f"SNNL* of {name} per layer (T* at each layer's minimum)"
        return Section(f"Experiment {name}", markdown, [(f"{name}_curve.png", caption)])

    def claims(results: dict[str, Any]) -> list[Claim]:
        return [
            Claim(
                f"{name}: SNNL* rises | falls",
                "Paper 2019, sec. 1",
                "digits, x_test",
                f"value {results['value']:g}",
                "inconclusive",
                "fewer than two seeds * here",
            )
        ]

    return SimpleNamespace(
        NAME=name,
        TITLE=f"Experiment {name}",
        settings=settings,
        run=run,
        section=section,
        claims=claims,
    )


def registry(*modules: SimpleNamespace) -> dict[str, SimpleNamespace]:
    """name -> module, in the order given (the report's order)."""
    return {m.NAME: m for m in modules}
