"""The contract every experiment of ``snnl reproduce`` follows.

An experiment is one module in ``snnl.experiments`` with:

    NAME: str                      registry key (also the results key and figure prefix)
    TITLE: str                     report section title
    Settings                       a frozen dataclass: everything that determines the run
    settings(config) -> Settings   the settings for a ``ReproduceConfig`` (``--full`` etc.;
                                   :mod:`snnl.experiments.config`)
    run(settings, context) -> dict JSON-serialisable results (may train through the zoo)
    section(results, fig_dir) -> Section    report text and figures, from saved results only
    claims(results) -> list[Claim]          the seed papers' claims it tests, with verdicts

The runner (:mod:`snnl.runner`) saves each experiment's results with one key added,
``"settings"`` (``asdict`` of its Settings; ``run`` must not return that key), and
the report calls ``section`` and ``claims`` on those saved results only, so it can
be rebuilt without retraining (``snnl report DIR``). Results are plain JSON
(numbers, strings, lists, dicts; no NaN: use None). Experiments never import each other: models
that several of them study come from the shared zoo (:mod:`snnl.experiments.zoo`).

Adding an experiment: write the module, then add it to ``REGISTRY`` in
``snnl/experiments/__init__.py`` (docs/developers.md has the recipe).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from scipy.stats import binomtest

from snnl.experiments.config import ReproduceConfig
from snnl.stats import (
    Interval,
    bootstrap_interval,
    decision_p_value,
    paired_interval,
    welch_interval,
)
from snnl.stats import verdict as stats_verdict

if TYPE_CHECKING:  # pragma: no cover
    from snnl.experiments.zoo import Zoo

__all__ = [
    "Section",
    "Claim",
    "Comparison",
    "FailureRate",
    "Context",
    "Experiment",
    "VERDICT_RULE",
    "mean_std",
    "compare_groups",
    "compare_paired",
    "compare_bootstrap",
    "failure_rate",
    "format_mean_std",
    "unhealthy_lines",
]

Verdict = Literal["holds", "does not hold", "inconclusive"]

Direction = Literal["greater", "less"]

#: The rule every verdict of the claims table follows (stated in the report).
VERDICT_RULE = (
    "Each claim's effect (a difference between its arms, in the units of the measure) is "
    "given with a 95% confidence interval over seeds: Student t with Welch-Satterthwaite "
    "degrees of freedom for two independent groups, a paired t over the per-seed "
    "differences where runs pair by seed, a percentile bootstrap for a measure that is not "
    "a mean. Each claim states in advance a no-effect margin (0: any effect counts). A claim "
    "*holds* when the interval lies on the claimed side of zero; it *does not hold* when "
    "it lies on the other side, or inside the no-effect margin; otherwise it is "
    "*inconclusive* (so is a claim with fewer than two values per arm). The adjusted verdict "
    "keeps the raw one only where the decision's p-value, Holm-adjusted over every claim of "
    "the table, is at most 0.05. A verdict is marked *fragile* when leaving out one seed "
    "(value, or pair) changes it. Collapsed or diverged runs count at their measured values "
    "where a claim says so (the healthy-only result beside it, with each arm's failure rate)."
)


@dataclass
class Section:
    """One report section: markdown text and figures (file name in fig_dir, caption)."""

    title: str
    markdown: str
    figures: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    """One row of the report's claims table.

    Attributes:
        claim: what the paper says, in one sentence.
        source: the paper and section (e.g. "Frosst et al. 2019, sec. 4").
        setting: the data and model it was measured on here.
        measured: the measured values, e.g. "0.962 +- 0.003 vs 0.958 +- 0.004 (3 seeds)".
        verdict: "holds", "does not hold" or "inconclusive".
        note: why, in a few words (the rule's numbers, or what made it inconclusive).
        comparisons: the tests behind the verdict (:func:`compare_groups`,
            :func:`compare_paired`, :func:`compare_bootstrap`); several when the claim
            holds only if all of them hold. Empty: no test recorded.
    """

    claim: str
    source: str
    setting: str
    measured: str
    verdict: Verdict
    note: str = ""
    comparisons: tuple[Comparison, ...] = ()

    def __post_init__(self) -> None:
        if self.verdict not in ("holds", "does not hold", "inconclusive"):
            raise ValueError(f"unknown verdict {self.verdict!r}")
        if not all(isinstance(c, Comparison) for c in self.comparisons):
            raise TypeError("Claim.comparisons must hold Comparison objects")

    @property
    def p_value(self) -> float | None:
        """The p-value of the verdict's decision (for Holm across the table): 1 when
        inconclusive; when it holds, the largest of its comparisons' (all must be decided:
        an intersection-union test); when it does not hold, the smallest of its decided
        comparisons'; None when the verdict is decided but no comparison was recorded."""
        if self.verdict == "inconclusive":
            return 1.0
        if not self.comparisons:
            return None
        if self.verdict == "holds":
            return max(c.p_value for c in self.comparisons)
        return min((c.p_value for c in self.comparisons), default=1.0)

    @property
    def fragile(self) -> bool:
        """Whether leaving out one seed changes any of its comparisons' verdicts."""
        return any(c.fragile for c in self.comparisons)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["comparisons"] = [c.to_dict() for c in self.comparisons]
        return out


