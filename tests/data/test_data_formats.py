"""Tests for snnl.data.formats: files written here in the real formats, checked against the
arrays written (the independent reference)."""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from data_files import (
    idx_bytes,
    rows_as_multiset,
    write,
    write_cifar,
    write_idx_set,
    write_notmnist,
)
from snnl.data import (
    CIFAR10_CLASSES,
    FASHION_CLASSES,
    load_dataset,
    read_idx,
)

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
