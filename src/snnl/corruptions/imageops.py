"""Image primitives of the corruptions, in torch, batched over (N, C, H, W).

Each one is the operation a source of CIFAR-10-C or MNIST-C calls from a library,
written to that library's definition: scipy.ndimage's Gaussian filter and border
modes, OpenCV's ``filter2D`` and warps, scipy's ``map_coordinates`` and ``zoom``,
ImageMagick's motion blur, PIL's BOX resampling, scikit-image's Canny detector, and
the sources' diamond-square plasma fractal. :class:`RandomSource` takes every random
draw of a corruption from one ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: The constants of one corruption at one severity (see ``catalogue.corruption_parameters``).
Params = dict[str, Any]


class RandomSource:
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


def border_index(n: int, before: int, after: int, mode: str, device: torch.device) -> Tensor:
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


def pad(x: Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> Tensor:
    """Pad the last two dims; ``mode`` as in :func:`border_index` or ``"constant"`` (zeros)."""
    if mode == "constant":
        return F.pad(x, (left, right, top, bottom))
    h, w = x.shape[-2:]
    rows = border_index(h, top, bottom, mode, x.device)
    cols = border_index(w, left, right, mode, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def gaussian_kernel1d(sigma: float, truncate: float, dtype, device) -> Tensor:
    """scipy.ndimage's kernel: radius int(truncate * sigma + 0.5), exp(-x^2 / 2 sigma^2)."""
    radius = int(truncate * float(sigma) + 0.5)
    if sigma <= 0 or radius == 0:
        return torch.ones(1, dtype=dtype, device=device)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def axis_matrix(n: int, kernel: Tensor, mode: str) -> Tensor:
    """(n, n) float64 A with A @ v = the correlation of v (length n) with ``kernel``
    (odd length, centred) under border ``mode`` (as :func:`pad`)."""
    k = kernel.detach().to("cpu", torch.float64)
    r = k.numel() // 2
    out = torch.arange(n).view(-1, 1)
    taps = torch.arange(k.numel()).view(1, -1)
    if mode == "constant":
        src = out + taps - r
        keep = (src >= 0) & (src < n)
    else:
        src = border_index(n, r, r, mode, torch.device("cpu"))[out + taps]
        keep = torch.ones_like(src, dtype=torch.bool)
    a = torch.zeros(n, n, dtype=torch.float64)
    rows = out.expand_as(src)[keep]
    weights = k.view(1, -1).expand_as(src)[keep]
    return a.index_put_((rows, src[keep]), weights, accumulate=True)


def separable(x: Tensor, k_rows: Tensor, k_cols: Tensor, mode: str) -> Tensor:
    """Correlate every (N, C) plane with k_rows along H and k_cols along W (two matmuls)."""
    h, w = x.shape[-2:]
    a_rows = axis_matrix(h, k_rows, mode).to(device=x.device, dtype=x.dtype)
    a_cols = axis_matrix(w, k_cols, mode).to(device=x.device, dtype=x.dtype)
    return a_rows @ x @ a_cols.T


def gaussian_blur(x: Tensor, sigma: float, *, truncate: float = 4.0, mode: str = "nearest"):
    """scipy.ndimage.gaussian_filter over H and W (scikit-image's ``gaussian`` defaults:
    truncate 4, mode "nearest"; channels are not mixed)."""
    k = gaussian_kernel1d(sigma, truncate, torch.float64, torch.device("cpu"))
    return separable(x, k, k, mode)


def filter2d(x: Tensor, kernel: Tensor, mode: str = "mirror") -> Tensor:
    """OpenCV ``filter2D`` (correlation, odd kernel, anchor at the centre) per plane:
    the sum over kernel rows i of (rows shifted by i - r) @ (that row's axis matrix)."""
    h, w = x.shape[-2:]
    kh = kernel.shape[0]
    r = kh // 2
    rows = border_index(h, r, r, mode, x.device) if mode != "constant" else None
    out = torch.zeros_like(x)
    for i in range(kh):
        if not bool(kernel[i].any()):
            continue
        a_cols = axis_matrix(w, kernel[i], mode).to(device=x.device, dtype=x.dtype)
        if rows is not None:
            shifted = x.index_select(-2, rows[i : i + h])
        else:
            shifted = pad(x, r, r, 0, 0, "constant")[..., i : i + h, :]
        out = out + shifted @ a_cols.T
    return out


