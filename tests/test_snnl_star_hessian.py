"""Second derivatives of SNNL* (eq. 2) with respect to the features (issue 19): T*(x) moves
with the points, so the Hessian of SNNL*(x) = min_u S(x, u) (u = log T) is
H_xx - H_xu H_ux / H_uu, not the Hessian at T* held fixed. Checked against two
independent float64 references: that formula by autograd through the dense formula of
tests/reference.py at the T* of a dense scan + Brent, and central differences of the
gradient of SNNL* with T* searched again at each shifted point."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reference import dense_snnl, snnl_star_reference
from snnl.loss import SNNLWarning, snnl_at_optimum
from snnl.temperature import snnl_star

DISTANCES = ["euclidean", "cosine"]


def _problem(seed=0, n=24, d=3, singleton=False):
    """n points of 3 overlapping classes (``singleton``: the last point a class of its
    own, an anchor without a positive, left out) and a direction v."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    if singleton:
        y[-1] = 7
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.8 * y[:, None].double()
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, y, v


def _t_star(x, y, distance):
    """T* of a dense scan + Brent (its location good to ~1e-8 in log T: a minimum's
    value is flat), polished by Newton steps on dS/du by autograd, so dS/du = 0 to
    rounding (the Hessian of SNNL* assumes the exact minimiser)."""
    t, _ = snnl_star_reference(x.numpy(), y.numpy(), distance)
    u = torch.tensor(math.log(t), dtype=torch.float64)
    for _ in range(3):
        ur = u.clone().requires_grad_()
        (gu,) = torch.autograd.grad(dense_snnl(x, y, ur.exp(), distance), ur, create_graph=True)
        (huu,) = torch.autograd.grad(gu, ur)
        u = u - gu.detach() / huu
    return math.exp(float(u))


def _implicit_hvp(x, y, v, t_star, distance):
    """(H_xx v - H_xu (H_ux . v) / H_uu, H_xx v) by autograd through the float64 dense
    formula at u* = log T*."""
    xa = x.clone().requires_grad_()
    u = torch.tensor(math.log(t_star), dtype=torch.float64, requires_grad=True)
    s = dense_snnl(xa, y, u.exp(), distance)
    gx, gu = torch.autograd.grad(s, (xa, u), create_graph=True)
    (hxx_v,) = torch.autograd.grad((gx * v).sum(), xa, retain_graph=True)
    (hux,) = torch.autograd.grad(gu, xa, retain_graph=True)
    (huu,) = torch.autograd.grad(gu, u)
    assert float(huu) > 0  # an interior strict minimum
    return hxx_v - hux * (hux * v).sum() / huu, hxx_v


def _star_gradient(x, y, distance):
    """Gradient of SNNL* at x: the dense formula's at the reference T* of x."""
    t = _t_star(x, y, distance)
    xa = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(dense_snnl(xa, y, t, distance), xa)
    return g


@pytest.mark.parametrize("singleton", [False, True])
@pytest.mark.parametrize("distance", DISTANCES)
def test_snnl_star_hvp_is_exact(distance, singleton):
    x, y, v = _problem(singleton=singleton)
    xr = x.clone().requires_grad_()
    star = snnl_star(xr, y, distance=distance)
    (gx,) = torch.autograd.grad(star.value, xr, create_graph=True)
    assert gx.requires_grad
    (hv,) = torch.autograd.grad((gx * v).sum(), xr)

    t_ref = _t_star(x, y, distance)
    # the search stops on a model step (its value good to O(step^3)), so T* is good to
    # ~1e-6 and its value to ~1e-13; snnl_at_optimum polishes T* for the Hessian
    assert star.temperature == pytest.approx(t_ref, rel=1e-6)
    hv_ref, hv_fixed = _implicit_hvp(x, y, v, t_ref, distance)
    # the implicit term matters here: holding T* fixed would be off by far more than 1e-6
    assert float((hv_ref - hv_fixed).norm()) > 1e-3 * float(hv_ref.norm())
    torch.testing.assert_close(hv, hv_ref, rtol=1e-9, atol=1e-12)

    eps = 1e-4  # central differences of SNNL*'s gradient, T* searched again: O(eps^2)
    fd = _star_gradient(x + eps * v, y, distance) - _star_gradient(x - eps * v, y, distance)
    fd = fd / (2 * eps)
    torch.testing.assert_close(hv, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("distance", DISTANCES)
def test_snnl_at_optimum_hessian_under_torch_func(distance):
    """torch.func.hessian of snnl_at_optimum (the dense path, traced) is SNNL*'s Hessian;
    its value and gradient are the loss's at T*."""
    x, y, v = _problem(seed=1, n=15, d=2)
    t = _t_star(x, y, distance)

    def f(a):
        return snnl_at_optimum(a, y, t, distance=distance)

    hess = torch.func.hessian(f)(x)  # (N, D, N, D)
    hv = (hess * v).sum((2, 3))
    hv_ref, _ = _implicit_hvp(x, y, v, t, distance)
    torch.testing.assert_close(hv, hv_ref, rtol=1e-9, atol=1e-12)
    assert float(f(x)) == pytest.approx(float(dense_snnl(x, y, t, distance)), rel=1e-12)
    xa = x.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(dense_snnl(xa, y, t, distance), xa)
    torch.testing.assert_close(torch.func.grad(f)(x), g_ref, rtol=1e-9, atol=1e-12)


def test_snnl_star_at_a_bound_holds_t_fixed():
    """A T* at a given bound is a constrained minimum (dS/du != 0): the second derivatives
    are those at T* held fixed, as the gradient is."""
    x, y, v = _problem(seed=2)
    t_ref = _t_star(x, y, "euclidean")
    bound = t_ref * 4.0  # cuts the minimum off from below
    xr = x.clone().requires_grad_()
    with pytest.warns(SNNLWarning, match="lower bound"):
        star = snnl_star(xr, y, bounds=(bound, bound * 100))
    assert star.temperature == pytest.approx(bound, rel=1e-9)
    (gx,) = torch.autograd.grad(star.value, xr, create_graph=True)
    (hv,) = torch.autograd.grad((gx * v).sum(), xr)
    torch.testing.assert_close(hv, _fixed_hvp(x, y, v, star.temperature), rtol=1e-9, atol=1e-12)


def _fixed_hvp(x, y, v, t):
    xa = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(dense_snnl(xa, y, t), xa, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), xa)
    return hv


