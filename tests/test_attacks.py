"""Tests for snnl.attacks against independent float64 references on a trained digits MLP."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from snnl.attacks import (
    LBFGSResult,
    TransferResult,
    bim,
    fgsm,
    input_gradient,
    lbfgs,
    lbfgs_search,
    next_class_targets,
    pgd,
    transfer_matrix,
)

N_TEST = 200


# tiny problems: one torch thread (see conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)  # (1797, 64) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1300], perm[1300:]
    return x[train], y[train], x[test], y[test]


def _train_mlp(digits, seed: int) -> nn.Module:
    x_tr, y_tr, _, _ = digits
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(net(x_tr), y_tr).backward()
        opt.step()
    for p in net.parameters():
        p.grad = None
    return net.eval()


@pytest.fixture(scope="module")
def model(digits):
    return _train_mlp(digits, seed=0)


@pytest.fixture(scope="module")
def model_b(digits):
    return _train_mlp(digits, seed=1)


@pytest.fixture(scope="module")
def batch(digits):
    _, _, x_te, y_te = digits
    return x_te[:N_TEST].clone(), y_te[:N_TEST].clone()


@pytest.fixture(scope="module")
def targets(batch):
    _, y = batch
    shift = torch.randint(1, 10, y.shape, generator=torch.Generator().manual_seed(1))
    return (y + shift) % 10  # a target different from the true class


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (net(x).argmax(1) == y).double().mean().item()


def _ref_grad64(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad_x of mean CE on a float64 copy of the model, with a plain backward()."""
    net64 = copy.deepcopy(net).double()
    x64 = x.detach().double().clone().requires_grad_(True)
    F.cross_entropy(net64(x64), y).backward()
    return x64.grad


def test_model_is_trained(model, digits):
    _, _, x_te, y_te = digits
    assert _accuracy(model, x_te, y_te) > 0.93


# ------------------------------------------------------------------ FGSM / BIM


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_equals_reference_float64(model, batch, targets, targeted):
    x, y = batch
    labels = targets if targeted else y
    eps = 0.1
    g = _ref_grad64(model, x, labels)
    sign = -1.0 if targeted else 1.0
    expected = (x.double() + sign * eps * g.sign()).clamp(0, 1)
    model64 = copy.deepcopy(model).double()
    got = fgsm(model64, x.double(), labels, eps, targeted=targeted)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_fgsm_float32_matches_reference_away_from_zero_gradients(model, batch):
    # In float32 the gradient of a saturated softmax (p_y ~ 1) is rounding noise, and
    # so are entries far below the example's largest one: compare where the sign is
    # well defined, i.e. unsaturated examples and entries above 1e-3 of the maximum.
    x, y = batch
    eps = 0.1
    g = _ref_grad64(model, x, y)
    with torch.no_grad():
        ce = F.cross_entropy(copy.deepcopy(model).double()(x.double()), y, reduction="none")
    expected = (x.double() + eps * g.sign()).clamp(0, 1).float()
    got = fgsm(model, x, y, eps)
    clear = (g.abs() > 1e-3 * g.abs().amax(dim=1, keepdim=True)) & (ce > 1e-2)[:, None]
    assert clear.any(dim=1).sum() >= 20
    torch.testing.assert_close(got[clear], expected[clear], rtol=0, atol=1e-6)  # a flip is 2*eps
    assert got.dtype == torch.float32 and not got.requires_grad


def test_bim_one_step_equals_fgsm(model, batch):
    x, y = batch
    torch.testing.assert_close(
        bim(model, x, y, eps=0.1, step_size=0.1, steps=1), fgsm(model, x, y, 0.1), rtol=0, atol=0
    )


def test_bim_stays_in_ball_and_box(model, batch):
    x, y = batch
    x_adv = bim(model, x, y, eps=0.08, step_size=0.02, steps=10)
    assert (x_adv - x).abs().max() <= 0.08 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert _accuracy(model, x_adv, y) < _accuracy(model, fgsm(model, x, y, 0.08), y)


# ------------------------------------------------------------------ PGD


