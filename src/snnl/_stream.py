"""Streamed SNNL passes over features read block by block (they need not fit in memory).

- :class:`NpyRows`: rows of a .npy file read with ``os.pread`` (no mapping of the whole
  file, so an address-space limit below the file size is no obstacle).
- :func:`scan`: one pass for the power-of-two scale and the centre (see ``_blocked``).
- :func:`symmetric_losses`: the exact per-anchor losses of every point: the symmetric
  tile kernel of ``_blocked`` with tiles read from the source (each tile sorted by class
  within itself), statistics O(N), blocks O(tile x width).
- :func:`anchor_losses`: the exact losses of chosen anchors against all points, at one or
  several temperatures (one product per block for all of them).

Memory: O(tile x width) for a block, O(N) for labels and per-row statistics, and
O(rows x D) for the rows read at a time; the features themselves are never all loaded.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from snnl import _blocked
from snnl._blocked import CHECK_TOLERANCE, ROUNDING_SLACK, check_anchors, needs_check
from snnl._points import FLOAT32_LOGIT_LOG2, max_log2, scale_pow2

# rows per tile and per column chunk of the streamed kernels
TILE = 1024
WIDTH = 4096
# anchors processed together against a column chunk
ANCHOR_BLOCK = 1024


# ----------------------------------------------------------------------------- sources


class NpyRows:
    """Read-only rows of a 2-D (or N-D, flattened per row) C-order .npy file, read with
    ``os.pread`` block by block instead of mapping the whole file.

    ``rows[r0:r1]`` and ``rows.take(indices)`` return numpy arrays; ``shape`` and
    ``dtype`` are the file's. Use as a context manager or call ``close()``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                major, _ = np.lib.format.read_magic(f)
                read = {
                    1: np.lib.format.read_array_header_1_0,
                    2: np.lib.format.read_array_header_2_0,
                }
                if major not in read:
                    raise ValueError(f"unsupported .npy format version {major}")
                shape, fortran, dtype = read[major](f)
                self.offset = f.tell()
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{self.path}: not a readable .npy file ({err})") from err
        if dtype.hasobject:
            raise ValueError(f"{self.path}: holds objects, which cannot be read without unpickling")
        if fortran and len(shape) > 1:
            raise ValueError(
                f"{self.path}: stored in Fortran order; save it C-ordered "
                "(np.save(path, np.ascontiguousarray(x)))"
            )
        if len(shape) < 2:
            raise ValueError(f"{self.path}: features must have shape (N, D), got {shape}")
        self.dtype = dtype
        self.shape = (int(shape[0]), int(np.prod(shape[1:], dtype=np.int64)))
        self.row_bytes = self.shape[1] * dtype.itemsize
        size = os.path.getsize(self.path)
        if size < self.offset + self.shape[0] * self.row_bytes:
            raise ValueError(f"{self.path}: truncated ({size} bytes for shape {shape})")
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, r0: int, r1: int) -> np.ndarray:
        nbytes = (r1 - r0) * self.row_bytes
        buf = bytearray(nbytes)
        view = memoryview(buf)
        done = 0
        while done < nbytes:
            chunk = os.preadv(self._fd, [view[done:]], self.offset + r0 * self.row_bytes + done)
            if chunk == 0:
                raise ValueError(f"{self.path}: unexpected end of file")
            done += chunk
        return np.frombuffer(buf, dtype=self.dtype).reshape(r1 - r0, self.shape[1])

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("NpyRows supports row slices rows[r0:r1] and take(indices)")
        r0, r1, _ = key.indices(self.shape[0])
        return self._read(r0, max(r0, r1))

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows at ``indices`` (any order), reading runs of consecutive rows at once."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx), self.shape[1]), dtype=self.dtype)
        sorted_idx = idx[order]
        start = 0
        while start < len(sorted_idx):
            stop = start + 1
            while stop < len(sorted_idx) and sorted_idx[stop] - sorted_idx[stop - 1] <= 1:
                stop += 1
            lo, hi = int(sorted_idx[start]), int(sorted_idx[stop - 1]) + 1
            block = self._read(lo, hi)
            out[order[start:stop]] = block[sorted_idx[start:stop] - lo]
            start = stop
        return out

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> NpyRows:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class Source:
    """Uniform row access to features: a torch tensor, a numpy array or memmap, or
    :class:`NpyRows`. Rows come back as float32 tensors (float64 if stored so)."""

    def __init__(self, features) -> None:
        if isinstance(features, Tensor):
            if not features.is_floating_point():
                raise TypeError(f"features must be floating point, got dtype {features.dtype}")
            shape = tuple(features.shape)
            self.dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
        elif isinstance(features, (np.ndarray, NpyRows)):
            kind = features.dtype.kind
            if kind not in "fiu" or features.dtype.hasobject:
                raise TypeError(
                    f"features must be a real numeric array, got dtype {features.dtype}"
                )
            shape = tuple(features.shape)
            self.dtype = torch.float64 if features.dtype == np.float64 else torch.float32
        else:
            raise TypeError(
                "features must be a torch.Tensor, a numpy array (np.load(path, mmap_mode='r') "
                f"works) or snnl.loss.open_npy(path), got {type(features).__name__}"
            )
        if len(shape) < 2:
            raise ValueError(f"features must have shape (N, D), got {shape}")
        self.features = features
        self.n = int(shape[0])
        self.d = int(np.prod(shape[1:]))
        if self.n < 2 or self.d < 1:
            raise ValueError(f"features must have at least 2 points and 1 dimension, got {shape}")

    def _tensor(self, block) -> Tensor:
        if isinstance(block, Tensor):
            out = block.detach().reshape(len(block), self.d)
        else:
            arr = np.asarray(block).reshape(len(block), self.d)
            if not arr.dtype.isnative:
                arr = arr.astype(arr.dtype.newbyteorder("="))
            if not (arr.flags.writeable and arr.flags.c_contiguous):  # e.g. a read-only memmap
                arr = np.array(arr, order="C")
            out = torch.from_numpy(arr)
        return out.to(self.dtype)

    def rows(self, r0: int, r1: int) -> Tensor:
        return self._tensor(self.features[r0:r1])

    def take(self, indices: Tensor) -> Tensor:
        if isinstance(self.features, Tensor):
            return self._tensor(self.features[indices])
        idx = indices.cpu().numpy()
        if isinstance(self.features, NpyRows):
            return self._tensor(self.features.take(idx))
        return self._tensor(self.features[np.sort(idx)][np.argsort(np.argsort(idx))])

    def blocks(self, size: int):
        for r0 in range(0, self.n, size):
            r1 = min(self.n, r0 + size)
            yield r0, r1, self.rows(r0, r1)


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr (a no-op object when disabled)."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="block", file=sys.stderr, disable=not enabled, mininterval=1.0
    )


