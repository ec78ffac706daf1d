"""Eq. 2 of Frosst, Papernot & Hinton (2019): the optimal temperature and SNNL*.

    T*(x, y) = argmin_T SNNL(x, y, T),     SNNL*(x, y) = SNNL(x, y, T*)

with SNNL the loss of eq. 1 (:mod:`snnl.loss`). One search serves every caller:
:func:`snnl_star` (the regulariser, the per-layer profiles, the metric),
:func:`optimal_temperature`, its whole-dataset form (features read block by block) and
its anchor-sampled estimate. It is Newton's method in u = log T on the exact curve, with
the value and its first two derivatives in u from one pass over the distances
(``snnl._search``), started from the best point of a grid over the data's own distance
range (or warm-started from a previous T*), each step backtracked until the value does
not rise, so the value returned is never above the value at any point of that grid.

Scale: SNNL(c x, T) = SNNL(x, T / c^2) for the squared euclidean distance, so
T*(c x) = c^2 T*(x) and SNNL*(c x) = SNNL*(x). The search range follows the data: u from
log(d_min) - 6 to log(d_max) + 6, d_min the smallest nonzero distance from an anchor to
the nearest point of its class or of another class, d_max the largest distance; no
feature scale lands on a fixed bound. Explicit ``bounds`` restrict the search, and a
minimum they cut off is reported by an :class:`~snnl.loss.SNNLWarning` naming the bound.

Precision: float64 features are searched in float64 (SNNL* equal to a float64 dense
scan + Brent to 1e-7 relative, tested; about 1e-9 to 1e-12 measured); float32 ones in
float32, the per-anchor terms at the last evaluation then checked on a few anchors
against a float64 reference of the features (as the loss is) and the search redone in
float64 where they disagree: within the float32 loss's own exactness (measured 2e-8 to
5e-7 relative on the benchmark's data, the largest at N = 8192, D = 512).

Cost (``benchmarks/bench_temperature.py``): the distances once (each pair multiplied
once when every point is an anchor), the grid on every anchor or, beyond 512 anchors,
on a spread-out sample of 256 refined there by Newton, then typically one or two
evaluations on all anchors (the first during the distances' pass); a few loss
evaluations in all.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from snnl import _blocked, _search, _stream
from snnl._checks import (
    check_bounds,
    check_features_labels,
    check_int,
    check_positive,
    check_temperatures,
)
from snnl._dense import mini_batch_block
from snnl._search import unit_vectors
from snnl.distances import Distance, check_distance
from snnl.loss import (
    WHOLE_BLOCK_POINTS,
    MiniBatchBlock,
    SNNLWarning,
    autocast_off,
    snnl_at_optimum,
    soft_nearest_neighbor_loss,
    transformed,
    vmap_by_loop,
    warn_left_out,
)

__all__ = [
    "SNNLStar",
    "snnl_star",
    "optimal_temperature",
    "optimal_log_temperature",
    "snnl_temperature_curve",
    "snnl_log_temperature_slope",
    "whole_block_log_temperature_slope",
    "optimal_temperature_of_block",
    "estimate_optimal_temperature",
    "estimate_temperature_curve",
    "entanglement_between",
    "entanglement",
]

#: Anchors above which the start-picking grid runs on a spread-out sample of this many.
GRID_SAMPLE = 256
#: Where SNNL still falls at an end of the data's range, the value this much further in
#: log T is taken (the curve's limit there, to about e^-16 relative).
BEYOND = 10.0


@dataclass(frozen=True)
class SNNLStar:
    """SNNL at the optimal temperature (eq. 2), as :func:`snnl_star` returns it.

    Attributes:
        value: 0-dim float64 tensor, SNNL(x, y, T*); differentiable with respect to the
            features when they require grad (the gradient of SNNL at T* held fixed, which
            by the envelope theorem is the gradient of SNNL*).
        temperature: T* (a Python float; under ``torch.compile`` and torch.func
            transforms a float64 0-dim tensor, batched under vmap).
        evaluations: curve evaluations the search took (value with derivatives, or a
            grid point); 0 under transforms (the count stays in the search's op).
    """

    value: Tensor
    temperature: float | Tensor
    evaluations: int

    @property
    def log_temperature(self) -> float:
        """log T*, what a warm start (``snnl_star(..., start=...)``) takes."""
        return math.log(self.temperature)


# ----------------------------------------------------------------------------- the search


def _sample(anchors: Tensor, labels: Tensor, size: int) -> Tensor:
    """``size`` anchors spread evenly over the anchors sorted by class (stratified)."""
    order = anchors[torch.argsort(labels[anchors], stable=True)]
    pick = torch.linspace(0, len(order) - 1, size).round().long().unique()
    return order[pick]


def _find(
    features,
    labels: Tensor,
    anchors: Tensor,
    distance: Distance,
    bounds: tuple[float, float] | None,
    *,
    start: float | None = None,
    sample: bool = True,
    level: int = 3,
    progress: bool = False,
    check: bool = True,
) -> tuple[float, float, int]:
    """(T*, SNNL*, evaluations) of ``anchors`` against every point; see the module doc.

    ``features``: a validated (N, D) tensor, a :class:`snnl._stream.Source` or a
    mini-batch's loss block (:class:`snnl._blocked.BlockLogits`: its distances, no product;
    ``labels`` and ``anchors`` then in its sorted order; no spot check: the loss at T*
    checks its own pass); ``start``:
    a previous log T* (warm start, checked); ``level``: the stack level of the user for
    a warning issued here. Beyond ``2 * GRID_SAMPLE`` anchors the grid
    and the first Newton steps run on a spread-out sample of ``GRID_SAMPLE`` anchors; the
    full curve is then built with its first evaluation at the sample's minimum.
    """
    given = None
    if isinstance(features, _blocked.BlockLogits):  # a mini-batch's loss block
        points = _search.KernelPoints.of_block(features)
        given = _search.block_distances(features)
        check = False
    else:
        points = _search.KernelPoints(features, distance.euclidean)
    scale = points.log_scale
    evals = 0
    u_start, third = (None if start is None else start - scale), None
    if sample and start is None and len(anchors) > 2 * GRID_SAMPLE:
        few = _search.Curve(points, labels, _sample(anchors, labels, GRID_SAMPLE))
        if few.constant is None:
            lo, hi = _range(few, bounds, scale)
            u_start, third = _search.grid_start(few, lo, hi, refine=True)
            evals += few.evaluations
    curve = _search.Curve(points, labels, anchors, u_start, progress, distances=given)
    lo, hi = _range(curve, bounds, scale)
    if curve.constant is not None:
        u = lo if (bounds is not None or curve.has_scale) else -scale  # no scale: T = 1
        value = curve.values([u])[0]
        t = bounds[0] if bounds is not None else math.exp(u + scale)
        warnings.warn(
            f"every temperature gives the same SNNL ({value:.6g}): {curve.constant}; "
            f"returning the lower bound T = {t:g}",
            SNNLWarning,
            stacklevel=level,
        )
        return t, value, curve.evaluations
    result = _search.minimise(
        curve, lo, hi, start=u_start, third=third, check_start=start is not None
    )
    evals += curve.evaluations
    if check and not _search.spot_check(curve):  # float32 lost digits: again in float64
        points = _search.KernelPoints(features, distance.euclidean, torch.float64)
        curve = _search.Curve(points, labels, anchors, first_u=result.u)
        result = _search.minimise(curve, lo, hi, start=result.u)
        evals += curve.evaluations
    if bounds is None and (result.at_lower or result.at_upper):
        result = _beyond(curve, result)
    _warn_at_bound(result, bounds, level + 1)
    t = math.exp(result.u + scale)
    if bounds is not None:  # exp(log T) may round just outside
        t = min(max(t, bounds[0]), bounds[1])
    return t, result.value, evals


def _beyond(curve: _search.Curve, result: _search.SearchResult) -> _search.SearchResult:
    """Where SNNL still falls at an end of the data's range, its limit lies beyond (T -> 0:
    every anchor's nearest point is of its class; T -> infinity: the classes' distances
    are indistinguishable): the value ``BEYOND`` further in log T, within about e^-16 of
    that limit, is taken when it is lower."""
    limit = _search.U_LIMIT[curve.dtype]
    u = result.u - BEYOND if result.at_lower else result.u + BEYOND
    u = min(max(u, -limit), limit)
    value = curve.values([u])[0]
    if value < result.value:
        return _search.SearchResult(u, value, result.evaluations + 1, False, False)
    return result


def _range(curve: _search.Curve, bounds, scale: float) -> tuple[float, float]:
    """The search interval in kernel units: the bounds, or the curve's data range."""
    if bounds is None:
        return curve.u_lo, curve.u_hi
    return math.log(bounds[0]) - scale, math.log(bounds[1]) - scale


