"""The one independent float64 reference for the SNNL (eq. 1) and SNNL* (eq. 2) in tests.

Written straight from the formulas, sharing nothing with the package: explicit pairwise
differences (no |a|^2 + |b|^2 - 2ab expansion, no centring, no blocks), log-sum-exp over
explicit sets, and for eq. 2 a dense scan over log T followed by scipy's bounded Brent.

- :func:`snnl_reference` / :func:`snnl_reference_mean`: a plain loop over anchors;
- :func:`dense_snnl`: the same formula as dense torch float64 (differentiable with
  respect to the features and the temperature, for gradient references);
- :func:`snnl_curve`: vectorised numpy float64 at many temperatures;
- :func:`snnl_star_reference`: (T*, SNNL*) by dense scan + Brent.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp


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


def _distances_np(x, distance: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if distance == "euclidean":
        return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    u = x / np.maximum(np.sqrt((x * x).sum(1)), 1e-12)[:, None]
    return 1.0 - (u[:, None, :] * u[None, :, :]).sum(-1)


def dense_snnl(
    x: torch.Tensor,
    y: torch.Tensor,
    t,
    distance: str = "euclidean",
    reduction: str = "mean",
) -> torch.Tensor:
    """Eq. 1 as dense torch (in x's dtype; pass float64): explicit pairwise differences
    and torch.logsumexp, differentiable in ``x`` and a tensor ``t``. ``reduction``:
    "mean"/"sum" over anchors with a positive, or "none" (N,) with NaN elsewhere."""
    n = x.shape[0]
    x = x.reshape(n, -1)
    if distance == "euclidean":
        d = sum((x[:, k, None] - x[None, :, k]) ** 2 for k in range(x.shape[1]))  # (N, N)
    else:
        u = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        d = 1.0 - sum(u[:, k, None] * u[None, :, k] for k in range(x.shape[1]))
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    pos = (y[:, None] == y[None, :]) & ~eye
    valid = pos.any(1)
    logits = -d / t
    ninf = torch.tensor(-math.inf, dtype=logits.dtype, device=x.device)
    den = torch.logsumexp(torch.where(eye, ninf, logits)[valid], 1)
    num = torch.logsumexp(torch.where(pos, logits, ninf)[valid], 1)
    per = den - num
    if reduction == "mean":
        return per.mean()
    if reduction == "sum":
        return per.sum()
    out = torch.full((n,), math.nan, dtype=per.dtype, device=x.device)
    out[valid] = per
    return out


def snnl_curve(x, y, temperatures, distance: str = "euclidean") -> np.ndarray:
    """Vectorised float64 SNNL (mean over anchors with a positive) at many temperatures."""
    y = np.asarray(y)
    d = _distances_np(x, distance)
    n = len(d)
    eye = np.eye(n, dtype=bool)
    pos = (y[:, None] == y[None, :]) & ~eye
    valid = pos.any(1)
    out = []
    for t in np.asarray(temperatures, dtype=np.float64):
        logits = -d / t
        den = logsumexp(np.where(eye, -np.inf, logits), axis=1)
        num = logsumexp(np.where(pos, logits, -np.inf), axis=1)
        out.append((den - num)[valid].mean())
    return np.asarray(out)


def snnl_star_reference(
    x, y, distance: str = "euclidean", log_range: tuple[float, float] | None = None
) -> tuple[float, float]:
    """(T*, SNNL*): a dense scan of 40 points per unit of log T, then scipy's bounded Brent
    (xatol 1e-10) between the best point's neighbours; all float64.

    ``log_range``: the scan's (log T_low, log T_high); default from the smallest nonzero
    and the largest pairwise distance, 8 units of log T beyond each.
    """
    d = _distances_np(x, distance)
    if log_range is None:
        nonzero = d[d > 0]
        log_range = (math.log(nonzero.min()) - 8.0, math.log(nonzero.max()) + 8.0)
    us = np.linspace(*log_range, int((log_range[1] - log_range[0]) * 40) + 1)
    values = snnl_curve(x, y, np.exp(us), distance)
    k = int(np.argmin(values))
    res = minimize_scalar(
        lambda u: float(snnl_curve(x, y, [math.exp(u)], distance)[0]),
        bounds=(us[max(k - 1, 0)], us[min(k + 1, len(us) - 1)]),
        method="bounded",
        options={"xatol": 1e-10},
    )
    if res.fun > values[k]:
        return float(math.exp(us[k])), float(values[k])
    return float(math.exp(res.x)), float(res.fun)


def interval_verdict(low: float, high: float, expect: str, margin: float) -> str:
    """The claims' verdict rule (issue 20) written out on a 95% interval's ends: holds on
    the claimed side of 0, does not hold on the other side or inside (-margin, margin),
    inconclusive otherwise."""
    if expect == "less":
        low, high = -high, -low
    if low > 0:
        return "holds"
    if high < 0 or (margin > 0 and -margin < low and high < margin):
        return "does not hold"
    return "inconclusive"
