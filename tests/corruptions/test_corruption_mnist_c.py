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