def _warn_at_bound(result, bounds, stacklevel: int) -> None:
    """A bound that cuts the minimum off says so (explicit bounds; the data's range ends
    where the curve has reached its limits and stays silent)."""
    if bounds is None or not (result.at_lower or result.at_upper):
        return
    side, value = ("lower", bounds[0]) if result.at_lower else ("upper", bounds[1])
    beyond = "below" if result.at_lower else "above"
    warnings.warn(
        f"the minimum of SNNL over T lies {beyond} the {side} bound T = {value:g} "
        f"(bounds={tuple(bounds)}): returning the SNNL at that bound, not SNNL*; widen the "
        "bounds, or pass bounds=None to search the range of the data's distances",
        SNNLWarning,
        stacklevel=stacklevel,
    )


def _valid_anchors(y: Tensor) -> Tensor:
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    return counts[inverse] >= 2


# ----------------------------------------------------------------------------- public


def snnl_star(
    features: Tensor,
    labels: Tensor,
    *,
    distance: Distance | str = Distance.EUCLIDEAN,
    bounds: tuple[float, float] | None = None,
    start: float | None = None,
    check: bool = True,
) -> SNNLStar:
    r"""SNNL at the optimal temperature (eq. 2): :math:`\min_T \mathrm{SNNL}(x, y, T)`.

    The one SNNL* of the package (the entanglement regulariser, the per-layer profiles,
    the metric and the experiments call it). T* is found without gradient (see the
    module docstring); when ``features`` require grad the value is
    :func:`snnl.loss.snnl_at_optimum` at T*: its gradient is that of SNNL* (envelope
    theorem, T* held fixed) and its second derivatives (``create_graph=True``) are SNNL*'s,
    the implicit dependence of T* on the features included (a T* at a given bound, a
    constrained minimum: those at T* held fixed). Under ``torch.compile(fullgraph=True)``
    and torch.func transforms (``vmap`` over a batch of problems, e.g. per head or per
    class; ``grad``, ``hessian``) the search runs inside the registered op
    ``snnl::snnl_star_log_temperature`` (no graph break; a loop under vmap) and the
    value is :func:`snnl.loss.snnl_at_optimum` at its T* (``start`` and ``check`` apply
    to eager calls).

    Args:
        features: (N, ...) float tensor, flattened to (N, D).
        labels: (N,) integer tensor.
        distance: "euclidean" (squared) or "cosine" (:class:`snnl.distances.Distance`).
        bounds: (T_low, T_high) to search within; None (default): the data's range.
        start: a previous log T* to warm-start Newton from (no grid; a check at
            log T* -+ 2 and the large-T end falls back to the grid).
        check: spot-check a float32 search against float64 and redo it in float64 where
            it lost digits (default); False when only T* matters to float32 precision
            (the regulariser, whose value with gradient is the loss's, checked there).

    Returns:
        :class:`SNNLStar` (value, temperature, evaluations). Anchors without another
        point of their class are left out (an ``SNNLWarning`` says how many); where none
        has one the value is 0 with an ``SNNLWarning``; where SNNL does not depend on T
        (one class, identical points) an ``SNNLWarning`` says so.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) % 3
        >>> x = torch.randn(60, 5, generator=g) + 2.0 * y[:, None]
        >>> star = snnl_star(x, y)
        >>> big = snnl_star(1000.0 * x, y)  # any scale: SNNL*(c x) = SNNL*(x), T* scales by c^2
        >>> abs(big.value.item() / star.value.item() - 1) < 1e-6
        True
        >>> abs(big.temperature / (1e6 * star.temperature) - 1) < 1e-4
        True
    """
    return _star(features, labels, distance, bounds, start, level=3, check=check)


