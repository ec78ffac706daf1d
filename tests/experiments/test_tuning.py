"""The headline's search (snnl.experiments.tuning): grids, selection, paired seeds, figure.

Counts are hand-computed from the grids; the seed plan is checked against scipy's t
quantiles written out here; selection against a plain loop over the records.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from snnl.experiments import tuning
from snnl.experiments.tuning import (
    DEFAULT_GRID,
    FULL_GRID,
    Candidate,
    Grid,
    arm_config,
    paired_seeds,
    scores,
    select,
    stage_one,
    stage_two,
    tuning_config,
    validation_points,
)
from snnl.train import TrainConfig


def _rec(c: Candidate, seed: int, acc: float | None, health: str = "ok") -> dict:
    return {"candidate": c.to_dict(), "seed": seed, "validation_accuracy": acc, "health": health}


def test_candidate_names_and_checks():
    assert Candidate("normal", 1e-3).name == "tune-normal-lr0.001"
    assert Candidate("entangled", 1e-3, 0.03).name == "tune-entangled-a0.03-lr0.001"
    assert Candidate("authors", 3e-4, 10.0, 100.0).name == "tune-authors-a10-T100-lr0.0003"
    c = Candidate("authors", 3e-4, 10.0, 100.0)
    assert Candidate.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="arm"):
        Candidate("bogus", 1e-3)
    with pytest.raises(ValueError, match="alpha"):
        Candidate("normal", 1e-3, 0.1)
    with pytest.raises(ValueError, match="alpha"):
        Candidate("entangled", 1e-3)
    with pytest.raises(ValueError, match="temperature"):
        Candidate("entangled", 1e-3, 0.1, 100.0)
    with pytest.raises(ValueError, match="seeds"):
        Grid((1e-3,), (0.1,), (1.0,), (100.0,), seeds=1)
    with pytest.raises(ValueError, match="base_lr"):
        Grid((3e-3,), (0.1,), (1.0,), (100.0,))


def test_stages_cover_each_arm_with_the_same_learning_rates():
    first = stage_one(DEFAULT_GRID)
    # normal at the base lr, 6 alphas, 3 alphas x 2 temperatures: 1 + 6 + 6
    assert len(first) == 13 and {c.lr for c in first} == {1e-3}
    best = {"normal": first[0], "entangled": first[3], "authors": first[-1]}
    second = stage_two(DEFAULT_GRID, best)
    assert len(second) == 6  # each arm's winner at the two other rates
    for arm in tuning.ARMS:
        lrs = {c.lr for c in [best[arm], *second] if c.arm == arm}
        assert lrs == set(DEFAULT_GRID.lrs)
        assert {(c.alpha, c.temperature) for c in second if c.arm == arm} == {
            (best[arm].alpha, best[arm].temperature)
        }
    full = stage_one(FULL_GRID)  # the product: 3 lr x (1 + 8 + 4 x 2)
    assert len(full) == 3 * (1 + 8 + 8) and stage_two(FULL_GRID, best) == []
    assert len(set(full)) == len(full)


def test_arm_configs():
    base = TrainConfig(dataset="digits", epochs=2, seed=0)
    n = arm_config(base, Candidate("normal", 3e-3))
    assert (n.lr, n.alpha) == (3e-3, 0.0)
    e = arm_config(base, Candidate("entangled", 1e-3, 0.03))
    assert (e.alpha, e.temperature_mode, e.snnl_formula) == (0.03, "optimal", "exact")
    a = arm_config(base, Candidate("authors", 1e-3, 10.0, 100.0))
    assert (a.alpha, a.temperature, a.temperature_mode, a.snnl_formula) == (
        10.0, 100.0, "fixed", "reference")  # fmt: skip
    t = tuning_config(base, Candidate("entangled", 1e-3, 0.03), 30, seed=4)
    assert (t.validation, t.seed, t.alpha) == (30, 4, 0.03)
    assert validation_points(4000) == 500 and validation_points(16) == 2
    with pytest.raises(ValueError, match="too small"):
        validation_points(3)


def test_selection_by_mean_validation_accuracy_ties_to_the_first():
    a = Candidate("entangled", 1e-3, 0.01)
    b = Candidate("entangled", 1e-3, 0.1)
    c = Candidate("entangled", 3e-3, 0.1)
    n = Candidate("normal", 1e-3)
    records = [
        _rec(a, 0, 0.90), _rec(a, 1, 0.80),  # mean 0.85
        _rec(b, 0, 0.95), _rec(b, 1, 0.70, "collapsed"),  # 0.825: failed run counts
        _rec(c, 0, 0.86), _rec(c, 1, None, "diverged"),  # 0.43: no value scores 0
        _rec(n, 0, 0.8), _rec(n, 1, 0.9),
    ]  # fmt: skip
    sc = scores(records)
    assert sc[b]["failed"] == 1 and sc[c]["values"] == [0.86, 0.0]
    means = {k: float(np.mean(v["values"])) for k, v in sc.items()}
    assert means[a] == pytest.approx(0.85) and means[b] == pytest.approx(0.825)
    chosen = select(records, [n, a, b, c])
    assert chosen == {"entangled": a, "normal": n}
    # a tie in float rounding (0.8 + 0.7666 vs 0.7333 + 0.8333) goes to the first listed
    x, y = Candidate("normal", 1e-3), Candidate("normal", 3e-3)
    tie = [_rec(x, 0, 0.7333333333333333), _rec(x, 1, 0.8333333333333334),
           _rec(y, 0, 0.8), _rec(y, 1, 0.7666666666666667)]  # fmt: skip
    assert scores(tie)[y]["mean"] > scores(tie)[x]["mean"]  # the float order differs
    assert select(tie, [x, y])["normal"] == x


def test_paired_seeds_against_the_t_quantiles():
    d = [0.012, -0.003, 0.004]
    sd = float(np.std(d, ddof=1))
    plan = paired_seeds(d, half_width=0.005, cap=50)
    needed = next(
        n for n in range(2, 1000) if stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= 0.005
    )
    assert (plan.needed, plan.n, plan.pilot) == (needed, needed, 3)
    assert plan.expected_half_width == pytest.approx(
        stats.t.ppf(0.975, needed - 1) * sd / math.sqrt(needed)
    )
    assert plan.detectable == pytest.approx(
        (stats.t.ppf(0.975, needed - 1) + stats.t.ppf(0.8, needed - 1)) * sd / math.sqrt(needed)
    )
    capped = paired_seeds(d, half_width=0.005, cap=4)
    assert capped.n == 4 and capped.needed == needed > 4
    assert paired_seeds([0.01, 0.01, 0.01], half_width=0.005, cap=8).n == 3  # never below pilot
    with pytest.raises(ValueError, match="cap"):
        paired_seeds(d, half_width=0.005, cap=2)
    with pytest.raises(ValueError, match="pilot"):
        paired_seeds([0.01], half_width=0.005, cap=8)


def test_search_figure_renders(tmp_path):
    grid = Grid((1e-3, 3e-3), (0.01, 0.1), (1.0,), (100.0,), seeds=2)
    cands = [*stage_one(grid), Candidate("normal", 3e-3)]
    records = [_rec(c, s, 0.8 + 0.01 * i + 0.005 * s) for i, c in enumerate(cands) for s in (0, 1)]
    chosen = select(records, cands)
    head = {
        "model": "mlp",
        "validation": 30,
        "grid": {"seeds": 2, "base_lr": 1e-3},
        "tuning": records,
        "chosen": {arm: c.to_dict() for arm, c in chosen.items()},
    }
    tuning.search_figure([head], tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 10_000
