"""The regularisers in a user's own training loop (issue 19): EntanglementRegularizer (every
TemperatureMode) and SelectivityRegularizer under autocast, create_graph (gradient
penalties, Hessian-vector products), torch.func (grad, vmap over parameter sets),
torch.compile(fullgraph=True) of a step calling regularized_loss, and deterministic
algorithms; each against a float64 reference written here (a hand-written forward of the
model, the dense SNNL formula of tests/reference.py, a plain class-selectivity loop).
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from snnl.regularizers import (
    EntanglementRegularizer,
    SelectivityRegularizer,
    regularized_loss,
)

sys.path.insert(0, str(Path(__file__).parents[1]))
from reference import dense_snnl  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MODES = ["optimal", "learned", "reference", "fixed"]
REGS = [*MODES, "selectivity"]
LAYERS = ["act1", "act2"]
ALPHA = 0.3


def _model(dtype=torch.float64, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(5, 8),
            act1=nn.Softplus(),
            fc2=nn.Linear(8, 6),
            act2=nn.Softplus(),
            out=nn.Linear(6, 3),
        )
    ).to(dtype)


def _data(n=30, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 5, generator=g, dtype=dtype) + y[:, None].to(dtype) * 0.7
    return x, y


def _reg(kind: str, model: nn.Module):
    if kind == "selectivity":  # num_classes: the static class slots compile needs
        return SelectivityRegularizer(model, LAYERS, alpha=ALPHA, num_classes=3)
    return EntanglementRegularizer(
        model, LAYERS, alpha=ALPHA, temperature=2.0, temperature_mode=kind
    )


# ----------------------------------------------------------------------------- references


def _ref_forward(params: dict, x: torch.Tensor):
    """The model written out: (logits, {layer: activations})."""
    h1 = F.softplus(x @ params["fc1.weight"].T + params["fc1.bias"])
    h2 = F.softplus(h1 @ params["fc2.weight"].T + params["fc2.bias"])
    return h2 @ params["out.weight"].T + params["out.bias"], {"act1": h1, "act2": h2}


def _ref_selectivity(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over units of (mu_max - mean of the other class means) / (sum + 1e-7)."""
    means = torch.stack([h[y == c].mean(0) for c in sorted(set(y.tolist()))])  # (K, U)
    out = []
    for u in range(h.shape[1]):
        col = means[:, u]
        k = int(torch.argmax(col.detach()))
        top = col[k]
        rest = torch.cat([col[:k], col[k + 1 :]]).mean()
        out.append((top - rest) / (top + rest + 1e-7))
    return torch.stack(out).mean()


def _ref_star(h: torch.Tensor, y: torch.Tensor, t_found: float) -> torch.Tensor:
    """SNNL*(h) with its second derivatives, by autograd through the dense formula: T*
    polished by Newton steps on dS/du (u = log T), then u moved with h to first order,
    du/dh = -S_uh / S_uu (the implicit function theorem; value and gradient unchanged)."""
    u = torch.tensor(math.log(t_found), dtype=torch.float64)
    for _ in range(3):
        ur = u.clone().requires_grad_()
        (gu,) = torch.autograd.grad(dense_snnl(h.detach(), y, ur.exp()), ur, create_graph=True)
        (huu,) = torch.autograd.grad(gu, ur)
        u = u - gu.detach() / huu
    ur = u.clone().requires_grad_()
    (gu,) = torch.autograd.grad(dense_snnl(h, y, ur.exp()), ur, create_graph=True)
    (huu,) = torch.autograd.grad(gu, ur, retain_graph=True)
    return dense_snnl(h, y, (u - (gu - gu.detach()) / huu.detach()).exp())


def _ref_loss(kind: str, params: dict, x, y, temperatures: dict | None):
    """CE - alpha * term, in float64, with the temperatures the regulariser used (the
    optimal mode: SNNL* at the T* it found)."""
    logits, hs = _ref_forward(params, x)
    ce = F.cross_entropy(logits, y)
    if kind == "selectivity":
        term = torch.stack([_ref_selectivity(hs[n], y) for n in LAYERS]).mean()
    elif kind == "optimal":
        term = sum(_ref_star(hs[n], y, temperatures[n]) for n in LAYERS)
    else:
        term = sum(dense_snnl(hs[n], y, temperatures[n]) for n in LAYERS)
    return ce - ALPHA * term


def _temps(out):
    return getattr(out, "temperatures", None)


def _params64(model):
    return {k: v.detach().double() for k, v in model.named_parameters()}


