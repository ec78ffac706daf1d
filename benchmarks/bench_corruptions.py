"""Throughput of snnl.corruptions against a plain per-image numpy loop, same parameters.

A batch of 1,024 real 28 x 28 MNIST digits (mnist5k), severity 3 (MNIST-C constants).
For every corruption: images/s of ``corrupt`` on the whole batch (torch, vectorised
over the batch) and of a per-image loop written here in numpy / scipy.ndimage / PIL
the way the sources write it (hendrycks/robustness, google-research/mnist-c; scipy
instead of scikit-image / OpenCV, numpy loops instead of ImageMagick). Both in the same
run, one thread each (torch.set_num_threads(1); numpy's own code is single-threaded),
best of ``--repeats`` timings. Prints per-corruption ratios, their arithmetic and
geometric means.

    python benchmarks/bench_corruptions.py [--repeats 3] [--images 1024]
"""

from __future__ import annotations

import argparse
import io
import math
import time
from collections.abc import Callable

import numpy as np
import scipy.ndimage as ndi
import torch
from PIL import Image

from snnl.corruptions import corrupt, corruption_names, corruption_parameters
from snnl.corruptions.hendrycks import disk_kernel, frost_bank
from snnl.data import load_dataset

Baseline = Callable[[np.ndarray, dict, np.random.Generator], np.ndarray]

# ----------------------------------------------------------------------------- helpers


def gaussian(img: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0):
    """scikit-image ``gaussian`` on (C, H, W): per channel, no mixing."""
    return ndi.gaussian_filter(img, (0, sigma, sigma), mode=mode, truncate=truncate)


def clipped_zoom(img: np.ndarray, z: float) -> np.ndarray:
    h = img.shape[-1]
    ch = int(np.ceil(h / z))
    top = (h - ch) // 2
    out = ndi.zoom(img[:, top : top + ch, top : top + ch], (1, z, z), order=1)
    trim = (out.shape[-1] - h) // 2
    return out[:, trim : trim + h, trim : trim + h]


def motion_blur(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    width = int(2 * math.ceil(radius) + 1)
    k = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    k /= k.sum()
    a = math.radians(angle)
    _, h, w = img.shape
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    out = np.zeros_like(img)
    for j in range(width):
        oy, ox = math.ceil(j * math.sin(a) - 0.5), math.ceil(j * math.cos(a) - 0.5)
        out += k[j] * img[:, np.clip(rows + oy, 0, h - 1), np.clip(cols + ox, 0, w - 1)]
    return out


def plasma(mapsize: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    a = np.zeros((mapsize, mapsize))
    step, wibble = mapsize, 100.0
    while step >= 2:
        half = step // 2
        corner = a[0:mapsize:step, 0:mapsize:step]
        sq = corner + np.roll(corner, -1, axis=0)
        sq += np.roll(sq, -1, axis=1)
        a[half::step, half::step] = sq / 4 + wibble * rng.uniform(-wibble, wibble, sq.shape)
        dr, ul = a[half::step, half::step], a[0::step, 0::step]
        lt = dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1)
        a[0::step, half::step] = lt / 4 + wibble * rng.uniform(-wibble, wibble, lt.shape)
        tt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0)
        a[half::step, 0::step] = tt / 4 + wibble * rng.uniform(-wibble, wibble, tt.shape)
        step //= 2
        wibble /= decay
    a -= a.min()
    return a / a.max()


def warp(img: np.ndarray, m: np.ndarray, mode: str = "grid-constant") -> np.ndarray:
    """Sample img (C, H, W) at m @ (col, row, 1): scikit-image ``warp(inverse_map=m)``."""
    _, h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sc = m[0, 0] * xx + m[0, 1] * yy + m[0, 2]
    sr = m[1, 0] * xx + m[1, 1] * yy + m[1, 2]
    return np.stack([ndi.map_coordinates(c, [sr, sc], order=1, mode=mode) for c in img])


def centred(linear: np.ndarray, h: int, w: int) -> np.ndarray:
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    return np.c_[linear, c - linear @ c]


