"""The claims' statistics (snnl.experiments.base) against scipy's t-tests, exact binomial
intervals from beta quantiles, brute-force leave-one-out and hand-computed cases.

Issue 20: the verdicts came from a bare 2-standard-error cut (n = 2 or 3 seeds, where a
95% Student t needs 4.3 to 12.7 standard errors), unpaired comparisons of seed-paired
runs, and collapsed runs dropped from the means.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from reference import interval_verdict
from snnl.experiments import entangle
from snnl.experiments.base import (
    Claim,
    Comparison,
    compare_bootstrap,
    compare_groups,
    compare_paired,
    failure_rate,
)


@pytest.mark.parametrize("expect", ["greater", "less"])
def test_groups_interval_is_welchs(expect):
    rng = np.random.default_rng(3)
    a, b = rng.normal(2.0, 0.5, 4), rng.normal(0.0, 0.2, 6)
    c = compare_groups(a, b, expect=expect)
    ref = stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert (c.interval.low, c.interval.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert c.interval.df == pytest.approx(ref.df, rel=1e-12)
    assert c.verdict == interval_verdict(ci.low, ci.high, expect, 0.0)
    assert c.verdict == ("holds" if expect == "greater" else "does not hold")
    # a sign decision's p-value is the two-sided t-test's
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-10)


def test_paired_interval_is_the_paired_t():
    a = [0.93, 0.91, 0.95, 0.92]
    b = [0.92, 0.915, 0.93, 0.925]
    c = compare_paired(a, b, expect="greater")
    ref = stats.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert (c.interval.low, c.interval.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert c.interval.df == 3 and c.interval.method == "paired t"
    assert c.verdict == interval_verdict(ci.low, ci.high, "greater", 0.0) == "inconclusive"
    assert c.p_value == 1.0  # inconclusive: nothing decided


def test_two_standard_errors_are_not_enough_at_three_seeds():
    """The old rule's case: +3 standard errors with 3 pairs held; t(2) needs 4.30."""
    d = np.array([1.0, 2.0, 3.0])
    se = d.std(ddof=1) / np.sqrt(3)
    shift = 3 * se - d.mean()  # the mean difference is now 3 standard errors
    c = compare_paired(d + shift, [0.0, 0.0, 0.0], expect="greater")
    assert c.interval.estimate == pytest.approx(3 * se)
    assert c.verdict == "inconclusive"
    c = compare_paired(d + 4.4 * se - d.mean(), [0.0] * 3, expect="greater")
    assert c.verdict == "holds"


def test_margin_decides_no_effect_and_min_effect_is_its_old_name():
    a = [0.930, 0.931, 0.929, 0.9305, 0.9295]
    b = [0.9301, 0.9305, 0.9292, 0.9302, 0.9298]
    plain = compare_paired(a, b, expect="greater")
    inside = compare_paired(a, b, expect="greater", margin=0.0025)
    assert plain.verdict == "inconclusive"
    assert inside.verdict == "does not hold" and inside.margin == 0.0025
    d = np.subtract(a, b)
    tost = 2 * max(
        stats.ttest_1samp(d, -0.0025, alternative="greater").pvalue,
        stats.ttest_1samp(d, 0.0025, alternative="less").pvalue,
    )
    assert inside.p_value == pytest.approx(tost, rel=1e-8)
    old = compare_paired(a, b, expect="greater", min_effect=0.0025)
    assert (old.verdict, old.margin) == ("does not hold", 0.0025)
    with pytest.raises(ValueError, match="margin"):
        compare_paired(a, b, expect="greater", margin=-1.0)
    with pytest.raises(ValueError, match="expect"):
        compare_groups(a, b, expect="up")


@pytest.mark.parametrize("a, b", [([0.9], [0.8, 0.7]), ([], []), ([0.9, 0.8], [0.5])])
def test_fewer_than_two_values_per_arm_is_inconclusive(a, b):
    c = compare_groups(a, b, expect="greater")
    assert (c.verdict, c.interval, c.p_value) == ("inconclusive", None, 1.0)
    assert "fewer than two values" in c.note


def test_unpacks_and_indexes_as_verdict_and_note():
    c = compare_groups([0.9, 0.91, 0.92], [0.80, 0.81, 0.82], expect="greater")
    verdict, note = c
    assert (verdict, note) == (c.verdict, c.note) == (c[0], c[1])
    assert verdict == "holds" and "95% CI" in note and "Welch t" in note


