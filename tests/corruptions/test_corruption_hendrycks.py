"""Tests for snnl.corruptions.hendrycks (the 15 of CIFAR-10-C) against independent references:
scipy.ndimage, PIL, colorsys and numpy loops written from hendrycks/robustness
make_cifar_c.py and google-research/mnist-c corruptions.py, fed the recorded draws.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from PIL import Image

from corruption_helpers import motion_blur_loop, recorded, smooth_colour
from snnl.corruptions import (
    SEVERITIES,
    corrupt,
    corruption_parameters,
    hendrycks,
)
from snnl.corruptions.imageops import RandomSource

# tiny problems: one torch thread (see tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pil_pixelate(u8: np.ndarray, small: tuple[int, int]) -> np.ndarray:
    """The published pixelate on one 8-bit image, (H, W) or (H, W, 3): PIL BOX resize to
    ``small`` (width, height) and back to the image's size."""
    h, w = u8.shape[:2]
    return np.asarray(Image.fromarray(u8).resize(small, Image.BOX).resize((w, h), Image.BOX))


def test_pixelate_matches_pil_box_resampling():
    """The sources resize an 8-bit PIL image twice (each pass rounds to 8 bits): the same
    8-bit output as PIL, grey and colour, square and not, float32 and float64."""
    rng = np.random.default_rng(2)
    cases = [((32, 32), 1), ((32, 32), 5), ((28, 28), 1), ((28, 28), 4), ((8, 8), 2),
             ((30, 30), 3), ((20, 45), 3)]  # fmt: skip
    for (h, w), severity in cases:
        f = corruption_parameters("pixelate", severity, (h, w))["factor"]
        small = (max(1, int(w * f)), max(1, int(h * f)))
        for c in (1, 3):
            u8 = rng.integers(0, 256, (3, c, h, w), dtype=np.uint8)
            u8[0] = np.linspace(0, 255, h * w).reshape(h, w).astype(np.uint8)  # a smooth one
            ref = np.stack(
                [_pil_pixelate(u8[n, 0] if c == 1 else u8[n].transpose(1, 2, 0), small)
                 .reshape(h, w, c).transpose(2, 0, 1) for n in range(3)]
            )  # fmt: skip
            for dtype in (torch.float64, torch.float32):
                ours = corrupt(torch.from_numpy(u8 / 255.0).to(dtype), "pixelate", severity)
                expected = torch.from_numpy(ref / 255.0).to(dtype)  # level / 255 in dtype
                assert ours.dtype == dtype and torch.equal(ours, expected), (h, w, c, dtype)
    # values between the 8-bit levels are first rounded to the nearest level
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    u8 = np.floor(x.numpy() * 255 + 0.5).astype(np.uint8)
    ours = corrupt(x, "pixelate", 4).numpy()
    for n in range(2):
        ref = _pil_pixelate(u8[n].transpose(1, 2, 0), (24, 24)).transpose(2, 0, 1)
        np.testing.assert_array_equal(ours[n], ref / 255.0)


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


def _blurred_8bit(x: torch.Tensor, sigma: float) -> np.ndarray:
    """The sources' first step: Gaussian blur, then np.uint8 (truncation), as (N, C, H, W)."""
    img = ndi.gaussian_filter(x.double().numpy(), (0, 0, sigma, sigma), mode="nearest")
    return np.floor(np.clip(img, 0, 1) * 255) / 255


def _published_shuffle(img, d, iterations, offsets, take) -> np.ndarray:
    """The sources' local shuffle, each image held as they hold it, (H, W, 3) for colour
    and (H, W) for grey, and their statement ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``
    left to NumPy: for colour it assigns through views, so pixel (h', w') is copied into
    (h, w) and keeps its own value; for grey the values are scalars and swap."""
    out = img.copy()
    n, c, h, w = out.shape
    k = 0
    for _ in range(iterations):
        for r in range(h - d, d, -1):
            for q in range(w - d, d, -1):
                for i in range(n):
                    if take[k, i]:
                        x = out[i].transpose(1, 2, 0) if c == 3 else out[i, 0]
                        rr, qq = r + offsets[k, 1, i], q + offsets[k, 0, i]
                        x[r, q], x[rr, qq] = x[rr, qq], x[r, q]
                k += 1
    return out


def _swapping_shuffle(img, d, iterations, offsets, take) -> np.ndarray:
    """The same loop with every pair exchanged (colour pixels too)."""
    out = img.copy()
    n, c, h, w = out.shape
    k = 0
    for _ in range(iterations):
        for r in range(h - d, d, -1):
            for q in range(w - d, d, -1):
                for i in range(n):
                    if take[k, i]:
                        rr, qq = r + offsets[k, 1, i], q + offsets[k, 0, i]
                        a = out[i, :, r, q].copy()
                        out[i, :, r, q] = out[i, :, rr, qq]
                        out[i, :, rr, qq] = a
                k += 1
    return out


