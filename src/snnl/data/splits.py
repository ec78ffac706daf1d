"""The train/test container and how splits and subsets are made.

:class:`DataSplits` holds whole splits as tensors (it is not a
``torch.utils.data.Dataset``). The helpers here turn raw arrays into its tensors and
draw the stratified splits and subsets every loader shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["DataSplits"]


@dataclass(frozen=True, eq=False, repr=False)
class DataSplits:
    """A train/test pair of inputs in [0, 1] and integer labels, validated on construction.

    Not a ``torch.utils.data.Dataset``: it holds the whole splits as tensors.

    Shapes: ``x_*`` float32 ``(N, C, H, W)`` or ``(N, C, L)``; ``y_*`` int64 ``(N,)`` with
    values in ``[0, len(classes))``. Train and test share ``input_shape``.

    >>> x = torch.rand(4, 1, 2, 2)
    >>> y = torch.tensor([0, 1, 0, 1])
    >>> ds = DataSplits("toy", x, y, x[:2], y[:2], ("a", "b"))
    >>> ds.input_shape, ds.num_classes
    ((1, 2, 2), 2)
    >>> ds
    DataSplits(name='toy', train=4, test=2, input_shape=(1, 2, 2), classes=2)
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"DataSplits.name must be a non-empty str, got {self.name!r}")
        if not isinstance(self.classes, tuple) or not self.classes:
            raise TypeError(
                f"DataSplits.classes must be a non-empty tuple of str, got {self.classes!r}"
            )
        if not all(isinstance(c, str) for c in self.classes):
            raise TypeError(f"DataSplits.classes must hold str only, got {self.classes!r}")
        shapes = []
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise TypeError(
                    f"DataSplits {self.name!r}: x_{split} and y_{split} must be torch tensors, "
                    f"got {type(x).__name__} and {type(y).__name__}"
                )
            if x.dtype != torch.float32:
                raise TypeError(
                    f"DataSplits {self.name!r}: x_{split} must be float32, got {x.dtype}"
                )
            if x.dim() not in (3, 4):
                raise ValueError(
                    f"DataSplits {self.name!r}: x_{split} must be (N, C, H, W) or (N, C, L), "
                    f"got shape {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.dim() != 1:
                raise TypeError(
                    f"DataSplits {self.name!r}: y_{split} must be int64 of shape (N,), "
                    f"got {y.dtype} of shape {tuple(y.shape)}"
                )
            if y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"DataSplits {self.name!r}: x_{split} has {x.shape[0]} samples "
                    f"but y_{split} has {y.shape[0]}"
                )
            if x.numel() > 0:
                if not bool(torch.isfinite(x).all()):
                    raise ValueError(f"DataSplits {self.name!r}: x_{split} contains NaN or inf")
                lo, hi = float(x.min()), float(x.max())
                if lo < 0.0 or hi > 1.0:
                    raise ValueError(
                        f"DataSplits {self.name!r}: x_{split} values must lie in [0, 1], "
                        f"got [{lo:g}, {hi:g}]"
                    )
            if y.numel() > 0:
                ylo, yhi = int(y.min()), int(y.max())
                if ylo < 0 or yhi >= len(self.classes):
                    raise ValueError(
                        f"DataSplits {self.name!r}: y_{split} labels must lie in "
                        f"[0, {len(self.classes) - 1}] ({len(self.classes)} classes), "
                        f"got [{ylo}, {yhi}]"
                    )
            shapes.append(tuple(x.shape[1:]))
        if self.x_train.shape[0] == 0:
            raise ValueError(f"DataSplits {self.name!r}: the training split is empty")
        if shapes[0] != shapes[1]:
            raise ValueError(
                f"DataSplits {self.name!r}: train inputs are {shapes[0]} "
                f"but test inputs {shapes[1]}"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension, e.g. ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    def __repr__(self) -> str:
        return (
            f"DataSplits(name={self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
            f"input_shape={self.input_shape}, classes={self.num_classes})"
        )


def to_unit_tensor(x: np.ndarray, scale: float) -> Tensor:
    """uint8/float array -> float32 tensor divided by ``scale`` (one float32 copy).

    >>> to_unit_tensor(np.array([0, 51, 255], dtype=np.uint8), 255.0)
    tensor([0.0000, 0.2000, 1.0000])
    """
    t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32)
    if scale != 1.0:
        t.div_(scale)
    return t


def stratified_split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn ``train_test_split(stratify=y, random_state=seed)`` of ``(x, y)``.

    Returns ``x_train, y_train, x_test, y_test``; ``test_fraction`` of each class goes to
    test (rounded as scikit-learn does). A split that cannot be stratified (a class with a
    single sample, too few test slots) raises a ValueError naming the class counts.

    >>> x, y = np.arange(8)[:, None], np.array([0, 0, 0, 0, 1, 1, 1, 1])
    >>> _, _, _, y_test = stratified_split(x, y, 0.5, seed=0)
    >>> sorted(y_test.tolist())
    [0, 0, 1, 1]
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        tr, te = train_test_split(
            idx, test_size=float(test_fraction), random_state=seed, stratify=y
        )
    except ValueError as err:  # e.g. a class with a single sample, or too few test slots
        counts = np.bincount(y).tolist()
        raise ValueError(
            f"cannot make a stratified split with test_fraction={test_fraction} of "
            f"{len(y)} samples with class counts {counts}: {err}"
        ) from err
    return x[tr], y[tr], x[te], y[te]


def stratified_subset(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of ``n`` samples, each class keeping about its share of ``y``.

    Algorithm: inside each class c of size n_c give the members a random rank r and the key
    (r + 1/2) / n_c; take the n smallest keys (random tie-break). Any prefix of the keys
    holds every class in proportion to its size, up to one sample.

    >>> y = np.array([0] * 6 + [1] * 3)
    >>> keep = stratified_subset(y, 3, np.random.default_rng(0))
    >>> np.bincount(y[keep]).tolist()
    [2, 1]
    """
    if n >= len(y):
        return np.arange(len(y))
    keys = np.empty(len(y), dtype=np.float64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        keys[members] = (rng.permutation(len(members)) + 0.5) / len(members)
    order = np.lexsort((rng.random(len(y)), keys))
    return np.sort(order[:n])