def _loo_changes(a, b, paired, expect, margin):
    """Brute force with scipy: does dropping any one value (pair) change the verdict?"""

    def decide(x, y):
        if paired:
            if len(x) < 2:
                return "inconclusive"
            ci = stats.ttest_rel(x, y).confidence_interval(0.95)
        else:
            if min(len(x), len(y)) < 2:
                return "inconclusive"
            ci = stats.ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
        return interval_verdict(ci.low, ci.high, expect, margin)

    full = decide(a, b)
    if paired:
        drops = [(np.delete(a, i), np.delete(b, i)) for i in range(len(a))]
    else:
        drops = [(np.delete(a, i), b) for i in range(len(a))]
        drops += [(a, np.delete(b, j)) for j in range(len(b))]
    return full, any(decide(x, y) != full for x, y in drops)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("paired", [True, False])
def test_fragile_is_leave_one_out(seed, paired):
    rng = np.random.default_rng(seed)
    n = 3 + seed % 4
    b = rng.normal(0.0, 1.0, n)
    a = b + rng.normal(1.0 + seed * 0.3, 0.8, n)
    compare = compare_paired if paired else compare_groups
    c = compare(a, b, expect="greater", margin=0.1)
    full, fragile = _loo_changes(a, b, paired, "greater", 0.1)
    assert c.verdict == full
    assert c.fragile == fragile
    assert ("FRAGILE" in c.note) == fragile


def test_a_clear_effect_over_many_seeds_is_not_fragile():
    b = np.linspace(0.90, 0.91, 10)
    c = compare_paired(b + 0.02 + np.linspace(-1e-3, 1e-3, 10), b, expect="greater")
    assert c.verdict == "holds" and not c.fragile


def _clopper_pearson(k: int, n: int) -> tuple[float, float]:
    low = 0.0 if k == 0 else stats.beta.ppf(0.025, k, n - k + 1)
    high = 1.0 if k == n else stats.beta.ppf(0.975, k + 1, n - k)
    return low, high


@pytest.mark.parametrize("k, n", [(0, 3), (1, 3), (2, 5), (5, 5), (3, 20)])
def test_failure_rate_is_clopper_pearson(k, n):
    r = failure_rate(k, n)
    assert (r.low, r.high) == pytest.approx(_clopper_pearson(k, n), rel=1e-7, abs=1e-12)
    assert r.rate == k / n


def test_failure_rate_input_is_checked():
    with pytest.raises(ValueError, match="failed <= runs"):
        failure_rate(4, 3)
    with pytest.raises(ValueError, match="runs >= 1"):
        failure_rate(0, 0)


def test_failed_runs_count_at_their_measured_value():
    """An arm that collapses once: the all-runs interval includes the collapse, the
    healthy-only one (beside it) does not, and each arm's failure rate is shown."""
    a = [0.94, 0.95, 0.11, 0.945]  # seed 2 collapsed
    b = [0.93, 0.935, 0.93, 0.932]
    ok_a = [True, True, False, True]
    c = compare_paired(a, b, expect="greater", a_ok=ok_a, b_ok=[True] * 4)
    every = stats.ttest_rel(a, b).confidence_interval(0.95)
    keep = [0, 1, 3]
    healthy = stats.ttest_rel([a[i] for i in keep], [b[i] for i in keep])
    assert (c.interval.low, c.interval.high) == pytest.approx((every.low, every.high))
    assert c.healthy is not None
    h = healthy.confidence_interval(0.95)
    assert (c.healthy.interval.low, c.healthy.interval.high) == pytest.approx((h.low, h.high))
    assert c.healthy.verdict == "holds" and c.verdict == "inconclusive"
    assert [(f.failed, f.runs) for f in c.failures] == [(1, 4), (0, 4)]
    assert (c.failures[0].low, c.failures[0].high) == pytest.approx(_clopper_pearson(1, 4))
    assert "healthy runs only: holds" in c.note and "failure rates: a 1/4 failed" in c.note


def test_a_failed_run_without_a_value_is_left_out_and_said_so():
    c = compare_groups(
        [0.9, None, 0.91, 0.92], [0.8, 0.81, 0.79], expect="greater", a_ok=[True, False, True, True]
    )
    ref = stats.ttest_ind([0.9, 0.91, 0.92], [0.8, 0.81, 0.79], equal_var=False)
    assert c.interval.low == pytest.approx(ref.confidence_interval(0.95).low)
    assert "without a measured value" in c.note
    with pytest.raises(ValueError, match="healthy run without a value"):
        compare_groups([0.9, None], [0.8, 0.7], expect="greater")
    with pytest.raises(ValueError, match="a_ok has 1 flags for 2 values"):
        compare_groups([0.9, 0.8], [0.8, 0.7], expect="greater", a_ok=[True])