def _star(features, labels, distance, bounds, start, level: int, check: bool = True) -> SNNLStar:
    """:func:`snnl_star`; ``level``: the caller's caller is the user (warnings point there)."""
    if transformed(features, labels):
        return _transformed_star(features, labels, distance, bounds)
    x, y = check_features_labels(features, labels)
    dist = check_distance(distance)
    bounds = check_bounds(bounds, x.dtype)
    valid = _valid_anchors(y)
    num_valid = int(valid.sum())
    warn_left_out(num_valid, x.shape[0], stacklevel=level + 1)
    if num_valid == 0:
        t = bounds[0] if bounds is not None else 1.0
        return SNNLStar(torch.zeros((), dtype=torch.float64, device=x.device), t, 0)
    anchors = torch.nonzero(valid.cpu()).squeeze(1)
    t, value, evals = _find(
        x.detach(), y, anchors, dist, bounds, start=start, level=level + 1, check=check
    )
    if torch.is_grad_enabled() and x.requires_grad:
        feats = x if torch.finfo(x.dtype).tiny <= t <= torch.finfo(x.dtype).max else x.double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SNNLWarning)  # said above
            interior = bounds is None or bounds[0] < t < bounds[1]  # else a constrained min
            loss = snnl_at_optimum if interior else soft_nearest_neighbor_loss
            out = loss(feats, y, t, distance=dist.value).double()
    else:
        out = torch.tensor(value, dtype=torch.float64, device=x.device)
    return SNNLStar(out, t, evals)