@dataclass
class Context:
    """What ``run`` gets besides its settings: the reproduce config, the output folder,
    and the shared model zoo (trained runs, reused across experiments and calls)."""

    config: ReproduceConfig
    out: Path
    zoo: Zoo

    def log(self, message: str) -> None:
        print(f"[snnl]   {message}", flush=True)


class Experiment(Protocol):
    """The shape of an experiment module (for type checkers and readers)."""

    NAME: str
    TITLE: str

    def settings(self, config: ReproduceConfig) -> Any: ...

    def run(self, settings: Any, context: Context) -> dict[str, Any]: ...

    def section(self, results: dict[str, Any], fig_dir: Path) -> Section: ...

    def claims(self, results: dict[str, Any]) -> list[Claim]: ...


# ----------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (0 for one value) of ``values``.

    >>> mean_std([1.0, 2.0, 3.0])
    {'mean': 2.0, 'std': 1.0, 'n': 3, 'values': [1.0, 2.0, 3.0]}
    """
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "values": values}


def format_mean_std(stats: dict[str, Any], digits: int = 4) -> str:
    """``"mean +- std (n)"`` of a :func:`mean_std` dict.

    >>> format_mean_std(mean_std([0.5, 0.7]), 2)
    '0.60 +- 0.14 (n=2)'
    """
    return f"{stats['mean']:.{digits}f} +- {stats['std']:.{digits}f} (n={stats['n']})"


def unhealthy_lines(runs: Sequence[dict[str, Any]], left_out_of: str) -> list[str]:
    """Markdown lines listing the runs (records with setting, seed, health and
    health_reasons) whose health is not "ok", or none when all are healthy.

    >>> unhealthy_lines([{"setting": "a=10", "seed": 0, "health": "collapsed",
    ...                   "health_reasons": ["at its bound"]}], "every mean")[-1]
    '- a=10, seed 0: **collapsed** (at its bound)'
    """
    bad = [r for r in runs if r["health"] != "ok"]
    if not bad:
        return []
    lines = [
        "",
        f"Runs that were not healthy (left out of {left_out_of}; the claims' 'all runs' "
        "comparisons count them at their measured value: a run stopped at a non-finite "
        "loss at the accuracy of the parameters it stopped with, the failing step not "
        "taken):",
        "",
    ]
    return lines + [
        f"- {r['setting']}, seed {r['seed']}: **{r['health']}** ({'; '.join(r['health_reasons'])})"
        for r in bad
    ]


@dataclass(frozen=True)
class FailureRate:
    """The share of an arm's runs that collapsed or diverged, with its exact
    (Clopper-Pearson) 95% interval (``scipy.stats.binomtest(...).proportion_ci``)."""

    failed: int
    runs: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.failed / self.runs

    def text(self) -> str:
        return f"{self.failed}/{self.runs} failed [95% CI {self.low:.2f}, {self.high:.2f}]"


def failure_rate(failed: int, runs: int) -> FailureRate:
    """``failed`` of ``runs`` runs, with the Clopper-Pearson 95% interval of the rate.

    >>> failure_rate(0, 3).text()
    '0/3 failed [95% CI 0.00, 0.71]'
    """
    if runs < 1 or not 0 <= failed <= runs:
        raise ValueError(f"need 0 <= failed <= runs and runs >= 1, got {failed} of {runs}")
    ci = binomtest(failed, runs).proportion_ci(confidence_level=0.95, method="exact")
    return FailureRate(failed, runs, float(ci.low), float(ci.high))


@dataclass(frozen=True)
class Comparison:
    """The test behind a claim's verdict: the effect (difference of the arms) with its
    95% interval (:mod:`snnl.stats`), the no-effect margin stated in advance, the verdict
    from the interval (:func:`snnl.stats.verdict`), its decision p-value (for Holm) and
    whether leaving one seed (value, or pair) out changes the verdict (``fragile``).

    Unpacks (and indexes) as ``verdict, note``, what ``compare_groups`` returned before.
    ``healthy``: where failed runs count in ``interval`` (at their measured values), the
    same comparison over the healthy runs only; ``failures``: each arm's failure rate.
    """

    verdict: Verdict
    note: str
    expect: Direction
    margin: float
    interval: Interval | None
    p_value: float
    fragile: bool
    label: str = ""
    healthy: Comparison | None = None
    failures: tuple[FailureRate, ...] = ()

    def __iter__(self) -> Iterator[str]:
        return iter((self.verdict, self.note))

    def __getitem__(self, index: int) -> str:
        return (self.verdict, self.note)[index]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval"] = None if self.interval is None else self.interval.to_dict()
        out["healthy"] = None if self.healthy is None else self.healthy.to_dict()
        return out


def _interval(a: np.ndarray, b: np.ndarray, paired: bool) -> Interval | None:
    if paired:
        return paired_interval(a, b) if a.size >= 2 else None
    return welch_interval(a, b) if min(a.size, b.size) >= 2 else None


def _judge(iv: Interval | None, expect: Direction, margin: float) -> tuple[Verdict, float]:
    if iv is None:
        return "inconclusive", 1.0
    v = stats_verdict(iv, expect=expect, margin=margin)
    return v, decision_p_value(iv, expect=expect, margin=margin)  # type: ignore[return-value]


def _is_fragile(a: np.ndarray, b: np.ndarray, paired: bool, expect: Direction,
                margin: float, verdict: str) -> bool:  # fmt: skip
    """Does leaving out one value (one pair, for paired values) change the verdict?"""
    if paired:
        drops = [(np.delete(a, i), np.delete(b, i)) for i in range(a.size)]
    else:
        drops = [(np.delete(a, i), b) for i in range(a.size)]
        drops += [(a, np.delete(b, j)) for j in range(b.size)]
    return any(_judge(_interval(x, y, paired), expect, margin)[0] != verdict for x, y in drops)


def _note(iv: Interval | None, margin: float, n: str) -> str:
    if iv is None:
        return f"fewer than two values per arm ({n}): no interval"
    df = "" if iv.df is None else f", df {iv.df:.3g}"
    return (
        f"difference {iv.estimate:+.4g}, 95% CI [{iv.low:+.4g}, {iv.high:+.4g}] "
        f"({iv.method}{df}), margin {margin:g}"
    )


def _compare(a: Sequence[float], b: Sequence[float], paired: bool, expect: str,
             margin: float, label: str) -> Comparison:  # fmt: skip
    if expect not in ("greater", "less"):
        raise ValueError(f"expect must be 'greater' or 'less', got {expect!r}")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if paired and x.size != y.size:
        raise ValueError(f"paired values need equal lengths, got {x.size} and {y.size}")
    iv = _interval(x, y, paired)
    verdict, p = _judge(iv, expect, margin)  # type: ignore[arg-type]
    fragile = _is_fragile(x, y, paired, expect, margin, verdict)  # type: ignore[arg-type]
    n = f"{x.size} pairs" if paired else f"{x.size} and {y.size}"
    note = _note(iv, margin, n) + ("; FRAGILE: one seed left out changes it" if fragile else "")
    return Comparison(verdict, note, expect, margin, iv, p, fragile, label)  # type: ignore[arg-type]


def _with_failures(a: Sequence[float | None], b: Sequence[float | None],
                   a_ok: Sequence[bool] | None, b_ok: Sequence[bool] | None, paired: bool,
                   expect: str, margin: float, label: str,
                   arms: tuple[str, str]) -> Comparison:  # fmt: skip
    """Failed runs count: the comparison over every run with a measured value, the
    healthy-only one beside it, and each arm's failure rate."""
    oks = [[True] * len(a) if a_ok is None else list(a_ok),
           [True] * len(b) if b_ok is None else list(b_ok)]  # fmt: skip
    for vals, ok, arm in ((a, oks[0], "a"), (b, oks[1], "b")):
        if len(ok) != len(vals):
            raise ValueError(f"{arm}_ok has {len(ok)} flags for {len(vals)} values")
        if any(v is None and k for v, k in zip(vals, ok, strict=True)):
            raise ValueError(f"{arm} has a healthy run without a value")
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
        idx = range(len(a))
        every = [i for i in idx if a[i] is not None and b[i] is not None]
        good = [i for i in every if oks[0][i] and oks[1][i]]
        pick = [([a[i] for i in s], [b[i] for i in s]) for s in (every, good)]
    else:
        pick = [
            ([v for v in a if v is not None], [v for v in b if v is not None]),
            ([v for v, k in zip(a, oks[0], strict=True) if k],
             [v for v, k in zip(b, oks[1], strict=True) if k]),
        ]  # fmt: skip
    failed = [ok.count(False) for ok in oks]
    flagged = a_ok is not None or b_ok is not None
    rates: tuple[FailureRate, ...] = ()
    if oks[0] and oks[1]:  # an arm without runs has no rate
        rates = tuple(failure_rate(f, len(ok)) for f, ok in zip(failed, oks, strict=True))
    rates_text = (
        f"failure rates: {arms[0]} {rates[0].text()}, {arms[1]} {rates[1].text()}" if rates else ""
    )
    healthy = _compare(*pick[1], paired, expect, margin, label)  # type: ignore[arg-type]
    if failed == [0, 0]:
        if not flagged or not rates:
            return healthy
        return replace(healthy, note=f"{healthy.note}; {rates_text}", failures=rates)
    every_run = _compare(*pick[0], paired, expect, margin, label)  # type: ignore[arg-type]
    unmeasured = sum(v is None for v in (*a, *b))
    note = (
        f"all runs (failed ones at their measured value): {every_run.note}; healthy runs "
        f"only: {healthy.verdict}, {healthy.note}; {rates_text}"
        + (f"; {unmeasured} failed run(s) without a measured value left out" if unmeasured else "")
    )
    return replace(every_run, note=note, healthy=healthy, failures=rates)


