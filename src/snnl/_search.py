"""The one search of eq. 2: SNNL as a function of u = log T, with its first two
derivatives from one pass over the distances, and a safeguarded Newton in u.

Notation (one anchor i; P its positives j != i with y_j = y_i, Q its negatives; c = e^-u;
d_ij the squared euclidean distance or 1 - cos; m_S = min_{j in S} d_ij):

    S0_S = sum_S w_j,  S1_S = sum_S w_j dd_j,  S2_S = sum_S w_j dd_j^2,
        w_j = exp(-c dd_j), dd_j = d_ij - m_S >= 0 (the largest weight is exactly 1)
    LSE_S = -c m_S + log S0_S,   z_i = LSE_Q - LSE_P,   f_i = softplus(z_i)
    z_i'  = c (E_Q[d] - E_P[d]),  E_S[d] = m_S + S1_S / S0_S
    z_i'' = -z_i' + c^2 (Var_Q[d] - Var_P[d]),  Var_S[d] = S2_S / S0_S - (S1_S / S0_S)^2
    f_i'  = sigmoid(z_i) z_i',  f_i'' = sigmoid(z_i) (1 - sigmoid(z_i)) z_i'^2 + sigmoid(z_i) z_i''

and the curve is the mean of f_i over the anchors (derivatives in u = log T). Each
evaluation is one exp and two products per pair; weights below the dtype's smallest
normal number are raised to it (denormals cost up to 40x; the change is below 1e-37 of
a sum that holds a 1).

Points are scaled by a power of two and centred first (exact scaling: distances and T
scale by 4^-k), as in ``snnl._points``, so any finite features are in range and the
search itself is scale-invariant: the search range follows the distances.

Layout: blocks of anchors (sorted by class) against chunks of points sorted by class
within the chunk, so that an anchor's positives are one run of columns. The distances
are computed once and kept when they fit in ``STORE_BYTES``, else recomputed at every
evaluation (whole datasets read block by block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from snnl import _blocked, _stream
from snnl._checks import check_labels

__all__ = [
    "STORE_BYTES",
    "Curve",
    "KernelPoints",
    "SearchResult",
    "grid_start",
    "minimise",
    "sample_anchors",
    "spot_check",
    "stream_inputs",
    "distances",
    "block_distances",
    "unit_vectors",
]

#: Distances are kept between evaluations up to this many bytes (else recomputed).
STORE_BYTES = 2**28
#: Pairs per block of the class-block layout (a few MiB: passes stay in cache).
BLOCK_PAIRS = 2**20
#: Blocks of several classes up to this many pairs use 0/1 masks (mini-batches).
MASKED_PAIRS = 2**16
#: Columns per chunk when the distances are recomputed (whole datasets).
CHUNK_COLUMNS = 8192
#: Grid elements per vectorised grid pass.
GRID_CHUNK = 2**20
#: The grid that picks Newton's start runs on every anchor while it costs at most this
#: many pairs or one evaluation, else on a spread-out sample of anchors.
GRID_PAIRS = 2**23
#: Grid steps in u = log T: fine where it is cheap, else coarse (then refined by Newton).
GRID_STEP, COARSE_STEP = 0.5, 1.0
#: The search range: [log d_min - MARGIN, log d_max + MARGIN] in u (e^6 ~ 403).
MARGIN = 6.0
#: Newton steps below this are taken without another evaluation (see ``_newton``).
ACCEPT = {torch.float32: 5e-3, torch.float64: 1e-3}
#: u (kernel units) stays where c = e^-u and its products are finite in the dtype.
U_LIMIT = {torch.float32: 80.0, torch.float64: 700.0}


# ----------------------------------------------------------------------------- inputs


def unit_vectors(x: Tensor) -> Tensor:
    """Rows divided by their norm (zero rows stay zero), with autograd.

    Each row is first scaled by a power of two (exact; cosine ignores positive
    scaling) so that no norm overflows or underflows, whatever the magnitude.

    >>> unit_vectors(torch.tensor([[3e30, 4e30], [0.0, 0.0]], dtype=torch.float64)).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    with torch.no_grad():
        row_max = x.abs().amax(1)
        e = torch.frexp(row_max).exponent.to(x.dtype)
        e = torch.where(row_max > 0, e, torch.zeros_like(e))
        half = torch.floor(e / 2)
        s1, s2 = torch.exp2(-half), torch.exp2(half - e)
    return F.normalize(x * s1.unsqueeze(1) * s2.unsqueeze(1), dim=1, eps=1e-12)


def stream_inputs(features, labels, euclidean: bool = True):
    """(source, labels (N,) int64, valid (N,) bool) for the dataset-scale functions:
    ``features`` a tensor, numpy array, memmap or :func:`snnl.loss.open_npy` rows."""
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


def sample_anchors(valid: Tensor, anchors: int, generator: torch.Generator | None) -> Tensor:
    """``anchors`` indices drawn uniformly without replacement among the ``valid`` points
    (all of them when there are fewer)."""
    pool = torch.nonzero(valid).squeeze(1)
    take = min(anchors, len(pool))
    return pool[torch.randperm(len(pool), generator=generator)[:take]]