# ----------------------------------------------------------------------------- preparation


@dataclass(frozen=True)
class StreamPrep:
    """Scale exponent k and centre (kernel units, representable in the source dtype) of
    the euclidean kernel; cosine rows are normalised one by one."""

    euclidean: bool
    k: int
    centre: Tensor | None  # (D,) float64

    def points(self, raw: Tensor, dtype: torch.dtype, centred: bool = True) -> Tensor:
        """Kernel points of raw rows (caller units) in ``dtype``."""
        x = raw.to(dtype)
        if not self.euclidean:
            return _unit_rows(x)
        if centred and abs(self.k) <= 100:
            return torch.add(-self.centre.to(dtype), x, alpha=2.0 ** (-self.k))
        x = scale_pow2(x, self.k)
        return x - self.centre.to(dtype) if centred else x

    def kernel_temperature(self, temperature: float) -> float:
        return math.ldexp(temperature, -2 * self.k) if self.euclidean else temperature


def _unit_rows(x: Tensor) -> Tensor:
    row_max = x.abs().amax(1)
    e = torch.frexp(row_max).exponent.to(x.dtype)
    e = torch.where(row_max > 0, e, torch.zeros_like(e))
    half = torch.floor(e / 2)
    x = x * torch.exp2(-half).unsqueeze(1) * torch.exp2(half - e).unsqueeze(1)
    return torch.nn.functional.normalize(x, dim=1, eps=1e-12)


