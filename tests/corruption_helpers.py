"""Shared by the corruption tests (tests/corruptions/): the corruptions' random source
recording every draw, smooth colour test images, and ImageMagick's motion blur as loops."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from snnl.corruptions import corruption_parameters
from snnl.corruptions.catalogue import SPECS
from snnl.corruptions.imageops import RandomSource


def smooth_colour(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random colour images with structure (bicubic upsampling of 4 x 4 noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 4, 4, generator=g)
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


class Recorder(RandomSource):
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


def recorded(name: str, severity: int, x: torch.Tensor, seed: int = 0, **overrides):
    """corrupt() run with a Recorder: (output as float64 numpy, params, draws).
    ``overrides``: parameters replacing the table's (e.g. glass_blur's ``swap``)."""
    params = corruption_parameters(name, severity, tuple(x.shape[-2:])) | overrides
    rec = Recorder(seed)
    out = SPECS[name].fn(x.double(), params, rec).clamp(0, 1)
    return out.numpy(), params, rec.draws


def motion_blur_loop(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
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
