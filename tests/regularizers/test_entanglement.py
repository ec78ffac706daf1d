"""Tests for snnl.regularizers.EntanglementRegularizer against hand-computed references."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import snnl.regularizers.entanglement as regmod
from reference import dense_snnl, snnl_reference_mean
from snnl.loss import SNNLWarning
from snnl.models import MLP, ReferenceCNN
from snnl.regularizers import EntanglementRegularizer
from snnl.taps import capture
from snnl.temperature import optimal_temperature

# tiny problems: one torch thread (see conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp_hidden(model: MLP, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    h = model.flatten(model.normalize(x))
    r1 = torch.relu(model.fc1(h))
    r2 = torch.relu(model.fc2(r1))
    return [r1, r2], model.logits(r2)


def _batch(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.arange(n) % 4
    y[-1] = 7  # one anchor without a positive: left out of the SNNL
    return x, y


@pytest.mark.parametrize("learn", [False, True])
def test_total_and_gradient_match_float64_reference_mlp(learn: bool) -> None:
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 8, widths=(16, 12))
    x, y = _batch()
    temps = {"relu1": 0.7, "relu2": 2.0}
    alpha = 0.5
    reg = EntanglementRegularizer(
        model,
        "hidden",
        alpha=alpha,
        temperature=temps,
        temperature_mode="learned" if learn else "fixed",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SNNLWarning)
        out = reg(x, y)
    out.total.backward()

    # reference: hand-run forward in float64, plain-loop SNNL, dense autograd SNNL
    ref_model = copy.deepcopy(model).double()
    hs, logits = _mlp_hidden(ref_model, x.double())
    ce = F.cross_entropy(logits, y)
    pairs = list(zip(temps, hs, strict=True))
    loop = [snnl_reference_mean(h.detach().numpy(), y.numpy(), temps[n]) for n, h in pairs]
    expected_total = ce.item() - alpha * sum(loop)
    assert out.total.item() == pytest.approx(expected_total, rel=1e-5, abs=1e-5)
    assert out.cross_entropy.item() == pytest.approx(ce.item(), rel=1e-5)
    for (name, value), ref in zip(out.snnl.items(), loop, strict=True):
        assert value.item() == pytest.approx(ref, rel=1e-5, abs=1e-6), name
    assert out.temperatures == pytest.approx(temps, rel=1e-12)
    assert out.left_out == 1

    ref_total = ce - alpha * sum(dense_snnl(h, y, temps[n]) for n, h in pairs)
    ref_total.backward()
    for (name, p), (_, q) in zip(
        model.named_parameters(), ref_model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_total_matches_reference_cnn_flattened() -> None:
    torch.manual_seed(1)
    model = ReferenceCNN((1, 8, 8), 8, channels=2)
    x, y = _batch(20, seed=3)
    alpha = -0.3
    reg = EntanglementRegularizer(model, alpha=alpha, temperature=1.5, temperature_mode="fixed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SNNLWarning)
        out = reg(x, y)
    m = copy.deepcopy(model).double()
    r1 = torch.relu(m.conv1(m.normalize(x.double())))
    r2 = torch.relu(m.conv2(r1))
    r3 = torch.relu(m.conv3(r2))
    logits = m.logits(m.flatten(r3))
    ce = F.cross_entropy(logits, y).item()
    loop = [snnl_reference_mean(r.detach().numpy(), y.numpy(), 1.5) for r in (r1, r2, r3)]
    assert out.total.item() == pytest.approx(ce - alpha * sum(loop), rel=1e-5, abs=1e-5)
    assert list(out.snnl) == ["relu1", "relu2", "relu3"]


def test_alpha_zero_skips_snnl(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 8, widths=(6,))
    x, y = _batch()
    reg = EntanglementRegularizer(model, alpha=0.0, temperature=3.0, temperature_mode="learned")

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("SNNL computed although alpha == 0")

    monkeypatch.setattr(regmod, "soft_nearest_neighbor_loss", boom)
    out = reg(x, y)
    monkeypatch.undo()
    ce = F.cross_entropy(model(x), y)
    assert out.snnl == {}
    assert out.total.item() == pytest.approx(ce.item(), rel=1e-6)
    assert reg.temperatures["relu1"] == pytest.approx(3.0)  # nothing updated

    logged = EntanglementRegularizer(
        model, alpha=0.0, temperature=3.0, always_compute_snnl=True, temperature_mode="fixed"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SNNLWarning)
        out = logged(x, y)
    h = torch.relu(model.fc1(model.flatten(x))).detach()
    assert out.snnl["relu1"].item() == pytest.approx(
        snnl_reference_mean(h.numpy(), y.numpy(), 3.0), rel=1e-5
    )
    assert out.total.item() == pytest.approx(ce.item(), rel=1e-6)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm], y[perm]


def _train(x: torch.Tensor, y: torch.Tensor, alpha: float, steps: int = 40) -> dict[str, float]:
    torch.manual_seed(0)
    model = MLP((64,), 10, widths=(32, 32))
    reg = EntanglementRegularizer(
        model, alpha=alpha, temperature=0.1, temperature_lr=0.05, temperature_mode="learned"
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for s in range(steps):
        idx = torch.randint(400, len(x), (128,), generator=torch.Generator().manual_seed(s))
        out = reg(x[idx], y[idx])
        opt.zero_grad()
        out.total.backward()
        opt.step()
    feats = capture(model, x[:400], "hidden")
    return {n: optimal_temperature(f, y[:400])[1] for n, f in feats.items()}


def test_sign_of_alpha_on_digits(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    base = _train(x, y, 0.0)
    entangled = _train(x, y, 0.1)
    clustered = _train(x, y, -0.1)
    for layer in base:
        # SNNL at the optimal temperature on held-out points
        assert entangled[layer] > base[layer] + 0.05, (layer, entangled, base)
        assert clustered[layer] < base[layer] - 0.01, (layer, clustered, base)


def test_learned_temperature_moves_to_minimiser(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    torch.manual_seed(0)
    model = MLP((64,), 10, widths=(32,))
    xb, yb = x[:200], y[:200]
    t_star, _ = optimal_temperature(capture(model, xb, ["relu1"])["relu1"], yb)
    for offset in (3.0, -2.0):  # start e^3 times too hot, e^2 times too cold
        start = t_star * math.exp(offset)
        reg = EntanglementRegularizer(
            model, ["relu1"], alpha=1.0, temperature=start, temperature_mode="learned"
        )
        gaps = []
        for _ in range(150):  # fixed features: the model is never stepped
            reg(xb, yb)
            gaps.append(abs(math.log(reg.temperatures["relu1"] / t_star)))
        assert gaps[0] < abs(offset)
        assert gaps[-1] < 0.2, gaps[::10]


def test_network_gradient_equals_fixed_temperature_gradient() -> None:
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 8, widths=(16, 12))
    twin = copy.deepcopy(model)
    x, y = _batch()
    y[-1] = 0
    learned = EntanglementRegularizer(model, alpha=2.0, temperature=0.5, temperature_mode="learned")
    fixed = EntanglementRegularizer(twin, alpha=2.0, temperature=0.5, temperature_mode="fixed")
    out_l = learned(x, y)
    moved = learned.temperatures
    out_f = fixed(x, y)
    assert out_l.temperatures == out_f.temperatures
    assert all(moved[n] != 0.5 for n in moved)  # the temperature step happened
    out_l.total.backward()
    out_f.total.backward()
    assert learned.temperatures == moved  # the network's backward did not touch T
    assert all(p.grad is None for p in learned._log_t.values())
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), n


def test_no_grad_call_does_not_update_temperature() -> None:
    model = MLP((1, 8, 8), 8, widths=(6,))
    x, y = _batch()
    y[-1] = 0
    reg = EntanglementRegularizer(model, alpha=1.0, temperature=0.5, temperature_mode="learned")
    with torch.no_grad():
        out = reg(x, y)
    assert reg.temperatures["relu1"] == pytest.approx(0.5, rel=1e-12)
    assert not out.total.requires_grad
    reg(x, y, update_temperature=False)
    assert reg.temperatures["relu1"] == pytest.approx(0.5, rel=1e-12)


def test_state_dict_round_trip_resumes_exactly(tmp_path) -> None:
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 8, widths=(16, 12))
    x, y = _batch()
    y[-1] = 0
    reg = EntanglementRegularizer(model, alpha=1.0, temperature=0.3, temperature_mode="learned")
    for _ in range(5):
        reg(x, y)
    path = tmp_path / "reg.pt"
    torch.save(reg.state_dict(), path)
    state = torch.load(path, weights_only=True)

    resumed = EntanglementRegularizer(model, alpha=1.0, temperature=9.0, temperature_mode="learned")
    resumed.load_state_dict(state)
    assert resumed.temperatures == reg.temperatures
    for _ in range(5):
        reg(x, y)
        resumed(x, y)
        assert resumed.temperatures == reg.temperatures  # bit-exact, Adam moments included

    # the optimiser state matters: log T alone does not reproduce the updates
    fresh = EntanglementRegularizer(model, alpha=1.0, temperature=9.0, temperature_mode="learned")
    with torch.no_grad():
        for n, p in fresh._log_t.items():
            p.copy_(state["log_temperature"][n])
    reg2 = EntanglementRegularizer(model, alpha=1.0, temperature=9.0, temperature_mode="learned")
    reg2.load_state_dict(state)
    reg2(x, y)
    fresh(x, y)
    assert fresh.temperatures != reg2.temperatures


def test_warns_once_about_anchors_without_positive() -> None:
    model = MLP((1, 8, 8), 8, widths=(6, 5))
    x, y = _batch()
    reg = EntanglementRegularizer(model, alpha=1.0, temperature=1.0, temperature_mode="fixed")
    with pytest.warns(SNNLWarning, match="1 of 24 anchors") as record:
        out = reg(x, y)
        reg(x, y)
    assert len([w for w in record if issubclass(w.category, SNNLWarning)]) == 1
    assert out.left_out == 1


def test_bad_inputs_raise() -> None:
    model = MLP((1, 8, 8), 8, widths=(6,))
    with pytest.raises(TypeError, match="nn.Module"):
        EntanglementRegularizer(lambda x: x, alpha=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="alpha is required"):
        EntanglementRegularizer(model)
    for alpha in (math.nan, math.inf):
        with pytest.raises(ValueError, match="alpha must be finite"):
            EntanglementRegularizer(model, alpha=alpha)
    with pytest.raises(TypeError, match="alpha"):
        EntanglementRegularizer(model, alpha="1")  # type: ignore[arg-type]
    for t in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="temperature"):
            EntanglementRegularizer(model, alpha=1.0, temperature=t)
    with pytest.raises(ValueError, match="missing"):
        EntanglementRegularizer(model, alpha=1.0, temperature={"fc1": 1.0})
    for lr in (0.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="temperature_lr"):
            EntanglementRegularizer(model, alpha=1.0, temperature_lr=lr)
    with pytest.raises(ValueError, match="available"):
        EntanglementRegularizer(model, ["relu9"], alpha=1.0)
    with pytest.raises(ValueError, match="distance"):
        EntanglementRegularizer(model, alpha=1.0, distance="manhattan")

    reg = EntanglementRegularizer(model, alpha=1.0, temperature_mode="fixed")
    x, y = _batch()
    with pytest.raises(TypeError, match="integer"):
        reg(x, y.float())
    with pytest.raises(ValueError, match="shape"):
        reg(x, y[:-1])
    with pytest.raises(ValueError, match="temperature_mode"):
        reg(x, y, update_temperature=True)
    other = EntanglementRegularizer(model, ["fc1"], alpha=1.0, temperature_mode="fixed")
    with pytest.raises(ValueError, match="layers"):
        reg.load_state_dict(other.state_dict())
    learned = EntanglementRegularizer(model, alpha=1.0, temperature_mode="learned")
    with pytest.raises(ValueError, match="temperature_mode"):
        learned.load_state_dict(reg.state_dict())