# ----------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("kind", REGS)
def test_autocast_bf16_cpu(kind):
    x, y = _data(dtype=torch.float32)
    model = _model(torch.float32)
    reg = _reg(kind, model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = reg(x, y)
        out.total.backward()
    assert out.total.dtype == torch.float32 and out.logits.dtype == torch.bfloat16
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert all(g is not None and g.dtype == torch.float32 for g in grads.values())
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())
    # the value: the float64 formula on the activations autocast produced
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h1 = model.act1(model.fc1(x))
        h2 = model.act2(model.fc2(h1))
        logits = model.out(h2)
    hs = {"act1": h1.double(), "act2": h2.double()}
    ce = F.cross_entropy(logits.double(), y)
    if kind == "selectivity":
        term = torch.stack([_ref_selectivity(hs[n], y) for n in LAYERS]).mean()
    else:
        term = sum(dense_snnl(hs[n], y, out.temperatures[n]) for n in LAYERS)
    assert out.total.item() == pytest.approx((ce - ALPHA * term).item(), rel=2e-3)
    # gradients: close in direction to the float64 reference's
    ref_params = {k: v.detach().double().requires_grad_() for k, v in model.named_parameters()}
    _ref_loss(kind, ref_params, x.double(), y, _temps(out)).backward()
    for k, p in ref_params.items():
        cos = F.cosine_similarity(grads[k].double().flatten(), p.grad.flatten(), dim=0)
        assert cos > 0.97, (k, cos)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", REGS)
def test_autocast_cuda(kind, dtype):
    x, y = _data(n=60, dtype=torch.float32)
    model = _model(torch.float32).cuda()
    reg = _reg(kind, model)
    with torch.autocast("cuda", dtype=dtype):
        out = reg(x.cuda(), y.cuda())
    out.total.backward()
    assert out.total.dtype == torch.float32 and out.logits.dtype == dtype
    ref_params = {
        k: v.detach().double().cpu().requires_grad_() for k, v in model.named_parameters()
    }
    ref = _ref_loss(kind, ref_params, x.double(), y, _temps(out))
    ref.backward()
    assert out.total.item() == pytest.approx(ref.item(), rel=2e-2)
    for k, p in model.named_parameters():
        assert p.grad.dtype == torch.float32
        cos = F.cosine_similarity(p.grad.double().cpu().flatten(), ref_params[k].grad.flatten(), 0)
        assert cos > 0.97, (k, cos)


# ----------------------------------------------------------------------------- create_graph


@pytest.mark.parametrize("kind", REGS)
def test_gradient_penalty_hessian_vector_products(kind):
    """grad of the regularised loss wrt the input with create_graph, then backward: the
    HVP wrt x and the penalty's parameter gradients equal the float64 reference's (the
    optimal mode: SNNL*'s, T* moving with the features; the other modes: at the batch's
    temperatures held fixed)."""
    x, y = _data()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    model = _model()
    reg = _reg(kind, model)
    xr = x.clone().requires_grad_()
    out = reg(xr, y)
    (gx,) = torch.autograd.grad(out.total, xr, create_graph=True)
    assert gx.requires_grad  # never a silently detached gradient
    (hv,) = torch.autograd.grad((gx * v).sum(), xr, retain_graph=True)
    gx.pow(2).sum().backward()
    temps = _temps(out)

    params = _params64(model)
    _, hv_ref = torch.autograd.functional.hvp(lambda a: _ref_loss(kind, params, a, y, temps), x, v)
    torch.testing.assert_close(hv, hv_ref, rtol=1e-8, atol=1e-11)

    ref_params = {k: p.clone().requires_grad_() for k, p in params.items()}
    xr2 = x.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(
        _ref_loss(kind, ref_params, xr2, y, temps), xr2, create_graph=True
    )
    g_ref.pow(2).sum().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[k].grad, rtol=1e-8, atol=1e-11)


# ----------------------------------------------------------------------------- torch.func


class _Step(nn.Module):
    """loss(x, y) of a regulariser as a module, so functional_call swaps the model's params."""

    def __init__(self, reg, model):
        super().__init__()
        self.model, self.reg = model, reg

    def forward(self, x, y):
        return self.reg(x, y).total


