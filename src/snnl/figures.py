"""Figures: a headless matplotlib backend and atomic writing in the format the file names.

Every figure the package makes goes through :func:`save_figure`, which renders
to memory in the format the path's suffix names (PNG, PDF, SVG or JPEG) and then
writes the file atomically, so a figure on disk is always whole.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from snnl import _checks  # noqa: E402
from snnl._io import write_bytes  # noqa: E402

__all__ = [
    "FIGURE_FORMATS",
    "ForestRow",
    "check_figure_path",
    "figure_format",
    "forest_plot",
    "plt",
    "save_figure",
    "temperature_curve_figure",
]

#: File suffixes :func:`save_figure` writes (lower case, without the dot) -> matplotlib format.
#: JPEG goes through Pillow (a dependency), which matplotlib uses for it.
FIGURE_FORMATS: dict[str, str] = {
    "png": "png",
    "pdf": "pdf",
    "svg": "svg",
    "jpg": "jpeg",
    "jpeg": "jpeg",
}


def figure_format(path: str | os.PathLike[str]) -> str:
    """The format ``path``'s suffix names (case-insensitive), or a ValueError listing them.

    >>> figure_format("curve.PDF"), figure_format("photo.jpg")
    ('pdf', 'jpeg')
    >>> figure_format("curve.bmp")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown figure format 'bmp' (from the suffix of 'curve.bmp'); expected ...
    """
    suffix = Path(path).suffix.lower().removeprefix(".")
    try:
        return FIGURE_FORMATS[_checks.check_choice("figure format", suffix, FIGURE_FORMATS)]
    except ValueError as err:
        head, _, tail = str(err).partition(";")
        raise ValueError(f"{head} (from the suffix of {str(path)!r});{tail}") from None


def check_figure_path(path: str | os.PathLike[str]) -> None:
    """Raise unless ``path`` can name a new figure file: not a directory, its parent an
    existing directory (the suffix is checked by :func:`figure_format`).

    Raises:
        IsADirectoryError: ``path`` is a directory.
        FileNotFoundError / NotADirectoryError: its folder is missing / is a file.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> check_figure_path(folder / "curve.png")
    >>> check_figure_path(folder / "missing" / "curve.png")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: cannot save a figure to '...curve.png': its folder '...' does not exist
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot save a figure to {str(path)!r}: it is a directory")
    parent = path.parent
    if not parent.exists():
        raise FileNotFoundError(
            f"cannot save a figure to {str(path)!r}: its folder {str(parent)!r} does not exist"
        )
    if not parent.is_dir():
        raise NotADirectoryError(
            f"cannot save a figure to {str(path)!r}: {str(parent)!r} is a file, not a folder"
        )


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 120) -> None:
    """Render ``fig`` in the format ``path``'s suffix names and write it atomically; close it.

    Formats: ``.png``, ``.pdf``, ``.svg``, ``.jpg``/``.jpeg`` (case-insensitive; see
    :data:`FIGURE_FORMATS`). The file is rendered in memory, then written to a temporary
    file beside ``path`` and renamed onto it, so a reader never sees half a figure.
    ``fig`` is closed in every case (also when an error is raised).

    Raises:
        ValueError: unknown or missing suffix (the message lists the supported ones).
        IsADirectoryError: ``path`` is a directory.
        FileNotFoundError / NotADirectoryError: ``path``'s folder is missing / is a file.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "line.svg"
    >>> fig, ax = plt.subplots()
    >>> _ = ax.plot([0, 1], [0, 1])
    >>> save_figure(fig, out)
    >>> out.read_bytes()[:5]
    b'<?xml'
    """
    try:
        target = Path(path)
        fmt = figure_format(target)
        dpi = _checks.check_int("dpi", dpi, low=1)
        check_figure_path(target)
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    write_bytes(target, buf.getvalue())


