"""Points as the exact kernels see them: sorted by class, scaled by a power of two, centred.

Shared by the kernels of :mod:`snnl._rows`, :mod:`snnl._tiles`, :mod:`snnl._blocked`
and the streamed kernel of :mod:`snnl._stream`; the notation is in ``_blocked``'s
module docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

# A float32 pass whose logits could exceed 2**FLOAT32_LOGIT_LOG2 is done in float64.
FLOAT32_LOGIT_LOG2 = 120
# log2 of the largest logit magnitude float64 can carry through the kernel.
FLOAT64_LOGIT_LOG2 = 1000


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


def exp_floor(dtype: torch.dtype) -> float:
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


def scale_pow2(x: Tensor, k: int) -> Tensor:
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
    k_data: int = 0  # the exponent the largest coordinate asks for (before the T clamp)

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
        x = scale_pow2(x, self.k)
        return x - self.centre.to(dtype) if centred else x

    def serves(self, temperature: float) -> bool:
        """Whether :func:`prepare_points` at ``temperature`` gives these points."""
        return not self.euclidean or _exponent(self.k_data, temperature) == self.k

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
    k_data = _largest_exponent(x)
    k = _exponent(k_data, temperature)
    if abs(k) <= 100:  # the sum of N coordinates <= 2**100 stays far from overflow
        centre = scale_pow2(x.mean(0), k)
    else:
        centre = scale_pow2(x, k).mean(0)
    return PreparedPoints(x, batch.perm, True, k, centre.double(), k_data)


def _exponent(k_data: int, temperature: float) -> int:
    """The points' exponent: ``k_data``, moved so that T in kernel units stays within
    float64's range."""
    log2_t = math.log2(temperature)
    return min(max(k_data, math.ceil((log2_t - 1000) / 2)), math.floor((log2_t + 1000) / 2))


class KernelOut(NamedTuple):
    """Per-anchor loss (N,) in sorted order (NaN without a positive); with weights,
    ``acc = H X`` (N, D) and ``rowsum = H 1`` (N,) in kernel units (see module doc)."""

    loss: Tensor
    acc: Tensor | None
    rowsum: Tensor | None


def max_log2(norms: Tensor) -> float:
    """log2 of the largest of ``norms`` (|x|^2 of the points), -1e4 when none is positive."""
    top = float(norms.max()) if norms.numel() else 0.0
    return math.log2(top) if top > 0 else -1e4


def logit_bound_log2(norms_log2: float, temperature: float, euclidean: bool) -> float:
    """log2 of a bound on |s_ij| (kernel units) from log2 max |x|^2."""
    if not euclidean:
        return -math.log2(temperature)
    return 2.0 + norms_log2 - math.log2(temperature)
