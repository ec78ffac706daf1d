"""torchmetrics metrics: the Soft Nearest Neighbor Loss of everything seen, for training loops.

:class:`SoftNearestNeighborMetric` accumulates (features, labels) batches and computes
the exact SNNL of their union (all pairs, not a mean of per-batch values), synchronised
across processes by torchmetrics. The value comes from the same blocked kernel as
:func:`snnl.loss.soft_nearest_neighbor_loss` (memory O(block x N) beyond the stored
features).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from snnl._checks import check_bounds, check_labels, check_positive, check_tensor
from snnl.distances import Distance, check_distance
from snnl.loss import SNNLWarning, soft_nearest_neighbor_loss
from snnl.temperature import snnl_star

__all__ = ["SoftNearestNeighborMetric", "FEATURE_DTYPES"]

#: dtypes the features can be kept in between update() and compute() (None: as given,
#: float32 unless float64).
FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class SoftNearestNeighborMetric(Metric):
    r"""Exact SNNL (eq. 1 of Frosst, Papernot & Hinton 2019) of every point seen since the
    last ``reset()``, at a given temperature or at the optimal one (eq. 2).

    .. math::
        \mathrm{SNNL} = -\frac{1}{|V|} \sum_{i \in V} \log
            \frac{\sum_{j \ne i,\ y_j = y_i} e^{-d(x_i, x_j)/T}}{\sum_{k \ne i} e^{-d(x_i, x_k)/T}}

    over all N points gathered by ``update`` (on every process: states are lists
    concatenated across ranks, ``dist_reduce_fx="cat"``), V the points with another point
    of their class. This is the SNNL of the union, not a mean of per-batch values.

    Args:
        temperature: T > 0, or None for the optimal temperature
            (:func:`snnl.temperature.snnl_star`; the T used is kept in
            ``last_temperature``).
        distance: "euclidean" (squared) or "cosine" (:class:`snnl.distances.Distance`).
        bounds: search interval of the optimal temperature; None (default): the range
            of the data's distances (any feature scale).
        feature_dtype: keep the stored features in this dtype (e.g. ``torch.float16``
            halves the memory of float32 features); computed in float32 (float64 if
            float64). None: float32, or float64 for float64 features.
        **kwargs: torchmetrics ``Metric`` options (``dist_sync_on_step``,
            ``process_group``, ...).

    ``compute()`` returns a 0-dim float64 tensor; NaN, with an ``SNNLWarning``, when
    the SNNL is undefined (no data, or no label occurs twice) rather than a 0 that would
    read as perfectly separated classes.

    ``higher_is_better`` is None: neither direction is better in general. Low SNNL means
    separated classes, which is what a classifier's late layers should reach; high SNNL
    means entangled classes, which the paper's eq. 3 seeks in hidden layers.
    ``is_differentiable`` is False: the features are stored detached and ``compute``
    runs without gradient (use :func:`snnl.loss.soft_nearest_neighbor_loss` as a loss).
    ``full_state_update`` is False: ``update`` only appends to the states.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> metric = SoftNearestNeighborMetric(temperature=2.0)
        >>> for _ in range(3):
        ...     y = torch.randint(0, 3, (20,), generator=g)
        ...     metric.update(torch.randn(20, 4, generator=g) + y[:, None], y)
        >>> value = metric.compute()
        >>> value.shape, bool(0 < value < math.log(3) + 1)
        (torch.Size([]), True)
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    features: list[Tensor]
    labels: list[Tensor]

    def __init__(
        self,
        temperature: float | None = None,
        *,
        distance: Distance | str = Distance.EUCLIDEAN,
        bounds: tuple[float, float] | None = None,
        feature_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.temperature = (
            None if temperature is None else check_positive("temperature", temperature)
        )
        self.distance = check_distance(distance).value
        if feature_dtype is not None and feature_dtype not in FEATURE_DTYPES:
            names = ", ".join(str(d).removeprefix("torch.") for d in FEATURE_DTYPES)
            raise ValueError(f"unknown feature_dtype {feature_dtype!r}; expected one of: {names}")
        self.feature_dtype = feature_dtype
        self.bounds = check_bounds(bounds, torch.float64)
        self.last_temperature: float | None = None
        self.add_state("features", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Add a batch: features (B, ...) of a floating dtype, labels (B,) of an integer dtype."""
        check_tensor("features", features, floating=True)
        if features.dim() < 2:
            raise ValueError(
                f"features must have shape (B, ...) with B points, got {tuple(features.shape)}"
            )
        x = features.detach().reshape(features.shape[0], -1)
        y = check_labels(labels, x.shape[0], device=x.device)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("features contain NaN or Inf")
        if self.features and self.features[0].shape[1] != x.shape[1]:
            raise ValueError(
                f"features have {x.shape[1]} dimensions per point, earlier batches "
                f"{self.features[0].shape[1]}"
            )
        dtype = self.feature_dtype or (torch.float64 if x.dtype == torch.float64 else torch.float32)
        stored = x.to(dtype)
        if not bool(torch.isfinite(stored).all()):
            raise ValueError(
                f"features overflow feature_dtype {dtype} (largest magnitude "
                f"{float(x.abs().max()):g}); keep them in a wider dtype"
            )
        self.features.append(stored)
        self.labels.append(y)

    def compute(self) -> Tensor:
        """The SNNL of all points gathered so far (0-dim float64; NaN where undefined)."""
        if isinstance(self.features, list) and not self.features:
            return self._undefined("no points have been added")
        x = dim_zero_cat(self.features)  # a list, or one tensor after a sync
        y = dim_zero_cat(self.labels)
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        counts = torch.bincount(torch.unique(y, return_inverse=True)[1])
        if len(x) < 2 or not bool((counts >= 2).any()):
            return self._undefined(f"no label occurs twice among the {len(x)} points")
        with torch.no_grad(), warnings.catch_warnings():
            # points without another of their class are left out: the documented definition
            warnings.filterwarnings(
                "ignore", message=".*left out of the SNNL", category=SNNLWarning
            )
            if self.temperature is None:
                star = snnl_star(x, y, distance=self.distance, bounds=self.bounds)
                t, value = star.temperature, float(star.value)
            else:
                t = self.temperature
                value = float(soft_nearest_neighbor_loss(x, y, t, distance=self.distance))
        self.last_temperature = t
        return torch.tensor(value, dtype=torch.float64)

    def _undefined(self, why: str) -> Tensor:
        warnings.warn(f"SNNL is undefined: {why}; returning NaN", SNNLWarning, stacklevel=3)
        self.last_temperature = None
        return torch.tensor(math.nan, dtype=torch.float64)
