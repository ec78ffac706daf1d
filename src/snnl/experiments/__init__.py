"""Registered experiments of ``snnl reproduce``.

An experiment is a module with:

    NAME: str                                   registry key
    TITLE: str                                  report section title
    run(config: ReproduceConfig, out: Path) -> dict     (JSON-serialisable results)
    section(results: dict, fig_dir: Path) -> Section    (figures written to fig_dir)

``run`` may train models; ``section`` only reads the saved results, so the report can
be rebuilt without retraining (``snnl report DIR``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

__all__ = ["ReproduceConfig", "Section", "registry", "mean_std"]


@dataclass
class ReproduceConfig:
    """Settings of one ``snnl reproduce`` call (saved in results.json)."""

    dataset: str = "digits"
    seeds: int = 3
    full: bool = False  # the longer settings (more epochs, all seeds)
    data_dir: str | None = None
    experiments: list[str] = field(default_factory=list)  # empty: every registered one
    limit_train: int | None = None
    limit_test: int | None = None
    epochs: int | None = None  # override the experiment's default epochs
    model: str | None = None  # override the default model for the dataset

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        unknown = sorted(set(self.experiments) - set(registry()))
        if unknown:
            raise ValueError(
                f"unknown experiment(s) {', '.join(unknown)}; known: {', '.join(registry())}"
            )


@dataclass
class Section:
    """One report section: markdown text and figures (file name in fig_dir, caption)."""

    title: str
    markdown: str
    figures: list[tuple[str, str]] = field(default_factory=list)


def registry() -> dict[str, ModuleType]:
    """Experiment name -> module, in the order they run and appear in the report."""
    from snnl.experiments import dknn, entangle, transfer

    modules = [entangle, dknn, transfer]
    return {m.NAME: m for m in modules}


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (0 for one value) of ``values``.

    >>> mean_std([1.0, 2.0, 3.0])
    {'mean': 2.0, 'std': 1.0, 'n': 3, 'values': [1.0, 2.0, 3.0]}
    """
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "values": list(values)}
