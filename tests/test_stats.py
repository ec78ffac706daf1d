"""snnl.stats against scipy's tests and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from snnl.stats import (
    bootstrap_interval,
    decision_p_value,
    holm,
    paired_interval,
    seeds_for_half_width,
    smallest_detectable_effect,
    verdict,
    welch_interval,
)


def test_welch_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 2, 5), rng.normal(0, 0.5, 9)
    iv = welch_interval(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert iv.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert (iv.low, iv.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert iv.df == pytest.approx(ref.df, rel=1e-12)


def test_paired_matches_scipy():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 6)
    b = a + rng.normal(0.3, 0.1, 6)
    iv = paired_interval(a, b)
    ref = stats.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert (iv.low, iv.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert iv.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert iv.df == 5


def test_t_quantile_needs_df_not_two_standard_errors():
    # n = 3 paired seeds: the 95% interval is 4.30 standard errors wide each side
    iv = paired_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    se = 1.0 / math.sqrt(3)
    assert iv.high - iv.estimate == pytest.approx(4.302652729 * se, rel=1e-8)


def test_verdict_rule_by_hand():
    def iv(low, high):
        return welch_interval([0.0, 1.0], [0.0, 1.0]).__class__(
            (low + high) / 2, low, high, 0.95, 4.0, (3, 3), "t", (high - low) / 5, 0.5
        )

    assert verdict(iv(0.1, 0.5), expect="greater") == "holds"
    assert verdict(iv(-0.5, -0.1), expect="greater") == "does not hold"
    assert verdict(iv(-0.5, -0.1), expect="less") == "holds"
    assert verdict(iv(-0.2, 0.3), expect="greater") == "inconclusive"
    assert verdict(iv(-0.2, 0.3), expect="greater", margin=0.5) == "does not hold"  # no effect
    assert verdict(iv(-0.2, 0.6), expect="greater", margin=0.5) == "inconclusive"
    with pytest.raises(ValueError, match="expect"):
        verdict(iv(0, 1), expect="up")


def test_holm_against_a_loop():
    p = [0.01, 0.2, 0.03, 0.005, 0.04]
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    expected = [0.0] * m
    running = 0.0
    for r, i in enumerate(order):
        running = max(running, min(1.0, (m - r) * p[i]))
        expected[i] = running
    assert holm(p) == pytest.approx(expected)
    assert holm([]) == []
    with pytest.raises(ValueError):
        holm([1.5])


def test_decision_p_value_tost():
    # a tight interval around 0 inside a margin of 1: equivalence, TOST p small
    iv = paired_interval([0.01, -0.02, 0.0, 0.01], [0.0, 0.0, 0.0, 0.0])
    assert verdict(iv, expect="greater", margin=1.0) == "does not hold"
    d = np.array([0.01, -0.02, 0.0, 0.01])
    lower = stats.ttest_1samp(d, -1.0, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, 1.0, alternative="less").pvalue
    assert decision_p_value(iv, expect="greater", margin=1.0) == pytest.approx(
        2 * max(lower, upper), rel=1e-8
    )
    wide = paired_interval([1.0, -1.0, 0.5], [0.0, 0.0, 0.0])
    assert decision_p_value(wide, expect="greater", margin=0.1) == 1.0


def test_bootstrap_is_seeded_and_covers_the_estimate():
    rows = np.random.default_rng(2).normal(size=(30, 2))
    rows[:, 1] += rows[:, 0]

    def rho(r):
        return float(stats.spearmanr(r[:, 0], r[:, 1]).statistic)

    a = bootstrap_interval(rho, rows, resamples=300, seed=5)
    b = bootstrap_interval(rho, rows, resamples=300, seed=5)
    assert a == b
    assert a.low < a.estimate < a.high and a.low > 0


def test_sample_size_helpers():
    n = seeds_for_half_width(0.01, 0.005)
    q = stats.t.ppf(0.975, n - 1)
    assert q * 0.01 / math.sqrt(n) <= 0.005 < stats.t.ppf(0.975, n - 2) * 0.01 / math.sqrt(n - 1)
    assert smallest_detectable_effect(2.0, 4) == pytest.approx(
        (stats.t.ppf(0.975, 3) + stats.t.ppf(0.8, 3)) * 2.0 / 2.0
    )
