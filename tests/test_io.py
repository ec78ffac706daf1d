"""Atomic writes: whole file or untouched, never a partial one; usual permissions."""

from __future__ import annotations

import os

import pytest

from snnl import _io


def test_write_then_replace(tmp_path):
    p = tmp_path / "sub" / "a.json"
    _io.write_json(p, {"a": 1})
    assert p.read_text() == '{\n  "a": 1\n}\n'
    _io.write_text(p, "new")
    assert p.read_text() == "new"
    mask = os.umask(0)
    os.umask(mask)
    assert (p.stat().st_mode & 0o777) == 0o666 & ~mask


def test_error_midway_leaves_old_content_and_no_temp_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError), _io.atomic_open(p, "w") as f:
        f.write("half")
        raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]


def test_nan_is_refused_and_nothing_written(tmp_path):
    p = tmp_path / "r.json"
    with pytest.raises(ValueError):
        _io.write_json(p, {"x": float("nan")})
    assert not p.exists()
