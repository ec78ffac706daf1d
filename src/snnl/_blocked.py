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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

# A block holds about this many float32 logits (B x N); 2**22 floats = 16 MiB.
_BLOCK_ELEMENTS = 2**22
# Up to this many pairs (N <= 1024) the whole problem is one masked block.
_WHOLE_ELEMENTS = 2**20
# A float32 pass whose logits could exceed 2**_FLOAT32_LOGIT_LOG2 is done in float64.
_FLOAT32_LOGIT_LOG2 = 120
# log2 of the largest logit magnitude float64 can carry through the kernel.
_FLOAT64_LOGIT_LOG2 = 1000


@dataclass(frozen=True)
class SortedBatch:
    """Points permuted so that each class is one contiguous range of rows."""

    perm: Tensor  # (N,) original index of each sorted row
    starts: tuple[int, ...]  # (C,) first sorted row of each class
    ends: tuple[int, ...]  # (C,) one past the last sorted row of each class
    valid: Tensor  # (N,) bool, in original order: the anchor has a positive
    group: Tensor  # (N,) class index 0..C-1 of each sorted row

    @property
    def num_classes(self) -> int:
        return len(self.starts)

    @property
    def num_valid(self) -> int:
        return int(self.valid.sum())


def sort_by_class(labels: Tensor) -> SortedBatch:
    """Stable sort of the points by label; class ranges and which anchors have a positive."""
    perm = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[perm], return_counts=True)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    valid_sorted = torch.repeat_interleave(counts >= 2, counts)
    valid = torch.empty_like(valid_sorted)
    valid[perm] = valid_sorted
    group = torch.repeat_interleave(torch.arange(len(counts), device=labels.device), counts)
    return SortedBatch(perm, tuple(starts.tolist()), tuple(ends.tolist()), valid, group)