def _transformed_star(features, labels, distance, bounds) -> SNNLStar:
    """:func:`snnl_star` under ``torch.compile`` and torch.func transforms: the search runs
    inside the registered op ``snnl::snnl_star_log_temperature`` (host work: one opaque
    node of a graph, a loop under vmap), the value is :func:`snnl.loss.snnl_at_optimum`
    at its T* in plain torch ops. ``temperature`` is then a float64 0-dim tensor and
    ``evaluations`` 0 (the count stays inside the op)."""
    x, y = check_features_labels(features, labels, check_values=False)
    dist = check_distance(distance)
    low, high = check_bounds(bounds, x.dtype) or (0.0, 0.0)
    t = torch.ops.snnl.snnl_star_log_temperature(x.detach(), y, dist.value, low, high).exp()
    loss = snnl_at_optimum if bounds is None else soft_nearest_neighbor_loss  # a bound: T fixed
    return SNNLStar(loss(x, y, t, distance=dist.value).double(), t, 0)


@torch.library.custom_op("snnl::snnl_star_log_temperature", mutates_args=())
def snnl_star_log_temperature(
    features: Tensor, labels: Tensor, distance: str, low: float, high: float
) -> Tensor:
    """log T* of :func:`snnl_star` on ``features`` (N, D) and ``labels`` (N,) as a float64
    0-dim CPU tensor (``high`` 0: no bounds, else the search is within [low, high]): the
    search as a registered op, for :func:`snnl_star` under compile and vmap."""
    bounds = (low, high) if high > 0 else None
    star = _star(features, labels, distance, bounds, None, level=4)
    return torch.tensor(math.log(star.temperature), dtype=torch.float64)


@snnl_star_log_temperature.register_fake
def _(features, labels, distance, low, high):
    return torch.empty((), dtype=torch.float64, device="cpu")


