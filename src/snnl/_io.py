"""Atomic file writing: a temp file in the target's folder, fsync, then rename.

A reader never sees a half-written file: either the old content or the new.
Every file the package writes goes through these functions.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "write_bytes",
    "write_text",
    "write_json",
    "save_torch",
    "folder_lock",
    "json_safe",
    "RunLockedError",
    "WriteFailedError",
]


class WriteFailedError(OSError):
    """A file could not be written (a full disk, a quota); nothing of it was left behind.

    An OSError whose ``filename`` is the file and whose ``strerror`` says what happened
    and what to do (one line: the CLI prints ``filename: strerror``).
    """


#: errno values that mean "no room to write".
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: Words of torch's own error when the file under torch.save cannot be written.
_TORCH_WRITE_FAILURE = ("unexpected pos", "file write failed", "enforce fail")


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown free space"
    return f"{free / 2**20:.1f} MiB free"


def _write_failed(target: Path, cause: str) -> WriteFailedError:
    return WriteFailedError(
        errno.ENOSPC,
        f"could not be written ({cause}; {_free_space(target.parent)} on its device); "
        "nothing was left half-written and an earlier version is kept: free some space "
        "(or write elsewhere) and run again (a training run continues with --resume)",
        str(target),
    )


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on clean exit fsync and rename it onto ``path``.

    On an exception the temp file is removed and ``path`` is left untouched. A full
    disk (ENOSPC, EDQUOT, EFBIG) raises :class:`WriteFailedError` naming ``path``.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_open(p, "w") as f:
    ...     _ = f.write("hello")
    >>> p.read_text()
    'hello'
    """
    if mode not in {"w", "wb"}:
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        if err.errno in _NO_SPACE:
            raise _write_failed(target, os.strerror(err.errno)) from err
        raise
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, WriteFailedError):
            if err.errno in _NO_SPACE:
                raise _write_failed(target, os.strerror(err.errno)) from err
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN).

    >>> json_safe({"a": [1.0, float("nan")], "b": float("inf")})
    {'a': [1.0, None], 'b': None}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (NaN is not allowed)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def save_torch(path: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` to ``path`` atomically (load it back with ``weights_only=True``).

    torch reports a failed write (a full disk) as a RuntimeError ("[enforce fail at
    inline_container.cc] ... unexpected pos"): that becomes :class:`WriteFailedError`
    naming ``path``, and nothing is left half-written.
    """
    import torch

    target = Path(path)
    try:
        with atomic_open(target, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as err:
        message = str(err)
        if not any(word in message for word in _TORCH_WRITE_FAILURE):
            raise
        cause = isinstance(err.__context__, OSError) and err.__context__.errno in _NO_SPACE
        reason = os.strerror(errno.ENOSPC) if cause else "torch: " + message.splitlines()[0]
        raise _write_failed(target, reason[:160]) from err


LOCK_NAME = ".snnl.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the lock of this output folder."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (its ``.snnl.lock`` file) for the block.

    The lock is an ``fcntl.flock`` on the lock file: the kernel drops it when the
    holder exits, however it exits, so a lock left by a killed process never
    blocks the next run (``--resume``). While a live process holds it, a second
    one gets :class:`RunLockedError` at once, naming the folder and the holder's pid.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with folder_lock(d):
    ...     try:
    ...         with folder_lock(d):
    ...             pass
    ...     except RunLockedError:
    ...         print("locked")
    locked
    """
    import fcntl

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunLockedError(
                f"{path} is in use by another snnl process (pid {holder}); wait for it to "
                "finish or choose another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the flock