def test_float32_snnl_star_hvp_close_to_float64():
    x, y, v = _problem(seed=3)
    xr = x.float().requires_grad_()
    star = snnl_star(xr, y)
    (gx,) = torch.autograd.grad(star.value, xr, create_graph=True)
    (hv,) = torch.autograd.grad((gx * v.float()).sum(), xr)
    hv_ref, _ = _implicit_hvp(x, y, v, _t_star(x, y, "euclidean"), "euclidean")
    assert hv.dtype == torch.float32
    np.testing.assert_allclose(hv.double().numpy(), hv_ref.numpy(), rtol=2e-4, atol=1e-6)


def test_snnl_star_under_vmap_grad_hessian_and_compile():
    """snnl_star in transforms: vmap over a batch of problems (per head) equals the loop;
    torch.func.hessian is SNNL*'s; a fullgraph compile equals eager, gradient included."""
    x, y, v = _problem(seed=4, n=18, d=3)
    heads = torch.stack([x, 2.0 * x.flip(0), x + 0.3 * v])  # (3, N, D)
    batched = torch.vmap(lambda h: snnl_star(h, y).value)(heads)
    loop = torch.stack([snnl_star(h, y).value for h in heads])
    # equal to the search's precision (the traced value is at T* polished by one Newton step)
    torch.testing.assert_close(batched, loop, rtol=1e-9, atol=0.0)

    hess = torch.func.hessian(lambda a: snnl_star(a, y).value)(x)
    hv_ref, _ = _implicit_hvp(x, y, v, _t_star(x, y, "euclidean"), "euclidean")
    torch.testing.assert_close((hess * v).sum((2, 3)), hv_ref, rtol=1e-9, atol=1e-12)

    torch._dynamo.reset()
    xf = x.float()
    compiled = torch.compile(lambda a: snnl_star(a, y).value, fullgraph=True)
    a = xf.clone().requires_grad_()
    value = compiled(a)
    value.backward()
    b = xf.clone().requires_grad_()
    eager = snnl_star(b, y).value
    eager.backward()
    assert value.item() == pytest.approx(eager.item(), rel=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_snnl_star_in_transforms_on_cuda():
    """On a GPU: the search op runs on the device's features and its CPU scalar enters
    the graph; vmap, compile and the Hessian equal their CPU float64 references."""
    x, y, v = _problem(seed=5, n=18, d=3)
    xc, yc = x.cuda(), y.cuda()
    heads = torch.stack([xc, 1.5 * xc])
    batched = torch.vmap(lambda h: snnl_star(h, yc).value)(heads)
    loop = torch.stack([snnl_star(h, y).value for h in heads.cpu()])
    torch.testing.assert_close(batched.cpu(), loop, rtol=1e-9, atol=0.0)
    hess = torch.func.hessian(lambda a: snnl_star(a, yc).value)(xc)
    hv_ref, _ = _implicit_hvp(x, y, v, _t_star(x, y, "euclidean"), "euclidean")
    torch.testing.assert_close((hess.cpu() * v).sum((2, 3)), hv_ref, rtol=1e-8, atol=1e-11)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a: snnl_star(a, yc).value, fullgraph=True)
    assert compiled(xc.float()).item() == pytest.approx(loop[0].item(), rel=1e-5)
