"""The Soft Nearest Neighbor Loss (Frosst, Papernot & Hinton, ICML 2019).

For points x_1..x_N with labels y_1..y_N and a temperature T > 0 (eq. 1):

    SNNL = -1/|V| sum_{i in V} log( sum_{j != i, y_j = y_i} exp(-d(x_i, x_j) / T)
                                   / sum_{k != i}             exp(-d(x_i, x_k) / T) )

where d is the squared Euclidean distance (or the cosine distance 1 - cos) and
V is the set of anchors that have at least one other point of their class.
Low SNNL: classes well separated; high SNNL: classes entangled (about log C for
C balanced, fully mixed classes at large T).

The computation is exact in log space, never builds an N x N matrix and fuses
forward and backward in one blocked pass (see ``snnl._blocked``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from torch import Tensor, nn

from snnl import _blocked, _stream
from snnl._checks import (
    DISTANCES,
    check_choice,
    check_int,
    check_labels,
    check_positive,
    check_real,
    check_tensor,
)

__all__ = [
    "SNNLWarning",
    "soft_nearest_neighbor_loss",
    "SoftNearestNeighborLoss",
    "optimal_temperature",
    "snnl_temperature_curve",
    "entanglement_between",
    "entanglement",
    "SNNLEstimate",
    "open_npy",
    "snnl_streamed",
    "estimate_snnl",
    "estimate_optimal_temperature",
    "estimate_temperature_curve",
]

Distance = Literal["euclidean", "cosine"]
Reduction = Literal["mean", "sum", "none"]
REDUCTIONS = ("mean", "sum", "none")
_GRID_PER_DECADE = 6  # coarse grid of optimal_temperature, refined by Brent


class SNNLWarning(UserWarning):
    """The SNNL is partly or wholly undefined, or does not depend on the temperature."""


# ----------------------------------------------------------------------------- validation


def _check_features_labels(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Validate and return (features as (N, D) float32/float64, labels as (N,) int64)."""
    check_tensor("features", features, floating=True)
    if features.dim() < 2:
        raise ValueError(
            f"features must have shape (N, ...) with N points, got shape {tuple(features.shape)}"
        )
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"SNNL needs at least 2 points, got {n}")
    y = check_labels(labels, n, device=features.device)
    x = features.reshape(n, -1)
    if x.shape[1] == 0:
        raise ValueError(f"features have no dimensions per point: shape {tuple(features.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # float16 / bfloat16: computed in float32
    lo, hi = torch.aminmax(x.detach())  # one read; NaN and +-Inf show here (isfinite: 10x slower)
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        bad = int((~torch.isfinite(x)).any(1).sum())
        raise ValueError(f"features contain NaN or Inf (in {bad} of {n} points)")
    return x, y


def _check_temperature_range(name: str, value: float, dtype: torch.dtype) -> None:
    """``value`` must be a normal, finite number of ``dtype`` (the temperature is a tensor
    of that dtype when it carries a gradient)."""
    info = torch.finfo(dtype)
    if info.tiny <= value <= info.max:
        return
    kind = str(dtype).removeprefix("torch.")
    hint = (
        "; float64 features accept temperatures in [2.23e-308, 1.8e308]"
        if dtype != torch.float64
        else ""
    )
    raise ValueError(
        f"{name} {value:g} is outside the range {kind} features can use: "
        f"[{info.tiny:.3g}, {info.max:.3g}] (the smallest normal and the largest finite "
        f"{kind}){hint}"
    )


def _check_temperature(temperature: float | Tensor, dtype: torch.dtype) -> float:
    """A positive, finite temperature (Python number or one-element tensor) that
    ``dtype`` can represent as a normal number; returned as a Python float."""
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1 or temperature.dim() > 1:
            raise ValueError(
                f"temperature must be a scalar (0-dim or one-element 1-D tensor), got shape "
                f"{tuple(temperature.shape)}"
            )
        if temperature.dtype == torch.bool or temperature.is_complex():
            raise TypeError(f"temperature must be a real number, got dtype {temperature.dtype}")
        value = float(temperature.detach())
    else:
        value = temperature
    value = check_positive("temperature", value)
    _check_temperature_range("temperature", value, dtype)
    return value


def _check_block_size(block_size: int | None) -> None:
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
    ):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")