@snnl_star_log_temperature.register_vmap
def _(info, in_dims, features, labels, distance, low, high):
    op = snnl_star_log_temperature
    return vmap_by_loop(op, info, in_dims, (features, labels), distance, low, high)


def optimal_temperature(
    features,
    labels,
    *,
    distance: Distance | str = Distance.EUCLIDEAN,
    bounds: tuple[float, float] | None = None,
    progress: bool = False,
) -> tuple[float, float]:
    """The temperature that minimises SNNL, and the SNNL there (eq. 2): (T*, SNNL*).

    ``features`` is an (N, ...) tensor, or rows read block by block (a numpy array,
    ``np.load(path, mmap_mode="r")`` or :func:`snnl.loss.open_npy`): the same search on
    the whole dataset, exact, in memory O(block) (each evaluation reads the features
    again; the distances are kept between evaluations while they fit in 256 MiB).

    Args:
        features, labels, distance, bounds: as in :func:`snnl_star`.
        progress: a tqdm bar on stderr for each pass over rows read by blocks.

    Returns:
        (temperature, value) as Python floats. Where SNNL does not depend on T (a single
        class: SNNL = 0; all points identical) an ``SNNLWarning`` says so and the lower
        end of the range is returned with that value; where no label occurs twice (SNNL
        undefined) the lower bound (1.0 without bounds) and 0.0, with an ``SNNLWarning``.
        Explicit ``bounds`` must lie within the normal range of the features' dtype.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) % 3
        >>> x = torch.randn(60, 5, generator=g) + 2.0 * y[:, None]  # three shifted clusters
        >>> t, v = optimal_temperature(x, y)
        >>> v <= snnl_temperature_curve(x, y, [t / 2, t * 2]).min().item()
        True
        >>> t_np, v_np = optimal_temperature(x.numpy(), y.numpy())  # rows read by blocks
        >>> abs(v_np - v) < 1e-6
        True
    """
    if isinstance(features, Tensor):
        star = _star(features.detach(), labels, distance, bounds, None, level=3)
        return star.temperature, float(star.value)
    dist = check_distance(distance)
    source, y, valid = _search.stream_inputs(features, labels, dist.euclidean)
    bounds = check_bounds(bounds, source.dtype)
    warn_left_out(int(valid.sum()), source.n, stacklevel=3)
    anchors = torch.nonzero(valid).squeeze(1)
    t, value, _ = _find(source, y, anchors, dist, bounds, level=3, progress=progress)
    return t, value


def optimal_log_temperature(
    features: Tensor,
    labels: Tensor,
    *,
    distance: Distance | str = Distance.EUCLIDEAN,
    start: float | None = None,
) -> tuple[float, float, int]:
    """(log T*, SNNL*, evaluations): :func:`snnl_star` in the form the regulariser used.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) % 3
        >>> x = torch.randn(60, 5, generator=g) + 2.0 * y[:, None]
        >>> u, v, _ = optimal_log_temperature(x, y)
        >>> t_ref, v_ref = optimal_temperature(x, y)
        >>> abs(v - v_ref) < 1e-12 and abs(u - math.log(t_ref)) < 1e-12
        True
    """
    star = snnl_star(features.detach(), labels, distance=distance, start=start)
    return star.log_temperature, float(star.value), star.evaluations


def estimate_optimal_temperature(
    features,
    labels,
    *,
    anchors: int = 256,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] | None = None,
    distance: Distance | str = Distance.EUCLIDEAN,
    progress: bool = False,
) -> tuple[float, float]:
    """The temperature minimising the SNNL estimated on ``anchors`` sampled anchors against
    all points (eq. 2 on data too large for :func:`optimal_temperature`).

    The same search as :func:`optimal_temperature` (grid over the data's range, Newton in
    log T), on the curve of the sampled anchors' exact terms: O(M N D) work per
    evaluation, the M x N distances kept while they fit in 256 MiB.

    Returns:
        (T, the anchor estimate of SNNL at T). Where every temperature gives the same
        estimate an ``SNNLWarning`` says so and the lower end is returned.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 2
        >>> x = torch.randn(200, 3, generator=g) + 2.0 * y[:, None]
        >>> t, v = estimate_optimal_temperature(x, y, anchors=200)
        >>> t_all, v_all = optimal_temperature(x, y)  # every point is an anchor here
        >>> abs(math.log(t / t_all)) < 1e-6 and abs(v - v_all) < 1e-9
        True
    """
    dist = check_distance(distance)
    source, y, valid = _search.stream_inputs(features, labels, dist.euclidean)
    bounds = check_bounds(bounds, source.dtype)
    m = check_int("anchors", anchors, low=2)
    idx = _search.sample_anchors(valid, m, generator)
    t, value, _ = _find(source, y, idx, dist, bounds, sample=False, level=3, progress=progress)
    return t, value


