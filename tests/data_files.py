"""Writers for the real file formats (headers by hand), shared by the snnl.data tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    """IDX: 00 00 <code> <ndim>, big-endian uint32 dims, big-endian data."""
    be = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    head = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(be).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_idx_set(folder: Path, rng: np.random.Generator, gz=(), n_train=20, n_test=10):
    ref = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in ref.items():
        write(folder / name, idx_bytes(arr), gz=name in gz)
    return ref


def cifar_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """One record = label byte + 1024 R + 1024 G + 1024 B bytes (row-major 32x32)."""
    out = bytearray()
    for img, lab in zip(images, labels, strict=True):
        out.append(int(lab))
        for ch in range(3):
            for row in range(32):
                out.extend(bytes(img[ch, row].tolist()))
    return bytes(out)


def write_cifar(folder: Path, rng: np.random.Generator, per_batch=3, meta=None):
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch, dtype=np.uint8)
        (folder / name).write_bytes(cifar_records(x, y))
        xs.append(x)
        ys.append(y)
    if meta is not None:
        (folder / "batches.meta.txt").write_text("\n".join(meta) + "\n\n")
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def write_notmnist(folder: Path, rng: np.random.Generator, per_class=5, broken=0):
    ref = []
    for label, letter in enumerate("ABCDEFGHIJ"):
        d = folder / letter
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            img = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            Image.fromarray(img, mode="L").save(d / f"img{k}.png")
            ref.append((img, label))
    for k in range(broken):
        (folder / "C" / f"broken{k}.png").write_bytes(b"\x89PNG\r\n\x1a\n-not really")
    return ref


def rows_as_multiset(x: np.ndarray) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    for r in x:
        key = np.ascontiguousarray(r).tobytes()
        out[key] = out.get(key, 0) + 1
    return out
