"""The exact, memory-bounded Soft Nearest Neighbor Loss kernels.

Notation (one anchor i, points sorted so that each class is a contiguous range):

    s_ij = (a * <x_i, x_j> + b_i + b_j) / T    logits, j != i (symmetric: s_ij = s_ji)
    euclidean: a = 2, b_i = -|x_i|^2           (s_ij = -|x_i - x_j|^2 / T)
    cosine:    a = 1, b_i = 0                  (x already L2-normalised; s_ij = (cos - 1) / T + 1/T,
                                                the constant 1/T cancels in the ratio)

    LSE_pos(i) = logsumexp_{j != i, y_j = y_i} s_ij
    LSE_neg(i) = logsumexp_{j: y_j != y_i}     s_ij
    z_i        = LSE_neg(i) - LSE_pos(i)
    loss_i     = -log(sum_pos / (sum_pos + sum_neg)) = softplus(z_i)

Writing the loss as softplus(LSE_neg - LSE_pos), each log-sum-exp shifted by its
own maximum, keeps it exact in every regime: when every exp(s) underflows (points
far apart relative to T) the shifted sums still hold a term equal to 1, and when
the classes are well separated softplus(z) = exp(z) is computed without the
cancellation of log(den) - log(num).

Gradient with respect to the logits, for anchor weight w_i:

    G_ij = dL/ds_ij = w_i * sigmoid(z_i) * ( N_ij - Q_ij )
    N_ij = exp(s_ij - LSE_neg(i)) for negatives (0 otherwise)
    Q_ij = exp(s_ij - LSE_pos(i)) for positives (0 otherwise)

Since s is symmetric, only H = G + G^T reaches the points. Every kernel returns the
per-anchor loss, ``acc = H X`` and ``rowsum = H 1``; :func:`exact_pass` turns them into
gradients with respect to the caller's features and temperature:

    euclidean: dL/dx_i = -(2/T) u_i,  u_i = rowsum_i x_i - acc_i = sum_j H_ij (x_i - x_j)
               dL/dT   = (1/T^2) sum_i <x_i, u_i>     (= (1/T^2) sum_{i<j} H_ij |x_i - x_j|^2)
    cosine:    dL/dx_i = (1/T) acc_i,  dL/dT = -(1/(2 T^2)) sum_i <x_i, acc_i>

Row-block kernel: every block of B anchor rows is processed once: one (B, D) x (D, N)
product for the logits and, when a gradient is needed, two products for the
gradient (rows: G X, columns: G^T X_B), so forward and backward take three
N x N x D products in total and O(B x N) extra memory. No N x N matrix is ever built.

Scale and precision. SNNL(c x, T) = SNNL(x, T / c^2) exactly, so the euclidean
kernels see x * 2^-k - centre with T * 2^-2k: a power of two (exact) that brings the
largest coordinate to [0.5, 1), and a centre computed in float64 (distances are
translation invariant; centring keeps the |a|^2 + |b|^2 - 2ab expansion accurate).
Any finite input is then in range. A float32 pass is spot-checked on a few anchors
against float64 direct differences of the original features and redone in float64
when it lost digits (tight clusters far from the centre) or when its logits would
leave the float32 range.

Modules: ``_points`` (sorted batches, scaled and centred points), ``_rows`` (the
row-block kernel), ``_tiles`` (the tile pairs of the symmetric kernel, shared with the
streamed kernel of ``_stream``) and this one: the symmetric pass, the spot checks and
the exact passes that choose among them (every kernel name is importable from here).
"""

from __future__ import annotations

import math
import mmap
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from snnl._points import (
    FLOAT32_LOGIT_LOG2,
    FLOAT64_LOGIT_LOG2,
    KernelOut,
    PreparedPoints,
    SortedBatch,
    logit_bound_log2,
    max_log2,
    prepare_points,
    scale_pow2,
    softplus,
    sort_by_class,
)
from snnl._rows import (
    default_block_rows,
    row_block_pass,
    snnl_temperature_grid,
    whole_block_logits,
)
from snnl._tiles import (
    KEPT_TILE_ELEMENTS,
    LSEStats,
    Tile,
    augmented_operands,
    class_runs,
    tile_at,
    tile_pair_gradient,
    tile_pair_stats,
    tile_plan,
    tile_sizes,
)

