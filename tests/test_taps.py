"""Tests for snnl.taps: hooks against a manual forward, gradients, clean-up, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from snnl.models import MLP, ReferenceCNN, ResNet20
from snnl.taps import LayerTap, capture, resolve_layers


def _hook_counts(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_tap_matches_manual_forward_mlp() -> None:
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, widths=(16, 12))
    x = torch.rand(5, 1, 8, 8)
    with LayerTap(model, ["fc1", "relu2", "relu1"]) as tap:
        logits = model(x)
    # manual forward, module by module
    h0 = model.flatten(model.normalize(x))
    fc1 = model.fc1(h0)
    r1 = model.relu1(fc1)
    r2 = model.relu2(model.fc2(r1))
    assert list(tap.outputs) == ["fc1", "relu2", "relu1"]
    torch.testing.assert_close(tap.outputs["fc1"], fc1)
    torch.testing.assert_close(tap.outputs["relu1"], r1)
    torch.testing.assert_close(tap.outputs["relu2"], r2)
    torch.testing.assert_close(logits, model.logits(r2))


def test_tap_matches_manual_forward_cnn_unflattened() -> None:
    torch.manual_seed(0)
    model = ReferenceCNN((1, 28, 28), 10, channels=4)
    x = torch.rand(3, 1, 28, 28)
    with LayerTap(model, "hidden") as tap:
        model(x)
    r1 = model.relu1(model.conv1(model.normalize(x)))
    r2 = model.relu2(model.conv2(r1))
    r3 = model.relu3(model.conv3(r2))
    assert [t.shape for t in tap.outputs.values()] == [r1.shape, r2.shape, r3.shape]
    for got, ref in zip(tap.outputs.values(), (r1, r2, r3), strict=True):
        torch.testing.assert_close(got, ref)


def test_tap_keeps_latest_pass_only() -> None:
    model = MLP((4,), 2, widths=(3,))
    with LayerTap(model, ["relu1"]) as tap:
        model(torch.rand(2, 4))
        x = torch.rand(6, 4)
        model(x)
    torch.testing.assert_close(tap.outputs["relu1"], model.relu1(model.fc1(x)))


def test_gradients_flow_through_tapped_outputs() -> None:
    torch.manual_seed(0)
    model = MLP((4,), 2, widths=(3, 3))
    with LayerTap(model, ["relu1"]) as tap:
        model(torch.rand(8, 4) + 1.0)
    loss = tap.outputs["relu1"].pow(2).sum()
    loss.backward()
    assert model.fc1.weight.grad is not None and model.fc1.weight.grad.abs().sum() > 0
    # layers after the tapped one get no gradient from this loss
    assert model.fc2.weight.grad is None
    # gradient equals the hand derivative: d/dW sum relu(Wx+b)^2 = 2 relu(z) 1[z>0] x^T
    x = torch.rand(8, 4) + 1.0
    model.zero_grad()
    with LayerTap(model, ["relu1"]) as tap:
        model(x)
    tap.outputs["relu1"].pow(2).sum().backward()
    z = x @ model.fc1.weight.detach().T + model.fc1.bias.detach()
    expected = (2 * z.clamp(min=0) * (z > 0)).T @ x
    torch.testing.assert_close(model.fc1.weight.grad, expected)


def test_hooks_removed_after_exit_and_after_exception() -> None:
    model = ResNet20((1, 8, 8), 3)
    assert _hook_counts(model) == 0
    with LayerTap(model, "hidden"):
        assert _hook_counts(model) == len(model.hidden_layer_names) + 2
        model(torch.rand(2, 1, 8, 8))
    assert _hook_counts(model) == 0
    with pytest.raises(ZeroDivisionError), LayerTap(model, ["stage1.0", "relu"]):
        model(torch.rand(2, 1, 8, 8))
        _ = 1 / 0
    assert _hook_counts(model) == 0
    # an error raised inside the forward pass (wrong input shape) also cleans up
    with pytest.raises(RuntimeError), LayerTap(model, ["stage1.0"]):
        model(torch.rand(2, 5, 8, 8))
    assert _hook_counts(model) == 0
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_unknown_name_lists_available() -> None:
    model = MLP((4,), 2, widths=(3,))
    with pytest.raises(ValueError, match=r"nope.*available: .*fc1.*relu1.*logits"):
        LayerTap(model, ["relu1", "nope"])
    with pytest.raises(ValueError, match="more than once"):
        resolve_layers(model, ["relu1", "relu1"])
    with pytest.raises(ValueError, match="no layers"):
        resolve_layers(model, [])


class _Reuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(self.act(self.fc(x))))


class _Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 1e9:  # never taken
            h = self.b(h)
        return self.act(h)


def test_fired_twice_raises_naming_layer() -> None:
    model = _Reuse()
    with pytest.raises(RuntimeError, match=r"'act' fired more than once"), LayerTap(model, ["act"]):
        model(torch.rand(2, 3))
    assert _hook_counts(model) == 0


def test_did_not_fire_raises_naming_layer() -> None:
    model = _Branch()
    with pytest.raises(RuntimeError, match=r"\['b'\] did not fire"), LayerTap(model, ["a", "b"]):
        model(torch.rand(2, 3))
    # the skipped layer alone is fine when not requested
    with LayerTap(model, ["a", "act"]) as tap:
        model(torch.rand(2, 3))
    assert list(tap.outputs) == ["a", "act"]


def test_resolve_hidden_fallback_to_activation_modules() -> None:
    net = nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 1))
    assert resolve_layers(net, "hidden") == ("1", "3")
    assert resolve_layers(_Branch(), "hidden") == ("act",)
    assert resolve_layers(MLP((4,), 2, widths=(3, 3)), "hidden") == ("relu1", "relu2")
    with pytest.raises(ValueError, match="no activation modules"):
        resolve_layers(nn.Linear(2, 2), "hidden")


def test_capture_batches_flattens_and_restores_mode() -> None:
    torch.manual_seed(0)
    model = ResNet20((1, 8, 8), 4)
    model.train()
    model.stage2.eval()  # mixed modes must come back exactly
    x = torch.rand(11, 1, 8, 8)
    out = capture(model, x, ["stage1.0", "stage3.2", "logits"], batch_size=4)
    assert list(out) == ["stage1.0", "stage3.2", "logits"]
    assert model.training and model.stage1.training and not model.stage2.training
    assert not out["logits"].requires_grad
    # reference: eval-mode manual forward on the whole batch at once
    model.eval()
    with torch.no_grad():
        h = model.relu(model.bn(model.conv(model.normalize(x))))
        s1 = model.stage1[0](h)
        s3 = model.stage3(model.stage2(model.stage1[2](model.stage1[1](s1))))
        logits = model(x)
    torch.testing.assert_close(out["stage1.0"], s1.reshape(11, -1))
    torch.testing.assert_close(out["stage3.2"], s3.reshape(11, -1))
    torch.testing.assert_close(out["logits"], logits)
    assert out["stage1.0"].shape == (11, 16 * 8 * 8)


def test_capture_logits_without_module_and_grad() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.rand(7, 3)
    out = capture(net, x, ["logits", "1"], batch_size=3, grad=True)
    assert list(out) == ["logits", "1"]
    torch.testing.assert_close(out["logits"], net(x))
    out["1"].sum().backward()
    assert net[0].weight.grad is not None
    only = capture(net, x, "logits")
    torch.testing.assert_close(only["logits"], net(x).detach())


def test_capture_errors() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    with pytest.raises(TypeError):
        capture(net, [[1.0, 2.0, 3.0]], ["1"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        capture(net, torch.rand(2, 3), ["1"], batch_size=0)
    with pytest.raises(ValueError, match="available"):
        capture(net, torch.rand(2, 3), ["2"])
