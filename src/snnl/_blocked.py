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
import mmap
import warnings
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
    """x * 2**-k, exact (two steps when one factor would leave the normal range)."""
    if k == 0:
        return x
    if abs(k) <= 100:
        return x * 2.0 ** (-k)
    half = k // 2
    return (x * 2.0 ** (-half)) * 2.0 ** (-(k - half))


def _largest_exponent(x: Tensor) -> int:
    """k with max |x| * 2**-k in [0.5, 1) (0 for an all-zero tensor)."""
    if not x.numel():
        return 0
    lo, hi = torch.aminmax(x)  # one read, no |x| temporary
    m = max(-float(lo), float(hi))
    return math.frexp(m)[1] if m > 0 else 0


@dataclass(frozen=True)
class PreparedPoints:
    """The sorted points the kernels see, and how they map back to the caller's features.

    euclidean: ``x * 2**-k - centre``, with the temperature ``T * 2**-2k``; the centre
    (kernel units) is representable in the features' dtype, so x - centre is exact in
    float64 and correctly rounded in float32. cosine: the unit vectors as given.
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
        x = self.source[idx].to(dtype)
        if not self.euclidean:
            return x
        if centred and abs(self.k) <= 100:  # one rounding: -c + 2**-k x
            return torch.add(-self.centre.to(dtype), x, alpha=2.0 ** (-self.k))
        x = _scale_pow2(x, self.k)
        return x - self.centre.to(dtype) if centred else x

    def kernel_temperature(self, temperature: float) -> float:
        """T in kernel units: T * 2**-2k (euclidean), T (cosine)."""
        return math.ldexp(temperature, -2 * self.k) if self.euclidean else temperature


def prepare_points(x: Tensor, batch: SortedBatch, euclidean: bool, temperature: float):
    """Scale (a power of two) and centre the detached features; see the module doc.

    The exponent is chosen from the largest coordinate, then moved (if needed) so that
    the kernel temperature stays within float64's range. Any centre serves (distances
    are translation invariant); the mean, in the features' dtype, keeps the expansion
    accurate.
    """
    if not euclidean:
        return PreparedPoints(x, batch.perm, False, 0, None)
    k = _largest_exponent(x)
    log2_t = math.log2(temperature)
    k = min(max(k, math.ceil((log2_t - 1000) / 2)), math.floor((log2_t + 1000) / 2))
    if abs(k) <= 100:  # the sum of N coordinates <= 2**100 stays far from overflow
        centre = _scale_pow2(x.mean(0), k)
    else:
        centre = _scale_pow2(x, k).mean(0)
    return PreparedPoints(x, batch.perm, True, k, centre.double())


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


# ----------------------------------------------------------------------------- symmetric kernel
#
# s is symmetric, so each pair of row tiles (I, J), I <= J, needs one product
# S = X_I X_J^T. Pass 1 gathers running log-sum-exp statistics (max, sum) of the
# positives and negatives of every row from both orientations of S: rows of I from
# its rows, rows of J from its columns. Pass 2 (gradient) takes S again (kept from pass
# 1 when all tiles fit in KEEP_LOGITS_BYTES, else recomputed) and forms
# H_IJ = G_IJ + G_JI^T in one tile, then accumulates H [X_J, 1] into the rows of I and
# H^T [X_I, 1] into the rows of J (the extra column of ones gives H 1). Forward and
# backward take 0.5 + 1 = 1.5 N x N x D products with kept logits, 0.5 + 0.5 + 1 = 2
# when recomputing, instead of 3.
#
# The logits come from one product of augmented operands: s_ij = alpha <A_i, B_j> with
# euclidean A = [x, 1, -|x|^2/2], B = [x, -|x|^2/2, 1], alpha = 2/T (so s = -|x_i - x_j|^2/T);
# cosine A = [x, 1, 0], B = [x, 0, 0], alpha = 1/T.

# Rows per tile of the symmetric kernel: N / 8 within [256, 1024] (the diagonal blocks,
# computed whole, then add 1/8 to the products), and logits per block (row tile x
# column chunk): 2**22 float32 = 16 MiB, few large operations (on a shared machine each
# parallel operation waits for its slowest thread, so fewer and larger ones win).
TILE_MIN, TILE_MAX = 256, 1024
_TILE_ELEMENTS = 2**22
# With the logits kept for the gradient pass, blocks twice as wide (2**23 float32 = 32 MiB
# each; fewer, larger operations: ~10% faster at N = 8192 on 2 threads).
_KEPT_TILE_ELEMENTS = 2**23
# Above this many points (N^2 > _WHOLE_ELEMENTS) the symmetric kernel is used; below,
# one masked block of the row kernel is faster (see benchmarks/bench_snnl.py).
SYMMETRIC_MIN_POINTS = 1025
# Above this many classes shared by two tiles, positives are a mask, not rectangles.
_MAX_RECTS = 32
# The gradient pass forms exp(s - a_j) as exp(s - a_i) exp(a_i - a_j) when the shifts of
# a block span at most this (log units): a clamped term then carries at most
# exp(floor + this) of error, far below rounding.
_REUSE_SPREAD = {torch.float32: 40.0, torch.float64: 600.0}
# The gradient pass reuses the forward's logits, kept per tile, when all of them fit in
# this many bytes (float32: N up to about 11,000), instead of multiplying the tiles again:
# forward and backward then take 1.5 N x N x D products. Above it they are recomputed
# and the extra memory stays O(tile x width).
KEEP_LOGITS_BYTES = 2**28
# Column sums of exponentials shifted by the block's largest row maximum are kept when at
# least this (else redone with the column's own maximum); see tile_pair_stats.
_RELIABLE_SUM = {torch.float32: math.exp(-60.0), torch.float64: math.exp(-650.0)}


class Tile(NamedTuple):
    """Rows of one tile, sorted by class within it."""

    rows: slice | Tensor  # where its rows sit in the statistics (N,) vectors
    a: Tensor  # (B, D + 2) left operand; a[:, :D + 1] = [x, 1] serves the gradient
    b: Tensor  # (B, D + 2) right operand, times alpha
    runs: dict[int, tuple[int, int]]  # class id -> its local rows [start, end)
    group: Tensor  # (B,) class id of each row


def augmented_operands(
    xs: Tensor, euclidean: bool, alpha: float = 1.0, norms: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(A, B), each (N, D + 2), with <A_i, B_j> = s_ij (see above): B carries ``alpha``.
    ``norms``: |x_i|^2 (N,) when already computed (euclidean)."""
    n, d = xs.shape
    a, b = xs.new_empty(n, d + 2), xs.new_empty(n, d + 2)
    a[:, :d] = xs
    torch.mul(xs, alpha, out=b[:, :d])
    a[:, d] = 1.0
    if euclidean:
        half_norm = ((xs * xs).sum(1) if norms is None else norms) * -0.5
        a[:, d + 1] = half_norm
        torch.mul(half_norm, alpha, out=b[:, d])
        b[:, d + 1] = alpha
    else:
        a[:, d + 1] = 0.0
        b[:, d:] = 0.0
    return a, b