def _unit_vectors(x: Tensor) -> Tensor:
    """Rows divided by their norm (zero rows stay zero), with autograd.

    Each row is first scaled by a power of two (exact; cosine ignores positive
    scaling) so that no norm overflows or underflows, whatever the magnitude.
    """
    with torch.no_grad():
        row_max = x.abs().amax(1)
        e = torch.frexp(row_max).exponent.to(x.dtype)
        e = torch.where(row_max > 0, e, torch.zeros_like(e))
        half = torch.floor(e / 2)
        s1, s2 = torch.exp2(-half), torch.exp2(half - e)
    return F.normalize(x * s1.unsqueeze(1) * s2.unsqueeze(1), dim=1, eps=1e-12)


def _warn_left_out(batch: _blocked.SortedBatch, n: int, stacklevel: int = 3) -> None:
    left_out = n - batch.num_valid
    if left_out == n:
        warnings.warn(
            f"SNNL is undefined for every one of the {n} anchors: no label occurs twice, "
            "so no anchor has another point of its class; returning 0 with zero gradient",
            SNNLWarning,
            stacklevel=stacklevel,
        )
    elif left_out:
        warnings.warn(
            f"{left_out} of {n} anchors have no other point of their class and are left out "
            "of the SNNL",
            SNNLWarning,
            stacklevel=stacklevel,
        )


# ----------------------------------------------------------------------------- autograd


class _SNNLFunction(torch.autograd.Function):
    """Per-anchor SNNL of the points, or its weighted sum, with a fused gradient.

    ``points`` are the caller's features (euclidean) or unit vectors (cosine);
    scaling, centring and the float64 fallback happen inside (``_blocked.exact_pass``).
    mode "sum": returns sum_i w_i loss_i (weights fixed by the reduction); the
    gradient is computed in the same pass as the value.
    mode "none": returns the per-anchor losses (N,); backward recomputes the
    pass with the incoming gradient as weights.
    """

    @staticmethod
    def forward(ctx, points, temperature, batch, euclidean, weights, block_rows, needs_grad):
        t = float(temperature)
        prep = _blocked.prepare_points(points.detach(), batch, euclidean, t)
        ctx.prep, ctx.batch, ctx.t, ctx.block_rows = prep, batch, t, block_rows
        ctx.dtype = points.dtype
        if weights is None:  # reduction "none"
            res = _blocked.exact_pass(prep, batch, t, points.dtype, None, block_rows)
            out = torch.empty_like(res.loss)
            out[batch.perm] = res.loss
            ctx.mode = "none"
            return out
        w_sorted = weights[batch.perm]
        res = _blocked.exact_pass(
            prep, batch, t, points.dtype, w_sorted if needs_grad else None, block_rows
        )
        valid = ~torch.isnan(res.loss)
        total = (res.loss[valid].double() * w_sorted[valid].double()).sum().to(points.dtype)
        if needs_grad:
            grad_x = torch.empty_like(res.grad_x)
            grad_x[batch.perm] = res.grad_x
            ctx.save_for_backward(grad_x, _scalar_like(res.grad_t, temperature))
        ctx.mode = "sum"
        return total

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.mode == "sum":
            grad_x, grad_t = ctx.saved_tensors
            gx = grad_x * grad_out if ctx.needs_input_grad[0] else None
            gt = grad_t * grad_out.to(grad_t.dtype) if ctx.needs_input_grad[1] else None
            return gx, gt, None, None, None, None, None
        batch = ctx.batch
        w = torch.nan_to_num(grad_out, nan=0.0, posinf=0.0, neginf=0.0)
        w = torch.where(batch.valid, w, torch.zeros_like(w))[batch.perm]
        res = _blocked.exact_pass(ctx.prep, batch, ctx.t, ctx.dtype, w.contiguous(), ctx.block_rows)
        grad_x = torch.empty_like(res.grad_x)
        grad_x[batch.perm] = res.grad_x
        gx = grad_x if ctx.needs_input_grad[0] else None
        gt = _scalar_like(res.grad_t, grad_out) if ctx.needs_input_grad[1] else None
        return gx, gt, None, None, None, None, None


