"""The Soft Nearest Neighbor Loss (Frosst, Papernot & Hinton, ICML 2019).

For points x_1..x_N with labels y_1..y_N and a temperature T > 0 (eq. 1):

    SNNL = -1/|V| sum_{i in V} log( sum_{j != i, y_j = y_i} exp(-d(x_i, x_j) / T)
                                   / sum_{k != i}             exp(-d(x_i, x_k) / T) )

where d is the squared Euclidean distance (or the cosine distance 1 - cos) and
V is the set of anchors that have at least one other point of their class.
Low SNNL: classes well separated; high SNNL: classes entangled (about log C for
C balanced, fully mixed classes at large T).

The computation is exact in log space, never builds an N x N matrix and fuses
forward and backward in one blocked pass (see ``snnl._blocked``). Eq. 2 (the optimal
temperature and SNNL*) is :mod:`snnl.temperature`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from snnl import _blocked, _stream
from snnl._checks import (
    check_choice,
    check_features_labels,
    check_int,
    check_real,
    check_temperature,
)
from snnl._dense import (
    MiniBatchBlock,
    dense_log_temperature_derivatives,
    dense_snnl_terms,
    dense_snnl_terms_at_optimum,
    implicit_log_temperature,
    mini_batch_block,
)
from snnl._search import sample_anchors, stream_inputs, unit_vectors
from snnl.distances import Distance, check_distance

__all__ = [
    "SNNLWarning",
    "soft_nearest_neighbor_loss",
    "soft_nearest_neighbor_loss_and_slope",
    "soft_nearest_neighbor_loss_at_chosen_temperature",
    "MiniBatchBlock",
    "WHOLE_BLOCK_POINTS",
    "snnl_at_optimum",
    "SoftNearestNeighborLoss",
    "dense_snnl_terms",
    "dense_log_temperature_derivatives",
    "implicit_log_temperature",
    "SNNLEstimate",
    "open_npy",
    "snnl_streamed",
    "estimate_snnl",
    "warn_left_out",
]

Reduction = Literal["mean", "sum", "none"]
#: Up to this many points the loss is one block (``snnl._rows``), whose logits a
#: temperature choice can share (:func:`soft_nearest_neighbor_loss_at_chosen_temperature`).
WHOLE_BLOCK_POINTS = _blocked.SYMMETRIC_MIN_POINTS - 1
REDUCTIONS = ("mean", "sum", "none")


class SNNLWarning(UserWarning):
    """The SNNL is partly or wholly undefined, or does not depend on the temperature."""


# ----------------------------------------------------------------------------- validation


def _check_block_size(block_size: int | None) -> None:
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
    ):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")


def warn_left_out(num_valid: int, n: int, stacklevel: int = 3) -> None:
    """An ``SNNLWarning`` when some (or all) of the ``n`` anchors have no other point of
    their class (``num_valid`` have one) and are left out of the SNNL."""
    left_out = n - num_valid
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

    A backward in grad mode (``create_graph=True``: gradient penalties, double backprop)
    differentiates the dense formula :func:`dense_snnl_terms` of the saved inputs instead,
    so the gradient it returns is itself differentiable (exactly, never detached); with
    ``optimal`` (the temperature is the minimiser T* of the weighted sum) log T there is
    :func:`implicit_log_temperature` of the points, so second derivatives are SNNL*'s.
    Backward runs with autocast off (the forward's caller turned it off too).
    """

    @staticmethod
    def forward(
        ctx,
        points,
        temperature,
        batch,
        euclidean,
        weights,
        block_rows,
        needs_grad,
        optimal,
        slope_out=None,
        shared=None,
    ):
        t = float(temperature)
        if shared is None or not shared.prep.serves(t):  # shared: _blocked.BlockLogits
            shared = None
            prep = _blocked.prepare_points(points.detach(), batch, euclidean, t)
        else:
            prep = shared.prep
        ctx.prep, ctx.batch, ctx.t, ctx.block_rows = prep, batch, t, block_rows
        ctx.optimal = optimal
        ctx.dtype, ctx.euclidean, ctx.weights = points.dtype, euclidean, weights
        ctx.save_for_backward(points, temperature)
        if weights is None:  # reduction "none"
            res = _blocked.exact_pass(prep, batch, t, points.dtype, None, block_rows)
            out = torch.empty_like(res.loss)
            out[batch.perm] = res.loss
            ctx.mode = "none"
            return out
        w_sorted = weights[batch.perm]
        res = _blocked.exact_pass(
            prep, batch, t, points.dtype, w_sorted if needs_grad else None, block_rows, shared
        )
        valid = ~torch.isnan(res.loss)
        total = (res.loss[valid].double() * w_sorted[valid].double()).sum().to(points.dtype)
        if needs_grad:
            grad_x = torch.empty_like(res.grad_x)
            grad_x[batch.perm] = res.grad_x
            ctx.grads = grad_x, _scalar_like(res.grad_t, temperature)
            if slope_out is not None:  # d(sum)/dlog T = T d(sum)/dT, from this same pass
                slope_out.append(res.grad_t * t)
        ctx.mode = "sum"
        return total

    @staticmethod
    def backward(ctx, grad_out):
        points, temperature = ctx.saved_tensors
        with autocast_off(points.device.type):
            if torch.is_grad_enabled():
                return _SNNLFunction.graph_backward(ctx, points, temperature, grad_out)
            return _SNNLFunction.fused_backward(ctx, grad_out)

    @staticmethod
    def fused_backward(ctx, grad_out):
        if ctx.mode == "sum":
            grad_x, grad_t = ctx.grads
            gx = grad_x * grad_out if ctx.needs_input_grad[0] else None
            gt = grad_t * grad_out.to(grad_t.dtype) if ctx.needs_input_grad[1] else None
            return gx, gt, None, None, None, None, None, None, None, None
        batch = ctx.batch
        w = torch.nan_to_num(grad_out, nan=0.0, posinf=0.0, neginf=0.0)
        w = torch.where(batch.valid, w, torch.zeros_like(w))[batch.perm]
        res = _blocked.exact_pass(ctx.prep, batch, ctx.t, ctx.dtype, w.contiguous(), ctx.block_rows)
        grad_x = torch.empty_like(res.grad_x)
        grad_x[batch.perm] = res.grad_x
        gx = grad_x if ctx.needs_input_grad[0] else None
        gt = _scalar_like(res.grad_t, grad_out) if ctx.needs_input_grad[1] else None
        return gx, gt, None, None, None, None, None, None, None, None

    @staticmethod
    def graph_backward(ctx, points, temperature, grad_out):
        """The gradient as a differentiable function of the inputs and ``grad_out``."""
        batch = ctx.batch
        classes = torch.empty_like(batch.group)
        classes[batch.perm] = batch.group
        if ctx.optimal:  # T* moves with the points: SNNL*'s second derivatives
            per, valid = dense_snnl_terms_at_optimum(
                points, temperature, classes, ctx.euclidean, ctx.weights
            )
        else:
            per, valid = dense_snnl_terms(points, temperature, classes, ctx.euclidean)
        if ctx.mode == "sum":
            w = ctx.weights * grad_out
        else:
            w = torch.where(valid, torch.nan_to_num(grad_out, nan=0.0, posinf=0.0, neginf=0.0), 0)
        total = (torch.where(valid, per, 0) * w).sum()
        need_x, need_t = ctx.needs_input_grad[:2]
        inputs = [points] * need_x + [temperature] * need_t
        grads = list(torch.autograd.grad(total, inputs, create_graph=True, allow_unused=True))
        gx = (grads.pop(0) if need_x else None, points)
        gt = (grads.pop(0) if need_t else None, temperature)
        out = [torch.zeros_like(v) if g is None and need else g
               for (g, v), need in ((gx, need_x), (gt, need_t))]  # fmt: skip
        return (*out, None, None, None, None, None, None, None, None)