# ----------------------------------------------------------------------------- curves


def snnl_temperature_curve(
    features: Tensor,
    labels: Tensor,
    temperatures,
    *,
    distance: Distance | str = Distance.EUCLIDEAN,
) -> Tensor:
    """SNNL (mean over anchors with a positive) at each of ``temperatures``: (len(temperatures),).

    The pairwise products are computed once per block and reused for every
    temperature, so a curve costs one pass of matrix products. Float32 curves are
    spot-checked at every temperature like :func:`snnl.loss.soft_nearest_neighbor_loss`.

    Example:
        >>> x, y = torch.randn(40, 3), torch.arange(40) % 4
        >>> snnl_temperature_curve(x, y, [0.1, 1.0, 10.0]).shape
        torch.Size([3])
    """
    x, y = check_features_labels(features, labels)
    dist = check_distance(distance)
    temps = check_temperatures(temperatures, x.dtype)
    batch = _blocked.sort_by_class(y)
    warn_left_out(batch.num_valid, x.shape[0], stacklevel=3)
    if batch.num_valid == 0:
        return torch.zeros(len(temps), dtype=x.dtype)
    with torch.no_grad():
        points = x.detach() if dist.euclidean else unit_vectors(x.detach())
        prep = _blocked.prepare_points(
            points, batch, dist.euclidean, math.sqrt(min(temps) * max(temps))
        )
        per_anchor = _blocked.exact_grid(prep, batch, temps, x.dtype)
    return per_anchor.nanmean(1).cpu()


def snnl_log_temperature_slope(
    features: Tensor,
    labels: Tensor,
    temperature: float,
    *,
    distance: Distance | str = Distance.EUCLIDEAN,
) -> tuple[float, float]:
    r"""SNNL and its slope in log T at ``temperature``, without autograd: one pass.

    With :math:`p_{ij} \propto e^{-d_{ij}/T}` over :math:`j \ne i` and :math:`q_{ij}` the
    same over :math:`i`'s positives,

    .. math:: \frac{\partial\,\mathrm{SNNL}}{\partial \log T}
        = \frac{1}{T}\,\mathrm{mean}_i\Big(\sum_j p_{ij} d_{ij} - \sum_j q_{ij} d_{ij}\Big),

    from the sums the optimal search uses (:mod:`snnl._search`: the pairwise products
    once, shifted by each anchor's nearest distances, so exact in every regime). The
    ``learned`` and ``reference`` temperature steps of the entanglement regulariser
    take it in place of a second forward and backward of the loss. Anchors without a
    positive are left out (as the loss does); where SNNL does not depend on T (one
    class, identical points) the slope is 0.

    Args:
        features: (N, ...) float tensor (detached; flattened to (N, D)).
        labels: (N,) integer tensor.
        temperature: T > 0.
        distance: "euclidean" (squared) or "cosine".

    Returns:
        (SNNL, dSNNL/dlog T) as floats (float64 sums).

    Example:
        >>> x, y = torch.randn(50, 4, dtype=torch.float64), torch.arange(50) % 3
        >>> t = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        >>> value = soft_nearest_neighbor_loss(x, y, t)
        >>> (grad,) = torch.autograd.grad(value, t)
        >>> f, slope = snnl_log_temperature_slope(x, y, 2.0)
        >>> abs(f - value.item()) < 1e-12, abs(slope - 2.0 * grad.item()) < 1e-12
        (True, True)
    """
    x, y = check_features_labels(features, labels)
    dist = check_distance(distance)
    t = check_positive("temperature", temperature)
    valid = _valid_anchors(y)
    if not bool(valid.any()):
        return 0.0, 0.0
    anchors = torch.nonzero(valid.cpu()).squeeze(1)
    with torch.no_grad():
        points = _search.KernelPoints(x.detach(), dist.euclidean)
        u = math.log(t) - points.log_scale
        curve = _search.Curve(points, y, anchors, first_u=u)
        if curve.constant is not None:
            return curve.values([u])[0], 0.0
        if curve.first is None or curve.first[0] != u:  # columns chunked, or u clamped
            f, f1, _ = curve.stats(u)
            return f, f1
        return curve.first[1], curve.first[2]


