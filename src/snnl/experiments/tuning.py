"""The hyper-parameter search behind experiment "entangle"'s headline claim (issue 20).

Frosst et al. (2019) compare tuned entangled models with tuned normal ones (their
hyper-parameters came from a black-box optimiser). Here each arm gets the same kind of
search, on a validation hold-out carved from the training split
(:attr:`snnl.train.TrainConfig.validation`; the test split is never looked at):

- ``normal``: the learning rate;
- ``entangled`` (SNNL at each batch's optimal temperature): the learning rate and alpha,
  on a log scale from "no effect" to "collapse";
- ``authors`` (T fixed, the authors' exp-then-log formula): the learning rate, alpha and
  their temperature.

The search (:class:`Grid`): by default two stages, (1) alpha (x T) at the base learning
rate, (2) the learning-rate grid at the best stage-1 point; with ``product=True`` (--full)
the whole product at once. Every point trains on ``Grid.seeds`` seeds; a point's score is
its mean validation accuracy over them, failed (collapsed or diverged) runs counted at
their measured accuracy; the best score wins, ties go to the point listed first.

Then :func:`paired_seeds` chooses how many paired seeds the chosen settings are
retrained on: enough for a 95% interval of half-width ``half_width`` on the paired
difference, from the spread of a pilot, within a cap.

Pure functions and plain data: the experiment trains the runs (through its zoo).

>>> grid = Grid(lrs=(1e-3, 3e-3), alphas=(0.01, 0.1), authors_alphas=(1.0,),
...             authors_temperatures=(100.0,), seeds=2)
>>> [c.name for c in stage_one(grid)]
['tune-normal-lr0.001', 'tune-entangled-a0.01-lr0.001', 'tune-entangled-a0.1-lr0.001', \
'tune-authors-a1-T100-lr0.001']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from snnl.stats import seeds_for_half_width, smallest_detectable_effect
from snnl.train import TrainConfig

__all__ = [
    "ARMS",
    "Candidate",
    "Grid",
    "DEFAULT_GRID",
    "FULL_GRID",
    "validation_points",
    "stage_one",
    "stage_two",
    "tuning_config",
    "arm_config",
    "scores",
    "select",
    "SeedPlan",
    "paired_seeds",
    "search_figure",
]

#: Means closer than this are a tie (two seeds' accuracies summed in another order).
TIE = 1e-9

#: The arms of the headline comparison, in report order.
ARMS = ("normal", "entangled", "authors")


@dataclass(frozen=True)
class Candidate:
    """One point of an arm's search: its learning rate, alpha and (authors) fixed T."""

    arm: str
    lr: float
    alpha: float = 0.0
    temperature: float | None = None

    def __post_init__(self) -> None:
        if self.arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {self.arm!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if (self.arm == "normal") != (self.alpha == 0):
            raise ValueError(f"the {self.arm} arm cannot have alpha {self.alpha}")
        if (self.arm == "authors") != (self.temperature is not None):
            raise ValueError("a fixed temperature belongs to the authors' arm only")

    @property
    def name(self) -> str:
        """The zoo run name, e.g. ``tune-entangled-a0.03-lr0.001``."""
        parts = [f"tune-{self.arm}"]
        if self.arm != "normal":
            parts.append(f"a{self.alpha:g}")
        if self.temperature is not None:
            parts.append(f"T{self.temperature:g}")
        return "-".join([*parts, f"lr{self.lr:g}"])

    @property
    def label(self) -> str:
        """Short text for tables: ``lr 0.001, alpha 0.03, T 100``."""
        out = f"lr {self.lr:g}"
        if self.arm != "normal":
            out += f", alpha {self.alpha:g}"
        if self.temperature is not None:
            out += f", T {self.temperature:g}"
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"arm": self.arm, "lr": self.lr, "alpha": self.alpha,
                "temperature": self.temperature}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        return cls(data["arm"], data["lr"], data["alpha"], data["temperature"])