@pytest.mark.parametrize(("norm", "eps"), [("inf", 0.1), ("2", 1.0)])
def test_pgd_stays_in_ball_and_box(model, batch, norm, eps):
    x, y = batch
    gen = torch.Generator().manual_seed(0)
    x_adv = pgd(model, x, y, eps, eps / 4, 10, norm=norm, generator=gen)
    delta = (x_adv - x).flatten(1)
    if norm == "inf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert delta.norm(dim=1).max() <= eps + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_linf_one_step_without_random_start_equals_fgsm(model, batch):
    x, y = batch
    got = pgd(model, x, y, eps=0.2, step_size=0.1, steps=1, random_start=False)
    torch.testing.assert_close(got, fgsm(model, x, y, 0.1), rtol=0, atol=0)


@pytest.mark.parametrize(("eps", "step"), [(10.0, 0.05), (0.01, 0.5)])
def test_pgd_l2_step_and_projection_match_reference(model, batch, eps, step):
    # interior points so the [0, 1] clip is inactive; second case is projected to radius eps
    x, y = batch
    x = 0.25 + 0.5 * x
    g = _ref_grad64(model, x, y)
    unit = g / g.flatten(1).norm(dim=1, keepdim=True)
    expected = x.double() + min(eps, step) * unit
    got = pgd(copy.deepcopy(model).double(), x.double(), y, eps, step, 1, norm="2",
              random_start=False)  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def _zero_model(d: int = 64) -> nn.Module:
    net = nn.Linear(d, 10)
    nn.init.zeros_(net.weight)
    nn.init.zeros_(net.bias)
    return net  # gradient w.r.t. the input is exactly zero


def test_pgd_l2_zero_gradient_takes_no_step():
    x = torch.full((4, 64), 0.5)
    y = torch.zeros(4, dtype=torch.int64)
    got = pgd(_zero_model(), x, y, eps=1.0, step_size=0.1, steps=3, norm="2", random_start=False)
    assert torch.isfinite(got).all()
    assert torch.equal(got, x)


def test_pgd_random_start_is_uniform_in_ball():
    # zero gradients: the output is the random start itself (L-inf: sign(0) = 0)
    n, eps = 20000, 0.4
    x = torch.full((n, 2), 0.5, dtype=torch.float64)
    y = torch.zeros(n, dtype=torch.int64)
    net = _zero_model(2).double()
    gen = torch.Generator().manual_seed(0)
    d2 = pgd(net, x, y, eps, 0.1, 1, norm="2", generator=gen) - x
    r = d2.norm(dim=1) / eps  # uniform in a disc: P(r < t) = t^2
    for t in (0.3, 0.5, 0.9):
        assert abs((r < t).double().mean().item() - t**2) < 0.015
    assert d2.mean(0).abs().max() < 0.01
    dinf = pgd(net, x, y, eps, 0.1, 1, norm="inf", generator=gen) - x
    assert dinf.abs().max() <= eps
    u = (dinf / eps + 1) / 2  # U(0, 1) per coordinate
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005


