"""Tests for snnl.data.features: saved representations, never unpickled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from snnl.data import (
    load_features,
)

# --------------------------------------------------------------------------------------
# Feature files
# --------------------------------------------------------------------------------------

F = np.arange(24, dtype=np.float32).reshape(6, 4) / 7.0
Y = np.array([0, 1, 1, 2, 0, 2], dtype=np.int32)


def _check(f, y, feats=F, labels=Y):
    np.testing.assert_array_equal(f.numpy(), feats)
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()


@pytest.mark.parametrize("keys", [("features", "labels"), ("x", "y"), ("X", "y")])
def test_features_npz(tmp_path, keys):
    p = tmp_path / "f.npz"
    np.savez(p, **{keys[0]: F, keys[1]: Y})
    _check(*load_features(p))


def test_features_pt_and_npy(tmp_path):
    p = tmp_path / "f.pt"
    torch.save({"features": torch.from_numpy(F), "labels": torch.from_numpy(Y).long()}, p)
    _check(*load_features(p))

    np.save(tmp_path / "a.npy", F)
    np.save(tmp_path / "lab.npy", Y)
    _check(*load_features(tmp_path / "a.npy", tmp_path / "lab.npy"))
    np.save(tmp_path / "b.npy", F.astype(">f8"))  # big-endian float64 stays float64
    np.save(tmp_path / "b_labels.npy", Y.astype(np.uint8))
    f, y = load_features(tmp_path / "b.npy")
    assert f.dtype == torch.float64
    _check(f, y)
    np.save(tmp_path / "c.npy", F.reshape(6, 2, 2))
    np.save(tmp_path / "c.labels.npy", Y.astype(np.int64))
    f, y = load_features(tmp_path / "c.npy")
    _check(f, y, F.reshape(6, 2, 2))


class _Bomb:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (self.flag,))


def test_features_never_unpickle(tmp_path):
    flag = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"features": torch.zeros(2, 2), "labels": _Bomb(flag)}, p)
    with pytest.raises(ValueError, match="weights_only"):
        load_features(p)
    q = tmp_path / "evil.npz"
    np.savez(q, features=np.array([_Bomb(flag), 1], dtype=object), labels=Y[:2])
    with pytest.raises(ValueError, match="object arrays"):
        load_features(q)
    r = tmp_path / "evil.npy"
    np.save(r, np.array([_Bomb(flag)], dtype=object), allow_pickle=True)
    np.save(tmp_path / "evil_labels.npy", Y[:1])
    with pytest.raises(ValueError, match="object arrays"):
        load_features(r)
    assert not flag.exists()


def test_features_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_features(tmp_path / "nope.npz")
    (tmp_path / "f.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"unknown extension '.csv'"):
        load_features(tmp_path / "f.csv")
    np.savez(tmp_path / "k.npz", emb=F, target=Y)
    with pytest.raises(ValueError, match=r"found keys \['emb', 'target'\]"):
        load_features(tmp_path / "k.npz")
    np.savez(tmp_path / "fl.npz", features=F, labels=Y.astype(np.float32))
    with pytest.raises(TypeError, match="labels must be integers"):
        load_features(tmp_path / "fl.npz")
    np.savez(tmp_path / "len.npz", features=F, labels=Y[:5])
    with pytest.raises(ValueError, match="5 labels for 6"):
        load_features(tmp_path / "len.npz")
    np.savez(tmp_path / "2d.npz", features=F, labels=Y.reshape(6, 1))
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\), got \(6, 1\)"):
        load_features(tmp_path / "2d.npz")
    np.savez(tmp_path / "str.npz", features=np.array([["a"]] * 6), labels=Y)
    with pytest.raises(TypeError, match="real numeric"):
        load_features(tmp_path / "str.npz")
    np.savez(tmp_path / "nan.npz", features=np.full((6, 2), np.nan), labels=Y)
    with pytest.raises(ValueError, match="NaN"):
        load_features(tmp_path / "nan.npz")
    np.save(tmp_path / "lonely.npy", F)
    with pytest.raises(FileNotFoundError, match="lonely_labels.npy or lonely.labels.npy"):
        load_features(tmp_path / "lonely.npy")
    torch.save(torch.zeros(3, 2), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="got a Tensor"):
        load_features(tmp_path / "bare.pt")
    torch.save({"features": torch.zeros(6, 2)}, tmp_path / "nolab.pt")
    with pytest.raises(ValueError, match=r"found keys \['features'\]"):
        load_features(tmp_path / "nolab.pt")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npz"):
        load_features(tmp_path / "junk.npz")


@pytest.mark.parametrize("damage", ["truncated", "cut_tail", "flipped_byte", "compressed_flip"])
def test_damaged_npz_names_the_file(tmp_path, damage, capsys):
    """Issue 18: a truncated or corrupt .npz gave a zipfile.BadZipFile traceback."""
    p = tmp_path / "feats.npz"
    save = np.savez_compressed if damage == "compressed_flip" else np.savez
    save(p, features=np.random.default_rng(0).random((50, 4)), labels=np.arange(50) % 2)
    data = p.read_bytes()
    at = 300 if damage == "compressed_flip" else 200  # inside the first member's data
    p.write_bytes(
        {
            "truncated": data[: len(data) // 2],
            "cut_tail": data[:-10],
            "flipped_byte": data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :],
            "compressed_flip": data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :],
        }[damage]
    )
    with pytest.raises(ValueError, match="feats.npz.*(damaged|truncated)") as err:
        load_features(p)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    from snnl.cli import main

    assert main(["entanglement", str(p)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(p) in lines[0]
