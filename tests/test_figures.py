"""Tests for snnl.figures.save_figure: the format the suffix names, clear path errors, atomic."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from snnl import _io
from snnl.figures import FIGURE_FORMATS, plt, save_figure

SUPPORTED = "png, pdf, svg, jpg, jpeg"


def _figure():
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [1, 0, 1], color="C3")
    return fig


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize(
    ("name", "magic", "pil_format"),
    [
        ("plot.png", b"\x89PNG\r\n\x1a\n", "PNG"),
        ("plot.PNG", b"\x89PNG\r\n\x1a\n", "PNG"),
        ("plot.jpg", b"\xff\xd8\xff", "JPEG"),
        ("plot.jpeg", b"\xff\xd8\xff", "JPEG"),
        ("plot.pdf", b"%PDF-", None),
        ("plot.svg", b"<?xml", None),
    ],
)
def test_writes_the_format_the_suffix_names(tmp_path, name, magic, pil_format):
    path = tmp_path / name
    fig = _figure()
    save_figure(fig, path)
    data = path.read_bytes()
    assert data.startswith(magic)
    if pil_format is not None:  # an independent decoder agrees on the format
        with Image.open(path) as im:
            assert im.format == pil_format and im.size[0] > 50 and im.size[1] > 50
    if name.endswith(".svg"):
        assert b"<svg" in data and b"</svg>" in data
    if name.endswith(".pdf"):
        assert data.rstrip().endswith(b"%%EOF")
    assert not plt.fignum_exists(fig.number)  # closed
    assert _leftovers(tmp_path) == []


def test_dpi_sets_raster_size(tmp_path):
    sizes = {}
    for dpi in (50, 100):
        save_figure(_figure(), tmp_path / f"d{dpi}.png", dpi=dpi)
        with Image.open(tmp_path / f"d{dpi}.png") as im:
            sizes[dpi] = im.size
    assert abs(sizes[100][0] - 2 * sizes[50][0]) <= 2  # twice the dots per inch
    with pytest.raises(TypeError, match="dpi"):
        save_figure(_figure(), tmp_path / "x.png", dpi=72.5)


@pytest.mark.parametrize("name", ["plot.bmp", "plot.txt", "plot", "plot.png.gz"])
def test_unknown_suffix_lists_the_supported_ones(tmp_path, name):
    fig = _figure()
    with pytest.raises(ValueError, match=re.escape(SUPPORTED)) as err:
        save_figure(fig, tmp_path / name)
    assert name in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert not plt.fignum_exists(fig.number)
    assert set(FIGURE_FORMATS) == set(SUPPORTED.split(", "))


def test_path_is_a_directory(tmp_path):
    target = tmp_path / "figs.png"
    target.mkdir()
    with pytest.raises(IsADirectoryError, match=re.escape(f"{str(target)!r}: it is a directory")):
        save_figure(_figure(), target)
    assert target.is_dir() and list(target.iterdir()) == []


def test_parent_missing_or_a_file(tmp_path):
    missing = tmp_path / "nope" / "plot.png"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as err:
        save_figure(_figure(), missing)
    assert "does not exist" in str(err.value)
    assert not (tmp_path / "nope").exists()  # no folder made behind the user's back
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    inside = afile / "plot.png"
    with pytest.raises(NotADirectoryError, match=re.escape(str(inside))) as err:
        save_figure(_figure(), inside)
    assert "is a file" in str(err.value)
    assert afile.read_text() == "x"


def test_atomic_old_file_survives_a_failed_write(tmp_path, monkeypatch):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old figure")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(_io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_figure(_figure(), path)
    assert path.read_bytes() == b"old figure"  # readers never see half a figure
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()  # _io.os is the os module: restore its replace
    save_figure(_figure(), path)
    assert path.read_bytes().startswith(b"\x89PNG")


def test_failed_render_leaves_old_file_and_closes_figure(tmp_path):
    path = tmp_path / "plot.svg"
    path.write_text("old")
    fig = _figure()

    def broken(*args, **kwargs):
        raise RuntimeError("render failed")

    fig.savefig = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="render failed"):
        save_figure(fig, path)
    assert path.read_text() == "old"
    assert not plt.fignum_exists(fig.number)
