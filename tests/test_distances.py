"""snnl.distances: one enum for the distance names, accepted as enum or string."""

from __future__ import annotations

import pytest
import torch

from reference import snnl_reference_mean
from snnl.distances import Distance, check_distance
from snnl.loss import soft_nearest_neighbor_loss
from snnl.measures import layer_snnl_profile
from snnl.metrics import SoftNearestNeighborMetric
from snnl.models import MLP
from snnl.temperature import optimal_temperature


def test_enum_and_string_are_the_same_distance_everywhere():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, generator=g, dtype=torch.float64), torch.arange(20) % 2
    for d in Distance:
        ref = snnl_reference_mean(x.numpy(), y.numpy(), 0.7, d.value)
        for spelled in (d, d.value):
            assert soft_nearest_neighbor_loss(x, y, 0.7, distance=spelled).item() == (
                pytest.approx(ref, rel=1e-12)
            )
        assert optimal_temperature(x, y, distance=d) == optimal_temperature(x, y, distance=d.value)
    assert check_distance("cosine") is Distance.COSINE and Distance.COSINE == "cosine"
    assert Distance.EUCLIDEAN.euclidean and not Distance.COSINE.euclidean


@pytest.mark.parametrize(
    "call",
    [
        lambda: soft_nearest_neighbor_loss(
            torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), 1.0, distance="l2"
        ),  # fmt: skip
        lambda: optimal_temperature(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), distance="l2"),
        lambda: SoftNearestNeighborMetric(distance="l2"),
        lambda: layer_snnl_profile(
            MLP((2,), 2, widths=(3,)),
            torch.randn(4, 2),
            torch.tensor([0, 0, 1, 1]),
            "hidden",
            distance="l2",
        ),  # fmt: skip
    ],
)
def test_an_unknown_distance_names_the_choices(call):
    message = "unknown distance 'l2'; expected one of: euclidean, cosine"
    with pytest.raises(ValueError, match=message):
        call()