def class_runs(group: Tensor) -> dict[int, tuple[int, int]]:
    """{class id: (start, end)} of a sorted (B,) class-id vector."""
    ids, counts = torch.unique_consecutive(group, return_counts=True)
    ends = torch.cumsum(counts, 0).tolist()
    return {c: (e - k, e) for c, k, e in zip(ids.tolist(), counts.tolist(), ends, strict=True)}


def _positives(ti: Tile, tj: Tile):
    """Same-class rectangles (r0, r1, c0, c1) of the tile pair, or a (B_i, B_j) mask when
    there are too many of them."""
    small, large = (ti.runs, tj.runs) if len(ti.runs) <= len(tj.runs) else (tj.runs, ti.runs)
    common = [c for c in small if c in large]
    if len(common) > _MAX_RECTS:
        return None, ti.group[:, None] == tj.group[None, :]
    return [(*ti.runs[c], *tj.runs[c]) for c in common], None


class LSEStats:
    """Running log-sum-exp (max m, scaled sum l) of the positives and the negatives of
    every row, in float64: LSE = m + log(l)."""

    def __init__(self, n: int, device) -> None:
        def full(value: float) -> Tensor:
            return torch.full((n,), value, dtype=torch.float64, device=device)

        self.pos_m, self.pos_l = full(-math.inf), full(0.0)
        self.neg_m, self.neg_l = full(-math.inf), full(0.0)

    @staticmethod
    def _merge(m_acc: Tensor, l_acc: Tensor, rows, m: Tensor, l_sum: Tensor) -> None:
        m, l_sum = m.double(), l_sum.double()
        m_old, l_old = m_acc[rows].clone(), l_acc[rows].clone()  # slices are views
        m_new = torch.maximum(m_old, m)
        ref = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        m_acc[rows] = m_new
        l_acc[rows] = l_old * torch.exp(m_old - ref) + l_sum * torch.exp(m - ref)

    def add(self, positive: bool, rows, m: Tensor, l_sum: Tensor) -> None:
        if positive:
            self._merge(self.pos_m, self.pos_l, rows, m, l_sum)
        else:
            self._merge(self.neg_m, self.neg_l, rows, m, l_sum)

    def merge_into(self, other: LSEStats, rows) -> None:
        """Add these statistics (of ``other``'s ``rows``, in order) to ``other``."""
        other._merge(other.pos_m, other.pos_l, rows, self.pos_m, self.pos_l)
        other._merge(other.neg_m, other.neg_l, rows, self.neg_m, self.neg_l)

    def lse(self) -> tuple[Tensor, Tensor]:
        """(LSE_pos, LSE_neg), -inf where a row has no positive / no negative."""
        return self.pos_m + self.pos_l.log(), self.neg_m + self.neg_l.log()

    def losses(self) -> tuple[Tensor, Tensor]:
        """(per-row loss, z = LSE_neg - LSE_pos), NaN for rows without a positive."""
        lse_pos, lse_neg = self.lse()
        z = torch.where(self.pos_l > 0, lse_neg - lse_pos, math.nan)
        z = torch.where((self.neg_l > 0) | torch.isnan(z), z, -math.inf)
        return softplus(z), z