def _scalar_like(value: float, like: Tensor) -> Tensor:
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _temperature_tensor(temperature: float | Tensor, like: Tensor) -> Tensor:
    if isinstance(temperature, Tensor):
        return temperature.reshape(()).to(device=like.device, dtype=like.dtype)
    return torch.tensor(float(temperature), device=like.device, dtype=like.dtype)


# ----------------------------------------------------------------------------- public API


def soft_nearest_neighbor_loss(
    features: Tensor,
    labels: Tensor,
    temperature: float | Tensor = 1.0,
    *,
    distance: Distance = "euclidean",
    reduction: Reduction = "mean",
    block_size: int | None = None,
) -> Tensor:
    r"""Soft Nearest Neighbor Loss of ``features`` with ``labels`` at ``temperature`` (eq. 1).

    .. math::
        \ell_i = -\log \frac{\sum_{j \ne i,\ y_j = y_i} e^{-d(x_i, x_j)/T}}
                           {\sum_{k \ne i} e^{-d(x_i, x_k)/T}}

    Args:
        features: (N, ...) float tensor, flattened to (N, D). float16/bfloat16 are
            computed in float32; float64 stays float64.
        labels: (N,) integer tensor.
        temperature: positive float or 0-dim tensor (the gradient reaches a tensor
            temperature that requires grad); it must be a normal number of the compute
            dtype (float32: [1.18e-38, 3.4e38]; float64: [2.2e-308, 1.8e308]), else a
            ValueError names the range.
        distance: "euclidean" (squared Euclidean, as in the paper) or "cosine" (1 - cos;
            a zero vector is treated as having cosine 0 with every point).
        reduction: "mean" or "sum" over anchors with at least one other point of their
            class, or "none": (N,) per-anchor values, NaN where undefined.
        block_size: anchor rows per block (memory is O(block_size x N)); default keeps a
            block near 16 MiB of float32. From N = 1,025 the symmetric kernel runs (each
            pair of row tiles multiplied once, statistics from both orientations) and
            ``block_size`` is its tile height; below, one masked block (mini-batches).
            With a gradient, the symmetric kernel keeps the forward's logits (one
            triangle of tiles) for the backward when they fit in 256 MiB
            (``snnl._blocked.KEEP_LOGITS_BYTES``; float32 N up to about 11,000), else
            recomputes them; the two agree to rounding (tested).

    Returns:
        A 0-dim tensor ("mean", "sum") or an (N,) tensor ("none").

    Anchors without a positive are left out with an ``SNNLWarning`` saying how many;
    if none has a positive the result is 0 with zero gradient.

    Scale: SNNL(c x, T) = SNNL(x, T / c^2) (cosine: SNNL(c x, T) = SNNL(x, T)), so the
    points are rescaled internally by a power of two (exact) and any finite features
    give the true value and gradient; a value beyond the dtype's range (e.g. 1e39 in
    float32) comes back as inf, never as a saturated 0 or NaN.

    Precision: the pairwise products use |a|^2 + |b|^2 - 2ab after centring (the centre
    computed in float64), which in float32 loses digits for tight clusters lying far
    from the centroid. Every float32 pass is therefore checked on a few anchors (half
    spread out, half where |x|^2 / T is largest relative to the loss) against float64
    direct differences of the original features and, if it is off by more than 2e-6
    relative plus the float32 rounding of its logits, redone in float64 from the
    original features (slower, exact). On ordinary data the check costs a few percent.

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.2]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> round(soft_nearest_neighbor_loss(x, y, temperature=1.0).item(), 6)
        0.0
        >>> float(soft_nearest_neighbor_loss(x, torch.tensor([0, 1, 0, 1]), 10.0)) > 1
        True
    """
    x, y = _check_features_labels(features, labels)
    check_choice("distance", distance, DISTANCES)
    check_choice("reduction", reduction, REDUCTIONS)
    _check_temperature(temperature, x.dtype)
    _check_block_size(block_size)
    n = x.shape[0]
    batch = _blocked.sort_by_class(y)
    _warn_left_out(batch, n)
    t = _temperature_tensor(temperature, x)
    euclidean = distance == "euclidean"
    points = x if euclidean else _unit_vectors(x)
    needs_grad = torch.is_grad_enabled() and (points.requires_grad or t.requires_grad)
    if reduction == "none":
        return _SNNLFunction.apply(points, t, batch, euclidean, None, block_size, needs_grad)
    if batch.num_valid == 0:
        zero = (x * 0.0).sum()
        return zero + t * 0.0 if t.requires_grad else zero
    scale = 1.0 / batch.num_valid if reduction == "mean" else 1.0
    weights = batch.valid.to(x.dtype) * scale
    return _SNNLFunction.apply(points, t, batch, euclidean, weights, block_size, needs_grad)


