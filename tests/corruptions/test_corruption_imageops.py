"""Tests for snnl.corruptions.imageops against scipy.ndimage and plain loops written from
ImageMagick's MotionBlurImage and scikit-image's canny.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from PIL import Image

from corruption_helpers import motion_blur_loop, recorded, smooth_colour
from snnl.corruptions import (
    imageops,
)

# tiny problems: one torch thread (see tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("mode", ["nearest", "reflect", "mirror", "constant"])
def test_gaussian_blur_matches_scipy(mode):
    rng = np.random.default_rng(0)
    img = rng.random((2, 1, 9, 13))
    for sigma, truncate in ((0.7, 4.0), (3.0, 4.0), (6.4, 3.0), (19.6, 3.0)):
        ours = imageops.gaussian_blur(torch.from_numpy(img), sigma, truncate=truncate, mode=mode)
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
    ours = imageops.sample(
        torch.from_numpy(img), torch.from_numpy(rows), torch.from_numpy(cols), border
    )
    ref = ndi.map_coordinates(img[0, 0], [rows[0], cols[0]], order=1, mode=scipy_mode, cval=0.0)
    np.testing.assert_allclose(ours.numpy()[0, 0], ref, atol=1e-12)


def test_motion_blur_matches_imagemagick_loop():
    rng = np.random.default_rng(3)
    img = rng.random((3, 2, 12, 12))
    angles = np.array([-45.0, 13.0, 44.9])
    ours = imageops.motion_blur(torch.from_numpy(img), 6.0, 2.0, torch.from_numpy(angles)).numpy()
    for n in range(3):
        np.testing.assert_allclose(
            ours[n], motion_blur_loop(img[n], 6.0, 2.0, angles[n]), atol=1e-12
        )
    x = torch.from_numpy(img[:, :1])
    out, p, draws = recorded("motion_blur", 2, x.float())
    for n in range(3):
        ref = motion_blur_loop(img[n, :1], p["radius"], p["sigma"], float(draws[0][n]))
        np.testing.assert_allclose(out[n], np.clip(ref, 0, 1), atol=1e-5)


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
        ours = imageops.canny(torch.from_numpy(img)[None, None], 1.0, 0.1, 0.2)[0, 0].numpy()
        ref = _canny_ref(img)
        assert (ours == ref).all(), np.argwhere(ours != ref)
    assert _canny_ref(square).sum() > 20  # a closed outline was found


def test_box_matrix_matches_pil_float_resampling():
    """PIL's BOX weights (``precompute_coeffs``): resizing with box_matrix's products equals
    PIL's resize of float ("F") images, which keeps the weights unrounded."""
    rng = np.random.default_rng(2)
    for (h, w), (sh, sw) in (((32, 32), (30, 30)), ((32, 32), (20, 20)), ((28, 28), (16, 16)),
                             ((28, 28), (7, 7)), ((8, 8), (4, 4)), ((30, 30), (25, 25)),
                             ((20, 45), (11, 27))):  # fmt: skip
        img = rng.random((h, w)).astype(np.float32)
        rows = imageops.box_matrix(sh, h) @ imageops.box_matrix(h, sh)
        cols = imageops.box_matrix(sw, w) @ imageops.box_matrix(w, sw)
        ours = (rows @ torch.from_numpy(img).double() @ cols.T).numpy()
        pil = Image.fromarray(img, mode="F")
        ref = np.asarray(pil.resize((sw, sh), Image.BOX).resize((w, h), Image.BOX))
        np.testing.assert_allclose(ours, ref, atol=1e-6)
