"""Tests for snnl.corruptions.catalogue: names, constant tables, properties of every
corruption (shape, range, determinism, severity), errors and devices.
"""

from __future__ import annotations

import pytest
import torch

from corruption_helpers import smooth_colour
from snnl.corruptions import (
    SEVERITIES,
    corrupt,
    corruption_info,
    corruption_names,
    corruption_parameters,
)

# tiny problems: one torch thread (see tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


HENDRYCKS = {
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression",
}  # fmt: skip


MNIST_C = {
    "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate",
    "brightness", "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag",
    "canny_edges",
}  # fmt: skip


RANDOM_FREE = {"brightness", "contrast", "pixelate", "jpeg_compression", "scale", "stripe",
               "canny_edges", "defocus_blur", "zoom_blur"}  # fmt: skip


def test_names_and_groups():
    assert set(corruption_names("hendrycks")) == HENDRYCKS
    assert set(corruption_names("mnist-c")) == MNIST_C
    assert set(corruption_names()) == HENDRYCKS | MNIST_C
    assert isinstance(corruption_names(), tuple) and len(corruption_names()) == 24
    for name in MNIST_C:
        assert corruption_info(name).mnist_c_severity in SEVERITIES
    assert corruption_info("contrast").mnist_c_severity is None
    assert corruption_info("shear").presets == ("mnist-c",)


@pytest.mark.parametrize(
    "name, severity, size, expected",
    [  # constants copied by hand from the two source files
        ("gaussian_noise", 1, 32, {"sigma": 0.04}),
        ("gaussian_noise", 5, 28, {"sigma": 0.38}),
        ("shot_noise", 5, 28, {"photons": 3}),  # the MNIST-C dataset's level
        ("impulse_noise", 4, 28, {"amount": 0.17}),
        ("glass_blur", 1, 28, {"sigma": 0.7, "max_delta": 1, "iterations": 2,
                               "swap_probability": 0.5}),
        ("glass_blur", 5, 32, {"sigma": 0.4, "max_delta": 1, "iterations": 2,
                               "swap_probability": 1.0}),
        ("motion_blur", 1, 28, {"radius": 10.0, "sigma": 3.0}),
        ("fog", 5, 28, {"amount": 3.0, "decay": 1.4, "mapsize": 256}),
        ("fog", 3, 32, {"amount": 0.75, "decay": 2.5, "mapsize": 32}),
        ("snow", 3, 32, {"loc": 0.15, "scale": 0.3, "zoom": 1.75, "threshold": 0.55,
                         "blur_radius": 10.0, "blur_sigma": 4.0, "blend": 0.9}),
        ("frost", 2, 28, {"image_weight": 0.8, "frost_weight": 0.6}),
        ("jpeg_compression", 2, 32, {"quality": 65}),
        ("jpeg_compression", 5, 28, {"quality": 7}),
        ("pixelate", 5, 32, {"factor": 0.65}),
        ("brightness", 5, 28, {"delta": 0.5}),
        ("contrast", 5, 32, {"factor": 0.15}),
        ("shear", 2, 28, {"shear": 0.4}),
        ("translate", 3, 28, {"shift": 3.0}),
        ("translate", 3, 8, {"shift": 3.0 * 8 / 28}),
        ("defocus_blur", 5, 8, {"radius": 10 * 8 / 28, "alias_blur": 0.5 * 8 / 28}),
        ("glass_blur", 5, 8, {"sigma": 1.5 * 8 / 28, "max_delta": 1, "iterations": 2,
                              "swap_probability": 0.5}),
        ("fog", 1, 8, {"amount": 1.5, "decay": 2, "mapsize": 64}),  # 256 * 8 / 28 = 73 -> 64
        ("dotted_line", 1, 8, {"lines": 1, "width": 2.3 * 8 / 28, "dash": 1}),
    ],
)  # fmt: skip
def test_parameters_from_the_sources(name, severity, size, expected):
    got = corruption_parameters(name, severity, (size, size))
    assert set(got) >= set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


def test_elastic_parameters_are_fractions_of_the_side():
    cifar = corruption_parameters("elastic_transform", 2, (32, 32))
    assert (cifar["alpha"], cifar["sigma"], cifar["affine_shift"]) == pytest.approx(
        (32 * 0.05, 32 * 0.2, 32 * 0.07)
    )
    assert cifar["affine_border"] == "mirror" and cifar["displacement_border"] == "reflect"
    mnist = corruption_parameters("elastic_transform", 1, (28, 28))
    assert (mnist["alpha"], mnist["sigma"], mnist["affine_shift"]) == pytest.approx(
        (56.0, 19.6, 2.8)
    )
    assert corruption_parameters("shear", 1, (32, 32), preset="cifar10-c")["shear"] == 0.2


