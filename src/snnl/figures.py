"""Figures: a headless matplotlib backend and atomic PNG writing.

Every figure the package makes goes through :func:`save_figure`, which renders
to memory and then writes the file atomically, so a PNG on disk is always whole.
"""

from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from snnl._io import write_bytes  # noqa: E402

__all__ = ["plt", "save_figure", "temperature_curve_figure"]


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 120) -> None:
    """Render ``fig`` as PNG and write it to ``path`` atomically, then close it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    write_bytes(path, buf.getvalue())


def temperature_curve_figure(
    temperatures: np.ndarray,
    values: np.ndarray,
    *,
    best: tuple[float, float] | None = None,
    title: str = "",
) -> Figure:
    """SNNL against temperature (log axis), with the minimum marked."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.semilogx(temperatures, values, color="C0", lw=1.8)
    if best is not None:
        ax.plot([best[0]], [best[1]], "o", color="C3", label=f"min: T={best[0]:.3g}, {best[1]:.4g}")
        ax.legend(frameon=False)
    ax.set_xlabel("temperature T")
    ax.set_ylabel("SNNL")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    return fig
