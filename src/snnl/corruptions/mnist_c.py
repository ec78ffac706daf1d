"""The MNIST-C corruptions (Mu & Gilmer 2019) that are not among CIFAR-10-C's 15, as
f(x, params, random) (the contract of :mod:`snnl.corruptions.hendrycks`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from snnl.corruptions import imageops as ops
from snnl.corruptions.imageops import Params, RandomSource


def _affine(x: Tensor, matrices: Tensor) -> Tensor:
    """scikit-image ``warp(x, inverse_map=A)``: output pixel (col, row) samples the input
    at A @ (col, row, 1), bilinear, 0 outside. ``matrices`` (N, 2, 3) in (x=col, y=row)."""
    n, _, h, w = x.shape
    rows, cols = ops.pixel_grid(n, h, w, x)
    m = matrices.to(x.dtype)
    src_c = m[:, 0, 0, None, None] * cols + m[:, 0, 1, None, None] * rows + m[:, 0, 2, None, None]
    src_r = m[:, 1, 0, None, None] * cols + m[:, 1, 1, None, None] * rows + m[:, 1, 2, None, None]
    return ops.sample(x, src_r, src_c, "zeros")


def _centred(linear: Tensor, h: int, w: int) -> Tensor:
    """(N, 2, 2) -> (N, 2, 3) with the translation that keeps the image centre fixed."""
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=linear.dtype, device=linear.device)
    t = centre - linear @ centre
    return torch.cat([linear, t.unsqueeze(-1)], dim=2)


def shear(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    n, _, h, w = x.shape
    s = p["shear"] * rnd.signs((n,)).to(torch.float64)
    linear = torch.zeros(n, 2, 2, dtype=torch.float64, device=x.device)
    linear[:, 0, 0] = 1.0
    linear[:, 0, 1] = -torch.sin(s)
    linear[:, 1, 1] = torch.cos(s)
    return _affine(x, _centred(linear, h, w))


def rotate(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
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


def scale(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    n, _, h, w = x.shape
    linear = torch.eye(2, dtype=torch.float64, device=x.device).expand(n, 2, 2) * p["factor"]
    return _affine(x, _centred(linear, h, w))


def translate(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    n = x.shape[0]
    shift = p["shift"] * rnd.signs((n, 2)).to(torch.float64)
    m = torch.zeros(n, 2, 3, dtype=torch.float64, device=x.device)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    m[:, :, 2] = shift
    return _affine(x, m)


def stripe(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
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


def dotted_line(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
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


def _zigzag_points(n: int, h: int, p: Params, rnd: RandomSource, like: Tensor):
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


def zigzag(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
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


def canny_edges(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    edges = ops.canny(ops.luminance(x), p["sigma"], p["low"], p["high"]).to(x.dtype)
    return x + p["opacity"] * (edges - x)


def spatter(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    """MNIST-C's mud spatter: liquid = gaussian(N(loc, scale), sigma), kept above the
    threshold; mask = gaussian(liquid > threshold, mask_sigma), zero below 0.8; the image
    is covered by mud colour (63/255 grey, or CIFAR-10-C's (63, 42, 20)/255) by the mask."""
    n, c, h, w = x.shape
    liquid = ops.gaussian_blur(rnd.normal((n, 1, h, w), p["loc"], p["scale"]), p["sigma"])
    mask = ops.gaussian_blur((liquid > p["threshold"]).to(x.dtype), p["mask_sigma"])
    mask = torch.where(mask < 0.8, torch.zeros_like(mask), mask)
    colour = (63.0,) if c == 1 else (63.0, 42.0, 20.0)
    mud = torch.tensor(colour, dtype=x.dtype, device=x.device).view(1, c, 1, 1) / 255
    return x * (1 - mask) + mud * mask
