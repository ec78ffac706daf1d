"""The experiments of ``snnl reproduce``: one module each, registered in ``REGISTRY``.

The contract every experiment follows is :mod:`snnl.experiments.base`, the settings of a
``snnl reproduce`` call are :mod:`snnl.experiments.config`; trained models
that several experiments study come from :mod:`snnl.experiments.zoo`; running them is
:mod:`snnl.runner`. To add an experiment: write its module and add it to ``REGISTRY``.
"""

from __future__ import annotations

from types import ModuleType

from snnl.experiments.base import (
    Claim,
    Context,
    Section,
    compare_groups,
    compare_paired,
    mean_std,
)
from snnl.experiments.config import ReproduceConfig

__all__ = [
    "REGISTRY",
    "Claim",
    "Context",
    "ReproduceConfig",
    "Section",
    "compare_groups",
    "compare_paired",
    "mean_std",
    "registry",
]

from snnl.experiments import dknn, entangle, gan, intriguing, selectivity, transfer  # noqa: E402

#: The experiments, in the order they run and appear in the report.
REGISTRY: tuple[ModuleType, ...] = (entangle, dknn, transfer, gan, intriguing, selectivity)


def registry() -> dict[str, ModuleType]:
    """Experiment name -> module, in ``REGISTRY`` order."""
    return {m.NAME: m for m in REGISTRY}
