"""The exact, memory-bounded Soft Nearest Neighbor Loss kernel.

Notation (one anchor i, points sorted so that each class is a contiguous range):

    s_ij = (a * <x_i, x_j> + b_j) / T          logits, j != i
    euclidean: a = 2, b_j = -|x_j|^2           (s_ij = (|x_i|^2 - |x_i - x_j|^2) / T;
                                                the |x_i|^2 / T constant cancels in the ratio)
    cosine:    a = 1, b_j = 0                  (x already L2-normalised; s_ij = (cos - 1) / T + 1/T)

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

    dL/ds_ij = w_i * sigmoid(z_i) * ( N_ij - Q_ij )
    N_ij = exp(s_ij - LSE_neg(i)) for negatives (0 otherwise)
    Q_ij = exp(s_ij - LSE_pos(i)) for positives (0 otherwise)

Every block of B anchor rows is processed once: one (B, D) x (D, N) product for
the logits and, when a gradient is needed, two products for the gradient (rows:
G X, columns: G^T X_B), so forward and backward take three N x N x D products in
total and O(B x N) extra memory. No N x N matrix is ever built.
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


def _block_logits(xs: Tensor, bias_t: Tensor, a_t: float, r0: int, r1: int) -> Tensor:
    """(B, N) logits of rows r0:r1, self pairs set to -inf exactly."""
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


def snnl_pass(
    xs: Tensor,
    batch: SortedBatch,
    temperature: float,
    euclidean: bool,
    weights: Tensor | None,
    block_rows: int | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One blocked pass over sorted points ``xs`` (N, D).

    Returns the per-anchor loss in sorted order (N,) (NaN for anchors without
    a positive) and, when ``weights`` (N,) in sorted order is given, the gradient
    of sum_i weights_i * loss_i with respect to ``xs`` (N, D) and to T (0-dim).
    """
    n, _ = xs.shape
    a = 2.0 if euclidean else 1.0
    inv_t = 1.0 / temperature
    bias = -(xs * xs).sum(1) if euclidean else xs.new_zeros(n)
    bias_t = bias * inv_t
    loss = xs.new_full((n,), math.nan)
    need_grad = weights is not None
    if need_grad:
        grad_rows = torch.zeros_like(xs)  # sum_j G_ij x_j
        grad_cols = torch.zeros_like(xs)  # sum_i G_ij x_i
        col_sum = xs.new_zeros(n)  # sum_i G_ij
    for block in _row_blocks(batch, n, block_rows):
        r0, r1 = block.r0, block.r1
        logits = _block_logits(xs, bias_t, a * inv_t, r0, r1)
        z, neg_sum = _lse_parts(logits, block, batch, need_grad)
        loss[r0:r1] = torch.nn.functional.softplus(z)
        if not need_grad:
            continue
        # G = coef[:, None] * M, with M = exp(s - max_neg) on negatives and
        # -Q * neg_sum on positives, so that G = w * sigmoid(z) * (N - Q).
        sig = torch.nan_to_num(torch.sigmoid(z), nan=0.0)  # rows without a positive
        coef = weights[r0:r1] * sig / neg_sum
        grad_rows[r0:r1] = coef.unsqueeze(1) * (logits @ xs)
        grad_cols.addmm_(logits.T, coef.unsqueeze(1) * xs[r0:r1])
        col_sum.addmv_(logits.T, coef)
    if not need_grad:
        return loss, None, None
    # s_ij = (a <x_i, x_j> + b_j) / T, b_j = -|x_j|^2 (euclidean)
    grad_x = (grad_rows + grad_cols).mul_(a * inv_t)
    if euclidean:
        grad_x.addcmul_(col_sum.unsqueeze(1), xs, value=-2.0 * inv_t)
    # dL/dT = -(1/T) sum_ij G_ij s_ij
    g_dot_s = (a * (xs * grad_rows).sum() + (bias * col_sum).sum()) * inv_t
    grad_t = -g_dot_s * inv_t
    return loss, grad_x, grad_t


