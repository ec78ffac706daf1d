"""Atomic writes: whole file or untouched, never a partial one; usual permissions."""

from __future__ import annotations

import errno
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


# ----------------------------------------------------------------------------- full disk


class _FullDisk:
    """A file whose writes fail with ENOSPC after ``room`` bytes (a disk filling up)."""

    def __init__(self, f, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data) -> int:
        if self._f.tell() + len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def _fill_disk_after(monkeypatch, room: int) -> None:
    real = os.fdopen
    monkeypatch.setattr(_io.os, "fdopen", lambda *a, **k: _FullDisk(real(*a, **k), room))


def _no_temp_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    """Issue 18: a full disk gave a bare OSError; now one error naming the file, what to
    do, and nothing half-written."""
    p = tmp_path / "results.json"
    p.write_text("old")
    _fill_disk_after(monkeypatch, 10)
    with pytest.raises(_io.WriteFailedError) as err:
        _io.write_json(p, {"x": list(range(100))})
    assert err.value.filename == str(p) and err.value.errno == errno.ENOSPC
    assert "No space left" in err.value.strerror and "free some space" in err.value.strerror
    assert "\n" not in err.value.strerror
    assert p.read_text() == "old" and _no_temp_files(tmp_path) == ["results.json"]


def test_full_disk_under_torch_save(tmp_path, monkeypatch):
    """torch.save turns the failed write into "[enforce fail ...] unexpected pos": the
    user sees the file and the cause instead."""
    import torch

    p = tmp_path / "checkpoint.pt"
    _fill_disk_after(monkeypatch, 300)
    with pytest.raises(_io.WriteFailedError) as err:
        _io.save_torch(p, {"w": torch.zeros(10_000)})
    assert err.value.filename == str(p) and "No space left" in err.value.strerror
    assert "enforce fail" not in str(err.value)
    assert _no_temp_files(tmp_path) == []


def test_torch_write_failure_without_an_os_error(tmp_path, monkeypatch):
    import torch

    def failing_save(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 228 vs 0")

    monkeypatch.setattr(torch, "save", failing_save)
    p = tmp_path / "checkpoint.pt"
    with pytest.raises(_io.WriteFailedError, match="unexpected pos") as err:
        _io.save_torch(p, {})
    assert err.value.filename == str(p)
    assert _no_temp_files(tmp_path) == []
    monkeypatch.setattr(torch, "save", lambda obj, f: (_ for _ in ()).throw(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="^bug$"):  # other errors pass unchanged
        _io.save_torch(p, {})


def test_full_disk_in_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    from snnl.cli import main

    _fill_disk_after(monkeypatch, 50)
    out = tmp_path / "run"
    code = main(["train", "--dataset", "digits", "--limit-train", "100", "--limit-test", "50",
                 "--epochs", "1", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert str(out / "config.json") in err[0] and "free some space" in err[0]
    assert not out.exists() or not [p for p in out.iterdir() if p.name.endswith(".tmp")]