class SoftNearestNeighborLoss(nn.Module):
    """Module form of :func:`soft_nearest_neighbor_loss`, optionally with a learned temperature.

    A learned temperature is stored as ``log_temperature`` (a parameter), so it
    stays positive under any optimiser step.

    Example:
        >>> loss_fn = SoftNearestNeighborLoss(temperature=2.0, learn_temperature=True)
        >>> x, y = torch.randn(16, 4), torch.arange(16) % 2
        >>> loss = loss_fn(x, y)
        >>> loss.backward()
        >>> loss_fn.log_temperature.grad is not None
        True
    """

    def __init__(
        self,
        temperature: float = 1.0,
        *,
        learn_temperature: bool = False,
        distance: Distance = "euclidean",
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        _check_temperature(temperature, torch.float32)  # log T is stored in float32
        check_choice("distance", distance, DISTANCES)
        check_choice("reduction", reduction, REDUCTIONS)
        self.distance = distance
        self.reduction = reduction
        log_t = torch.tensor(math.log(float(temperature)))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp()

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return soft_nearest_neighbor_loss(
            features,
            labels,
            self.temperature,
            distance=self.distance,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={float(self.temperature):.4g}, distance={self.distance!r}, "
            f"reduction={self.reduction!r}, learn_temperature={self.log_temperature.requires_grad}"
        )


def _positive_temperatures(temperatures) -> list[float]:
    temps = np.asarray(temperatures, dtype=np.float64)
    if temps.ndim != 1 or len(temps) == 0:
        raise ValueError("temperatures must be a non-empty 1-D sequence")
    if not np.isfinite(temps).all() or (temps <= 0).any():
        raise ValueError(f"temperatures must be positive and finite, got {temps.tolist()}")
    return [float(t) for t in temps]


def _prepared(x: Tensor, batch: _blocked.SortedBatch, distance: str, temperature: float):
    euclidean = distance == "euclidean"
    with torch.no_grad():
        points = x.detach() if euclidean else _unit_vectors(x.detach())
    return _blocked.prepare_points(points, batch, euclidean, temperature)


def snnl_temperature_curve(
    features: Tensor,
    labels: Tensor,
    temperatures: Tensor | np.ndarray | list[float],
    *,
    distance: Distance = "euclidean",
) -> Tensor:
    """SNNL (mean over anchors with a positive) at each of ``temperatures``: (len(temperatures),).

    The pairwise products are computed once per block and reused for every
    temperature, so a curve costs one pass of matrix products. Float32 curves are
    spot-checked at every temperature like :func:`soft_nearest_neighbor_loss`.

    Example:
        >>> x, y = torch.randn(40, 3), torch.arange(40) % 4
        >>> snnl_temperature_curve(x, y, [0.1, 1.0, 10.0]).shape
        torch.Size([3])
    """
    x, y = _check_features_labels(features, labels)
    check_choice("distance", distance, DISTANCES)
    temps = _positive_temperatures(temperatures)
    for t in (min(temps), max(temps)):
        _check_temperature_range("temperature", t, x.dtype)
    batch = _blocked.sort_by_class(y)
    _warn_left_out(batch, x.shape[0])
    if batch.num_valid == 0:
        return torch.zeros(len(temps), dtype=x.dtype)
    prep = _prepared(x, batch, distance, math.sqrt(min(temps) * max(temps)))
    with torch.no_grad():
        per_anchor = _blocked.exact_grid(prep, batch, temps, x.dtype)
    return per_anchor.nanmean(1).cpu()


def _same_value_at_every_temperature(x: Tensor, batch: _blocked.SortedBatch, distance: str):
    """Why SNNL does not depend on T here (a reason string), or None."""
    if batch.num_classes == 1:
        return "there is only one class, so SNNL = 0"
    points = x if distance == "euclidean" else _unit_vectors(x)
    if bool((points == points[0]).all()):
        return "all points are identical, so every distance is the same"
    return None


def _optimal_temperature(
    x: Tensor,
    y: Tensor,
    distance: str,
    bounds: tuple[float, float],
    *,
    warn_left_out: bool,
    stacklevel: int,
) -> tuple[float, float]:
    """:func:`optimal_temperature` on validated (x, y); see there."""
    lo, hi = bounds
    log_lo, log_hi = math.log10(lo), math.log10(hi)
    n_grid = max(2, int(math.ceil((log_hi - log_lo) * _GRID_PER_DECADE)) + 1)
    log_grid = np.linspace(log_lo, log_hi, n_grid)
    batch = _blocked.sort_by_class(y)
    if warn_left_out:
        _warn_left_out(batch, x.shape[0], stacklevel + 1)
    if batch.num_valid == 0:
        return lo, 0.0
    constant = _same_value_at_every_temperature(x.detach(), batch, distance)
    with torch.no_grad():
        prep = _prepared(x, batch, distance, math.sqrt(lo * hi))

        def value_at(log_t: float) -> float:
            res = _blocked.exact_pass(prep, batch, 10.0**log_t, x.dtype, None)
            return float(res.loss.double().nanmean())

        if constant is not None:
            value = value_at(log_lo)
            warnings.warn(
                f"every temperature gives the same SNNL ({value:.6g}): {constant}; "
                f"returning the lower bound T = {lo:g}",
                SNNLWarning,
                stacklevel=stacklevel,
            )
            return lo, value
        grid = [float(10.0**g) for g in log_grid]
        grid_values = _blocked.exact_grid(prep, batch, grid, x.dtype).double().nanmean(1).numpy()
        best_log, best_value = float(log_grid[np.argmin(grid_values)]), float(grid_values.min())
        for k in np.argsort(grid_values, kind="stable")[:3]:
            left, right = log_grid[max(k - 1, 0)], log_grid[min(k + 1, n_grid - 1)]
            res = minimize_scalar(
                value_at, bounds=(left, right), method="bounded", options={"xatol": 1e-6}
            )
            if float(res.fun) < best_value:
                best_log, best_value = float(res.x), float(res.fun)
    return float(min(max(10**best_log, lo), hi)), best_value


def optimal_temperature(
    features: Tensor,
    labels: Tensor,
    *,
    distance: Distance = "euclidean",
    bounds: tuple[float, float] = (1e-4, 1e4),
) -> tuple[float, float]:
    """The temperature that minimises SNNL within ``bounds``, and the SNNL there (eq. 2).

    SNNL*(x, y) = min_T SNNL(x, y, T). The search is in log T: a grid of 6 points
    per decade over ``bounds`` (one pass of products for the whole grid), then a
    bounded Brent refinement (to 1e-6 in log10 T) around each of the three best grid
    points. The value returned is never above the value at any grid point.

    Returns:
        (temperature, value) as Python floats. Where SNNL does not depend on T (a
        single class: SNNL = 0; all points identical) an ``SNNLWarning`` says so and
        the lower bound is returned with that value; where no label occurs twice
        (SNNL undefined) the lower bound and 0.0, with an ``SNNLWarning``.

    ``bounds`` must lie within the normal range of the features' dtype (float32:
    [1.18e-38, 3.4e38]).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) % 3
        >>> x = torch.randn(60, 5, generator=g) + 2.0 * y[:, None]  # three shifted clusters
        >>> t, v = optimal_temperature(x, y)
        >>> 1e-4 < t < 1e4 and v <= snnl_temperature_curve(x, y, [t / 2, t * 2]).min().item()
        True
    """
    x, y = _check_features_labels(features, labels)
    check_choice("distance", distance, DISTANCES)
    lo, hi = _check_bounds(bounds, x.dtype)
    return _optimal_temperature(x, y, distance, (lo, hi), warn_left_out=True, stacklevel=3)


def _check_bounds(bounds, dtype: torch.dtype) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (low, high) of numbers, got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"bounds must satisfy 0 < low < high (finite), got {bounds}")
    _check_temperature_range("lower temperature bound", lo, dtype)
    _check_temperature_range("upper temperature bound", hi, dtype)
    return lo, hi


