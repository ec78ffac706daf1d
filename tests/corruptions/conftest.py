"""Fixtures of the corruption tests."""

from __future__ import annotations

import pytest
import torch

from snnl.data import load_dataset


@pytest.fixture(scope="module")
def digits28() -> torch.Tensor:
    return load_dataset("mnist5k").x_test[:48]