def test_no_failure_is_the_plain_comparison_with_its_failure_rates():
    a, b = [0.9, 0.91, 0.93], [0.8, 0.82, 0.81]
    plain = compare_paired(a, b, expect="greater")
    assert plain.healthy is None and plain.failures == ()
    flagged = compare_paired(a, b, expect="greater", a_ok=[True] * 3, b_ok=[True] * 3)
    assert flagged.healthy is None and flagged.interval == plain.interval
    assert flagged.verdict == plain.verdict and flagged.fragile == plain.fragile
    # none of 3 failed, and up to 71% could have: the interval says so
    assert [f.text() for f in flagged.failures] == ["0/3 failed [95% CI 0.00, 0.71]"] * 2


def test_bootstrap_comparison_of_a_median():
    rows = np.array([[0.3], [0.5], [0.2], [0.6], [0.4], [0.35], [0.45]])
    c = compare_bootstrap(lambda r: float(np.median(r)), rows, expect="greater")
    assert c.interval.method == "percentile bootstrap" and c.interval.estimate == 0.4
    assert c.verdict == "holds"  # every resample's median is positive
    assert compare_bootstrap(np.median, rows[:1], expect="greater").verdict == "inconclusive"


def _claim(*comparisons: Comparison, verdict: str | None = None) -> Claim:
    v = verdict or comparisons[0].verdict
    return Claim("x", "s", "m", "v", v, "", comparisons)  # type: ignore[arg-type]


def test_claim_p_value_and_fragile():
    strong = compare_groups([0.9, 0.91, 0.92], [0.8, 0.81, 0.82], expect="greater")
    weak = compare_paired([1.0, 2.0, 3.0], [0.5, 1.4, 2.6], expect="greater")
    assert _claim(strong).p_value == strong.p_value
    both = _claim(strong, weak, verdict="holds")
    assert both.p_value == max(strong.p_value, weak.p_value)  # every part must hold
    assert both.fragile == (strong.fragile or weak.fragile)
    assert Claim("x", "s", "m", "v", "inconclusive").p_value == 1.0
    assert Claim("x", "s", "m", "v", "holds").p_value is None  # decided, no test recorded
    with pytest.raises(TypeError, match="Comparison"):
        Claim("x", "s", "m", "v", "holds", "", ("holds",))  # type: ignore[arg-type]
    d = both.to_dict()
    assert d["comparisons"][0]["interval"]["method"] == "Welch t"


def _entangle_results(acc_ent, acc_nor, health_ent):
    runs = [
        {"setting": "normal", "seed": s, "health": "ok", "test_accuracy": v}
        for s, v in enumerate(acc_nor)
    ] + [
        {"setting": "optimal a=0.1", "seed": s, "health": h, "test_accuracy": v}
        for s, (v, h) in enumerate(zip(acc_ent, health_ent, strict=True))
    ]

    def summary(values, health):
        ok = [v for v, h in zip(values, health, strict=True) if h == "ok"]
        acc = {"mean": float(np.mean(ok)), "std": float(np.std(ok, ddof=1)), "n": len(ok)}
        return {"accuracy_healthy": acc if len(ok) > 1 else None}

    return {
        "dataset": "digits",
        "model": "mlp",
        "runs": runs,
        "summary": {
            "normal": summary(acc_nor, ["ok"] * len(acc_nor)),
            "optimal a=0.1": summary(acc_ent, health_ent),
        },
    }


def test_entangle_headline_is_paired_counts_failures_and_states_its_margin():
    """From saved results alone: paired by seed, the collapsed seed at its accuracy."""
    ent, nor = [0.95, 0.12, 0.951, 0.949], [0.93, 0.931, 0.929, 0.93]
    health = ["ok", "collapsed", "ok", "ok"]
    results = _entangle_results(ent, nor, health)
    claim = entangle._accuracy_claim(results, "optimal a=0.1", "entangled")
    (c,) = claim.comparisons
    ci = stats.ttest_rel(ent, nor).confidence_interval(0.95)
    assert (c.interval.low, c.interval.high) == pytest.approx((ci.low, ci.high))
    assert c.margin == entangle.MARGIN == 0.0025 and "0.25 points" in claim.claim
    assert claim.verdict == c.verdict == "inconclusive"
    assert c.healthy.verdict == "holds"  # over the three healthy seeds only
    assert [(f.failed, f.runs) for f in c.failures] == [(1, 4), (0, 4)]
    assert "paired by seed" in claim.setting
    assert "failure rates: entangled 1/4 failed [95% CI 0.01, 0.81], normal 0/4" in claim.note
