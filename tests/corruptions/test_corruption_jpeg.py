"""Tests for snnl.corruptions.jpeg: bit-exact with PIL (libjpeg)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from corruption_helpers import smooth_colour
from snnl.corruptions.jpeg import jpeg_roundtrip

# tiny problems: one torch thread (see tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
            ours = jpeg_roundtrip(torch.from_numpy(u8 / 255.0), quality).numpy() * 255
            if x.shape[1] == 1:
                ref = np.stack([_pil_jpeg(u8[i, 0], quality) for i in range(12)])[:, None]
            else:
                ref = np.stack(
                    [_pil_jpeg(u8[i].transpose(1, 2, 0), quality) for i in range(12)]
                ).transpose(0, 3, 1, 2)
            np.testing.assert_allclose(ours, ref, atol=1e-9, err_msg=f"{size} {quality}")
