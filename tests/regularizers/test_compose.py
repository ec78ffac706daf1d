"""regularized_loss: one forward pass, terms keyed by each regulariser's name; the
temperature modes as an enum with one strategy each."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from reference import dense_snnl
from snnl.loss import SNNLWarning
from snnl.models import MLP
from snnl.regularizers import (
    DEFAULT_TEMPERATURE_MODE,
    TEMPERATURE_MODES,
    EntanglementRegularizer,
    SelectivityRegularizer,
    TemperatureMode,
    check_temperature_mode,
    regularized_loss,
)
from snnl.regularizers.modes import STRATEGIES

# tiny problems: one torch thread (see conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model_and_batch(n: int = 24):
    torch.manual_seed(0)
    model = MLP((5,), 3, widths=(8, 6))
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(n, 5, generator=g), torch.arange(n) % 3


def test_two_regularisers_of_one_class_keep_their_own_terms():
    """Issue 17: terms were keyed by a class attribute, so a second regulariser of one
    class overwrote the first's silently."""
    model, x, y = _model_and_batch()
    low = EntanglementRegularizer(model, ["relu1"], alpha=0.5, temperature=2.0,
                                  temperature_mode="fixed", name="snnl_relu1")  # fmt: skip
    high = EntanglementRegularizer(model, ["relu2"], alpha=-0.25, temperature=7.0,
                                   temperature_mode="fixed", name="snnl_relu2")  # fmt: skip
    out = regularized_loss(model, x, y, [low, high])
    assert sorted(out.terms) == ["snnl_relu1", "snnl_relu2"]
    assert list(out.terms["snnl_relu1"]) == ["relu1"] and list(out.terms["snnl_relu2"]) == ["relu2"]
    with torch.no_grad():
        h1 = torch.relu(model.fc1(model.flatten(model.normalize(x))))
        h2 = torch.relu(model.fc2(h1))
        ce = F.cross_entropy(model.logits(h2), y)
    s1, s2 = dense_snnl(h1.double(), y, 2.0), dense_snnl(h2.double(), y, 7.0)
    assert out.terms["snnl_relu1"]["relu1"].item() == pytest.approx(s1.item(), rel=1e-5)
    assert out.terms["snnl_relu2"]["relu2"].item() == pytest.approx(s2.item(), rel=1e-5)
    expected = ce.double() - 0.5 * s1 + 0.25 * s2
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-5)
    same = EntanglementRegularizer(model, ["relu2"], alpha=1.0)
    with pytest.raises(ValueError, match="two regularisers are named 'snnl'.*name="):
        regularized_loss(model, x, y, [EntanglementRegularizer(model, alpha=1.0), same])
    with pytest.raises(ValueError, match="name"):
        SelectivityRegularizer(model, alpha=1.0, name="")


def test_terms_at_alpha_zero_are_empty_not_missing():
    """Issue 18: out.terms["snnl"] was a KeyError at alpha 0."""
    model, x, y = _model_and_batch()
    ent = EntanglementRegularizer(model, alpha=0.0)
    sel = SelectivityRegularizer(model, alpha=0.0)
    out = regularized_loss(model, x, y, [ent, sel])
    assert out.terms == {"snnl": {}, "selectivity": {}}
    assert out.total.item() == pytest.approx(F.cross_entropy(out.logits, y).item(), rel=1e-6)


@pytest.mark.parametrize("mode", TEMPERATURE_MODES)
def test_a_last_batch_of_one_point_contributes_no_snnl_term(mode):
    """Issue 18: a user's DataLoader whose last batch has one point made
    regularized_loss raise ValueError; that batch now has no SNNL term, with a warning."""
    model, x, y = _model_and_batch(13)
    reg = EntanglementRegularizer(model, alpha=1.0, temperature=5.0, temperature_mode=mode)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    totals = []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for xb, yb in loader:
            out = regularized_loss(model, xb, yb, [reg])
            out.total.backward()
            totals.append(out)
    last = totals[-1]
    assert last.terms["snnl"] == {}
    assert last.total.item() == pytest.approx(F.cross_entropy(last.logits, y[-1:]).item())
    assert reg.skipped_batches == 1
    skipped = [w for w in record if "contributes no SNNL term" in str(w.message)]
    assert len(skipped) == 1 and issubclass(skipped[0].category, SNNLWarning)
    assert all(out.terms["snnl"] for out in totals[:-1])


def test_temperature_mode_is_one_enum_with_one_strategy_per_mode():
    assert TEMPERATURE_MODES == ("optimal", "learned", "reference", "fixed")
    assert DEFAULT_TEMPERATURE_MODE is TemperatureMode.OPTIMAL
    assert set(STRATEGIES) == set(TemperatureMode)
    assert all(STRATEGIES[m].mode is m for m in TemperatureMode)
    model, _, _ = _model_and_batch()
    for mode in TemperatureMode:
        reg = EntanglementRegularizer(model, alpha=1.0, temperature_mode=mode.value)
        assert reg.temperature_mode is mode and isinstance(reg._strategy, STRATEGIES[mode])
    assert EntanglementRegularizer(model, alpha=1.0).temperature_mode is DEFAULT_TEMPERATURE_MODE
    with pytest.raises(ValueError, match="unknown temperature_mode 'best'; expected one of"):
        check_temperature_mode("best")
    with pytest.raises(ValueError, match="unknown temperature_mode"):
        EntanglementRegularizer(model, alpha=1.0, temperature_mode="best")
    with pytest.raises(ValueError, match="needs a temperature_mode that updates"):
        EntanglementRegularizer(model, alpha=1.0, temperature_mode="fixed")(
            torch.randn(4, 5), torch.tensor([0, 0, 1, 1]), update_temperature=True
        )