def default_block_rows(n: int) -> int:
    return max(1, min(n, _BLOCK_ELEMENTS // max(n, 1)))


def _exp_floor(dtype: torch.dtype) -> float:
    """Smallest exponent whose exp is a normal number of ``dtype``.

    Shifted logits below it are raised to it before exp: the term becomes the
    smallest normal number instead of a denormal (which costs up to 100x more time
    on x86) or zero. Every sum holds a term equal to 1, so the change is below
    1e-37 relative (float32) and invisible in the result. Masked entries (self
    pair, other group) are set to exactly 0 after the exp.
    """
    return math.log(torch.finfo(dtype).tiny) + 0.01


def softplus(z: Tensor) -> Tensor:
    """log(1 + e^z), exact in float64 too: torch's default threshold (20) returns z itself
    above 20, dropping log1p(e^-z) ~ 2e-9; above 40 that term is below float64's eps."""
    return torch.nn.functional.softplus(z, threshold=40.0)


# ----------------------------------------------------------------------------- points


def _scale_pow2(x: Tensor, k: int) -> Tensor:
    """x * 2**-k, exact (two steps so that no factor leaves the dtype's normal range)."""
    if k == 0:
        return x
    half = k // 2
    return (x * 2.0 ** (-half)) * 2.0 ** (-(k - half))


def _largest_exponent(x: Tensor) -> int:
    """k with max |x| * 2**-k in [0.5, 1) (0 for an all-zero tensor)."""
    m = float(x.abs().max()) if x.numel() else 0.0
    return math.frexp(m)[1] if m > 0 else 0


@dataclass(frozen=True)
class PreparedPoints:
    """The sorted points the kernels see, and how they map back to the caller's features.

    euclidean: ``x * 2**-k - centre`` (``centre`` in float64, in scaled units), with the
    temperature ``T * 2**-2k``; cosine: the unit vectors as given (k = 0, no centre).
    """

    source: Tensor  # (N, D) detached features (euclidean) or unit vectors (cosine), caller order
    perm: Tensor  # (N,) sorted order
    euclidean: bool
    k: int  # power-of-two exponent: caller's units = 2**k * kernel units
    centre: Tensor | None  # (D,) float64 centre in kernel units (euclidean)

    def points(
        self, dtype: torch.dtype, rows: Tensor | slice | None = None, centred: bool = True
    ) -> Tensor:
        """Sorted kernel points (N, D) in ``dtype`` (optionally only sorted ``rows``).

        ``centred=False`` (euclidean): scaled but not centred, for direct differences,
        which then carry only the rounding of x_i - x_j itself.
        """
        idx = self.perm if rows is None else self.perm[rows]
        x = self.source[idx]
        if not self.euclidean:
            return x.to(dtype)
        x = _scale_pow2(x.to(dtype), self.k)
        return x - self.centre.to(dtype) if centred else x

    def kernel_temperature(self, temperature: float) -> float:
        """T in kernel units: T * 2**-2k (euclidean), T (cosine)."""
        return math.ldexp(temperature, -2 * self.k) if self.euclidean else temperature


def prepare_points(x: Tensor, batch: SortedBatch, euclidean: bool, temperature: float):
    """Scale (a power of two) and centre (float64) the detached features; see the module doc.

    The exponent is chosen from the largest coordinate, then moved (if needed) so that
    the kernel temperature stays within float64's range.
    """
    if not euclidean:
        return PreparedPoints(x, batch.perm, False, 0, None)
    k = _largest_exponent(x)
    log2_t = math.log2(temperature)
    k = min(max(k, math.ceil((log2_t - 1000) / 2)), math.floor((log2_t + 1000) / 2))
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for r0 in range(0, x.shape[0], 65536):
        total += _scale_pow2(x[r0 : r0 + 65536].double(), k).sum(0)
    centre = total / x.shape[0]
    if x.dtype != torch.float64:
        centre = centre.float().double()  # one centre for the float32 and float64 passes
    return PreparedPoints(x, batch.perm, True, k, centre)


# ----------------------------------------------------------------------------- kernels


class KernelOut(NamedTuple):
    """Per-anchor loss (N,) in sorted order (NaN without a positive); with weights,
    ``acc = H X`` (N, D) and ``rowsum = H 1`` (N,) in kernel units (see module doc)."""

    loss: Tensor
    acc: Tensor | None
    rowsum: Tensor | None


class Block(NamedTuple):
    """Anchor rows r0:r1; their positives are the columns s:e, or (s is None) given
    by a class mask over all columns."""

    r0: int
    r1: int
    s: int | None
    e: int | None


def _row_blocks(batch: SortedBatch, n: int, block_rows: int | None):
    """Yield the blocks of a pass.

    Small problems (N^2 <= _WHOLE_ELEMENTS, default block size) are one masked
    block: a handful of tensor operations instead of several per class, which is
    what makes mini-batch regularisation cheap. Otherwise one class at a time, in
    row blocks, with its positives as one contiguous column range.
    """
    if block_rows is None and n * n <= _WHOLE_ELEMENTS:
        yield Block(0, n, None, None)
        return
    rows = block_rows or default_block_rows(n)
    for s, e in zip(batch.starts, batch.ends, strict=True):
        if e - s < 2:
            continue
        for r0 in range(s, e, rows):
            yield Block(r0, min(e, r0 + rows), s, e)


def _block_logits(
    xs: Tensor, bias_t: Tensor, a_t: float, r0: int, r1: int, direct: Tensor | None = None
) -> Tensor:
    """(B, N) logits of rows r0:r1 without the row constant b_i / T, self pairs -inf.

    ``direct`` (euclidean, the uncentred points): -|x_i - x_j|^2 / T from explicit
    differences instead of the expansion (exact for any geometry, several times slower).
    """
    if direct is not None:
        d = torch.cdist(direct[r0:r1], direct, compute_mode="donot_use_mm_for_euclid_dist")
        logits = d.square_().mul_(-a_t / 2.0)
    else:
        logits = torch.addmm(bias_t.unsqueeze(0), xs[r0:r1], xs.T, alpha=a_t)
    rows = torch.arange(r1 - r0, device=xs.device)
    logits[rows, rows + r0] = -math.inf
    return logits


def _lse_parts(logits: Tensor, block: Block, batch: SortedBatch, build_m: bool):
    """Split a logits block into positives and negatives, in place.

    Returns (z, neg_sum) per row, z = LSE_neg - LSE_pos (NaN for a row without a
    positive, -inf for a row without a negative). On return ``logits`` holds
    exp(s - max_neg) on the negatives and 0 elsewhere or, with ``build_m``, the
    gradient matrix M = exp(s - max_neg) on negatives and -Q * neg_sum on the
    positives (Q = softmax over the positives), so that dL/ds = coef * M.
    """
    if block.s is None:
        return _masked_parts(logits, block, batch, build_m)
    s, e, r0 = block.s, block.e, block.r0
    floor = _exp_floor(logits.dtype)
    pos = logits[:, s:e].clone()  # (B, n_c)
    pos_max = pos.amax(1, keepdim=True)
    pos.sub_(pos_max).clamp_(min=floor).exp_()
    rows = torch.arange(pos.shape[0], device=pos.device)
    pos[rows, rows + (r0 - s)] = 0.0  # the self pair, exactly
    pos_sum = pos.sum(1, keepdim=True)
    lse_pos = pos_max + pos_sum.log()
    pos.div_(pos_sum)  # Q, softmax over the positives
    if batch.num_classes == 1:
        # Only one class: sum_neg = 0, loss = softplus(-inf) = 0, zero gradient.
        logits.zero_()
        neg_sum = torch.ones_like(pos_sum)
        z = torch.full_like(lse_pos, -math.inf)
    else:
        logits[:, s:e] = -math.inf
        neg_max = logits.amax(1, keepdim=True)
        logits.sub_(neg_max).clamp_(min=floor).exp_()
        logits[:, s:e] = 0.0  # positives are not negatives, exactly
        neg_sum = logits.sum(1, keepdim=True)
        z = neg_max + neg_sum.log() - lse_pos
    if build_m:
        logits[:, s:e] = pos.mul_(-neg_sum)
    return z.squeeze(1), neg_sum.squeeze(1)


def _masked_parts(logits: Tensor, block: Block, batch: SortedBatch, build_m: bool):
    """:func:`_lse_parts` for a block whose positives are given by a class mask."""
    r0, r1 = block.r0, block.r1
    floor = _exp_floor(logits.dtype)
    same = batch.group[r0:r1, None] == batch.group[None, :]  # (B, N), self included
    rows = torch.arange(r1 - r0, device=logits.device)
    pos = logits.masked_fill(~same, -math.inf)  # self pair is already -inf
    pos_max = pos.amax(1, keepdim=True)
    has_pos = torch.isfinite(pos_max)
    pos_max = torch.where(has_pos, pos_max, torch.zeros_like(pos_max))
    pos.sub_(pos_max).clamp_(min=floor).exp_()
    pos.masked_fill_(~same, 0.0)
    pos[rows, rows + r0] = 0.0  # the self pair, exactly
    pos_sum = torch.where(has_pos, pos.sum(1, keepdim=True), torch.ones_like(pos_max))
    lse_pos = pos_max + pos_sum.log()
    pos.div_(pos_sum)
    logits.masked_fill_(same, -math.inf)
    neg_max = logits.amax(1, keepdim=True)
    has_neg = torch.isfinite(neg_max)
    neg_max = torch.where(has_neg, neg_max, torch.zeros_like(neg_max))
    logits.sub_(neg_max).clamp_(min=floor).exp_()
    logits.masked_fill_(same, 0.0)
    neg_sum = logits.sum(1, keepdim=True)
    z = torch.where(has_neg, neg_max + neg_sum.log() - lse_pos, -math.inf)
    z = torch.where(has_pos, z, math.nan)
    neg_sum = torch.where(has_neg, neg_sum, torch.ones_like(neg_sum))
    if build_m:
        logits.sub_(pos.mul_(neg_sum))
    return z.squeeze(1), neg_sum.squeeze(1)


def row_block_pass(
    xs: Tensor,
    batch: SortedBatch,
    temperature: float,
    euclidean: bool,
    weights: Tensor | None,
    block_rows: int | None = None,
    direct: Tensor | None = None,
) -> KernelOut:
    """Row-block kernel over sorted kernel points ``xs`` (N, D); see the module doc.

    ``weights`` (N,) in sorted order: also return H X and H 1 for the gradient of
    sum_i weights_i * loss_i. ``direct``: the uncentred points, for euclidean logits
    by explicit differences (``xs`` still serves the gradient's products).
    """
    n, _ = xs.shape
    a = 2.0 if euclidean else 1.0
    inv_t = 1.0 / temperature
    bias = -(xs * xs).sum(1) if euclidean else xs.new_zeros(n)
    bias_t = bias * inv_t
    loss = xs.new_full((n,), math.nan)
    need_grad = weights is not None
    if need_grad:
        acc = torch.zeros_like(xs)  # sum_j G_ij x_j + sum_i G_ij x_i
        col_sum = xs.new_zeros(n)  # sum_i G_ij (the rows of G sum to 0)
    for block in _row_blocks(batch, n, block_rows):
        r0, r1 = block.r0, block.r1
        logits = _block_logits(xs, bias_t, a * inv_t, r0, r1, direct)
        z, neg_sum = _lse_parts(logits, block, batch, need_grad)
        loss[r0:r1] = softplus(z)
        if not need_grad:
            continue
        # G = coef[:, None] * M, with M = exp(s - max_neg) on negatives and
        # -Q * neg_sum on positives, so that G = w * sigmoid(z) * (N - Q).
        sig = torch.nan_to_num(torch.sigmoid(z), nan=0.0)  # rows without a positive
        coef = weights[r0:r1] * sig / neg_sum
        acc[r0:r1] += coef.unsqueeze(1) * (logits @ xs)
        acc.addmm_(logits.T, coef.unsqueeze(1) * xs[r0:r1])
        col_sum.addmv_(logits.T, coef)
    if not need_grad:
        return KernelOut(loss, None, None)
    return KernelOut(loss, acc, col_sum)


def snnl_temperature_grid(
    xs: Tensor,
    batch: SortedBatch,
    temperatures: Tensor,
    euclidean: bool,
    block_rows: int | None = None,
    direct: Tensor | None = None,
) -> Tensor:
    """Per-anchor loss (len(temperatures), N) in sorted order, one product per block.

    ``xs`` and ``temperatures`` in kernel units. The logits at temperature T are raw / T,
    so the (B, N) product is computed once per block and reused for every temperature.
    """
    n, _ = xs.shape
    a = 2.0 if euclidean else 1.0
    bias = -(xs * xs).sum(1) if euclidean else xs.new_zeros(n)
    out = xs.new_full((len(temperatures), n), math.nan)
    for block in _row_blocks(batch, n, block_rows):
        raw = _block_logits(xs, bias, a, block.r0, block.r1, direct)
        for k, t in enumerate(temperatures.tolist()):
            z, _ = _lse_parts(raw / t, block, batch, False)
            out[k, block.r0 : block.r1] = softplus(z)
    return out


# ----------------------------------------------------------------------------- exactness

# Anchors re-computed in float64 by direct differences to check a pass: half spread
# evenly over the anchors, half where the expansion is most at risk. A pass is
# checked only when its logits could carry an absolute error above _CHECK_FLOOR
# (eps * 8 max|x|^2 / T, what the expansion can add; below it the loss is within
# _CHECK_FLOOR relative, since |d softplus(z)| <= softplus(z) |dz|).
_CHECK_ANCHORS = 8
_CHECK_FLOOR = {torch.float32: 1e-7, torch.float64: 1e-12}
_CHECK_TOLERANCE = {torch.float32: 2e-6, torch.float64: 1e-12}
_ROUNDING_SLACK = 32.0
_EPS32 = torch.finfo(torch.float32).eps


def _check_anchors(loss: Tensor, xs: Tensor, temperature: float) -> Tensor:
    """Sorted rows to check: evenly spread, plus those with the largest |x|^2 / (T max(1, loss)),
    whose logits lose the most digits relative to the loss."""
    valid = torch.nonzero(~torch.isnan(loss)).squeeze(1)
    if len(valid) <= _CHECK_ANCHORS:
        return valid
    half = _CHECK_ANCHORS // 2
    spread = valid[torch.linspace(0, len(valid) - 1, half, device=xs.device).long()]
    risk = (xs[valid].double() ** 2).sum(1) / (temperature * loss[valid].double().clamp(min=1.0))
    risky = valid[torch.topk(risk, half).indices]
    return torch.unique(torch.cat([spread, risky]))


def reference_distances(prep: PreparedPoints, batch: SortedBatch, rows: Tensor):
    """Float64 distances (len(rows), N) of sorted ``rows`` to every point by direct
    differences (O(len(rows) N D)), the self pair set to inf, and the same-class mask.

    Euclidean distances are differences of the float64 scaled (not centred) features,
    so nothing is lost to a centring.
    """
    n = prep.perm.shape[0]
    anchors = prep.points(torch.float64, rows, centred=False)
    parts = []
    for c0 in range(0, n, 8192):
        cols = prep.points(torch.float64, slice(c0, min(n, c0 + 8192)), centred=False)
        if prep.euclidean:
            parts.append(
                torch.cdist(anchors, cols, compute_mode="donot_use_mm_for_euclid_dist") ** 2
            )
        else:
            parts.append(1.0 - anchors @ cols.T)
    d = torch.cat(parts, 1)
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
    allowed = _CHECK_TOLERANCE[dtype] * ref.abs() + _ROUNDING_SLACK * eps * scale
    return bool(((loss[pick].double() - ref).abs() <= allowed).all())


def _needs_check(xs: Tensor, temperature: float, euclidean: bool) -> bool:
    """Whether the logits of a pass could carry an error above _CHECK_FLOOR."""
    eps = torch.finfo(xs.dtype).eps
    bound = logit_bound_log2(xs, temperature, euclidean)
    return math.log2(8.0 * eps) + bound > math.log2(_CHECK_FLOOR[xs.dtype])


def _pass_is_exact(
    prep: PreparedPoints, xs: Tensor, batch: SortedBatch, temperatures: list[float], losses
) -> bool:
    """Check passes (one per temperature, kernel units) on a few anchors against float64
    direct differences of the original features.

    The |a|^2 + |b|^2 - 2ab products lose digits when points lie far from the
    centroid relative to their neighbour distances (float32 sooner, float64 too for
    tight clusters far apart). A deterministic sample of anchors is recomputed
    exactly (O(k N D)); a deviation beyond _CHECK_TOLERANCE relative plus the rounding
    any logit -d/T carries in that dtype (_ROUNDING_SLACK * eps * |LSE|) means the
    pass is redone more carefully.
    """
    if not any(_needs_check(xs, t, prep.euclidean) for t in temperatures):
        return True
    for loss in losses:
        if not bool(torch.isfinite(loss[~torch.isnan(loss)]).all()):
            return False
    picks = [_check_anchors(loss, xs, t) for loss, t in zip(losses, temperatures, strict=True)]
    pick = torch.unique(torch.cat(picks))
    if len(pick) == 0:
        return True
    d, same = reference_distances(prep, batch, pick)
    pairs = zip(losses, temperatures, strict=True)
    return all(_agrees(loss, d, same, pick, t, xs.dtype) for loss, t in pairs)


def logit_bound_log2(xs: Tensor, temperature: float, euclidean: bool) -> float:
    """log2 of a bound on |s_ij| (kernel units)."""
    if not euclidean:
        return -math.log2(temperature)
    n_max = float((xs * xs).sum(1).max()) if xs.numel() else 0.0
    return math.log2(max(4.0 * n_max, 1e-300)) - math.log2(temperature)


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
        u = out.rowsum.unsqueeze(1) * xs - out.acc
        grad_x = _tensor_times_pow2(u, prep.k + 1 - log2_t, -1.0, dtype)
        grad_t = times_pow2(float((xs * u).sum()), 2 * prep.k - 2 * log2_t)
    else:
        grad_x = _tensor_times_pow2(out.acc, -log2_t, 1.0, dtype)
        grad_t = times_pow2(-float((xs * out.acc).sum()), -1.0 - 2 * log2_t)
    return grad_x, grad_t


def _tiers(dtype: torch.dtype, bound: float, euclidean: bool):
    """(compute dtype, direct differences) to try in turn; the last one is trusted."""
    tiers = []
    if dtype == torch.float32 and bound <= _FLOAT32_LOGIT_LOG2:
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
) -> ExactOut:
    """The loss (and gradients) of the caller's features at the caller's ``temperature``.

    ``dtype`` is the caller's compute dtype (float32 or float64). Passes are tried in
    turn until one passes the spot check: float32 (unless its logits could leave the
    float32 range), float64, then (euclidean) float64 by direct differences.
    """
    t_kernel = prep.kernel_temperature(temperature)
    xs = prep.points(dtype)
    bound = logit_bound_log2(xs, t_kernel, prep.euclidean)
    _check_logit_range(bound, temperature)
    tiers = _tiers(dtype, bound, prep.euclidean)
    for k, (tier_dtype, direct) in enumerate(tiers):
        if tier_dtype != xs.dtype:
            xs = prep.points(tier_dtype)
        w = None if weights is None else weights.to(tier_dtype)
        xd = prep.points(tier_dtype, centred=False) if direct else None
        out = row_block_pass(xs, batch, t_kernel, prep.euclidean, w, block_rows, xd)
        if k == len(tiers) - 1 or _pass_is_exact(prep, xs, batch, [t_kernel], [out.loss]):
            break
    loss = out.loss.to(dtype)
    if weights is None:
        return ExactOut(loss, None, None)
    grad_x, grad_t = _to_caller_grads(prep, xs, out, temperature, dtype)
    return ExactOut(loss, grad_x, grad_t)


def _check_logit_range(bound: float, temperature: float) -> None:
    if bound > _FLOAT64_LOGIT_LOG2:
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
    bound = max(logit_bound_log2(xs, t, prep.euclidean) for t in t_kernel)
    _check_logit_range(bound, min(temperatures))
    grid = torch.tensor(t_kernel, dtype=torch.float64)
    tiers = _tiers(dtype, bound, prep.euclidean)
    for k, (tier_dtype, direct) in enumerate(tiers):
        if tier_dtype != xs.dtype:
            xs = prep.points(tier_dtype)
        xd = prep.points(tier_dtype, centred=False) if direct else None
        out = snnl_temperature_grid(xs, batch, grid, prep.euclidean, None, xd)
        if k == len(tiers) - 1 or _pass_is_exact(prep, xs, batch, t_kernel, list(out)):
            break
    return out.to(dtype)
