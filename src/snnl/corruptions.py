"""Average-case perturbations: the common corruptions of CIFAR-10-C and MNIST-C, batched in torch.

:func:`corrupt` applies one corruption at one of five severities to a batch of images
``(N, C, H, W)`` in [0, 1], grey (C = 1) or colour (C = 3), on the input's device, in its
dtype, with the output clamped to [0, 1] and every random draw taken from an optional
``torch.Generator``. :func:`corruption_accuracy` evaluates a model on every
corruption x severity cell and reports the unweighted mean over the cells (the way
RobustBench reports CIFAR-10-C).

Corruptions (:func:`corruption_names`):

- the 15 of Hendrycks & Dietterich (ICLR 2019): gaussian_noise, shot_noise,
  impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog,
  brightness, contrast, elastic_transform, pixelate, jpeg_compression;
- the MNIST-C ones (Mu & Gilmer 2019) that are not among those 15: shear, scale,
  rotate, translate, stripe, dotted_line, zigzag, canny_edges, spatter.

Constants (:func:`corruption_parameters`; the full table is in docs/corruptions.md):

- Images whose smaller side is >= 30 use the CIFAR-10-C constants of
  ``hendrycks/robustness`` ``ImageNet-C/create_c/make_cifar_c.py`` (exact at 32 x 32).
- Smaller images use the five-level tables of ``google-research/mnist-c``
  ``corruptions.py`` (exact at 28 x 28). The MNIST-C dataset uses one of those five
  levels per corruption (the function's default); :func:`corruption_info` says which.
  The four MNIST-C corruptions that have no levels (stripe, dotted_line, zigzag,
  canny_edges) get five: stripe and canny_edges blend the MNIST-C result in with
  opacity ``severity / 5`` (severity 5 = MNIST-C), dotted_line and zigzag draw
  ``severity`` lines (severity 1 = MNIST-C).
- Other sizes (8 x 8 digits, 64 x 64, ...) take the table of the nearer reference
  and multiply every parameter measured in pixels (blur sigmas and radii, shifts,
  line widths, elastic fields, the fog map size) by ``min(H, W) / 28`` (or ``/ 32``);
  intensities, probabilities, angles, zoom factors, JPEG qualities and pixelation
  factors are kept. Integer pixel parameters are rounded (at least 1).
- MNIST-only corruptions (shear, ... spatter) use the MNIST-C table at every size
  (CIFAR-10-C's water spatter needs OpenCV's Canny, distance transform and histogram
  equalisation and is not reproduced; its mud branch is the MNIST-C algorithm, with
  CIFAR-10-C's mud colour for colour images).

Where the sources call a library, the same operation is written here in torch:
Gaussian filters as scipy/scikit-image define them (truncate and border modes),
ImageMagick's one-sided motion-blur kernel, the diamond-square plasma of the
sources, PIL's BOX resampling (pixelate), scikit-image's affine warps and Canny
detector, OpenCV's affine warp, and libjpeg's baseline JPEG codec as PIL calls it
(quality scaling, integer colour conversion, 4:2:0 chroma subsampling and
triangular upsampling, the accurate integer DCT): the same 8-bit output as PIL.
Grey images go through JPEG's single-component (luminance) path, as PIL does for
mode "L" (no repeating into three channels).
Frost uses five procedural ice textures (needles along the three hexagonal axes
with side branches, over a plasma haze) generated once from a fixed seed, standing
in for the source's six frost photographs, which are not downloaded.
Outputs are not quantised to 8 bits (the datasets store uint8), except inside JPEG.

Every corruption is vectorised over the batch. Glass blur keeps the source's
sequential pixel swaps (a swap may move a pixel an earlier swap moved), so it loops
over pixel positions, each step working on the whole batch.

>>> x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
>>> y = corrupt(x, "gaussian_noise", 3, generator=torch.Generator().manual_seed(1))
>>> y.shape, y.dtype, bool(y.min() >= 0 and y.max() <= 1)
(torch.Size([4, 1, 28, 28]), torch.float32, True)
>>> corruption_parameters("gaussian_noise", 3, (28, 28))
{'sigma': 0.18}
>>> corruption_parameters("gaussian_noise", 3, (32, 32))
{'sigma': 0.08}
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snnl._checks import check_choice, check_int, check_labels

__all__ = [
    "SEVERITIES",
    "PRESETS",
    "CorruptionInfo",
    "CorruptionAccuracy",
    "corrupt",
    "corruption_names",
    "corruption_info",
    "corruption_parameters",
    "corruption_accuracy",
]

#: The five severities every corruption has.
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: Constant tables: CIFAR-10-C (reference side 32) and MNIST-C (reference side 28).
PRESETS: tuple[str, ...] = ("cifar10-c", "mnist-c")
_REFERENCE_SIDE = {"cifar10-c": 32, "mnist-c": 28}
_MIN_SIDE = 8

Params = dict[str, Any]


# --------------------------------------------------------------------------------------
# Random draws: on the generator's device, then moved to the input's
# --------------------------------------------------------------------------------------


class _Random:
    """Draws from ``generator`` (or torch's default generator on ``device``)."""

    def __init__(self, generator: torch.Generator | None, device: torch.device, dtype):
        self.generator = generator
        self.device = device
        self.dtype = dtype
        self.source = generator.device if generator is not None else device

    def uniform(self, shape: Sequence[int], low: float = 0.0, high: float = 1.0) -> Tensor:
        u = torch.empty(tuple(shape), device=self.source, dtype=self.dtype)
        return u.uniform_(low, high, generator=self.generator).to(self.device)

    def normal(self, shape: Sequence[int], mean: float = 0.0, std: float = 1.0) -> Tensor:
        z = torch.empty(tuple(shape), device=self.source, dtype=self.dtype)
        return z.normal_(mean, std, generator=self.generator).to(self.device)

    def integers(self, low: int, high: int, shape: Sequence[int]) -> Tensor:
        """Integers in [low, high) (numpy's ``randint`` convention): floor of a float64
        uniform (faster than ``torch.randint`` on CPU; bias below 2^-40 for these ranges)."""
        u = torch.empty(tuple(shape), device=self.source, dtype=torch.float64)
        u = u.uniform_(0.0, 1.0, generator=self.generator)
        t = (u * (high - low)).floor_().long().clamp_(max=high - low - 1) + low
        return t.to(self.device)

    def signs(self, shape: Sequence[int]) -> Tensor:
        return (self.integers(0, 2, shape) * 2 - 1).to(self.dtype)

    def poisson(self, rate: Tensor) -> Tensor:
        if rate.device.type == "meta":  # shapes only: there are no rates to draw from
            return torch.poisson(rate)
        return torch.poisson(rate.to(self.source), generator=self.generator).to(self.device)


# --------------------------------------------------------------------------------------
# Filtering and sampling helpers (scipy / OpenCV border conventions)
# --------------------------------------------------------------------------------------


def _border_index(n: int, before: int, after: int, mode: str, device: torch.device) -> Tensor:
    """Source index of every position of an axis of length n padded by (before, after).

    Modes (as scipy.ndimage names them / OpenCV):
    ``"mirror"`` (d c b | a b c d | c b a, OpenCV REFLECT_101, torch "reflect"),
    ``"reflect"`` (c b a | a b c d | d c b, OpenCV REFLECT), ``"nearest"`` (a a | a b ...).
    Any padding width works (the pattern repeats).
    """
    i = torch.arange(-before, n + after, device=device)
    if mode == "nearest" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "mirror":
        period = 2 * (n - 1)
        i = i.remainder(period)
        return torch.where(i >= n, period - i, i)
    if mode == "reflect":
        period = 2 * n
        i = i.remainder(period)
        return torch.where(i >= n, period - 1 - i, i)
    raise ValueError(f"unknown border mode {mode!r}")


def _pad(x: Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> Tensor:
    """Pad the last two dims; ``mode`` as in :func:`_border_index` or ``"constant"`` (zeros)."""
    if mode == "constant":
        return F.pad(x, (left, right, top, bottom))
    h, w = x.shape[-2:]
    rows = _border_index(h, top, bottom, mode, x.device)
    cols = _border_index(w, left, right, mode, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def _gaussian_kernel1d(sigma: float, truncate: float, dtype, device) -> Tensor:
    """scipy.ndimage's kernel: radius int(truncate * sigma + 0.5), exp(-x^2 / 2 sigma^2)."""
    radius = int(truncate * float(sigma) + 0.5)
    if sigma <= 0 or radius == 0:
        return torch.ones(1, dtype=dtype, device=device)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def _axis_matrix(n: int, kernel: Tensor, mode: str) -> Tensor:
    """(n, n) float64 A with A @ v = the correlation of v (length n) with ``kernel``
    (odd length, centred) under border ``mode`` (as :func:`_pad`)."""
    k = kernel.detach().to("cpu", torch.float64)
    r = k.numel() // 2
    out = torch.arange(n).view(-1, 1)
    taps = torch.arange(k.numel()).view(1, -1)
    if mode == "constant":
        src = out + taps - r
        keep = (src >= 0) & (src < n)
    else:
        src = _border_index(n, r, r, mode, torch.device("cpu"))[out + taps]
        keep = torch.ones_like(src, dtype=torch.bool)
    a = torch.zeros(n, n, dtype=torch.float64)
    rows = out.expand_as(src)[keep]
    weights = k.view(1, -1).expand_as(src)[keep]
    return a.index_put_((rows, src[keep]), weights, accumulate=True)


def _separable(x: Tensor, k_rows: Tensor, k_cols: Tensor, mode: str) -> Tensor:
    """Correlate every (N, C) plane with k_rows along H and k_cols along W (two matmuls)."""
    h, w = x.shape[-2:]
    a_rows = _axis_matrix(h, k_rows, mode).to(device=x.device, dtype=x.dtype)
    a_cols = _axis_matrix(w, k_cols, mode).to(device=x.device, dtype=x.dtype)
    return a_rows @ x @ a_cols.T


def _gaussian_blur(x: Tensor, sigma: float, *, truncate: float = 4.0, mode: str = "nearest"):
    """scipy.ndimage.gaussian_filter over H and W (scikit-image's ``gaussian`` defaults:
    truncate 4, mode "nearest"; channels are not mixed)."""
    k = _gaussian_kernel1d(sigma, truncate, torch.float64, torch.device("cpu"))
    return _separable(x, k, k, mode)


def _filter2d(x: Tensor, kernel: Tensor, mode: str = "mirror") -> Tensor:
    """OpenCV ``filter2D`` (correlation, odd kernel, anchor at the centre) per plane:
    the sum over kernel rows i of (rows shifted by i - r) @ (that row's axis matrix)."""
    h, w = x.shape[-2:]
    kh = kernel.shape[0]
    r = kh // 2
    rows = _border_index(h, r, r, mode, x.device) if mode != "constant" else None
    out = torch.zeros_like(x)
    for i in range(kh):
        if not bool(kernel[i].any()):
            continue
        a_cols = _axis_matrix(w, kernel[i], mode).to(device=x.device, dtype=x.dtype)
        if rows is not None:
            shifted = x.index_select(-2, rows[i : i + h])
        else:
            shifted = _pad(x, r, r, 0, 0, "constant")[..., i : i + h, :]
        out = out + shifted @ a_cols.T
    return out


def _sample(x: Tensor, rows: Tensor, cols: Tensor, border: str) -> Tensor:
    """Bilinear samples of x (N, C, H, W) at pixel coordinates rows, cols (N, H', W').

    ``border``: ``"zeros"`` (neighbours outside are 0: scikit-image ``warp`` with
    cval 0, OpenCV BORDER_CONSTANT), ``"constant"`` (scipy ``map_coordinates``
    mode "constant": 0 for a point outside the image), ``"mirror"`` (OpenCV
    REFLECT_101) or ``"reflect"`` (scipy mode "reflect").
    """
    h, w = x.shape[-2:]
    if border == "reflect":  # half-sample symmetric: reflect about the outer pixel edges
        gx = (2 * cols + 1) / w - 1
        gy = (2 * rows + 1) / h - 1
        grid = torch.stack([gx, gy], dim=-1).to(x.dtype)
        return F.grid_sample(x, grid, "bilinear", "reflection", align_corners=False)
    gx = 2 * cols / (w - 1) - 1
    gy = 2 * rows / (h - 1) - 1
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype)
    if border == "mirror":
        return F.grid_sample(x, grid, "bilinear", "reflection", align_corners=True)
    if border == "zeros":
        return F.grid_sample(x, grid, "bilinear", "zeros", align_corners=True)
    out = F.grid_sample(x, grid, "bilinear", "border", align_corners=True)
    inside = (rows >= 0) & (rows <= h - 1) & (cols >= 0) & (cols <= w - 1)
    return out * inside.unsqueeze(1).to(x.dtype)


def _pixel_grid(n: int, h: int, w: int, like: Tensor) -> tuple[Tensor, Tensor]:
    rows = torch.arange(h, dtype=like.dtype, device=like.device).view(1, h, 1).expand(n, h, w)
    cols = torch.arange(w, dtype=like.dtype, device=like.device).view(1, 1, w).expand(n, h, w)
    return rows, cols


def _luminance(x: Tensor) -> Tensor:
    """(N, 1, H, W): ITU-R 601 luma of colour images (OpenCV RGB2GRAY), x itself if grey."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)


def _clipped_zoom(x: Tensor, factor: float) -> Tensor:
    """The sources' ``clipped_zoom``: centre crop of ceil(side / factor), scipy ``zoom``
    (order 1: linear interpolation with the corners aligned) to round(crop * factor),
    then the centre side x side (trim (size - side) // 2 from the top-left)."""
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top : top + ch, left : left + cw]
    oh, ow = int(round(ch * factor)), int(round(cw * factor))
    if (oh, ow) != (ch, cw):
        crop = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
    th, tw = (oh - h) // 2, (ow - w) // 2
    return crop[..., th : th + h, tw : tw + w]


def _quantise_floor(x: Tensor) -> Tensor:
    """numpy's ``np.uint8(v * 255) / 255`` (truncation) for v in [0, 1]."""
    return torch.floor(x.clamp(0, 1) * 255) / 255


def _motion_blur(x: Tensor, radius: float, sigma: float, angles_deg: Tensor) -> Tensor:
    """ImageMagick's ``MotionBlurImage``: a one-sided Gaussian streak.

    width = 2 ceil(radius) + 1 taps, weights exp(-j^2 / 2 sigma^2) normalised (j = 0..width-1),
    tap j reads the pixel at offset (ceil(j cos a - 0.5), ceil(j sin a - 0.5)) in
    (column, row), edge pixels repeated beyond the border. ``angles_deg`` (N,): one
    angle per image.
    """
    n, c, h, w = x.shape
    width = int(2 * math.ceil(radius) + 1) if radius > 0 else 3
    j = torch.arange(width, dtype=torch.float64)
    kernel = torch.exp(-(j**2) / (2 * max(float(sigma), 1e-12) ** 2))
    kernel = (kernel / kernel.sum()).tolist()
    a = torch.deg2rad(angles_deg.to(torch.float64))
    ox = torch.ceil(j.to(a.device).view(1, -1) * torch.cos(a).view(-1, 1) - 0.5).long()
    oy = torch.ceil(j.to(a.device).view(1, -1) * torch.sin(a).view(-1, 1) - 0.5).long()
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    flat = x.reshape(n, c, h * w)
    out = torch.zeros_like(flat)
    for t, weight in enumerate(kernel):
        r = (rows + oy[:, t].view(n, 1, 1)).clamp(0, h - 1)
        q = (cols + ox[:, t].view(n, 1, 1)).clamp(0, w - 1)
        index = (r * w + q).reshape(n, 1, h * w).expand(n, c, h * w)
        out += weight * flat.gather(2, index)
    return out.reshape(n, c, h, w)


def _plasma(n: int, mapsize: int, decay: float, rnd: _Random) -> Tensor:
    """The sources' diamond-square ``plasma_fractal`` for n maps at once, each in [0, 1]."""
    m = mapsize
    a = torch.zeros(n, m, m, dtype=rnd.dtype, device=rnd.device)
    step, wibble = m, 100.0
    while step >= 2:
        half = step // 2
        corner = a[:, 0:m:step, 0:m:step]
        square = corner + torch.roll(corner, -1, dims=1)
        square = square + torch.roll(square, -1, dims=2)
        noise = rnd.uniform(square.shape, -wibble, wibble)
        a[:, half:m:step, half:m:step] = square / 4 + wibble * noise
        dr = a[:, half:m:step, half:m:step]
        ul = a[:, 0:m:step, 0:m:step]
        left = dr + torch.roll(dr, 1, dims=1) + ul + torch.roll(ul, -1, dims=2)
        noise = rnd.uniform(left.shape, -wibble, wibble)
        a[:, 0:m:step, half:m:step] = left / 4 + wibble * noise
        top = dr + torch.roll(dr, 1, dims=2) + ul + torch.roll(ul, -1, dims=1)
        noise = rnd.uniform(top.shape, -wibble, wibble)
        a[:, half:m:step, 0:m:step] = top / 4 + wibble * noise
        step //= 2
        wibble /= decay
    a = a - a.amin(dim=(1, 2), keepdim=True)
    return a / a.amax(dim=(1, 2), keepdim=True)


# --------------------------------------------------------------------------------------
# The corruptions: f(x, params, random) -> unclipped (N, C, H, W)
# --------------------------------------------------------------------------------------


def _gaussian_noise(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    return x + rnd.normal(x.shape, 0.0, p["sigma"])


def _shot_noise(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    c = p["photons"]
    return rnd.poisson(x * c) / c


def _impulse_noise(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    """scikit-image ``random_noise(mode="s&p")``: each value flips with probability
    ``amount``, to 0 or 1 with equal odds (channels independently)."""
    u = rnd.uniform(x.shape)  # one draw: pepper below amount / 2, salt up to amount
    half = p["amount"] / 2
    out = torch.where(u < half, torch.zeros_like(x), x)
    return torch.where((u >= half) & (u < p["amount"]), torch.ones_like(x), out)


def _disk_kernel(radius: float, alias_blur: float) -> Tensor:
    """The sources' ``disk``: the aliased disk x^2 + y^2 <= r^2 normalised to sum 1 on
    the grid -8..8 (r <= 8) or -ceil(r)..ceil(r), blurred by OpenCV's GaussianBlur (3 x 3,
    or 5 x 5 for r > 8, sigma ``alias_blur``, REFLECT_101 border); zero rims trimmed."""
    half = 8 if radius <= 8 else math.ceil(radius)
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t.view(-1, 1) ** 2 + t.view(1, -1) ** 2) <= radius**2).to(torch.float64)
    disk = disk / disk.sum()
    ksize = 3 if radius <= 8 else 5
    g = torch.arange(ksize, dtype=torch.float64) - ksize // 2
    g = torch.exp(-(g**2) / (2 * alias_blur**2))
    g = g / g.sum()
    k = _separable(disk.view(1, 1, *disk.shape), g, g, "mirror")[0, 0]
    nonzero = torch.nonzero(k.abs() > 0)
    r = int((nonzero - half).abs().max()) if nonzero.numel() else 0
    return k[half - r : half + r + 1, half - r : half + r + 1]


def _defocus_blur(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    return _filter2d(x, _disk_kernel(p["radius"], p["alias_blur"]), "mirror")


def _glass_swaps(x: Tensor, delta: int, iterations: int, probability: float, rnd: _Random):
    """The sources' local pixel shuffle, in their order, for the whole batch at once.

    For each iteration, for h = H - delta down to delta + 1 and w = W - delta down to
    delta + 1, swap pixel (h, w) with (h + dy, w + dx), dx, dy drawn from
    [-delta, delta) (numpy ``randint``'s half-open range); MNIST-C swaps each position
    only with probability 1/2. The swaps are applied to an index array (CPU, numpy),
    one position at a time for every image at once; the pixels are then gathered
    once through the resulting permutation, on the input's device.
    """
    n, c, h, w = x.shape
    positions = [
        (r * w + q)
        for _ in range(iterations)
        for r in range(h - delta, delta, -1)
        for q in range(w - delta, delta, -1)
    ]
    if not positions:
        return x
    offsets = rnd.integers(-delta, delta, (len(positions), 2, n))
    take = rnd.uniform((len(positions), n)) < probability
    if x.device.type == "meta":  # shapes only
        return x
    start = torch.tensor(positions).view(-1, 1)
    partner = start + offsets[:, 1].cpu() * w + offsets[:, 0].cpu()
    partner = torch.where(take.cpu(), partner, start)
    # perm[pixel * n + image]: pixel-major, so each step's row is one contiguous slice
    flat_partner = (partner * n + torch.arange(n)).numpy()
    perm = np.repeat(np.arange(h * w), n)
    for k, a in enumerate(positions):
        b = flat_partner[k]
        kept = perm[a * n : a * n + n].copy()
        perm[a * n : a * n + n] = perm[b]
        perm[b] = kept
    index = torch.from_numpy(perm.reshape(h * w, n).T.copy()).to(x.device)
    index = index.view(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)


def _glass_blur(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    y = _quantise_floor(_gaussian_blur(x, p["sigma"]))
    y = _glass_swaps(y, p["max_delta"], p["iterations"], p["swap_probability"], rnd)
    return _gaussian_blur(y, p["sigma"])


def _motion_blur_corruption(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    angles = rnd.uniform((x.shape[0],), -45.0, 45.0)
    return _motion_blur(x, p["radius"], p["sigma"], angles)


def _zoom_factors(p: Params) -> np.ndarray:
    return np.arange(1.0, p["zoom_stop"], p["zoom_step"])


def _zoom_blur(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    factors = _zoom_factors(p)
    out = x.clone()
    for z in factors:
        out += _clipped_zoom(x, float(z))
    return out / (len(factors) + 1)


def _snow(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    n, _, h, w = x.shape
    layer = rnd.normal((n, 1, h, w), p["loc"], p["scale"])
    layer = _clipped_zoom(layer, p["zoom"])
    layer = torch.where(layer < p["threshold"], torch.zeros_like(layer), layer)
    layer = _quantise_floor(layer)  # the source writes the layer as an 8-bit PNG
    angles = rnd.uniform((n,), -135.0, -45.0)
    layer = _motion_blur(layer, p["blur_radius"], p["blur_sigma"], angles)
    layer = torch.round(layer * 255) / 255  # ImageMagick's 8-bit result
    blend = p["blend"]
    x = blend * x + (1 - blend) * torch.maximum(x, _luminance(x) * 1.5 + 0.5)
    return x + layer + torch.flip(layer, dims=(-2, -1))


# The frost photographs of the sources are replaced by procedural textures.
_FROST_TEXTURES = 5
_FROST_SEED = 0


def _frost_bank(h: int, w: int, channels: int) -> Tensor:
    """The bank of :func:`_frost_grey_bank`, tinted ice blue (0.86, 0.93, 1.0) for colour."""
    bank = _frost_grey_bank(h, w)
    if channels == 3:
        bank = bank * torch.tensor([0.86, 0.93, 1.0], dtype=torch.float64).view(1, 3, 1, 1)
    return bank


@functools.lru_cache(maxsize=16)
def _frost_grey_bank(h: int, w: int) -> Tensor:
    """Five procedural frost textures (float64, CPU), each (1, 3h, 3w), in [0, 1].

    Haze: a plasma fractal scaled to [0, 0.3]. Crystals: straight needles (length
    0.1 to 0.5 of the image side, Gaussian profile of width 0.6 px at 28 px scale,
    brightness 0.3 to 1) along the three axes of hexagonal ice (a random base angle
    per texture, +-5 degrees of jitter), each with two side branches at +-60 degrees
    of half its length; texture = clip(haze + brightest needle at each pixel, 0, 1).
    Fixed seed: the bank is the same every call, as the source's image files are.
    """
    g = torch.Generator().manual_seed(_FROST_SEED)
    rnd = _Random(g, torch.device("cpu"), torch.float64)
    side = min(h, w)
    scale = side / 28
    th, tw = 3 * h, 3 * w
    mapsize = 1 << max(th, tw).bit_length()
    haze = 0.3 * _plasma(_FROST_TEXTURES, mapsize, 2.0, rnd)[:, :th, :tw]
    width = 0.6 * scale
    count = max(8, int(0.3 * th * tw / (0.3 * side * 2 * width)))
    textures = []
    rows = torch.arange(th, dtype=torch.float64).view(-1, 1, 1)
    cols = torch.arange(tw, dtype=torch.float64).view(1, -1, 1)
    for t in range(_FROST_TEXTURES):
        base = float(rnd.uniform((1,), 0.0, math.pi)[0])
        axis = rnd.integers(0, 3, (count,)).to(torch.float64)
        angle = base + axis * math.pi / 3 + rnd.normal((count,), 0.0, math.radians(5))
        length = rnd.uniform((count,), 0.1, 0.5) * side
        r0 = rnd.uniform((count,), 0, th)
        c0 = rnd.uniform((count,), 0, tw)
        bright = rnd.uniform((count,), 0.3, 1.0)
        # side branches from a random point along the needle
        at = rnd.uniform((count,), 0.2, 0.8)
        br = r0 + at * length * torch.sin(angle)
        bc = c0 + at * length * torch.cos(angle)
        segs = [
            (r0, c0, angle, length, bright),
            (br, bc, angle + math.pi / 3, length / 2, bright * 0.8),
            (br, bc, angle - math.pi / 3, length / 2, bright * 0.8),
        ]
        # max_k b_k exp(-d_k^2 / 2 w^2), taken in log space (one exp per pixel)
        best = torch.full((th, tw), -math.inf, dtype=torch.float64)
        for sr, sc, sa, sl, sb in segs:
            for chunk in range(0, count, 256):
                part = slice(chunk, chunk + 256)
                dr, dc = torch.sin(sa[part]), torch.cos(sa[part])
                pr, pc = rows - sr[part], cols - sc[part]
                along = (pr * dr + pc * dc).clamp(min=0).clamp(max=sl[part])
                dist2 = (pr - along * dr) ** 2 + (pc - along * dc) ** 2
                key = torch.log(sb[part]) - dist2 / (2 * width**2)
                best = torch.maximum(best, key.amax(dim=-1))
        best = torch.exp(best)
        textures.append((haze[t] + best).clamp(0, 1))
    return torch.stack(textures).unsqueeze(1)  # (T, 1, th, tw)


def _frost(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    n, c, h, w = x.shape
    bank = _frost_bank(h, w, c).to(device=x.device, dtype=x.dtype)
    th, tw = bank.shape[-2:]
    pick = rnd.integers(0, _FROST_TEXTURES, (n,))
    top = rnd.integers(0, th - h, (n,))
    left = rnd.integers(0, tw - w, (n,))
    # flat index of crop pixel (i, channel, r, q) in the bank: one gather
    rows = (top.view(n, 1, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h, 1)) * tw
    cols = left.view(n, 1, 1, 1) + torch.arange(w, device=x.device).view(1, 1, 1, w)
    planes = pick.view(n, 1, 1, 1) * c + torch.arange(c, device=x.device).view(1, c, 1, 1)
    frost = bank.reshape(-1).take(planes * (th * tw) + rows + cols)
    return p["image_weight"] * x + p["frost_weight"] * frost


def _fog(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    n, _, h, w = x.shape
    m = p["mapsize"]
    per_chunk = max(1, (1 << 22) // (m * m))
    maps = [
        _plasma(min(per_chunk, n - s), m, p["decay"], rnd)[:, :h, :w]
        for s in range(0, n, per_chunk)
    ]
    fog = torch.cat(maps).unsqueeze(1)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    amount = p["amount"]
    return (x + amount * fog) * peak / (peak + amount)


def _brightness(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    """V + delta in HSV (V = max over channels), hue and saturation kept:
    rgb * V' / V, or grey V' where V = 0 (scikit-image's rgb2hsv / hsv2rgb)."""
    if x.shape[1] == 1:  # grey: V = x, the same formula
        return x + p["delta"]
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + p["delta"]).clamp(max=1.0)
    scaled = x * (v_new / v.clamp(min=torch.finfo(x.dtype).tiny))
    return torch.where(v > 0, scaled, v_new.expand_as(x))


def _contrast(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * p["factor"] + means


def _elastic_transform(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    """Random affine (OpenCV getAffineTransform / warpAffine, bilinear) of three points
    around the centre moved by U(-shift, shift), then a displacement field
    alpha * gaussian(U(-1, 1), sigma, mode "reflect", truncate 3) per axis sampled
    bilinearly (scipy map_coordinates, order 1)."""
    n, c, h, w = x.shape
    centre = torch.tensor([h // 2, w // 2], dtype=torch.float64)
    s = min(h, w) // 3
    pts1 = torch.stack(
        [centre + s, torch.stack([centre[0] + s, centre[1] - s]), centre - s]
    )  # (3, 2) as OpenCV (x, y) points, built from shape (H, W) as the source does
    shift = p["affine_shift"]
    pts2 = pts1.to(x.device) + rnd.uniform((n, 3, 2), -shift, shift).to(torch.float64)
    ones = torch.ones(n, 3, 1, dtype=torch.float64, device=x.device)
    # inverse map (destination -> source): solves [pts2, 1] @ M^T = pts1
    m_inv = torch.linalg.solve(torch.cat([pts2, ones], dim=2), pts1.to(x.device).expand(n, 3, 2))
    rows, cols = _pixel_grid(n, h, w, x)
    r64, c64 = rows.to(torch.float64), cols.to(torch.float64)
    src_x = m_inv[:, 0, 0, None, None] * c64 + m_inv[:, 1, 0, None, None] * r64
    src_x = src_x + m_inv[:, 2, 0, None, None]
    src_y = m_inv[:, 0, 1, None, None] * c64 + m_inv[:, 1, 1, None, None] * r64
    src_y = src_y + m_inv[:, 2, 1, None, None]
    x = _sample(x, src_y.to(x.dtype), src_x.to(x.dtype), p["affine_border"])
    fields = rnd.uniform((n, 2, h, w), -1.0, 1.0).to(x.dtype)
    fields = _gaussian_blur(fields, p["sigma"], truncate=3.0, mode="reflect") * p["alpha"]
    return _sample(x, rows + fields[:, 1], cols + fields[:, 0], p["displacement_border"])


def _box_matrix(n_in: int, n_out: int) -> Tensor:
    """PIL's BOX resampling weights (Pillow ``precompute_coeffs``) as an (out, in) matrix."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        for i in range(lo, hi):
            t = (i - centre + 0.5) / filterscale
            if -0.5 < t <= 0.5:
                a[o, i] = 1.0
        total = a[o].sum()
        if total > 0:
            a[o] /= total
    return a


def _pixelate(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * p["factor"])), max(1, int(w * p["factor"]))
    down_r, down_c = _box_matrix(h, sh), _box_matrix(w, sw)
    up_r, up_c = _box_matrix(sh, h), _box_matrix(sw, w)
    rows = (up_r @ down_r).to(x.dtype).to(x.device)
    cols = (up_c @ down_c).to(x.dtype).to(x.device)
    return rows @ x @ cols.T


# JPEG (ITU T.81 Annex K tables, libjpeg's quality scaling and rounding)
# fmt: off
_JPEG_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56), (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99),
)
_JPEG_CHROMA = (
    (17, 18, 24, 47, 99, 99, 99, 99), (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99), (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4
# fmt: on


def _jpeg_table(base: tuple[tuple[int, ...], ...], quality: int) -> Tensor:
    """libjpeg ``jpeg_set_quality(quality, force_baseline=TRUE)``."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    t = torch.tensor(base, dtype=torch.int64)
    return torch.clamp((t * scale + 50) // 100, 1, 255)


# libjpeg's accurate integer DCT (jfdctint.c / jidctint.c): 13-bit constants
_CONST_BITS, _PASS1_BITS = 13, 2
_F0298, _F0390, _F0541, _F0765 = 2446, 3196, 4433, 6270
_F0899, _F1175, _F1501, _F1847 = 7373, 9633, 12299, 15137
_F1961, _F2053, _F2562, _F3072 = 16069, 16819, 20995, 25172


def _fdct_sums(d: list[Tensor]) -> list[Tensor]:
    """``jpeg_fdct_islow``'s butterflies for one pass, before its DESCALE: eight integer
    linear combinations of d[0..7] (outputs 0 and 4 scaled by 2^13 so that every output
    takes the same shift: 11 in the row pass, 15 in the column pass)."""
    tmp0, tmp7 = d[0] + d[7], d[0] - d[7]
    tmp1, tmp6 = d[1] + d[6], d[1] - d[6]
    tmp2, tmp5 = d[2] + d[5], d[2] - d[5]
    tmp3, tmp4 = d[3] + d[4], d[3] - d[4]
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    out: list[Tensor] = [tmp0] * 8
    out[0], out[4] = (tmp10 + tmp11) << _CONST_BITS, (tmp10 - tmp11) << _CONST_BITS
    z1 = (tmp12 + tmp13) * _F0541
    out[2], out[6] = z1 + tmp13 * _F0765, z1 - tmp12 * _F1847
    z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
    z5 = (z3 + z4) * _F1175
    tmp4, tmp5, tmp6, tmp7 = tmp4 * _F0298, tmp5 * _F2053, tmp6 * _F3072, tmp7 * _F1501
    z1, z2 = z1 * -_F0899, z2 * -_F2562
    z3, z4 = z3 * -_F1961 + z5, z4 * -_F0390 + z5
    out[7], out[5] = tmp4 + z1 + z3, tmp5 + z2 + z4
    out[3], out[1] = tmp6 + z2 + z3, tmp7 + z1 + z4
    return out


def _idct_sums(d: list[Tensor]) -> list[Tensor]:
    """``jpeg_idct_islow``'s butterflies for one pass, before its DESCALE (11 in the
    column pass, 18 in the row pass)."""
    z1 = (d[2] + d[6]) * _F0541
    tmp2 = z1 - d[6] * _F1847
    tmp3 = z1 + d[2] * _F0765
    tmp0 = (d[0] + d[4]) << _CONST_BITS
    tmp1 = (d[0] - d[4]) << _CONST_BITS
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    t0, t1, t2, t3 = d[7], d[5], d[3], d[1]
    z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
    z5 = (z3 + z4) * _F1175
    t0, t1, t2, t3 = t0 * _F0298, t1 * _F2053, t2 * _F3072, t3 * _F1501
    z1, z2 = z1 * -_F0899, z2 * -_F2562
    z3, z4 = z3 * -_F1961 + z5, z4 * -_F0390 + z5
    t0, t1, t2, t3 = t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4
    return [tmp10 + t3, tmp11 + t2, tmp12 + t1, tmp13 + t0,
            tmp13 - t0, tmp12 - t1, tmp11 - t2, tmp10 - t3]  # fmt: skip


@functools.lru_cache(maxsize=1)
def _islow_matrices() -> tuple[Tensor, Tensor]:
    """The integer matrices of the two butterflies (applied to the unit vectors), float64.

    Within a pass libjpeg only adds and multiplies integers, so each pass is exactly
    DESCALE(C @ v); in float64 every product and sum here stays below 2^53 and is exact.
    """
    eye = list(torch.eye(8, dtype=torch.int64))
    forward = torch.stack(_fdct_sums(eye)).to(torch.float64)
    inverse = torch.stack(_idct_sums(eye)).to(torch.float64)
    return forward, inverse


def _descale(x: Tensor, n: int) -> Tensor:
    """libjpeg's DESCALE, (x + 2^(n-1)) >> n, on float64 integers."""
    return torch.floor((x + 2.0 ** (n - 1)) / 2.0**n)


def _jpeg_plane(plane: Tensor, table: Tensor) -> Tensor:
    """Encode and decode (N, H, W) integer samples in 0..255 (int64), H and W multiples
    of 8, as libjpeg does with JDCT_ISLOW: integer forward DCT (rows, then columns;
    scaled by 8), quantisation sign(t) * ((|t| + 4q) // 8q), dequantisation, integer
    inverse DCT (columns, then rows), + 128, clamp to 0..255."""
    n, h, w = plane.shape
    forward, inverse = (m.to(plane.device) for m in _islow_matrices())
    q = table.to(device=plane.device, dtype=torch.float64)
    # blocks as (n, h/8, 8, w/8, 8): a row transform acts on the last dim, a column
    # transform on dim 2; each is one (rows x 8) @ (8 x 8) product
    blocks = (plane - 128).to(torch.float64).reshape(n, h // 8, 8, w // 8, 8)

    def along_rows(t: Tensor, m: Tensor) -> Tensor:
        return t @ m.T

    def along_cols(t: Tensor, m: Tensor) -> Tensor:
        return (t.transpose(2, 4) @ m.T).transpose(2, 4)

    rows = _descale(along_rows(blocks, forward), _CONST_BITS - _PASS1_BITS)
    coef = _descale(along_cols(rows, forward), _CONST_BITS + _PASS1_BITS)
    q8 = q.view(1, 1, 8, 1, 8) * 8
    coef = torch.sign(coef) * torch.floor((coef.abs() + q8 / 2) / q8)
    dequantised = coef * q.view(1, 1, 8, 1, 8)
    cols = _descale(along_cols(dequantised, inverse), _CONST_BITS - _PASS1_BITS)
    out = _descale(along_rows(cols, inverse), _CONST_BITS + _PASS1_BITS + 3) + 128
    return out.clamp(0, 255).reshape(n, h, w).long()


def _fancy_upsample(plane: Tensor, h: int, w: int) -> Tensor:
    """libjpeg's h2v2 "fancy" (triangular) upsampling with its integer rounding."""
    p = torch.cat([plane[:, :1], plane, plane[:, -1:]], dim=1)  # edge rows repeated
    above = p[:, 1:-1] * 3 + p[:, :-2]  # output rows 2i: 3 * row i + row i - 1
    below = p[:, 1:-1] * 3 + p[:, 2:]  # output rows 2i + 1
    rows = torch.stack([above, below], dim=2).reshape(plane.shape[0], -1, plane.shape[2])
    c = torch.cat([rows[:, :, :1], rows, rows[:, :, -1:]], dim=2)
    left = (c[:, :, 1:-1] * 3 + c[:, :, :-2] + 8) >> 4
    right = (c[:, :, 1:-1] * 3 + c[:, :, 2:] + 7) >> 4
    out = torch.stack([left, right], dim=3).reshape(plane.shape[0], rows.shape[1], -1)
    return out[:, :h, :w]


_SCALE = 16  # libjpeg's colour conversion: 16-bit fixed point (jccolor.c, jdcolor.c)


def _fix(v: float) -> int:
    return int(v * (1 << _SCALE) + 0.5)


def _jpeg(x: Tensor, quality: int) -> Tensor:
    """Baseline JPEG at ``quality``, as PIL (libjpeg) writes and reads it: 4:2:0 for colour,
    one component for grey; input rounded to 8 bits; integer arithmetic throughout."""
    n, c, h, w = x.shape
    work = x.to(torch.float64) if x.dtype != torch.float64 else x
    s = torch.floor(work.clamp(0, 1) * 255 + 0.5).long()
    luma = _jpeg_table(_JPEG_LUMA, quality)
    ph, pw = -(-h // 8) * 8, -(-w // 8) * 8
    if c == 1:
        plane = _pad(s[:, 0], 0, ph - h, 0, pw - w, "nearest")
        out = _jpeg_plane(plane, luma)[:, :h, :w].unsqueeze(1)
        return (out.to(torch.float64) / 255).to(x.dtype)
    r, g, b = s[:, 0], s[:, 1], s[:, 2]
    half, offset = 1 << (_SCALE - 1), 128 << _SCALE
    y = (_fix(0.299) * r + _fix(0.587) * g + _fix(0.114) * b + half) >> _SCALE
    cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + offset + half - 1) >> _SCALE
    cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + offset + half - 1) >> _SCALE
    y = _jpeg_plane(_pad(y, 0, ph - h, 0, pw - w, "nearest"), luma)[:, :h, :w]
    # libjpeg: rows padded to the 2-row group and columns to the chroma blocks' width by
    # repeating the edge, averaged 2 x 2 (h2v2_downsample, bias 1, 2, 1, 2, ...), then the
    # last chroma row repeated down to a whole block
    ch, cw = -(-h // 2), -(-w // 2)
    bh, bw = -(-ch // 8) * 8, -(-cw // 8) * 8
    bias = torch.tensor([1, 2], device=s.device).repeat(bw // 2)
    chroma_table = _jpeg_table(_JPEG_CHROMA, quality)
    planes = []
    for t in (cb, cr):
        t = _pad(t, 0, 2 * ch - h, 0, 2 * bw - w, "nearest")
        sums = t.reshape(n, ch, 2, bw, 2).sum(dim=(2, 4))
        small = _pad((sums + bias) >> 2, 0, bh - ch, 0, 0, "nearest")
        small = _jpeg_plane(small, chroma_table)[:, :ch, :cw]
        planes.append(_fancy_upsample(small, h, w) - 128)
    cb, cr = planes
    red = y + ((_fix(1.402) * cr + half) >> _SCALE)
    green = y + ((-_fix(0.34414) * cb - _fix(0.71414) * cr + half) >> _SCALE)
    blue = y + ((_fix(1.772) * cb + half) >> _SCALE)
    out = torch.stack([red, green, blue], dim=1).clamp(0, 255)
    return (out.to(torch.float64) / 255).to(x.dtype)


def _jpeg_compression(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    return _jpeg(x, p["quality"])


def _affine(x: Tensor, matrices: Tensor) -> Tensor:
    """scikit-image ``warp(x, inverse_map=A)``: output pixel (col, row) samples the input
    at A @ (col, row, 1), bilinear, 0 outside. ``matrices`` (N, 2, 3) in (x=col, y=row)."""
    n, _, h, w = x.shape
    rows, cols = _pixel_grid(n, h, w, x)
    m = matrices.to(x.dtype)
    src_c = m[:, 0, 0, None, None] * cols + m[:, 0, 1, None, None] * rows + m[:, 0, 2, None, None]
    src_r = m[:, 1, 0, None, None] * cols + m[:, 1, 1, None, None] * rows + m[:, 1, 2, None, None]
    return _sample(x, src_r, src_c, "zeros")


def _centred(linear: Tensor, h: int, w: int) -> Tensor:
    """(N, 2, 2) -> (N, 2, 3) with the translation that keeps the image centre fixed."""
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=linear.dtype, device=linear.device)
    t = centre - linear @ centre
    return torch.cat([linear, t.unsqueeze(-1)], dim=2)


def _shear(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    n, _, h, w = x.shape
    s = p["shear"] * rnd.signs((n,)).to(torch.float64)
    linear = torch.zeros(n, 2, 2, dtype=torch.float64, device=x.device)
    linear[:, 0, 0] = 1.0
    linear[:, 0, 1] = -torch.sin(s)
    linear[:, 1, 1] = torch.cos(s)
    return _affine(x, _centred(linear, h, w))


def _rotate(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    n, _, h, w = x.shape
    a = p["angle"] * rnd.signs((n,)).to(torch.float64)
    linear = torch.stack(
        [
            torch.stack([torch.cos(a), -torch.sin(a)], 1),
            torch.stack([torch.sin(a), torch.cos(a)], 1),
        ],
        dim=1,
    )
    return _affine(x, _centred(linear, h, w))


def _scale(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    n, _, h, w = x.shape
    linear = torch.eye(2, dtype=torch.float64, device=x.device).expand(n, 2, 2) * p["factor"]
    return _affine(x, _centred(linear, h, w))


def _translate(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    n = x.shape[0]
    shift = p["shift"] * rnd.signs((n, 2)).to(torch.float64)
    m = torch.zeros(n, 2, 3, dtype=torch.float64, device=x.device)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    m[:, :, 2] = shift
    return _affine(x, m)


def _stripe(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    w = x.shape[-1]
    band = max(1, round(w * p["band"]))
    cols = torch.arange(w, device=x.device)
    inside = ((cols < band) | (cols >= w - band)).to(x.dtype)
    return x + p["opacity"] * inside * (1 - 2 * x)


def _lines(
    h: int,
    w: int,
    c0: Tensor,
    r0: Tensor,
    c1: Tensor,
    r1: Tensor,
    width: float,
    like: Tensor,
    cols: Tensor | None = None,
) -> Tensor:
    """MNIST-C's ``line_from_points`` for N segments at once: (N, H, W), or (N, H, K) on
    the columns ``cols`` (N, K) only.

    Value clip(log(1 - d / width) + 1, 0, 1) with d the vertical distance to the line
    (clipped below width), zero outside columns [floor(c0), ceil(c1)) and for c1 == c0.
    """
    rows = torch.arange(h, dtype=like.dtype, device=like.device).view(1, h, 1)
    if cols is None:
        cols = torch.arange(w, dtype=like.dtype, device=like.device).view(1, 1, w)
    else:
        cols = cols.to(like.dtype).unsqueeze(1)
    c0, r0, c1, r1 = (t.to(like.dtype).view(-1, 1, 1) for t in (c0, r0, c1, r1))
    vertical = c1 == c0
    slope = (r1 - r0) / torch.where(vertical, torch.ones_like(c1), c1 - c0)
    dist = (rows - (slope * (cols - c0) + r0)).abs().clamp(max=width - 1e-10)
    value = (torch.log(1 - dist / width) + 1).clamp(0, 1)
    keep = (cols >= torch.floor(c0)) & (cols < torch.ceil(c1)) & (cols < w) & ~vertical
    return value * keep.to(like.dtype)


def _dotted_line(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    n, _, h, w = x.shape
    total = torch.zeros(n, h, w, dtype=x.dtype, device=x.device)
    cols = torch.arange(w, device=x.device)
    dashes = ((cols // p["dash"]) % 2 == 1).to(x.dtype)  # source: columns [0, 2) off, [2, 4) on
    for _ in range(p["lines"]):
        r = rnd.integers(0, h - 1, (2, n))
        zero = torch.zeros(n, dtype=x.dtype, device=x.device)
        line = _lines(h, w, zero, r[0], zero + (w - 1), r[1], p["width"], x)
        total = total + line * dashes
    return x + total.unsqueeze(1)


def _zigzag_points(n: int, h: int, p: Params, rnd: _Random, like: Tensor):
    """Vertices (N, K) of MNIST-C's zigzag (with its odd closing point) and a validity mask."""
    a = b = p["amplitude"]
    c_start, c_stop = p["start"], p["stop"]
    r0 = rnd.integers(0, h - 1, (n,)).to(torch.float64)
    drift = p["drift"]
    r1 = r0 + rnd.integers(-drift, drift, (n,)).to(torch.float64)
    theta = torch.atan((r1 - r0) / (c_stop - c_start))
    d = (c_stop - c_start) / torch.cos(theta)
    count = torch.floor((d - a) / (2 * a)).long() + 1  # zigzag vertices after (0, 0)
    d_max = (c_stop - c_start) / math.cos(math.atan(drift / (c_stop - c_start)))
    kmax = int((d_max - a) // (2 * a)) + 1  # the largest count any drift can give
    i = torch.arange(kmax, dtype=torch.float64, device=d.device).view(1, -1)
    ci = ((2 * i + 1) * a).expand(n, kmax)
    ri = (b * (1 - 2 * (i.long() % 2))).to(torch.float64).expand(n, kmax)
    valid = i < count.view(-1, 1)
    max_c = 2 * a * torch.floor(d / (2 * a))
    last_r = b * (1 - 2 * ((count - 1) % 2)).to(torch.float64)
    tail = d != max_c
    end_r = last_r / (2 * torch.where(tail, d - max_c, torch.ones_like(d)))
    # place the closing point right after the last valid vertex
    cs = torch.cat(
        [
            torch.zeros(n, 1, dtype=torch.float64, device=d.device),
            ci,
            torch.zeros(n, 1, dtype=torch.float64, device=d.device),
        ],
        dim=1,
    )
    rs = torch.cat([torch.zeros_like(cs[:, :1]), ri, torch.zeros_like(cs[:, :1])], dim=1)
    ok = torch.cat(
        [
            torch.ones(n, 1, dtype=torch.bool, device=d.device),
            valid,
            torch.zeros(n, 1, dtype=torch.bool, device=d.device),
        ],
        dim=1,
    )
    slot = count + 1  # index of the closing point
    cs = cs.scatter(1, slot.view(-1, 1), d.view(-1, 1))
    rs = rs.scatter(1, slot.view(-1, 1), end_r.view(-1, 1))
    ok = ok.scatter(1, slot.view(-1, 1), tail.view(-1, 1))
    cos, sin = torch.cos(theta).view(-1, 1), torch.sin(theta).view(-1, 1)
    xs = cos * cs - sin * rs + c_start
    ys = sin * cs + cos * rs + r0.view(-1, 1)
    return xs.to(like.dtype), ys.to(like.dtype), ok


def _zigzag(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    n, _, h, w = x.shape
    total = torch.zeros(n, h, w, dtype=x.dtype, device=x.device)
    for _ in range(p["zigzags"]):
        xs, ys, ok = _zigzag_points(n, h, p, rnd, x)
        for k in range(1, xs.shape[1]):
            c0, c1 = xs[:, k - 1], xs[:, k]
            # only the columns [floor(c0), ceil(c1)) can be drawn: a window of K columns
            start = torch.floor(c0).clamp(0, w - 1).long()
            span = (torch.ceil(c1) - torch.floor(c0)).clamp(1, w)
            k_cols = w if x.device.type == "meta" else int(span.max())
            cols = start.view(n, 1) + torch.arange(k_cols, device=x.device)
            seg = _lines(h, w, c0, ys[:, k - 1], c1, ys[:, k], p["width"], x, cols=cols)
            seg = seg * ok[:, k].view(n, 1, 1).to(x.dtype)
            index = cols.clamp(max=w - 1).view(n, 1, k_cols).expand(n, h, k_cols)
            total = total.scatter_add(2, index, seg)
    return x + total.unsqueeze(1)


def _canny(grey: Tensor, sigma: float, low: float, high: float) -> Tensor:
    """scikit-image's ``feature.canny`` (0.15-0.19) on (N, 1, H, W): edges as 0/1.

    Gaussian smoothing with zero border normalised by the smoothed all-ones mask;
    Sobel gradients (scipy, mode "reflect"); non-maximum suppression interpolating the
    magnitude between the axis and diagonal neighbours along the gradient (kept when
    >= both, the 1-pixel border excluded); hysteresis: pixels >= low connected
    (8-neighbours) to a pixel >= high.
    """
    n, _, h, w = grey.shape
    eps = torch.finfo(torch.float64).eps
    g = grey.to(torch.float64)
    k = _gaussian_kernel1d(sigma, 4.0, torch.float64, torch.device("cpu"))
    smoothed = _separable(g, k, k, "constant")
    bleed = _separable(torch.ones_like(g[:1]), k, k, "constant") + eps
    s = smoothed / bleed
    deriv = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    gi = _separable(s, deriv, smooth, "reflect")[:, 0]  # d/d row
    gj = _separable(s, smooth, deriv, "reflect")[:, 0]  # d/d column
    mag = torch.hypot(gi, gj)
    ai, aj = gi.abs(), gj.abs()
    interior = torch.zeros(h, w, dtype=torch.bool, device=g.device)
    interior[1:-1, 1:-1] = True
    along_i = ai >= aj
    si, sj = torch.sign(gi).long(), torch.sign(gj).long()
    # primary step along the dominant axis, diagonal step along both
    pi = torch.where(along_i, si, torch.zeros_like(si))
    pj = torch.where(along_i, torch.zeros_like(sj), sj)
    weight = torch.where(along_i, aj / ai.clamp(min=eps), ai / aj.clamp(min=eps))
    rows, cols = torch.meshgrid(
        torch.arange(h, device=g.device), torch.arange(w, device=g.device), indexing="ij"
    )
    flat = mag.reshape(n, h * w)

    def at(di: Tensor, dj: Tensor) -> Tensor:
        r = (rows + di).clamp(0, h - 1)
        c = (cols + dj).clamp(0, w - 1)
        return flat.gather(1, (r * w + c).reshape(n, -1)).reshape(n, h, w)

    ahead = (1 - weight) * at(pi, pj) + weight * at(si, sj)
    behind = (1 - weight) * at(-pi, -pj) + weight * at(-si, -sj)
    local_max = interior & (mag > 0) & (ahead <= mag) & (behind <= mag)
    low_mask = (local_max & (mag >= low)).unsqueeze(1).to(torch.float32)
    edges = low_mask * (mag >= high).unsqueeze(1)
    count = -1.0
    while edges.device.type != "meta":  # meta tensors: shapes only, nothing to grow
        # grow into 8-neighbours inside the low mask until nothing changes (the edge
        # count only grows, so an unchanged count means an unchanged set)
        for _ in range(4):
            edges = F.max_pool2d(edges, 3, 1, 1) * low_mask
        total = float(edges.sum())
        if total == count:
            break
        count = total
    return edges > 0


def _canny_edges(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    edges = _canny(_luminance(x), p["sigma"], p["low"], p["high"]).to(x.dtype)
    return x + p["opacity"] * (edges - x)


def _spatter(x: Tensor, p: Params, rnd: _Random) -> Tensor:
    """MNIST-C's mud spatter: liquid = gaussian(N(loc, scale), sigma), kept above the
    threshold; mask = gaussian(liquid > threshold, mask_sigma), zero below 0.8; the image
    is covered by mud colour (63/255 grey, or CIFAR-10-C's (63, 42, 20)/255) by the mask."""
    n, c, h, w = x.shape
    liquid = _gaussian_blur(rnd.normal((n, 1, h, w), p["loc"], p["scale"]), p["sigma"])
    mask = _gaussian_blur((liquid > p["threshold"]).to(x.dtype), p["mask_sigma"])
    mask = torch.where(mask < 0.8, torch.zeros_like(mask), mask)
    colour = (63.0,) if c == 1 else (63.0, 42.0, 20.0)
    mud = torch.tensor(colour, dtype=x.dtype, device=x.device).view(1, c, 1, 1) / 255
    return x * (1 - mask) + mud * mask


# --------------------------------------------------------------------------------------
# The table of corruptions and their constants
# --------------------------------------------------------------------------------------


class _Spec(NamedTuple):
    fn: Callable[[Tensor, Params, _Random], Tensor]
    params: tuple[str, ...]
    cifar: tuple[tuple[Any, ...], ...] | None  # 5 levels, CIFAR-10-C (32 x 32)
    mnist: tuple[tuple[Any, ...], ...]  # 5 levels, MNIST-C (28 x 28)
    spatial: tuple[str, ...] = ()  # parameters in pixels (scaled with the side)
    integer: tuple[str, ...] = ()  # spatial parameters rounded to ints (>= 1)
    groups: tuple[str, ...] = ("hendrycks",)
    mnist_c_severity: int | None = None  # the level the MNIST-C dataset uses
    note: str = ""
    cifar_fixed: tuple[tuple[str, Any], ...] = ()  # preset-specific constants
    mnist_fixed: tuple[tuple[str, Any], ...] = ()


def _same(*values: Any) -> tuple[tuple[Any, ...], ...]:
    return tuple((v,) for v in values)


_HM = ("hendrycks", "mnist-c")

# fmt: off
_SPECS: dict[str, _Spec] = {
    "gaussian_noise": _Spec(
        _gaussian_noise, ("sigma",),
        _same(0.04, 0.06, 0.08, 0.09, 0.10), _same(0.08, 0.12, 0.18, 0.26, 0.38),
        note="x + N(0, sigma^2) per value",
    ),
    "shot_noise": _Spec(
        _shot_noise, ("photons",),
        _same(500, 250, 100, 75, 50), _same(60, 25, 12, 5, 3),
        groups=_HM, mnist_c_severity=5, note="Poisson(x * photons) / photons",
    ),
    "impulse_noise": _Spec(
        _impulse_noise, ("amount",),
        _same(0.01, 0.02, 0.03, 0.05, 0.07), _same(0.03, 0.06, 0.09, 0.17, 0.27),
        groups=_HM, mnist_c_severity=4, note="salt and pepper on a fraction amount of values",
    ),
    "defocus_blur": _Spec(
        _defocus_blur, ("radius", "alias_blur"),
        ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        spatial=("radius", "alias_blur"), note="anti-aliased disk kernel, REFLECT_101 border",
    ),
    "glass_blur": _Spec(
        _glass_blur, ("sigma", "max_delta", "iterations", "swap_probability"),
        ((0.05, 1, 1, 1.0), (0.25, 1, 1, 1.0), (0.4, 1, 1, 1.0), (0.25, 1, 2, 1.0),
         (0.4, 1, 2, 1.0)),
        ((0.7, 1, 2, 0.5), (0.9, 2, 1, 0.5), (1, 2, 3, 0.5), (1.1, 3, 2, 0.5), (1.5, 4, 2, 0.5)),
        spatial=("sigma", "max_delta"), integer=("max_delta",), groups=_HM, mnist_c_severity=1,
        note="blur, 8-bit truncation, sequential local pixel swaps, blur",
    ),
    "motion_blur": _Spec(
        _motion_blur_corruption, ("radius", "sigma"),
        ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        spatial=("radius", "sigma"), groups=_HM, mnist_c_severity=1,
        note="ImageMagick one-sided Gaussian streak, angle U(-45, 45) degrees per image",
    ),
    "zoom_blur": _Spec(
        _zoom_blur, ("zoom_stop", "zoom_step"),
        ((1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)),
        ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)),
        note="mean of x and its centre zooms by numpy.arange(1, zoom_stop, zoom_step)",
    ),
    "snow": _Spec(
        _snow, ("loc", "scale", "zoom", "threshold", "blur_radius", "blur_sigma", "blend"),
        ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
         (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
         (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
        ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
         (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
         (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
        spatial=("blur_radius", "blur_sigma"),
        note="zoomed thresholded noise, motion blurred (angle U(-135, -45)), added twice",
    ),
    "frost": _Spec(
        _frost, ("image_weight", "frost_weight"),
        ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        note="procedural frost textures (fixed seed), random texture and crop per image",
    ),
    "fog": _Spec(
        _fog, ("amount", "decay", "mapsize"),
        ((0.2, 3, 32), (0.5, 3, 32), (0.75, 2.5, 32), (1, 2, 32), (1.5, 1.75, 32)),
        ((1.5, 2, 256), (2.0, 2, 256), (2.5, 1.7, 256), (2.5, 1.5, 256), (3.0, 1.4, 256)),
        spatial=("mapsize",), groups=_HM, mnist_c_severity=5,
        note="plasma fractal (top-left crop of a mapsize map) added, rescaled by max",
    ),
    "brightness": _Spec(
        _brightness, ("delta",),
        _same(0.05, 0.1, 0.15, 0.2, 0.3), _same(0.1, 0.2, 0.3, 0.4, 0.5),
        groups=_HM, mnist_c_severity=5, note="HSV value + delta",
    ),
    "contrast": _Spec(
        _contrast, ("factor",),
        _same(0.75, 0.5, 0.4, 0.3, 0.15), _same(0.4, 0.3, 0.2, 0.1, 0.05),
        note="(x - channel mean) * factor + channel mean",
    ),
    "elastic_transform": _Spec(
        _elastic_transform, ("alpha", "sigma", "affine_shift"),
        tuple(tuple(32 * v for v in lv) for lv in (
            (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
            (0.1, 0.03, 0.03))),
        tuple(tuple(28 * v for v in lv) for lv in (
            (2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02),
            (0.12, 0.01, 0.02))),
        spatial=("alpha", "sigma", "affine_shift"),
        note="random affine then a smoothed random displacement field",
        cifar_fixed=(("affine_border", "mirror"), ("displacement_border", "reflect")),
        mnist_fixed=(("affine_border", "zeros"), ("displacement_border", "constant")),
    ),
    "pixelate": _Spec(
        _pixelate, ("factor",),
        _same(0.95, 0.9, 0.85, 0.75, 0.65), _same(0.6, 0.5, 0.4, 0.3, 0.25),
        note="PIL BOX resize to int(side * factor) and back",
    ),
    "jpeg_compression": _Spec(
        _jpeg_compression, ("quality",),
        _same(80, 65, 58, 50, 40), _same(25, 18, 15, 10, 7),
        note="baseline JPEG at this quality (4:2:0 colour, one component grey)",
    ),
    "shear": _Spec(
        _shear, ("shear",), None, _same(0.2, 0.4, 0.6, 0.8, 1.0),
        groups=("mnist-c",), mnist_c_severity=2,
        note="scikit-image shear (radians) about the centre, random sign, bilinear",
    ),
    "scale": _Spec(
        _scale, ("factor",), None, _same(1 / 0.9, 1 / 0.8, 1 / 0.7, 1 / 0.6, 1 / 0.5),
        groups=("mnist-c",), mnist_c_severity=3,
        note="inverse map scaled by factor about the centre (the digit shrinks)",
    ),
    "rotate": _Spec(
        _rotate, ("angle",), None, _same(0.2, 0.4, 0.6, 0.8, 1.0),
        groups=("mnist-c",), mnist_c_severity=2,
        note="rotation by angle radians about the centre, random sign",
    ),
    "translate": _Spec(
        _translate, ("shift",), None, _same(1, 2, 3, 4, 5),
        spatial=("shift",), groups=("mnist-c",), mnist_c_severity=3,
        note="shift by +-shift pixels along each axis (random signs)",
    ),
    "stripe": _Spec(
        _stripe, ("opacity", "band"), None, tuple((s / 5, 0.25) for s in SEVERITIES),
        groups=("mnist-c",), mnist_c_severity=5,
        note="left and right quarter of the columns inverted, blended in with opacity",
    ),
    "dotted_line": _Spec(
        _dotted_line, ("lines", "width", "dash"), None,
        tuple((s, 2.3, 2) for s in SEVERITIES),
        spatial=("width", "dash"), integer=("dash",), groups=("mnist-c",), mnist_c_severity=1,
        note="severity dashed lines across the image between random rows",
    ),
    "zigzag": _Spec(
        _zigzag, ("zigzags", "width", "amplitude", "start", "stop", "drift"), None,
        tuple((s, 2.3, 2.0, 2.0, 25.0, 5) for s in SEVERITIES),
        spatial=("width", "amplitude", "start", "stop", "drift"), integer=("drift",),
        groups=("mnist-c",), mnist_c_severity=1, note="severity zigzag lines",
    ),
    "canny_edges": _Spec(
        _canny_edges, ("opacity", "sigma", "low", "high"), None,
        tuple((s / 5, 1.0, 0.1, 0.2) for s in SEVERITIES),
        spatial=("sigma",), groups=("mnist-c",), mnist_c_severity=5,
        note="Canny edge map (of the luma for colour) blended in with opacity",
    ),
    "spatter": _Spec(
        _spatter, ("loc", "scale", "sigma", "threshold", "mask_sigma"), None,
        tuple((0.65, 0.3, 1, t, 1.5) for t in (0.71, 0.69, 0.67, 0.65, 0.63)),
        spatial=("sigma", "mask_sigma"), groups=("mnist-c",), mnist_c_severity=4,
        note="mud spatter (MNIST-C's algorithm and dataset level; threshold varies)",
    ),
}
# fmt: on

_GROUPS = ("hendrycks", "mnist-c")


@dataclass(frozen=True)
class CorruptionInfo:
    """What a corruption is and where its constants come from.

    ``groups``: ``"hendrycks"`` (the 15 of CIFAR-10-C) and/or ``"mnist-c"`` (MNIST-C's 15);
    ``mnist_c_severity``: the severity here that equals the single one the MNIST-C
    dataset uses (None where MNIST-C does not use the corruption); ``presets``: the
    constant tables that exist for it.
    """

    name: str
    groups: tuple[str, ...]
    parameters: tuple[str, ...]
    presets: tuple[str, ...]
    mnist_c_severity: int | None
    note: str


def corruption_names(group: str | None = None) -> tuple[str, ...]:
    """Names :func:`corrupt` accepts: all, or one group (``"hendrycks"``, ``"mnist-c"``).

    >>> len(corruption_names()), len(corruption_names("hendrycks"))
    (24, 15)
    >>> len(corruption_names("mnist-c"))
    15
    >>> corruption_names("mnist-c")[:3]
    ('shot_noise', 'impulse_noise', 'glass_blur')
    """
    if group is None:
        return tuple(_SPECS)
    check_choice("corruption group", group, _GROUPS)
    return tuple(n for n, s in _SPECS.items() if group in s.groups)


def corruption_info(name: str) -> CorruptionInfo:
    """Groups, parameters, constant tables and a one-line description of a corruption.

    >>> corruption_info("fog").mnist_c_severity
    5
    """
    spec = _SPECS[check_choice("corruption", name, _SPECS)]
    presets = ("cifar10-c", "mnist-c") if spec.cifar is not None else ("mnist-c",)
    return CorruptionInfo(name, spec.groups, spec.params, presets, spec.mnist_c_severity, spec.note)


def _check_severity(severity: Any) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer):
        raise TypeError(f"severity must be an int in 1, 2, 3, 4, 5, got {severity!r}")
    if int(severity) not in SEVERITIES:
        raise ValueError(f"severity must be one of 1, 2, 3, 4, 5, got {severity}")
    return int(severity)


def corruption_parameters(
    name: str, severity: int, image_size: tuple[int, int], *, preset: str | None = None
) -> dict[str, Any]:
    """The constants :func:`corrupt` uses for ``name`` at ``severity`` on H x W images.

    ``preset`` None picks "cifar10-c" when min(H, W) >= 30, else "mnist-c"; a corruption
    without a CIFAR-10-C table uses MNIST-C's. Parameters in pixels are multiplied by
    min(H, W) / reference side (32 or 28); the fog map size becomes the power of two
    nearest (in log scale) to the scaled size, at least max(H, W).

    >>> corruption_parameters("motion_blur", 1, (28, 28))
    {'radius': 10.0, 'sigma': 3.0}
    >>> {k: round(v, 6) for k, v in corruption_parameters("motion_blur", 1, (8, 8)).items()}
    {'radius': 2.857143, 'sigma': 0.857143}
    """
    spec = _SPECS[check_choice("corruption", name, _SPECS)]
    severity = _check_severity(severity)
    h, w = (int(s) for s in image_size)
    if min(h, w) < _MIN_SIDE:
        raise ValueError(f"images must be at least {_MIN_SIDE} x {_MIN_SIDE}, got {h} x {w}")
    if preset is None:
        preset = "cifar10-c" if min(h, w) >= 30 else "mnist-c"
    check_choice("preset", preset, PRESETS)
    if preset == "cifar10-c" and spec.cifar is None:
        preset = "mnist-c"
    table = spec.cifar if preset == "cifar10-c" else spec.mnist
    assert table is not None
    ratio = min(h, w) / _REFERENCE_SIDE[preset]
    out: dict[str, Any] = {}
    for key, value in zip(spec.params, table[severity - 1], strict=True):
        if key == "mapsize":
            scaled = 2 ** round(math.log2(value * ratio))
            out[key] = max(int(scaled), 1 << (max(h, w) - 1).bit_length())
        elif key in spec.integer:
            out[key] = max(1, round(value * ratio))
        elif key in spec.spatial:
            out[key] = float(value) * ratio
        else:
            out[key] = value
    out.update(spec.cifar_fixed if preset == "cifar10-c" else spec.mnist_fixed)
    return out


def _check_images(x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of images, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor in [0, 1], got dtype {x.dtype}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            "x must be a batch of images shaped (N, C, H, W) with C = 1 (grey) or 3 (colour), "
            f"got shape {tuple(x.shape)}"
        )
    if min(x.shape[-2:]) < _MIN_SIDE:
        raise ValueError(
            f"images must be at least {_MIN_SIDE} x {_MIN_SIDE} pixels, got "
            f"{x.shape[-2]} x {x.shape[-1]}"
        )
    if x.device.type != "meta" and x.numel():
        lo, hi = (float(v) for v in torch.aminmax(x))  # NaN propagates to both
        if not (lo >= 0 and hi <= 1):
            if bool(torch.isnan(x).any()):
                raise ValueError("x contains NaN")
            raise ValueError(f"x must lie in [0, 1], got values in [{lo:.6g}, {hi:.6g}]")


def corrupt(
    x: Tensor,
    name: str,
    severity: int,
    *,
    generator: torch.Generator | None = None,
    preset: str | None = None,
) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to a batch of images.

    Args:
        x: (N, C, H, W) float tensor in [0, 1], C = 1 or 3, H, W >= 8.
        name: one of :func:`corruption_names`.
        severity: 1 (mildest) to 5.
        generator: a ``torch.Generator`` for every random draw, on ``x.device`` or on
            another device (a CPU generator for CUDA inputs: draws are made there and
            moved); None uses torch's default generator.
        preset: the constant table, "cifar10-c" or "mnist-c" (default: by image size;
            see :func:`corruption_parameters`).

    Returns:
        (N, C, H, W) tensor on ``x.device`` with ``x.dtype``, clamped to [0, 1]
        (computed in float32, or float64 for float64 inputs).

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(2, 3, 32, 32, generator=g)
    >>> a = corrupt(x, "fog", 2, generator=torch.Generator().manual_seed(5))
    >>> b = corrupt(x, "fog", 2, generator=torch.Generator().manual_seed(5))
    >>> bool(torch.equal(a, b)), a.shape
    (True, torch.Size([2, 3, 32, 32]))
    """
    check_choice("corruption", name, _SPECS)
    severity = _check_severity(severity)
    _check_images(x)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
    params = corruption_parameters(name, severity, tuple(x.shape[-2:]), preset=preset)
    if x.shape[0] == 0:
        return x.clone()
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    rnd = _Random(generator, x.device, work)
    out = _SPECS[name].fn(x.to(work), params, rnd)
    return out.clamp(0, 1).to(x.dtype)


# --------------------------------------------------------------------------------------
# Accuracy under corruption
# --------------------------------------------------------------------------------------


@dataclass
class CorruptionAccuracy:
    """Accuracy of a model on every corruption x severity cell.

    ``table[name][severity]`` is the accuracy on that cell; ``mean`` the unweighted mean
    over all cells (RobustBench's corruption accuracy); ``per_corruption[name]`` the mean
    over that corruption's severities; ``clean`` the accuracy on the clean inputs.
    """

    table: dict[str, dict[int, float]]
    mean: float
    per_corruption: dict[str, float]
    clean: float
    severities: tuple[int, ...]
    preset: str | None = None
    seeds: dict[str, dict[int, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: severities as string keys."""
        return {
            "mean": self.mean,
            "clean": self.clean,
            "per_corruption": dict(self.per_corruption),
            "table": {n: {str(s): v for s, v in row.items()} for n, row in self.table.items()},
            "severities": list(self.severities),
            "preset": self.preset,
        }


def _cell_seed(base: int, name: str, severity: int) -> int:
    return (base * 1_000_003 + zlib.crc32(name.encode()) * 10 + severity) % (2**63 - 1)


def corruption_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    names: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
    preset: str | None = None,
) -> CorruptionAccuracy:
    """Accuracy of ``model`` on ``x`` corrupted by every name x severity.

    mean = (1 / (|names| |severities|)) sum over cells of accuracy(cell), RobustBench's
    unweighted mean (over the 15 corruptions x 5 severities for CIFAR-10-C). Accuracy is
    :func:`snnl.measures.accuracy` (model in eval mode, its flags restored). Each cell is
    corrupted with its own generator seeded from (one draw of ``generator``, name,
    severity), so a cell's result does not depend on which other cells are asked for.

    Args:
        model: maps (N, C, H, W) in [0, 1] to logits (N, classes).
        x: (N, C, H, W) inputs in [0, 1]; y: (N,) integer labels.
        names: corruptions (default: every one of :func:`corruption_names`).
        severities: subset of 1..5.
        generator: seeds the cells (default: torch's global generator).
        batch_size: evaluation batch size.
        preset: as in :func:`corrupt`.

    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> x = torch.rand(6, 1, 8, 8); y = torch.tensor([0, 1, 2, 0, 1, 2])
    >>> res = corruption_accuracy(net, x, y, ["contrast", "brightness"], (1, 5))
    >>> sorted(res.table), sorted(res.table["contrast"])
    (['brightness', 'contrast'], [1, 5])
    >>> abs(res.mean - sum(v for r in res.table.values() for v in r.values()) / 4) < 1e-12
    True
    """
    from snnl.measures import accuracy

    _check_images(x)
    y = check_labels(y, x.shape[0], name="y", non_negative=True)
    names = corruption_names() if names is None else tuple(names)
    if not names:
        raise ValueError("names must list at least one corruption")
    for n in names:
        check_choice("corruption", n, _SPECS)
    severities = tuple(_check_severity(s) for s in severities)
    if not severities:
        raise ValueError("severities must list at least one of 1, 2, 3, 4, 5")
    check_int("batch_size", batch_size, low=1)
    source = generator.device if generator is not None else torch.device("cpu")
    base = int(torch.randint(0, 2**62, (1,), generator=generator, device=source))
    table: dict[str, dict[int, float]] = {}
    seeds: dict[str, dict[int, int]] = {}
    for n in names:
        table[n], seeds[n] = {}, {}
        for s in severities:
            seed = _cell_seed(base, n, s)
            g = torch.Generator(device=x.device if x.device.type != "meta" else "cpu")
            g.manual_seed(seed)
            xc = corrupt(x, n, s, generator=g, preset=preset)
            table[n][s] = accuracy(model, xc, y, batch_size=batch_size)
            seeds[n][s] = seed
    cells = [v for row in table.values() for v in row.values()]
    return CorruptionAccuracy(
        table=table,
        mean=float(sum(cells) / len(cells)),
        per_corruption={n: float(sum(r.values()) / len(r)) for n, r in table.items()},
        clean=accuracy(model, x, y, batch_size=batch_size),
        severities=severities,
        preset=preset,
        seeds=seeds,
    )
