"""Tests for snnl.data.splits: the DataSplits container validates what it holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snnl.data import (
    DataSplits,
)

# --------------------------------------------------------------------------------------
# DataSplits container
# --------------------------------------------------------------------------------------


def _toy(**kw):
    x = torch.rand(6, 1, 3, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    args = dict(
        name="toy", x_train=x, y_train=y, x_test=x[:3], y_test=y[:3], classes=("a", "b", "c")
    )
    args.update(kw)
    return DataSplits(**args)


def test_dataset_properties_and_repr():
    ds = _toy()
    assert ds.input_shape == (1, 3, 3) and ds.num_classes == 3
    assert "train=6" in repr(ds) and "test=3" in repr(ds)
    with pytest.raises(AttributeError):
        ds.name = "other"  # frozen


@pytest.mark.parametrize(
    "kw, exc, msg",
    [
        (dict(x_train=torch.rand(6, 1, 3, 3, dtype=torch.float64)), TypeError, "float32"),
        (dict(x_train=torch.rand(6, 1, 3, 3) + 1.0), ValueError, r"\[0, 1\]"),
        (dict(y_train=torch.tensor([0, 1, 2, 0, 1, 3])), ValueError, "labels"),
        (dict(y_train=torch.tensor([0, 1, 2, 0, 1])), ValueError, "6 samples"),
        (dict(y_train=torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int32)), TypeError, "int64"),
        (dict(x_test=torch.rand(3, 1, 4, 4)), ValueError, "test inputs"),
        (dict(x_train=torch.rand(6, 9)), ValueError, "shape"),
        (dict(x_train=torch.full((6, 1, 3, 3), float("nan"))), ValueError, "NaN"),
        (dict(classes=()), TypeError, "classes"),
        (dict(x_train=np.zeros((6, 1, 3, 3), np.float32)), TypeError, "torch tensors"),
    ],
)
def test_dataset_validation(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        _toy(**kw)
