"""Accuracy under corruption: every corruption x severity cell, and their mean."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from snnl._checks import check_choice, check_int, check_labels
from snnl.corruptions.catalogue import (
    SEVERITIES,
    check_images,
    check_severity,
    corrupt,
    corruption_names,
)
from snnl.corruptions.hendrycks import GLASS_SWAPS


@dataclass
class CorruptionAccuracy:
    """Accuracy of a model on every corruption x severity cell.

    ``table[name][severity]`` is the accuracy on that cell; ``mean`` the unweighted mean
    over all cells (RobustBench's corruption accuracy); ``per_corruption[name]`` the mean
    over that corruption's severities; ``clean`` the accuracy on the clean inputs.
    """

    table: dict[str, dict[int, float]]
    mean: float
    per_corruption: dict[str, float]
    clean: float
    severities: tuple[int, ...]
    preset: str | None = None
    seeds: dict[str, dict[int, int]] = field(default_factory=dict)
    glass_swap: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: severities as string keys."""
        return {
            "mean": self.mean,
            "clean": self.clean,
            "per_corruption": dict(self.per_corruption),
            "table": {n: {str(s): v for s, v in row.items()} for n, row in self.table.items()},
            "severities": list(self.severities),
            "preset": self.preset,
            "glass_swap": self.glass_swap,
        }


def _cell_seed(base: int, name: str, severity: int) -> int:
    return (base * 1_000_003 + zlib.crc32(name.encode()) * 10 + severity) % (2**63 - 1)


def corruption_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    names: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
    preset: str | None = None,
    glass_swap: str | None = None,
) -> CorruptionAccuracy:
    """Accuracy of ``model`` on ``x`` corrupted by every name x severity.

    mean = (1 / (|names| |severities|)) sum over cells of accuracy(cell), RobustBench's
    unweighted mean (over the 15 corruptions x 5 severities for CIFAR-10-C). Accuracy is
    :func:`snnl.measures.accuracy` (model in eval mode, its flags restored). Each cell is
    corrupted with its own generator seeded from (one draw of ``generator``, name,
    severity), so a cell's result does not depend on which other cells are asked for.

    Args:
        model: maps (N, C, H, W) in [0, 1] to logits (N, classes).
        x: (N, C, H, W) inputs in [0, 1]; y: (N,) integer labels.
        names: corruptions (default: every one of :func:`corruption_names`).
        severities: subset of 1..5.
        generator: seeds the cells (default: torch's global generator).
        batch_size: evaluation batch size.
        preset, glass_swap: as in :func:`corrupt`.

    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> x = torch.rand(6, 1, 8, 8); y = torch.tensor([0, 1, 2, 0, 1, 2])
    >>> res = corruption_accuracy(net, x, y, ["contrast", "brightness"], (1, 5))
    >>> sorted(res.table), sorted(res.table["contrast"])
    (['brightness', 'contrast'], [1, 5])
    >>> abs(res.mean - sum(v for r in res.table.values() for v in r.values()) / 4) < 1e-12
    True
    """
    from snnl.measures import accuracy

    check_images(x)
    y = check_labels(y, x.shape[0], name="y", non_negative=True)
    names = corruption_names() if names is None else tuple(names)
    if not names:
        raise ValueError("names must list at least one corruption")
    for n in names:
        check_choice("corruption", n, corruption_names())
    severities = tuple(check_severity(s) for s in severities)
    if not severities:
        raise ValueError("severities must list at least one of 1, 2, 3, 4, 5")
    check_int("batch_size", batch_size, low=1)
    if glass_swap is not None:
        check_choice("glass_swap", glass_swap, GLASS_SWAPS)
    source = generator.device if generator is not None else torch.device("cpu")
    base = int(torch.randint(0, 2**62, (1,), generator=generator, device=source))
    table: dict[str, dict[int, float]] = {}
    seeds: dict[str, dict[int, int]] = {}
    for n in names:
        table[n], seeds[n] = {}, {}
        for s in severities:
            seed = _cell_seed(base, n, s)
            g = torch.Generator(device=x.device if x.device.type != "meta" else "cpu")
            g.manual_seed(seed)
            xc = corrupt(x, n, s, generator=g, preset=preset, glass_swap=glass_swap)
            table[n][s] = accuracy(model, xc, y, batch_size=batch_size)
            seeds[n][s] = seed
    cells = [v for row in table.values() for v in row.values()]
    return CorruptionAccuracy(
        table=table,
        mean=float(sum(cells) / len(cells)),
        per_corruption={n: float(sum(r.values()) / len(r)) for n, r in table.items()},
        clean=accuracy(model, x, y, batch_size=batch_size),
        severities=severities,
        preset=preset,
        seeds=seeds,
        glass_swap=glass_swap,
    )
