"""Readers for the file formats users already have: IDX, CIFAR-10 binary, SVHN .mat, PNG folders.

Each reader returns raw NumPy arrays (uint8 images ``(N, C, H, W)``, int64 labels
``(N,)``) and knows nothing about the dataset table: where to look (``dirs``, searched in
order), the dataset's name and the expected layout (for error messages) are arguments,
filled in from :data:`snnl.data.registry.DATASETS`. Nothing here unpickles: the
pickled "python version" of CIFAR-10 is not read.
"""

from __future__ import annotations

import gzip
import math
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "read_idx",
    "read_idx_splits",
    "read_cifar10_splits",
    "read_svhn_splits",
    "read_png_folders",
]

Arrays4 = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

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

#: The four files of an IDX dataset (role -> base name; ``.gz`` and ``.idx`` variants too).
IDX_FILES: dict[str, str] = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
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


def read_idx_splits(name: str, dirs: Sequence[Path], layout: str) -> Arrays4:
    """The four IDX files of an MNIST-like set: uint8 ``(N, 1, H, W)`` images, int64 labels.

    Each of :data:`IDX_FILES` is looked for in ``dirs`` (first hit wins), plain or
    ``.gz``, also with ``.idx`` for ``-idx`` (``train-images.idx3-ubyte``, as some mirrors
    name them). Images must be uint8 ``(N, H, W)``, labels uint8 ``(N,)`` in 0..9.
    Returns ``x_train, y_train, x_test, y_test``.
    """
    found: dict[str, Path] = {}
    missing = []
    for role, base in IDX_FILES.items():
        alt = base.replace("-idx", ".idx")  # e.g. train-images.idx3-ubyte (some mirrors)
        p = _find_file(dirs, [base, alt, base + ".gz", alt + ".gz"])
        if p is None:
            missing.append(base + "[.gz]")
        else:
            found[role] = p
    if missing:
        raise FileNotFoundError(
            f"{name}: missing {', '.join(missing)}; searched {', '.join(str(d) for d in dirs)}. "
            f"Expected layout: {layout}"
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
# CIFAR-10 (binary version)
# --------------------------------------------------------------------------------------

_CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR10_FILES: tuple[str, ...] = (
    *(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test_batch.bin",
)


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


def read_cifar10_splits(
    name: str, dirs: Sequence[Path], layout: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """CIFAR-10's binary batches: 5 training batches, one test batch, optional class names.

    The first of ``dirs`` holding all of :data:`CIFAR10_FILES` is read. Record = 1 label
    byte + 1024 R + 1024 G + 1024 B bytes (row-major 32x32). Class names come from
    ``batches.meta.txt`` beside the batches (10 non-empty lines), else ``None``.
    Returns ``x_train, y_train, x_test, y_test, classes``.
    """
    base = next((d for d in dirs if all((d / n).is_file() for n in CIFAR10_FILES)), None)
    if base is None:
        present = next((d for d in dirs if any((d / n).is_file() for n in CIFAR10_FILES)), dirs[0])
        missing = [n for n in CIFAR10_FILES if not (present / n).is_file()]
        raise FileNotFoundError(
            f"{name}: missing {', '.join(missing)} in {present} (searched "
            f"{', '.join(str(d) for d in dirs)}). Expected the binary version: {layout}; the "
            f"pickled 'python version' is not read because unpickling can run code"
        )
    parts = [_read_cifar_batch(base / n) for n in CIFAR10_FILES]
    xtr = np.concatenate([p[0] for p in parts[:5]])
    ytr = np.concatenate([p[1] for p in parts[:5]])
    xte, yte = parts[5]
    classes: tuple[str, ...] | None = None
    meta = base / "batches.meta.txt"
    if meta.is_file():
        labels = [ln.strip() for ln in meta.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(labels) != 10:
            raise ValueError(f"{meta}: expected 10 non-empty class-name lines, got {len(labels)}")
        classes = tuple(labels)
    return xtr, ytr, xte, yte, classes


# --------------------------------------------------------------------------------------
# SVHN (.mat)
# --------------------------------------------------------------------------------------

SVHN_FILES: tuple[str, str] = ("train_32x32.mat", "test_32x32.mat")


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


def read_svhn_splits(name: str, dirs: Sequence[Path], layout: str) -> Arrays4:
    """SVHN's cropped digits: ``X`` uint8 ``(H, W, 3, N)`` and ``y`` 1..10 (10 = digit 0).

    Each of :data:`SVHN_FILES` is looked for in ``dirs``. Label 10 becomes 0, so labels are
    the digits. Returns ``x_train, y_train, x_test, y_test`` with images ``(N, 3, H, W)``.
    """
    paths = {n: _find_file(dirs, [n]) for n in SVHN_FILES}
    missing = [n for n, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"{name}: missing {', '.join(missing)}; searched {', '.join(str(d) for d in dirs)}. "
            f"Expected the cropped-digits format: {layout}"
        )
    xtr, ytr = _read_svhn_mat(paths[SVHN_FILES[0]])  # type: ignore[arg-type]
    xte, yte = _read_svhn_mat(paths[SVHN_FILES[1]])  # type: ignore[arg-type]
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(
            f"{name}: train images are {xtr.shape[1:]} but test images {xte.shape[1:]}"
        )
    return xtr, ytr, xte, yte


# --------------------------------------------------------------------------------------
# Folders of PNGs, one per class (notMNIST)
# --------------------------------------------------------------------------------------


def read_png_folders(
    name: str, dirs: Sequence[Path], layout: str, classes: Sequence[str], size: int = 28
) -> tuple[np.ndarray, np.ndarray]:
    """All readable PNGs of the class folders as uint8 ``(N, 1, size, size)`` grayscale.

    The first of ``dirs`` holding a folder for every class is read; label = the class's
    index in ``classes``. Images not already ``size`` x ``size`` are resized (bilinear).
    Unreadable files are skipped with one RuntimeWarning that counts them; a class
    folder with no readable image is a ValueError. Returns ``x, y`` (no split).
    """
    from PIL import Image

    base = next((c for c in dirs if all((c / k).is_dir() for k in classes)), None)
    if base is None:
        probe = next((c for c in dirs if any((c / k).is_dir() for k in classes)), dirs[0])
        missing = [k for k in classes if not (probe / k).is_dir()]
        raise FileNotFoundError(
            f"{name}: missing class folder(s) {', '.join(missing)} in {probe} (searched "
            f"{', '.join(str(c) for c in dirs)}). Expected {layout}"
        )
    images: list[np.ndarray] = []
    labels: list[int] = []
    bad: list[Path] = []
    for label, cls in enumerate(classes):
        folder = base / cls
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
            raise ValueError(f"{name}: no readable .png images in {folder}")
    if bad:
        warnings.warn(
            f"{name}: skipped {len(bad)} unreadable PNG file(s) under {base} (first: {bad[0]})",
            RuntimeWarning,
            stacklevel=4,  # caller -> load_dataset/load_outliers -> spec.read -> here
        )
    return np.stack(images)[:, None, :, :], np.asarray(labels, dtype=np.int64)
