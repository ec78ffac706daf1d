"""The table of corruptions: their functions, constants per severity and preset, and
:func:`corrupt`, which applies one of them (see the package docstring).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from snnl._checks import check_choice
from snnl.corruptions import hendrycks, mnist_c
from snnl.corruptions.imageops import Params, RandomSource

#: The five severities every corruption has.
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: Constant tables: CIFAR-10-C (reference side 32) and MNIST-C (reference side 28).
PRESETS: tuple[str, ...] = ("cifar10-c", "mnist-c")
_REFERENCE_SIDE = {"cifar10-c": 32, "mnist-c": 28}
_MIN_SIDE = 8


class Spec(NamedTuple):
    """One corruption: its function, parameter names and 5-level tables, which parameters
    scale with the image side, its groups and description."""

    fn: Callable[[Tensor, Params, RandomSource], Tensor]
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
SPECS: dict[str, Spec] = {
    "gaussian_noise": Spec(
        hendrycks.gaussian_noise, ("sigma",),
        _same(0.04, 0.06, 0.08, 0.09, 0.10), _same(0.08, 0.12, 0.18, 0.26, 0.38),
        note="x + N(0, sigma^2) per value",
    ),
    "shot_noise": Spec(
        hendrycks.shot_noise, ("photons",),
        _same(500, 250, 100, 75, 50), _same(60, 25, 12, 5, 3),
        groups=_HM, mnist_c_severity=5, note="Poisson(x * photons) / photons",
    ),
    "impulse_noise": Spec(
        hendrycks.impulse_noise, ("amount",),
        _same(0.01, 0.02, 0.03, 0.05, 0.07), _same(0.03, 0.06, 0.09, 0.17, 0.27),
        groups=_HM, mnist_c_severity=4, note="salt and pepper on a fraction amount of values",
    ),
    "defocus_blur": Spec(
        hendrycks.defocus_blur, ("radius", "alias_blur"),
        ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        spatial=("radius", "alias_blur"), note="anti-aliased disk kernel, REFLECT_101 border",
    ),
    "glass_blur": Spec(
        hendrycks.glass_blur, ("sigma", "max_delta", "iterations", "swap_probability"),
        ((0.05, 1, 1, 1.0), (0.25, 1, 1, 1.0), (0.4, 1, 1, 1.0), (0.25, 1, 2, 1.0),
         (0.4, 1, 2, 1.0)),
        ((0.7, 1, 2, 0.5), (0.9, 2, 1, 0.5), (1, 2, 3, 0.5), (1.1, 3, 2, 0.5), (1.5, 4, 2, 0.5)),
        spatial=("sigma", "max_delta"), integer=("max_delta",), groups=_HM, mnist_c_severity=1,
        note="blur, 8-bit truncation, sequential local pixel swaps, blur (as published: "
             "colour pixels copied, grey images blurred along H only)",
        cifar_fixed=(("swap", "published"), ("blur_axes", "published")),
        mnist_fixed=(("swap", "published"), ("blur_axes", "published")),
    ),
    "motion_blur": Spec(
        hendrycks.motion_blur, ("radius", "sigma"),
        ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        spatial=("radius", "sigma"), groups=_HM, mnist_c_severity=1,
        note="ImageMagick one-sided Gaussian streak, angle U(-45, 45) degrees per image",
    ),
    "zoom_blur": Spec(
        hendrycks.zoom_blur, ("zoom_stop", "zoom_step"),
        ((1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)),
        ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)),
        note="mean of x and its centre zooms by numpy.arange(1, zoom_stop, zoom_step)",
    ),
    "snow": Spec(
        hendrycks.snow, ("loc", "scale", "zoom", "threshold", "blur_radius", "blur_sigma", "blend"),
        ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
         (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
         (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
        ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
         (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
         (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
        spatial=("blur_radius", "blur_sigma"),
        note="zoomed thresholded noise, motion blurred (angle U(-135, -45)), added twice",
    ),
    "frost": Spec(
        hendrycks.frost, ("image_weight", "frost_weight"),
        ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        note="procedural frost textures (fixed seed), random texture and crop per image",
    ),
    "fog": Spec(
        hendrycks.fog, ("amount", "decay", "mapsize"),
        ((0.2, 3, 32), (0.5, 3, 32), (0.75, 2.5, 32), (1, 2, 32), (1.5, 1.75, 32)),
        ((1.5, 2, 256), (2.0, 2, 256), (2.5, 1.7, 256), (2.5, 1.5, 256), (3.0, 1.4, 256)),
        spatial=("mapsize",), groups=_HM, mnist_c_severity=5,
        note="plasma fractal (top-left crop of a mapsize map) added, rescaled by max",
    ),
    "brightness": Spec(
        hendrycks.brightness, ("delta",),
        _same(0.05, 0.1, 0.15, 0.2, 0.3), _same(0.1, 0.2, 0.3, 0.4, 0.5),
        groups=_HM, mnist_c_severity=5, note="HSV value + delta",
    ),
    "contrast": Spec(
        hendrycks.contrast, ("factor",),
        _same(0.75, 0.5, 0.4, 0.3, 0.15), _same(0.4, 0.3, 0.2, 0.1, 0.05),
        note="(x - channel mean) * factor + channel mean",
    ),
    "elastic_transform": Spec(
        hendrycks.elastic_transform, ("alpha", "sigma", "affine_shift"),
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
    "pixelate": Spec(
        hendrycks.pixelate, ("factor",),
        _same(0.95, 0.9, 0.85, 0.75, 0.65), _same(0.6, 0.5, 0.4, 0.3, 0.25),
        note="PIL BOX resize of the 8-bit image to int(side * factor) and back",
    ),
    "jpeg_compression": Spec(
        hendrycks.jpeg_compression, ("quality",),
        _same(80, 65, 58, 50, 40), _same(25, 18, 15, 10, 7),
        note="baseline JPEG at this quality (4:2:0 colour, one component grey)",
    ),
    "shear": Spec(
        mnist_c.shear, ("shear",), None, _same(0.2, 0.4, 0.6, 0.8, 1.0),
        groups=("mnist-c",), mnist_c_severity=2,
        note="scikit-image shear (radians) about the centre, random sign, bilinear",
    ),
    "scale": Spec(
        mnist_c.scale, ("factor",), None, _same(1 / 0.9, 1 / 0.8, 1 / 0.7, 1 / 0.6, 1 / 0.5),
        groups=("mnist-c",), mnist_c_severity=3,
        note="inverse map scaled by factor about the centre (the digit shrinks)",
    ),
    "rotate": Spec(
        mnist_c.rotate, ("angle",), None, _same(0.2, 0.4, 0.6, 0.8, 1.0),
        groups=("mnist-c",), mnist_c_severity=2,
        note="rotation by angle radians about the centre, random sign",
    ),
    "translate": Spec(
        mnist_c.translate, ("shift",), None, _same(1, 2, 3, 4, 5),
        spatial=("shift",), groups=("mnist-c",), mnist_c_severity=3,
        note="shift by +-shift pixels along each axis (random signs)",
    ),
    "stripe": Spec(
        mnist_c.stripe, ("opacity", "band"), None, tuple((s / 5, 0.25) for s in SEVERITIES),
        groups=("mnist-c",), mnist_c_severity=5,
        note="left and right quarter of the columns inverted, blended in with opacity",
    ),
    "dotted_line": Spec(
        mnist_c.dotted_line, ("lines", "width", "dash"), None,
        tuple((s, 2.3, 2) for s in SEVERITIES),
        spatial=("width", "dash"), integer=("dash",), groups=("mnist-c",), mnist_c_severity=1,
        note="severity dashed lines across the image between random rows",
    ),
    "zigzag": Spec(
        mnist_c.zigzag, ("zigzags", "width", "amplitude", "start", "stop", "drift"), None,
        tuple((s, 2.3, 2.0, 2.0, 25.0, 5) for s in SEVERITIES),
        spatial=("width", "amplitude", "start", "stop", "drift"), integer=("drift",),
        groups=("mnist-c",), mnist_c_severity=1, note="severity zigzag lines",
    ),
    "canny_edges": Spec(
        mnist_c.canny_edges, ("opacity", "sigma", "low", "high"), None,
        tuple((s / 5, 1.0, 0.1, 0.2) for s in SEVERITIES),
        spatial=("sigma",), groups=("mnist-c",), mnist_c_severity=5,
        note="Canny edge map (of the luma for colour) blended in with opacity",
    ),
    "spatter": Spec(
        mnist_c.spatter, ("loc", "scale", "sigma", "threshold", "mask_sigma"), None,
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
        return tuple(SPECS)
    check_choice("corruption group", group, _GROUPS)
    return tuple(n for n, s in SPECS.items() if group in s.groups)


def corruption_info(name: str) -> CorruptionInfo:
    """Groups, parameters, constant tables and a one-line description of a corruption.

    >>> corruption_info("fog").mnist_c_severity
    5
    """
    spec = SPECS[check_choice("corruption", name, SPECS)]
    presets = ("cifar10-c", "mnist-c") if spec.cifar is not None else ("mnist-c",)
    return CorruptionInfo(name, spec.groups, spec.params, presets, spec.mnist_c_severity, spec.note)


def check_severity(severity: Any) -> int:
    """``severity`` as an int in 1..5, else a TypeError / ValueError naming the choices."""
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
    spec = SPECS[check_choice("corruption", name, SPECS)]
    severity = check_severity(severity)
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


def check_images(x: Any) -> None:
    """Raise unless ``x`` is a float (N, C, H, W) batch, C = 1 or 3, H, W >= 8, in [0, 1]."""
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
    glass_swap: str | None = None,
    glass_blur_axes: str | None = None,
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
        glass_swap: how glass_blur's local shuffle moves a pixel (other corruptions
            ignore it): None or "published" (the table's) as the published CIFAR-10-C,
            ImageNet-C and MNIST-C code does, which copies the partner pixel over a colour
            pixel (NumPy views; see ``hendrycks.glass_blur``) and swaps grey ones; "swap"
            exchanges every pair.
        glass_blur_axes: along which axes glass_blur's Gaussian blurs run (other
            corruptions ignore it): None or "published" (the table's) as the published code
            does, along H only for grey images (scikit-image's ``gaussian(...,
            multichannel=True)`` takes a grey image's W as channels; MNIST-C's digits) and
            along H and W for colour ones; "both" along H and W.

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
    check_choice("corruption", name, SPECS)
    severity = check_severity(severity)
    check_images(x)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
    params = corruption_parameters(name, severity, tuple(x.shape[-2:]), preset=preset)
    if glass_swap is not None:
        check_choice("glass_swap", glass_swap, hendrycks.GLASS_SWAPS)
        if name == "glass_blur":
            params["swap"] = glass_swap
    if glass_blur_axes is not None:
        check_choice("glass_blur_axes", glass_blur_axes, hendrycks.GLASS_BLUR_AXES)
        if name == "glass_blur":
            params["blur_axes"] = glass_blur_axes
    if x.shape[0] == 0:
        return x.clone()
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    rnd = RandomSource(generator, x.device, work)
    out = SPECS[name].fn(x.to(work), params, rnd)
    return out.clamp(0, 1).to(x.dtype)