@pytest.mark.parametrize("name", corruption_names())
def test_shape_dtype_range_and_determinism(name):
    for size in (8, 28, 32):
        for channels in (1, 3):
            g = torch.Generator().manual_seed(size + channels)
            x = torch.rand(3, channels, size, size, generator=g)
            for severity in SEVERITIES:
                a = corrupt(x, name, severity, generator=torch.Generator().manual_seed(7))
                assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
                assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
                assert torch.isfinite(a).all()
                b = corrupt(x, name, severity, generator=torch.Generator().manual_seed(7))
                assert torch.equal(a, b), (name, size, channels, severity)
                assert not torch.equal(a, x) or (name == "defocus_blur" and size == 8)
            if name not in RANDOM_FREE:  # another seed, other draws (8 images: 2^-8 for signs)
                x8 = x.repeat(3, 1, 1, 1)[:8]
                c = corrupt(x8, name, 3, generator=torch.Generator().manual_seed(8))
                d = corrupt(x8, name, 3, generator=torch.Generator().manual_seed(7))
                assert not torch.equal(c, d)


def test_other_dtypes_and_sizes():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 20, 45, generator=g)
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        for name in ("elastic_transform", "jpeg_compression", "fog", "zigzag"):
            y = corrupt(x.to(dtype), name, 2, generator=torch.Generator().manual_seed(1))
            assert y.dtype == dtype and y.shape == x.shape
            assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert corrupt(x[:0], "snow", 1).shape == (0, 3, 20, 45)


# Where the sources' own constants do not move the image further as severity grows
# (measured on the inputs of test_distance_grows_with_severity; see docs/corruptions.md).
NOT_MONOTONE = {
    # both tables trade a large smooth affine warp (levels 1-2) for finer jitter
    ("elastic_transform", 28), ("elastic_transform", 32),
    # CIFAR-10-C glass levels 1-3 differ only in the blur sigma, which smooths the shuffle
    ("glass_blur", 32),
    # box-resampling aliasing: 28 -> 16 -> 28 moves pixels more than 28 -> 14 -> 28
    ("pixelate", 28),
}  # fmt: skip


def _distances(x: torch.Tensor, name: str) -> tuple[list[float], list[float]]:
    import kornia

    l2, dssim = [], []
    for severity in SEVERITIES:
        y = corrupt(x, name, severity, generator=torch.Generator().manual_seed(1))
        l2.append(float((y - x).flatten(1).norm(dim=1).mean()))
        dssim.append(float(1 - kornia.metrics.ssim(y, x, 7).mean()))
    return l2, dssim


def _grows(values: list[float], slack: float = 0.01) -> bool:
    steps = zip(values[:-1], values[1:], strict=True)
    return all(b >= a * (1 - slack) for a, b in steps) and values[-1] > values[0]


@pytest.mark.parametrize("name", corruption_names())
def test_distance_grows_with_severity(name, digits28):
    for size, x in ((28, digits28), (32, smooth_colour(32))):
        l2, dssim = _distances(x, name)
        if (name, size) in NOT_MONOTONE:
            assert min(l2) > 0  # they still corrupt
            assert not (_grows(l2) or _grows(dssim)), "now monotone: update NOT_MONOTONE"
        else:
            assert _grows(l2) or _grows(dssim), (name, size, l2, dssim)


def test_errors_name_the_valid_choices():
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="unknown corruption 'blur'; expected one of: gaussian"):
        corrupt(x, "blur", 1)
    for bad in (0, 6):
        with pytest.raises(ValueError, match="one of 1, 2, 3, 4, 5"):
            corrupt(x, "fog", bad)
    for bad in (2.0, True, "3"):
        with pytest.raises(TypeError, match="1, 2, 3, 4, 5"):
            corrupt(x, "fog", bad)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) with C = 1"):
        corrupt(torch.rand(2, 2, 28, 28), "fog", 1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        corrupt(torch.rand(28, 28), "fog", 1)
    with pytest.raises(ValueError, match="at least 8 x 8"):
        corrupt(torch.rand(1, 1, 7, 28), "fog", 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corrupt(x * 2, "fog", 1)
    with pytest.raises(TypeError, match="floating"):
        corrupt((x * 255).to(torch.uint8), "fog", 1)
    with pytest.raises(ValueError, match="unknown preset 'imagenet-c'; expected one of"):
        corrupt(x, "fog", 1, preset="imagenet-c")
    with pytest.raises(ValueError, match="unknown corruption group"):
        corruption_names("cifar")
    with pytest.raises(TypeError, match="generator"):
        corrupt(x, "fog", 1, generator=0)


@pytest.mark.parametrize("name", corruption_names())
def test_meta_device_keeps_shape_device_and_dtype(name):
    x = torch.empty(2, 3, 28, 28, device="meta")
    for generator in (None, torch.Generator().manual_seed(0)):  # CPU generator: draws moved
        y = corrupt(x, name, 2, generator=generator)
        assert y.device.type == "meta" and y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_generator_draws():
    x = torch.rand(4, 3, 32, 32)
    for name in corruption_names():
        y = corrupt(x.cuda(), name, 3, generator=torch.Generator().manual_seed(0))
        assert y.device.type == "cuda"
        ref = corrupt(x, name, 3, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(y.cpu(), ref, atol=1e-4) or name in {"glass_blur", "jpeg_compression"}