def whole_block_log_temperature_slope(
    features: Tensor,
    labels: Tensor,
    temperature: float,
    *,
    distance: Distance | str = Distance.EUCLIDEAN,
) -> float | None:
    r""":math:`\partial\,\mathrm{SNNL} / \partial \log T` (the mean over anchors with a
    positive) at ``temperature`` on a mini-batch, from the closed form of
    :func:`dense_log_temperature_derivatives` over the logits of the loss's one block
    (kernel units: scaled by a power of two and centred, so any finite features are in
    range, any T > 0): one N x N x D product and a few N x N passes. None beyond
    ``WHOLE_BLOCK_POINTS`` points or where it is not finite.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [4.5]], dtype=torch.float64)
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> t = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        >>> (grad,) = torch.autograd.grad(soft_nearest_neighbor_loss(x, y, t), t)
        >>> abs(whole_block_log_temperature_slope(x, y, 2.0) - 2.0 * grad.item()) < 1e-12
        True
    """
    x, y = check_features_labels(features, labels)
    distance = check_distance(distance)
    temperature = check_positive("temperature", temperature)
    if x.shape[0] > WHOLE_BLOCK_POINTS:
        return None
    with autocast_off(x.device.type):
        points = x if distance.euclidean else unit_vectors(x)
        batch = _blocked.sort_by_class(y)
        block = mini_batch_block(points.detach(), batch, distance.euclidean, temperature)
        return block.log_temperature_slope(temperature)


def optimal_temperature_of_block(
    block: MiniBatchBlock, *, start: float | None = None
) -> tuple[float, int]:
    """T* (caller units) of a mini-batch from the loss's one block at T = 1 (its points'
    distances: no product of their own) and the curve evaluations the search took: the
    one search of :func:`snnl_star` (grid over the data's range or Newton warm-started
    from ``start``, a previous log T*, checked), without its float32 spot check (the loss
    at T* is checked); the optimal mode's choice in a training step
    (:func:`snnl.loss.soft_nearest_neighbor_loss_at_chosen_temperature`).

    Example:
        >>> from snnl.loss import soft_nearest_neighbor_loss_at_chosen_temperature
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) % 3
        >>> x = torch.randn(60, 5, generator=g, dtype=torch.float64) + 2.0 * y[:, None]
        >>> search = lambda block: optimal_temperature_of_block(block)[0]
        >>> value, t = soft_nearest_neighbor_loss_at_chosen_temperature(
        ...     x, y, 1.0, search, optimal=True)
        >>> star = snnl_star(x, y)
        >>> abs(t / star.temperature - 1) < 1e-6, abs(value.item() / star.value.item() - 1) < 1e-9
        (True, True)
    """
    batch = block.batch
    anchors = torch.nonzero(batch.valid[batch.perm].cpu()).squeeze(1)
    if len(anchors) == 0:
        return 1.0, 0
    distance = Distance.EUCLIDEAN if block.logits.prep.euclidean else Distance.COSINE
    t, _, evals = _find(block.logits, batch.group, anchors, distance, None, start=start,
                        level=4, check=False)  # fmt: skip
    return t, evals


