"""The 15 corruptions of Hendrycks & Dietterich (CIFAR-10-C), as f(x, params, random).

Each takes images (N, C, H, W) in the working dtype, the constants of
``catalogue.corruption_parameters`` and a :class:`~snnl.corruptions.imageops.RandomSource`,
and returns the corrupted images unclipped: :func:`snnl.corruptions.corrupt` validates,
picks the constants and clamps.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from snnl.corruptions import imageops as ops
from snnl.corruptions.imageops import Params, RandomSource
from snnl.corruptions.jpeg import jpeg_roundtrip


def gaussian_noise(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    return x + rnd.normal(x.shape, 0.0, p["sigma"])


def shot_noise(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    c = p["photons"]
    return rnd.poisson(x * c) / c


def impulse_noise(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    """scikit-image ``random_noise(mode="s&p")``: each value flips with probability
    ``amount``, to 0 or 1 with equal odds (channels independently)."""
    u = rnd.uniform(x.shape)  # one draw: pepper below amount / 2, salt up to amount
    half = p["amount"] / 2
    out = torch.where(u < half, torch.zeros_like(x), x)
    return torch.where((u >= half) & (u < p["amount"]), torch.ones_like(x), out)


def disk_kernel(radius: float, alias_blur: float) -> Tensor:
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
    k = ops.separable(disk.view(1, 1, *disk.shape), g, g, "mirror")[0, 0]
    nonzero = torch.nonzero(k.abs() > 0)
    r = int((nonzero - half).abs().max()) if nonzero.numel() else 0
    return k[half - r : half + r + 1, half - r : half + r + 1]


def defocus_blur(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    return ops.filter2d(x, disk_kernel(p["radius"], p["alias_blur"]), "mirror")


#: How glass_blur's shuffle moves a pixel (its ``swap`` parameter; see :func:`glass_blur`):
#: "published" as the published code does, "swap" an exchange of every pair.
GLASS_SWAPS: tuple[str, ...] = ("published", "swap")
#: Along which axes glass_blur's two Gaussian blurs run (its ``blur_axes`` parameter; see
#: :func:`glass_blur`): "published" as the published code does, along H only for grey
#: images and along H and W for colour ones; "both" along H and W always.
GLASS_BLUR_AXES: tuple[str, ...] = ("published", "both")


def _glass_swaps(
    x: Tensor, delta: int, iterations: int, probability: float, rnd: RandomSource, exchange: bool
) -> Tensor:
    """The sources' local pixel shuffle, in their order, for the whole batch at once.

    For each iteration, for h = H - delta down to delta + 1 and w = W - delta down to
    delta + 1, move pixel (h + dy, w + dx) to (h, w), dx, dy drawn from [-delta, delta)
    (numpy ``randint``'s half-open range); with ``exchange`` the pixel at (h, w) goes to
    (h + dy, w + dx) (a swap), else that pixel keeps its value (a copy). MNIST-C moves at
    each position only with probability 1/2. The moves are applied to an index array
    (CPU, numpy), one position at a time for every image at once; the pixels are then
    gathered once through the resulting index, on the input's device.
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
        if exchange:
            perm[b] = kept
    index = torch.from_numpy(perm.reshape(h * w, n).T.copy()).to(x.device)
    index = index.view(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)


def glass_blur(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    """Gaussian blur, 8-bit truncation, the sources' local pixel shuffle, Gaussian blur.

    ``p["swap"]``: "published" (the table's) moves pixels as the published code does, a
    copy for colour images and a swap for grey ones; "swap" exchanges every pair.
    ``p["blur_axes"]``: "published" (the table's) blurs as the published code does, along
    H only (scipy ``gaussian_filter`` sigma (sigma, 0)) for grey images and along H and W
    for colour ones; "both" blurs along H and W.
    """
    # Why "published" copies colour pixels: the published loop (make_cifar_c.py,
    # make_imagenet_c.py, mnist-c's corruptions.py) "swaps" with
    #     x[h, w], x[h', w'] = x[h', w'], x[h, w]
    # on one image. A colour image is an (H, W, 3) array, so both right-hand items are
    # NumPy views, not copies: the first assignment copies pixel (h', w') into (h, w) and
    # the second writes that same value back into (h', w'). The pixel is copied and the
    # one at (h, w) is lost. A grey (H, W) array yields scalars, and there the pixels do
    # swap. CIFAR-10-C and ImageNet-C were made by this code and users compare with their
    # published numbers, so the default does the same; the true swap stays selectable.
    exchange = p["swap"] == "swap" or x.shape[1] == 1
    # Why "published" blurs grey images along H only: the sources blur with scikit-image's
    #     gaussian(x, sigma=sigma, multichannel=True)
    # which takes the last axis as channels and gives it sigma 0 (scikit-image 0.14-0.16
    # append a 0 to the sigmas; 0.19's channel_axis=-1 does the same). For a colour (H, W, 3)
    # array that is the colour axis; for a grey (H, W) array, as MNIST-C holds its digits,
    # it is W, so the filter is scipy's gaussian_filter(x, (sigma, 0)): a vertical blur.
    # MNIST-C was made by this code and users compare with its published numbers, so the
    # default does the same; the blur along both axes stays selectable.
    k = ops.gaussian_kernel1d(p["sigma"], 4.0, torch.float64, torch.device("cpu"))
    along_w = p["blur_axes"] == "both" or x.shape[1] == 3
    k_cols = k if along_w else torch.ones(1, dtype=torch.float64)
    y = ops.quantise_floor(ops.separable(x, k, k_cols, "nearest"))
    y = _glass_swaps(y, p["max_delta"], p["iterations"], p["swap_probability"], rnd, exchange)
    return ops.separable(y, k, k_cols, "nearest")


def motion_blur(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    angles = rnd.uniform((x.shape[0],), -45.0, 45.0)
    return ops.motion_blur(x, p["radius"], p["sigma"], angles)


def _zoom_factors(p: Params) -> np.ndarray:
    return np.arange(1.0, p["zoom_stop"], p["zoom_step"])


def zoom_blur(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    factors = _zoom_factors(p)
    out = x.clone()
    for z in factors:
        out += ops.clipped_zoom(x, float(z))
    return out / (len(factors) + 1)


def snow(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    n, _, h, w = x.shape
    layer = rnd.normal((n, 1, h, w), p["loc"], p["scale"])
    layer = ops.clipped_zoom(layer, p["zoom"])
    layer = torch.where(layer < p["threshold"], torch.zeros_like(layer), layer)
    layer = ops.quantise_floor(layer)  # the source writes the layer as an 8-bit PNG
    angles = rnd.uniform((n,), -135.0, -45.0)
    layer = ops.motion_blur(layer, p["blur_radius"], p["blur_sigma"], angles)
    layer = torch.round(layer * 255) / 255  # ImageMagick's 8-bit result
    blend = p["blend"]
    x = blend * x + (1 - blend) * torch.maximum(x, ops.luminance(x) * 1.5 + 0.5)
    return x + layer + torch.flip(layer, dims=(-2, -1))


# The frost photographs of the sources are replaced by procedural textures.
_FROST_TEXTURES = 5
_FROST_SEED = 0


def frost_bank(h: int, w: int, channels: int) -> Tensor:
    """The bank of :func:`frost_grey_bank`, tinted ice blue (0.86, 0.93, 1.0) for colour."""
    bank = frost_grey_bank(h, w)
    if channels == 3:
        bank = bank * torch.tensor([0.86, 0.93, 1.0], dtype=torch.float64).view(1, 3, 1, 1)
    return bank


@functools.lru_cache(maxsize=16)
def frost_grey_bank(h: int, w: int) -> Tensor:
    """Five procedural frost textures (float64, CPU), each (1, 3h, 3w), in [0, 1].

    Haze: a plasma fractal scaled to [0, 0.3]. Crystals: straight needles (length
    0.1 to 0.5 of the image side, Gaussian profile of width 0.6 px at 28 px scale,
    brightness 0.3 to 1) along the three axes of hexagonal ice (a random base angle
    per texture, +-5 degrees of jitter), each with two side branches at +-60 degrees
    of half its length; texture = clip(haze + brightest needle at each pixel, 0, 1).
    Fixed seed: the bank is the same every call, as the source's image files are.
    """
    g = torch.Generator().manual_seed(_FROST_SEED)
    rnd = RandomSource(g, torch.device("cpu"), torch.float64)
    side = min(h, w)
    scale = side / 28
    th, tw = 3 * h, 3 * w
    mapsize = 1 << max(th, tw).bit_length()
    haze = 0.3 * ops.plasma(_FROST_TEXTURES, mapsize, 2.0, rnd)[:, :th, :tw]
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


def frost(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    n, c, h, w = x.shape
    bank = frost_bank(h, w, c).to(device=x.device, dtype=x.dtype)
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


def fog(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    n, _, h, w = x.shape
    m = p["mapsize"]
    per_chunk = max(1, (1 << 22) // (m * m))
    maps = [
        ops.plasma(min(per_chunk, n - s), m, p["decay"], rnd)[:, :h, :w]
        for s in range(0, n, per_chunk)
    ]
    fog = torch.cat(maps).unsqueeze(1)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    amount = p["amount"]
    return (x + amount * fog) * peak / (peak + amount)


def brightness(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    """V + delta in HSV (V = max over channels), hue and saturation kept:
    rgb * V' / V, or grey V' where V = 0 (scikit-image's rgb2hsv / hsv2rgb)."""
    if x.shape[1] == 1:  # grey: V = x, the same formula
        return x + p["delta"]
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + p["delta"]).clamp(max=1.0)
    scaled = x * (v_new / v.clamp(min=torch.finfo(x.dtype).tiny))
    return torch.where(v > 0, scaled, v_new.expand_as(x))


def contrast(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * p["factor"] + means


def elastic_transform(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
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
    rows, cols = ops.pixel_grid(n, h, w, x)
    r64, c64 = rows.to(torch.float64), cols.to(torch.float64)
    src_x = m_inv[:, 0, 0, None, None] * c64 + m_inv[:, 1, 0, None, None] * r64
    src_x = src_x + m_inv[:, 2, 0, None, None]
    src_y = m_inv[:, 0, 1, None, None] * c64 + m_inv[:, 1, 1, None, None] * r64
    src_y = src_y + m_inv[:, 2, 1, None, None]
    x = ops.sample(x, src_y.to(x.dtype), src_x.to(x.dtype), p["affine_border"])
    fields = rnd.uniform((n, 2, h, w), -1.0, 1.0).to(x.dtype)
    fields = ops.gaussian_blur(fields, p["sigma"], truncate=3.0, mode="reflect") * p["alpha"]
    return ops.sample(x, rows + fields[:, 1], cols + fields[:, 0], p["displacement_border"])


def pixelate(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    """PIL BOX resize to int(side * factor) and back, in 8 bits as the sources do: they
    resize a uint8 PIL image, so the input is rounded to 8 bits (half up, as for JPEG)
    and each pass of each resize rounds to 8 bits (:func:`imageops.box_resize_8bit`)."""
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * p["factor"])), max(1, int(w * p["factor"]))
    q = torch.floor(x.to(torch.float64).clamp(0, 1) * 255 + 0.5)
    q = ops.box_resize_8bit(ops.box_resize_8bit(q, sh, sw), h, w)
    return (q / 255).to(x.dtype)


def jpeg_compression(x: Tensor, p: Params, rnd: RandomSource) -> Tensor:
    return jpeg_roundtrip(x, p["quality"])