def test_pgd_random_start_reproducible(model, batch):
    x, y = batch
    runs = [
        pgd(model, x, y, 0.1, 0.02, 3, generator=torch.Generator().manual_seed(s))
        for s in (7, 7, 8)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_pgd_stronger_than_fgsm(model, batch):
    x, y = batch
    eps = 0.15
    acc_fgsm = _accuracy(model, fgsm(model, x, y, eps), y)
    gen = torch.Generator().manual_seed(0)
    acc_pgd = _accuracy(model, pgd(model, x, y, eps, eps / 8, 20, generator=gen), y)
    assert acc_pgd < acc_fgsm
    assert acc_pgd < 0.05


def test_batch_size_does_not_change_result(model, batch):
    x, y = batch
    net64, x64 = copy.deepcopy(model).double(), x.double()
    whole = pgd(net64, x64, y, 0.1, 0.02, 5, generator=torch.Generator().manual_seed(3))
    chunked = pgd(
        net64, x64, y, 0.1, 0.02, 5, generator=torch.Generator().manual_seed(3), batch_size=37
    )
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ targeted


def test_targeted_attacks_reach_targets(model, batch, targets):
    x, _ = batch
    with torch.no_grad():
        clean_hits = (model(x).argmax(1) == targets).double().mean().item()
    assert clean_hits < 0.05
    hit_fgsm = _accuracy(model, fgsm(model, x, targets, 0.3, targeted=True), targets)
    gen = torch.Generator().manual_seed(0)
    x_pgd = pgd(model, x, targets, 0.3, 0.03, 30, targeted=True, generator=gen)
    hit_pgd = _accuracy(model, x_pgd, targets)
    assert hit_fgsm > 0.5
    assert hit_pgd > 0.8
    x_l2 = pgd(model, x, targets, 3.0, 0.3, 30, norm="2", targeted=True, generator=gen)
    assert _accuracy(model, x_l2, targets) > 0.8


def test_targeted_fgsm_hand_computed():
    """Identity logits f(x) = x, 2 classes: CE(x, c) = logsumexp(x) - x_c, so
    grad_x CE = softmax(x) - e_c. Targeted FGSM steps x - eps * sign(softmax(x) - e_c)."""
    net = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.eye(2, dtype=torch.float64))
    # x = (0.4, 0.4): softmax (1/2, 1/2); target 0: grad (-1/2, +1/2), sign (-1, +1);
    # target 1: grad (+1/2, -1/2). eps 0.2: (0.6, 0.2) and (0.2, 0.6).
    # x = (0.95, 0.15), target 0: softmax_0 = 1 / (1 + e^-0.8) = 0.69, grad (-0.31, +0.31):
    # (1.15, -0.05) clamped to the box: (1, 0).
    x = torch.tensor([[0.4, 0.4], [0.4, 0.4], [0.95, 0.15]], dtype=torch.float64)
    t = torch.tensor([0, 1, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # logits, not probabilities: no warning
        got = fgsm(net, x, t, 0.2, targeted=True)
        away = fgsm(net, x, t, 0.2)
    want = torch.tensor([[0.6, 0.2], [0.2, 0.6], [1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    # untargeted is the opposite step (away from class y): (0.2, 0.6), (0.6, 0.2), (0.75, 0.35)
    want = torch.tensor([[0.2, 0.6], [0.6, 0.2], [0.75, 0.35]], dtype=torch.float64)
    torch.testing.assert_close(away, want, rtol=0, atol=1e-15)


def test_next_class_targets():
    y = torch.tensor([0, 1, 8, 9, 4], dtype=torch.int32)
    assert next_class_targets(y, 10).tolist() == [1, 2, 9, 0, 5]
    assert next_class_targets(torch.tensor([0, 1, 2]), 3).tolist() == [1, 2, 0]
    assert next_class_targets(torch.tensor([], dtype=torch.int64), 3).tolist() == []
    with pytest.raises(ValueError, match="not below num_classes=3"):
        next_class_targets(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="num_classes"):
        next_class_targets(torch.tensor([0]), 1)
    with pytest.raises(TypeError, match="integer"):
        next_class_targets(torch.tensor([0.0]), 3)


# ------------------------------------------------------------------ L-BFGS


def test_lbfgs_succeeds_with_smaller_perturbation_than_fgsm(model, batch, targets):
    x, t = batch[0][:60], targets[:60]
    res = lbfgs_search(model, x, t)
    assert isinstance(res, LBFGSResult)
    x_adv, ok = res.x_adv, res.success
    assert ok.dtype == torch.bool and ok.shape == (60,)
    assert bool((res.c[ok] > 0).all()) and bool(res.c[~ok].isnan().all())
    assert ok.double().mean() > 0.9
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    assert torch.equal(pred[ok], t[ok])  # success mask is honest
    assert torch.equal(x_adv[~ok], x[~ok])
    lbfgs_norm = (x_adv - x).double().flatten(1).norm(dim=1)

    # smallest eps on a grid for which targeted FGSM reaches the same target
    fgsm_norm = torch.full((60,), float("inf"), dtype=torch.float64)
    for eps in np.linspace(1.0, 0.01, 100):
        xf = fgsm(model, x, t, float(eps), targeted=True)
        with torch.no_grad():
            hit = model(xf).argmax(1) == t
        fgsm_norm = torch.where(hit, (xf - x).double().flatten(1).norm(dim=1), fgsm_norm)
    both = ok & torch.isfinite(fgsm_norm)
    assert both.sum() >= 30
    assert lbfgs_norm[both].mean() < 0.9 * fgsm_norm[both].mean()


def test_lbfgs_failures_return_original_x(model, batch, targets):
    x, t = batch[0][:10], targets[:10]
    res = lbfgs_search(model, x, t, c_init=1e6, c_steps=1, max_iter=5)  # penalty too strong
    assert not res.success.any() and bool(res.c.isnan().all())
    assert torch.equal(res.x_adv, x)
    assert torch.equal(lbfgs(model, x, t, c_init=1e6, c_steps=1, max_iter=5), x)


# ------------------------------------------------------------------ conventions


class _Recorder(nn.Module):
    """MLP with dropout that records the training flag of every module at each forward."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.drop = nn.Dropout(0.5)
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.extend(m.training for m in self.modules())
        return self.base(self.drop(x))


ATTACKS = {
    "fgsm": lambda m, x, y: fgsm(m, x, y, 0.1),
    "bim": lambda m, x, y: bim(m, x, y, 0.1, 0.05, 2),
    "pgd_inf": lambda m, x, y: pgd(m, x, y, 0.1, 0.05, 2),
    "pgd_2": lambda m, x, y: pgd(m, x, y, 1.0, 0.5, 2, norm="2"),
    "lbfgs": lambda m, x, y: lbfgs(m, x, y, c_steps=1, max_iter=3),
    "lbfgs_search": lambda m, x, y: lbfgs_search(m, x, y, c_steps=1, max_iter=3).x_adv,
    "input_gradient": lambda m, x, y: input_gradient(m, x, y, batch_size=5),
    "transfer": lambda m, x, y: transfer_matrix([m], x, y, ATTACKS["fgsm"]).matrix,
}


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_eval_during_attack_mode_restored_and_no_param_grad(model, batch, name, mode):
    x, y = batch[0][:16], batch[1][:16]
    net = _Recorder(copy.deepcopy(model))
    net.train(mode != "eval")
    if mode == "mixed":
        net.base[1].eval()
    before = [m.training for m in net.modules()]
    x_before = x.clone()
    ATTACKS[name](net, x, y)
    assert net.seen and not any(net.seen)  # every forward ran in eval mode
    assert [m.training for m in net.modules()] == before
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(x, x_before)  # caller's x untouched


class _Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        raise RuntimeError("boom")


@pytest.mark.parametrize("name", list(ATTACKS))
def test_mode_restored_when_model_raises(batch, name):
    x, y = batch[0][:4], batch[1][:4]
    net = _Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        ATTACKS[name](net, x, y)
    assert net.training and net.lin.training


def test_results_are_detached_even_if_x_requires_grad(model, batch):
    x, y = batch
    x = x.clone().requires_grad_(True)
    for out in (fgsm(model, x, y, 0.1), pgd(model, x, y, 0.1, 0.05, 2), lbfgs(model, x[:4], y[:4],
                c_steps=1, max_iter=2), input_gradient(model, x, y)):  # fmt: skip
        assert not out.requires_grad and out.grad_fn is None
    assert x.grad is None


class _ScalarOut(nn.Module):
    def forward(self, x):
        return x.sum()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, x, y: fgsm(m, x, y, -0.1), "eps"),
        (lambda m, x, y: fgsm(m, x, y, float("nan")), "eps"),
        (lambda m, x, y: fgsm(m, x * 1.5 + 0.01, y, 0.1), r"\[0, 1\]"),
        (lambda m, x, y: fgsm(m, x - 0.5, y, 0.1), r"\[0, 1\]"),
        (lambda m, x, y: fgsm(m, torch.where(x > 0.5, float("nan"), x), y, 0.1), "NaN"),
        (lambda m, x, y: fgsm(m, x, y[:, None], 0.1), r"y must have shape \(8,\)"),
        (lambda m, x, y: fgsm(m, x, y[:-1], 0.1), r"y must have shape \(8,\), got \(7,\)"),
        (lambda m, x, y: fgsm(m, x, y - 10, 0.1), "non-negative"),
        (lambda m, x, y: fgsm(m, x[0], y, 0.1), "shape"),
        (lambda m, x, y: bim(m, x, y, 0.1, 0.01, 0), "steps"),
        (lambda m, x, y: bim(m, x, y, 0.1, 0.0, 3), "step_size"),
        (lambda m, x, y: pgd(m, x, y, 0.1, 0.01, 0), "steps"),
        (lambda m, x, y: pgd(m, x, y, -1.0, 0.01, 3), "eps"),
        (lambda m, x, y: pgd(m, x, y, 0.1, 0.01, 3, norm="3"), "norm"),
        (lambda m, x, y: pgd(m, x, y, 0.1, 0.01, 3, norm="l1"), "norm"),
        (lambda m, x, y: pgd(m, x, y, 0.1, 0.01, 3, batch_size=0), "batch_size"),
        (lambda m, x, y: lbfgs(m, x, y[:3]), "target"),
        (lambda m, x, y: lbfgs(m, x, y, c_init=0.0), "c_init"),
        (lambda m, x, y: lbfgs(m, x, y, c_steps=0), "c_steps"),
        (lambda m, x, y: input_gradient(m, torch.where(x > 0.5, float("nan"), x), y), "NaN"),
        (lambda m, x, y: transfer_matrix([], x, y, ATTACKS["fgsm"]), "at least one"),
        (lambda m, x, y: transfer_matrix([m], x, y, lambda *_: x[:2]), "shaped like"),
        (lambda m, x, y: fgsm(_ScalarOut(), x, y, 0.1), "logits"),
    ],
)
def test_bad_inputs_raise(model, batch, call, match):
    x, y = batch[0][:8], batch[1][:8]
    with pytest.raises(ValueError, match=match):
        call(model, x, y)


def test_non_module_model_raises_type_error(batch):
    x, y = batch[0][:4], batch[1][:4]
    with pytest.raises(TypeError, match="nn.Module"):
        fgsm(lambda z: z, x, y, 0.1)


# ------------------------------------------------------------------ transfer matrix


def _error(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        pred = net(x).argmax(1).numpy()
    return float(np.mean(pred != y.numpy()))


def test_transfer_matrix_against_independent_errors(model, model_b, batch):
    x, y = batch
    nets = {"a": model, "b": model_b}

    def attack(m, xb, yb):
        return fgsm(m, xb, yb, 0.1)

    res = transfer_matrix(nets, x, y, attack, batch_size=None)
    assert isinstance(res, TransferResult)
    assert res.names == ("a", "b")
    assert res.matrix.shape == (2, 2) and res.clean_error.shape == (2,)
    assert ((res.matrix >= 0) & (res.matrix <= 1)).all()
    adv = {s: fgsm(net, x, y, 0.1) for s, net in nets.items()}
    expected = [[_error(nets[t], adv[s], y) for t in "ab"] for s in "ab"]
    np.testing.assert_allclose(res.matrix.numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        res.clean_error.numpy(), [_error(nets[t], x, y) for t in "ab"], rtol=0, atol=1e-12
    )
    # FGSM raises each target's error above its clean error, white-box and transferred
    # (white-box vs transferred is a property of the trained pair, not of the function:
    # it swapped with the fixture's thread count, so it is not asserted)
    for s in range(2):
        assert res.matrix[s, s] > res.clean_error[s]
        assert res.matrix[s, 1 - s] > res.clean_error[1 - s]

    chunked = transfer_matrix([model, model_b], x, y, attack, batch_size=64)
    assert chunked.names == ("model_0", "model_1")
    np.testing.assert_allclose(chunked.matrix.numpy(), expected, rtol=0, atol=0.02)


def _hits(net: nn.Module, x: torch.Tensor, c: torch.Tensor) -> float:
    with torch.no_grad():
        pred = net(x).argmax(1).numpy()
    return float(np.mean(pred == c.numpy()))


def test_transfer_matrix_targeted_against_independent_rates(model, model_b, batch):
    """targets given: the attack gets the targets, matrix[s, t] = rate of argmax == target."""
    x, y = batch
    c = (y + 1) % 10
    nets = {"a": model, "b": model_b}

    def attack(m, xb, cb):
        return fgsm(m, xb, cb, 0.2, targeted=True)

    res = transfer_matrix(nets, x, y, attack, targets=c, batch_size=None)
    assert res.targeted and not transfer_matrix(nets, x, y, attack).targeted
    adv = {s: fgsm(net, x, c, 0.2, targeted=True) for s, net in nets.items()}
    expected = [[_hits(nets[t], adv[s], c) for t in "ab"] for s in "ab"]
    np.testing.assert_allclose(res.matrix.numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        res.clean_error.numpy(), [_error(nets[t], x, y) for t in "ab"], rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(
        res.clean_target_rate.numpy(), [_hits(nets[t], x, c) for t in "ab"], rtol=0, atol=1e-12
    )
    # white-box targeted FGSM reaches the target far above its clean rate
    assert res.matrix[0, 0] > res.clean_target_rate[0] + 0.2
    chunked = transfer_matrix(nets, x, y, attack, targets=c, batch_size=64)
    np.testing.assert_allclose(chunked.matrix.numpy(), expected, rtol=0, atol=0.02)
    with pytest.raises(ValueError, match="targets"):
        transfer_matrix(nets, x, y, attack, targets=c[:5])


def test_lbfgs_finds_the_analytic_minimal_perturbation_of_a_linear_model():
    """For a 2-class linear model the smallest L2 step to the target class is
    |margin| / ||w_1 - w_0|| (the distance to the decision plane, box inactive here):
    the search over c must get close to it, and can never beat it."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        d = 20
        lin = torch.nn.Linear(d, 2).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(2, d, generator=g, dtype=torch.float64))
            lin.bias.copy_(torch.randn(2, generator=g, dtype=torch.float64))
        x = (0.5 + 0.1 * torch.randn(40, d, generator=g, dtype=torch.float64)).clamp(0, 1)
        target = 1 - lin(x).argmax(1)
        w = lin.weight[1] - lin.weight[0]
        b = lin.bias[1] - lin.bias[0]
        analytic = ((x @ w + b).abs() / w.norm()).detach()
        res = lbfgs_search(lin, x, target, c_steps=8)
        adv, ok = res.x_adv, res.success
        assert bool(ok.all())
        assert bool((lin(adv).argmax(1) == target).all())
        ratio = ((adv - x).norm(dim=1) / analytic).detach()
        assert float(ratio.min()) >= 1 - 1e-6
        assert float(ratio.mean()) < 1.1
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------ labels of any integer dtype

LABEL_CALLS = {
    "fgsm": lambda m, x, y: fgsm(m, x, y, 0.1),
    "bim": lambda m, x, y: bim(m, x, y, 0.1, 0.05, 2),
    "pgd": lambda m, x, y: pgd(m, x, y, 0.1, 0.05, 2, generator=torch.Generator().manual_seed(0)),
    "pgd_2": lambda m, x, y: pgd(m, x, y, 1.0, 0.5, 2, norm=2, random_start=False),
    "lbfgs": lambda m, x, y: lbfgs(m, x, y, c_steps=2, max_iter=5),
    "input_gradient": lambda m, x, y: input_gradient(m, x, y),
    "transfer": lambda m, x, y: transfer_matrix([m], x, y, ATTACKS["fgsm"]).matrix,
}


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8])
@pytest.mark.parametrize("name", list(LABEL_CALLS))
def test_labels_of_any_integer_dtype_are_accepted(model, batch, name, dtype):
    """Same labels in another integer dtype: the very same result as with int64."""
    x, y = batch[0][:12], batch[1][:12]
    expected = LABEL_CALLS[name](model, x, y)
    got = LABEL_CALLS[name](model, x, y.to(dtype))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
@pytest.mark.parametrize("name", list(LABEL_CALLS))
def test_float_and_bool_labels_are_a_type_error(model, batch, name, dtype):
    x, y = batch[0][:6], batch[1][:6]
    with pytest.raises(TypeError, match="integer"):
        LABEL_CALLS[name](model, x, y.to(dtype))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, x, y: fgsm(m, x.long(), y, 0.1), "floating"),
        (lambda m, x, y: fgsm(m, x, y, "0.1"), "eps"),
        (lambda m, x, y: bim(m, x, y, 0.1, 0.01, 2.5), "steps"),
        (lambda m, x, y: pgd(m, x, y, 0.1, 0.01, 3, batch_size=2.0), "batch_size"),
        (lambda m, x, y: lbfgs(m, x, y, max_iter=True), "max_iter"),
        (lambda m, x, y: input_gradient(m, x.numpy(), y), "torch.Tensor"),
    ],
)
def test_wrong_types_raise_type_error(model, batch, call, match):
    x, y = batch[0][:8], batch[1][:8]
    with pytest.raises(TypeError, match=match):
        call(model, x, y)