# ----------------------------------------------------------------------------- transforms


def _reduce(terms: Tensor, valid: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return torch.where(valid, terms, math.nan)
    total = torch.where(valid, terms, 0).sum()
    if reduction == "mean":
        total = total / valid.sum().clamp_min(1)
    return total


def transformed(*values) -> bool:
    """Whether the call is being traced by ``torch.compile`` or any value is a torch.func
    (grad, vmap, jacrev, ...) wrapper: such calls take the dense differentiable formula
    and skip checks that read values on the host."""
    if torch.compiler.is_compiling():
        return True
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return any(isinstance(v, Tensor) and wrapped(v) for v in values)


def vmap_by_loop(op, info, in_dims, tensors: tuple, *args) -> tuple[Tensor, int]:
    """A registered op's vmap rule that loops: ``op(*problem_tensors, *args)`` for each of
    the ``info.batch_size`` problems (``tensors`` sliced along their ``in_dims``; None:
    shared), stacked along dim 0."""
    out = []
    for i in range(info.batch_size):
        parts = [t if d is None else t.select(d, i) for t, d in zip(tensors, in_dims, strict=False)]
        out.append(op(*parts, *args))
    return torch.stack(out), 0


def autocast_off(device_type: str):
    """A region with autocast off on ``device_type`` when it is on (else a no-op): the SNNL
    computes in float32/float64 whatever the caller's autocast says."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know
        enabled = False
    return torch.autocast(device_type, enabled=False) if enabled else contextlib.nullcontext()


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
    distance: Distance | str = Distance.EUCLIDEAN,
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

    Training loops (see docs/own_loop.md): under ``torch.autocast`` the SNNL is computed
    in float32 (autocast off inside), returned as float32, and each input's gradient comes
    back in its own dtype. ``create_graph=True`` gives an exactly differentiable gradient
    (the backward then differentiates :func:`dense_snnl_terms`, O(N^2) memory). Under
    ``torch.compile`` and torch.func transforms (``grad``, ``vmap``, ``jacrev``) the dense
    formula runs in plain torch ops (no graph break; the checks that read values on the
    host, NaN/Inf features and the temperature's value, and the left-out warning are
    skipped there). Otherwise the fused blocked kernel runs, deterministic on CPU.

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.2]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> round(soft_nearest_neighbor_loss(x, y, temperature=1.0).item(), 6)
        0.0
        >>> float(soft_nearest_neighbor_loss(x, torch.tensor([0, 1, 0, 1]), 10.0)) > 1
        True
    """
    check_choice("reduction", reduction, REDUCTIONS)
    x, y, distance, traced = _checked(features, labels, temperature, distance, block_size)
    with autocast_off(x.device.type):
        return _loss(x, y, temperature, distance, reduction, block_size, traced)


def _checked(features, labels, temperature, distance, block_size):
    """(features (N, D), labels, Distance, traced) after the loss's input checks; the
    checks that read values on the host are skipped where the call is traced."""
    traced = transformed(features, labels, temperature)
    x, y = check_features_labels(features, labels, check_values=not traced)
    distance = check_distance(distance)
    check_temperature(temperature, x.dtype, check_value=not traced)
    _check_block_size(block_size)
    return x, y, distance, traced


def snnl_at_optimum(
    features: Tensor,
    labels: Tensor,
    temperature: float | Tensor,
    *,
    distance: Distance | str = Distance.EUCLIDEAN,
    block_size: int | None = None,
) -> Tensor:
    r"""SNNL* of ``features`` (eq. 2, :math:`\min_T` of the mean SNNL) given its minimiser
    ``temperature`` (T*, e.g. from :func:`snnl.temperature.snnl_star`), as a
    differentiable function of the features.

    The value is SNNL(x, T*) and the gradient that of SNNL* (the envelope theorem: T*
    held fixed), both as :func:`soft_nearest_neighbor_loss` (mean) computes them, at the
    same cost. Second derivatives (``create_graph=True``, ``torch.func``; a
    ``torch.compile`` graph has no double backward) are SNNL*'s: the dependence of T* on
    the features adds :math:`-H_{xu} H_{ux} / H_{uu}` (u = log T) to the Hessian at fixed T
    (:func:`implicit_log_temperature`). A ``temperature`` that is not the minimiser gives
    SNNL(x, T) and its first derivatives; its second derivatives are then not those of
    any SNNL*. Arguments and checks as :func:`soft_nearest_neighbor_loss`.

    Example:
        >>> from snnl.temperature import snnl_star
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [4.5], [0.5], [4.0]], dtype=torch.float64)
        >>> y = torch.tensor([0, 0, 1, 1, 0, 1])
        >>> star = snnl_star(x, y)
        >>> value = snnl_at_optimum(x, y, star.temperature)
        >>> bool(torch.isclose(value, star.value))
        True
    """
    x, y, distance, traced = _checked(features, labels, temperature, distance, block_size)
    with autocast_off(x.device.type):
        return _loss(x, y, temperature, distance, "mean", block_size, traced, optimal=True)


def soft_nearest_neighbor_loss_and_slope(
    features: Tensor,
    labels: Tensor,
    temperature: float,
    *,
    distance: Distance | str = Distance.EUCLIDEAN,
) -> tuple[Tensor, float | None]:
    r"""The mean :func:`soft_nearest_neighbor_loss` and its slope in log T,
    :math:`\partial\,\mathrm{SNNL} / \partial \log T`, from the same fused pass (its
    gradient with respect to T rides along the gradient with respect to the features).

    The slope is None where no fused pass with a gradient runs (grad mode off, features
    that do not require grad, ``torch.compile`` and torch.func transforms): there
    :func:`snnl.temperature.snnl_log_temperature_slope` gives it in one pass of its own.
    The ``learned`` temperature mode of the entanglement regulariser steps log T on it.

    Example:
        >>> x = torch.randn(40, 3, dtype=torch.float64, requires_grad=True)
        >>> y = torch.arange(40) % 4
        >>> t = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        >>> value, slope = soft_nearest_neighbor_loss_and_slope(x, y, 2.0)
        >>> (grad,) = torch.autograd.grad(soft_nearest_neighbor_loss(x, y, t), t)
        >>> abs(slope - 2.0 * grad.item()) < 1e-12
        True
    """
    x, y, distance, traced = _checked(features, labels, temperature, distance, None)
    slope: list[float] = []
    with autocast_off(x.device.type):
        value = _loss(x, y, temperature, distance, "mean", None, traced, slope_out=slope)
    return value, (slope[0] if slope else None)


def soft_nearest_neighbor_loss_at_chosen_temperature(
    features: Tensor,
    labels: Tensor,
    temperature: float,
    choose: Callable[[MiniBatchBlock | None], float],
    *,
    distance: Distance | str = Distance.EUCLIDEAN,
    optimal: bool = False,
) -> tuple[Tensor, float]:
    r"""The mean :func:`soft_nearest_neighbor_loss` at the temperature ``choose`` picks
    from the batch's own distances, the choice and the loss sharing one N x N x D product.

    On a mini-batch (at most ``WHOLE_BLOCK_POINTS`` points, eager) ``choose`` gets the
    loss's one block at T = 1 (:class:`MiniBatchBlock`, prepared near
    ``temperature``, e.g. the current T): a temperature step takes its slope from it
    (``block.log_temperature_slope(T)``: the reference mode's step on T, then the loss
    at the new T), a search its T* (:func:`snnl.temperature.optimal_temperature_of_block`:
    the optimal mode). The loss at the returned T then reuses the block's points and
    logits: two products in all (its forward and gradient) where the choice took one of
    its own before. Elsewhere (more points, ``torch.compile`` and torch.func transforms)
    ``choose(None)``: the caller computes its choice from the features. ``optimal``: the
    returned T is the batch's T*, so second derivatives are SNNL*'s
    (:func:`snnl_at_optimum`).

    Returns:
        (the mean SNNL at the chosen temperature, that temperature).

    Example:
        >>> x = torch.randn(40, 3, dtype=torch.float64)
        >>> y = torch.arange(40) % 4
        >>> step = lambda block: 2.0 - 0.1 * block.log_temperature_slope(2.0)
        >>> value, t = soft_nearest_neighbor_loss_at_chosen_temperature(x, y, 2.0, step)
        >>> from snnl.temperature import whole_block_log_temperature_slope
        >>> g = whole_block_log_temperature_slope(x, y, 2.0)
        >>> t == 2.0 - 0.1 * g and bool(torch.isclose(value, soft_nearest_neighbor_loss(x, y, t)))
        True
    """
    x, y, distance, traced = _checked(features, labels, temperature, distance, None)
    if traced or x.shape[0] > WHOLE_BLOCK_POINTS:
        t = choose(None)
        loss = snnl_at_optimum if optimal else soft_nearest_neighbor_loss
        return loss(x, y, t, distance=distance), t
    with autocast_off(x.device.type):
        batch = _blocked.sort_by_class(y)
        points = x if distance.euclidean else unit_vectors(x)
        block = mini_batch_block(points.detach(), batch, distance.euclidean, float(temperature))
        t = choose(block)
        check_temperature(t, x.dtype)
        value = _loss(x, y, t, distance, "mean", None, False, optimal, None, batch, block.logits)
    return value, t


def _loss(
    x,
    y,
    temperature,
    distance,
    reduction,
    block_size,
    traced,
    optimal=False,
    slope_out=None,
    batch=None,
    shared=None,
) -> Tensor:
    t = _temperature_tensor(temperature, x)
    euclidean = distance.euclidean
    if traced:
        points = x if euclidean else unit_vectors(x)
        # T* moves with the points: SNNL*'s second derivatives (torch.func); a compiled
        # graph has no double backward, so compile skips the term (first order is equal)
        if optimal and not torch.compiler.is_compiling():
            return _reduce(*dense_snnl_terms_at_optimum(points, t, y, euclidean), reduction)
        return _reduce(*dense_snnl_terms(points, t, y, euclidean), reduction)
    n = x.shape[0]
    batch = _blocked.sort_by_class(y) if batch is None else batch
    warn_left_out(batch.num_valid, n, stacklevel=4)
    points = x if euclidean else unit_vectors(x)
    needs_grad = torch.is_grad_enabled() and (points.requires_grad or t.requires_grad)
    if reduction == "none":
        return _SNNLFunction.apply(points, t, batch, euclidean, None, block_size, needs_grad, False)
    if batch.num_valid == 0:
        zero = (x * 0.0).sum()
        return zero + t * 0.0 if t.requires_grad else zero
    scale = 1.0 / batch.num_valid if reduction == "mean" else 1.0
    weights = batch.valid.to(x.dtype) * scale
    return _SNNLFunction.apply(
        points, t, batch, euclidean, weights, block_size, needs_grad, optimal, slope_out, shared
    )


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
        distance: Distance | str = Distance.EUCLIDEAN,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        check_temperature(temperature, torch.float32)  # log T is stored in float32
        self.distance = check_distance(distance).value
        check_choice("reduction", reduction, REDUCTIONS)
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


# ----------------------------------------------------------------------------- dataset scale


def open_npy(path) -> _stream.NpyRows:
    """Rows of a .npy file, read block by block with ``os.pread`` (never mapped whole), for
    :func:`snnl_streamed`, :func:`estimate_snnl` and the functions of :mod:`snnl.temperature`.

    ``np.load(path, mmap_mode="r")`` serves those functions too, but maps the whole file
    into the address space, which a limit such as ``ulimit -v`` below the file size
    refuses; this reader needs only the rows it is reading.

    Example:
        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "f.npy"
        >>> np.save(path, np.arange(12, dtype=np.float32).reshape(4, 3))
        >>> with open_npy(path) as rows:
        ...     rows.shape, rows[1:3].tolist()
        ((4, 3), [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    """
    return _stream.NpyRows(path)


def snnl_streamed(
    features,
    labels,
    temperature: float,
    *,
    distance: Distance | str = Distance.EUCLIDEAN,
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
    distance = check_distance(distance)
    source, y, valid = stream_inputs(features, labels, distance.euclidean)
    t = check_temperature(temperature, source.dtype)
    prep = _stream.scan(source, distance.euclidean)
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


def estimate_snnl(
    features,
    labels,
    temperature: float,
    *,
    anchors: int,
    confidence: float = 0.95,
    generator: torch.Generator | None = None,
    distance: Distance | str = Distance.EUCLIDEAN,
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
    distance = check_distance(distance)
    source, y, valid = stream_inputs(features, labels, distance.euclidean)
    t = check_temperature(temperature, source.dtype)
    m = check_int("anchors", anchors, low=2)
    level = check_real("confidence", confidence, low=0.0, high=1.0, low_inclusive=False,
                       high_inclusive=False)  # fmt: skip
    prep = _stream.scan(source, distance.euclidean)
    idx = sample_anchors(valid, m, generator)
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
