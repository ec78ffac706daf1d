"""The class entanglement of saved features: what ``snnl entanglement`` measures.

:func:`feature_entanglement` takes labelled features (in memory, or rows of a .npy file
read block by block) and returns a :class:`FeatureEntanglement`: the SNNL (eq. 1) at the
optimal temperature (eq. 2) or a given one, exact or estimated from sampled anchors with
a confidence interval, and optionally the SNNL-vs-T curve around that temperature.

Exact or estimated depends on the number of points only, never on the file format, so
the same data give the same answer from a .npz, a .pt or a .npy file:

- up to :data:`EXACT_SEARCH_MAX` points, T* is searched over every anchor
  (:func:`snnl.temperature.optimal_temperature`, in memory or over .npy rows) and the
  curve is exact;
- beyond, T* is searched on ``search_anchors`` sampled anchors against all points
  (:func:`snnl.temperature.estimate_optimal_temperature`) and the curve estimated on
  them; the SNNL at that T is still exact (or estimated with ``anchors``), and the
  result says which.

:func:`open_feature_file` reads a features file for it (.npz, .pt, or .npy with its
labels .npy), turning what is wrong with a file into a ``ValueError`` naming it.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from snnl._checks import check_bounds, check_int, check_positive, check_real
from snnl.data import load_features
from snnl.distances import Distance, check_distance
from snnl.loss import (
    SNNLEstimate,
    SNNLWarning,
    estimate_snnl,
    open_npy,
    snnl_streamed,
    soft_nearest_neighbor_loss,
)
from snnl.temperature import (
    estimate_optimal_temperature,
    estimate_temperature_curve,
    optimal_temperature,
    snnl_temperature_curve,
)

__all__ = [
    "EXACT_SEARCH_MAX",
    "CURVE_DECADES",
    "CURVE_POINTS",
    "FeatureEntanglement",
    "TemperatureCurve",
    "feature_entanglement",
    "open_feature_file",
]

#: Up to this many points T* is searched over every anchor (exact); beyond, on
#: ``search_anchors`` sampled anchors.
EXACT_SEARCH_MAX = 20_000
#: The curve spans T / 10**CURVE_DECADES to T * 10**CURVE_DECADES around the chosen T,
#: at CURVE_POINTS temperatures evenly spaced in log T, and as many again within half a
#: decade of T (where the curve can turn sharply).
CURVE_DECADES = 3.0
CURVE_POINTS = 61


@dataclass(frozen=True)
class TemperatureCurve:
    """SNNL against temperature: ``values[i]`` = SNNL at ``temperatures[i]`` (both (K,)
    float64 arrays); ``anchors`` None for the exact curve (every point an anchor), else
    the number of sampled anchors it was estimated on."""

    temperatures: np.ndarray
    values: np.ndarray
    anchors: int | None


@dataclass(frozen=True)
class FeatureEntanglement:
    """The SNNL of labelled features at one temperature, as :func:`feature_entanglement`
    returns it.

    Attributes:
        value: SNNL at ``temperature`` (exact, or the anchor estimate's mean).
        temperature: T, given or optimal.
        optimal: True when T was searched (eq. 2), False when given.
        search_anchors: None when T* was searched over every anchor (or T was given);
            else the number of sampled anchors it was searched on (seed ``seed``).
        bounds: the explicit search bounds, or None (the data's own distance range).
        n, d, classes: points, features per point, distinct labels.
        population: points with another point of their class (the anchors).
        upper_bound: the SNNL's limit as T -> infinity, mean of log((N - 1) / (n_c - 1))
            over the anchors: the value of indistinguishable classes (log C for C
            balanced classes and large N).
        distance: "euclidean" or "cosine".
        estimate: the anchor estimate with its interval, or None (exact value).
        curve: the SNNL-vs-T curve around T, or None.
        seed: seed of the anchor draws.
    """

    value: float
    temperature: float
    optimal: bool
    search_anchors: int | None
    bounds: tuple[float, float] | None
    n: int
    d: int
    classes: int
    population: int
    upper_bound: float
    distance: str
    estimate: SNNLEstimate | None
    curve: TemperatureCurve | None
    seed: int

    @property
    def method(self) -> str:
        """ "exact" or "estimate" (the value, not the temperature)."""
        return "exact" if self.estimate is None else "estimate"

    @property
    def temperature_choice(self) -> str:
        """How T was chosen, in words (what the command prints)."""
        if not self.optimal:
            return "given"
        where = "the data's distance range" if self.bounds is None else (
            f"[{self.bounds[0]:g}, {self.bounds[1]:g}]"
        )  # fmt: skip
        text = f"optimal within {where}"
        at = [abs(math.log(self.temperature / b)) < 1e-9 for b in self.bounds or ()]
        if any(at):  # the search stopped at a bound: the minimum lies beyond it
            side, beyond = ("lower", "below") if at[0] else ("upper", "above")
            text = f"the {side} bound of {where}: the minimum lies {beyond} it, not SNNL*"
        if self.search_anchors is not None:
            text += (
                f", searched on {self.search_anchors} anchors (seed {self.seed}) against all "
                f"{self.n} points"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: value, temperature, temperature_choice, method, n, d, classes,
        distance, upper_bound (and interval, confidence, anchors, population, std_error
        for an estimate; search_anchors when T* was searched on sampled anchors)."""
        out: dict[str, Any] = {
            "value": self.value,
            "temperature": self.temperature,
            "temperature_choice": self.temperature_choice,
            "method": self.method,
            "n": self.n,
            "d": self.d,
            "classes": self.classes,
            "distance": self.distance,
            "upper_bound": self.upper_bound,
        }
        if self.search_anchors is not None:
            out["search_anchors"] = self.search_anchors
        if self.estimate is not None:
            est = self.estimate
            out.update(
                interval=[est.low, est.high],
                confidence=est.confidence,
                anchors=est.anchors,
                population=est.population,
                std_error=est.std_error,
            )
        return out


def _labels(labels, n: int) -> Tensor:
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(
                f"labels must be a 1-D integer array, got shape {labels.shape} and dtype "
                f"{labels.dtype}"
            )
        labels = torch.from_numpy(labels.astype(np.int64))
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a tensor or a numpy array, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be a 1-D integer tensor, got shape {tuple(labels.shape)} and dtype "
            f"{labels.dtype}"
        )
    if len(labels) != n:
        raise ValueError(f"{n} feature rows but {len(labels)} labels")
    return labels.cpu().long()


def _in_memory(features) -> bool:
    return isinstance(features, Tensor)


def feature_entanglement(
    features,
    labels,
    *,
    temperature: float | None = None,
    distance: Distance | str = Distance.EUCLIDEAN,
    bounds: tuple[float, float] | None = None,
    anchors: int | None = None,
    confidence: float = 0.95,
    search_anchors: int = 256,
    seed: int = 0,
    curve: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> FeatureEntanglement:
    r"""The SNNL of labelled features at the optimal (or a given) temperature.

    .. math::
        \mathrm{SNNL}(x, y, T) = -\frac{1}{P} \sum_{i} \log
        \frac{\sum_{j \ne i, y_j = y_i} e^{-d_{ij}/T}}{\sum_{k \ne i} e^{-d_{ik}/T}},
        \qquad T^* = \arg\min_T \mathrm{SNNL}(x, y, T)

    over the P anchors i that have another point of their class.

    Args:
        features: (N, ...) float tensor (flattened to (N, D)), or (N, D) rows read block
            by block (a numpy array, ``np.load(path, mmap_mode="r")``,
            :func:`snnl.loss.open_npy`).
        labels: (N,) integer tensor or array.
        temperature: T > 0; None (default): the optimal T (eq. 2).
        distance: "euclidean" (squared) or "cosine".
        bounds: (T_low, T_high) for the search; None: the data's own distance range. A
            minimum they cut off is an :class:`snnl.loss.SNNLWarning`.
        anchors: None: the exact SNNL; M >= 2: estimated from M anchors drawn at random
            (each against all points) with a Student-t interval at ``confidence``.
        confidence: the interval's level, in (0, 1).
        search_anchors: anchors the T* search samples above :data:`EXACT_SEARCH_MAX`
            points (>= 2).
        seed: seeds the anchor draws (search: ``seed``, estimate: ``seed + 1``).
        curve: also compute the SNNL-vs-T curve around T (:class:`TemperatureCurve`).
        progress: tqdm bars on stderr for passes over rows read by blocks.
        log: called with a short description of each stage as it starts.

    Returns:
        :class:`FeatureEntanglement`.

    Raises:
        ValueError: the SNNL is undefined (a single class, or no label occurring twice),
            or an argument is out of range.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(90) % 3
        >>> x = torch.randn(90, 4, generator=g) + 2.0 * y[:, None]
        >>> res = feature_entanglement(x, y)
        >>> res.optimal, res.method, res.search_anchors, (res.n, res.d, res.classes)
        (True, 'exact', None, (90, 4, 3))
        >>> at_t = soft_nearest_neighbor_loss(x.double(), y, res.temperature).item()
        >>> abs(res.value / at_t - 1) < 1e-6  # float32 features: float32 precision
        True
        >>> feature_entanglement(x, y, temperature=2.0).temperature_choice
        'given'
    """
    say = log or (lambda _text: None)
    dist = check_distance(distance)
    if temperature is not None:
        temperature = check_positive("temperature", temperature)
    if anchors is not None:
        anchors = check_int("anchors", anchors, low=2)
    search_anchors = check_int("search_anchors", search_anchors, low=2)
    seed = check_int("seed", seed)
    confidence = check_real("confidence", confidence, low=0.0, high=1.0, low_inclusive=False,
                            high_inclusive=False)  # fmt: skip
    bounds = check_bounds(bounds, torch.float64)
    if _in_memory(features):
        if not features.is_floating_point():
            raise TypeError(f"features must be floating point, got dtype {features.dtype}")
        features = features.detach().reshape(features.shape[0], -1)
    shape = tuple(features.shape)
    if len(shape) < 2:
        raise ValueError(f"features must have shape (N, D), got {shape}")
    n, d = int(shape[0]), int(np.prod(shape[1:]))
    y = _labels(labels, n)
    _, counts = torch.unique(y, return_counts=True)
    classes = int(counts.numel())
    population = int(counts[counts >= 2].sum())
    if population == 0:
        raise ValueError(
            f"SNNL is undefined: no label occurs twice among the {n} points, so no point "
            "has another point of its class (the SNNL of a point needs one)"
        )
    if classes < 2:
        raise ValueError(
            f"SNNL is undefined without a second class (all {n} labels are {int(y[0])}): "
            "it measures how a point's neighbours split between its class and the others"
        )
    per = counts[counts >= 2].double()
    upper = float((per * torch.log((n - 1) / (per - 1))).sum() / per.sum())
    exact_search = n <= EXACT_SEARCH_MAX
    searched = None if exact_search else min(search_anchors, population)
    value = None
    if temperature is not None:
        t = temperature
    elif exact_search:
        say(f"searching the optimal T over all {population} anchors")
        t, value = optimal_temperature(features, y, distance=dist, bounds=bounds, progress=progress)
    else:
        say(f"searching the optimal T on {searched} of {population} anchors")
        t, _ = estimate_optimal_temperature(
            features, y, anchors=searched, bounds=bounds, distance=dist,
            generator=torch.Generator().manual_seed(seed), progress=progress,
        )  # fmt: skip
    estimate = None
    feats = _wide_enough(features, t)
    if anchors is not None:
        say(f"estimating SNNL on {min(anchors, population)} anchors")
        estimate = estimate_snnl(
            feats, y, t, anchors=anchors, confidence=confidence,
            generator=torch.Generator().manual_seed(seed + 1), distance=dist, progress=progress,
        )  # fmt: skip
        value = estimate.value
    elif value is None:
        say("computing SNNL at T")
        value = _exact_value(feats, y, t, dist, progress)
    if not math.isfinite(value):
        raise ValueError(f"SNNL at T = {t:g} is {value}, beyond the range of float64")
    result_curve = None
    if curve:
        say("computing the SNNL-vs-T curve")
        result_curve = _curve(features, y, t, dist, None if exact_search else searched, seed,
                              population, progress)  # fmt: skip
    return FeatureEntanglement(
        value=float(value),
        temperature=float(t),
        optimal=temperature is None,
        search_anchors=None if temperature is not None else searched,
        bounds=bounds,
        n=n,
        d=d,
        classes=classes,
        population=population,
        upper_bound=upper,
        distance=dist.value,
        estimate=estimate,
        curve=result_curve,
        seed=seed,
    )


def _wide_enough(features, *temperatures: float):
    """In-memory float32 features as float64 where a temperature lies beyond float32's
    normal range (features of huge scale have a T* there)."""
    if not _in_memory(features) or features.dtype == torch.float64:
        return features
    info = torch.finfo(features.dtype)
    if all(info.tiny <= t <= info.max for t in temperatures):
        return features
    return features.double()


def _exact_value(features, y: Tensor, t: float, dist: Distance, progress: bool) -> float:
    """The exact SNNL at ``t``: in memory up to EXACT_SEARCH_MAX points, else streamed; a
    float32 value beyond float32's range is redone in float64."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SNNLWarning)  # left-out anchors: said by the search
        if _in_memory(features) and len(y) <= EXACT_SEARCH_MAX:
            with torch.no_grad():
                value = float(soft_nearest_neighbor_loss(features, y, t, distance=dist.value))
                if not math.isfinite(value) and features.dtype != torch.float64:
                    value = float(
                        soft_nearest_neighbor_loss(features.double(), y, t, distance=dist.value)
                    )
            return value
        value = snnl_streamed(features, y, t, distance=dist, progress=progress)
        if not math.isfinite(value) and _in_memory(features):
            value = snnl_streamed(features.double(), y, t, distance=dist, progress=progress)
        return value


def _curve(features, y, t, dist, searched, seed, population, progress) -> TemperatureCurve:
    u = math.log10(t)
    wide = np.linspace(u - CURVE_DECADES, u + CURVE_DECADES, CURVE_POINTS)
    grid = 10.0 ** np.unique(np.concatenate([wide, np.linspace(u - 0.5, u + 0.5, CURVE_POINTS)]))
    feats = _wide_enough(features, float(grid[0]), float(grid[-1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SNNLWarning)  # left-out anchors: said by the search
        if searched is None and _in_memory(feats):
            values = snnl_temperature_curve(feats, y, grid, distance=dist).double().numpy()
        else:  # every anchor when searched is None (exact), else the sampled ones
            values = estimate_temperature_curve(
                feats, y, grid, anchors=population if searched is None else searched,
                generator=torch.Generator().manual_seed(seed), distance=dist,
                progress=progress,
            ).numpy()  # fmt: skip
    return TemperatureCurve(grid, values, searched)


@contextlib.contextmanager
def open_feature_file(
    path: str | Path, labels: str | Path | None = None
) -> Iterator[tuple[Any, Tensor]]:
    """Open a features file for :func:`feature_entanglement`: yields (features, labels).

    ``.npz`` / ``.pt`` files are loaded (:func:`snnl.data.load_features`); a ``.npy``
    features file is read block by block (:func:`snnl.loss.open_npy`, never loaded
    whole) with its labels from ``labels``, else ``<stem>_labels.npy`` or
    ``<stem>.labels.npy`` beside it. What is wrong with a file's contents is a
    ValueError naming the file; a missing file a FileNotFoundError.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> np.save(folder / "f.npy", np.ones((4, 2), dtype=np.float32))
        >>> np.save(folder / "f_labels.npy", np.array([0, 0, 1, 1]))
        >>> with open_feature_file(folder / "f.npy") as (rows, y):
        ...     rows.shape, y.tolist()
        ((4, 2), [0, 0, 1, 1])
    """
    path = Path(path)
    if path.suffix.lower() != ".npy":
        try:
            features, y = load_features(path, labels)
        except TypeError as err:  # a wrong dtype in the user's file: bad input
            raise ValueError(str(err)) from err
        yield features.reshape(features.shape[0], -1), y
        return
    if not path.is_file():
        raise FileNotFoundError(f"features file not found: {path}")
    stem = path.with_suffix("")
    beside = [Path(f"{stem}_labels.npy"), Path(f"{stem}.labels.npy")]
    labels_path = Path(labels) if labels is not None else None
    if labels_path is None:
        labels_path = next((p for p in beside if p.is_file()), None)
    if labels_path is None:
        raise ValueError(
            f"{path}: a .npy features file needs its labels: --labels LABELS.npy "
            f"(or {beside[0].name} beside it)"
        )
    if not labels_path.is_file():
        raise FileNotFoundError(f"labels file not found: {labels_path}")
    try:
        labels_np = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{labels_path}: not a readable .npy array ({err})") from None
    if labels_np.ndim != 1 or labels_np.dtype.kind not in "iu":
        raise ValueError(
            f"{labels_path}: labels must be a 1-D integer array, got shape "
            f"{labels_np.shape} and dtype {labels_np.dtype}"
        )
    rows = open_npy(path)
    try:
        if rows.dtype.kind not in "fiu":
            raise ValueError(f"{path}: features must be a real numeric array, got {rows.dtype}")
        yield rows, torch.from_numpy(labels_np.astype(np.int64))
    finally:
        rows.close()