def temperature_curve_figure(
    temperatures: np.ndarray,
    values: np.ndarray,
    *,
    best: tuple[float, float] | None = None,
    title: str = "",
    label: str = "min",
    limit: float | None = None,
) -> Figure:
    """SNNL against temperature (log T axis), the point ``best`` = (T, SNNL) marked
    (``label``: "min" for T*, e.g. "given" for a chosen T), ``limit`` (the T -> infinity
    value) dashed.

    The y axis shows the interesting range: from the lowest value to the highest one at
    or above the lowest point's T (where the curve rises towards its large-T limit); the
    small-T side, where SNNL can grow without bound, is cut there.

    >>> t = np.logspace(-2, 2, 41)
    >>> fig = temperature_curve_figure(t, 1 / t + np.log(t), best=(1.0, 1.0))
    >>> low, high = fig.axes[0].get_ylim()
    >>> bool(0.6 < low < 1.0 and 4.6 < high < 6.0)  # not up to 1 / 0.01 = 100
    True
    >>> plt.close(fig)
    """
    temps = np.asarray(temperatures, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.semilogx(temps, vals, color="C0", lw=1.8, label="SNNL")
    if limit is not None:
        ax.axhline(limit, color="0.5", ls="--", lw=1, label=f"T → ∞: {limit:.4g}")
    if best is not None:
        ax.plot(
            [best[0]], [best[1]], "o", color="C3", label=f"{label}: T={best[0]:.3g}, {best[1]:.4g}"
        )
    ok = np.isfinite(vals)
    if ok.any():
        low = float(vals[ok].min())
        t_low = float(temps[ok][np.argmin(vals[ok])])
        if best is not None:
            low, t_low = (best[1], best[0]) if best[1] < low else (low, t_low)
        right = vals[ok & (temps >= t_low)]
        high = float(right.max()) if right.size else low
        for shown in (limit, None if best is None else best[1]):  # keep them in view
            if shown is not None and math.isfinite(shown):
                high = max(high, shown)
        if high - low <= 1e-6 * max(1.0, abs(low)):  # flat to the right: show the descent
            high = float(np.median(vals[ok]))
        if high - low <= 1e-6 * max(1.0, abs(low)):
            high = low + 0.05 * max(1.0, abs(low))
        pad = 0.08 * (high - low)
        ax.set_ylim(low - pad, high + pad)
    ax.legend(fontsize="small", framealpha=0.85, edgecolor="none")  # over the curve: readable
    ax.set_xlabel("temperature T (log scale)")
    ax.set_ylabel("SNNL")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    return fig


@dataclass(frozen=True)
class ForestRow:
    """One row of :func:`forest_plot`: an effect with its interval, in its own units.

    ``expect``: the claimed direction ("greater" or "less"); ``margin``: the no-effect
    margin (0: none); ``verdict``: colours the row; ``flag``: a short mark after the
    numbers (e.g. "fragile").
    """

    label: str
    estimate: float
    low: float
    high: float
    margin: float
    expect: str
    verdict: str
    flag: str = ""


_VERDICT_COLOURS = {"holds": "#1a7f37", "does not hold": "#c62828", "inconclusive": "#757575"}


def forest_plot(rows: Sequence[ForestRow], *, title: str = "") -> Figure:
    """Every effect with its 95% interval and no-effect margin, one row each.

    Effects have different units, so each row is drawn in its own units rescaled to
    its extent: ``x = sign * value / max(|low|, |high|, margin)``, with ``sign`` = -1
    where the claim expects a decrease, so the claimed side is always right of 0 and
    every row spans [-1, 1]. The row's numbers in its own units are written at the right;
    the grey band is the no-effect margin.

    >>> fig = forest_plot([ForestRow("A beats B", 0.02, 0.01, 0.03, 0.005, "greater", "holds")])
    >>> len(fig.axes[0].lines) >= 2
    True
    """
    if not rows:
        raise ValueError("forest_plot needs at least one row")
    n = len(rows)
    fig, ax = plt.subplots(figsize=(11, 0.9 + 0.34 * n))
    ax.axvline(0.0, color="black", lw=0.8)
    for i, r in enumerate(rows):
        y = n - 1 - i
        if r.expect not in ("greater", "less"):
            raise ValueError(f"row {r.label!r}: expect must be 'greater' or 'less'")
        sign = 1.0 if r.expect == "greater" else -1.0
        scale = max(abs(r.low), abs(r.high), r.margin)
        scale = scale if scale > 0 else 1.0
        lo, hi = sorted((sign * r.low / scale, sign * r.high / scale))
        colour = _VERDICT_COLOURS.get(r.verdict, "#757575")
        if r.margin > 0:
            m = r.margin / scale
            ax.fill_betweenx([y - 0.38, y + 0.38], -m, m, color="#d0d0d0", lw=0)
        ax.plot([lo, hi], [y, y], color=colour, lw=2.2, solid_capstyle="butt")
        ax.plot([sign * r.estimate / scale], [y], "o", color=colour, ms=5)
        numbers = f"{r.estimate:+.3g} [{r.low:+.3g}, {r.high:+.3g}]"
        numbers += f", margin {r.margin:.3g}" if r.margin > 0 else ""
        numbers += f"  {r.flag}" if r.flag else ""
        ax.text(1.08, y, numbers, va="center", fontsize=7.5, color=colour)
    labels = [textwrap.shorten(r.label, 96, placeholder="...") for r in rows]
    ax.set_yticks(range(n - 1, -1, -1), labels, fontsize=7.5)
    ax.set_xlim(-1.08, 1.08)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xticks([-1, -0.5, 0, 0.5, 1], ["-1", "-0.5", "0", "0.5", "1"])
    ax.set_xlabel(
        "effect / max(|CI end|, margin), claimed direction to the right "
        "(green: holds, red: does not hold, grey: inconclusive; band: no-effect margin)",
        fontsize=8,
    )
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig
