"""Tests for snnl.corruptions.mnist_c against scikit-image warps and numpy loops written
from google-research/mnist-c corruptions.py, fed the recorded draws.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from corruption_helpers import recorded, smooth_colour
from snnl.corruptions import corrupt, corruption_parameters
from snnl.corruptions.hendrycks import glass_blur
from snnl.corruptions.imageops import RandomSource

# tiny problems: one torch thread (see tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def _skimage_gaussian(a: np.ndarray, sigma: float, multichannel: bool) -> np.ndarray:
    """scikit-image 0.14-0.16 ``filters.gaussian(a, sigma, multichannel=...)`` on a float
    array: with multichannel the last axis is taken as channels and gets sigma 0 (whatever
    it holds), then scipy's filter with skimage's defaults (border "nearest", truncate 4)."""
    sigmas = [sigma] * (a.ndim - 1) + [0] if multichannel else [sigma] * a.ndim
    return ndi.gaussian_filter(a, sigmas, mode="nearest", truncate=4.0)


def _mnist_c_glass_blur(img, sigma, d, iterations, offsets, take, multichannel=True):
    """MNIST-C's glass_blur (corruptions.py) on one image held as it holds it: (H, W) grey
    or (H, W, 3) colour, values in [0, 1]; the coin flips ``take[k]`` and offsets
    ``offsets[k] = (dx, dy)`` of the k-th visited position are the recorded draws.
    ``multichannel=False``: the blur along both axes of a grey image."""
    x = np.uint8(_skimage_gaussian(img, sigma, multichannel) * 255)
    h, w = x.shape[:2]
    k = 0
    for _ in range(iterations):
        for r in range(h - d, d, -1):
            for q in range(w - d, d, -1):
                if take[k]:
                    dx, dy = offsets[k]
                    rr, qq = r + dy, q + dx
                    x[r, q], x[rr, qq] = x[rr, qq], x[r, q]  # the published "swap"
                k += 1
    return np.clip(_skimage_gaussian(x / 255.0, sigma, multichannel), 0, 1)


def test_glass_blur_follows_mnist_c(digits28):
    """The published statement on the recorded draws: grey digits blurred along H only
    (skimage takes their W as channels), colour images along H and W with colour pixels
    copied; blur_axes="both" blurs grey digits along H and W."""
    for x in (digits28[:3], smooth_colour(2, 28)):
        grey = x.shape[1] == 1
        for severity in (1, 2, 3, 4, 5):
            for axes in ("published", "both") if grey else ("published",):
                out, p, draws = recorded("glass_blur", severity, x, blur_axes=axes)
                assert p["swap"] == "published"
                offsets, take = draws[0], draws[1] < p["swap_probability"]
                for i in range(x.shape[0]):
                    img = x[i, 0].double().numpy() if grey else x[i].double().numpy()
                    ref = _mnist_c_glass_blur(
                        img if grey else img.transpose(1, 2, 0).copy(),
                        p["sigma"], p["max_delta"], p["iterations"],
                        offsets[:, :, i], take[:, i], multichannel=axes == "published",
                    )  # fmt: skip
                    ref = ref[None] if grey else ref.transpose(2, 0, 1)
                    np.testing.assert_allclose(out[i], ref, atol=1e-12, err_msg=str(severity))


class _NoMoves(RandomSource):
    """Draws for a glass blur that moves no pixel (every coin flip above 1/2)."""

    def uniform(self, shape, low=0.0, high=1.0):
        return torch.ones(shape, dtype=self.dtype)


def test_glass_blur_blurs_a_grey_pixel_vertically_by_hand():
    """One white pixel at (14, 14), MNIST-C level 1 (sigma 0.7: taps exp(-t^2 / 0.98),
    t = -3..3, sum 1.754861), no moves. The first blur, along H only, gives the column
    0.56985, 0.20540, 0.00962, 0.00006 (centre out), truncated to 8 bits 145, 52, 2, 0;
    the second blur keeps the sum, 253 / 255, and again only column 14 is lit. Blurring
    along both axes also lights its row neighbours."""
    p = corruption_parameters("glass_blur", 1, (28, 28))
    x = torch.zeros(1, 1, 28, 28, dtype=torch.float64)
    x[0, 0, 14, 14] = 1.0
    for axes in ("published", "both"):
        rnd = _NoMoves(None, torch.device("cpu"), torch.float64)
        out = glass_blur(x, p | {"blur_axes": axes}, rnd)[0, 0]
        if axes == "published":
            assert torch.count_nonzero(out[:, :14]) == torch.count_nonzero(out[:, 15:]) == 0
            assert float(out[:, 14].sum()) == pytest.approx(253 / 255, abs=1e-12)
            assert out[11:18, 14].tolist() == pytest.approx(out[11:18, 14].flip(0).tolist())
            assert float(out[13, 14]) > 0
        else:
            assert float(out[14, 13]) > 0 and float(out[14, 15]) > 0


def test_glass_blur_axes_option(digits28):
    grey, colour = digits28[:4], smooth_colour(2, 28)
    for x in (grey, colour):
        runs = {
            axes: corrupt(x, "glass_blur", 2, generator=torch.Generator().manual_seed(4),
                          glass_blur_axes=axes)
            for axes in (None, "published", "both")
        }  # fmt: skip
        assert torch.equal(runs[None], runs["published"])
        assert torch.equal(runs[None], runs["both"]) == (x.shape[1] == 3)  # colour: both axes
    other = corrupt(grey, "fog", 2, generator=torch.Generator().manual_seed(4))
    same = corrupt(grey, "fog", 2, generator=torch.Generator().manual_seed(4),
                   glass_blur_axes="both")  # fmt: skip
    assert torch.equal(other, same)  # other corruptions ignore it
    with pytest.raises(ValueError, match="unknown glass_blur_axes 'rows'; expected one of: publ"):
        corrupt(grey, "glass_blur", 1, glass_blur_axes="rows")
