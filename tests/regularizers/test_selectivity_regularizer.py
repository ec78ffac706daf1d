"""Tests for snnl.regularizers.SelectivityRegularizer against float64 direct references."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from snnl.models import MLP, ReferenceCNN
from snnl.regularizers import (
    EntanglementRegularizer,
    SelectivityRegularizer,
    regularized_loss,
)

# tiny problems: one torch thread (see conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _direct_si(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean unit selectivity written out: per unit a loop over classes with masks."""
    if h.dim() > 2:
        h = h.reshape(h.shape[0], h.shape[1], -1).mean(2)
    classes = sorted(set(y.tolist()))
    values = []
    for u in range(h.shape[1]):
        means = torch.stack([h[y == c, u].mean() for c in classes])
        mu_max = torch.max(means)
        mu_rest = (means.sum() - mu_max) / (len(classes) - 1)
        values.append((mu_max - mu_rest) / (mu_max + mu_rest + 1e-7))
    return torch.stack(values).mean()


def _mlp_forward(model: MLP, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    h = model.flatten(model.normalize(x))
    hidden = []
    for i in (1, 2):
        h = torch.relu(getattr(model, f"fc{i}")(h))
        hidden.append(h)
    return hidden, model.logits(h)


def _cnn_forward(model: ReferenceCNN, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    h = model.normalize(x)
    hidden = []
    for i in (1, 2, 3):
        h = torch.relu(getattr(model, f"conv{i}")(h))
        hidden.append(h)
    return hidden, model.logits(h.flatten(1))


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("alpha", [-0.7, 2.0])
def test_loss_and_gradient_match_float64_direct_implementation_mlp(alpha: float) -> None:
    torch.manual_seed(0)
    model = MLP((1, 6, 6), 4, widths=(16, 9))
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(40, 1, 6, 6, generator=g), torch.randint(0, 4, (40,), generator=g)
    reg = SelectivityRegularizer(model, "hidden", alpha=alpha)
    out = reg(x, y)
    out.total.backward()

    ref_model = copy.deepcopy(model).double()
    ref_model.zero_grad(set_to_none=True)
    hidden, logits = _mlp_forward(ref_model, x.double())
    si = [_direct_si(h, y) for h in hidden]
    ref_total = F.cross_entropy(logits, y) - alpha * torch.stack(si).mean()
    ref_total.backward()
    assert out.total.item() == pytest.approx(ref_total.item(), rel=1e-5)
    for name, ref in zip(("relu1", "relu2"), si, strict=True):
        assert out.selectivity[name].dtype == torch.float64
        assert out.selectivity[name].item() == pytest.approx(ref.item(), rel=1e-5)
    for got, ref in zip(_grads(model), _grads(ref_model), strict=True):
        torch.testing.assert_close(got.double(), ref, rtol=2e-4, atol=1e-6)

    # the same model in float64 agrees to rounding
    model64 = copy.deepcopy(model).double()
    model64.zero_grad(set_to_none=True)
    SelectivityRegularizer(model64, "hidden", alpha=alpha)(x.double(), y).total.backward()
    for got, ref in zip(_grads(model64), _grads(ref_model), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_penalty_gradient_conv_layers_averaged_over_space() -> None:
    torch.manual_seed(0)
    model = ReferenceCNN((1, 12, 12), 3, channels=3).double()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(24, 1, 12, 12, generator=g, dtype=torch.float64)
    y = torch.arange(24) % 3
    reg = SelectivityRegularizer(model, "hidden", alpha=-1.5)
    out = reg(x, y)
    out.total.backward()
    ref_model = copy.deepcopy(model)
    ref_model.zero_grad(set_to_none=True)
    hidden, logits = _cnn_forward(ref_model, x)
    ref_total = (
        F.cross_entropy(logits, y) + 1.5 * torch.stack([_direct_si(h, y) for h in hidden]).mean()
    )
    ref_total.backward()
    assert out.total.item() == pytest.approx(ref_total.item(), rel=1e-12)
    for got, ref in zip(_grads(model), _grads(ref_model), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def _count_forwards(model: torch.nn.Module) -> list[int]:
    calls = [0]

    def hook(module: torch.nn.Module, args: object, output: object) -> None:
        calls[0] += 1

    model.register_forward_hook(hook)
    return calls


def test_composes_with_entanglement_in_one_forward_pass() -> None:
    torch.manual_seed(0)
    model = MLP((1, 6, 6), 4, widths=(12, 10)).double()
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(32, 1, 6, 6, generator=g, dtype=torch.float64), torch.arange(32) % 4
    ent = EntanglementRegularizer(
        model, "hidden", alpha=0.3, temperature=2.0, temperature_mode="fixed"
    )
    sel = SelectivityRegularizer(model, ["relu2"], alpha=-0.8)
    calls = _count_forwards(model)

    both = regularized_loss(model, x, y, [ent, sel])
    assert calls[0] == 1
    both.total.backward()
    grad_both = _grads(model)

    model.zero_grad(set_to_none=True)
    ent_out = ent(x, y)
    sel_out = sel(x, y)
    assert calls[0] == 3
    ce = F.cross_entropy(model(x), y)
    separate = ent_out.total + sel_out.total - ce  # CE counted once
    separate.backward()
    assert both.total.item() == pytest.approx(separate.item(), rel=1e-12)
    assert set(both.terms) == {"snnl", "selectivity"}
    assert list(both.terms["selectivity"]) == ["relu2"]
    for name, v in sel_out.selectivity.items():
        assert both.terms["selectivity"][name].item() == pytest.approx(v.item(), rel=1e-12)
    for got, ref in zip(grad_both, _grads(model), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_alpha_zero_is_plain_cross_entropy_unless_asked() -> None:
    torch.manual_seed(0)
    model = MLP((4,), 3, widths=(6,))
    x, y = torch.rand(9, 4), torch.arange(9) % 3
    out = SelectivityRegularizer(model, alpha=0.0)(x, y)
    assert out.selectivity == {}
    assert out.total.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-7)
    logged = SelectivityRegularizer(model, alpha=0.0, always_compute_selectivity=True)(x, y)
    hidden = torch.relu(model.fc1(model.flatten(model.normalize(x)))).detach()
    assert logged.selectivity["relu1"].item() == pytest.approx(
        _direct_si(hidden.double(), y).item(), rel=1e-5
    )
    assert logged.total.item() == pytest.approx(out.total.item(), rel=1e-7)


def test_single_class_batch_is_skipped_with_one_warning() -> None:
    torch.manual_seed(0)
    model = MLP((4,), 3, widths=(6,))
    reg = SelectivityRegularizer(model, alpha=-1.0)
    x, y = torch.rand(5, 4), torch.zeros(5, dtype=torch.int64)
    with pytest.warns(RuntimeWarning, match="fewer than two classes"):
        out = reg(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg(x, y)
    assert reg.skipped_batches == 2 and out.selectivity == {} and out.classes_present == 1
    assert out.total.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-7)


def test_errors_name_the_problem() -> None:
    model = MLP((4,), 3, widths=(6,))
    with pytest.raises(TypeError, match="alpha is required"):
        SelectivityRegularizer(model)
    with pytest.raises(ValueError, match="unknown layer"):
        SelectivityRegularizer(model, ["fc9"], alpha=1.0)
    with pytest.raises(ValueError, match="alpha must be finite"):
        SelectivityRegularizer(model, alpha=float("nan"))
    reg = SelectivityRegularizer(MLP((4,), 5, widths=(6,)), alpha=1.0, num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        reg(torch.rand(4, 4), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="integer"):
        reg(torch.rand(4, 4), torch.tensor([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="layers"):
        reg.load_state_dict({"layers": ["relu9"]})


def test_training_with_negative_alpha_lowers_selectivity() -> None:
    """30 Adam steps on random 4-class data: alpha = -2 ends far less selective than +2."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(256, 1, 6, 6, generator=g), torch.arange(256) % 4
    x = x + 0.5 * F.one_hot(y, 36).float().reshape(256, 1, 6, 6)  # learnable classes
    means = {}
    for alpha in (-2.0, 2.0):
        torch.manual_seed(0)
        model = MLP((1, 6, 6), 4, widths=(32, 32))
        reg = SelectivityRegularizer(model, alpha=alpha)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for step in range(30):
            idx = torch.arange(step * 64, step * 64 + 64) % 256
            opt.zero_grad(set_to_none=True)
            reg(x[idx], y[idx]).total.backward()
            opt.step()
        with torch.no_grad():
            out = SelectivityRegularizer(model, alpha=0.0, always_compute_selectivity=True)(x, y)
        means[alpha] = float(torch.stack(list(out.selectivity.values())).mean())
    assert means[-2.0] < 0.5 * means[2.0], means
