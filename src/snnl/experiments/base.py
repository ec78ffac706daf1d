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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from snnl.experiments.config import ReproduceConfig

if TYPE_CHECKING:  # pragma: no cover
    from snnl.experiments.zoo import Zoo

__all__ = [
    "Section",
    "Claim",
    "Context",
    "Experiment",
    "VERDICT_RULE",
    "mean_std",
    "compare_groups",
    "compare_paired",
    "format_mean_std",
    "unhealthy_lines",
]

Verdict = Literal["holds", "does not hold", "inconclusive"]

#: The rule every verdict of the claims table follows (stated in the report).
VERDICT_RULE = (
    "A claim *holds* when the measured difference points the claimed way and is larger "
    "than twice its standard error (over seeds; Welch's standard error for two groups, "
    "the standard error of the per-seed differences for paired runs); it *does not hold* "
    "when the difference is larger than twice its standard error the other way, or when "
    "the claimed effect is absent (|difference| below twice its standard error) although "
    "the standard error is small enough to have seen the claimed effect size; otherwise it "
    "is *inconclusive* (including: fewer than two seeds, or runs that were not healthy)."
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
    """

    claim: str
    source: str
    setting: str
    measured: str
    verdict: Verdict
    note: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in ("holds", "does not hold", "inconclusive"):
            raise ValueError(f"unknown verdict {self.verdict!r}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


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
    lines = ["", f"Runs that were not healthy (left out of {left_out_of}):", ""]
    return lines + [
        f"- {r['setting']}, seed {r['seed']}: **{r['health']}** ({'; '.join(r['health_reasons'])})"
        for r in bad
    ]


def _verdict(diff: float, se: float, n_min: int, expect: str, min_effect: float) -> tuple[str, str]:
    if expect not in ("greater", "less"):
        raise ValueError(f"expect must be 'greater' or 'less', got {expect!r}")
    if n_min < 2:
        return "inconclusive", "fewer than two seeds: no standard error"
    signed = diff if expect == "greater" else -diff
    note = f"difference {diff:+.4g}, standard error {se:.3g}"
    if se == 0.0:
        se = 1e-12
    if signed > 2 * se:
        return "holds", note
    if signed < -2 * se:
        return "does not hold", note + " (the other way)"
    if min_effect > 0 and 2 * se < min_effect:
        return "does not hold", note + f" (no effect of the claimed size {min_effect:g})"
    return "inconclusive", note


def compare_groups(
    a: Sequence[float], b: Sequence[float], *, expect: str, min_effect: float = 0.0
) -> tuple[Verdict, str]:
    """Verdict on "mean(a) is greater (or less) than mean(b)" for independent groups.

    Welch's standard error ``sqrt(s_a^2/n_a + s_b^2/n_b)``; see :data:`VERDICT_RULE`.
    ``min_effect``: the smallest difference the claim means (0: any difference);
    with it, a precise null result is "does not hold" rather than "inconclusive".

    >>> compare_groups([0.9, 0.91, 0.92], [0.80, 0.81, 0.82], expect="greater")[0]
    'holds'
    >>> compare_groups([0.9, 0.95], [0.91, 0.93], expect="greater")[0]
    'inconclusive'
    """
    sa, sb = mean_std(a), mean_std(b)
    se = math.sqrt(sa["std"] ** 2 / sa["n"] + sb["std"] ** 2 / sb["n"])
    return _verdict(sa["mean"] - sb["mean"], se, min(sa["n"], sb["n"]), expect, min_effect)  # type: ignore[return-value]


def compare_paired(
    a: Sequence[float], b: Sequence[float], *, expect: str, min_effect: float = 0.0
) -> tuple[Verdict, str]:
    """Verdict on "a is greater (or less) than b" for paired values (same seed).

    Standard error of the differences ``s_d / sqrt(n)``; see :data:`VERDICT_RULE`.

    >>> compare_paired([1.0, 2.0, 3.0], [0.5, 1.4, 2.6], expect="greater")[0]
    'holds'
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    d = mean_std([x - y for x, y in zip(a, b, strict=True)])
    se = d["std"] / math.sqrt(d["n"])
    return _verdict(d["mean"], se, d["n"], expect, min_effect)  # type: ignore[return-value]
