"""Temperature modes and SNNL formulas of EntanglementRegularizer (issue 8).

References are independent: scipy's bounded search on a float64 plain SNNL for the
optimum, float64 autograd through a dense SNNL for gradients, and a float64
transcription of the authors' formula.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from reference import dense_snnl, snnl_star_reference
from snnl.distances import Distance
from snnl.loss import SNNLWarning
from snnl.models import MLP
from snnl.regularizers import (
    EntanglementRegularizer,
    optimal_log_temperature,
    reference_formula_snnl,
    regularized_loss,
)
from snnl.regularizers.modes import STRATEGIES, TemperatureMode, TemperatureState
from snnl.temperature import snnl_log_temperature_slope, whole_block_log_temperature_slope

# tiny problems: one torch thread (see conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _min_snnl64(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(log T*, SNNL*) by the float64 dense scan + Brent of tests/reference.py."""
    t, v = snnl_star_reference(x.double().numpy(), y.numpy())
    return math.log(t), v


def _batch(n: int = 60, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, d, generator=g) + 1.5 * F.one_hot(y, 4).float().repeat(1, 2)[:, :d]
    return x, y


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_optimal_log_temperature_finds_the_minimum(scale: float) -> None:
    x, y = _batch()
    x = x * scale
    u_ref, v_ref = _min_snnl64(x, y)
    for start in (None, u_ref + 0.7, u_ref - 2.0):
        u, v, _ = optimal_log_temperature(x, y, start=start)
        assert abs(v - v_ref) <= 1e-7 * max(1.0, v_ref), (start, v, v_ref)
        assert float(dense_snnl(x.double(), y, math.exp(u))) - v_ref <= 1e-9


def test_optimal_mode_value_and_gradient_equal_float64_snnl_at_t_star() -> None:
    torch.manual_seed(0)
    model = MLP((6,), 4, widths=(16, 12))
    x, y = _batch()
    alpha = 0.7
    reg = EntanglementRegularizer(model, alpha=alpha)  # optimal mode is the default
    out = reg(x, y)
    out.total.backward()

    ref = copy.deepcopy(model).double()
    for p in ref.parameters():
        p.grad = None
    h1 = torch.relu(ref.fc1(ref.flatten(ref.normalize(x.double()))))
    h2 = torch.relu(ref.fc2(h1))
    logits = ref.logits(h2)
    total = F.cross_entropy(logits, y)
    for name, h in (("relu1", h1), ("relu2", h2)):
        _, v_ref = _min_snnl64(h.detach(), y)
        assert out.snnl[name].item() == pytest.approx(v_ref, rel=2e-6, abs=1e-7), name
        # the gradient is that of SNNL at T* with T held fixed (envelope theorem)
        total = total - alpha * dense_snnl(h, y, out.temperatures[name])
    total.backward()
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_optimal_snnl_is_scale_invariant() -> None:
    x, y = _batch(d=8, seed=2)
    values = []
    for c in (1.0, 10.0, 0.1):
        u, v, _ = optimal_log_temperature(x * c, y)
        values.append(v)
    assert values[1] == pytest.approx(values[0], rel=1e-6)
    assert values[2] == pytest.approx(values[0], rel=1e-6)

    class Scaled(torch.nn.Module):  # the same network with its hidden layer times c
        def __init__(self, c: float) -> None:
            super().__init__()
            self.c = c
            self.fc = torch.nn.Linear(8, 16)
            self.relu1 = torch.nn.ReLU()
            self.logits = torch.nn.Linear(16, 4)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.logits(self.relu1(self.fc(z) * self.c) / self.c)

    torch.manual_seed(0)
    base = Scaled(1.0)
    outs = []
    for c in (1.0, 10.0, 0.1):
        m = copy.deepcopy(base)
        m.c = c
        outs.append(EntanglementRegularizer(m, ["relu1"], alpha=1.0)(x, y).snnl["relu1"].item())
    assert outs[1] == pytest.approx(outs[0], rel=1e-5)
    assert outs[2] == pytest.approx(outs[0], rel=1e-5)


def _authors_snnl64(x: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
    """The authors' formula, line by line, in float64 (cleverhans SNNLCrossEntropy)."""
    x = x.reshape(x.shape[0], -1).double()
    n = x.shape[0]
    rows = []
    for i in range(n):
        f = [
            math.exp(-float(((x[i] - x[j]) ** 2).sum()) / t) - (1.0 if i == j else 0.0)
            for j in range(n)
        ]
        denom = 1e-5 + sum(f)
        picked = sum(f[j] / denom for j in range(n) if int(y[j]) == int(y[i]))
        rows.append(-math.log(1e-5 + picked))
    return torch.tensor(sum(rows) / n, dtype=torch.float64)


def test_reference_formula_equals_authors_transcription() -> None:
    x, y = _batch(24, 5, seed=4)
    for t in (0.5, 3.0, 30.0):
        ours = reference_formula_snnl(x.double(), y, t)
        assert ours.item() == pytest.approx(_authors_snnl64(x, y, t).item(), rel=1e-10)
    # float32, as the authors ran it; at T = 0.5 on this batch their formula is NaN in
    # float32 (d_ii is not exactly 0 in the expansion and a row sum of f goes negative)
    for t in (3.0, 30.0):
        ours32 = reference_formula_snnl(x, y, t)
        assert ours32.item() == pytest.approx(_authors_snnl64(x, y, t).item(), rel=1e-5)
    # every exp underflows: 11.51 with an exactly zero gradient (the exact loss is not stuck)
    far = (torch.arange(24.0)[:, None] * 100.0).requires_grad_(True)  # d_ii exactly 0
    value = reference_formula_snnl(far, y, 1.0)
    assert value.item() == pytest.approx(-math.log(1e-5), rel=1e-6)
    (grad,) = torch.autograd.grad(value, far)
    assert torch.count_nonzero(grad) == 0


def test_reference_formula_in_the_regularizer() -> None:
    torch.manual_seed(0)
    model = MLP((5,), 4, widths=(8,))
    x, y = _batch(24, 5, seed=4)
    reg = EntanglementRegularizer(
        model, alpha=2.0, temperature=3.0, temperature_mode="fixed", snnl_formula="reference"
    )
    out = reg(x, y)
    h = torch.relu(model.fc1(model.flatten(model.normalize(x)))).detach()
    assert out.snnl["relu1"].item() == pytest.approx(_authors_snnl64(h, y, 3.0).item(), rel=1e-4)


def test_reference_mode_takes_the_authors_step_on_t() -> None:
    torch.manual_seed(0)
    model = MLP((6,), 4, widths=(10,))
    x, y = _batch()
    t0 = 5.0
    reg = EntanglementRegularizer(model, alpha=1.0, temperature=t0, temperature_mode="reference")
    h = torch.relu(model.fc1(model.flatten(model.normalize(x)))).detach().double()
    t = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(dense_snnl(h, y, t0 / t), t)
    expected_t = 1.0 - 0.1 * float(g)
    out = reg(x, y)
    assert out.temperatures["relu1"] == pytest.approx(t0 / expected_t, rel=1e-5)
    assert out.snnl["relu1"].item() == pytest.approx(
        float(dense_snnl(h, y, t0 / expected_t)), rel=1e-5
    )


def _gram_products(fn, n: int) -> int:
    """How many (m, D) x (D, n) products with m >= n / 2 (anchors against all n points;
    not the spot checks' few anchors) ``fn`` runs: every aten mm/addmm, also inside
    registered ops."""
    from torch.profiler import profile

    with profile(record_shapes=True) as prof:
        fn()
    count = 0
    for event in prof.events():
        if event.name in ("aten::mm", "aten::addmm"):  # addmm: (bias, mat1, mat2, beta, alpha)
            a, b = event.input_shapes[1:3] if event.name == "aten::addmm" else event.input_shapes
            count += len(a) == len(b) == 2 and 2 * a[0] >= b[1] == n and a[1] == b[0]
    return count


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("mode", ["optimal", "reference"])
def test_temperature_choice_and_loss_share_one_logits_product(mode, distance) -> None:
    """In a training step the optimal mode's search for T* (grid, then warm-started) and
    the reference mode's slope at the old T take the batch's distances from the loss's
    own block logits: one N x N product per layer (was two: the choice's own distances),
    and the same temperatures and values as the choice on the features (a class of one
    point left out)."""
    torch.manual_seed(0)
    model = MLP((6,), 5, widths=(10, 10))
    twin = copy.deepcopy(model)
    x, y = _batch()
    x, y = torch.cat([x, torch.randn(1, 6)]), torch.cat([y, torch.tensor([4])])
    regs = [
        EntanglementRegularizer(
            m, alpha=1.0, temperature=5.0, temperature_mode=mode, distance=distance
        )
        for m in (model, twin)
    ]
    n = len(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SNNLWarning)  # the class of one point
        for step in range(3):  # the optimal mode: the grid, then warm starts
            xb, out = x + 0.1 * step, {}

            def train(xb=xb, out=out):
                out["shared"] = regs[0](xb, y)
                out["shared"].total.backward()

            def own(xb=xb, out=out):
                with torch.no_grad():  # no fused pass to share: the choice, then the loss
                    out["own"] = regs[1](xb, y, update_temperature=True)

            assert _gram_products(train, n) == 2  # one per layer
            assert _gram_products(own, n) == 4
            for name in regs[0].layers:
                temps = [out[k].temperatures[name] for k in ("shared", "own")]
                values = [out[k].snnl[name].item() for k in ("shared", "own")]
                assert temps[0] == pytest.approx(temps[1], rel=1e-5)
                assert values[0] == pytest.approx(values[1], rel=1e-5)
    assert regs[0].search_evaluations > 0 or mode == "reference"


def test_reference_mode_refuses_a_step_to_non_positive_t() -> None:
    torch.manual_seed(0)
    model = MLP((6,), 4, widths=(10,))
    x, y = _batch()
    reg = EntanglementRegularizer(model, alpha=1.0, temperature=1e-5, temperature_mode="reference")
    reg._state.t["relu1"].fill_(1e-3)  # T = 0.01: a step of 0.1 * dSNNL/dt would cross zero
    with pytest.warns(RuntimeWarning, match="refused"):
        reg(x, y)
    assert reg.refused_steps >= 1
    assert reg.temperatures["relu1"] > 0


def test_optimal_mode_temperature_follows_the_batch_and_resumes(tmp_path) -> None:
    torch.manual_seed(0)
    model = MLP((6,), 4, widths=(10,))
    x, y = _batch()
    a = EntanglementRegularizer(model, alpha=1.0, regrid_every=3)
    for _ in range(4):
        a(x, y)
    torch.save(a.state_dict(), tmp_path / "r.pt")
    b = EntanglementRegularizer(model, alpha=1.0, regrid_every=3)
    b.load_state_dict(torch.load(tmp_path / "r.pt", weights_only=True))
    for _ in range(4):
        assert a(x, y).snnl["relu1"].item() == b(x, y).snnl["relu1"].item()
        assert a.temperatures == b.temperatures


def test_regularized_loss_runs_one_forward_pass() -> None:
    torch.manual_seed(0)
    model = MLP((6,), 4, widths=(10, 8))
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    x, y = _batch()
    one = EntanglementRegularizer(
        model, ["relu1"], alpha=0.5, temperature=2.0, temperature_mode="fixed"
    )
    two = EntanglementRegularizer(
        model, ["relu2"], alpha=0.25, temperature=3.0, temperature_mode="fixed"
    )
    two.name = "snnl2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SNNLWarning)
        out = regularized_loss(model, x, y, [one, two])
    assert len(calls) == 1
    sep1, sep2 = one(x, y), two(x, y)
    expected = sep1.cross_entropy - 0.5 * sep1.snnl["relu1"] - 0.25 * sep2.snnl["relu2"]
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_bad_mode_and_formula_names() -> None:
    model = MLP((6,), 4, widths=(10,))
    with pytest.raises(ValueError, match="optimal, learned, reference, fixed"):
        EntanglementRegularizer(model, alpha=1.0, temperature_mode="adam")
    with pytest.raises(ValueError, match="exact, reference"):
        EntanglementRegularizer(model, alpha=1.0, snnl_formula="cleverhans")


def test_learned_mode_takes_one_adam_step_on_the_float64_slope() -> None:
    """The learned step's gradient on log T is dSNNL/dlog T of the float64 dense formula
    (one pass, no autograd through the loss): log T after one call equals torch's Adam
    step from it, and the call's SNNL uses the T before the step."""
    torch.manual_seed(0)
    model = MLP((6,), 4, widths=(10,))
    x, y = _batch()
    t0, lr = 2.0, 0.05
    reg = EntanglementRegularizer(
        model, alpha=1.0, temperature=t0, temperature_mode="learned", temperature_lr=lr
    )
    h = torch.relu(model.fc1(model.flatten(model.normalize(x)))).detach().double()
    leaf = torch.tensor(t0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(dense_snnl(h, y, leaf), leaf)
    log_t = torch.tensor(math.log(t0), dtype=torch.float64, requires_grad=True)
    log_t.grad = (t0 * g).reshape(())
    torch.optim.Adam([log_t], lr=lr).step()
    out = reg(x, y)
    assert out.temperatures["relu1"] == pytest.approx(t0, rel=1e-12)
    assert out.snnl["relu1"].item() == pytest.approx(float(dense_snnl(h, y, t0)), rel=1e-5)
    assert math.log(reg.temperatures["relu1"]) == pytest.approx(float(log_t.detach()), rel=1e-9)


@pytest.mark.parametrize("scale", [1.0, 1e18, 1e20])
def test_temperature_slope_dense_and_one_pass_agree_with_float64(scale) -> None:
    """A temperature step's slope: the closed form over the loss's block logits on a
    mini-batch (kernel units: at 1e18 and 1e20 too, where |x|^2 and T are beyond
    float32) and the one-pass slope (used beyond a mini-batch), both equal to autograd
    through the float64 dense formula."""
    x, y = _batch(40, 6, seed=7)
    x = torch.relu(x) * scale
    t = 3.0 * scale * scale
    leaf = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(dense_snnl(x.double() / scale, y, leaf / scale**2), leaf)
    expected = t * float(g)
    strategy = STRATEGIES[TemperatureMode.REFERENCE](
        TemperatureState({"h": t}), layers=["h"], snnl=None, distance=Distance.EUCLIDEAN,
        lr=0.1, regrid_every=1,
    )  # fmt: skip
    assert strategy.slope(x, y, t) == pytest.approx(expected, rel=1e-4)
    shared = whole_block_log_temperature_slope(x, y, t)
    assert shared == pytest.approx(expected, rel=1e-4)
    assert shared == strategy.slope(x, y, t)  # the strategy takes this form here
    _, one_pass = snnl_log_temperature_slope(x, y, t)
    assert one_pass == pytest.approx(expected, rel=1e-4)