@pytest.mark.parametrize("kind", REGS)
def test_func_grad_parameters_and_input(kind):
    """torch.func.grad over the parameters (functional_call) and over the input equals the
    float64 reference's gradient at the temperatures the regulariser used; the modes that
    update their temperature (a search, an Adam step, the authors' step) update it inside
    the transform exactly as one eager call does."""
    x, y = _data()
    model = _model()
    reg = _reg(kind, model)
    step = _Step(reg, model)
    params = {k: v.detach() for k, v in step.named_parameters()}

    def loss(p):
        return torch.func.functional_call(step, p, (x, y))

    twin = _reg(kind, _model())  # the same regulariser, called once eagerly
    twin(x, y).total.backward()
    before = dict(getattr(reg, "temperatures", {}))
    grads = torch.func.grad(loss)(params)
    assert getattr(reg, "temperatures", {}) == pytest.approx(
        getattr(twin, "temperatures", {}), rel=1e-12
    )
    used = before if kind in ("learned", "fixed", "selectivity") else reg._last_temperatures
    if kind == "optimal":  # it stored the batch's T*
        assert reg.temperatures == pytest.approx(used, rel=1e-12)
    ref_params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    _ref_loss(kind, ref_params, x, y, used).backward()
    for k, p in ref_params.items():
        torch.testing.assert_close(grads[f"model.{k}"], p.grad, rtol=1e-9, atol=1e-12)
    gx = torch.func.grad(lambda a: reg(a, y, **_no_update(kind)).total)(x)
    used = getattr(reg, "_last_temperatures", None)
    xr = x.clone().requires_grad_()
    _ref_loss(kind, _params64(model), xr, y, used).backward()
    torch.testing.assert_close(gx, xr.grad, rtol=1e-9, atol=1e-12)


def _no_update(kind):
    return {} if kind == "selectivity" else {"update_temperature": False}


@pytest.mark.parametrize("kind", REGS)
def test_vmap_over_parameter_sets(kind):
    """An ensemble of K models (stacked parameters) in one vmap, without temperature
    updates (a batched state cannot be stored; the optimal mode finds each model's own T*):
    equal to a loop over the K models; asking for an update under vmap raises."""
    x, y = _data()
    models = [_model(seed=s) for s in range(3)]
    regs = [_reg(kind, m) for m in models]
    base = _Step(regs[0], models[0])
    stacked = {
        k: torch.stack([dict(_Step(r, m).named_parameters())[k].detach() for r, m in
                        zip(regs, models, strict=True)])
        for k, _ in base.named_parameters()
    }  # fmt: skip
    kwargs = {} if kind == "selectivity" else {"update_temperature": False}

    def value(p):
        with torch.no_grad():
            return torch.func.functional_call(base, p, (x, y))

    if kind in ("optimal", "learned", "reference"):  # gradients on: it would update
        with pytest.raises(RuntimeError, match=f"{kind}.*vmap.*update_temperature=False"):
            torch.vmap(lambda p: torch.func.functional_call(base, p, (x, y)))(stacked)
    values = torch.vmap(value)(stacked)
    loop = []
    for r, m in zip(regs, models, strict=True):
        out = r(x, y, **kwargs)
        loop.append(_ref_loss(kind, _params64(m), x, y, _temps(out)))
    torch.testing.assert_close(values, torch.stack(loop), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- compile


@pytest.mark.parametrize("kind", REGS)
def test_compile_fullgraph_training_step(kind):
    """A compiled step calling regularized_loss equals eager over steps, in every mode (the
    temperature's search or step runs once per step inside the graph, as the op
    snnl::choose_temperature, and the states stay equal) and for the selectivity term."""
    torch._dynamo.reset()
    x, y = _data(n=48, dtype=torch.float32)
    eager_model, compiled_model = _model(torch.float32), _model(torch.float32)
    eager_reg, compiled_reg = _reg(kind, eager_model), _reg(kind, compiled_model)

    def step(reg, model):
        def loss(a, b):
            return regularized_loss(model, a, b, [reg]).total

        return loss

    compiled = torch.compile(step(compiled_reg, compiled_model), fullgraph=True)
    eager = step(eager_reg, eager_model)
    for i in range(3):  # later steps: no recompilation, state carried over
        x_i = x * (1.0 + 0.1 * i)  # a new batch each step
        value = compiled(x_i, y)  # raises on any graph break
        value.backward()
        ref = eager(x_i, y)
        ref.backward()
        assert value.item() == pytest.approx(ref.item(), rel=1e-5)
        for (k, p), q in zip(compiled_model.named_parameters(), eager_model.parameters(),
                             strict=True):  # fmt: skip
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=k)
        temps = getattr(compiled_reg, "temperatures", {})
        assert temps == pytest.approx(getattr(eager_reg, "temperatures", {}), rel=1e-5)
    if kind in ("optimal", "learned", "reference"):
        assert compiled_reg._state.calls == eager_reg._state.calls == 3  # once per step
    x = x_i
    params = {k: v.detach().double() for k, v in eager_model.named_parameters()}
    used = getattr(compiled_reg, "_last_temperatures", None)
    ref64 = _ref_loss(kind, params, x.double(), y, used)
    assert value.item() == pytest.approx(ref64.item(), rel=1e-5)


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", REGS)
def test_deterministic_steps_are_bit_identical(kind):
    x, y = _data(n=200, dtype=torch.float32)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            model = _model(torch.float32)
            reg = _reg(kind, model)
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            values = []
            for _ in range(3):
                opt.zero_grad()
                out = regularized_loss(model, x, y, [reg])
                out.total.backward()
                opt.step()
                values.append(out.total.detach())
                values += [p.detach().clone() for p in model.parameters()]
            temps = getattr(reg, "temperatures", {})
            runs.append((values, temps))
    finally:
        torch.use_deterministic_algorithms(previous)
    (a, ta), (b, tb) = runs
    assert ta == tb
    assert all(torch.equal(u, w) for u, w in zip(a, b, strict=True))


def _compiled_equals_eager(models, regs, x, y, rel):
    """Three steps (a new batch each) of a compiled regularized_loss (models[0], regs[0])
    and an eager one (models[1], regs[1]): values, temperatures and gradients equal."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: regularized_loss(models[0], a, b, [regs[0]]).total,
                             fullgraph=True)  # fmt: skip
    for i in range(3):
        a = x * (1.0 + 0.2 * i)
        value = compiled(a, y)
        ref = regularized_loss(models[1], a, y, [regs[1]]).total
        value.backward()
        ref.backward()
        assert value.item() == pytest.approx(ref.item(), rel=rel)
        temps = getattr(regs[0], "temperatures", {})
        assert temps == pytest.approx(getattr(regs[1], "temperatures", {}), rel=rel)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=100 * rel, atol=1e-5)


@CUDA
@pytest.mark.parametrize("kind", REGS)
def test_compile_fullgraph_training_step_cuda(kind):
    """On a GPU: a compiled step (the temperature op's search on the device's features,
    its CPU scalar moved into the graph) equals eager, states included."""
    x, y = _data(n=64, dtype=torch.float32)
    models = [_model(torch.float32).cuda(), _model(torch.float32).cuda()]
    regs = [_reg(kind, m) for m in models]
    _compiled_equals_eager(models, regs, x.cuda(), y.cuda(), rel=1e-4)


@pytest.mark.parametrize("kind", ["learned", "reference"])
def test_compile_fullgraph_authors_formula_steps(kind):
    """The authors' formula takes its temperature step by autograd inside the op (autograd
    restored there): a compiled step equals eager, temperatures included."""
    x, y = _data(n=48, dtype=torch.float32)
    models = [_model(torch.float32), _model(torch.float32)]
    regs = [
        EntanglementRegularizer(
            m, LAYERS, alpha=ALPHA, temperature=2.0, temperature_mode=kind,
            snnl_formula="reference",
        )
        for m in models
    ]  # fmt: skip
    _compiled_equals_eager(models, regs, x, y, rel=1e-5)
    assert regs[0].temperatures != pytest.approx({n: 2.0 for n in LAYERS})  # it stepped


def test_copied_regulariser_has_its_own_temperature_state():
    """A deepcopy's temperature op reaches the copy's state, not the original's."""
    import copy

    x, y = _data()
    reg = _reg("learned", _model())
    twin = copy.deepcopy(reg)
    before = reg.temperatures
    twin(x, y)
    assert reg.temperatures == before
    assert twin.temperatures != before


def test_compile_selectivity_needs_num_classes_and_skips_one_class_batches():
    torch._dynamo.reset()
    x, y = _data(n=24, dtype=torch.float32)
    model = _model(torch.float32)
    reg = SelectivityRegularizer(model, LAYERS, alpha=ALPHA)
    compiled = torch.compile(lambda a, b: regularized_loss(model, a, b, [reg]).total,
                             fullgraph=True)  # fmt: skip
    with pytest.raises(torch._dynamo.exc.Unsupported, match="needs num_classes"):
        compiled(x, y)
    torch._dynamo.reset()
    reg = SelectivityRegularizer(model, LAYERS, alpha=ALPHA, num_classes=3)
    compiled = torch.compile(lambda a, b: regularized_loss(model, a, b, [reg]).total,
                             fullgraph=True)  # fmt: skip
    one = torch.zeros_like(y)  # a single class: no selectivity, the term is 0
    value = compiled(x, one)
    ce = F.cross_entropy(model(x), one)
    assert value.item() == pytest.approx(ce.item(), rel=1e-6)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