def snnl_temperature_grid(
    xs: Tensor,
    batch: SortedBatch,
    temperatures: Tensor,
    euclidean: bool,
    block_rows: int | None = None,
) -> Tensor:
    """Per-anchor loss (len(temperatures), N) in sorted order, one product per block.

    The logits at temperature T are raw / T, so the (B, N) product is computed
    once per block and reused for every temperature.
    """
    n, _ = xs.shape
    a = 2.0 if euclidean else 1.0
    bias = -(xs * xs).sum(1) if euclidean else xs.new_zeros(n)
    out = xs.new_full((len(temperatures), n), math.nan)
    for block in _row_blocks(batch, n, block_rows):
        raw = _block_logits(xs, bias, a, block.r0, block.r1)
        for k, t in enumerate(temperatures.tolist()):
            z, _ = _lse_parts(raw / t, block, batch, False)
            out[k, block.r0 : block.r1] = torch.nn.functional.softplus(z)
    return out


# Anchors re-computed in float64 by direct differences to check a float32 pass.
_CHECK_ANCHORS = 8
_CHECK_TOLERANCE = 2e-6
_ROUNDING_SLACK = 32.0
_EPS32 = torch.finfo(torch.float32).eps


def _float32_pass_is_exact(
    xs: Tensor, batch: SortedBatch, temperature: float, euclidean: bool, loss: Tensor
) -> bool:
    """Check a float32 pass on a few anchors against float64 direct differences.

    The |a|^2 + |b|^2 - 2ab products lose digits in float32 when points lie far
    from the centroid relative to their neighbour distances. A deterministic
    sample of anchors is recomputed exactly (O(k N D)); a deviation beyond
    _CHECK_TOLERANCE relative plus the rounding any float32 logit -d/T carries
    (_ROUNDING_SLACK * eps * |LSE|) means the pass is redone in float64.
    """
    valid = torch.nonzero(~torch.isnan(loss)).squeeze(1)
    if len(valid) == 0:
        return True
    spread = torch.linspace(0, len(valid) - 1, min(_CHECK_ANCHORS, len(valid)), device=xs.device)
    pick = valid[spread.long()]
    x64 = xs.double()
    if euclidean:
        d = torch.cdist(x64[pick], x64, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    else:
        d = 1.0 - x64[pick] @ x64.T
    logits = -d / temperature
    logits[torch.arange(len(pick), device=pick.device), pick] = -math.inf
    same = batch.group[pick, None] == batch.group[None, :]
    lse_pos = torch.logsumexp(logits.masked_fill(~same, -math.inf), 1)
    lse_neg = torch.logsumexp(logits.masked_fill(same, -math.inf), 1)
    ref = torch.nn.functional.softplus(lse_neg - lse_pos)
    # Any float32 computation rounds the logits -d/T to ~eps * |d/T|: allow that much
    # (scaled by the magnitude of the log-sum-exps), flag only what the expansion adds.
    scale = torch.maximum(lse_pos.abs(), torch.nan_to_num(lse_neg.abs(), posinf=0.0))
    allowed = _CHECK_TOLERANCE * ref.abs() + _ROUNDING_SLACK * _EPS32 * scale
    return bool(((loss[pick].double() - ref).abs() <= allowed).all())


def exact_pass(
    xs: Tensor,
    batch: SortedBatch,
    temperature: float,
    euclidean: bool,
    weights: Tensor | None,
    block_rows: int | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`snnl_pass`, redone in float64 when a float32 pass fails the spot check."""
    out = snnl_pass(xs, batch, temperature, euclidean, weights, block_rows)
    if xs.dtype != torch.float32 or _float32_pass_is_exact(
        xs, batch, temperature, euclidean, out[0]
    ):
        return out
    w64 = None if weights is None else weights.double()
    loss, gx, gt = snnl_pass(xs.double(), batch, temperature, euclidean, w64, block_rows)
    return (
        loss.float(),
        None if gx is None else gx.float(),
        None if gt is None else gt.float(),
    )
