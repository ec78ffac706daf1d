"""Out-of-distribution inputs for DkNN credibility: generated letters, rotated digits, notMNIST.

- :func:`generated_letters` draws a notMNIST-like set offline (letters in assorted fonts).
- :func:`rotate_images` turns a batch about the image centre (the DkNN paper's rotated
  MNIST).
- :func:`load_outliers` gives ``n`` outliers shaped like a dataset's inputs, by name
  (:data:`OUTLIER_SETS`).
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from snnl import _checks
from snnl.data.registry import DATASETS
from snnl.data.splits import DataSplits, stratified_subset, to_unit_tensor

__all__ = ["OUTLIER_SETS", "generated_letters", "rotate_images", "load_outliers"]

#: Names accepted by :func:`load_outliers`.
OUTLIER_SETS: tuple[str, ...] = ("letters", "rotated", "notmnist")

# matplotlib's bundled fonts that draw Latin capitals at their usual code points
# (cmex10/cmsy10/STIXSize* map letters to symbols or lack them).
_MPL_LETTER_FONT = re.compile(
    r"^(DejaVu(Sans|Serif|SansMono)(-.+)?|STIXGeneral.*|cm(r|b|ss|tt|ti)10)\.ttf$"
)


def _font_renders(font: object, letters: str) -> bool:
    """True if every letter draws something and differs from the missing-glyph box."""
    from PIL import Image, ImageDraw

    def mask(ch: str) -> bytes:
        img = Image.new("L", (96, 96), 0)
        ImageDraw.Draw(img).text((8, 8), ch, fill=255, font=font)  # type: ignore[arg-type]
        return img.tobytes()

    missing = mask("\ue000")  # private-use code point: renders the .notdef glyph, if any
    for ch in letters:
        m = mask(ch)
        if not any(m) or m == missing:
            return False
    return True


@functools.lru_cache(maxsize=8)
def _letter_fonts(px: int, letters: str, system_fonts: bool) -> tuple[object, ...]:
    import matplotlib
    from PIL import ImageFont

    fonts: list[object] = []
    try:
        fonts.append(ImageFont.load_default(size=px))  # Pillow's embedded Aileron font
    except (TypeError, ImportError, OSError):  # no FreeType: bitmap font, size ignored
        fonts.append(ImageFont.load_default())
    paths = sorted(
        p
        for p in (Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf")
        if _MPL_LETTER_FONT.match(p.name)
    )
    if system_fonts:
        from matplotlib import font_manager

        seen = {p.name for p in paths}
        for f in sorted(font_manager.findSystemFonts()):
            p = Path(f)
            if p.suffix.lower() in (".ttf", ".otf") and p.name not in seen:
                seen.add(p.name)
                paths.append(p)
    for p in paths:
        try:
            font = ImageFont.truetype(str(p), px)
        except OSError:
            continue
        if _font_renders(font, letters):
            fonts.append(font)
    return tuple(fonts)


def generated_letters(
    n: int,
    *,
    size: int = 28,
    seed: int = 0,
    letters: str = "ABCDEFGHIJ",
    system_fonts: bool = False,
) -> tuple[Tensor, Tensor]:
    """A notMNIST-like set drawn offline: letters in assorted fonts, scaled, shifted, rotated.

    Algorithm, per sample (seeded ``numpy.random.default_rng(seed)``): label = balanced
    (``i mod len(letters)``, then shuffled); font = uniform over the available fonts
    (Pillow's built-in font, matplotlib's bundled Latin text fonts (DejaVu, STIX, Computer
    Modern) and, with ``system_fonts=True``, the system's TrueType fonts, which makes the
    set depend on the machine); the tight glyph is scaled to a height of U(0.45, 0.8) of a
    canvas 4x larger than ``size`` (width capped at 0.85), placed at the centre shifted by
    U(-0.08, 0.08) of the canvas per axis, rotated by U(-20, 20) degrees (bilinear),
    then area-downsampled to ``size`` x ``size``. White letter (1) on black (0).

    Returns ``x`` float32 ``(n, 1, size, size)`` in [0, 1] and ``y`` int64 ``(n,)`` indexing
    ``letters``. Deterministic for a seed (for a given Pillow/FreeType/matplotlib).

    >>> x, y = generated_letters(20, size=16, seed=1)
    >>> tuple(x.shape), x.dtype, int(y.min()), int(y.max()), bool(x.max() <= 1)
    ((20, 1, 16, 16), torch.float32, 0, 9, True)
    """
    from PIL import Image, ImageDraw

    n = _checks.check_int("n", n, low=0)
    size = _checks.check_int("size", size, low=4)
    seed = _checks.check_int("seed", seed)
    if not isinstance(letters, str) or not letters or any(c.isspace() for c in letters):
        raise ValueError(f"letters must be a non-empty str without whitespace, got {letters!r}")
    canvas = 4 * size
    fonts = _letter_fonts(canvas, letters, system_fonts)
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % len(letters))
    font_ix = rng.integers(0, len(fonts), size=n)
    heights = rng.uniform(0.45, 0.8, size=n)
    shifts = rng.uniform(-0.08, 0.08, size=(n, 2))
    angles = rng.uniform(-20.0, 20.0, size=n)

    glyphs: dict[tuple[int, int], Image.Image] = {}

    def glyph(fi: int, li: int) -> Image.Image:
        if (fi, li) not in glyphs:
            font = fonts[fi]
            draw = ImageDraw.Draw(Image.new("L", (1, 1)))
            x0, y0, x1, y1 = draw.textbbox((0, 0), letters[li], font=font)  # type: ignore[arg-type]
            img = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
            ImageDraw.Draw(img).text((-x0, -y0), letters[li], fill=255, font=font)  # type: ignore[arg-type]
            glyphs[(fi, li)] = img.crop(img.getbbox() or (0, 0, img.width, img.height))
        return glyphs[(fi, li)]

    out = np.zeros((n, 1, size, size), dtype=np.float32)
    for i in range(n):
        g = glyph(int(font_ix[i]), int(y[i]))
        s = heights[i] * canvas / g.height
        s = min(s, 0.85 * canvas / g.width)
        gw, gh = max(1, round(g.width * s)), max(1, round(g.height * s))
        g = g.resize((gw, gh), Image.Resampling.BILINEAR)
        img = Image.new("L", (canvas, canvas), 0)
        cx = canvas / 2 + shifts[i, 0] * canvas
        cy = canvas / 2 + shifts[i, 1] * canvas
        img.paste(g, (round(cx - gw / 2), round(cy - gh / 2)))
        img = img.rotate(float(angles[i]), resample=Image.Resampling.BILINEAR, fillcolor=0)
        img = img.resize((size, size), Image.Resampling.BOX)
        out[i, 0] = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(out), torch.from_numpy(y.astype(np.int64))


def rotate_images(x: Tensor, degrees: float) -> Tensor:
    """Rotate a batch ``(N, C, H, W)`` in [0, 1] about the image centre, counter-clockwise.

    Sampling: output pixel at centred pixel coordinates p reads the input at R(-theta) p
    (bilinear, zero outside), computed in pixel units so non-square images rotate rigidly;
    ``torch.nn.functional.affine_grid``/``grid_sample`` with ``align_corners=False``.
    Positive ``degrees`` turn the picture counter-clockwise as displayed (row 0 on top),
    so 90 degrees on a square image equals ``torch.rot90(x, 1, dims=(-2, -1))``.
    The result is clamped to [0, 1]; 0 degrees (mod 360) returns an exact copy.

    >>> x = torch.zeros(1, 1, 3, 3); x[0, 0, 0, 2] = 1.0   # top-right pixel
    >>> rotate_images(x, 90)[0, 0].round(decimals=4)        # moves to top-left
    tensor([[1., 0., 0.],
            [0., 0., 0.],
            [0., 0., 0.]])
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            "rotate_images expects a floating tensor of shape (N, C, H, W), got "
            + (
                f"{x.dtype} of shape {tuple(x.shape)}"
                if isinstance(x, Tensor)
                else type(x).__name__
            )
        )
    degrees = _checks.check_real("degrees", degrees)
    if x.numel() and (
        not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1
    ):
        raise ValueError("rotate_images expects finite values in [0, 1]")
    if float(degrees) % 360.0 == 0.0 or x.numel() == 0:
        return x.clone()
    n, _, h, w = x.shape
    a = math.radians(float(degrees))
    c, s = math.cos(a), math.sin(a)
    # Pixel coords (u right, v down). A counter-clockwise turn on screen maps a point
    # (u, v) to (u cos + v sin, -u sin + v cos); the sampler needs the inverse map.
    # theta = S^-1 Rinv S with S = diag(w/2, h/2) converting normalised coords to pixels.
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=torch.float64).to(
        x.dtype
    )
    grid = F.affine_grid(theta.expand(n, 2, 3), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp_(0.0, 1.0)


def load_outliers(
    name: str,
    *,
    like: DataSplits,
    n: int,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> Tensor:
    """``n`` out-of-distribution inputs shaped like ``like``'s inputs, float32 in [0, 1].

    - ``letters``: :func:`generated_letters` at like's (square) image size, repeated over
      its channels (the offline stand-in for notMNIST).
    - ``rotated``: a seeded class-proportional subset of ``like.x_test`` rotated 45 degrees
      (the DkNN paper's second outlier set).
    - ``notmnist``: the real notMNIST PNGs under ``data_dir`` (all of them, seeded
      subset of ``n``), resized to like's size (bilinear, antialiased), repeated over channels.

    Raises ValueError if ``n`` exceeds what the source holds or ``like`` is not an image set.

    >>> from snnl.data import load_dataset
    >>> ds = load_dataset("digits", limit_train=50, limit_test=30)
    >>> tuple(load_outliers("rotated", like=ds, n=10).shape)
    (10, 1, 8, 8)
    """
    key = name.strip().lower() if isinstance(name, str) else name
    key = _checks.check_choice("outlier set", key, OUTLIER_SETS)
    if not isinstance(like, DataSplits):
        raise TypeError(f"like must be a DataSplits, got {type(like).__name__}")
    n = _checks.check_int("n", n, low=1)
    seed = _checks.check_int("seed", seed)
    if len(like.input_shape) != 3:
        raise ValueError(
            f"outlier set {key!r} needs an image dataset (C, H, W); {like.name!r} has "
            f"input shape {like.input_shape}"
        )
    c, h, w = like.input_shape
    if key == "letters":
        if h != w:
            raise ValueError(f"'letters' outliers are square; {like.name!r} images are {h}x{w}")
        x, _ = generated_letters(n, size=h, seed=seed)
        return x.repeat(1, c, 1, 1)
    if key == "rotated":
        avail = len(like.x_test)
        if n > avail:
            raise ValueError(f"'rotated' outliers: n={n} but {like.name!r} has {avail} test inputs")
        keep = stratified_subset(like.y_test.cpu().numpy(), n, np.random.default_rng([seed, 3]))
        return rotate_images(like.x_test[torch.from_numpy(keep).to(like.x_test.device)], 45.0)
    if data_dir is None:
        raise ValueError("'notmnist' outliers are read from your files: pass data_dir (--data-dir)")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {str(root)!r} (--data-dir) is not a directory")
    spec = DATASETS["notmnist"]
    raw = spec.read(spec, root, seed)  # all readable images, no split
    xs, ys = raw.x_train, raw.y_train
    if n > len(ys):
        raise ValueError(f"'notmnist' outliers: n={n} but {root} holds {len(ys)} readable images")
    keep = stratified_subset(ys, n, np.random.default_rng([seed, 4]))
    x = to_unit_tensor(xs[keep], spec.scale)
    if (h, w) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp_(0.0, 1.0)
    return x.repeat(1, c, 1, 1)