def line(c0, r0, c1, r1, size, width):
    if c1 == c0:
        return np.zeros((size, size))
    cc, rr = np.meshgrid(np.arange(size, dtype=float), np.arange(size, dtype=float), sparse=True)
    m = (r1 - r0) / (c1 - c0)
    dist = np.clip(np.abs(rr - (m * (cc - c0) + r0)), 0, width - 1e-10)
    out = np.clip(np.log(1 - dist / width) + 1, 0, 1)
    out[:, : int(np.floor(c0))] = 0
    out[:, int(np.ceil(c1)) :] = 0
    return out


# ----------------------------------------------------------------------------- baselines


def b_gaussian_noise(img, p, rng):
    return img + rng.normal(0, p["sigma"], img.shape)


def b_shot_noise(img, p, rng):
    return rng.poisson(img * p["photons"]) / p["photons"]


def b_impulse_noise(img, p, rng):
    flip = rng.random(img.shape) < p["amount"]
    salt = rng.random(img.shape) < 0.5
    out = img.copy()
    out[flip & salt] = 1.0
    out[flip & ~salt] = 0.0
    return out


def b_defocus_blur(img, p, rng):
    kernel = disk_kernel(p["radius"], p["alias_blur"]).numpy()
    return np.stack([ndi.correlate(c, kernel, mode="mirror") for c in img])


def b_glass_blur(img, p, rng):
    d = p["max_delta"]
    x = np.floor(np.clip(gaussian(img, p["sigma"]), 0, 1) * 255) / 255
    _, h, w = x.shape
    for _ in range(p["iterations"]):
        for r in range(h - d, d, -1):
            for q in range(w - d, d, -1):
                if rng.random() < p["swap_probability"]:
                    dx, dy = rng.integers(-d, d, size=2)
                    rr, qq = r + dy, q + dx
                    x[:, r, q], x[:, rr, qq] = x[:, rr, qq], x[:, r, q].copy()
    return gaussian(x, p["sigma"])


def b_motion_blur(img, p, rng):
    return motion_blur(img, p["radius"], p["sigma"], rng.uniform(-45, 45))


def b_zoom_blur(img, p, rng):
    factors = np.arange(1, p["zoom_stop"], p["zoom_step"])
    return (img + sum(clipped_zoom(img, z) for z in factors)) / (len(factors) + 1)


def b_snow(img, p, rng):
    layer = rng.normal(p["loc"], p["scale"], (1, *img.shape[1:]))
    layer = clipped_zoom(layer, p["zoom"])
    layer[layer < p["threshold"]] = 0
    layer = np.floor(np.clip(layer, 0, 1) * 255) / 255
    layer = motion_blur(layer, p["blur_radius"], p["blur_sigma"], rng.uniform(-135, -45))
    layer = np.round(layer * 255) / 255
    x = p["blend"] * img + (1 - p["blend"]) * np.maximum(img, img * 1.5 + 0.5)
    return x + layer + np.rot90(layer, k=2, axes=(1, 2))


BANK: dict[tuple[int, int], np.ndarray] = {}


def b_frost(img, p, rng):
    _, h, w = img.shape
    bank = BANK.setdefault((h, w), frost_bank(h, w, img.shape[0]).numpy())
    i = rng.integers(5)
    r, c = rng.integers(0, bank.shape[-2] - h), rng.integers(0, bank.shape[-1] - w)
    return p["image_weight"] * img + p["frost_weight"] * bank[i, :, r : r + h, c : c + w]


def b_fog(img, p, rng):
    peak = img.max()
    x = img + p["amount"] * plasma(p["mapsize"], p["decay"], rng)[: img.shape[1], : img.shape[2]]
    return x * peak / (peak + p["amount"])


def b_brightness(img, p, rng):
    if img.shape[0] == 1:  # grey: V = x (the same shortcut as the torch code)
        return img + p["delta"]
    v = img.max(axis=0, keepdims=True)
    v_new = np.minimum(v + p["delta"], 1)
    return np.where(v > 0, img * v_new / np.maximum(v, 1e-300), v_new)


def b_contrast(img, p, rng):
    means = img.mean(axis=(1, 2), keepdims=True)
    return (img - means) * p["factor"] + means


