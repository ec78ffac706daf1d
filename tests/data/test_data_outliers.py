"""Tests for snnl.data.outliers: generated letters, rotations and outlier sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_files import (
    write_notmnist,
)
from snnl.data import (
    DataSplits,
    generated_letters,
    load_dataset,
    load_outliers,
    rotate_images,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


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
    with pytest.raises(ValueError, match="expected one of: letters, rotated, notmnist"):
        load_outliers("gaussian", like=digits, n=5)
    with pytest.raises(ValueError, match="360 test inputs"):
        load_outliers("rotated", like=digits, n=361)
    sig = DataSplits("sig", torch.rand(4, 1, 40), torch.arange(4) % 2, torch.rand(2, 1, 40),
                  torch.tensor([0, 1]), ("a", "b"))  # fmt: skip
    with pytest.raises(ValueError, match="image dataset"):
        load_outliers("letters", like=sig, n=3)