def sample(x: Tensor, rows: Tensor, cols: Tensor, border: str) -> Tensor:
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


def pixel_grid(n: int, h: int, w: int, like: Tensor) -> tuple[Tensor, Tensor]:
    rows = torch.arange(h, dtype=like.dtype, device=like.device).view(1, h, 1).expand(n, h, w)
    cols = torch.arange(w, dtype=like.dtype, device=like.device).view(1, 1, w).expand(n, h, w)
    return rows, cols


def luminance(x: Tensor) -> Tensor:
    """(N, 1, H, W): ITU-R 601 luma of colour images (OpenCV RGB2GRAY), x itself if grey."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)


def clipped_zoom(x: Tensor, factor: float) -> Tensor:
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


def quantise_floor(x: Tensor) -> Tensor:
    """numpy's ``np.uint8(v * 255) / 255`` (truncation) for v in [0, 1]."""
    return torch.floor(x.clamp(0, 1) * 255) / 255


def motion_blur(x: Tensor, radius: float, sigma: float, angles_deg: Tensor) -> Tensor:
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


def plasma(n: int, mapsize: int, decay: float, rnd: RandomSource) -> Tensor:
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


def box_matrix(n_in: int, n_out: int) -> Tensor:
    """PIL's BOX resampling weights (Pillow ``precompute_coeffs``) as an (out, in) float64
    matrix: output o averages the inputs i with (i - c + 0.5) / s in (-0.5, 0.5],
    c = (o + 0.5) n_in / n_out, s = max(n_in / n_out, 1).

    >>> box_matrix(4, 2)
    tensor([[0.5000, 0.5000, 0.0000, 0.0000],
            [0.0000, 0.0000, 0.5000, 0.5000]], dtype=torch.float64)
    """
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    ss = 1.0 / filterscale  # Pillow multiplies by the reciprocal
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        for i in range(lo, hi):
            t = (i - centre + 0.5) * ss
            if -0.5 < t <= 0.5:
                a[o, i] = 1.0
        total = a[o].sum()
        if total > 0:
            a[o] /= total
    return a


#: Pillow's fixed point for resampling 8-bit bands (``PRECISION_BITS`` = 32 - 8 - 2).
PIL_PRECISION_BITS = 22


def box_resize_8bit(q: Tensor, height: int, width: int) -> Tensor:
    """PIL ``Image.resize((width, height), Image.BOX)`` of 8-bit images, bit-exact.

    ``q``: (N, C, H, W) integer values 0..255 in a float dtype. As Pillow's
    ``ImagingResample`` for 8-bit bands: a horizontal pass, then a vertical one, each
    with the weights of :func:`box_matrix` in fixed point, k = floor(0.5 + w 2^22), and
    each rounded back to 8 bits: clip((sum_i k_i v_i + 2^21) >> 22, 0, 255). Computed in
    float64, where these integer sums (below 2^31) are exact. Returns (N, C, height,
    width) float64 integers 0..255.

    >>> q = torch.tensor([[[[0.0, 1.0, 2.0, 255.0]]]])
    >>> box_resize_8bit(q, 1, 2)  # (0 + 1) / 2 rounds half up; (2 + 255) / 2 = 128.5 too
    tensor([[[[  1., 129.]]]], dtype=torch.float64)
    """
    one = float(1 << PIL_PRECISION_BITS)

    def fixed(n_in: int, n_out: int) -> Tensor:
        return torch.floor(box_matrix(n_in, n_out) * one + 0.5).to(q.device)

    work = q.to(torch.float64)
    work = torch.floor((work @ fixed(q.shape[-1], width).T + one / 2) / one).clamp_(0, 255)
    return torch.floor((fixed(q.shape[-2], height) @ work + one / 2) / one).clamp_(0, 255)


def canny(grey: Tensor, sigma: float, low: float, high: float) -> Tensor:
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
    k = gaussian_kernel1d(sigma, 4.0, torch.float64, torch.device("cpu"))
    smoothed = separable(g, k, k, "constant")
    bleed = separable(torch.ones_like(g[:1]), k, k, "constant") + eps
    s = smoothed / bleed
    deriv = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    gi = separable(s, deriv, smooth, "reflect")[:, 0]  # d/d row
    gj = separable(s, smooth, deriv, "reflect")[:, 0]  # d/d column
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