def compare_groups(
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    expect: str,
    margin: float = 0.0,
    min_effect: float | None = None,
    label: str = "",
    a_ok: Sequence[bool] | None = None,
    b_ok: Sequence[bool] | None = None,
    arms: tuple[str, str] = ("a", "b"),
) -> Comparison:
    """Is ``mean(a) - mean(b)`` greater (or less) than 0, for two independent groups?

    The difference with its Welch t 95% interval (:func:`snnl.stats.welch_interval`,
    Welch-Satterthwaite df) and the verdict of :data:`VERDICT_RULE`:
    ``margin`` (stated in advance, in the values' units) is the no-effect margin, an
    interval inside ``(-margin, margin)`` does not hold; ``min_effect`` is its old name.
    Fewer than two values in an arm: inconclusive. ``fragile``: leaving out any one value
    changes the verdict. With health flags ``a_ok`` / ``b_ok`` (False: the run collapsed
    or diverged; its value may then be None), failed runs count at their measured values
    and ``healthy`` holds the comparison without them, ``failures`` each arm's rate
    (named ``arms`` in the note).

    Unpacks as ``verdict, note``.

    >>> compare_groups([0.9, 0.91, 0.92], [0.80, 0.81, 0.82], expect="greater").verdict
    'holds'
    >>> verdict, note = compare_groups([0.9, 0.95], [0.91, 0.93], expect="greater")
    >>> verdict
    'inconclusive'
    """
    margin = margin if min_effect is None else max(margin, min_effect)
    return _with_failures(a, b, a_ok, b_ok, False, expect, margin, label, arms)