def scan(source: Source, euclidean: bool, rows: int = 65536) -> StreamPrep:
    """One pass: every value finite, and (euclidean) the scale exponent and the centre."""
    top = 0.0
    total = torch.zeros(source.d, dtype=torch.float64)
    for r0, _, x in source.blocks(rows):
        finite = torch.isfinite(x).all(1)
        if not bool(finite.all()):
            bad = r0 + int(torch.nonzero(~finite)[0])
            raise ValueError(f"features contain NaN or Inf (first in row {bad})")
        top = max(top, float(x.abs().max()))
        if euclidean:
            total += x.double().sum(0)
    if not euclidean:
        return StreamPrep(False, 0, None)
    k = math.frexp(top)[1] if top > 0 else 0
    mean = total / source.n
    if not bool(torch.isfinite(mean).all()):  # float64 features near the top of its range
        total = torch.zeros(source.d, dtype=torch.float64)
        for _, _, x in source.blocks(rows):
            total += scale_pow2(x.double(), k).sum(0)
        centre = total / source.n
    else:
        centre = scale_pow2(mean, k)
    centre = centre.to(source.dtype).double()  # representable: x - centre exact in float64
    return StreamPrep(True, k, centre)


# ----------------------------------------------------------------------------- tiles


def _tile(
    prep: StreamPrep, raw: Tensor, labels: Tensor, rows: Tensor, dtype: torch.dtype, alpha: float
) -> tuple[_blocked.Tile, Tensor]:
    """A tile of raw rows, sorted by class within it; also the norms of its kernel points."""
    order = torch.argsort(labels, stable=True)
    xs = prep.points(raw[order], dtype)
    a, b = _blocked.augmented_operands(xs, prep.euclidean, alpha)
    group = labels[order]
    tile = _blocked.Tile(rows[order], a, b, _blocked.class_runs(group), group)
    return tile, (xs * xs).sum(1)


