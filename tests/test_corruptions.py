"""Tests for snnl.corruptions against independent references.

References: scipy.ndimage (Gaussian filters, zoom, map_coordinates, labels), PIL
(BOX resampling, JPEG), colorsys (HSV), and plain numpy loops written from the
sources' algorithms (hendrycks/robustness make_cifar_c.py, google-research/mnist-c
corruptions.py, ImageMagick MotionBlurImage, scikit-image canny), fed the same random
draws as the torch code (recorded).
"""

from __future__ import annotations

import colorsys
import io
import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F
from PIL import Image

from snnl import corruptions as C
from snnl.corruptions import (
    SEVERITIES,
    corrupt,
    corruption_accuracy,
    corruption_info,
    corruption_names,
    corruption_parameters,
)
from snnl.data import load_dataset

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


# tiny problems: one torch thread (see conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits28() -> torch.Tensor:
    return load_dataset("mnist5k").x_test[:48]


def smooth_colour(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random colour images with structure (bicubic upsampling of 4 x 4 noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 4, 4, generator=g)
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


class Recorder(C._Random):
    """The module's random source, recording every draw in order (float64, CPU)."""

    def __init__(self, seed: int = 0):
        super().__init__(torch.Generator().manual_seed(seed), torch.device("cpu"), torch.float64)
        self.draws: list[np.ndarray] = []

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        self.draws.append(t.detach().cpu().numpy().copy())
        return t

    def uniform(self, shape, low=0.0, high=1.0):
        return self._keep(super().uniform(shape, low, high))

    def normal(self, shape, mean=0.0, std=1.0):
        return self._keep(super().normal(shape, mean, std))

    def integers(self, low, high, shape):
        return self._keep(super().integers(low, high, shape))

    def poisson(self, rate):
        return self._keep(super().poisson(rate))


def recorded(name: str, severity: int, x: torch.Tensor, seed: int = 0):
    """corrupt() run with a Recorder: (output as float64 numpy, params, draws)."""
    params = corruption_parameters(name, severity, tuple(x.shape[-2:]))
    rec = Recorder(seed)
    out = C._SPECS[name].fn(x.double(), params, rec).clamp(0, 1)
    return out.numpy(), params, rec.draws


# ----------------------------------------------------------------------------- names, tables


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


# ----------------------------------------------------------------------------- properties


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


# ----------------------------------------------------------------------------- errors, devices


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


# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize("mode", ["nearest", "reflect", "mirror", "constant"])
def test_gaussian_blur_matches_scipy(mode):
    rng = np.random.default_rng(0)
    img = rng.random((2, 1, 9, 13))
    for sigma, truncate in ((0.7, 4.0), (3.0, 4.0), (6.4, 3.0), (19.6, 3.0)):
        ours = C._gaussian_blur(torch.from_numpy(img), sigma, truncate=truncate, mode=mode)
        ref = ndi.gaussian_filter(img, (0, 0, sigma, sigma), mode=mode, truncate=truncate)
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-12)


@pytest.mark.parametrize(
    "border, scipy_mode",
    [("reflect", "reflect"), ("mirror", "mirror"), ("constant", "constant"),
     ("zeros", "grid-constant")],
)  # fmt: skip
def test_bilinear_sampling_matches_map_coordinates(border, scipy_mode):
    rng = np.random.default_rng(1)
    img = rng.random((1, 1, 10, 12))
    rows = rng.uniform(-4, 14, (1, 10, 12))
    cols = rng.uniform(-4, 16, (1, 10, 12))
    ours = C._sample(torch.from_numpy(img), torch.from_numpy(rows), torch.from_numpy(cols), border)
    ref = ndi.map_coordinates(img[0, 0], [rows[0], cols[0]], order=1, mode=scipy_mode, cval=0.0)
    np.testing.assert_allclose(ours.numpy()[0, 0], ref, atol=1e-12)


def test_pixelate_matches_pil_box_resampling():
    rng = np.random.default_rng(2)
    for size, severity in ((32, 1), (32, 5), (28, 1), (28, 4), (8, 2), (30, 3)):
        img = rng.random((2, 3, size, size)).astype(np.float32)
        ours = corrupt(torch.from_numpy(img).double(), "pixelate", severity).numpy()
        f = corruption_parameters("pixelate", severity, (size, size))["factor"]
        small = int(size * f)
        for n in range(2):
            for c in range(3):
                pil = Image.fromarray(img[n, c], mode="F")
                ref = np.asarray(
                    pil.resize((small, small), Image.BOX).resize((size, size), Image.BOX)
                )
                np.testing.assert_allclose(ours[n, c], np.clip(ref, 0, 1), atol=1e-6)


