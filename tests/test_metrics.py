"""SoftNearestNeighborMetric against independent references.

- ``reference.snnl_reference_mean``: a float64 loop over anchors (explicit differences);
- the functional loss on the concatenated batches (the metric must be the SNNL of the
  union, not a mean of per-batch values);
- 2 gloo processes (forked, file:// rendezvous) against one process on all batches.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reference import snnl_reference_mean
from snnl.loss import SNNLWarning, soft_nearest_neighbor_loss
from snnl.metrics import SoftNearestNeighborMetric
from snnl.temperature import optimal_temperature


def _batches(sizes=(17, 30, 9), d=4, classes=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in sizes:
        y = torch.randint(0, classes, (b,), generator=g)
        x = torch.randn(b, d, generator=g, dtype=dtype) + 1.2 * y[:, None]
        out.append((x, y))
    return out


def _union(batches):
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_union_of_batches_matches_float64_reference(distance, dtype):
    batches = _batches(dtype=dtype)
    t = 1.5 if distance == "euclidean" else 0.2
    metric = SoftNearestNeighborMetric(temperature=t, distance=distance)
    for x, y in batches:
        metric.update(x, y)
    value = metric.compute()
    x, y = _union(batches)
    expected = snnl_reference_mean(x.double().numpy(), y.numpy(), t, distance)
    assert value.dtype == torch.float64 and value.shape == ()
    assert value.item() == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-12)
    # the SNNL of the union, which no mean of per-batch values gives
    per_batch = np.mean(
        [snnl_reference_mean(b.double().numpy(), c.numpy(), t, distance) for b, c in batches]
    )
    assert abs(per_batch - expected) > 1e-3
    functional = soft_nearest_neighbor_loss(x, y, t, distance=distance)
    assert value.item() == pytest.approx(functional.item(), rel=1e-6)
    assert metric.last_temperature == t


def test_optimal_temperature_of_the_union():
    batches = _batches(seed=1)
    metric = SoftNearestNeighborMetric()
    for x, y in batches:
        metric.update(x, y)
    value = metric.compute().item()
    x, y = _union(batches)
    t_expected, v_expected = optimal_temperature(x, y)
    assert metric.last_temperature == pytest.approx(t_expected, rel=1e-9)
    assert value == pytest.approx(v_expected, rel=1e-9)
    at_t = snnl_reference_mean(x.double().numpy(), y.numpy(), metric.last_temperature)
    assert value == pytest.approx(at_t, rel=1e-5)
    for other in (metric.last_temperature / 1.3, metric.last_temperature * 1.3):
        assert value <= snnl_reference_mean(x.double().numpy(), y.numpy(), other) + 1e-7


def test_optimal_temperature_follows_the_feature_scale():
    """Issue 18: the search range follows the data, so features x 1e4 (T* near 1e6,
    beyond the old fixed bound 1e4) give the same SNNL*, at T* scaled by 1e8."""
    batches = _batches(seed=2)
    values = []
    for c in (1.0, 1e4):
        metric = SoftNearestNeighborMetric()
        for x, y in batches:
            metric.update(x.double() * c, y)
        values.append((metric.compute().item(), metric.last_temperature))
    assert values[1][0] == pytest.approx(values[0][0], rel=1e-9)
    assert values[1][1] == pytest.approx(values[0][1] * 1e8, rel=1e-6)
    assert values[1][1] > 1e4


def test_reset_forgets_and_compute_again():
    first, second = _batches(seed=2), _batches(seed=3)
    metric = SoftNearestNeighborMetric(temperature=1.0)
    for x, y in first:
        metric.update(x, y)
    metric.compute()
    metric.reset()
    for x, y in second:
        metric.update(x, y)
    x, y = _union(second)
    assert metric.compute().item() == pytest.approx(
        snnl_reference_mean(x.double().numpy(), y.numpy(), 1.0), rel=1e-5
    )


def test_float16_storage_within_float16_rounding():
    batches = _batches(sizes=(40, 40), d=6, seed=4)
    metric = SoftNearestNeighborMetric(temperature=2.0, feature_dtype=torch.float16)
    for x, y in batches:
        metric.update(x, y)
    assert all(f.dtype == torch.float16 for f in metric.features)
    value = metric.compute().item()
    x, y = _union(batches)
    rounded = x.half().double().numpy()
    # exactly the SNNL of the float16-rounded features, computed in float32 ...
    assert value == pytest.approx(snnl_reference_mean(rounded, y.numpy(), 2.0), rel=1e-5)
    # ... which differs from the float32 features' by what float16 rounding moves: each
    # coordinate by <= 2^-11 of itself, so |x_i - x_j| by e_ij <= 2^-11 (|x_i| + |x_j|),
    # each d_ij by <= 2 |x_i - x_j| e_ij + e_ij^2, and the loss (two log-sum-exps, each
    # 1-Lipschitz in the logits) by <= 2 max_ij of that / T
    exact = snnl_reference_mean(x.double().numpy(), y.numpy(), 2.0)
    xd = x.double()
    norms = xd.norm(dim=1)
    e = 2.0**-11 * (norms[:, None] + norms[None, :])
    bound = 2 * float((2 * torch.cdist(xd, xd) * e + e * e).max()) / 2.0
    assert 0 < abs(value - exact) <= bound < exact


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda m: None, "no points have been added"),
        (lambda m: m.update(torch.randn(4, 2), torch.arange(4)), "no label occurs twice"),
    ],
)
def test_undefined_is_nan_with_a_warning(make, why):
    metric = SoftNearestNeighborMetric(temperature=1.0)
    make(metric)
    with warnings.catch_warnings(), pytest.warns(SNNLWarning, match=why):
        warnings.simplefilter("ignore", UserWarning)  # torchmetrics: compute before update
        warnings.simplefilter("always", SNNLWarning)
        value = metric.compute()
    assert math.isnan(value.item())


def test_bad_input_is_refused():
    metric = SoftNearestNeighborMetric(temperature=1.0)
    with pytest.raises(ValueError, match=r"shape \(B, \.\.\.\)"):
        metric.update(torch.randn(5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must have shape \(5,\)"):
        metric.update(torch.randn(5, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        metric.update(torch.randn(5, 2), torch.zeros(5))
    with pytest.raises(TypeError, match="floating-point"):
        metric.update(torch.ones(5, 2, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN or Inf"):
        metric.update(torch.full((5, 2), math.nan), torch.zeros(5, dtype=torch.long))
    metric.update(torch.randn(5, 2), torch.zeros(5, dtype=torch.int32))
    with pytest.raises(ValueError, match="3 dimensions per point, earlier batches 2"):
        metric.update(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="overflow feature_dtype"):
        SoftNearestNeighborMetric(feature_dtype=torch.float16).update(
            torch.full((3, 2), 1e6), torch.zeros(3, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="unknown feature_dtype.*float16, bfloat16"):
        SoftNearestNeighborMetric(feature_dtype=torch.int8)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SoftNearestNeighborMetric(temperature=0.0)
    with pytest.raises(ValueError, match="unknown distance"):
        SoftNearestNeighborMetric(distance="l1")


def test_declared_properties():
    assert SoftNearestNeighborMetric.is_differentiable is False
    assert SoftNearestNeighborMetric.higher_is_better is None
    assert SoftNearestNeighborMetric.full_state_update is False
    from snnl import SoftNearestNeighborMetric as exported

    assert exported is SoftNearestNeighborMetric


# ----------------------------------------------------------------------------- 2 processes

WORLD = 2


def _rank(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        metric = SoftNearestNeighborMetric(temperature=1.5)
        for k, (x, y) in enumerate(_batches(sizes=(13, 8, 21, 5), seed=5)):
            if k % WORLD == rank:  # uneven shares: 34 and 13 rows
                metric.update(x, y)
        value = metric.compute()
        torch.save({"value": value, "local": sum(len(f) for f in metric.features)}, out % rank)
    finally:
        dist.destroy_process_group()


def test_two_processes_compute_the_snnl_of_all_their_points(tmp_path):
    out = str(tmp_path / "rank%d.pt")
    mp.start_processes(
        _rank,
        args=(f"file://{tmp_path / 'rendezvous'}", out),
        nprocs=WORLD,
        join=True,
        start_method="fork",
    )
    x, y = _union(_batches(sizes=(13, 8, 21, 5), seed=5))
    expected = snnl_reference_mean(x.double().numpy(), y.numpy(), 1.5)
    results = [torch.load(out % r, weights_only=True) for r in range(WORLD)]
    assert [r["local"] for r in results] == [34, 13]  # states restored after the sync
    for r in results:
        assert r["value"].item() == pytest.approx(expected, rel=1e-5)
