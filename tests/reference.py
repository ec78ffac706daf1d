"""Independent float64 reference for the SNNL: a plain loop over anchors, straight from eq. 1."""

from __future__ import annotations

import math

import numpy as np


def snnl_reference(x, y, temperature: float, distance: str = "euclidean") -> np.ndarray:
    """Per-anchor SNNL in float64 (NaN where the anchor has no positive).

    Uses mpmath-free log-sum-exp over explicit pairwise distances, computed as
    sums of squared differences (no |a|^2 + |b|^2 - 2ab expansion).
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y)
    n = len(x)
    if distance == "cosine":
        norms = np.sqrt((x * x).sum(1))
        u = x / np.maximum(norms, 1e-12)[:, None]
    out = np.full(n, math.nan)
    for i in range(n):
        num, den = [], []
        for j in range(n):
            if j == i:
                continue
            if distance == "euclidean":
                d = float(((x[i] - x[j]) ** 2).sum())
            else:
                d = 1.0 - float((u[i] * u[j]).sum())
            den.append(-d / temperature)
            if y[j] == y[i]:
                num.append(-d / temperature)
        if not num:
            continue
        out[i] = _lse(den) - _lse(num)
    return out


def _lse(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def snnl_reference_mean(x, y, temperature: float, distance: str = "euclidean") -> float:
    return float(np.nanmean(snnl_reference(x, y, temperature, distance)))