class KernelPoints:
    """Rows of the features as the search sees them, from a tensor (any device) or any
    source :class:`snnl._stream.Source` reads (numpy arrays, memmaps, .npy rows).

    Euclidean: ``x * 2**-k - centre`` (k from the largest coordinate, centre the mean, both
    exact in the dtype), so that distances in kernel units are those of the caller times
    4**-k: ``log T (caller) = log T (kernel) + log_scale``. Cosine: unit vectors (scale 1).
    """

    def __init__(self, features, euclidean: bool, dtype: torch.dtype | None = None) -> None:
        self.euclidean = euclidean
        if isinstance(features, Tensor):
            x = features.detach().reshape(features.shape[0], -1)
            self.dtype = dtype or (torch.float64 if x.dtype == torch.float64 else torch.float32)
            self.device = x.device
            self.n, self.d = x.shape
            self._source = None
            self._x = x
            self._all, k = self._prepare_tensor(x)
            self._k = k
        else:
            self._source = features if isinstance(features, _stream.Source) else None
            self._source = self._source or _stream.Source(features)
            self.dtype = dtype or self._source.dtype
            self.device = torch.device("cpu")
            self.n, self.d = self._source.n, self._source.d
            self._prep = _stream.scan(self._source, euclidean)
            self._all, k = None, self._prep.k
        self.log_scale = 2.0 * k * math.log(2.0) if euclidean else 0.0

    @classmethod
    def of_block(cls, block: _blocked.BlockLogits) -> KernelPoints:
        """The loss's prepared points of a mini-batch (``block.xs``, sorted by class, in
        its kernel units), as the search's points in that sorted order: no pass of their
        own. They have no float64 rows (``exact_rows``): a block is searched without the
        float32 spot check (the loss at T* checks its own pass)."""
        prep = block.prep
        points = cls.__new__(cls)
        points.euclidean, points.dtype = prep.euclidean, block.xs.dtype
        points.device, (points.n, points.d) = block.xs.device, block.xs.shape
        points._source, points._all, points._k = None, block.xs, prep.k
        points.log_scale = 2.0 * prep.k * math.log(2.0) if prep.euclidean else 0.0
        return points

    def _prepare_tensor(self, x: Tensor) -> tuple[Tensor, int]:
        x = x.to(self.dtype)
        if not self.euclidean:
            return unit_vectors(x), 0
        lo, hi = torch.aminmax(x)
        top = max(-float(lo), float(hi))
        k = math.frexp(top)[1] if top > 0 else 0
        # the centre in kernel units, representable in the dtype: x - centre exact in float64
        centre = _blocked.scale_pow2(x.mean(0, dtype=torch.float64), k).to(self.dtype)
        self._centre64 = centre.double()
        if abs(k) <= 100:  # one rounding: -c + 2**-k x
            return torch.add(-centre, x, alpha=2.0 ** (-k)), k
        return _blocked.scale_pow2(x, k) - centre, k

    def rows(self, index: Tensor) -> Tensor:
        """Kernel points of the rows at ``index`` (original order), (len, D)."""
        if self._all is not None:
            return self._all[index.to(self.device)]
        return self._prep.points(self._source.take(index), self.dtype)

    def identical(self) -> bool:
        """Whether every point is the same (in memory; rows read by blocks: False)."""
        return self._all is not None and bool((self._all == self._all[0]).all())

    def range_rows(self, r0: int, r1: int) -> Tensor:
        """Kernel points of rows r0..r1-1, (r1 - r0, D)."""
        if self._all is not None:
            return self._all[r0:r1]
        return self._prep.points(self._source.rows(r0, r1), self.dtype)

    def exact_rows(self, index: Tensor | None = None, r0: int = 0, r1: int = 0) -> Tensor:
        """Kernel points computed in float64 from the caller's features (scaled and
        centred; unit vectors for cosine), for the float64 reference of a spot check:
        the expansion's error there is about 1e-9 of a float32 pass's."""
        if self._source is None:
            x = self._x[index.to(self.device)] if index is not None else self._x[r0:r1]
            if not self.euclidean:
                return unit_vectors(x.double())
            if abs(self._k) <= 100:
                return torch.add(-self._centre64, x.double(), alpha=2.0 ** (-self._k))
            return _blocked.scale_pow2(x.double(), self._k) - self._centre64
        raw = self._source.take(index) if index is not None else self._source.rows(r0, r1)
        return self._prep.points(raw.double(), torch.float64)


def block_distances(block: _blocked.BlockLogits) -> Tensor:
    """The (N, N) distances of a mini-batch's loss block (kernel units, sorted, self pairs
    0) from its logits at T = 1: |x_i|^2 - raw_ij (euclidean: the expansion
    :func:`distances` computes), 1 - raw_ij (cosine), clamped at 0."""
    if block.prep.euclidean:
        d = block.norms.unsqueeze(1) - block.raw
    else:
        d = 1.0 - block.raw
    return d.clamp_min_(0.0).fill_diagonal_(0.0)