def test_glass_blur_follows_the_published_loop(digits28):
    """Default ("published"): the shuffle of make_cifar_c.py / mnist-c as NumPy runs it.
    Blurred along H and W (the published blur of grey images, along H only, is tested in
    test_corruption_mnist_c.py)."""
    for x in (digits28[:2], smooth_colour(2)):
        for severity in (1, 4):
            out, p, draws = recorded("glass_blur", severity, x, blur_axes="both")
            assert p["swap"] == "published"
            offsets, take = draws[0], draws[1] < p["swap_probability"]
            img = _published_shuffle(
                _blurred_8bit(x, p["sigma"]), p["max_delta"], p["iterations"], offsets, take
            )
            ref = ndi.gaussian_filter(img, (0, 0, p["sigma"], p["sigma"]), mode="nearest")
            np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-12)


def test_glass_blur_matches_sequential_swaps(digits28):
    """``swap="swap"``: every pair exchanged, in the sources' order."""
    for x in (digits28[:2], smooth_colour(2)):
        for severity in (1, 4):
            out, p, draws = recorded("glass_blur", severity, x, swap="swap", blur_axes="both")
            offsets, take = draws[0], draws[1] < p["swap_probability"]
            d = p["max_delta"]
            img = _swapping_shuffle(_blurred_8bit(x, p["sigma"]), d, p["iterations"], offsets, take)
            ref = ndi.gaussian_filter(img, (0, 0, p["sigma"], p["sigma"]), mode="nearest")
            np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-12)
            assert offsets.min() >= -d and offsets.max() <= d - 1  # numpy randint's range


class _OneMove(RandomSource):
    """Draws for an 8 x 8 glass blur with max_delta 1 (positions (r, q), r and q from 7
    down to 2: 36 of them): every position taken, every offset 0 except (dx, dy) = (-1, 0)
    at position 14, pixel (5, 5), whose partner is then (5, 4)."""

    def integers(self, low, high, shape):
        t = torch.zeros(shape, dtype=torch.long)
        t[14, 0] = -1
        return t

    def uniform(self, shape, low=0.0, high=1.0):
        return torch.zeros(shape, dtype=self.dtype)


def test_glass_blur_copies_colour_pixels_by_hand():
    """A white pixel at (5, 5) "swapped" with black (5, 4): the published loop copies the
    black pixel over it in colour (the white one is gone) and swaps it in grey; the true
    swap moves it to (5, 4). sigma 0.05: a 1-tap filter, no blur."""
    p = {"sigma": 0.05, "max_delta": 1, "iterations": 1, "swap_probability": 1.0,
         "blur_axes": "published"}  # fmt: skip
    moved = torch.zeros(8, 8, dtype=torch.float64)
    moved[5, 4] = 1.0
    for c in (1, 3):
        x = torch.zeros(1, c, 8, 8, dtype=torch.float64)
        x[0, :, 5, 5] = 1.0
        for mode in ("published", "swap"):
            rnd = _OneMove(None, torch.device("cpu"), torch.float64)
            out = hendrycks.glass_blur(x, p | {"swap": mode}, rnd)[0]
            expected = torch.zeros(8, 8) if (c, mode) == (3, "published") else moved
            assert torch.equal(out, expected.expand(c, 8, 8)), (c, mode)


def test_glass_swap_option():
    colour, grey = smooth_colour(3), smooth_colour(3, 28)[:, :1]
    for x in (colour, grey):
        runs = {
            mode: corrupt(x, "glass_blur", 3, generator=torch.Generator().manual_seed(4),
                          glass_swap=mode)
            for mode in (None, "published", "swap")
        }  # fmt: skip
        assert torch.equal(runs[None], runs["published"])
        assert torch.equal(runs[None], runs["swap"]) == (x.shape[1] == 1)  # grey: a swap
    with pytest.raises(ValueError, match="unknown glass_swap 'copy'; expected one of: publ"):
        corrupt(colour, "glass_blur", 3, glass_swap="copy")


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
                layer = motion_blur_loop(layer[None], p["blur_radius"], p["blur_sigma"], angles[n])
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
        bank = hendrycks.frost_bank(h, w, c).numpy()
        for i in range(n):
            crop = bank[
                draws[0][i], :, draws[1][i] : draws[1][i] + h, draws[2][i] : draws[2][i] + w
            ]
            ref = p["image_weight"] * x[i].double().numpy() + p["frost_weight"] * crop
            np.testing.assert_allclose(out[i], np.clip(ref, 0, 1), atol=1e-12)


def test_frost_textures_are_fixed_and_frost_like():
    a = hendrycks.frost_bank(28, 28, 1)
    hendrycks.frost_grey_bank.cache_clear()
    b = hendrycks.frost_bank(28, 28, 1)
    assert torch.equal(a, b) and a.shape == (5, 1, 84, 84)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert 0.2 < float(a.mean()) < 0.6 and float(a.std()) > 0.1  # bright crystals over haze
    colour = hendrycks.frost_bank(28, 28, 3)
    assert torch.allclose(colour[:, 2], a[:, 0]) and torch.allclose(colour[:, 0], 0.86 * a[:, 0])