def _row_lse(block: Tensor, floor: float, self_diagonal: bool) -> tuple[Tensor, Tensor]:
    """(max, sum exp(block - max)) per row; rows of -inf give (-inf, 0). ``self_diagonal``:
    the block's diagonal holds self pairs (-inf), whose exp is zeroed exactly."""
    m = block.amax(1)
    finite = torch.isfinite(m)
    shift = torch.where(finite, m, torch.zeros_like(m))
    e = (block - shift.unsqueeze(1)).clamp_(min=floor).exp_()
    if self_diagonal:
        e.diagonal().zero_()
    total = torch.where(finite, e.sum(1), torch.zeros_like(m))
    return m, total


def _col_lse(block: Tensor, floor: float) -> tuple[Tensor, Tensor]:
    """:func:`_row_lse` of the columns, without a transposed (strided) pass."""
    m = block.amax(0)
    finite = torch.isfinite(m)
    shift = torch.where(finite, m, torch.zeros_like(m))
    e = (block - shift.unsqueeze(0)).clamp_(min=floor).exp_()
    total = torch.where(finite, e.sum(0), torch.zeros_like(m))
    return m, total


def _exp_rows(out: Tensor, s: Tensor, shift: Tensor, floor: float) -> Tensor:
    """out = exp(max(s - shift[:, None], floor)), in place."""
    torch.sub(s, shift.unsqueeze(1), out=out)
    return out.clamp_(min=floor).exp_()