def symmetric_losses(
    source: Source,
    labels: Tensor,
    prep: StreamPrep,
    temperature: float,
    dtype: torch.dtype,
    *,
    progress: bool = False,
    tile: int | None = None,
    width: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-point losses (N,) float64 in source order (NaN without a positive) at the
    caller's ``temperature``, and the squared norms (N,) of the kernel points.

    Row tile I is read once, then compared with itself (the self pairs on the diagonal)
    and with the column chunks after it; every chunk adds column statistics to its own
    rows, so each pair of points is multiplied once.
    """
    n = source.n
    tile, width = tile or TILE, max(width or WIDTH, tile or TILE)
    alpha = (2.0 if prep.euclidean else 1.0) / prep.kernel_temperature(temperature)
    stats = _blocked.LSEStats(n, labels.device)
    norms = torch.zeros(n, dtype=torch.float32)
    plan = [
        (r0, min(n, r0 + tile), [(c0, min(n, c0 + width)) for c0 in range(r0 + tile, n, width)])
        for r0 in range(0, n, tile)
    ]
    buffers = [torch.empty(tile * max(tile, width), dtype=dtype) for _ in range(2)]
    total = sum(1 + len(chunks) for _, _, chunks in plan)
    with progress_bar(total, "exact SNNL", progress) as bar:
        for r0, r1, chunks in plan:
            rows = torch.arange(r0, r1)
            ti, ni = _tile(prep, source.rows(r0, r1), labels[r0:r1], rows, dtype, alpha)
            norms[ti.rows] = ni.float()
            # the row tile's own statistics gather along its strip (slices), merged once
            local = ti._replace(rows=slice(0, r1 - r0))
            strip = _blocked.LSEStats(r1 - r0, labels.device)
            for c0, c1, lead in [(r0, r1, r1 - r0)] + [(c0, c1, 0) for c0, c1 in chunks]:
                if lead:
                    tj = local
                else:
                    cols = torch.arange(c0, c1)
                    tj, _ = _tile(prep, source.rows(c0, c1), labels[c0:c1], cols, dtype, alpha)
                s = buffers[0][: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
                work = buffers[1][: s.numel()].view_as(s)
                torch.mm(ti.a, tj.b.T, out=s)
                _blocked.tile_pair_stats(s, local, tj, lead, strip, work, col_stats=stats)
                bar.update(1)
            strip.merge_into(stats, ti.rows)
    loss, _ = stats.losses()
    return loss, norms


def anchor_losses(
    source: Source,
    labels: Tensor,
    prep: StreamPrep,
    anchors: Tensor,
    temperatures: list[float],
    dtype: torch.dtype,
    *,
    direct: bool = False,
    progress: bool = False,
    desc: str = "anchors",
    width: int | None = None,
    with_lse: bool = False,
):
    """Exact losses (K, M) float64 of ``anchors`` (M,) (indices into the source) against
    all points, at each caller temperature; NaN for an anchor without a positive.
    ``with_lse``: also (LSE_pos, LSE_neg), each (K, M).

    One product per block serves every temperature (logits at T are raw / T).
    ``direct``: euclidean distances by explicit differences of the uncentred points.
    """
    width = width or WIDTH
    m = len(anchors)
    order = torch.argsort(anchors)
    order = order[torch.argsort(labels[anchors[order]], stable=True)]  # by class, then index
    anchors = anchors[order]
    t_kernel = [prep.kernel_temperature(t) for t in temperatures]
    out = torch.full((3, len(temperatures), m), math.nan, dtype=torch.float64)
    n_blocks = math.ceil(m / ANCHOR_BLOCK) * math.ceil(source.n / width)
    s_buf = w_buf = None
    with progress_bar(n_blocks, desc, progress) as bar:
        for a0 in range(0, m, ANCHOR_BLOCK):
            idx = anchors[a0 : a0 + ANCHOR_BLOCK]
            raw_a = source.take(idx)
            group = labels[idx]
            rows = torch.arange(len(idx))
            xa = prep.points(raw_a, dtype, centred=not direct)
            a_op, _ = _blocked.augmented_operands(xa, prep.euclidean)
            ti = _blocked.Tile(rows, a_op, a_op, _blocked.class_runs(group), group)
            stats = [_blocked.LSEStats(len(idx), labels.device) for _ in temperatures]
            for c0 in range(0, source.n, width):
                c1 = min(source.n, c0 + width)
                lab = labels[c0:c1]
                col_order = torch.argsort(lab, stable=True)
                xc = prep.points(source.rows(c0, c1)[col_order], dtype, centred=not direct)
                if direct and prep.euclidean:
                    mode = "donot_use_mm_for_euclid_dist"
                    raw = torch.cdist(xa, xc, compute_mode=mode).square_().neg_()
                else:
                    _, b_op = _blocked.augmented_operands(xc, prep.euclidean)
                    raw = torch.mm(a_op, b_op.T)
                    if prep.euclidean:
                        raw.mul_(2.0)  # -|x_i - x_j|^2
                cgroup = lab[col_order]  # the column tile needs only its classes here
                tj = _blocked.Tile(col_order, xc, xc, _blocked.class_runs(cgroup), cgroup)
                inside = torch.nonzero((idx >= c0) & (idx < c1)).squeeze(1)
                inverse = torch.empty_like(col_order)
                inverse[col_order] = torch.arange(len(col_order))
                self_pairs = (inside, inverse[idx[inside] - c0])
                if s_buf is None or s_buf.numel() < raw.numel():
                    s_buf, w_buf = torch.empty_like(raw).view(-1), torch.empty_like(raw).view(-1)
                s, work = s_buf[: raw.numel()].view_as(raw), w_buf[: raw.numel()].view_as(raw)
                for k, t in enumerate(t_kernel):
                    torch.div(raw, t, out=s)
                    _blocked.tile_pair_stats(
                        s, ti, tj, 0, stats[k], work, columns=False, self_pairs=self_pairs
                    )
                bar.update(1)
            for k in range(len(temperatures)):
                out[0, k, a0 : a0 + len(idx)] = stats[k].losses()[0]
                out[1, k, a0 : a0 + len(idx)], out[2, k, a0 : a0 + len(idx)] = stats[k].lse()
    result = torch.empty_like(out)
    result[:, :, order] = out
    return (result[0], result[1], result[2]) if with_lse else result[0]


# ----------------------------------------------------------------------------- exactness


def _float32_fits(source: Source, prep: StreamPrep, temperatures: list[float]) -> bool:
    """Whether float32 logits stay in range: |x - c| <= 2 per coordinate (kernel units)."""
    if source.dtype == torch.float64:
        return False
    norms_log2 = math.log2(4.0 * source.d) if prep.euclidean else 0.0
    return all(
        _blocked.logit_bound_log2(norms_log2, prep.kernel_temperature(t), prep.euclidean)
        <= FLOAT32_LOGIT_LOG2
        for t in temperatures
    )


def _needs_check(norms: Tensor, prep: StreamPrep, temperatures: list[float], dtype) -> bool:
    top = max_log2(norms)
    return any(
        needs_check(top, prep.kernel_temperature(t), prep.euclidean, dtype) for t in temperatures
    )


def _agrees(losses: Tensor, reference, dtype: torch.dtype) -> bool:
    """``losses`` (K, k) against reference (losses, LSE_pos, LSE_neg), as in ``_blocked``."""
    ref, lse_pos, lse_neg = reference
    if not torch.equal(torch.isnan(losses), torch.isnan(ref)):
        return False
    ok = ~torch.isnan(ref)
    scale = torch.maximum(lse_pos.abs(), torch.nan_to_num(lse_neg.abs(), posinf=0.0))
    eps = torch.finfo(dtype).eps
    allowed = CHECK_TOLERANCE[dtype] * ref.abs() + ROUNDING_SLACK * eps * scale
    return bool(((losses - ref).abs()[ok] <= allowed[ok]).all())


def checked_symmetric_losses(
    source: Source, labels: Tensor, prep: StreamPrep, temperature: float, progress: bool
) -> Tensor:
    """Per-point losses (N,) of the exact streamed pass, tried in float32, float64, then
    (euclidean) by direct differences, each spot-checked like ``_blocked.exact_pass``."""
    dtypes = ([torch.float32] if _float32_fits(source, prep, [temperature]) else []) + [
        torch.float64
    ]
    for dtype in dtypes:
        losses, norms = symmetric_losses(
            source, labels, prep, temperature, dtype, progress=progress
        )
        finite = bool(torch.isfinite(losses[~torch.isnan(losses)]).all())
        if finite and not _needs_check(norms, prep, [temperature], dtype):
            return losses
        pick = check_anchors(losses, norms) if finite else None
        if pick is not None and (
            len(pick) == 0
            or _agrees(
                losses[pick].unsqueeze(0),
                anchor_losses(
                    source, labels, prep, pick, [temperature], torch.float64,
                    direct=dtype == torch.float64, with_lse=True,
                ),
                dtype,
            )
        ):  # fmt: skip
            return losses
    if not prep.euclidean:
        return losses
    anchors = torch.arange(source.n)
    return anchor_losses(
        source, labels, prep, anchors, [temperature], torch.float64,
        direct=True, progress=progress, desc="exact SNNL (direct differences)",
    )[0]  # fmt: skip


def checked_anchor_losses(
    source: Source,
    labels: Tensor,
    prep: StreamPrep,
    anchors: Tensor,
    temperatures: list[float],
    progress: bool,
    desc: str,
) -> Tensor:
    """:func:`anchor_losses` (K, M) in float32, float64, then direct differences, each
    spot-checked on a few of the anchors against a float64 reference."""
    dtypes = ([torch.float32] if _float32_fits(source, prep, temperatures) else []) + [
        torch.float64
    ]
    xs = prep.points(source.take(anchors), torch.float64)
    norms = (xs * xs).sum(1)
    for dtype in dtypes:
        losses = anchor_losses(
            source, labels, prep, anchors, temperatures, dtype, progress=progress, desc=desc
        )
        finite = bool(torch.isfinite(losses[~torch.isnan(losses)]).all())
        if finite and not _needs_check(norms, prep, temperatures, dtype):
            return losses
        if not finite:
            continue
        picks = [check_anchors(row, norms) for row in losses]
        pick = torch.unique(torch.cat(picks))
        if len(pick) == 0:
            return losses
        reference = anchor_losses(
            source, labels, prep, anchors[pick], temperatures, torch.float64,
            direct=dtype == torch.float64, with_lse=True,
        )  # fmt: skip
        if _agrees(losses[:, pick], reference, dtype):
            return losses
    if not prep.euclidean:
        return losses
    return anchor_losses(
        source, labels, prep, anchors, temperatures, torch.float64,
        direct=True, progress=progress, desc=desc + " (direct differences)",
    )  # fmt: skip
