"""Saved representations and labels for ``snnl entanglement``: .npz, .pt/.pth, .npy pairs.

Nothing here unpickles: ``np.load`` runs with ``allow_pickle=False`` and ``torch.load``
with ``weights_only=True``.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from snnl import _checks

__all__ = ["load_features"]

#: accepted (features, labels) key pairs, in order of preference
_FEATURE_KEYS = (("features", "labels"), ("x", "y"), ("X", "y"))


def _np_to_tensor(arr: np.ndarray) -> Tensor:
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return torch.from_numpy(np.ascontiguousarray(arr))


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(
            f"{path}: cannot read {what} without unpickling (object arrays are refused); "
            f"save a plain numeric array ({err})"
        ) from err
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npy file ({err})") from err


def _check_features_labels(
    feats: Tensor | np.ndarray, labels: Tensor | np.ndarray, fsrc: str, lsrc: str
) -> tuple[Tensor, Tensor]:
    f = feats if isinstance(feats, Tensor) else None
    if f is None:
        a = np.asarray(feats)
        if (
            a.dtype == object
            or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_)
            or np.issubdtype(a.dtype, np.complexfloating)
        ):
            raise TypeError(f"{fsrc}: features must be a real numeric array, got dtype {a.dtype}")
        f = _np_to_tensor(a)
    elif f.is_complex():
        raise TypeError(f"{fsrc}: features must be real numeric, got {f.dtype}")
    if f.dtype == torch.float64:
        pass
    else:
        f = f.to(torch.float32)
    if f.dim() < 2 or f.shape[0] == 0:
        raise ValueError(
            f"{fsrc}: features must be (N, ...) with N >= 1 and at least 2 dims "
            f"(reshape scalar features to (N, 1)), got shape {tuple(f.shape)}"
        )
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"{fsrc}: features contain NaN or inf")

    if not isinstance(labels, Tensor):
        a = np.asarray(labels)
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{lsrc}: labels must be integers, got dtype {a.dtype}")
        if a.dtype == np.uint64 and a.size and int(a.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"{lsrc}: labels overflow int64")
        labels = _np_to_tensor(a.astype(np.int64))
    lab = _checks.check_labels(labels, name=f"{lsrc}: labels")  # any integer dtype -> int64
    if lab.shape[0] != f.shape[0]:
        raise ValueError(
            f"{lsrc}: {lab.shape[0]} labels for {f.shape[0]} feature rows in {fsrc}; "
            f"expected one label per row"
        )
    return f.contiguous(), lab.contiguous()


def _pick_keys(keys: Sequence[str], path: Path) -> tuple[str, str]:
    for fk, lk in _FEATURE_KEYS:
        if fk in keys and lk in keys:
            return fk, lk
    raise ValueError(
        f"{path}: expected arrays 'features' and 'labels' (or 'x'/'y', 'X'/'y'); "
        f"found keys {sorted(keys)}"
    )


def load_features(path: str | Path, labels_path: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Read saved representations ``(N, ...)`` and integer labels ``(N,)``.

    Accepted:

    - ``.npz`` with arrays ``features`` and ``labels`` (or ``x``/``y``, ``X``/``y``);
    - ``.pt``/``.pth``: a dict with those keys holding tensors (``torch.load(...,
      weights_only=True)``);
    - ``.npy`` features plus a labels ``.npy``: ``labels_path``, else ``<stem>_labels.npy``
      or ``<stem>.labels.npy`` beside it.

    ``labels_path``, when given, overrides labels stored in an ``.npz``/``.pt``. Features
    come back float64 if stored so, else float32; labels int64. Nothing is unpickled.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.npz"
    >>> np.savez(p, features=np.ones((3, 2)), labels=np.array([0, 1, 1]))
    >>> f, y = load_features(p)
    >>> tuple(f.shape), f.dtype, y.tolist()
    ((3, 2), torch.float64, [0, 1, 1])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"features file not found: {path} (expected .npz, .pt/.pth, or .npy with labels)"
        )
    lpath = Path(labels_path) if labels_path is not None else None
    if lpath is not None and not lpath.is_file():
        raise FileNotFoundError(f"labels file not found: {lpath}")
    if lpath is not None and lpath.suffix.lower() != ".npy":
        raise ValueError(f"{lpath}: labels file must be a .npy array, got {lpath.suffix!r}")
    suffix = path.suffix.lower()
    labels: Tensor | np.ndarray
    if suffix == ".npz":
        try:
            npz = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(
                f"{path}: not a readable .npz archive, truncated or damaged ({err}); "
                "save it again with numpy.savez"
            ) from None
        with npz:
            keys = list(npz.files)
            if lpath is not None:
                fk = next((k for k, _ in _FEATURE_KEYS if k in keys), None)
                if fk is None:
                    raise ValueError(
                        f"{path}: expected an array 'features' (or 'x', 'X'); found keys "
                        f"{sorted(keys)}"
                    )
                lk = None
            else:
                fk, lk = _pick_keys(keys, path)
            try:
                feats = npz[fk]
                labels = npz[lk] if lk is not None else None  # type: ignore[assignment]
            except ValueError as err:
                raise ValueError(
                    f"{path}: holds object arrays, which cannot be read without unpickling; "
                    f"save plain numeric arrays ({err})"
                ) from err
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
                raise ValueError(
                    f"{path}: the .npz archive is damaged ({type(err).__name__}: {err}); "
                    "save it again with numpy.savez"
                ) from None
    elif suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError for refused globals, RuntimeError, EOF
            raise ValueError(
                f"{path}: not loadable with torch.load(weights_only=True): expected a dict of "
                f"tensors saved with torch.save ({type(err).__name__}: {err})"
            ) from err
        if not isinstance(obj, Mapping):
            raise ValueError(
                f"{path}: expected a dict with keys 'features' and 'labels', "
                f"got a {type(obj).__name__}"
            )
        keys = [str(k) for k in obj]
        if lpath is not None:
            fk = next((k for k, _ in _FEATURE_KEYS if k in keys), None)
            if fk is None:
                raise ValueError(
                    f"{path}: expected a 'features' (or 'x', 'X') entry; found keys {sorted(keys)}"
                )
            lk = None
        else:
            fk, lk = _pick_keys(keys, path)
        for k in (fk, lk):
            if k is not None and not isinstance(obj[k], Tensor):
                raise TypeError(
                    f"{path}: entry {k!r} must be a tensor, got {type(obj[k]).__name__}"
                )
        feats = obj[fk]
        labels = obj[lk] if lk is not None else None  # type: ignore[assignment]
    elif suffix == ".npy":
        feats = _load_npy(path, "features")
        if lpath is None:
            beside = [
                path.with_name(f"{path.stem}_labels.npy"),
                path.with_name(f"{path.stem}.labels.npy"),
            ]
            lpath = next((p for p in beside if p.is_file()), None)
            if lpath is None:
                raise FileNotFoundError(
                    f"{path}: no labels found; pass labels_path or put them beside it as "
                    f"{beside[0].name} or {beside[1].name}"
                )
    else:
        raise ValueError(
            f"{path}: unknown extension {path.suffix!r}; expected .npz, .pt/.pth or .npy"
        )
    lsrc = str(path)
    if lpath is not None:
        labels = _load_npy(lpath, "labels")
        lsrc = str(lpath)
    return _check_features_labels(feats, labels, str(path), lsrc)
