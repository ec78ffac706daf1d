"""snnl: measure and shape the class geometry of neural-network representations."""

from importlib import metadata as _metadata

from snnl.attacks import (
    LBFGSResult,
    TransferResult,
    bim,
    fgsm,
    input_gradient,
    lbfgs,
    lbfgs_search,
    pgd,
    transfer_matrix,
)
from snnl.class_entanglement import FeatureEntanglement, feature_entanglement
from snnl.corruptions import (
    CorruptionAccuracy,
    corrupt,
    corruption_accuracy,
    corruption_names,
)
from snnl.data import (
    DataSplits,
    available_datasets,
    generated_letters,
    load_dataset,
    load_features,
    load_outliers,
    rotate_images,
)
from snnl.distances import Distance
from snnl.dknn import AgreementReport, DkNN, DkNNResult
from snnl.gan import GANConfig, frechet_distance, mode_coverage, train_gan
from snnl.lipschitz import LayerBounds, empirical_check, layer_bounds
from snnl.loss import SNNLWarning, SoftNearestNeighborLoss, soft_nearest_neighbor_loss
from snnl.models import MLP, ReferenceCNN, ResNet20, available_models, build_gan, build_model
from snnl.profile import profile_model
from snnl.regularizers import (
    EntanglementOutput,
    EntanglementRegularizer,
    RegularizedOutput,
    SelectivityRegularizer,
    TemperatureMode,
    regularized_loss,
)
from snnl.runs import DamagedRunError, RunExistsError, RunMismatchError
from snnl.taps import LayerTap, capture, resolve_layers
from snnl.temperature import (
    SNNLStar,
    entanglement,
    entanglement_between,
    optimal_temperature,
    snnl_star,
    snnl_temperature_curve,
)

__all__ = [
    "AgreementReport",
    "CorruptionAccuracy",
    "DamagedRunError",
    "DataSplits",
    "Distance",
    "DkNN",
    "DkNNResult",
    "EntanglementOutput",
    "EntanglementRegularizer",
    "FeatureEntanglement",
    "RegularizedOutput",
    "RunExistsError",
    "RunMismatchError",
    "SelectivityRegularizer",
    "TemperatureMode",
    "regularized_loss",
    "GANConfig",
    "LBFGSResult",
    "LayerBounds",
    "LayerTap",
    "MLP",
    "ReferenceCNN",
    "ResNet20",
    "SNNLStar",
    "SNNLWarning",
    "SoftNearestNeighborLoss",
    "SoftNearestNeighborMetric",
    "TransferResult",
    "available_datasets",
    "available_models",
    "bim",
    "build_gan",
    "build_model",
    "capture",
    "corrupt",
    "corruption_accuracy",
    "corruption_names",
    "entanglement",
    "empirical_check",
    "entanglement_between",
    "feature_entanglement",
    "fgsm",
    "frechet_distance",
    "generated_letters",
    "input_gradient",
    "lbfgs",
    "layer_bounds",
    "lbfgs_search",
    "load_dataset",
    "load_features",
    "load_outliers",
    "mode_coverage",
    "optimal_temperature",
    "pgd",
    "profile_model",
    "resolve_layers",
    "rotate_images",
    "snnl_star",
    "snnl_temperature_curve",
    "soft_nearest_neighbor_loss",
    "train_gan",
    "transfer_matrix",
]


def __getattr__(name: str):
    # torchmetrics takes seconds to import: only for those who ask for the metric
    if name == "SoftNearestNeighborMetric":
        from snnl.metrics import SoftNearestNeighborMetric

        return SoftNearestNeighborMetric
    raise AttributeError(f"module 'snnl' has no attribute {name!r}")


try:
    __version__ = _metadata.version("snnl")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
