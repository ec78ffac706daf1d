"""Intervals, verdicts and multiplicity for the claims table.

A claim compares two arms (entangled vs normal, ...). Its effect is a difference
with a 95% confidence interval:

* :func:`welch_interval`: two independent groups, ``mean(a) - mean(b)`` with
  Student's t at the Welch-Satterthwaite degrees of freedom
  ``df = (va/na + vb/nb)^2 / ((va/na)^2/(na-1) + (vb/nb)^2/(nb-1))``;
* :func:`paired_interval`: runs paired by seed, the mean of the per-seed
  differences with t at ``n - 1`` degrees of freedom;
* :func:`bootstrap_interval`: any statistic that is not a mean (a rank
  correlation, a median), a seeded percentile bootstrap.

:func:`verdict` reads the interval against the claimed direction and a
no-effect margin stated in advance; :func:`holm` adjusts the verdicts' p-values
across the whole table (Holm 1979, step-down, controls the family-wise error).

>>> iv = paired_interval([0.93, 0.94, 0.95], [0.92, 0.925, 0.94])
>>> round(iv.estimate, 4), iv.df, iv.method
(0.0117, 2.0, 'paired t')
>>> round(iv.low, 4), round(iv.high, 4), verdict(iv, expect="greater", margin=0.005)
(0.0045, 0.0188, 'holds')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as _scipy_stats

__all__ = [
    "Interval",
    "welch_interval",
    "paired_interval",
    "bootstrap_interval",
    "verdict",
    "decision_p_value",
    "holm",
    "seeds_for_half_width",
    "smallest_detectable_effect",
    "spearman",
    "VERDICTS",
]

VERDICTS = ("holds", "does not hold", "inconclusive")
Direction = Literal["greater", "less"]


@dataclass(frozen=True)
class Interval:
    """An effect (difference of arms) with its two-sided confidence interval.

    ``df`` is None for the bootstrap; ``p_value`` is the two-sided p-value of
    "the effect is 0" (for the bootstrap, twice the smaller tail share at 0).
    """

    estimate: float
    low: float
    high: float
    level: float
    df: float | None
    n: tuple[int, ...]
    method: str
    standard_error: float
    p_value: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["n"] = list(self.n)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in out.items()}  # fmt: skip


def _clean(name: str, values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite values: {arr.tolist()}")
    return arr


def _t_interval(
    estimate: float, se: float, df: float, level: float, n: tuple[int, ...], method: str
) -> Interval:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if se == 0.0:
        p = 1.0 if estimate == 0.0 else 0.0
        return Interval(estimate, estimate, estimate, level, df, n, method, 0.0, p)
    q = float(_scipy_stats.t.ppf(0.5 + level / 2, df))
    p = float(2 * _scipy_stats.t.sf(abs(estimate) / se, df))
    return Interval(estimate, estimate - q * se, estimate + q * se, level, df, n, method, se, p)


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """``mean(a) - mean(b)`` of two independent groups with a Welch t interval.

    >>> iv = welch_interval([1.0, 2.0, 3.0], [0.0, 0.5, 1.0])
    >>> round(iv.estimate, 3), round(iv.df, 3), round(iv.low, 3), round(iv.high, 3)
    (1.5, 2.941, -0.578, 3.578)
    """
    x, y = _clean("a", a), _clean("b", b)
    if x.size < 2 or y.size < 2:
        raise ValueError(f"a Welch interval needs >= 2 values per group, got {x.size} and {y.size}")
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    if se == 0.0:
        df = float(x.size + y.size - 2)
    else:
        df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    est = float(x.mean() - y.mean())
    return _t_interval(est, se, float(df), level, (x.size, y.size), "Welch t")


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of the paired differences ``a_i - b_i`` with a t interval (``n - 1`` df)."""
    x, y = _clean("a", a), _clean("b", b)
    if x.size != y.size:
        raise ValueError(f"paired values need equal lengths, got {x.size} and {y.size}")
    if x.size < 2:
        raise ValueError(f"a paired interval needs >= 2 pairs, got {x.size}")
    d = x - y
    se = float(d.std(ddof=1) / math.sqrt(d.size))
    return _t_interval(float(d.mean()), se, float(d.size - 1), level, (d.size,), "paired t")


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    data: np.ndarray,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Seeded percentile bootstrap of ``statistic`` over the rows of ``data`` (resampled
    with replacement), for measures that are not means (rank correlations, medians).

    >>> rows = np.array([[1.0], [2.0], [3.0], [4.0]])
    >>> iv = bootstrap_interval(lambda r: float(np.median(r)), rows, resamples=500)
    >>> iv.method, iv.estimate, 1.0 <= iv.low <= iv.high <= 4.0
    ('percentile bootstrap', 2.5, True)
    """
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.shape[0] < 2:
        raise ValueError(f"a bootstrap needs >= 2 rows, got {arr.shape[0]}")
    rng = np.random.default_rng(seed)
    est = float(statistic(arr))
    draws = np.array(
        [statistic(arr[rng.integers(0, arr.shape[0], arr.shape[0])]) for _ in range(resamples)],
        dtype=np.float64,
    )
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        raise ValueError("every bootstrap resample gave a non-finite statistic")
    low, high = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    tail = min(np.mean(draws <= 0.0), np.mean(draws >= 0.0))
    p = float(min(1.0, 2 * tail))
    return Interval(est, float(low), float(high), level, None, (arr.shape[0],),
                    "percentile bootstrap", float(draws.std(ddof=1)), p)  # fmt: skip


def verdict(interval: Interval, *, expect: Direction, margin: float = 0.0) -> str:
    """The verdict a claim's interval supports.

    * **holds**: the interval lies on the claimed side of zero;
    * **does not hold**: it lies on the other side, or inside the no-effect margin
      ``(-margin, margin)`` (the effect is absent to within what the claim means);
    * **inconclusive**: otherwise.

    >>> iv = welch_interval([0.1, 0.2, 0.15], [0.0, 0.05, 0.02])
    >>> verdict(iv, expect="greater"), verdict(iv, expect="less")
    ('holds', 'does not hold')
    """
    if expect not in ("greater", "less"):
        raise ValueError(f"expect must be 'greater' or 'less', got {expect!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    low, high = (interval.low, interval.high) if expect == "greater" else (
        -interval.high, -interval.low)  # fmt: skip
    if low > 0:
        return "holds"
    if high < 0 or (margin > 0 and -margin < low and high < margin):
        return "does not hold"
    return "inconclusive"


def decision_p_value(interval: Interval, *, expect: Direction, margin: float = 0.0) -> float:
    """The two-sided-scale p-value behind :func:`verdict`'s decision (for :func:`holm`).

    A sign decision ("holds", or "does not hold" by the other sign) has the interval's
    two-sided p-value of zero effect; an equivalence decision (inside the margin) has
    twice the larger of the two one-sided p-values of TOST (t intervals only);
    "inconclusive" has 1.
    """
    v = verdict(interval, expect=expect, margin=margin)
    if v == "inconclusive":
        return 1.0
    sign_side = interval.low > 0 or interval.high < 0
    if sign_side or interval.df is None or interval.standard_error == 0.0:
        return interval.p_value if sign_side else 0.0
    se, df, est = interval.standard_error, interval.df, interval.estimate
    p_low = float(_scipy_stats.t.sf((est + margin) / se, df))  # H0: effect <= -margin
    p_high = float(_scipy_stats.t.cdf((est - margin) / se, df))  # H0: effect >= margin
    return min(1.0, 2 * max(p_low, p_high))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given).

    ``p_(i)`` sorted ascending becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``.

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return []
    if np.any((p < 0) | (p > 1) | ~np.isfinite(p)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return [round(float(v), 12) for v in adjusted]


def seeds_for_half_width(sd: float, half_width: float, level: float = 0.95) -> int:
    """Smallest n (>= 2) whose t interval of a mean has half-width <= ``half_width``
    for a per-seed standard deviation ``sd`` (of the paired differences).

    >>> seeds_for_half_width(0.005, 0.005)
    7
    """
    if sd < 0 or half_width <= 0:
        raise ValueError(f"need sd >= 0 and half_width > 0, got {sd} and {half_width}")
    n = 2
    while float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n) > half_width:
        n += 1
        if n > 100_000:
            break
    return n


def smallest_detectable_effect(sd: float, n: int, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest true paired effect that ``n`` seeds detect with ``power`` at ``level``
    (two-sided): ``(t_{1-a/2, n-1} + t_{power, n-1}) sd / sqrt(n)``.

    >>> round(smallest_detectable_effect(1.0, 10), 3)
    0.995
    """
    if n < 2:
        raise ValueError(f"need n >= 2, got {n}")
    df = n - 1
    q = float(_scipy_stats.t.ppf(0.5 + level / 2, df) + _scipy_stats.t.ppf(power, df))
    return q * sd / math.sqrt(n)


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Spearman's rank correlation of the pairs where both values exist
    (:func:`scipy.stats.spearmanr`: Pearson's r of the ranks, ties at their mean rank).

    None where it is undefined: fewer than 3 complete pairs, or either side constant.

    >>> spearman([1, 2, 3, 4], [10, 30, 20, 40]), spearman([1, 2, None, 3], [3, 2, 9, 1])
    (0.8, -1.0)
    >>> spearman([1, 2, 3], [5, 5, 5]) is None
    True
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None]
    if len(pairs) < 3:
        return None
    a, b = (np.asarray(v, dtype=np.float64) for v in zip(*pairs, strict=True))
    if np.all(a == a[0]) or np.all(b == b[0]):
        return None
    return round(float(_scipy_stats.spearmanr(a, b).statistic), 12)