def _operand(x: Tensor, euclidean: bool) -> tuple[Tensor, Tensor]:
    """(points, offsets) with d_ij = off_i + off_j - k <x_i, x_j>: k = 2 and off = |x|^2
    (euclidean), k = 1 and off = 1/2 (cosine: 1 - cos)."""
    if euclidean:
        return x, torch.linalg.vector_norm(x, dim=1).square_()
    return x, torch.full((x.shape[0],), 0.5, dtype=x.dtype, device=x.device)


def distances(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor], euclidean: bool,
              out: Tensor) -> Tensor:  # fmt: skip
    """d (A, B) = off_a + off_b - k a b^T (see :func:`_operand`), clamped at 0, in ``out``."""
    (xa, off_a), (xb, off_b) = a, b
    d = out[: xa.shape[0] * xb.shape[0]].view(xa.shape[0], xb.shape[0])
    torch.addmm(off_b.unsqueeze(0), xa, xb.T, alpha=-2.0 if euclidean else -1.0, out=d)
    return d.add_(off_a.unsqueeze(1)).clamp_min_(0.0)


# ----------------------------------------------------------------------------- blocks


@dataclass
class _Chunk:
    """Columns (original indices) sorted by class, and each class's run [p0, p1)."""

    cols: Tensor  # (W,) original indices
    runs: dict[int, tuple[int, int]]
    r0: int  # the chunk is rows r0..r1-1 of the features, in the order ``order``
    r1: int
    order: Tensor
    operand: Tensor | None = None  # kept when the chunk is the only one


@dataclass
class _Block:
    """Sorted anchors a0..a1-1 against one chunk. ``segments``: (r0, r1, p0, p1), rows
    r0..r1-1 of the block (one class) and that class's columns; ``dd``: kept distances
    (shifted, see :meth:`Curve._shift`) or None (recomputed). A small block of several
    classes (a mini-batch) uses ``masks`` instead (positives, negatives as 0/1, self
    excluded): a few operations on the whole block instead of a few per class."""

    a0: int
    a1: int
    chunk: _Chunk
    segments: list[tuple[int, int, int, int]]
    self_rc: tuple[Tensor, Tensor] | None
    dd: Tensor | None = None
    masks: tuple[Tensor, Tensor] | None = None