@dataclass(frozen=True)
class Grid:
    """The search every arm gets (plain data, saved with the experiment's settings).

    ``lrs``: every arm's learning rates; ``alphas``: the entangled arm's (log scale, from
    no effect to collapse); ``authors_alphas`` x ``authors_temperatures``: the authors'
    arm's; ``seeds``: training seeds per point (>= 2); ``base_lr``: the learning rate of
    stage 1; ``product``: search the whole product in one stage instead.
    """

    lrs: tuple[float, ...]
    alphas: tuple[float, ...]
    authors_alphas: tuple[float, ...]
    authors_temperatures: tuple[float, ...]
    seeds: int = 2
    base_lr: float = 1e-3
    product: bool = False

    def __post_init__(self) -> None:
        if self.seeds < 2:
            raise ValueError(f"a search needs >= 2 seeds per point, got {self.seeds}")
        for name in ("lrs", "alphas", "authors_alphas", "authors_temperatures"):
            values = getattr(self, name)
            if not values or not all(v > 0 for v in values):
                raise ValueError(f"Grid.{name} must be non-empty and positive, got {values}")
        if self.base_lr not in self.lrs:
            raise ValueError(f"base_lr {self.base_lr} must be one of lrs {self.lrs}")


#: The default search (about 50 MLP runs on mnist5k, ~2 minutes on 2 cores).
DEFAULT_GRID = Grid(
    lrs=(3e-4, 1e-3, 3e-3),
    alphas=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
    authors_alphas=(0.1, 1.0, 10.0),
    authors_temperatures=(10.0, 100.0),
)
#: --full: the whole product, 3 seeds a point.
FULL_GRID = Grid(
    lrs=(3e-4, 1e-3, 3e-3),
    alphas=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
    authors_alphas=(0.1, 1.0, 10.0, 100.0),
    authors_temperatures=(10.0, 100.0),
    seeds=3,
    product=True,
)


