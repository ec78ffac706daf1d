"""The SNNL in a user's own training loop (issue 19): autocast, create_graph, torch.func
(grad, vmap, jacrev), torch.compile(fullgraph=True), deterministic algorithms, for the loss,
its module and the streaming metric, each against the float64 dense formula of
tests/reference.py (or a loop of it); and the runnable examples of docs/own_loop.md.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import torch

from snnl.loss import SoftNearestNeighborLoss, soft_nearest_neighbor_loss
from snnl.metrics import SoftNearestNeighborMetric

sys.path.insert(0, str(Path(__file__).parent))
from reference import dense_snnl, snnl_reference_mean  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*left out of the SNNL")

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DISTANCES = ["euclidean", "cosine"]
REDUCTIONS = ["mean", "sum", "none"]


def _data(n=30, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    y[-1] = 9  # one anchor without a positive: left out
    x = torch.randn(n, d, generator=g, dtype=dtype) + y[:, None].to(dtype) * 0.5
    return x, y


def _scalar(v: torch.Tensor) -> torch.Tensor:
    return v.nansum() if v.dim() else v


# ----------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("distance", DISTANCES)
def test_autocast_bf16_value_dtype_and_gradients(distance):
    x, y = _data(dtype=torch.float32)
    lin = torch.nn.Linear(5, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = lin(x)
        f.retain_grad()
        loss = soft_nearest_neighbor_loss(f, y, 2.0, distance=distance)
        loss.backward()  # backward inside the autocast region, as users do
    assert f.dtype == torch.bfloat16 and loss.dtype == torch.float32
    ref_f = f.detach().double().requires_grad_()
    ref = dense_snnl(ref_f, y, 2.0, distance)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert f.grad.dtype == torch.bfloat16 and lin.weight.grad.dtype == torch.float32
    torch.testing.assert_close(f.grad.double(), ref_f.grad, rtol=2e-2, atol=2e-4)


def test_autocast_module_learned_temperature():
    x, y = _data(dtype=torch.float32)
    loss_fn = SoftNearestNeighborLoss(1.5, learn_temperature=True)
    xr = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(torch.nn.functional.linear(xr, torch.eye(5)), y)
    loss.backward()
    t = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    ref = dense_snnl(x.bfloat16().double(), y, t)
    ref.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    # d/d log T = T d/dT
    assert loss_fn.log_temperature.grad.item() == pytest.approx(1.5 * t.grad.item(), rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_without_autocast(dtype):
    x, y = _data()
    xl = x.to(dtype).requires_grad_()
    loss = soft_nearest_neighbor_loss(xl, y, 2.0)
    loss.backward()
    ref_x = xl.detach().double().requires_grad_()
    ref = dense_snnl(ref_x, y, 2.0)
    ref.backward()
    assert loss.dtype == torch.float32 and xl.grad.dtype == dtype
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(xl.grad.double(), ref_x.grad, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("temperature", [2.0, None])
def test_metric_under_autocast(temperature):
    x, y = _data(dtype=torch.float32)
    lin = torch.nn.Linear(5, 6)
    inside, outside = (SoftNearestNeighborMetric(temperature) for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = lin(x)
        inside.update(f, y)
        value = inside.compute()
    outside.update(f, y)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(outside.compute().item(), rel=1e-6)
    if temperature is not None:  # and against the float64 loop over the stored features
        ref = snnl_reference_mean(f.detach().float().numpy(), y.numpy(), temperature)
        assert value.item() == pytest.approx(ref, rel=1e-5)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("distance", DISTANCES)
def test_autocast_cuda(dtype, distance):
    x, y = _data(n=200, d=16, dtype=torch.float32)
    lin = torch.nn.Linear(16, 32).cuda()
    with torch.autocast("cuda", dtype=dtype):
        f = lin(x.cuda())
        f.retain_grad()
        loss = soft_nearest_neighbor_loss(f, y.cuda(), 4.0, distance=distance)
    loss.backward()
    ref_f = f.detach().double().cpu().requires_grad_()
    ref = dense_snnl(ref_f, y, 4.0, distance)
    ref.backward()
    assert f.dtype == dtype and loss.dtype == torch.float32 and f.grad.dtype == dtype
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    torch.testing.assert_close(f.grad.double().cpu(), ref_f.grad, rtol=2e-2, atol=1e-3)


# ----------------------------------------------------------------------------- create_graph


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hessian_vector_products_are_exact(distance, reduction):
    x, y = _data()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    xr = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(
        _scalar(soft_nearest_neighbor_loss(xr, y, 2.0, distance=distance, reduction=reduction)),
        xr,
        create_graph=True,
    )
    assert gx.requires_grad  # never a silently detached gradient
    (hv,) = torch.autograd.grad((gx * v).sum(), xr)

    def ref(a):
        return _scalar(dense_snnl(a, y, 2.0, distance, reduction))

    _, hv_ref = torch.autograd.functional.hvp(ref, x, v)
    torch.testing.assert_close(hv, hv_ref, rtol=1e-9, atol=1e-12)


def test_gradient_penalty_reaches_model_and_temperature():
    x, y = _data()
    t = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    w = torch.eye(5, dtype=torch.float64).requires_grad_()
    f = x @ w
    (gf,) = torch.autograd.grad(soft_nearest_neighbor_loss(f, y, t), f, create_graph=True)
    (gf.pow(2).sum()).backward()
    t_ref = t.detach().clone().requires_grad_()
    w_ref = w.detach().clone().requires_grad_()
    f_ref = x @ w_ref
    (g_ref,) = torch.autograd.grad(dense_snnl(f_ref, y, t_ref), f_ref, create_graph=True)
    (g_ref.pow(2).sum()).backward()
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(t.grad, t_ref.grad, rtol=1e-9, atol=1e-13)


def test_module_double_backward_float32():
    x, y = _data()
    loss_fn = SoftNearestNeighborLoss(2.0, learn_temperature=True)
    xr = x.float().requires_grad_()
    (gx,) = torch.autograd.grad(loss_fn(xr, y), xr, create_graph=True)
    gx.pow(2).sum().backward()
    log_t = torch.tensor(math.log(2.0), dtype=torch.float64, requires_grad=True)
    xd = x.clone().requires_grad_()
    (gd,) = torch.autograd.grad(dense_snnl(xd, y, log_t.exp()), xd, create_graph=True)
    gd.pow(2).sum().backward()
    torch.testing.assert_close(xr.grad.double(), xd.grad, rtol=1e-4, atol=1e-6)
    assert loss_fn.log_temperature.grad.item() == pytest.approx(log_t.grad.item(), rel=1e-4)


# ----------------------------------------------------------------------------- torch.func


@pytest.mark.parametrize("distance", DISTANCES)
def test_func_grad_features_and_temperature(distance):
    x, y = _data()
    t = torch.tensor(2.5, dtype=torch.float64)
    gx, gt = torch.func.grad(
        lambda a, b: soft_nearest_neighbor_loss(a, y, b, distance=distance), argnums=(0, 1)
    )(x, t)
    xr, tr = x.clone().requires_grad_(), t.clone().requires_grad_()
    dense_snnl(xr, y, tr, distance).backward()
    torch.testing.assert_close(gx, xr.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(gt, tr.grad, rtol=1e-10, atol=1e-14)


def test_func_grad_module_parameters():
    x, y = _data()
    loss_fn = SoftNearestNeighborLoss(2.0, learn_temperature=True).double()
    params = dict(loss_fn.named_parameters())
    grads = torch.func.grad(lambda p: torch.func.functional_call(loss_fn, p, (x, y)))(params)
    loss_fn(x, y).backward()
    torch.testing.assert_close(grads["log_temperature"], loss_fn.log_temperature.grad)


@pytest.mark.parametrize("distance", DISTANCES)
def test_vmap_per_head_equals_loop(distance):
    g = torch.Generator().manual_seed(3)
    heads = torch.randn(4, 24, 3, generator=g, dtype=torch.float64)
    y = torch.arange(24) % 3
    values = torch.vmap(lambda h: soft_nearest_neighbor_loss(h, y, 1.5, distance=distance))(heads)
    loop = torch.stack([dense_snnl(h, y, 1.5, distance) for h in heads])
    eager = torch.stack([soft_nearest_neighbor_loss(h, y, 1.5, distance=distance) for h in heads])
    torch.testing.assert_close(values, loop, rtol=1e-12, atol=0)
    torch.testing.assert_close(values, eager, rtol=1e-12, atol=0)
    # per-class labels batched too, and per-head gradients (vmap of grad)
    ys = torch.stack([torch.randperm(24, generator=g) % 2 for _ in range(4)])
    grads = torch.vmap(torch.func.grad(lambda h, lab: soft_nearest_neighbor_loss(h, lab, 1.5)))(
        heads, ys
    )
    for h, lab, gr in zip(heads, ys, grads, strict=True):
        hr = h.clone().requires_grad_()
        dense_snnl(hr, lab, 1.5).backward()
        torch.testing.assert_close(gr, hr.grad, rtol=1e-10, atol=1e-14)


def test_jacrev_per_anchor_terms():
    x, y = _data(n=12, d=3)
    jac = torch.func.jacrev(lambda a: soft_nearest_neighbor_loss(a, y, 2.0, reduction="none"))(x)
    ref = torch.autograd.functional.jacobian(lambda a: dense_snnl(a, y, 2.0, reduction="none"), x)
    assert jac.shape == (12, 12, 3)
    torch.testing.assert_close(jac, ref, rtol=1e-10, atol=1e-14, equal_nan=True)


# ----------------------------------------------------------------------------- torch.compile


def test_compile_fullgraph_loss_and_module():
    torch._dynamo.reset()
    x, y = _data(n=64, d=8, dtype=torch.float32)
    loss_fn = SoftNearestNeighborLoss(2.0, learn_temperature=True, distance="cosine")

    def step(a, b):
        return soft_nearest_neighbor_loss(a, b, 2.0) + loss_fn(a, b)

    compiled = torch.compile(step, fullgraph=True)  # raises on any graph break
    xc = x.clone().requires_grad_()
    value = compiled(xc, y)
    value.backward()
    t_grad = loss_fn.log_temperature.grad.clone()
    loss_fn.log_temperature.grad = None
    xe = x.clone().requires_grad_()
    eager = step(xe, y)
    eager.backward()
    assert value.item() == pytest.approx(eager.item(), rel=1e-5)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-6)
    assert t_grad.item() == pytest.approx(loss_fn.log_temperature.grad.item(), rel=1e-4)
    ref = dense_snnl(x.double(), y, 2.0) + dense_snnl(x.double(), y, 2.0, "cosine")
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("n", [200, 1100])  # one masked block; the symmetric kernel
def test_deterministic_runs_are_bit_identical(n):
    x, y = _data(n=n, d=16, dtype=torch.float32)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            xr = x.clone().requires_grad_()
            t = torch.tensor(3.0, requires_grad=True)
            loss = soft_nearest_neighbor_loss(xr, y, t)
            loss.backward()
            per = soft_nearest_neighbor_loss(x, y, 3.0, reduction="none")
            metric = SoftNearestNeighborMetric(3.0)
            metric.update(x, y)
            runs.append((loss.detach(), xr.grad, t.grad, per, metric.compute()))
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(*runs, strict=True):
        assert (
            torch.equal(a, b)
            or (a.isnan() == b.isnan()).all()
            and torch.equal(a.nan_to_num(), b.nan_to_num())
        )
    ref = snnl_reference_mean(x.numpy(), y.numpy(), 3.0) if n <= 200 else None
    if ref is not None:
        assert runs[0][0].item() == pytest.approx(ref, rel=1e-5)


# ----------------------------------------------------------------------------- docs


def _doc_blocks() -> list[str]:
    """The page's ```python blocks and its DDP script (```py), in order."""
    text = (Path(__file__).parents[1] / "docs" / "own_loop.md").read_text()
    return re.findall(r"```(?:python|py)\n(.*?)```", text, flags=re.S)


def test_own_loop_page_has_its_examples():
    blocks = _doc_blocks()
    assert len(blocks) == 6
    for needle in ("autocast", "create_graph=True", "vmap", "SoftNearestNeighborMetric",
                   "all_gather_batch", "regularized_loss"):  # fmt: skip
        assert any(needle in b for b in blocks), needle


@pytest.mark.parametrize("index", range(6))
def test_own_loop_examples_run(index, tmp_path, monkeypatch):
    """Each example runs as written (the DDP script as one process: torchrun unset)."""
    monkeypatch.chdir(tmp_path)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    torch._dynamo.reset()
    code = _doc_blocks()[index]
    exec(compile(code, f"docs/own_loop.md block {index}", "exec"), {"__name__": "__main__"})  # noqa: S102
