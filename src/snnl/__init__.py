"""snnl: measure and shape the class geometry of neural-network representations."""

from snnl.loss import (
    SNNLWarning,
    SoftNearestNeighborLoss,
    entanglement,
    optimal_temperature,
    snnl_temperature_curve,
    soft_nearest_neighbor_loss,
)

__all__ = [
    "SNNLWarning",
    "SoftNearestNeighborLoss",
    "entanglement",
    "optimal_temperature",
    "snnl_temperature_curve",
    "soft_nearest_neighbor_loss",
]
__version__ = "0.1.0"