class Curve:
    """SNNL of ``anchors`` (original indices of points with a positive) against every
    point, as a function of u = log T in kernel units; see the module docstring.

    Anchors are sorted by class (rows), the points of each chunk by class (columns), so
    an anchor's positives are one run of columns: its sums over positives are slices,
    and over negatives the row sums once that run is zeroed (no cancellation).

    ``distances``: the (N, N) distances between the points (kernel units, self pairs
    0), already computed (a mini-batch's loss block, :func:`block_distances`): no
    product of its own.

    Attributes after construction: ``u_lo``, ``u_hi`` (the data's search range,
    kernel units), ``log_scale`` (caller u = kernel u + log_scale), ``constant`` (a
    reason string where SNNL does not depend on T, else None), ``evaluations``, and
    ``first`` = (u, f, f', f'') at ``first_u`` when given: with a single chunk of
    columns each block holds whole rows, so that evaluation rides along the build.
    """

    def __init__(
        self,
        points: KernelPoints,
        labels: Tensor,
        anchors: Tensor,
        first_u: float | None = None,
        progress: bool = False,
        distances: Tensor | None = None,
    ) -> None:
        self.points = points
        self._given = distances
        self.progress = progress
        self.dtype, self.device = points.dtype, points.device
        self.log_scale = points.log_scale
        self.floor = math.log(torch.finfo(self.dtype).tiny) + 0.01
        self.evaluations = 0
        classes, dense = torch.unique(labels.to("cpu"), return_inverse=True)
        self.num_classes = len(classes)
        self.labels = dense
        anchors = anchors.to("cpu")
        self.anchors = anchors[torch.argsort(dense[anchors], stable=True)]
        self.v = len(self.anchors)
        n = points.n
        self.store = self.v * n * _itemsize(self.dtype) <= STORE_BYTES
        in_memory = points._all is not None and n <= 4 * CHUNK_COLUMNS
        self.chunks = self._make_chunks(n, n if (self.store or in_memory) else CHUNK_COLUMNS)
        self.same_order = len(self.chunks) == 1 and torch.equal(self.anchors, self.chunks[0].cols)
        # given distances already in the blocks' order (every point an anchor, sorted)
        self._given_in_order = self.same_order and torch.equal(self.anchors, torch.arange(n))
        self.blocks = self._make_blocks()
        self._anchor_cache: dict[tuple[int, int], Tensor] = {}
        self._last_chunk: tuple[_Chunk, Tensor] | None = None
        self._buf: Tensor | None = None
        self.first: tuple[float, float, float, float] | None = None
        self._build(first_u)

    # ------------------------------------------------------------------ layout

    def _make_chunks(self, n: int, width: int) -> list[_Chunk]:
        chunks = []
        for r0 in range(0, n, width):
            r1 = min(n, r0 + width)
            order = torch.argsort(self.labels[r0:r1], stable=True)
            values, counts = torch.unique_consecutive(self.labels[r0:r1][order], return_counts=True)
            ends = torch.cumsum(counts, 0).tolist()
            triples = zip(values.tolist(), counts.tolist(), ends, strict=True)
            runs = {k: (e - c, e) for k, c, e in triples}
            chunks.append(_Chunk(order + r0, runs, r0, r1, order))
        return chunks

    def _make_blocks(self) -> list[_Block]:
        where = torch.full((self.points.n,), -1, dtype=torch.int64)
        cls = self.labels[self.anchors].tolist()
        blocks = []
        for chunk in self.chunks:
            where[:] = -1
            where[chunk.cols] = torch.arange(len(chunk.cols))
            rows = max(1, BLOCK_PAIRS // len(chunk.cols))
            for a0 in range(0, self.v, rows):
                a1 = min(self.v, a0 + rows)
                segments, r = [], a0
                while r < a1:
                    e = r + 1
                    while e < a1 and cls[e] == cls[r]:
                        e += 1
                    p0, p1 = chunk.runs.get(cls[r], (0, 0))
                    segments.append((r - a0, e - a0, p0, p1))
                    r = e
                col = where[self.anchors[a0:a1]]
                inside = torch.nonzero(col >= 0).squeeze(1)
                rc = (inside.to(self.device), col[inside].to(self.device)) if len(inside) else None
                block = _Block(a0, a1, chunk, segments, rc)
                if len(segments) > 2 and (a1 - a0) * len(chunk.cols) <= MASKED_PAIRS:
                    same = self.labels[self.anchors[a0:a1]][:, None] == self.labels[chunk.cols]
                    pos = same.to(device=self.device, dtype=self.dtype)
                    if rc is not None:
                        pos[rc] = 0.0
                    neg = (~same).to(device=self.device, dtype=self.dtype)
                    block.masks = (pos, neg)
                blocks.append(block)
        return blocks

    # ------------------------------------------------------------------ distances

    def _anchor_operand(self, block: _Block) -> tuple[Tensor, Tensor]:
        if self.same_order:  # the anchors are the chunk's points, in its order
            x, off = self._chunk_operand(block.chunk)
            return x[block.a0 : block.a1], off[block.a0 : block.a1]
        key = (block.a0, block.a1)
        if key in self._anchor_cache:
            return self._anchor_cache[key]
        a = _operand(self.points.rows(self.anchors[block.a0 : block.a1]), self.points.euclidean)
        if self.v * self.points.d <= 2**24:  # the anchors' operands stay (sampled anchors)
            self._anchor_cache[key] = a
        return a

    def _chunk_operand(self, chunk: _Chunk) -> tuple[Tensor, Tensor]:
        if chunk.operand is not None:
            return chunk.operand
        if self._last_chunk is not None and self._last_chunk[0] is chunk:
            return self._last_chunk[1]  # blocks run chunk by chunk: each chunk read once
        if self.points._all is not None:
            x = self.points.rows(chunk.cols)
        else:
            x = self.points.range_rows(chunk.r0, chunk.r1)[chunk.order.to(self.device)]
        b = _operand(x, self.points.euclidean)
        if len(self.chunks) == 1:
            chunk.operand = b
        self._last_chunk = (chunk, b)
        return b

    def _distances(self, block: _Block, out: Tensor) -> Tensor:
        """Raw distances (B, W) of a block (clamped at 0), written into ``out``."""
        if self._given is not None:
            d = out[: (block.a1 - block.a0) * len(block.chunk.cols)]
            d = d.view(block.a1 - block.a0, len(block.chunk.cols))
            if self._given_in_order:
                return d.copy_(self._given[block.a0 : block.a1])
            rows = self.anchors[block.a0 : block.a1].to(self.device)
            cols = block.chunk.cols.to(self.device)
            return d.copy_(self._given[rows[:, None], cols[None, :]])
        b = self._chunk_operand(block.chunk)
        return distances(self._anchor_operand(block), b, self.points.euclidean, out)

    def _build(self, first_u: float | None) -> None:
        """One pass: the segment minima, the range, the kept (shifted) distances, and
        the evaluation at ``first_u`` where each block holds whole rows."""
        m_pos = torch.full((self.v,), math.inf, dtype=self.dtype, device=self.device)
        m_neg = torch.full((self.v,), math.inf, dtype=self.dtype, device=self.device)
        self.m_pos, self.m_neg = m_pos, m_neg
        d_hi = 0.0
        sizes = [(b.a1 - b.a0) * len(b.chunk.cols) for b in self.blocks]
        like = torch.empty(0, dtype=self.dtype, device=self.device)
        flat = _blocked.scratch(sum(sizes) if self.store else max(sizes), like)
        fused = first_u is not None and len(self.chunks) == 1
        if fused:
            limit = U_LIMIT[self.dtype]
            first_u = min(max(first_u, -limit), limit)
            sums = torch.zeros(3, 2, self.v, dtype=torch.float64, device=self.device)
        # every point an anchor: each pair is multiplied once, the lower rows filled from
        # the upper ones (the distances are symmetric; the rows' order is the columns')
        symmetric = self.store and self.same_order and self._given is None
        offset = 0
        for block, size in self._blocks(zip(self.blocks, sizes, strict=True), "distances"):
            if symmetric:
                d = self._upper_rows(block, flat.view(self.v, self.v))
            else:
                d = self._distances(block, flat[offset : offset + size])
            if self.store:
                block.dd, offset = d, offset + size
            d_hi = max(d_hi, float(d.amax()))
            if block.self_rc is not None:
                d[block.self_rc] = math.inf
            if block.masks is not None:
                sl = slice(block.a0, block.a1)
                pos, neg = block.masks
                torch.minimum(m_pos[sl], d.masked_fill(pos == 0, math.inf).amin(1), out=m_pos[sl])
                torch.minimum(m_neg[sl], d.masked_fill(neg == 0, math.inf).amin(1), out=m_neg[sl])
            for r0, r1, p0, p1 in block.segments if block.masks is None else ():
                rows = slice(block.a0 + r0, block.a0 + r1)
                part = d[r0:r1]
                if p1 > p0:
                    torch.minimum(m_pos[rows], part[:, p0:p1].amin(1), out=m_pos[rows])
                for cols in (slice(0, p0), slice(p1, part.shape[1])):
                    if cols.stop > cols.start:
                        torch.minimum(m_neg[rows], part[:, cols].amin(1), out=m_neg[rows])
            if self.store or fused:
                self._shift(block, d)
            if fused:
                self._block_sums(block, d, [math.exp(-first_u)], True, sums)
        self.gap = m_neg.double() - m_pos.double()  # exact: minima of the dtype
        if fused and self.num_classes > 1:
            self.evaluations += 1
            self.first = (first_u, *self._finish(first_u, sums))
        self.constant = None
        self.has_scale = d_hi > 0.0
        if self.num_classes < 2:
            self.constant = "there is only one class, so SNNL = 0"
        elif d_hi <= 0.0 or (d_hi < 1e-4 * self.points.d and self.points.identical()):
            self.constant = "all points are identical, so every distance is the same"
        mins = torch.cat([m_pos, m_neg]).double()
        positive = mins[(mins > 0) & torch.isfinite(mins)]
        d_lo = float(positive.min()) if len(positive) else self._smallest_nonzero(d_hi)
        d_hi = max(d_hi, d_lo)
        limit = U_LIMIT[self.dtype]
        self.u_lo = min(max(math.log(d_lo) - MARGIN, -limit), limit) if d_lo > 0 else -limit
        self.u_hi = min(max(math.log(d_hi) + MARGIN, -limit), limit) if d_hi > 0 else limit
        self.u_hi = max(self.u_hi, self.u_lo)

    def _upper_rows(self, block: _Block, full: Tensor) -> Tensor:
        """Rows a0..a1-1 of the symmetric (V, V) distances: columns from a0 multiplied now,
        those before a0 written by earlier blocks; columns from a1 copied down too."""
        a0, a1 = block.a0, block.a1
        x, off = self._chunk_operand(block.chunk)
        buf = self._buffer((a1 - a0) * (len(off) - a0))
        upper = distances((x[a0:a1], off[a0:a1]), (x[a0:], off[a0:]), self.points.euclidean, buf)
        rows = full[a0:a1]
        rows[:, a0:].copy_(upper)
        full[a1:, a0:a1].copy_(upper[:, a1 - a0 :].T)
        return rows

    def _smallest_nonzero(self, d_hi: float) -> float:
        """Smallest nonzero distance (every anchor has a duplicate in both sets: rare)."""
        best = d_hi
        scratch = self._buffer(max((b.a1 - b.a0) * len(b.chunk.cols) for b in self.blocks))
        for block in self.blocks:
            d = self._distances(block, scratch)
            nz = d[d > 0]
            if len(nz):
                best = min(best, float(nz.min()))
        return best

    def _shift(self, block: _Block, d: Tensor) -> Tensor:
        """d - m per segment, in place: positives by m_pos, negatives by m_neg (the
        self entries become 0; their weight is zeroed after the exp)."""
        if block.masks is not None:
            sl = slice(block.a0, block.a1)
            mn = self.m_neg[sl].nan_to_num(posinf=0.0).unsqueeze(1)
            d.sub_(torch.where(block.masks[1] > 0, mn, self.m_pos[sl].unsqueeze(1)))
        for r0, r1, p0, p1 in block.segments if block.masks is None else ():
            rows = slice(block.a0 + r0, block.a0 + r1)
            mp = self.m_pos[rows].unsqueeze(1)
            mn = self.m_neg[rows].nan_to_num(posinf=0.0).unsqueeze(1)
            part = d[r0:r1]
            part[:, p0:p1].sub_(mp)
            part[:, :p0].sub_(mn)
            part[:, p1:].sub_(mn)
        if block.self_rc is not None:
            d[block.self_rc] = 0.0
        return d.clamp_min_(0.0)

    # ------------------------------------------------------------------ sums

    def _blocks(self, blocks, desc: str):
        """``blocks`` with a progress bar on stderr while distances are recomputed (or
        built) and ``progress`` is set: each pass over a large dataset shows its advance."""
        if not self.progress or (self.store and desc != "distances"):
            yield from blocks
            return
        with _stream.progress_bar(len(self.blocks), desc, True) as bar:
            for item in blocks:
                yield item
                bar.update(1)

    def _buffer(self, numel: int) -> Tensor:
        if self._buf is None or self._buf.numel() < numel:
            like = torch.empty(0, dtype=self.dtype, device=self.device)
            self._buf = _blocked.scratch(numel, like)
        return self._buf[:numel]

    def _sums(self, cs: list[float], moments: bool) -> Tensor:
        """(K, 2, V) float64 sums over positives [:, 0] and negatives [:, 1]: with
        ``moments`` (one c) S0, S1, S2 (K = 3), else S0 at each c of ``cs`` (K = len(cs))."""
        out = torch.zeros(3 if moments else len(cs), 2, self.v, dtype=torch.float64,
                          device=self.device)  # fmt: skip
        largest = max((b.a1 - b.a0) * len(b.chunk.cols) for b in self.blocks)
        for block in self._blocks(self.blocks, "SNNL* search"):
            if block.dd is not None:
                dd = block.dd
            else:  # the recomputed distances sit after the sums' working space
                per_pass = 3 if moments else max(1, min(len(cs), GRID_CHUNK // largest))
                dd = self._shift(block, self._distances(block, self._buffer(
                    largest * (per_pass + 1))[largest * per_pass :]))  # fmt: skip
            self._block_sums(block, dd, cs, moments, out)
        return out

    def _block_sums(
        self, block: _Block, dd: Tensor, cs: list[float], moments: bool, out: Tensor
    ) -> None:
        """Add one block's sums (see :meth:`_sums`) to ``out``."""
        rows, width = dd.shape
        k = 3 if moments else len(cs)
        per_pass = 3 if moments else max(1, min(k, GRID_CHUNK // (rows * width)))
        buf = self._buffer(per_pass * rows * width)
        for g0 in range(0, k, per_pass):
            g1 = min(k, g0 + per_pass)
            x = buf[: (g1 - g0) * rows * width].view(g1 - g0, rows, width)
            if moments:
                torch.mul(dd, -cs[0], out=x[0])
                w = x[:1]
            else:
                c = torch.tensor(cs[g0:g1], dtype=self.dtype, device=self.device)
                torch.mul(dd.unsqueeze(0), c.view(-1, 1, 1).neg_(), out=x)
                w = x
            w.clamp_min_(self.floor).exp_()
            if block.self_rc is not None:
                w[:, block.self_rc[0], block.self_rc[1]] = 0.0
            if moments:
                torch.mul(x[0], dd, out=x[1])
                torch.mul(x[1], dd, out=x[2])
            if block.masks is not None:
                pos, neg = block.masks
                out[g0:g1, 0, block.a0 : block.a1] += (x * pos).sum(-1)
                out[g0:g1, 1, block.a0 : block.a1] += (x * neg).sum(-1)
                continue
            for r0, r1, p0, p1 in block.segments:
                if p1 > p0:
                    rows_out = slice(block.a0 + r0, block.a0 + r1)
                    out[g0:g1, 0, rows_out] += x[:, r0:r1, p0:p1].sum(-1)
                    x[:, r0:r1, p0:p1] = 0.0
            out[g0:g1, 1, block.a0 : block.a1] += x.sum(-1)

    # ------------------------------------------------------------------ curve

    def stats(self, u: float) -> tuple[float, float, float]:
        """(f, f', f'') of the mean SNNL over the anchors at u, derivatives in u."""
        s = self._sums([math.exp(-u)], True)
        self.evaluations += 1
        return self._finish(u, s)

    def _finish(self, u: float, s: Tensor) -> tuple[float, float, float]:
        """(f, f', f'') from the sums (3, 2, V) at u (module docstring)."""
        c = math.exp(-u)
        z = -c * self.gap + s[0, 1].log() - s[0, 0].log()
        e1 = s[1] / s[0]  # E[dd] per set (2, V)
        var = (s[2] / s[0] - e1 * e1).clamp_min_(0.0)
        z1 = c * (self.gap + e1[1] - e1[0])
        z2 = -z1 + c * c * (var[1] - var[0])
        sig = torch.sigmoid(z)
        f = _blocked.softplus(z)
        self.last_u, self.last_terms = u, f
        f1 = sig * z1
        f2 = sig * (1.0 - sig) * z1 * z1 + sig * z2
        out = torch.stack([f.mean(), f1.mean(), f2.mean()]).tolist()
        return out[0], out[1], out[2]

    def values(self, us: list[float]) -> list[float]:
        """The mean SNNL at each u of ``us`` (value only)."""
        cs = [math.exp(-u) for u in us]
        s = self._sums(cs, False)
        self.evaluations += len(us)
        c = torch.tensor(cs, dtype=torch.float64, device=self.device).unsqueeze(1)
        z = -c * self.gap + s[:, 1].log() - s[:, 0].log()
        return _blocked.softplus(z).mean(1).tolist()


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


# ----------------------------------------------------------------------------- Newton


@dataclass(frozen=True)
class SearchResult:
    """A minimum of the curve: u (kernel units), its value, and how it was found."""

    u: float
    value: float
    evaluations: int
    at_lower: bool  # the result sits at the lower end of the range, the curve rising above
    at_upper: bool


class _Step(NamedTuple):
    u: float
    value: float
    slope: float  # f' where Newton stopped (0 after a model step)
    converged: bool
    third: float | None  # the last estimate of the third derivative f3


def _newton(
    curve: Curve,
    u: float,
    lo: float,
    hi: float,
    tol: float,
    accept: float,
    max_steps: int,
    first: tuple[float, float, float, float] | None = None,
    third: float | None = None,
) -> _Step:
    """Newton steps in u from ``u`` within [lo, hi] (each step at most 1, backtracked until
    the value does not rise); ``third``: an estimate of the third derivative f3 (a sample's).

    With f3 (given, or the difference of two evaluations' f''), the step solves the cubic
    model's f' = 0 instead. A step below ``accept`` where the curve is convex is taken
    without another evaluation, the value there being the model's: quadratic
    f + g s + h s^2 / 2 (off by O(s^3)), or, below ``4 * accept`` with f3 known, cubic
    (+ f3 s^3 / 6, off by O(s^4))."""
    if first is not None and first[0] == u:
        f, g, h = first[1:]
    else:
        f, g, h = curve.stats(u)
    for _ in range(max_steps):
        step = -g / h if h > 0 else (-1.0 if g > 0 else 1.0)
        disc = h * h - 2.0 * g * third if third is not None else -1.0
        if h > 0 and disc > 0:
            step = -2.0 * g / (h + math.sqrt(disc))
        step = max(-1.0, min(1.0, step))
        u_new = min(max(u + step, lo), hi)
        step = u_new - u
        if step == 0.0:
            return _Step(u, f, g, True, third)  # at a bound, the curve falling beyond it
        if h > 0 and (abs(step) < accept or (third is not None and abs(step) < 4 * accept)):
            cubic = third * step**3 / 6.0 if third is not None else 0.0
            return _Step(u_new, f + g * step + 0.5 * h * step * step + cubic, 0.0, True, third)
        while True:
            f_new, g_new, h_new = curve.stats(u_new)
            if f_new <= f + 1e-15 * max(1.0, abs(f)) or abs(step) < tol:
                break
            step *= 0.5
            u_new = u + step
        moved = abs(u_new - u)
        third = (h_new - h) / (u_new - u) if moved > 0 else third
        u, f, g, h = u_new, f_new, g_new, h_new
        if moved < tol:
            return _Step(u, f, g, True, third)
    return _Step(u, f, g, False, third)


def _grid(curve: Curve, lo: float, hi: float, step: float) -> list[float]:
    """Grid points over the data's range clipped to [lo, hi], with lo and hi: ``step``
    apart between log d_min and log d_max, twice that over the margins beyond."""
    core_lo, core_hi = curve.u_lo + MARGIN, curve.u_hi - MARGIN
    points = {lo, hi}
    for a, b, h in (
        (curve.u_lo, core_lo, 2 * step),
        (core_lo, core_hi, step),
        (core_hi, curve.u_hi, 2 * step),
    ):
        a, b = max(lo, a), min(hi, b)
        if a < b:
            points.update(np.linspace(a, b, int(math.ceil((b - a) / h)) + 1).tolist())
    return sorted(points)


def _vertex(us: list[float], vals: list[float]) -> float:
    """The grid's best point moved to the vertex of the parabola through it and its two
    neighbours (when that is a minimum between them)."""
    k = int(np.argmin(vals))
    if k == 0 or k == len(us) - 1:
        return us[k]
    (x0, x1, x2), (y0, y1, y2) = us[k - 1 : k + 2], vals[k - 1 : k + 2]
    d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    curvature = (d12 - d01) / (x2 - x0)
    if not curvature > 0:
        return us[k]
    vertex = x1 - (d01 * (x2 - x1) + d12 * (x1 - x0)) / (2 * curvature * (x2 - x0))
    return min(max(vertex, x0), x2)


def grid_start(
    curve: Curve, lo: float, hi: float, *, refine: bool = False
) -> tuple[float, float | None]:
    """The best point of a grid over ``curve``'s range clipped to [lo, hi] (fine where the
    grid costs at most ``GRID_PAIRS`` pairs or one evaluation, else coarse), moved to the
    vertex of the parabola through it and its neighbours; ``refine``: then Newton steps
    on ``curve`` to about 1e-4 (a sample of anchors, before the full curve). Returns
    (u, an estimate of the third derivative there, or None)."""
    pairs = curve.v * curve.points.n
    us = _grid(curve, lo, hi, GRID_STEP)
    if len(us) * pairs > max(GRID_PAIRS, pairs):
        us = _grid(curve, lo, hi, COARSE_STEP)
    best = _vertex(us, curve.values(us))
    if not refine:
        return best, None
    step = _newton(curve, best, lo, hi, 1e-4, 1e-2, 50)
    return step.u, step.third


def minimise(
    curve: Curve,
    lo: float,
    hi: float,
    *,
    start: float | None = None,
    third: float | None = None,
    check_start: bool = False,
    tol: float = 1e-7,
    accept: float | None = None,
    max_steps: int = 50,
) -> SearchResult:
    """The minimum of ``curve`` over u in [lo, hi] (kernel units), by Newton from ``start``
    (default: :func:`grid_start` on every anchor; then the value returned is never above
    any grid point's, as each step is backtracked until the value does not rise).

    ``third``: an estimate of the third derivative near ``start``; ``accept``: see
    :func:`_newton` (default ``ACCEPT`` of the dtype). ``check_start`` (a warm
    start from an earlier T*): after Newton, the value at u -+ 2 and at the large-T end;
    a lower one there restarts from the grid. ``curve.first`` (the evaluation made during
    the build) serves the first step when it is at ``start``.
    """
    evals0 = curve.evaluations
    if accept is None:  # the model's error, O(step^3), below the dtype's rounding of sums
        accept = ACCEPT[curve.dtype]
    u = grid_start(curve, lo, hi)[0] if start is None else min(max(start, lo), hi)
    step = _newton(curve, u, lo, hi, tol, accept, max_steps, curve.first, third)
    if start is not None and check_start:
        u = step.u
        probes = sorted({min(max(p, lo), hi) for p in (u - 2.0, u + 2.0, min(hi, curve.u_hi))})
        lowest = min(curve.values(probes))
        if not step.converged or lowest < step.value - 1e-6 * max(1.0, abs(step.value)):
            step = _newton(curve, grid_start(curve, lo, hi)[0], lo, hi, tol, accept, max_steps)
    evals = curve.evaluations - evals0
    at_lower = step.u <= lo and step.slope > 0
    return SearchResult(step.u, step.value, evals, at_lower, step.u >= hi and step.slope < 0)


def spot_check(curve: Curve, anchors: int = 8) -> bool:
    """Whether the curve's per-anchor terms at its last evaluation agree with a float64
    reference (points prepared in float64 from the caller's features) on ``anchors``
    anchors, half spread out, half those whose nearest distance is largest relative to
    their term (where float32 loses the most digits), to 2e-6 relative plus the float
    rounding of their log-sum-exps (as ``snnl._blocked`` checks the loss). Float64 curves
    pass without a check."""
    if curve.dtype == torch.float64:
        return True
    points, u = curve.points, curve.last_u
    pick = torch.linspace(0, curve.v - 1, min(anchors, curve.v)).round().long()
    terms = curve.last_terms.cpu()
    risk = (curve.m_pos.double().cpu() + 1e-30) / terms.clamp(min=1e-3)  # digits lost
    pick = torch.unique(torch.cat([pick[: anchors // 2], torch.topk(risk, len(pick) // 2).indices]))
    idx = curve.anchors[pick]
    x = points.exact_rows(idx)
    c = math.exp(-u)
    labels = curve.labels.to(x.device)
    mine = labels[idx.to(x.device)].unsqueeze(1)
    acc = None
    for r0 in range(0, points.n, CHUNK_COLUMNS):
        r1 = min(points.n, r0 + CHUNK_COLUMNS)
        cols = points.exact_rows(None, r0, r1)
        d = distances(_operand(x, points.euclidean), _operand(cols, points.euclidean),
                      points.euclidean, x.new_empty(len(x) * len(cols)))  # fmt: skip
        s = d.mul_(-c)
        same = mine == labels[r0:r1].unsqueeze(0)
        itself = idx.to(x.device).unsqueeze(1) == torch.arange(r0, r1, device=x.device)
        pos = torch.logsumexp(s.masked_fill(~same | itself, -math.inf), 1)
        neg = torch.logsumexp(s.masked_fill(same, -math.inf), 1)
        part = torch.stack([pos, neg])
        acc = part if acc is None else torch.logaddexp(acc, part)
    ref = _blocked.softplus(acc[1] - acc[0])
    got = curve.last_terms[pick.to(curve.last_terms.device)].to(ref.device)
    eps = torch.finfo(curve.dtype).eps
    scale = acc.abs().amax(0) + 1.0  # the logits' magnitude
    allowed = 2e-6 * ref + 32.0 * eps * scale * ref.clamp_max(1.0)
    return bool(((got - ref).abs() <= allowed).all())