def validation_points(n_train: int) -> int:
    """Points held out of a training split of ``n_train`` for the search: an eighth
    (500 of mnist5k's 4000), at least 2.

    >>> validation_points(4000), validation_points(240)
    (500, 30)
    """
    if n_train < 4:
        raise ValueError(f"a training split of {n_train} points is too small to hold out from")
    return max(2, n_train // 8)


def _points(grid: Grid, lrs: Sequence[float]) -> list[Candidate]:
    out = [Candidate("normal", lr) for lr in lrs]
    out += [Candidate("entangled", lr, a) for a in grid.alphas for lr in lrs]
    out += [
        Candidate("authors", lr, a, t)
        for t in grid.authors_temperatures
        for a in grid.authors_alphas
        for lr in lrs
    ]
    return out


def stage_one(grid: Grid) -> list[Candidate]:
    """The first stage: every alpha (x T) at ``base_lr`` (the whole product when
    ``grid.product``)."""
    return _points(grid, grid.lrs if grid.product else (grid.base_lr,))


def stage_two(grid: Grid, best: dict[str, Candidate]) -> list[Candidate]:
    """The second stage: each arm's stage-1 winner at the other learning rates (none when
    ``grid.product``)."""
    if grid.product:
        return []
    return [
        replace(best[arm], lr=lr) for arm in ARMS if arm in best for lr in grid.lrs
        if lr != best[arm].lr
    ]  # fmt: skip


def arm_config(base: TrainConfig, candidate: Candidate) -> TrainConfig:
    """``base`` (a normal run's config) with the candidate's arm and settings: the
    entangled arm at the optimal temperature, the authors' with T fixed and their
    exp-then-log formula."""
    if candidate.arm == "normal":
        return replace(base, lr=candidate.lr)
    if candidate.arm == "entangled":
        return replace(base, lr=candidate.lr, alpha=candidate.alpha, temperature_mode="optimal")
    return replace(
        base,
        lr=candidate.lr,
        alpha=candidate.alpha,
        temperature=candidate.temperature,
        temperature_mode="fixed",
        snnl_formula="reference",
    )


def tuning_config(base: TrainConfig, candidate: Candidate, validation: int,
                  seed: int) -> TrainConfig:  # fmt: skip
    """The tuning run of ``candidate`` for training seed ``seed``, ``validation`` points
    held out of the training split."""
    return replace(arm_config(base, candidate), validation=validation, seed=seed)


def scores(records: Sequence[dict[str, Any]]) -> dict[Candidate, dict[str, Any]]:
    """Per candidate: the mean validation accuracy over its seeds and the values.

    ``records``: one per tuning run, ``{"candidate": Candidate.to_dict(), "seed",
    "validation_accuracy", "health"}``; failed runs count at their measured accuracy
    (a run without one scores 0).

    >>> r = [{"candidate": Candidate("normal", 1e-3).to_dict(), "seed": s,
    ...       "validation_accuracy": v, "health": "ok"} for s, v in ((0, 0.9), (1, 0.8))]
    >>> round(scores(r)[Candidate("normal", 1e-3)]["mean"], 6)
    0.85
    """
    out: dict[Candidate, dict[str, Any]] = {}
    for r in records:
        c = Candidate.from_dict(r["candidate"])
        acc = r["validation_accuracy"]
        entry = out.setdefault(c, {"values": [], "seeds": [], "failed": 0})
        entry["values"].append(0.0 if acc is None else float(acc))
        entry["seeds"].append(r["seed"])
        entry["failed"] += r["health"] != "ok"
    for entry in out.values():
        entry["mean"] = float(np.mean(entry["values"]))
    return out


def select(records: Sequence[dict[str, Any]], order: Sequence[Candidate]) -> dict[str, Candidate]:
    """Each arm's candidate with the highest mean validation accuracy (:func:`scores`);
    ties (means within :data:`TIE`, float rounding) go to the one first in ``order``
    (the grid order: the base learning rate first, smaller alpha first).

    >>> a, b = Candidate("normal", 1e-3), Candidate("normal", 3e-3)
    >>> r = [{"candidate": c.to_dict(), "seed": s, "validation_accuracy": v, "health": "ok"}
    ...      for c, v in ((a, 0.9), (b, 0.92)) for s in (0, 1)]
    >>> select(r, [a, b])["normal"].lr
    0.003
    """
    sc = scores(records)
    best: dict[str, Candidate] = {}
    for c in order:
        if c not in sc:
            continue
        if c.arm not in best or sc[c]["mean"] > sc[best[c.arm]]["mean"] + TIE:
            best[c.arm] = c
    return best


@dataclass(frozen=True)
class SeedPlan:
    """How many paired seeds the headline needs: ``needed`` for a 95% interval of
    half-width ``half_width`` at the pilot's spread ``sd`` (of the paired differences),
    ``n`` = ``needed`` within ``[pilot, cap]``; ``expected_half_width`` and
    ``detectable`` (the smallest effect ``n`` pairs detect with 80% power) at ``sd``."""

    sd: float
    pilot: int
    needed: int
    cap: int
    n: int
    half_width: float
    expected_half_width: float
    detectable: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def paired_seeds(pilot_differences: Sequence[float], *, half_width: float,
                 cap: int) -> SeedPlan:  # fmt: skip
    """The paired seeds for the headline, from a pilot's per-seed differences.

    ``n = clip(seeds_for_half_width(sd, half_width), len(pilot), cap)`` with ``sd`` the
    pilot differences' sample standard deviation (:func:`snnl.stats.seeds_for_half_width`).

    >>> plan = paired_seeds([0.01, -0.004, 0.006], half_width=0.005, cap=10)
    >>> plan.needed, plan.n, round(plan.sd, 4)
    (11, 10, 0.0072)
    """
    d = np.asarray(pilot_differences, dtype=np.float64)
    if d.size < 2 or not np.all(np.isfinite(d)):
        raise ValueError(f"a pilot needs >= 2 finite differences, got {d.tolist()}")
    if cap < d.size:
        raise ValueError(f"cap {cap} is below the pilot's {d.size} seeds")
    sd = float(d.std(ddof=1))
    needed = seeds_for_half_width(sd, half_width)
    n = min(cap, max(d.size, needed))
    from scipy import stats as scipy_stats

    expected = float(scipy_stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return SeedPlan(sd, int(d.size), needed, cap, n, half_width, expected,
                    smallest_detectable_effect(sd, n))  # fmt: skip


def search_figure(heads: Sequence[dict[str, Any]], path: Path) -> None:
    """Validation accuracy against alpha (log x) per arm, one panel per headline model:
    the entangled arm per learning rate, the authors' per (T, lr), the normal arm's
    learning rates as horizontal lines; seeds as dots, the chosen settings as stars.

    ``heads``: experiment "entangle"'s saved ``results["headline"]`` (per model: its
    ``tuning`` records, ``chosen`` settings, ``grid`` and ``validation`` size).
    """
    from snnl.figures import plt, save_figure

    fig, axes = plt.subplots(1, len(heads), figsize=(8.4 * len(heads), 4.4), squeeze=False)
    for ax, head in zip(axes[0], heads, strict=True):
        sc = scores(head["tuning"])
        chosen = {arm: Candidate.from_dict(c) for arm, c in head["chosen"].items()}
        lines: dict[tuple[str, float, float | None], list[Candidate]] = {}
        for c in sc:
            lines.setdefault((c.arm, c.lr, c.temperature), []).append(c)
        base_lr = head["grid"]["base_lr"]
        lrs = [base_lr, *sorted({c.lr for c in sc} - {base_lr})]  # the base rate solid
        styles = {lr: ls for lr, ls in zip(lrs, ("-", "--", ":", "-."), strict=False)}
        for (arm, lr, t), cands in sorted(lines.items(), key=lambda kv: str(kv[0])):
            if arm == "normal":
                for c in cands:
                    ax.axhline(sc[c]["mean"], color="k", lw=1, ls=styles.get(lr, "-"),
                               label=f"normal, lr {lr:g}")  # fmt: skip
                continue
            cands = sorted(cands, key=lambda c: c.alpha)
            color = "C3" if arm == "entangled" else ("C0" if t == 100 else "C2")
            name = "entangled (T*)" if arm == "entangled" else f"authors, T {t:g}"
            xs = [c.alpha for c in cands]
            ax.plot(xs, [sc[c]["mean"] for c in cands], color=color, ls=styles.get(lr, "-"),
                    marker="o", ms=3, label=f"{name}, lr {lr:g}")  # fmt: skip
            for c in cands:
                ax.scatter([c.alpha] * len(sc[c]["values"]), sc[c]["values"], color=color,
                           s=8, alpha=0.4)  # fmt: skip
        for arm, c in chosen.items():
            if c not in sc:
                continue
            x = c.alpha if arm != "normal" else min(cc.alpha for cc in sc if cc.alpha > 0)
            ax.scatter([x], [sc[c]["mean"]], marker="*", s=220, color="gold",
                       edgecolor="k", zorder=5)  # fmt: skip
            ax.annotate(f"chosen {arm}" + (" (alpha 0)" if arm == "normal" else ""),
                        (x, sc[c]["mean"]), fontsize=7,
                        xytext=(5, -12 if arm == "normal" else 6),
                        textcoords="offset points")  # fmt: skip
        finite = [v for c in sc for v in sc[c]["values"]]
        top = max(finite)
        ax.set_ylim(max(min(finite) - 0.01, top - 0.3), top + 0.02)
        ax.set_xscale("log")
        ax.set_xlabel("alpha (log scale)")
        ax.set_ylabel(f"validation accuracy ({head['validation']} held-out training points)")
        ax.set_title(f"{head['model']}: mean over {head['grid']['seeds']} seeds per point",
                     fontsize=10)  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("The search: validation accuracy against alpha per arm (stars: chosen)")
    fig.tight_layout()
    save_figure(fig, path)
