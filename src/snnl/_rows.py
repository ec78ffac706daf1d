"""The row-block kernel: every block of anchor rows against all points (see ``_blocked``).

Every block of B anchor rows is processed once: one (B, D) x (D, N) product for the
logits and, when a gradient is needed, two products for the gradient (rows: G X,
columns: G^T X_B), so forward and backward take three N x N x D products in total and
O(B x N) extra memory. Small problems are one masked block, whose gradient is one
product, (G + G^T) X: two N x N x D products in all.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from snnl._points import KernelOut, SortedBatch, exp_floor, softplus

# A block holds about this many float32 logits (B x N); 2**22 floats = 16 MiB.
_BLOCK_ELEMENTS = 2**22
# Up to this many pairs (N <= 1024) the whole problem is one masked block.
_WHOLE_ELEMENTS = 2**20


def default_block_rows(n: int) -> int:
    """Anchor rows per block for N points: blocks of about 2**22 logits, 1 to N rows."""
    return max(1, min(n, _BLOCK_ELEMENTS // max(n, 1)))


class Block(NamedTuple):
    """Anchor rows r0:r1; their positives are the columns s:e, or (s is None) given
    by a class mask over all columns."""

    r0: int
    r1: int
    s: int | None
    e: int | None


def _one_block(n: int, block_rows: int | None) -> bool:
    """Whether a pass over N points is one masked block (see :func:`_row_blocks`)."""
    return block_rows is None and n * n <= _WHOLE_ELEMENTS


def _row_blocks(batch: SortedBatch, n: int, block_rows: int | None):
    """Yield the blocks of a pass.

    Small problems (N^2 <= _WHOLE_ELEMENTS, default block size) are one masked
    block: a handful of tensor operations instead of several per class, which is
    what makes mini-batch regularisation cheap. Otherwise one class at a time, in
    row blocks, with its positives as one contiguous column range.
    """
    if _one_block(n, block_rows):
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
    floor = exp_floor(logits.dtype)
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
    floor = exp_floor(logits.dtype)
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
    raw: Tensor | None = None,
) -> KernelOut:
    """Row-block kernel over sorted kernel points ``xs`` (N, D); see the module doc.

    ``weights`` (N,) in sorted order: also return H X and H 1 for the gradient of
    sum_i weights_i * loss_i. ``direct``: the uncentred points, for euclidean logits
    by explicit differences (``xs`` still serves the gradient's products). ``raw``: the
    one block's logits at T = 1 (:func:`whole_block_logits` of ``xs``), already computed
    (a temperature step took its slope from them): the logits are raw / T, no product.
    """
    n, _ = xs.shape
    a = 2.0 if euclidean else 1.0
    inv_t = 1.0 / temperature
    given = raw is not None and direct is None and _one_block(n, block_rows)
    if given:  # one block, its logits raw / T: no product, no bias
        bias_t = None
    else:
        bias = -(xs * xs).sum(1) if euclidean else xs.new_zeros(n)
        bias_t = bias * inv_t
    loss = xs.new_full((n,), math.nan)
    need_grad = weights is not None
    if need_grad:
        acc = torch.zeros_like(xs)  # sum_j G_ij x_j + sum_i G_ij x_i
        col_sum = xs.new_zeros(n)  # sum_i G_ij (the rows of G sum to 0)
    for block in _row_blocks(batch, n, block_rows):
        r0, r1 = block.r0, block.r1
        if given:
            logits = raw * inv_t
        else:
            logits = _block_logits(xs, bias_t, a * inv_t, r0, r1, direct)
        z, neg_sum = _lse_parts(logits, block, batch, need_grad)
        loss[r0:r1] = softplus(z)
        if not need_grad:
            continue
        # G = coef[:, None] * M, with M = exp(s - max_neg) on negatives and
        # -Q * neg_sum on positives, so that G = w * sigmoid(z) * (N - Q).
        sig = torch.nan_to_num(torch.sigmoid(z), nan=0.0)  # rows without a positive
        coef = weights[r0:r1] * sig / neg_sum
        if r1 - r0 == n:  # the whole problem: (G + G^T) X, one product instead of two
            g = logits.mul_(coef.unsqueeze(1))
            col_sum += g.sum(0)
            acc.addmm_(g + g.T, xs)
            continue
        acc[r0:r1] += coef.unsqueeze(1) * (logits @ xs)
        acc.addmm_(logits.T, coef.unsqueeze(1) * xs[r0:r1])
        col_sum.addmv_(logits.T, coef)
    if not need_grad:
        return KernelOut(loss, None, None)
    return KernelOut(loss, acc, col_sum)


def whole_block_logits(xs: Tensor, norms: Tensor, euclidean: bool) -> Tensor:
    """The logits (N, N) of the one-block pass at T = 1 over sorted kernel points ``xs``
    (``norms``: their |x|^2), without the row constant b_i, self pairs -inf:
    a <x_i, x_j> + b_j (euclidean: minus the squared distance plus |x_i|^2). One product,
    shared by a temperature step's slope and the loss at the new T
    (:func:`snnl.loss.soft_nearest_neighbor_loss_at_chosen_temperature`).
    """
    n = xs.shape[0]
    bias = -norms if euclidean else xs.new_zeros(n)
    return _block_logits(xs, bias, 2.0 if euclidean else 1.0, 0, n)


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