def _exp_cols(out: Tensor, s: Tensor, shift: Tensor, floor: float) -> Tensor:
    """out = exp(max(s - shift[None, :], floor)), in place."""
    torch.sub(s, shift.unsqueeze(0), out=out)
    return out.clamp_(min=floor).exp_()


def _zero_excluded(e: Tensor, rects, mask, lead: int) -> None:
    """Zero the entries that were -inf in the logits (positives, self pairs), exactly."""
    if mask is not None:
        e.masked_fill_(mask, 0.0)
    else:
        for r0, r1, c0, c1 in rects:
            e[r0:r1, c0:c1] = 0.0
    if lead:
        e[:, :lead].diagonal().zero_()


def _sub_rows(rows):
    """Index helper: rows of a tile's local range [r0, r1)."""
    if isinstance(rows, slice):
        start = rows.start
        return lambda r0, r1: slice(start + r0, start + r1)
    return lambda r0, r1: rows[r0:r1]


def tile_pair_stats(
    s: Tensor,
    ti: Tile,
    tj: Tile,
    lead: int,
    stats: LSEStats,
    work: Tensor,
    *,
    columns: bool = True,
    self_pairs: tuple[Tensor, Tensor] | None = None,
    col_stats: LSEStats | None = None,
    keep_logits: bool = False,
) -> None:
    """Add the logits ``s`` (rows of ti, columns of tj) to ``stats``.

    The first ``lead`` columns of tj are the rows of ti themselves (0 or len(ti)): their
    diagonal holds the self pairs and they give no column statistics (those rows get
    them from their own rows). Every other column adds to the statistics of its row of
    tj, unless ``columns`` is False (anchors against all points: row statistics only).
    ``self_pairs``: (rows, cols) of other self pairs, set to -inf (their exp(floor)
    ~ 1e-38 next to a term 1 is invisible). ``col_stats``: where the column statistics
    go (default ``stats``). ``s`` is overwritten, unless ``keep_logits``: then it keeps
    its values except the self pairs (-inf), for the gradient pass.
    """
    floor = _exp_floor(s.dtype)
    col_stats = stats if col_stats is None else col_stats
    if lead:
        s[:, :lead].fill_diagonal_(-math.inf)
    if self_pairs is not None:
        s[self_pairs] = -math.inf
    rects, mask = _positives(ti, tj)
    rows_j = _sub_rows(tj.rows)
    kept: list[Tensor] = []  # positives' logits, put back at the end (keep_logits)
    if mask is None:
        # every row and every column belongs to one class, so to at most one rectangle:
        # gather the block's statistics first, merge them once
        row_m = s.new_full((s.shape[0],), -math.inf)
        row_l = s.new_zeros(s.shape[0])
        col_m = s.new_full((s.shape[1],), -math.inf)
        col_l = s.new_zeros(s.shape[1])
        for r0, r1, c0, c1 in rects:
            block = s[r0:r1, c0:c1]
            row_m[r0:r1], row_l[r0:r1] = _row_lse(block, floor, c0 < lead)
            k0 = max(c0, lead)
            if columns and k0 < c1:
                col_m[k0:c1], col_l[k0:c1] = _col_lse(s[r0:r1, k0:c1], floor)
            if keep_logits:
                kept.append(block.clone())
            block.fill_(-math.inf)
        if rects:
            stats.add(True, ti.rows, row_m, row_l)
            if columns and lead < s.shape[1]:
                col_stats.add(True, rows_j(lead, s.shape[1]), col_m[lead:], col_l[lead:])
    else:
        # every -inf entry (other classes, self pairs) adds exp(floor) ~ 1e-38 to a sum
        # that holds a term 1: invisible, as for the clamped terms
        pos = torch.where(mask, s, -math.inf)
        m, total = _row_lse(pos, floor, False)
        stats.add(True, ti.rows, m, total)
        if columns and lead < s.shape[1]:
            m, total = _col_lse(pos[:, lead:], floor)
            col_stats.add(True, rows_j(lead, s.shape[1]), m, total)
        if keep_logits:
            kept.append(pos)
        s.masked_fill_(mask, -math.inf)
    # negatives: rows
    r_max = s.amax(1)
    r_fin = torch.isfinite(r_max)
    e = _exp_rows(work, s, torch.where(r_fin, r_max, torch.zeros_like(r_max)), floor)
    _zero_excluded(e, rects, mask, lead)
    stats.add(False, ti.rows, r_max, torch.where(r_fin, e.sum(1), torch.zeros_like(r_max)))
    if columns and lead < s.shape[1]:
        _column_negatives(s, e, tj, lead, r_max, r_fin, col_stats)
    if keep_logits:  # the positives back where they were (self pairs stay -inf)
        if mask is not None:
            torch.where(mask, kept[0], s, out=s)
        else:
            for (r0, r1, c0, c1), block in zip(rects, kept, strict=True):
                s[r0:r1, c0:c1] = block


