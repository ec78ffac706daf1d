"""The measures of experiment "transfer" (:mod:`snnl.experiments.transfer`), kept apart.

Not a registered experiment: only :mod:`snnl.experiments.transfer` imports it.

* The source-kind x target-kind transfer matrix over seed pairs: source and target are
  always different seeds, pair ``k`` = (source seed k, target seed (k + 1) mod n), so
  each cell holds one value per pair and two cells that share the source (or the
  target) of a pair are paired. Untargeted FGSM: the value is the target's error;
  targeted FGSM (target class :func:`snnl.attacks.next_class_targets`, ``(y + 1) mod C``):
  the rate at which the target model predicts the target class.
* The class clustering of the FGSM gradient directions beside the same measure on
  label-shuffled directions (seeded permutations, the no-cluster reference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from snnl.attacks import fgsm, next_class_targets, transfer_matrix
from snnl.measures import class_clustering
from snnl.stats import Interval, paired_interval

__all__ = [
    "ATTACKS",
    "CELLS",
    "EFFECTS",
    "seed_pairs",
    "eps_key",
    "model_matrices",
    "kind_cells",
    "cell_stats",
    "paired_effect",
    "effect_values",
    "shuffled_clustering",
]

#: The attack kinds of the matrix: FGSM away from the true class, or towards (y + 1) mod C.
ATTACKS: tuple[str, ...] = ("untargeted", "targeted")
_KINDS = ("normal", "entangled")
#: The cells ``"<source kind>-><target kind>"`` of the kind matrix, row by row.
CELLS: tuple[str, ...] = tuple(f"{s}->{t}" for s in _KINDS for t in _KINDS)
#: The effects read from the kind matrix: name -> (cell a, cell b), effect = a - b per pair.
EFFECTS: dict[str, tuple[str, str]] = {
    "target": ("normal->entangled", "normal->normal"),  # same source examples, other target
    "source": ("entangled->normal", "normal->normal"),  # same target model, other source
    "both": ("entangled->entangled", "normal->normal"),  # the old row's comparison
}


def seed_pairs(seeds: int) -> list[tuple[int, int]]:
    """The (source seed, target seed) pairs of the kind matrix: ``(k, (k + 1) mod n)``.

    Source and target always differ, so none with fewer than two seeds. Each seed is the
    source of one pair and the target of another.

    >>> seed_pairs(3), seed_pairs(2), seed_pairs(1)
    ([(0, 1), (1, 2), (2, 0)], [(0, 1), (1, 0)], [])
    """
    if seeds < 2:
        return []
    return [(k, (k + 1) % seeds) for k in range(seeds)]


def eps_key(eps: float) -> str:
    """The JSON key of an eps: ``f"{eps:g}"``.

    >>> eps_key(0.1), eps_key(0.05)
    ('0.1', '0.05')
    """
    return f"{eps:g}"


def model_matrices(
    models: Mapping[str, nn.Module],
    x: Tensor,
    y: Tensor,
    num_classes: int,
    eps_grid: Sequence[float],
) -> dict[str, dict[str, dict[str, list[Any]]]]:
    """FGSM transfer between every pair of models, per attack kind and eps.

    ``out[attack][eps_key(eps)]["matrix"][s][t]``: untargeted, the error of model t on
    ``fgsm(model_s, x, y, eps)``; targeted, the rate at which model t predicts
    ``c = (y + 1) mod C`` on ``fgsm(model_s, x, c, eps, targeted=True)``
    (:func:`snnl.attacks.transfer_matrix`). ``["clean"][t]``: model t's clean error, or
    its rate of predicting c on the clean x (the targeted baseline).

    Args:
        models: name -> model (S of them), rows and columns in this order.
        x: (N, ...) inputs in [0, 1]; y: (N,) true labels in [0, num_classes).
        num_classes: C, for the target rule.
        eps_grid: the L-inf budgets.

    Returns:
        ``{attack: {eps key: {"matrix": S x S list, "clean": S list}}}``.

    >>> _ = torch.manual_seed(0)
    >>> nets = {"a": nn.Linear(4, 3), "b": nn.Linear(4, 3)}
    >>> out = model_matrices(nets, torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]), 3, [0.1])
    >>> sorted(out), len(out["targeted"]["0.1"]["matrix"])
    (['targeted', 'untargeted'], 2)
    """
    targets = next_class_targets(y, num_classes)
    out: dict[str, dict[str, dict[str, list[Any]]]] = {a: {} for a in ATTACKS}
    for eps in eps_grid:
        e = float(eps)
        res = transfer_matrix(models, x, y, lambda m, xb, yb, e=e: fgsm(m, xb, yb, e))
        out["untargeted"][eps_key(e)] = {
            "matrix": res.matrix.tolist(),
            "clean": res.clean_error.tolist(),
        }
        res = transfer_matrix(
            models, x, y, lambda m, xb, cb, e=e: fgsm(m, xb, cb, e, targeted=True), targets=targets
        )
        assert res.clean_target_rate is not None
        out["targeted"][eps_key(e)] = {
            "matrix": res.matrix.tolist(),
            "clean": res.clean_target_rate.tolist(),
        }
    return out


def kind_cells(
    matrix: Sequence[Sequence[float]],
    names: Sequence[str],
    pairs: Sequence[tuple[int, int]],
    clean: Sequence[float] | None = None,
) -> dict[str, list[float | None]]:
    """The kind matrix's values, one per seed pair: cell ``"a->b"``, pair (s, t) holds
    ``matrix[a-s, b-t]`` (None where either model is missing, e.g. unhealthy), and
    ``"white-box <kind>"`` the diagonal ``matrix[kind-s, kind-s]`` of each pair's source.
    With ``clean`` (per model, the matrix's order) every value is the excess over the
    target's clean value: ``matrix[i, j] - clean[j]``.

    >>> m = [[0.9, 0.5, 0.2, 0.1], [0.4, 0.8, 0.3, 0.6], [0.7, 0.2, 0.95, 0.35],
    ...      [0.25, 0.15, 0.45, 0.85]]
    >>> c = kind_cells(m, ["normal-0", "normal-1", "entangled-0", "entangled-1"], [(0, 1), (1, 0)])
    >>> c["normal->normal"], c["normal->entangled"], c["entangled->normal"]
    ([0.5, 0.4], [0.1, 0.3], [0.2, 0.25])
    >>> kind_cells(m[:3], ["normal-0", "normal-1", "entangled-0"], [(0, 1)])["normal->entangled"]
    [None]
    >>> kind_cells(m, ["normal-0", "normal-1", "entangled-0", "entangled-1"], [(0, 1)],
    ...            clean=[0.1, 0.2, 0.3, 0.05])["normal->entangled"]
    [0.05]
    """
    index = {n: i for i, n in enumerate(names)}
    base = [0.0] * len(names) if clean is None else [float(c) for c in clean]
    out: dict[str, list[float | None]] = {}
    for cell in CELLS:
        src, tgt = cell.split("->")
        vals: list[float | None] = []
        for s, t in pairs:
            i, j = index.get(f"{src}-{s}"), index.get(f"{tgt}-{t}")
            vals.append(None if i is None or j is None else float(matrix[i][j]) - base[j])
        out[cell] = vals
    for kind in _KINDS:
        diag = [index.get(f"{kind}-{s}") for s, _ in pairs]
        out[f"white-box {kind}"] = [
            None if i is None else float(matrix[i][i]) - base[i] for i in diag
        ]
    return out


def cell_stats(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Mean of the measured values with a 95% Student t interval (``n - 1`` df), or None
    without values; ``low``/``high`` None with one value.

    >>> s = cell_stats([0.5, None, 0.7])
    >>> round(s["mean"], 6), s["n"], round(s["high"] - s["mean"], 4)
    (0.6, 2, 1.2706)
    """
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    if len(vals) < 2:
        return {"mean": vals[0], "low": None, "high": None, "n": 1}
    iv = paired_interval(vals, [0.0] * len(vals))  # the one-sample t interval of the mean
    return {"mean": iv.estimate, "low": iv.low, "high": iv.high, "n": len(vals)}


def effect_values(
    cells: Mapping[str, Sequence[float | None]], effect: str
) -> tuple[list[float], list[float]]:
    """The two cells of an :data:`EFFECTS` entry, over the pairs where both are measured.

    >>> effect_values({"normal->entangled": [0.2, None, 0.3],
    ...                "normal->normal": [0.5, 0.4, 0.6]}, "target")
    ([0.2, 0.3], [0.5, 0.6])
    """
    a_cell, b_cell = EFFECTS[effect]
    both = [
        (a, b)
        for a, b in zip(cells[a_cell], cells[b_cell], strict=True)
        if a is not None and b is not None
    ]
    return [a for a, _ in both], [b for _, b in both]


def paired_effect(cells: Mapping[str, Sequence[float | None]], effect: str) -> Interval | None:
    """The :data:`EFFECTS` difference (cell a - cell b per pair) with its paired t 95%
    interval (:func:`snnl.stats.paired_interval`); None with fewer than two pairs.

    >>> iv = paired_effect({"entangled->normal": [0.2, 0.3, 0.25],
    ...                     "normal->normal": [0.5, 0.55, 0.6]}, "source")
    >>> round(iv.estimate, 4), iv.high < 0
    (-0.3, True)
    """
    a, b = effect_values(cells, effect)
    return paired_interval(a, b) if len(a) >= 2 else None


def shuffled_clustering(
    directions: Tensor, labels: Tensor, shuffles: int, seed: int
) -> dict[str, Any]:
    """:func:`snnl.measures.class_clustering` of ``directions`` (N, D) under label
    permutations: the no-cluster reference of the same measure.

    Permutation k is ``torch.randperm(N)`` of a generator seeded ``seed + k`` (the same
    for every model), applied to ``labels``; the class sizes are kept. Returns the mean
    SNNL* and silhouette over the ``shuffles`` permutations and each one's value (and
    optimal temperature).

    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(60) % 3
    >>> x = torch.randn(60, 4, generator=g) + 3.0 * y[:, None]
    >>> ref = shuffled_clustering(x, y, shuffles=3, seed=0)
    >>> ref["snnl"] > class_clustering(x, y)["snnl"], len(ref["snnl_each"])
    (True, 3)
    """
    if shuffles < 1:
        raise ValueError(f"shuffles must be >= 1, got {shuffles}")
    n = labels.shape[0]
    each = [
        class_clustering(
            directions, labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed + k))]
        )
        for k in range(shuffles)
    ]
    snnl = [c["snnl"] for c in each]
    sil = [c["silhouette"] for c in each]
    return {
        "snnl": float(np.mean(snnl)),
        "silhouette": float(np.mean(sil)),
        "snnl_each": snnl,
        "temperature_each": [c["temperature"] for c in each],
        "silhouette_each": sil,
    }