__all__ = [  # the kernels' names, here or re-exported from their modules
    "CHECK_TOLERANCE",
    "KEEP_LOGITS_BYTES",
    "ROUNDING_SLACK",
    "SYMMETRIC_MIN_POINTS",
    "BlockLogits",
    "ExactOut",
    "KernelOut",
    "LSEStats",
    "PreparedPoints",
    "SortedBatch",
    "Tile",
    "augmented_operands",
    "check_anchors",
    "class_runs",
    "default_block_rows",
    "exact_grid",
    "exact_pass",
    "first_tier_logits",
    "logit_bound_log2",
    "max_log2",
    "needs_check",
    "prepare_points",
    "reference_distances",
    "scale_pow2",
    "row_block_pass",
    "scratch",
    "snnl_temperature_grid",
    "softplus",
    "sort_by_class",
    "symmetric_pass",
    "tile_pair_gradient",
    "tile_pair_stats",
    "tile_plan",
    "times_pow2",
    "whole_block_logits",
]

# Above this many points (N^2 > 2**20, see _rows) the symmetric kernel is used; below,
# one masked block of the row kernel is faster (see benchmarks/bench_snnl.py).
SYMMETRIC_MIN_POINTS = 1025
# The gradient pass reuses the forward's logits, kept per tile, when all of them fit in
# this many bytes (float32: N up to about 11,000), instead of multiplying the tiles again:
# forward and backward then take 1.5 N x N x D products. Above it they are recomputed
# and the extra memory stays O(tile x width).
KEEP_LOGITS_BYTES = 2**28


# ----------------------------------------------------------------------------- symmetric kernel

# CPU buffers from this size up are mapped with transparent huge pages where the system
# offers them (madvise): first touch takes ~2.5x less time than with 4 KiB pages (a
# 151 MiB buffer: 20 instead of 50 ms) and passes over it miss the TLB less.
_HUGE_PAGE_MIN_BYTES = 2**24


def scratch(numel: int, like: Tensor) -> Tensor:
    """An uninitialised 1-d tensor of ``numel`` elements of ``like``'s dtype and device.

    Large CPU buffers are anonymous mappings advised to use transparent huge pages
    (Linux); elsewhere, or if that fails, an ordinary ``torch.empty``. The mapping lives
    as long as the tensor.

    >>> scratch(5, torch.zeros(1)).shape
    torch.Size([5])
    """
    nbytes = numel * like.element_size()
    if like.device.type != "cpu" or nbytes < _HUGE_PAGE_MIN_BYTES:
        return like.new_empty(numel)
    try:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            buf.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError, ValueError):
        return like.new_empty(numel)
    with warnings.catch_warnings():  # the mapping is writable; torch warns for any buffer
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(buf, dtype=like.dtype, count=numel)