def _column_negatives(
    s: Tensor,
    e: Tensor,
    tj: Tile,
    lead: int,
    r_max: Tensor,
    r_fin: Tensor,
    col_stats: LSEStats,
) -> None:
    """The negatives' statistics of the columns beyond the lead, from the rows'
    exponentials ``e`` (see :func:`tile_pair_stats`)."""
    floor = _exp_floor(s.dtype)
    rows_j = _sub_rows(tj.rows)
    # negatives: columns beyond the lead, from the same exponentials (one exp per logit):
    # sum_i exp(s_ij - top) = sum_i e_ij exp(r_i - top), top = the largest row max. A column
    # whose sum is >= _RELIABLE_SUM holds its clamping and underflow losses (below
    # R exp(floor) and R exp(-87) relative to top) far below rounding; the others, e.g.
    # columns far from every row of the block, are redone with their own maximum.
    rows_c = rows_j(lead, s.shape[1])
    s_c, e_c = s[:, lead:], e[:, lead:]
    if bool(r_fin.any()):
        top = r_max[r_fin].max()
        weight = torch.exp(r_max - top)  # 0 for rows without negatives
        col_total = torch.mv(e_c.T, weight)
        col_max = top.expand_as(col_total).clone()
        redo = torch.nonzero(col_total < _RELIABLE_SUM[s.dtype]).squeeze(1)
    else:
        col_total = s_c.new_zeros(s_c.shape[1])
        col_max = torch.full_like(col_total, -math.inf)
        redo = torch.arange(s_c.shape[1], device=s.device)
    if len(redo):
        # excluded entries are -inf: each adds exp(floor), invisible next to the term 1
        m, total = _col_lse(s_c[:, redo], floor)
        col_max[redo], col_total[redo] = m, total
    col_stats.add(False, rows_c, col_max, col_total)