def b_elastic_transform(img, p, rng):
    _, h, w = img.shape
    centre = np.array([h // 2, w // 2], dtype=float)
    s = min(h, w) // 3
    pts1 = np.array([centre + s, [centre[0] + s, centre[1] - s], centre - s])
    pts2 = pts1 + rng.uniform(-p["affine_shift"], p["affine_shift"], pts1.shape)
    m_inv = np.linalg.solve(np.c_[pts2, np.ones(3)], pts1).T  # destination -> source
    modes = {"mirror": "mirror", "zeros": "grid-constant"}
    x = warp(img, m_inv, modes[p["affine_border"]])
    dx = ndi.gaussian_filter(rng.uniform(-1, 1, (h, w)), p["sigma"], mode="reflect", truncate=3)
    dy = ndi.gaussian_filter(rng.uniform(-1, 1, (h, w)), p["sigma"], mode="reflect", truncate=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    coords = [yy + p["alpha"] * dy, xx + p["alpha"] * dx]
    mode = p["displacement_border"]
    return np.stack([ndi.map_coordinates(c, coords, order=1, mode=mode) for c in x])


def b_pixelate(img, p, rng):
    _, h, w = img.shape
    small = (int(w * p["factor"]), int(h * p["factor"]))
    out = []
    for c in np.floor(np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8):  # 8-bit, as the sources
        im = Image.fromarray(c).resize(small, Image.BOX).resize((w, h), Image.BOX)
        out.append(np.asarray(im) / 255.0)
    return np.stack(out)


def b_jpeg_compression(img, p, rng):
    u8 = np.floor(np.clip(img[0], 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, "JPEG", quality=p["quality"])
    buf.seek(0)
    return np.asarray(Image.open(buf), dtype=np.float64)[None] / 255


def _sign(rng):
    return rng.choice([-1, 1])


def b_shear(img, p, rng):
    s = p["shear"] * _sign(rng)
    return warp(img, centred(np.array([[1, -math.sin(s)], [0, math.cos(s)]]), *img.shape[1:]))


def b_rotate(img, p, rng):
    a = p["angle"] * _sign(rng)
    m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return warp(img, centred(m, *img.shape[1:]))


def b_scale(img, p, rng):
    return warp(img, centred(np.eye(2) * p["factor"], *img.shape[1:]))


def b_translate(img, p, rng):
    t = p["shift"] * np.array([_sign(rng), _sign(rng)])
    return warp(img, np.c_[np.eye(2), t])


def b_stripe(img, p, rng):
    w = img.shape[-1]
    band = max(1, round(w * p["band"]))
    out = img.copy()
    for sl in (slice(0, band), slice(w - band, w)):
        out[..., sl] = img[..., sl] + p["opacity"] * (1 - 2 * img[..., sl])
    return out


def b_dotted_line(img, p, rng):
    size = img.shape[-1]
    total = np.zeros(img.shape[1:])
    cols = np.arange(size)
    for _ in range(p["lines"]):
        r0, r1 = rng.integers(0, size - 1, size=2)
        total += line(0, r0, size - 1, r1, size, p["width"]) * ((cols // p["dash"]) % 2 == 1)
    return img + total


def b_zigzag(img, p, rng):
    size = img.shape[-1]
    a = b = p["amplitude"]
    c0, c1 = p["start"], p["stop"]
    total = np.zeros(img.shape[1:])
    for _ in range(p["zigzags"]):
        r0 = rng.integers(0, size - 1)
        r1 = r0 + rng.integers(-p["drift"], p["drift"])
        theta = np.arctan((r1 - r0) / (c1 - c0))
        d = (c1 - c0) / np.cos(theta)
        pts = [(0.0, 0.0)]
        for i in range(int((d - a) // (2 * a)) + 1):
            r_i = (-1) ** i * b
            pts.append(((2 * i + 1) * a, r_i))
        max_c = (2 * a) * (d // (2 * a))
        if d != max_c:
            pts.append((d, r_i / (2 * (d - max_c))))
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        cs, rs = rot @ np.array(pts).T
        cs, rs = cs + c0, rs + r0
        for i in range(1, len(cs)):
            total += line(cs[i - 1], rs[i - 1], cs[i], rs[i], size, p["width"])
    return img + total


def b_canny_edges(img, p, rng):
    """scikit-image 0.15 canny with scipy (interpolated non-maximum suppression), blended in."""
    g = img[0]
    h, w = g.shape
    bleed = ndi.gaussian_filter(np.ones_like(g), p["sigma"], mode="constant")
    s = ndi.gaussian_filter(g, p["sigma"], mode="constant") / (bleed + np.finfo(float).eps)
    gi, gj = ndi.sobel(s, axis=0), ndi.sobel(s, axis=1)
    ai, aj = np.abs(gi), np.abs(gj)
    mag = np.hypot(gi, gj)
    along_i = ai >= aj
    si, sj = np.sign(gi).astype(int), np.sign(gj).astype(int)
    pi, pj = np.where(along_i, si, 0), np.where(along_i, 0, sj)
    eps = np.finfo(float).eps
    wt = np.where(along_i, aj / np.maximum(ai, eps), ai / np.maximum(aj, eps))
    rows, cols = np.mgrid[0:h, 0:w]

    def at(di, dj):
        return mag[np.clip(rows + di, 0, h - 1), np.clip(cols + dj, 0, w - 1)]

    ahead = (1 - wt) * at(pi, pj) + wt * at(si, sj)
    behind = (1 - wt) * at(-pi, -pj) + wt * at(-si, -sj)
    inner = np.zeros((h, w), bool)
    inner[1:-1, 1:-1] = True
    low = inner & (mag > 0) & (ahead <= mag) & (behind <= mag) & (mag >= p["low"])
    labels, count = ndi.label(low, np.ones((3, 3), bool))
    good = np.zeros(count + 1, bool)
    good[np.unique(labels[low & (mag >= p["high"])])] = True
    good[0] = False
    return img + p["opacity"] * (good[labels][None] - img)


def b_spatter(img, p, rng):
    liquid = gaussian(rng.normal(p["loc"], p["scale"], (1, *img.shape[1:])), p["sigma"])
    mask = gaussian((liquid > p["threshold"]).astype(float), p["mask_sigma"])
    mask[mask < 0.8] = 0
    return img * (1 - mask) + 63 / 255 * mask


BASELINES: dict[str, Baseline] = {n: globals()[f"b_{n}"] for n in corruption_names()}


# ----------------------------------------------------------------------------- timing


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--severity", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset("mnist5k")
    x = torch.cat([ds.x_test, ds.x_train])[: args.images]
    images = x.double().numpy()
    n = x.shape[0]
    print(f"batch: {n} x {tuple(x.shape[1:])} (mnist5k), severity {args.severity}, 1 thread")
    print(f"{'corruption':<18} {'torch img/s':>12} {'numpy img/s':>12} {'ratio':>8}")
    ratios = []
    for name in corruption_names():
        p = corruption_parameters(name, args.severity, (28, 28))
        corrupt(x[:8], name, args.severity, generator=torch.Generator().manual_seed(0))  # warm
        BASELINES[name](images[0], p, np.random.default_rng(0))
        t_torch = best_of(
            lambda name=name: corrupt(
                x, name, args.severity, generator=torch.Generator().manual_seed(0)
            ),
            args.repeats,
        )

        def loop(name=name, p=p):
            rng = np.random.default_rng(0)
            return [np.clip(BASELINES[name](img, p, rng), 0, 1) for img in images]

        t_numpy = best_of(loop, args.repeats)
        ratios.append(t_numpy / t_torch)
        print(f"{name:<18} {n / t_torch:12.0f} {n / t_numpy:12.0f} {ratios[-1]:7.1f}x")
    arithmetic = sum(ratios) / len(ratios)
    geometric = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"mean ratio over {len(ratios)} corruptions: arithmetic {arithmetic:.1f}x, "
          f"geometric {geometric:.1f}x (target: >= 20x on average)")  # fmt: skip


if __name__ == "__main__":
    main()