def _kept_logits(plan: list[tuple[int, int, int, int]], xs: Tensor) -> list[Tensor] | None:
    """One (rows, columns) tensor per block of ``plan`` for the forward's logits, views of
    one buffer, or None when they would take more than KEEP_LOGITS_BYTES."""
    sizes = [(r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in plan]
    if sum(sizes) * xs.element_size() > KEEP_LOGITS_BYTES:
        return None
    store = scratch(sum(sizes), xs)
    views, start = [], 0
    for (r0, r1, c0, c1), size in zip(plan, sizes, strict=True):
        views.append(store[start : start + size].view(r1 - r0, c1 - c0))
        start += size
    return views


def symmetric_pass(
    xs: Tensor,
    batch: SortedBatch,
    temperature: float,
    euclidean: bool,
    weights: Tensor | None,
    tile: int | None = None,
    norms: Tensor | None = None,
) -> KernelOut:
    """The symmetric two-orientation kernel over sorted kernel points ``xs`` (N, D)
    (``norms``: their |x|^2 when already computed).

    Same contract as :func:`row_block_pass`; 0.5 N^2 D multiply-adds forward only and
    O(tile x width) extra memory. With ``weights`` (forward and backward): 1.5 N^2 D when
    the forward's logits are kept for the gradient pass (at most KEEP_LOGITS_BYTES of
    them, in blocks twice as wide), else 2 N^2 D with O(tile x width) memory. The two
    agree to the rounding of their different block orders.
    """
    n, d = xs.shape
    alpha = (2.0 if euclidean else 1.0) / temperature
    a, b = augmented_operands(xs, euclidean, alpha, norms)
    kept = None
    if weights is not None:  # wide blocks, their logits kept if they fit
        rows, width = tile_sizes(n, tile, KEPT_TILE_ELEMENTS)
        plan = tile_plan(n, rows, width)
        kept = _kept_logits(plan, xs)
    if kept is None:
        rows, width = tile_sizes(n, tile)
        plan = tile_plan(n, rows, width)
    buffers = [scratch(rows * width, xs) for _ in range(2 if kept is not None else 3)]

    def views(r: int, c: int) -> list[Tensor]:
        return [buf[: r * c].view(r, c) for buf in buffers]

    def work(k: int, r: int, c: int) -> list[Tensor]:
        """(logits, exponentials, second work tile) of block k."""
        if kept is None:
            return views(r, c)
        return [kept[k], *views(r, c)]

    tiles = {}

    def tile_of(r0: int, r1: int) -> Tile:
        if (r0, r1) not in tiles:
            tiles[(r0, r1)] = tile_at(a, b, batch.group, r0, r1)
        return tiles[(r0, r1)]

    stats = LSEStats(n, xs.device)
    for k, (r0, r1, c0, c1) in enumerate(plan):
        ti, tj = tile_of(r0, r1), tile_of(c0, c1)
        s, e, _ = work(k, r1 - r0, c1 - c0)
        torch.mm(ti.a, tj.b.T, out=s)
        lead = r1 - r0 if c0 == r0 else 0
        tile_pair_stats(s, ti, tj, lead, stats, e, keep_logits=kept is not None)
    loss, z = stats.losses()
    if weights is None:
        return KernelOut(loss.to(xs.dtype), None, None)
    coef = weights.double() * torch.nan_to_num(torch.sigmoid(z), nan=0.0)
    scale = float(coef.abs().max()) if n else 0.0
    acc = xs.new_zeros(n, d + 1)  # [H X, H 1]
    if scale == 0.0:
        return KernelOut(loss.to(xs.dtype), acc[:, :d], acc[:, d])
    lse_pos, lse_neg = stats.lse()
    log_c = torch.log(coef.abs() / scale)  # -inf where c = 0
    shifts = (
        torch.where(coef != 0, lse_neg - log_c, math.inf).to(xs.dtype),
        torch.where(coef != 0, lse_pos - log_c, math.inf).to(xs.dtype),
    )
    signs = torch.sign(coef).to(xs.dtype) if bool((coef < 0).any()) else None
    for k, (r0, r1, c0, c1) in enumerate(plan):
        ti, tj = tile_of(r0, r1), tile_of(c0, c1)
        lead = r1 - r0 if c0 == r0 else 0
        s, e, f = work(k, r1 - r0, c1 - c0)
        if kept is None:
            torch.mm(ti.a, tj.b.T, out=s)
        h = tile_pair_gradient(s, ti, tj, lead, shifts, signs, (e, f))
        acc[r0:r1].addmm_(h, tj.a[:, : d + 1])
        if lead < c1 - c0:
            acc[c0 + lead : c1].addmm_(h[:, lead:].T, ti.a[:, : d + 1])
    acc.mul_(scale)
    return KernelOut(loss.to(xs.dtype), acc[:, :d], acc[:, d])


# ----------------------------------------------------------------------------- exactness

# Anchors re-computed in float64 by direct differences to check a pass: half spread
# evenly over the anchors, half where the expansion is most at risk. A pass is
# checked only when its logits could carry an absolute error above _CHECK_FLOOR
# (eps * 8 max|x|^2 / T, what the expansion can add; below it the loss is within
# _CHECK_FLOOR relative, since |d softplus(z)| <= softplus(z) |dz|).
_CHECK_ANCHORS = 8
_CHECK_FLOOR = {torch.float32: 1e-7, torch.float64: 1e-12}
CHECK_TOLERANCE = {torch.float32: 2e-6, torch.float64: 1e-12}
ROUNDING_SLACK = 32.0


def check_anchors(loss: Tensor, norms: Tensor) -> Tensor:
    """Sorted rows to check: evenly spread, plus those with the largest |x|^2 / max(1, loss),
    whose logits lose the most digits relative to the loss."""
    valid = torch.nonzero(~torch.isnan(loss)).squeeze(1)
    if len(valid) <= _CHECK_ANCHORS:
        return valid
    half = _CHECK_ANCHORS // 2
    spread = valid[torch.linspace(0, len(valid) - 1, half, device=loss.device).long()]
    risk = norms[valid].double() / loss[valid].double().clamp(min=1.0)
    risky = valid[torch.topk(risk, half).indices]
    return torch.unique(torch.cat([spread, risky]))


def reference_distances(prep: PreparedPoints, batch: SortedBatch, rows: Tensor, direct: bool):
    """Float64 distances (len(rows), N), kernel units, of sorted ``rows`` to every sorted
    point, the self pair set to inf, and the same-class mask.

    ``direct``: by explicit differences of the uncentred float64 features (to check a
    float64 pass). Else by the float64 expansion of the centred features (to check a
    float32 pass: its error, 2^-52 |x|^2, is 2^29 times below what float32 can carry).
    """
    if prep.euclidean and direct:
        anchors = prep.points(torch.float64, rows, centred=False)
        parts = []
        for c0 in range(0, prep.perm.shape[0], 8192):
            cols = prep.points(torch.float64, slice(c0, c0 + 8192), centred=False)
            mode = "donot_use_mm_for_euclid_dist"
            parts.append(torch.cdist(anchors, cols, compute_mode=mode) ** 2)
        d = torch.cat(parts, 1)
    elif prep.euclidean:
        # caller order and caller units (float32 features: no overflow in float64), then
        # sorted and scaled: x - c is exact for float32 features and a float32 centre
        x64 = prep.source.double().sub_(scale_pow2(prep.centre, -prep.k))
        anchors = x64[prep.perm[rows]]
        norms = torch.linalg.vector_norm(x64, dim=1).square_()  # one read; 2 ulp of float64
        d = torch.addmm(norms.unsqueeze(0), anchors, x64.T, alpha=-2.0)
        d.add_((anchors * anchors).sum(1, keepdim=True)).clamp_(min=0.0)
        d = scale_pow2(scale_pow2(d[:, prep.perm], prep.k), prep.k)
    else:
        d = 1.0 - prep.points(torch.float64, rows) @ prep.source.double()[prep.perm].T
    d[torch.arange(len(rows), device=rows.device), rows] = math.inf
    same = batch.group[rows, None] == batch.group[None, :]
    return d, same


def _reference_from_distances(d: Tensor, same: Tensor, temperature: float):
    logits = -d / temperature
    lse_pos = torch.logsumexp(logits.masked_fill(~same, -math.inf), 1)
    lse_neg = torch.logsumexp(logits.masked_fill(same, -math.inf), 1)
    return softplus(lse_neg - lse_pos), lse_pos, lse_neg


def _agrees(
    loss: Tensor, d: Tensor, same: Tensor, pick: Tensor, temperature: float, dtype: torch.dtype
) -> bool:
    ref, lse_pos, lse_neg = _reference_from_distances(d, same, temperature)
    # Any computation in dtype rounds the logits -d/T to ~eps * |d/T|: allow that much
    # (scaled by the magnitude of the log-sum-exps), flag only what the expansion adds.
    scale = torch.maximum(lse_pos.abs(), torch.nan_to_num(lse_neg.abs(), posinf=0.0))
    eps = torch.finfo(dtype).eps
    allowed = CHECK_TOLERANCE[dtype] * ref.abs() + ROUNDING_SLACK * eps * scale
    return bool(((loss[pick].double() - ref).abs() <= allowed).all())


def needs_check(norms_log2: float, temperature: float, euclidean: bool, dtype) -> bool:
    """Whether the logits of a pass could carry an error above _CHECK_FLOOR."""
    eps = torch.finfo(dtype).eps
    bound = logit_bound_log2(norms_log2, temperature, euclidean)
    return math.log2(8.0 * eps) + bound > math.log2(_CHECK_FLOOR[dtype])


def _pass_is_exact(
    prep: PreparedPoints,
    norms: Tensor,
    batch: SortedBatch,
    temperatures: list[float],
    losses,
    dtype: torch.dtype,
) -> bool:
    """Check passes (one per temperature, kernel units) on a few anchors against float64
    references of the original features (:func:`reference_distances`).

    The |a|^2 + |b|^2 - 2ab products lose digits when points lie far from the
    centroid relative to their neighbour distances (float32 sooner, float64 too for
    tight clusters far apart). A deterministic sample of anchors is recomputed
    (O(k N D)); a deviation beyond CHECK_TOLERANCE relative plus the rounding any
    logit -d/T carries in that dtype (ROUNDING_SLACK * eps * |LSE|) means the pass is
    redone more carefully.
    """
    top = max_log2(norms)
    if not any(needs_check(top, t, prep.euclidean, dtype) for t in temperatures):
        return True
    for loss in losses:
        if not bool(torch.isfinite(loss[~torch.isnan(loss)]).all()):
            return False
    pick = torch.unique(torch.cat([check_anchors(loss, norms) for loss in losses]))
    if len(pick) == 0:
        return True
    d, same = reference_distances(prep, batch, pick, direct=dtype == torch.float64)
    pairs = zip(losses, temperatures, strict=True)
    return all(_agrees(loss, d, same, pick, t, dtype) for loss, t in pairs)


class ExactOut(NamedTuple):
    """Per-anchor loss in sorted order (caller's dtype) and, with weights, the gradient
    with respect to the sorted features (N, D) and to T (a Python float)."""

    loss: Tensor
    grad_x: Tensor | None
    grad_t: float | None


def times_pow2(value: float, log2_factor: float) -> float:
    """``value * 2**log2_factor`` without intermediate overflow (inf or 0 only if the result is)."""
    if value == 0 or not math.isfinite(value):
        return value * 1.0
    e = math.floor(log2_factor)
    mantissa, exponent = math.frexp(value * 2.0 ** (log2_factor - e))
    try:
        return math.ldexp(mantissa, exponent + e)
    except OverflowError:
        return math.copysign(math.inf, value)


def _tensor_times_pow2(u: Tensor, log2_factor: float, sign: float, dtype: torch.dtype) -> Tensor:
    """``sign * u * 2**log2_factor`` in ``dtype``, through float64 when the factor alone
    would leave ``u``'s range."""
    if abs(log2_factor) <= 100:
        return (u * (sign * 2.0**log2_factor)).to(dtype)
    out = u.double() * sign
    steps = math.ceil(abs(log2_factor) / 500)
    for _ in range(steps):
        out = out * 2.0 ** (log2_factor / steps)
    return out.to(dtype)


def _to_caller_grads(
    prep: PreparedPoints, xs: Tensor, out: KernelOut, temperature: float, dtype: torch.dtype
) -> tuple[Tensor, float]:
    """dL/dx (sorted) and dL/dT in the caller's units from H X and H 1 (module doc).

    Euclidean, kernel units x' = x / 2**k, T' = T / 4**k: dL/dx = -(2**(k+1) / T) u',
    dL/dT = 4**k / T**2 * sum <x', u'>. Cosine: dL/dx = acc / T, dL/dT = -sum <x, acc> / (2 T^2).
    """
    log2_t = math.log2(temperature)
    if prep.euclidean:
        u = torch.addcmul(-out.acc, out.rowsum.unsqueeze(1), xs)  # rowsum_i x_i - acc_i
        grad_t = times_pow2(float((xs * u).sum()), 2 * prep.k - 2 * log2_t)
        grad_x = _tensor_times_pow2(u, prep.k + 1 - log2_t, -1.0, dtype)
    else:
        grad_t = times_pow2(-float((xs * out.acc).sum()), -1.0 - 2 * log2_t)
        grad_x = _tensor_times_pow2(out.acc, -log2_t, 1.0, dtype)
    return grad_x, grad_t


def _tiers(dtype: torch.dtype, bound: float, euclidean: bool):
    """(compute dtype, direct differences) to try in turn; the last one is trusted."""
    tiers = []
    if dtype == torch.float32 and bound <= FLOAT32_LOGIT_LOG2:
        tiers.append((torch.float32, False))
    tiers.append((torch.float64, False))
    if euclidean:
        tiers.append((torch.float64, True))
    return tiers


def exact_pass(
    prep: PreparedPoints,
    batch: SortedBatch,
    temperature: float,
    dtype: torch.dtype,
    weights: Tensor | None,
    block_rows: int | None = None,
    shared: BlockLogits | None = None,
) -> ExactOut:
    """The loss (and gradients) of the caller's features at the caller's ``temperature``.

    ``dtype`` is the caller's compute dtype (float32 or float64). Passes are tried in
    turn until one passes the spot check: float32 (unless its logits could leave the
    float32 range), float64, then (euclidean) float64 by direct differences. The
    symmetric kernel serves N >= SYMMETRIC_MIN_POINTS (``block_rows`` = its tile rows),
    the row kernel smaller problems and the direct differences. ``shared``: the points
    and one-block logits at T = 1 already computed for ``prep`` (:func:`first_tier_logits`),
    used by the pass of their dtype.
    """
    t_kernel = prep.kernel_temperature(temperature)

    def points(tier_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if shared is not None and shared.xs.dtype == tier_dtype:
            return shared.xs, shared.norms
        xs = prep.points(tier_dtype)
        return xs, (xs * xs).sum(1)

    xs, norms = points(dtype if shared is None else shared.xs.dtype)
    tiers = _passes(prep, norms, temperature, dtype)
    for k, (tier_dtype, direct) in enumerate(tiers):
        if tier_dtype != xs.dtype:
            xs, norms = points(tier_dtype)
        w = None if weights is None else weights.to(tier_dtype)
        if direct:
            xd = prep.points(tier_dtype, centred=False)
            out = row_block_pass(xs, batch, t_kernel, prep.euclidean, w, block_rows, xd)
        elif xs.shape[0] >= SYMMETRIC_MIN_POINTS:
            out = symmetric_pass(xs, batch, t_kernel, prep.euclidean, w, block_rows, norms)
        else:
            raw = shared.raw if shared is not None and shared.xs is xs else None
            out = row_block_pass(xs, batch, t_kernel, prep.euclidean, w, block_rows, None, raw)
        last = k == len(tiers) - 1
        if last or _pass_is_exact(prep, norms, batch, [t_kernel], [out.loss], tier_dtype):
            break
    loss = out.loss.to(dtype)
    if weights is None:
        return ExactOut(loss, None, None)
    grad_x, grad_t = _to_caller_grads(prep, xs, out, temperature, dtype)
    return ExactOut(loss, grad_x, grad_t)


class BlockLogits(NamedTuple):
    """The one block's logits at T = 1 (``_rows.whole_block_logits``) of prepared points,
    with the sorted kernel points and their |x|^2 they came from, in the dtype of the
    first pass :func:`exact_pass` tries: a temperature step's slope takes them and the
    loss at the new T reuses them (no product, no points of its own)."""

    prep: PreparedPoints
    xs: Tensor
    norms: Tensor
    raw: Tensor


def first_tier_logits(prep: PreparedPoints, temperature: float, dtype: torch.dtype) -> BlockLogits:
    """:class:`BlockLogits` of ``prep`` (N < SYMMETRIC_MIN_POINTS) for a pass at
    ``temperature`` of features of ``dtype``."""
    xs = prep.points(dtype)
    norms = (xs * xs).sum(1)
    tier_dtype, _ = _passes(prep, norms, temperature, dtype)[0]
    if tier_dtype != xs.dtype:
        xs = prep.points(tier_dtype)
        norms = (xs * xs).sum(1)
    return BlockLogits(prep, xs, norms, whole_block_logits(xs, norms, prep.euclidean))


def _passes(prep: PreparedPoints, norms: Tensor, temperature: float, dtype: torch.dtype):
    """The passes (:func:`_tiers`) :func:`exact_pass` tries at ``temperature`` for points
    of squared norms ``norms``; a ValueError where float64 cannot hold the logits."""
    bound = logit_bound_log2(max_log2(norms), prep.kernel_temperature(temperature),
                             prep.euclidean)  # fmt: skip
    _check_logit_range(bound, temperature)
    return _tiers(dtype, bound, prep.euclidean)


def _check_logit_range(bound: float, temperature: float) -> None:
    if bound > FLOAT64_LOGIT_LOG2:
        raise ValueError(
            f"temperature {temperature:g} is too small for these features: the logits "
            f"d/T reach 2^{bound:.0f}, beyond what float64 can hold; use a larger temperature"
        )


def exact_grid(
    prep: PreparedPoints, batch: SortedBatch, temperatures: list[float], dtype: torch.dtype
) -> Tensor:
    """Per-anchor losses (K, N) in sorted order at each caller temperature, checked like
    :func:`exact_pass` (float32, spot-checked at every temperature, else float64)."""
    t_kernel = [prep.kernel_temperature(t) for t in temperatures]
    xs = prep.points(dtype)
    norms = (xs * xs).sum(1)
    bound = max(logit_bound_log2(max_log2(norms), t, prep.euclidean) for t in t_kernel)
    _check_logit_range(bound, min(temperatures))
    grid = torch.tensor(t_kernel, dtype=torch.float64)
    tiers = _tiers(dtype, bound, prep.euclidean)
    for k, (tier_dtype, direct) in enumerate(tiers):
        if tier_dtype != xs.dtype:
            xs = prep.points(tier_dtype)
            norms = (xs * xs).sum(1)
        xd = prep.points(tier_dtype, centred=False) if direct else None
        out = snnl_temperature_grid(xs, batch, grid, prep.euclidean, None, xd)
        last = k == len(tiers) - 1
        if last or _pass_is_exact(prep, norms, batch, t_kernel, list(out), tier_dtype):
            break
    return out.to(dtype)
