"""The tile pairs of the symmetric kernel (in memory: ``_blocked.symmetric_pass``;
streamed: ``_stream``).

s is symmetric, so each pair of row tiles (I, J), I <= J, needs one product
S = X_I X_J^T. Pass 1 gathers running log-sum-exp statistics (max, sum) of the
positives and negatives of every row from both orientations of S: rows of I from
its rows, rows of J from its columns. Pass 2 (gradient) takes S again (kept from pass
1 when all tiles fit in KEEP_LOGITS_BYTES, else recomputed) and forms
H_IJ = G_IJ + G_JI^T in one tile, then accumulates H [X_J, 1] into the rows of I and
H^T [X_I, 1] into the rows of J (the extra column of ones gives H 1). Forward and
backward take 0.5 + 1 = 1.5 N x N x D products with kept logits, 0.5 + 0.5 + 1 = 2
when recomputing, instead of 3.

The logits come from one product of augmented operands: s_ij = alpha <A_i, B_j> with
euclidean A = [x, 1, -|x|^2/2], B = [x, -|x|^2/2, 1], alpha = 2/T (so s = -|x_i - x_j|^2/T);
cosine A = [x, 1, 0], B = [x, 0, 0], alpha = 1/T.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from snnl._points import exp_floor, softplus

# Rows per tile of the symmetric kernel: N / 8 within [256, 1024] (the diagonal blocks,
# computed whole, then add 1/8 to the products), and logits per block (row tile x
# column chunk): 2**22 float32 = 16 MiB, few large operations (on a shared machine each
# parallel operation waits for its slowest thread, so fewer and larger ones win).
TILE_MIN, TILE_MAX = 256, 1024
_TILE_ELEMENTS = 2**22
# With the logits kept for the gradient pass, blocks twice as wide (2**23 float32 = 32 MiB
# each; fewer, larger operations: ~10% faster at N = 8192 on 2 threads).
KEPT_TILE_ELEMENTS = 2**23
# Above this many classes shared by two tiles, positives are a mask, not rectangles.
_MAX_RECTS = 32
# The gradient pass forms exp(s - a_j) as exp(s - a_i) exp(a_i - a_j) when the shifts of
# a block span at most this (log units): a clamped term then carries at most
# exp(floor + this) of error, far below rounding.
_REUSE_SPREAD = {torch.float32: 40.0, torch.float64: 600.0}
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
    floor = exp_floor(s.dtype)
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
    floor = exp_floor(s.dtype)
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
    floor = exp_floor(s.dtype)
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


def tile_at(a: Tensor, b: Tensor, group: Tensor, r0: int, r1: int) -> Tile:
    """The tile of sorted rows r0:r1 of the operands ``a``, ``b`` and class ids ``group``."""
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


def tile_sizes(n: int, tile: int | None, elements: int = _TILE_ELEMENTS) -> tuple[int, int]:
    """(rows per tile, columns per block) for N points: ``tile`` rows, or N / 8 within
    [TILE_MIN, TILE_MAX]; blocks of about ``elements`` logits, at least square."""
    rows = min(n, tile or min(max(n // 8, TILE_MIN), TILE_MAX))
    width = max(rows, min(n, elements // rows))
    return rows, width