def tile_pair_gradient(
    s: Tensor,
    ti: Tile,
    tj: Tile,
    lead: int,
    shifts: tuple[Tensor, Tensor],
    signs: Tensor | None,
    work: tuple[Tensor, Tensor],
) -> Tensor:
    """H_IJ = G_IJ + G_JI^T of the tile pair (in the lead square G_II + G_II^T), scaled
    by 1 / max |coef| (see :func:`symmetric_pass`), in ``work[0]``.

    G_ij = c_i exp(s_ij - LSE_neg(i)) on negatives and -c_i exp(s_ij - LSE_pos(i)) on
    positives; ``shifts`` = (LSE_neg - log|c|, LSE_pos - log|c|) (N,), +inf where c = 0;
    ``signs``: sign(c) (N,) when the coefficients are not all >= 0. ``s`` keeps its values
    except the self pairs (-inf).
    """
    floor = _exp_floor(s.dtype)
    neg_shift, pos_shift = shifts
    rows_i, rows_j = _sub_rows(ti.rows), _sub_rows(tj.rows)
    if lead:
        s[:, :lead].fill_diagonal_(-math.inf)
    rects, mask = _positives(ti, tj)
    # G_IJ from the rows' shifts plus G_JI^T from the columns' (s is symmetric, so the
    # lead square gets G_II + G_II^T without a transposed copy)
    a_i, a_j = neg_shift[ti.rows], neg_shift[tj.rows]
    h = _exp_rows(work[0], s, a_i, floor)
    top, low = torch.maximum(a_i.max(), a_j.max()), torch.minimum(a_i.min(), a_j.min())
    if signs is None and float(top - low) <= _REUSE_SPREAD[s.dtype]:
        # exp(s - a_j) = exp(s - a_i) exp(a_i - a_j): H = E + E * (u v^T) (all shifts finite)
        ratio = torch.outer(torch.exp(a_i - top), torch.exp(top - a_j), out=work[1])
        h.addcmul_(h, ratio)
    else:
        f = _exp_cols(work[1], s, a_j, floor)
        if signs is not None:
            h.mul_(signs[ti.rows].unsqueeze(1))
            f.mul_(signs[tj.rows].unsqueeze(0))
        h.add_(f)
    if mask is None:
        for r0, r1, c0, c1 in rects:
            block = s[r0:r1, c0:c1]
            q = torch.exp((block - pos_shift[rows_i(r0, r1)].unsqueeze(1)).clamp_(min=floor))
            qj = torch.exp((block - pos_shift[rows_j(c0, c1)].unsqueeze(0)).clamp_(min=floor))
            if signs is not None:
                q.mul_(signs[rows_i(r0, r1)].unsqueeze(1))
                qj.mul_(signs[rows_j(c0, c1)].unsqueeze(0))
            h[r0:r1, c0:c1] = q.add_(qj).neg_()
    else:
        q = torch.exp((s - pos_shift[ti.rows].unsqueeze(1)).clamp_(min=floor))
        qj = torch.exp((s - pos_shift[tj.rows].unsqueeze(0)).clamp_(min=floor))
        if signs is not None:
            q.mul_(signs[ti.rows].unsqueeze(1))
            qj.mul_(signs[tj.rows].unsqueeze(0))
        torch.where(mask, q.add_(qj).neg_(), h, out=h)
    if lead:
        h[:, :lead].diagonal().zero_()
    return h


def _tile(a: Tensor, b: Tensor, group: Tensor, r0: int, r1: int) -> Tile:
    g = group[r0:r1]
    return Tile(slice(r0, r1), a[r0:r1], b[r0:r1], class_runs(g), g)