def entanglement_between(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float | Tensor | None = None,
    distance: Distance = "euclidean",
) -> Tensor:
    """SNNL of the union of two sets labelled by set membership (e.g. real vs generated).

    High values: the two sets are entangled (hard to tell apart by their neighbours);
    low values: they are separated. ``temperature=None`` uses the optimal temperature
    (found without gradient, then held fixed), so the result stays differentiable
    with respect to ``a`` and ``b``.

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
    if temperature is None:
        # the loss below warns about left-out anchors; the search warns only about
        # what is its own (a value that does not depend on T)
        x, y = _check_features_labels(features.detach(), labels)
        check_choice("distance", distance, DISTANCES)
        bounds = _check_bounds((1e-4, 1e4), x.dtype)
        temperature, _ = _optimal_temperature(
            x, y, distance, bounds, warn_left_out=False, stacklevel=3
        )
    return soft_nearest_neighbor_loss(features, labels, temperature, distance=distance)


def entanglement(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float | Tensor | None = None,
    distance: Distance = "euclidean",
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


# ----------------------------------------------------------------------------- dataset scale


def open_npy(path) -> _stream.NpyRows:
    """Rows of a .npy file, read block by block with ``os.pread`` (never mapped whole), for
    :func:`snnl_streamed`, :func:`estimate_snnl` and :func:`estimate_optimal_temperature`.

    ``np.load(path, mmap_mode="r")`` serves those functions too, but maps the whole file
    into the address space, which a limit such as ``ulimit -v`` below the file size
    refuses; this reader needs only the rows it is reading.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "f.npy"
        >>> np.save(path, np.arange(12, dtype=np.float32).reshape(4, 3))
        >>> with open_npy(path) as rows:
        ...     rows.shape, rows[1:3].tolist()
        ((4, 3), [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    """
    return _stream.NpyRows(path)


def _stream_inputs(features, labels, distance: str):
    """(source, labels (N,) int64, valid (N,) bool) for the dataset-scale functions."""
    check_choice("distance", distance, DISTANCES)
    source = _stream.Source(features)
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
        labels = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))
    y = check_labels(labels, source.n, device="cpu")
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    valid = counts[inverse] >= 2
    if not bool(valid.any()):
        raise ValueError(
            f"SNNL is undefined: no label occurs twice among the {source.n} points, so no "
            "point has another point of its class"
        )
    return source, y, valid


def snnl_streamed(
    features,
    labels,
    temperature: float,
    *,
    distance: Distance = "euclidean",
    progress: bool = False,
) -> float:
    """Exact SNNL (eq. 1, mean over points with another point of their class) of features
    read block by block: they need not fit in memory.

    The symmetric kernel runs over row tiles read from ``features`` (each sorted by class
    within itself) against the column chunks after them, so each pair of points is
    multiplied once (0.5 N^2 D multiply-adds) and memory is O(tile x width) for a block
    plus O(N) for labels and per-point statistics. Float32 passes are spot-checked
    against float64 and redone in float64 (then by direct differences) as in
    :func:`soft_nearest_neighbor_loss`.

    Args:
        features: (N, D) rows readable by slices: a torch tensor, a numpy array,
            ``np.load(path, mmap_mode="r")``, or :func:`open_npy` (no whole-file mapping).
        labels: (N,) integer tensor or array, in memory.
        temperature: T > 0 within the normal range of the features' dtype.
        progress: show a tqdm progress bar on stderr.

    Returns:
        The SNNL as a Python float. Raises ValueError where it is undefined (no label
        occurs twice).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(300) % 3
        >>> x = torch.randn(300, 4, generator=g) + y[:, None]
        >>> value = snnl_streamed(x.numpy(), y.numpy(), 2.0)
        >>> abs(value - soft_nearest_neighbor_loss(x, y, 2.0).item()) < 1e-5
        True
    """
    source, y, valid = _stream_inputs(features, labels, distance)
    t = _check_temperature(temperature, source.dtype)
    prep = _stream.scan(source, distance == "euclidean")
    losses = _stream.checked_symmetric_losses(source, y, prep, t, progress)
    return float(losses[valid].mean())


@dataclass(frozen=True)
class SNNLEstimate:
    """An SNNL estimated from sampled anchors, with a confidence interval.

    ``value`` is the mean of the exact per-anchor terms of ``anchors`` anchors drawn
    uniformly without replacement from the ``population`` points that have another point
    of their class; [``low``, ``high``] is the two-sided Student-t interval at
    ``confidence``: value -+ t_{M-1} * std_error, std_error = s / sqrt(M) *
    sqrt((P - M) / (P - 1)) (sample standard deviation s, finite-population correction).
    """

    value: float
    low: float
    high: float
    confidence: float
    anchors: int
    population: int
    std_error: float
    temperature: float


def _sample_anchors(valid: Tensor, anchors: int, generator: torch.Generator | None) -> Tensor:
    pool = torch.nonzero(valid).squeeze(1)
    take = min(anchors, len(pool))
    return pool[torch.randperm(len(pool), generator=generator)[:take]]


def estimate_snnl(
    features,
    labels,
    temperature: float,
    *,
    anchors: int,
    confidence: float = 0.95,
    generator: torch.Generator | None = None,
    distance: Distance = "euclidean",
    progress: bool = False,
) -> SNNLEstimate:
    r"""SNNL estimated from ``anchors`` sampled anchors against all points, with a
    confidence interval.

    The SNNL is the mean over the P points with another point of their class of their
    terms \ell_i (eq. 1). M anchors drawn uniformly without replacement give M exact
    terms (each against all N points: O(M N D) work, features read block by block),
    identically distributed draws from the P terms; their mean is unbiased and, by the
    central limit theorem, a Student-t interval with M - 1 degrees of freedom covers
    the SNNL at about the nominal rate, the standard error shrunk by the
    finite-population correction sqrt((P - M) / (P - 1)) when M is a sizeable share of P
    (M = P gives the exact value and a zero-width interval). The terms are skewed (a few
    anchors inside another class have large terms), so use M of a few hundred or more.

    Args:
        features, labels, temperature, distance, progress: as in :func:`snnl_streamed`.
        anchors: M >= 2 (capped at P).
        confidence: the interval's level, in (0, 1).
        generator: a seeded ``torch.Generator`` makes the draw (and result) reproducible.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(400) % 4
        >>> x = torch.randn(400, 3, generator=g) + y[:, None]
        >>> est = estimate_snnl(x, y, 1.0, anchors=100, generator=g)
        >>> est.low <= est.value <= est.high and est.anchors == 100
        True
    """
    source, y, valid = _stream_inputs(features, labels, distance)
    t = _check_temperature(temperature, source.dtype)
    m = check_int("anchors", anchors, low=2)
    level = check_real("confidence", confidence, low=0.0, high=1.0, low_inclusive=False,
                       high_inclusive=False)  # fmt: skip
    prep = _stream.scan(source, distance == "euclidean")
    idx = _sample_anchors(valid, m, generator)
    terms = _stream.checked_anchor_losses(source, y, prep, idx, [t], progress, "SNNL estimate")[0]
    return _interval(terms, int(valid.sum()), level, t)


def _interval(terms: Tensor, population: int, level: float, temperature: float) -> SNNLEstimate:
    from scipy.stats import t as student_t

    m = len(terms)
    mean = float(terms.mean())
    sd = float(terms.std()) if m > 1 else 0.0
    fpc = math.sqrt((population - m) / (population - 1)) if population > 1 else 0.0
    se = sd / math.sqrt(m) * fpc
    half = float(student_t.ppf((1.0 + level) / 2.0, df=max(m - 1, 1))) * se
    return SNNLEstimate(mean, mean - half, mean + half, level, m, population, se, temperature)


def estimate_optimal_temperature(
    features,
    labels,
    *,
    anchors: int = 256,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] = (1e-4, 1e4),
    distance: Distance = "euclidean",
    progress: bool = False,
) -> tuple[float, float]:
    """The temperature minimising the SNNL estimated on ``anchors`` sampled anchors against
    all points (eq. 2 on data too large for :func:`optimal_temperature`).

    Three passes over the features: a grid of 3 points per decade over ``bounds``, then
    21 points across the best grid point's neighbours, then 21 across the best of those
    (log10 T resolved to 1/300 of a decade). Each pass computes one product per block
    for all its temperatures.

    Returns:
        (T, the anchor estimate of SNNL at T). Where every temperature gives the same
        estimate an ``SNNLWarning`` says so and the lower bound is returned.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 2
        >>> x = torch.randn(200, 3, generator=g) + 2.0 * y[:, None]
        >>> t, v = estimate_optimal_temperature(x, y, anchors=200)
        >>> t_all, v_all = optimal_temperature(x, y)  # every point is an anchor here
        >>> abs(math.log10(t / t_all)) < 0.01 and abs(v - v_all) < 1e-4
        True
    """
    source, y, valid = _stream_inputs(features, labels, distance)
    lo, hi = _check_bounds(bounds, source.dtype)
    m = check_int("anchors", anchors, low=2)
    prep = _stream.scan(source, distance == "euclidean")
    idx = _sample_anchors(valid, m, generator)
    log_lo, log_hi = math.log10(lo), math.log10(hi)
    grid = np.linspace(log_lo, log_hi, max(2, int(math.ceil((log_hi - log_lo) * 3)) + 1))
    best_log, best_value = log_lo, math.inf
    for step in range(3):
        temps = [float(10.0**g) for g in grid]
        values = _stream.checked_anchor_losses(
            source, y, prep, idx, temps, progress, f"temperature search {step + 1}/3"
        ).mean(1)
        if step == 0 and float(values.max() - values.min()) <= 1e-12 * float(values.abs().max()):
            warnings.warn(
                f"every temperature gives the same SNNL ({float(values[0]):.6g}) on the "
                f"{len(idx)} search anchors; returning the lower bound T = {lo:g}",
                SNNLWarning,
                stacklevel=2,
            )
            return lo, float(values[0])
        k = int(torch.argmin(values))
        if float(values[k]) < best_value:
            best_log, best_value = float(grid[k]), float(values[k])
        left, right = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
        grid = np.linspace(left, right, 21)
    return float(min(max(10.0**best_log, lo), hi)), best_value


def estimate_temperature_curve(
    features,
    labels,
    temperatures,
    *,
    anchors: int = 256,
    generator: torch.Generator | None = None,
    distance: Distance = "euclidean",
    progress: bool = False,
) -> Tensor:
    """SNNL at each of ``temperatures`` estimated on ``anchors`` sampled anchors against all
    points (one pass over the features): the mean of the exact per-anchor terms, as in
    :func:`estimate_snnl`; (len(temperatures),) float64.

    Example:
        >>> y = torch.arange(60) % 3
        >>> x = torch.randn(60, 3, generator=torch.Generator().manual_seed(1)) + y[:, None]
        >>> curve = estimate_temperature_curve(x, y, [0.5, 2.0], anchors=60)  # all anchors
        >>> bool(torch.allclose(curve, snnl_temperature_curve(x, y, [0.5, 2.0]).double()))
        True
    """
    source, y, valid = _stream_inputs(features, labels, distance)
    temps = _positive_temperatures(temperatures)
    for t in (min(temps), max(temps)):
        _check_temperature_range("temperature", t, source.dtype)
    m = check_int("anchors", anchors, low=2)
    prep = _stream.scan(source, distance == "euclidean")
    idx = _sample_anchors(valid, m, generator)
    return _stream.checked_anchor_losses(source, y, prep, idx, temps, progress, "curve").mean(1)