def _pil_jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf)).astype(np.float64)


@pytest.mark.parametrize("size", [28, 32, 8, 30, 17])
def test_jpeg_is_bit_exact_with_pil(size, digits28):
    """libjpeg's integer pipeline: the same 8-bit output as PIL (libjpeg-turbo)."""
    grey = F.interpolate(digits28[:12], size=(size, size), mode="bilinear")
    colour = smooth_colour(12, size, seed=3)
    colour[6:] = torch.rand(6, 3, size, size, generator=torch.Generator().manual_seed(4))
    for x in (grey, colour):
        u8 = np.floor(x.numpy() * 255 + 0.5).astype(np.uint8)
        for quality in (80, 58, 40, 25, 10, 7, 2):
            ours = C._jpeg(torch.from_numpy(u8 / 255.0), quality).numpy() * 255
            if x.shape[1] == 1:
                ref = np.stack([_pil_jpeg(u8[i, 0], quality) for i in range(12)])[:, None]
            else:
                ref = np.stack(
                    [_pil_jpeg(u8[i].transpose(1, 2, 0), quality) for i in range(12)]
                ).transpose(0, 3, 1, 2)
            np.testing.assert_allclose(ours, ref, atol=1e-9, err_msg=f"{size} {quality}")


def _motion_blur_loop(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick MotionBlurImage written as plain loops (one image, (C, H, W))."""
    width = int(2 * math.ceil(radius) + 1)
    k = np.array([math.exp(-(j * j) / (2 * sigma * sigma)) for j in range(width)])
    k /= k.sum()
    a = math.radians(angle)
    c, h, w = img.shape
    out = np.zeros_like(img)
    for j in range(width):
        ox = math.ceil(j * math.cos(a) - 0.5)
        oy = math.ceil(j * math.sin(a) - 0.5)
        for y in range(h):
            for x in range(w):
                yy, xx = min(max(y + oy, 0), h - 1), min(max(x + ox, 0), w - 1)
                out[:, y, x] += k[j] * img[:, yy, xx]
    return out


def test_motion_blur_matches_imagemagick_loop():
    rng = np.random.default_rng(3)
    img = rng.random((3, 2, 12, 12))
    angles = np.array([-45.0, 13.0, 44.9])
    ours = C._motion_blur(torch.from_numpy(img), 6.0, 2.0, torch.from_numpy(angles)).numpy()
    for n in range(3):
        np.testing.assert_allclose(
            ours[n], _motion_blur_loop(img[n], 6.0, 2.0, angles[n]), atol=1e-12
        )
    x = torch.from_numpy(img[:, :1])
    out, p, draws = recorded("motion_blur", 2, x.float())
    for n in range(3):
        ref = _motion_blur_loop(img[n, :1], p["radius"], p["sigma"], float(draws[0][n]))
        np.testing.assert_allclose(out[n], np.clip(ref, 0, 1), atol=1e-5)


def _clipped_zoom_ref(img: np.ndarray, z: float) -> np.ndarray:
    """The sources' clipped_zoom on one (H, W) image."""
    h = img.shape[0]
    ch = int(np.ceil(h / z))
    top = (h - ch) // 2
    out = ndi.zoom(img[top : top + ch, top : top + ch], (z, z), order=1)
    trim = (out.shape[0] - h) // 2
    return out[trim : trim + h, trim : trim + h]


def test_zoom_blur_matches_scipy_zoom(digits28):
    x = digits28[:3].double()
    for size, x_ in ((28, x), (32, smooth_colour(2).double())):
        for severity in (1, 5):
            ours = corrupt(x_, "zoom_blur", severity).numpy()
            p = corruption_parameters("zoom_blur", severity, (size, size))
            factors = np.arange(1, p["zoom_stop"], p["zoom_step"])
            for n in range(x_.shape[0]):
                for c in range(x_.shape[1]):
                    img = x_[n, c].numpy()
                    ref = (img + sum(_clipped_zoom_ref(img, z) for z in factors)) / (
                        len(factors) + 1
                    )
                    np.testing.assert_allclose(ours[n, c], np.clip(ref, 0, 1), atol=1e-12)


def _disk_ref(radius: float, alias_blur: float) -> np.ndarray:
    """The sources' disk(): numpy grid, then OpenCV's GaussianBlur (REFLECT_101 = scipy mirror)."""
    L = np.arange(-8, 9) if radius <= 8 else np.arange(-math.ceil(radius), math.ceil(radius) + 1)
    ksize = 3 if radius <= 8 else 5
    X, Y = np.meshgrid(L, L)
    disk = ((X**2 + Y**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    t = np.arange(ksize) - ksize // 2
    g = np.exp(-(t**2) / (2 * alias_blur**2))
    g /= g.sum()
    disk = ndi.correlate1d(disk, g, axis=0, mode="mirror")
    return ndi.correlate1d(disk, g, axis=1, mode="mirror")


def test_defocus_blur_matches_disk_filter(digits28):
    for x in (digits28[:2].double(), smooth_colour(2).double()):
        size = x.shape[-1]
        for severity in SEVERITIES:
            p = corruption_parameters("defocus_blur", severity, (size, size))
            kernel = _disk_ref(p["radius"], p["alias_blur"])
            ours = corrupt(x, "defocus_blur", severity).numpy()
            for n in range(2):
                for c in range(x.shape[1]):
                    ref = ndi.correlate(x[n, c].numpy(), kernel, mode="mirror")
                    np.testing.assert_allclose(ours[n, c], np.clip(ref, 0, 1), atol=1e-12)


def test_glass_blur_matches_sequential_swaps(digits28):
    for x in (digits28[:2], smooth_colour(2)):
        for severity in (1, 4):
            out, p, draws = recorded("glass_blur", severity, x)
            offsets, take = draws[0], draws[1] < p["swap_probability"]
            d = p["max_delta"]
            img = ndi.gaussian_filter(
                x.double().numpy(), (0, 0, p["sigma"], p["sigma"]), mode="nearest"
            )
            img = np.floor(np.clip(img, 0, 1) * 255) / 255
            n, c, h, w = img.shape
            k = 0
            for _ in range(p["iterations"]):
                for r in range(h - d, d, -1):
                    for q in range(w - d, d, -1):
                        for i in range(n):
                            if take[k, i]:
                                rr, qq = r + offsets[k, 1, i], q + offsets[k, 0, i]
                                a = img[i, :, r, q].copy()
                                img[i, :, r, q] = img[i, :, rr, qq]
                                img[i, :, rr, qq] = a
                        k += 1
            ref = ndi.gaussian_filter(img, (0, 0, p["sigma"], p["sigma"]), mode="nearest")
            np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-12)
            assert offsets.min() >= -d and offsets.max() <= d - 1  # numpy randint's range


def _plasma_ref(mapsize: int, decay: float, draws: list[np.ndarray], n: int) -> np.ndarray:
    """The sources' plasma_fractal, one map, with the recorded uniform draws."""
    maparray = np.zeros((mapsize, mapsize))
    stepsize, wibble = mapsize, 100.0
    it = iter(draws)
    while stepsize >= 2:
        half = stepsize // 2
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = (
            squareaccum / 4 + wibble * next(it)[n]
        )
        drgrid = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=0) + ulgrid + np.roll(ulgrid, -1, axis=1)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = ltsum / 4 + wibble * next(it)[n]
        ttsum = drgrid + np.roll(drgrid, 1, axis=1) + ulgrid + np.roll(ulgrid, -1, axis=0)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = ttsum / 4 + wibble * next(it)[n]
        stepsize //= 2
        wibble /= decay
    maparray -= maparray.min()
    return maparray / maparray.max()


def test_fog_matches_plasma_fractal(digits28):
    for x in (digits28[:2], smooth_colour(2)):
        for severity in (1, 5):
            out, p, draws = recorded("fog", severity, x)
            h, w = x.shape[-2:]
            for n in range(2):
                plasma = _plasma_ref(p["mapsize"], p["decay"], draws, n)[:h, :w]
                img = x[n].double().numpy()
                peak = img.max()
                ref = (img + p["amount"] * plasma) * peak / (peak + p["amount"])
                np.testing.assert_allclose(out[n], np.clip(ref, 0, 1), atol=1e-9)


def test_snow_matches_reference(digits28):
    for x in (digits28[:2], smooth_colour(2)):
        for severity in (2, 5):
            out, p, draws = recorded("snow", severity, x)
            layer_draws, angles = draws[0], draws[1]
            for n in range(2):
                layer = _clipped_zoom_ref(layer_draws[n, 0], p["zoom"])
                layer[layer < p["threshold"]] = 0
                layer = np.floor(np.clip(layer, 0, 1) * 255) / 255
                layer = _motion_blur_loop(layer[None], p["blur_radius"], p["blur_sigma"], angles[n])
                layer = np.round(layer[0] * 255) / 255
                img = x[n].double().numpy()
                grey = img if img.shape[0] == 1 else np.tensordot([0.299, 0.587, 0.114], img, 1)
                img = p["blend"] * img + (1 - p["blend"]) * np.maximum(img, grey * 1.5 + 0.5)
                ref = np.clip(img + layer + np.rot90(layer, k=2), 0, 1)
                np.testing.assert_allclose(out[n], ref, atol=1e-9)


def test_elastic_matches_opencv_and_scipy_semantics(digits28):
    for x in (digits28[:2], smooth_colour(2)):
        for severity in (2, 5):
            out, p, draws = recorded("elastic_transform", severity, x)
            n, c, h, w = x.shape
            centre = np.array([h // 2, w // 2], dtype=np.float64)
            s = min(h, w) // 3
            pts1 = np.array([centre + s, [centre[0] + s, centre[1] - s], centre - s])
            mode_affine = {"mirror": "mirror", "zeros": "grid-constant"}[p["affine_border"]]
            mode_field = p["displacement_border"]
            for i in range(n):
                pts2 = pts1 + draws[0][i]
                # OpenCV getAffineTransform(pts1, pts2): M @ [p1, 1] = p2; warpAffine samples
                # the source at M^-1 (x, y)
                m = np.linalg.solve(np.c_[pts1, np.ones(3)], pts2).T
                m_inv = np.linalg.inv(np.r_[m, [[0, 0, 1]]])
                yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
                sx = m_inv[0, 0] * xx + m_inv[0, 1] * yy + m_inv[0, 2]
                sy = m_inv[1, 0] * xx + m_inv[1, 1] * yy + m_inv[1, 2]
                dx = ndi.gaussian_filter(draws[1][i, 0], p["sigma"], mode="reflect", truncate=3)
                dy = ndi.gaussian_filter(draws[1][i, 1], p["sigma"], mode="reflect", truncate=3)
                for ch in range(c):
                    img = x[i, ch].double().numpy()
                    warped = ndi.map_coordinates(img, [sy, sx], order=1, mode=mode_affine)
                    ref = ndi.map_coordinates(
                        warped,
                        [yy + p["alpha"] * dy, xx + p["alpha"] * dx],
                        order=1,
                        mode=mode_field,
                    )
                    np.testing.assert_allclose(out[i, ch], np.clip(ref, 0, 1), atol=1e-9)


def _skimage_matrix(rotation=0.0, shear=0.0, scale=1.0, translation=(0.0, 0.0)) -> np.ndarray:
    """scikit-image AffineTransform.params (<= 0.19)."""
    return np.array(
        [
            [scale * math.cos(rotation), -scale * math.sin(rotation + shear), translation[0]],
            [scale * math.sin(rotation), scale * math.cos(rotation + shear), translation[1]],
            [0, 0, 1],
        ]
    )


@pytest.mark.parametrize("name", ["shear", "rotate", "scale", "translate"])
def test_affine_corruptions_match_skimage_warp(name, digits28):
    for x in (digits28[:3], smooth_colour(3)):
        n, c, h, w = x.shape
        for severity in (1, 4):
            out, p, draws = recorded(name, severity, x)
            for i in range(n):
                if name == "translate":
                    signs = draws[0][i] * 2 - 1
                    m = _skimage_matrix(translation=tuple(p["shift"] * signs))
                else:
                    sign = (draws[0][i] * 2 - 1) if draws else 1
                    key, value = {
                        "shear": ("shear", p.get("shear")),
                        "rotate": ("rotation", p.get("angle")),
                        "scale": ("scale", p.get("factor")),
                    }[name]
                    value = value * (sign if name != "scale" else 1)
                    m0 = _skimage_matrix(**{key: value})
                    # MNIST-C: translation keeping the centre ((side - 1) / 2) fixed
                    a1, a2, b1, b2 = m0[0, 0], m0[0, 1], m0[1, 0], m0[1, 1]
                    t = (
                        (w - 1) / 2 * (1 - a1) - a2 * (h - 1) / 2,
                        (h - 1) / 2 * (1 - b2) - b1 * (w - 1) / 2,
                    )
                    m = _skimage_matrix(**{key: value}, translation=t)
                yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
                sc = m[0, 0] * xx + m[0, 1] * yy + m[0, 2]
                sr = m[1, 0] * xx + m[1, 1] * yy + m[1, 2]
                for ch in range(c):
                    ref = ndi.map_coordinates(
                        x[i, ch].double().numpy(), [sr, sc], order=1, mode="grid-constant"
                    )
                    np.testing.assert_allclose(out[i, ch], np.clip(ref, 0, 1), atol=1e-9)


def test_brightness_matches_colorsys():
    x = smooth_colour(2, 8)
    x[0, :, 0, 0] = 0.0  # black pixel: V = 0
    for severity in (1, 5):
        out = corrupt(x.double(), "brightness", severity).numpy()
        delta = corruption_parameters("brightness", severity, (8, 8))["delta"]
        for n in range(2):
            for r in range(8):
                for q in range(8):
                    hh, ss, vv = colorsys.rgb_to_hsv(*x[n, :, r, q].double().tolist())
                    ref = colorsys.hsv_to_rgb(hh, ss, min(vv + delta, 1.0))
                    np.testing.assert_allclose(out[n, :, r, q], ref, atol=1e-12)
    grey = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    np.testing.assert_allclose(
        corrupt(grey, "brightness", 3).numpy(), np.clip(grey.numpy() + 0.3, 0, 1), atol=1e-15
    )


def test_contrast_and_stripe_by_hand():
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    means = x.numpy().mean(axis=(2, 3), keepdims=True)
    ref = np.clip((x.numpy() - means) * 0.4 + means, 0, 1)
    np.testing.assert_allclose(corrupt(x, "contrast", 3).numpy(), ref, atol=1e-15)
    zeros = torch.zeros(1, 1, 28, 28)
    full = corrupt(zeros, "stripe", 5)[0, 0]  # MNIST-C: columns :7 and 21: inverted
    assert torch.equal(full[:, :7], torch.ones(28, 7)) and torch.equal(
        full[:, 21:], torch.ones(28, 7)
    )
    assert torch.equal(full[:, 7:21], torch.zeros(28, 14))
    assert torch.allclose(corrupt(zeros, "stripe", 1)[0, 0, :, 0], torch.full((28,), 0.2))


def test_noise_statistics():
    x = torch.full((40, 1, 28, 28), 0.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    y = corrupt(x, "gaussian_noise", 2, generator=g)  # sigma 0.12: clipping negligible
    assert float((y - x).std()) == pytest.approx(0.12, rel=0.02)
    y = corrupt(x, "impulse_noise", 5, generator=g)  # amount 0.27
    changed = (y != x).double()
    assert float(changed.mean()) == pytest.approx(0.27, rel=0.03)
    assert float((y == 1).double().sum() / changed.sum()) == pytest.approx(0.5, abs=0.02)
    y = corrupt(x, "shot_noise", 1, generator=g)  # Poisson(0.5 * 60) / 60
    assert float(y.mean()) == pytest.approx(0.5, abs=0.005)
    assert float(y.var()) == pytest.approx(0.5 / 60, rel=0.05)


def _line_ref(c0, r0, c1, r1, size=28, width=2.3):
    """MNIST-C line_from_points."""
    if c1 == c0:
        return np.zeros((size, size))
    cc, rr = np.meshgrid(
        np.linspace(0, size - 1, size), np.linspace(0, size - 1, size), sparse=True
    )
    m = (r1 - r0) / (c1 - c0)
    dist = np.clip(np.abs(rr - (m * (cc - c0) + r0)), 0, width - 1e-10)
    out = np.clip(np.log(1 - dist / width) + 1, 0, 1)
    out[:, : int(np.floor(c0))] = 0
    out[:, int(np.ceil(c1)) :] = 0
    return out


def test_dotted_line_and_zigzag_match_mnist_c():
    x = torch.zeros(3, 1, 28, 28, dtype=torch.float64)
    out, p, draws = recorded("dotted_line", 1, x)
    for n in range(3):
        line = _line_ref(0, draws[0][0, n], 27, draws[0][1, n])
        idx = np.arange(0, 30, 2)
        off = True
        for i in range(1, len(idx)):
            if off:
                line[:, idx[i - 1] : idx[i]] = 0
            off = not off
        np.testing.assert_allclose(out[n, 0], np.clip(line, 0, 1), atol=1e-9)
    out, p, draws = recorded("zigzag", 1, x)
    for n in range(3):
        a = b = 2.0
        c0, c1 = 2, 25
        r0 = draws[0][n]
        r1 = r0 + draws[1][n]
        theta = np.arctan((r1 - r0) / (c1 - c0))
        d = (c1 - c0) / np.cos(theta)
        endpoints = [(0, 0)]
        for i in range(int((d - a) // (2 * a)) + 1):
            r_i = (-1) ** i * b
            endpoints.append(((2 * i + 1) * a, r_i))
        max_c = (2 * a) * (d // (2 * a))
        if d != max_c:
            endpoints.append((d, r_i / (2 * (d - max_c))))
        pts = np.array(endpoints).T
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        cs, rs = rot @ pts
        cs, rs = cs + c0, rs + r0
        img = np.zeros((28, 28))
        for i in range(1, len(cs)):
            img = np.clip(img + _line_ref(cs[i - 1], rs[i - 1], cs[i], rs[i]), 0, 1)
        np.testing.assert_allclose(out[n, 0], img, atol=1e-9)


def _canny_ref(img: np.ndarray, sigma=1.0, low=0.1, high=0.2) -> np.ndarray:
    """scikit-image 0.15 feature.canny, written out with scipy (octant form)."""
    mask = np.ones(img.shape, bool)
    bleed = ndi.gaussian_filter(mask.astype(float), sigma, mode="constant")
    smoothed = ndi.gaussian_filter(img, sigma, mode="constant") / (bleed + np.finfo(float).eps)
    jsobel = ndi.sobel(smoothed, axis=1)
    isobel = ndi.sobel(smoothed, axis=0)
    ai, aj = np.abs(isobel), np.abs(jsobel)
    magnitude = np.hypot(isobel, jsobel)
    eroded = ndi.binary_erosion(mask, np.ones((3, 3), bool), border_value=0) & (magnitude > 0)
    local_maxima = np.zeros(img.shape, bool)
    same = ((isobel >= 0) & (jsobel >= 0)) | ((isobel <= 0) & (jsobel <= 0))
    opposite = ((isobel <= 0) & (jsobel >= 0)) | ((isobel >= 0) & (jsobel <= 0))
    octants = [  # (points, plus neighbours (axis, diagonal), minus neighbours, weight)
        (same & (ai >= aj), ((1, 0), (1, 1)), ((-1, 0), (-1, -1)), lambda: aj / ai),
        (same & (ai <= aj), ((0, 1), (1, 1)), ((0, -1), (-1, -1)), lambda: ai / aj),
        (opposite & (ai <= aj), ((0, 1), (-1, 1)), ((0, -1), (1, -1)), lambda: ai / aj),
        (opposite & (ai >= aj), ((-1, 0), (-1, 1)), ((1, 0), (1, -1)), lambda: aj / ai),
    ]
    with np.errstate(divide="ignore", invalid="ignore"):
        for pts, plus, minus, weight in octants:
            w = weight()
            for r, c in np.argwhere(pts & eroded):
                ok = True
                for d1, d2 in (plus, minus):
                    v1 = magnitude[r + d1[0], c + d1[1]]
                    v2 = magnitude[r + d2[0], c + d2[1]]
                    ok &= (1 - w[r, c]) * v1 + w[r, c] * v2 <= magnitude[r, c]
                local_maxima[r, c] = ok
    low_mask = local_maxima & (magnitude >= low)
    high_mask = low_mask & (magnitude >= high)
    labels, count = ndi.label(low_mask, np.ones((3, 3), bool))
    good = np.zeros(count + 1, bool)
    good[np.unique(labels[high_mask])] = True
    good[0] = False
    return good[labels]


def test_canny_matches_skimage_algorithm(digits28):
    square = np.zeros((20, 20))
    square[6:14, 5:15] = 1.0
    images = [
        square,
        *digits28[:4, 0].double().numpy(),
        smooth_colour(1, 28)[0, 1].double().numpy(),
    ]
    for img in images:
        ours = C._canny(torch.from_numpy(img)[None, None], 1.0, 0.1, 0.2)[0, 0].numpy()
        ref = _canny_ref(img)
        assert (ours == ref).all(), np.argwhere(ours != ref)
    assert _canny_ref(square).sum() > 20  # a closed outline was found


def test_spatter_and_frost_follow_their_formulas(digits28):
    for x in (digits28[:2], smooth_colour(2)):
        out, p, draws = recorded("spatter", 4, x)
        liquid = ndi.gaussian_filter(draws[0], (0, 0, p["sigma"], p["sigma"]), mode="nearest")
        mask = ndi.gaussian_filter(
            (liquid > p["threshold"]).astype(float),
            (0, 0, p["mask_sigma"], p["mask_sigma"]),
            mode="nearest",
        )
        mask[mask < 0.8] = 0
        colour = (
            np.array([63.0] if x.shape[1] == 1 else [63.0, 42.0, 20.0]).reshape(1, -1, 1, 1) / 255
        )
        ref = x.double().numpy() * (1 - mask) + colour * mask
        np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-12)
        assert 0 < mask.mean() < 0.5
        out, p, draws = recorded("frost", 3, x)
        n, c, h, w = x.shape
        bank = C._frost_bank(h, w, c).numpy()
        for i in range(n):
            crop = bank[
                draws[0][i], :, draws[1][i] : draws[1][i] + h, draws[2][i] : draws[2][i] + w
            ]
            ref = p["image_weight"] * x[i].double().numpy() + p["frost_weight"] * crop
            np.testing.assert_allclose(out[i], np.clip(ref, 0, 1), atol=1e-12)


def test_frost_textures_are_fixed_and_frost_like():
    a = C._frost_bank(28, 28, 1)
    C._frost_grey_bank.cache_clear()
    b = C._frost_bank(28, 28, 1)
    assert torch.equal(a, b) and a.shape == (5, 1, 84, 84)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert 0.2 < float(a.mean()) < 0.6 and float(a.std()) > 0.1  # bright crystals over haze
    colour = C._frost_bank(28, 28, 3)
    assert torch.allclose(colour[:, 2], a[:, 0]) and torch.allclose(colour[:, 0], 0.86 * a[:, 0])


# ----------------------------------------------------------------------------- accuracy


def test_corruption_accuracy_table_and_mean(digits28):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    x, y = digits28[:40], load_dataset("mnist5k").y_test[:40]
    names, severities = ["contrast", "gaussian_noise", "rotate"], (1, 3, 5)
    res = corruption_accuracy(
        model, x, y, names, severities, generator=torch.Generator().manual_seed(3)
    )
    assert list(res.table) == names and all(list(r) == list(severities) for r in res.table.values())
    cells = []
    for name in names:
        for s in severities:
            g = torch.Generator().manual_seed(res.seeds[name][s])
            with torch.no_grad():
                pred = model(corrupt(x, name, s, generator=g)).argmax(1)
            expected = sum(int(p == t) for p, t in zip(pred.tolist(), y.tolist(), strict=True))
            expected /= len(y)
            assert res.table[name][s] == pytest.approx(expected, abs=1e-15)
            cells.append(expected)
    assert res.mean == pytest.approx(sum(cells) / len(cells), abs=1e-15)
    assert res.per_corruption["rotate"] == pytest.approx(sum(res.table["rotate"].values()) / 3)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).double().mean())
    assert res.clean == pytest.approx(clean)
    # a cell does not depend on which other cells were asked for
    alone = corruption_accuracy(
        model, x, y, ["rotate"], (5,), generator=torch.Generator().manual_seed(3)
    )
    assert alone.table["rotate"][5] == res.table["rotate"][5]
    assert set(res.to_dict()["table"]["rotate"]) == {"1", "3", "5"}
    with pytest.raises(ValueError, match="unknown corruption"):
        corruption_accuracy(model, x, y, ["nope"])
    with pytest.raises(ValueError, match="one of 1, 2, 3, 4, 5"):
        corruption_accuracy(model, x, y, ["fog"], (0,))