def estimate_temperature_curve(
    features,
    labels,
    temperatures,
    *,
    anchors: int = 256,
    generator: torch.Generator | None = None,
    distance: Distance | str = Distance.EUCLIDEAN,
    progress: bool = False,
) -> Tensor:
    """SNNL at each of ``temperatures`` estimated on ``anchors`` sampled anchors against all
    points (one pass over the features): the mean of the exact per-anchor terms, as in
    :func:`snnl.loss.estimate_snnl`; (len(temperatures),) float64.

    Example:
        >>> y = torch.arange(60) % 3
        >>> x = torch.randn(60, 3, generator=torch.Generator().manual_seed(1)) + y[:, None]
        >>> curve = estimate_temperature_curve(x, y, [0.5, 2.0], anchors=60)  # all anchors
        >>> bool(torch.allclose(curve, snnl_temperature_curve(x, y, [0.5, 2.0]).double()))
        True
    """
    dist = check_distance(distance)
    source, y, valid = _search.stream_inputs(features, labels, dist.euclidean)
    temps = check_temperatures(temperatures, source.dtype)
    m = check_int("anchors", anchors, low=2)
    prep = _stream.scan(source, dist.euclidean)
    idx = _search.sample_anchors(valid, m, generator)
    return _stream.checked_anchor_losses(source, y, prep, idx, temps, progress, "curve").mean(1)


# ----------------------------------------------------------------------------- two sets


def entanglement_between(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float | Tensor | None = None,
    distance: Distance | str = Distance.EUCLIDEAN,
) -> Tensor:
    """SNNL of the union of two sets labelled by set membership (e.g. real vs generated).

    High values: the two sets are entangled (hard to tell apart by their neighbours);
    low values: they are separated. ``temperature=None`` uses the optimal temperature
    (:func:`snnl_star`: found without gradient, then held fixed), so the result stays
    differentiable with respect to ``a`` and ``b``.

    Args:
        a: (Na, ...) float tensor; b: (Nb, ...) with the same trailing shape.

    Returns:
        0-dim tensor.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> real = torch.randn(50, 2, generator=g)
        >>> fake_far = torch.randn(50, 2, generator=g) + 20
        >>> fake_near = torch.randn(50, 2, generator=g)
        >>> bool(entanglement_between(real, fake_far) < entanglement_between(real, fake_near))
        True
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2 or t.shape[0] < 1:
            raise ValueError(f"{name} must have shape (N, ...) with N >= 1, got {tuple(t.shape)}")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"a and b must have the same shape per point, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    features = torch.cat([a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)])
    labels = torch.cat(
        [
            torch.zeros(a.shape[0], dtype=torch.int64, device=a.device),
            torch.ones(b.shape[0], dtype=torch.int64, device=a.device),
        ]
    )
    dist = check_distance(distance)
    if temperature is None:
        # the loss below warns about left-out anchors; the search warns only about
        # what is its own (a value that does not depend on T)
        x, y = check_features_labels(features.detach(), labels)
        valid = _valid_anchors(y)
        if bool(valid.any()):
            anchors = torch.nonzero(valid.cpu()).squeeze(1)
            temperature, _, _ = _find(x, y, anchors, dist, None, level=3)
        else:
            temperature = 1.0
    return soft_nearest_neighbor_loss(features, labels, temperature, distance=dist.value)


def entanglement(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float | Tensor | None = None,
    distance: Distance | str = Distance.EUCLIDEAN,
) -> Tensor:
    """Deprecated alias of :func:`entanglement_between` (two sets labelled by membership).

    The name read as the class entanglement of labelled features (what the
    ``snnl entanglement`` command measures); use :func:`entanglement_between`.
    """
    warnings.warn(
        "snnl.entanglement(a, b) is deprecated: use snnl.entanglement_between(a, b) "
        "(the SNNL of two sets labelled by membership)",
        DeprecationWarning,
        stacklevel=2,
    )
    return entanglement_between(a, b, temperature=temperature, distance=distance)