def tile_plan(n: int, tile: int, width: int) -> list[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) blocks covering the upper triangle: row tiles of ``tile`` rows,
    each against column chunks of ``width`` starting at its own first row."""
    plan = []
    for r0 in range(0, n, tile):
        r1 = min(n, r0 + tile)
        for c0 in range(r0, n, width):
            plan.append((r0, r1, c0, min(n, c0 + width)))
    return plan


def _tile_sizes(n: int, tile: int | None, elements: int = _TILE_ELEMENTS) -> tuple[int, int]:
    rows = min(n, tile or min(max(n // 8, TILE_MIN), TILE_MAX))
    width = max(rows, min(n, elements // rows))
    return rows, width


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
        rows, width = _tile_sizes(n, tile, _KEPT_TILE_ELEMENTS)
        plan = tile_plan(n, rows, width)
        kept = _kept_logits(plan, xs)
    if kept is None:
        rows, width = _tile_sizes(n, tile)
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
            tiles[(r0, r1)] = _tile(a, b, batch.group, r0, r1)
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
_CHECK_TOLERANCE = {torch.float32: 2e-6, torch.float64: 1e-12}
_ROUNDING_SLACK = 32.0
_EPS32 = torch.finfo(torch.float32).eps


def _check_anchors(loss: Tensor, norms: Tensor) -> Tensor:
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
        x64 = prep.source.double().sub_(_scale_pow2(prep.centre, -prep.k))
        anchors = x64[prep.perm[rows]]
        norms = torch.linalg.vector_norm(x64, dim=1).square_()  # one read; 2 ulp of float64
        d = torch.addmm(norms.unsqueeze(0), anchors, x64.T, alpha=-2.0)
        d.add_((anchors * anchors).sum(1, keepdim=True)).clamp_(min=0.0)
        d = _scale_pow2(_scale_pow2(d[:, prep.perm], prep.k), prep.k)
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
    allowed = _CHECK_TOLERANCE[dtype] * ref.abs() + _ROUNDING_SLACK * eps * scale
    return bool(((loss[pick].double() - ref).abs() <= allowed).all())


def _needs_check(norms_log2: float, temperature: float, euclidean: bool, dtype) -> bool:
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
    (O(k N D)); a deviation beyond _CHECK_TOLERANCE relative plus the rounding any
    logit -d/T carries in that dtype (_ROUNDING_SLACK * eps * |LSE|) means the pass is
    redone more carefully.
    """
    top = _norms_log2(norms)
    if not any(_needs_check(top, t, prep.euclidean, dtype) for t in temperatures):
        return True
    for loss in losses:
        if not bool(torch.isfinite(loss[~torch.isnan(loss)]).all()):
            return False
    pick = torch.unique(torch.cat([_check_anchors(loss, norms) for loss in losses]))
    if len(pick) == 0:
        return True
    d, same = reference_distances(prep, batch, pick, direct=dtype == torch.float64)
    pairs = zip(losses, temperatures, strict=True)
    return all(_agrees(loss, d, same, pick, t, dtype) for loss, t in pairs)


def _norms_log2(norms: Tensor) -> float:
    top = float(norms.max()) if norms.numel() else 0.0
    return math.log2(top) if top > 0 else -1e4


def logit_bound_log2(norms_log2: float, temperature: float, euclidean: bool) -> float:
    """log2 of a bound on |s_ij| (kernel units) from log2 max |x|^2."""
    if not euclidean:
        return -math.log2(temperature)
    return 2.0 + norms_log2 - math.log2(temperature)


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
    float32 range), float64, then (euclidean) float64 by direct differences. The
    symmetric kernel serves N >= SYMMETRIC_MIN_POINTS (``block_rows`` = its tile rows),
    the row kernel smaller problems and the direct differences.
    """
    t_kernel = prep.kernel_temperature(temperature)
    xs = prep.points(dtype)
    norms = (xs * xs).sum(1)
    bound = logit_bound_log2(_norms_log2(norms), t_kernel, prep.euclidean)
    _check_logit_range(bound, temperature)
    tiers = _tiers(dtype, bound, prep.euclidean)
    for k, (tier_dtype, direct) in enumerate(tiers):
        if tier_dtype != xs.dtype:
            xs = prep.points(tier_dtype)
            norms = (xs * xs).sum(1)
        w = None if weights is None else weights.to(tier_dtype)
        if direct:
            xd = prep.points(tier_dtype, centred=False)
            out = row_block_pass(xs, batch, t_kernel, prep.euclidean, w, block_rows, xd)
        elif xs.shape[0] >= SYMMETRIC_MIN_POINTS:
            out = symmetric_pass(xs, batch, t_kernel, prep.euclidean, w, block_rows, norms)
        else:
            out = row_block_pass(xs, batch, t_kernel, prep.euclidean, w, block_rows)
        last = k == len(tiers) - 1
        if last or _pass_is_exact(prep, norms, batch, [t_kernel], [out.loss], tier_dtype):
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
    norms = (xs * xs).sum(1)
    bound = max(logit_bound_log2(_norms_log2(norms), t, prep.euclidean) for t in t_kernel)
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
