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
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from torch import Tensor, nn

from snnl import _blocked

__all__ = [
    "SNNLWarning",
    "soft_nearest_neighbor_loss",
    "SoftNearestNeighborLoss",
    "optimal_temperature",
    "entanglement_between",
    "entanglement",
]

Distance = Literal["euclidean", "cosine"]
Reduction = Literal["mean", "sum", "none"]
_DISTANCES = ("euclidean", "cosine")
_REDUCTIONS = ("mean", "sum", "none")
_GRID_PER_DECADE = 6  # coarse grid of optimal_temperature, refined by Brent


class SNNLWarning(UserWarning):
    """Anchors were left out of the loss because no other point shares their class."""


# ----------------------------------------------------------------------------- validation


def _check_features_labels(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Validate and return (features as (N, D) float32/float64, labels as (N,) int64)."""
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if not features.is_floating_point():
        raise TypeError(f"features must be a floating-point tensor, got dtype {features.dtype}")
    if features.dim() < 2:
        raise ValueError(
            f"features must have shape (N, ...) with N points, got shape {tuple(features.shape)}"
        )
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"SNNL needs at least 2 points, got {n}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(
            f"labels must have shape ({n},) to match features {tuple(features.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    x = features.reshape(n, -1)
    if x.shape[1] == 0:
        raise ValueError(f"features have no dimensions per point: shape {tuple(features.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # float16 / bfloat16: computed in float32
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(1).sum())
        raise ValueError(f"features contain NaN or Inf (in {bad} of {n} points)")
    return x, labels.to(device=x.device, dtype=torch.int64)


def _check_temperature(temperature: float | Tensor) -> float | Tensor:
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1 or temperature.dim() > 1:
            raise ValueError(
                f"temperature must be a scalar (0-dim or one-element 1-D tensor), got shape "
                f"{tuple(temperature.shape)}"
            )
        value = float(temperature.detach())
    elif isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        value = float(temperature)
    else:
        raise TypeError(f"temperature must be a float or a 0-dim tensor, got {temperature!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be positive and finite, got {value}")
    return temperature


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


def _prepare(x: Tensor, distance: str) -> Tensor:
    """Centre (euclidean: distances are translation invariant, and centring keeps the
    |a|^2 + |b|^2 - 2ab expansion accurate) or L2-normalise (cosine), with autograd."""
    if distance == "euclidean":
        return x - x.mean(0, keepdim=True)
    return F.normalize(x, dim=1, eps=1e-12)


def _warn_left_out(batch: _blocked.SortedBatch, n: int) -> None:
    left_out = n - batch.num_valid
    if left_out == n:
        warnings.warn(
            f"SNNL is undefined for every one of the {n} anchors: no label occurs twice, "
            "so no anchor has another point of its class; returning 0 with zero gradient",
            SNNLWarning,
            stacklevel=3,
        )
    elif left_out:
        warnings.warn(
            f"{left_out} of {n} anchors have no other point of their class and are left out "
            "of the SNNL",
            SNNLWarning,
            stacklevel=3,
        )


# ----------------------------------------------------------------------------- autograd


class _SNNLFunction(torch.autograd.Function):
    """Per-anchor SNNL of prepared points, or its weighted sum, with a fused gradient.

    mode "sum": returns sum_i w_i loss_i (weights fixed by the reduction); the
    gradient is computed in the same blocked pass as the value.
    mode "none": returns the per-anchor losses (N,); backward recomputes the
    blocks with the incoming gradient as weights.
    """

    @staticmethod
    def forward(ctx, x, temperature, batch, euclidean, weights, block_rows, needs_grad):
        t = float(temperature)
        xs = x[batch.perm]
        ctx.batch, ctx.euclidean, ctx.t, ctx.block_rows = batch, euclidean, t, block_rows
        if weights is None:  # reduction "none"
            loss_sorted, _, _ = _blocked.exact_pass(xs, batch, t, euclidean, None, block_rows)
            out = torch.empty_like(loss_sorted)
            out[batch.perm] = loss_sorted
            if needs_grad:
                ctx.save_for_backward(xs)
            ctx.mode = "none"
            return out
        w_sorted = weights[batch.perm]
        loss_sorted, grad_xs, grad_t = _blocked.exact_pass(
            xs, batch, t, euclidean, w_sorted if needs_grad else None, block_rows
        )
        valid = ~torch.isnan(loss_sorted)
        total = (loss_sorted[valid].double() * w_sorted[valid].double()).sum().to(x.dtype)
        if needs_grad:
            grad_x = torch.empty_like(grad_xs)
            grad_x[batch.perm] = grad_xs
            ctx.save_for_backward(grad_x, grad_t)
        ctx.mode = "sum"
        return total

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.mode == "sum":
            grad_x, grad_t = ctx.saved_tensors
            gx = grad_x * grad_out if ctx.needs_input_grad[0] else None
            gt = grad_t * grad_out if ctx.needs_input_grad[1] else None
            return gx, gt, None, None, None, None, None
        (xs,) = ctx.saved_tensors
        batch = ctx.batch
        w = torch.nan_to_num(grad_out, nan=0.0, posinf=0.0, neginf=0.0)
        w = torch.where(batch.valid, w, torch.zeros_like(w))[batch.perm]
        _, grad_xs, grad_t = _blocked.exact_pass(
            xs, batch, ctx.t, ctx.euclidean, w.contiguous(), ctx.block_rows
        )
        grad_x = torch.empty_like(grad_xs)
        grad_x[batch.perm] = grad_xs
        gx = grad_x if ctx.needs_input_grad[0] else None
        gt = grad_t if ctx.needs_input_grad[1] else None
        return gx, gt, None, None, None, None, None


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
            temperature that requires grad).
        distance: "euclidean" (squared Euclidean, as in the paper) or "cosine" (1 - cos;
            a zero vector is treated as having cosine 0 with every point).
        reduction: "mean" or "sum" over anchors with at least one other point of their
            class, or "none": (N,) per-anchor values, NaN where undefined.
        block_size: anchor rows per block (memory is O(block_size x N)); default keeps a
            block near 16 MiB of float32.

    Returns:
        A 0-dim tensor ("mean", "sum") or an (N,) tensor ("none").

    Anchors without a positive are left out with an ``SNNLWarning`` saying how many;
    if none has a positive the result is 0 with zero gradient.

    Precision: the pairwise products use |a|^2 + |b|^2 - 2ab after centring, which
    in float32 loses digits for tight clusters lying far from the centroid. Every
    float32 pass is therefore checked on a few anchors against float64 direct
    differences and, if it is off by more than 2e-6 relative, redone in float64
    (slower, exact). On ordinary data the check costs a few percent.

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.2]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> round(soft_nearest_neighbor_loss(x, y, temperature=1.0).item(), 6)
        0.0
        >>> float(soft_nearest_neighbor_loss(x, torch.tensor([0, 1, 0, 1]), 10.0)) > 1
        True
    """
    x, y = _check_features_labels(features, labels)
    temperature = _check_temperature(temperature)
    _check_choice("distance", distance, _DISTANCES)
    _check_choice("reduction", reduction, _REDUCTIONS)
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    n = x.shape[0]
    batch = _blocked.sort_by_class(y)
    _warn_left_out(batch, n)
    t = _temperature_tensor(temperature, x)
    prepared = _prepare(x, distance)
    euclidean = distance == "euclidean"
    needs_grad = torch.is_grad_enabled() and (prepared.requires_grad or t.requires_grad)
    if reduction == "none":
        return _SNNLFunction.apply(prepared, t, batch, euclidean, None, block_size, needs_grad)
    if batch.num_valid == 0:
        zero = (x * 0.0).sum()
        return zero + t * 0.0 if t.requires_grad else zero
    scale = 1.0 / batch.num_valid if reduction == "mean" else 1.0
    weights = batch.valid.to(x.dtype) * scale
    return _SNNLFunction.apply(prepared, t, batch, euclidean, weights, block_size, needs_grad)


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
        _check_temperature(temperature)
        _check_choice("distance", distance, _DISTANCES)
        _check_choice("reduction", reduction, _REDUCTIONS)
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


def snnl_temperature_curve(
    features: Tensor,
    labels: Tensor,
    temperatures: Tensor | np.ndarray | list[float],
    *,
    distance: Distance = "euclidean",
) -> Tensor:
    """SNNL (mean over anchors with a positive) at each of ``temperatures``: (len(temperatures),).

    The pairwise products are computed once per block and reused for every
    temperature, so a curve costs one pass of matrix products.

    Example:
        >>> x, y = torch.randn(40, 3), torch.arange(40) % 4
        >>> snnl_temperature_curve(x, y, [0.1, 1.0, 10.0]).shape
        torch.Size([3])
    """
    x, y = _check_features_labels(features, labels)
    _check_choice("distance", distance, _DISTANCES)
    temps = torch.as_tensor(np.asarray(temperatures, dtype=np.float64), dtype=torch.float64)
    if temps.dim() != 1 or len(temps) == 0:
        raise ValueError("temperatures must be a non-empty 1-D sequence")
    if not bool(torch.isfinite(temps).all()) or bool((temps <= 0).any()):
        raise ValueError(f"temperatures must be positive and finite, got {temps.tolist()}")
    batch = _blocked.sort_by_class(y)
    _warn_left_out(batch, x.shape[0])
    if batch.num_valid == 0:
        return torch.zeros(len(temps), dtype=x.dtype)
    with torch.no_grad():
        xs = _prepare(x.detach(), distance)[batch.perm]
        per_anchor = _blocked.snnl_temperature_grid(xs, batch, temps, distance == "euclidean")
    return per_anchor.nanmean(1).cpu()


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
    points. The value
    returned is never above the value at any grid point.

    Returns:
        (temperature, value) as Python floats.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) % 3
        >>> x = torch.randn(60, 5, generator=g) + 2.0 * y[:, None]  # three shifted clusters
        >>> t, v = optimal_temperature(x, y)
        >>> 1e-4 < t < 1e4 and v <= snnl_temperature_curve(x, y, [t / 2, t * 2]).min().item()
        True
    """
    lo, hi = (float(b) for b in bounds)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"bounds must satisfy 0 < low < high (finite), got {bounds}")
    x, y = _check_features_labels(features, labels)
    _check_choice("distance", distance, _DISTANCES)
    log_lo, log_hi = math.log10(lo), math.log10(hi)
    n_grid = max(2, int(math.ceil((log_hi - log_lo) * _GRID_PER_DECADE)) + 1)
    log_grid = np.linspace(log_lo, log_hi, n_grid)
    batch = _blocked.sort_by_class(y)
    _warn_left_out(batch, x.shape[0])
    if batch.num_valid == 0:
        return float(10 ** log_grid[0]), 0.0
    with torch.no_grad():
        xs = _prepare(x.detach(), distance)[batch.perm]
        euclidean = distance == "euclidean"
        grid_values = (
            _blocked.snnl_temperature_grid(xs, batch, torch.tensor(10**log_grid), euclidean)
            .nanmean(1)
            .double()
            .numpy()
        )

        def value_at(log_t: float) -> float:
            loss, _, _ = _blocked.exact_pass(xs, batch, 10.0**log_t, euclidean, None)
            return float(loss.double().nanmean())

        best_log, best_value = float(log_grid[np.argmin(grid_values)]), float(grid_values.min())
        for k in np.argsort(grid_values, kind="stable")[:3]:
            left, right = log_grid[max(k - 1, 0)], log_grid[min(k + 1, n_grid - 1)]
            res = minimize_scalar(
                value_at, bounds=(left, right), method="bounded", options={"xatol": 1e-6}
            )
            if float(res.fun) < best_value:
                best_log, best_value = float(res.x), float(res.fun)
    return float(10**best_log), best_value


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
        temperature, _ = optimal_temperature(features.detach(), labels, distance=distance)
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