def compare_paired(
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    expect: str,
    margin: float = 0.0,
    min_effect: float | None = None,
    label: str = "",
    a_ok: Sequence[bool] | None = None,
    b_ok: Sequence[bool] | None = None,
    arms: tuple[str, str] = ("a", "b"),
) -> Comparison:
    """Is ``a - b`` greater (or less) than 0, for values paired by seed (same init, data)?

    The mean of the per-pair differences with its paired t 95% interval (``n - 1`` df,
    :func:`snnl.stats.paired_interval`); otherwise as :func:`compare_groups` (a pair
    counts as healthy when both runs are; ``fragile`` leaves out one pair at a time).

    >>> c = compare_paired([1.0, 2.0, 3.0], [0.5, 1.4, 2.6], expect="greater")
    >>> c.verdict, round(c.interval.low, 3), round(c.interval.high, 3)
    ('holds', 0.252, 0.748)
    """
    margin = margin if min_effect is None else max(margin, min_effect)
    return _with_failures(a, b, a_ok, b_ok, True, expect, margin, label, arms)


def compare_bootstrap(
    statistic: Callable[[np.ndarray], float],
    data: Sequence[Sequence[float]] | np.ndarray,
    *,
    expect: str,
    margin: float = 0.0,
    label: str = "",
    resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """A claim on a measure that is not a mean of independent values: ``statistic(rows)``
    (an effect, 0 = none) with a seeded percentile bootstrap over the rows of ``data``
    (:func:`snnl.stats.bootstrap_interval`; rows = the independent units, e.g. seeds).
    ``fragile``: leaving out one row changes the verdict (each refit with
    ``resamples // 4`` resamples).

    >>> rows = [[1.0], [2.0], [3.0], [4.0], [5.0]]
    >>> c = compare_bootstrap(lambda r: float(np.median(r)), rows, expect="greater")
    >>> c.verdict, c.interval.method
    ('holds', 'percentile bootstrap')
    """
    if expect not in ("greater", "less"):
        raise ValueError(f"expect must be 'greater' or 'less', got {expect!r}")
    rows = np.asarray(data, dtype=np.float64)
    if rows.shape[0] < 2:
        iv: Interval | None = None
    else:
        iv = bootstrap_interval(statistic, rows, resamples=resamples, seed=seed)
    verdict, p = _judge(iv, expect, margin)  # type: ignore[arg-type]
    fragile = rows.shape[0] >= 2 and any(
        _judge(
            bootstrap_interval(statistic, np.delete(rows, i, axis=0), resamples=resamples // 4,
                               seed=seed) if rows.shape[0] >= 3 else None,
            expect, margin,  # type: ignore[arg-type]
        )[0] != verdict
        for i in range(rows.shape[0])
    )  # fmt: skip
    note = _note(iv, margin, f"{rows.shape[0]} rows")
    note += "; FRAGILE: one row left out changes it" if fragile else ""
    return Comparison(verdict, note, expect, margin, iv, p, fragile, label)  # type: ignore[arg-type]
