"""Tests for snnl.corruptions.evaluation: the accuracy table against a recomputation."""

from __future__ import annotations

import pytest
import torch

from corruption_helpers import smooth_colour
from snnl.corruptions import (
    corrupt,
    corruption_accuracy,
)
from snnl.data import load_dataset

# tiny problems: one torch thread (see tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_corruption_accuracy_table_and_mean(digits28):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    x, y = digits28[:40], load_dataset("mnist5k").y_test[:40]
    names, severities = ["contrast", "gaussian_noise", "rotate"], (1, 3, 5)
    res = corruption_accuracy(
        model, x, y, names, severities, generator=torch.Generator().manual_seed(3)
    )
    assert list(res.table) == names and all(list(r) == list(severities) for r in res.table.values())
    cells = []
    for name in names:
        for s in severities:
            g = torch.Generator().manual_seed(res.seeds[name][s])
            with torch.no_grad():
                pred = model(corrupt(x, name, s, generator=g)).argmax(1)
            expected = sum(int(p == t) for p, t in zip(pred.tolist(), y.tolist(), strict=True))
            expected /= len(y)
            assert res.table[name][s] == pytest.approx(expected, abs=1e-15)
            cells.append(expected)
    assert res.mean == pytest.approx(sum(cells) / len(cells), abs=1e-15)
    assert res.per_corruption["rotate"] == pytest.approx(sum(res.table["rotate"].values()) / 3)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).double().mean())
    assert res.clean == pytest.approx(clean)
    # a cell does not depend on which other cells were asked for
    alone = corruption_accuracy(
        model, x, y, ["rotate"], (5,), generator=torch.Generator().manual_seed(3)
    )
    assert alone.table["rotate"][5] == res.table["rotate"][5]
    assert set(res.to_dict()["table"]["rotate"]) == {"1", "3", "5"}
    with pytest.raises(ValueError, match="unknown corruption"):
        corruption_accuracy(model, x, y, ["nope"])
    with pytest.raises(ValueError, match="one of 1, 2, 3, 4, 5"):
        corruption_accuracy(model, x, y, ["fog"], (0,))


def test_corruption_accuracy_passes_the_glass_swap(digits28):
    """glass_swap reaches every glass_blur cell (colour images: the two modes differ)."""
    torch.manual_seed(0)
    x = smooth_colour(24)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    y = torch.arange(24) % 4
    res = corruption_accuracy(
        model, x, y, ["glass_blur"], (2, 5), generator=torch.Generator().manual_seed(1),
        glass_swap="swap",
    )  # fmt: skip
    assert res.glass_swap == "swap" and res.to_dict()["glass_swap"] == "swap"
    for s in (2, 5):
        g = torch.Generator().manual_seed(res.seeds["glass_blur"][s])
        xc = corrupt(x, "glass_blur", s, generator=g, glass_swap="swap")
        with torch.no_grad():
            expected = float((model(xc).argmax(1) == y).double().mean())
        assert res.table["glass_blur"][s] == pytest.approx(expected, abs=1e-15)
        g = torch.Generator().manual_seed(res.seeds["glass_blur"][s])
        assert not torch.equal(xc, corrupt(x, "glass_blur", s, generator=g))
    with pytest.raises(ValueError, match="unknown glass_swap"):
        corruption_accuracy(model, x, y, ["contrast"], glass_swap="exchange")