def test_norm_spellings(model, batch):
    x, y = batch[0][:8], batch[1][:8]

    def run(norm):
        return pgd(model, x, y, 0.5, 0.1, 2, norm=norm, random_start=False)

    for same in ("l2", "L2", 2, 2.0):
        assert torch.equal(run(same), run("2"))
    for same in ("linf", "Inf", float("inf")):
        assert torch.equal(run(same), run("inf"))
    with pytest.raises(ValueError, match="unknown norm '1'; expected one of: inf, linf, 2, l2"):
        run(1)


# ------------------------------------------------------------------ models returning probabilities


def _count_warnings(call) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [w for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("head", ["softmax", "log_softmax"])
@pytest.mark.parametrize("name", [n for n in ATTACKS if n != "transfer"])
def test_probability_model_warns_once(model, batch, name, head):
    x, y = batch[0][:10], batch[1][:10]
    last = nn.Softmax(dim=1) if head == "softmax" else nn.LogSoftmax(dim=1)
    net = nn.Sequential(copy.deepcopy(model), last)
    caught = _count_warnings(lambda: ATTACKS[name](net, x, y))
    kind = "probabilities" if head == "softmax" else "log-probabilities"
    assert len(caught) == 1, [str(w.message) for w in caught]  # once, not per step/chunk
    assert "expect a model that returns logits" in str(caught[0].message)
    assert f"look like {kind}" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller


@pytest.mark.parametrize("name", [n for n in ATTACKS if n != "transfer"])
def test_logit_model_does_not_warn(model, batch, name):
    x, y = batch[0][:10], batch[1][:10]
    assert _count_warnings(lambda: ATTACKS[name](model, x, y)) == []


def test_pgd_warns_once_over_chunks_and_steps(model, batch):
    x, y = batch[0][:20], batch[1][:20]
    net = nn.Sequential(copy.deepcopy(model), nn.Softmax(dim=1))
    caught = _count_warnings(lambda: pgd(net, x, y, 0.1, 0.02, 4, batch_size=6, norm="2"))
    assert len(caught) == 1


# ------------------------------------------------------------------ input gradient


def test_input_gradient_equals_float64_reference(model, batch):
    x, y = batch
    n = x.shape[0]
    expected = n * _ref_grad64(model, x, y)  # the reference takes the mean; ours the sum
    got = input_gradient(copy.deepcopy(model).double(), x.double(), y.to(torch.int32))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    chunked = input_gradient(copy.deepcopy(model).double(), x.double(), y, batch_size=33)
    torch.testing.assert_close(chunked, expected, rtol=0, atol=1e-12)
    # the FGSM step is the sign of this gradient
    step = (x + 0.1 * input_gradient(model, x, y).sign()).clamp(0, 1)
    assert torch.equal(fgsm(model, x, y, 0.1), step)


def test_input_gradient_outside_the_box():
    """Not an attack: any real inputs, e.g. standardised features."""
    net = nn.Linear(3, 2).double()
    x = torch.tensor([[-2.0, 5.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([1], dtype=torch.uint8)
    with torch.no_grad():
        p = torch.softmax(net(x), dim=1)[0]
    expected = p[0] * (net.weight[0] - net.weight[1])  # (p - e_y) @ W for two classes
    torch.testing.assert_close(input_gradient(net, x, y)[0], expected.detach(), rtol=0, atol=1e-14)


# ------------------------------------------------------------------ transfer with L-BFGS


def test_transfer_matrix_accepts_lbfgs(model, model_b, batch):
    x, y = batch[0][:24], batch[1][:24]
    target = (y + 3) % 10

    def attack(m, xb, yb):
        return lbfgs(m, xb, (yb + 3) % 10, c_steps=3, max_iter=30)

    nets = {"a": model, "b": model_b}
    res = transfer_matrix(nets, x, y, attack, batch_size=None)
    adv = {s: lbfgs(net, x, target, c_steps=3, max_iter=30) for s, net in nets.items()}
    expected = [[_error(nets[t], adv[s], y) for t in "ab"] for s in "ab"]
    np.testing.assert_allclose(res.matrix.numpy(), expected, rtol=0, atol=1e-12)
    assert res.matrix[0, 0] > 0.5 and res.matrix[1, 1] > 0.5  # L-BFGS fools its own model
