"""Gradient-based adversarial attacks and a transferability matrix.

One function per attack, each written the way its paper states the algorithm:

* :func:`fgsm`  - Fast Gradient Sign Method (Goodfellow et al. 2015), L-inf.
* :func:`bim`   - Basic Iterative Method (Kurakin et al. 2016), L-inf.
* :func:`pgd`   - Projected Gradient Descent (Madry et al. 2018), L-inf or L2.
* :func:`lbfgs` - box-constrained L-BFGS (Szegedy et al. 2013), targeted, L2.
* :func:`transfer_matrix` - error of every target model on examples crafted on
  every source model (Szegedy et al. 2013, Table 2).

Conventions shared by every attack (the ones torchattacks, foolbox and ART
users expect):

* ``x`` is a float tensor of shape (N, ...) with values in [0, 1]; the
  returned adversarial examples are in [0, 1] too. Normalisation, if any,
  belongs inside the model. ``eps`` and ``step_size`` are in input units.
* ``y`` is an int64 tensor of shape (N,): the true labels, or the target
  labels when ``targeted=True`` (the step then goes *against* the gradient
  of the target's cross-entropy).
* The model maps (N, ...) to logits (N, C). It is put in eval mode during
  the attack and every submodule's train/eval flag is restored afterwards,
  also when an error is raised.
* Gradients are taken with :func:`torch.autograd.grad` with respect to a
  detached copy of the input only, so parameters' ``.grad`` is untouched;
  the caller's ``x`` is never modified; results are detached and live on
  ``x.device``.
* ``batch_size`` (optional) splits big inputs into chunks; the loss is a sum
  of per-example terms, so chunking does not change the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snnl.taps import eval_mode

__all__ = ["fgsm", "bim", "pgd", "lbfgs", "transfer_matrix", "TransferResult"]


# --------------------------------------------------------------------------- helpers


def _check_inputs(x: Tensor, y: Tensor, *, y_name: str = "y") -> None:
    """Validate x (N, ...) float in [0, 1] without NaN and y (N,) int64."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(y, Tensor):
        raise TypeError(f"{y_name} must be a torch.Tensor, got {type(y).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"x must have shape (N, ...) with at least 2 dims, got {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{y_name} must have shape (N,) = ({x.shape[0]},) to match x of shape "
            f"{tuple(x.shape)}, got {y_name} of shape {tuple(y.shape)}"
        )
    if y.dtype != torch.int64:
        raise ValueError(f"{y_name} must be int64 class indices, got dtype {y.dtype}")
    if y.device != x.device:
        raise ValueError(f"{y_name} is on {y.device} but x is on {x.device}")
    if x.numel() == 0:
        return
    if torch.isnan(x).any():
        raise ValueError("x contains NaN")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"x must lie in [0, 1], got values in [{lo:.6g}, {hi:.6g}]")
    if y.min().item() < 0:
        raise ValueError(f"{y_name} must hold non-negative class indices, got {y.min().item()}")


def _check_eps(eps: float) -> None:
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")


def _check_steps(step_size: float, steps: int) -> None:
    if not math.isfinite(step_size) or step_size <= 0:
        raise ValueError(f"step_size must be a finite number > 0, got {step_size}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")


def _chunks(n: int, batch_size: int | None) -> list[slice]:
    if batch_size is None:
        return [slice(0, n)]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"model must return logits of shape (N, C) = ({x.shape[0]}, C), got {shape}"
        )
    return out


def _input_grad(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """grad_x of sum_i CE(model(x)_i, y_i), taken w.r.t. a detached copy of x only."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(_logits(model, x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _l2_norm(t: Tensor) -> Tensor:
    """Per-example L2 norm, shape (N, 1, ..., 1) to broadcast against t."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.ndim - 1)))


# --------------------------------------------------------------------------- attacks


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    targeted: bool = False,
    batch_size: int | None = None,
) -> Tensor:
    """Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy, ICLR 2015), L-inf.

    Untargeted: ``x' = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1)``.
    Targeted (``y`` = target labels): ``x' = clip(x - eps * sign(grad_x CE(f(x), y)), 0, 1)``.

    Args:
        model: maps (N, ...) inputs to (N, C) logits.
        x: (N, ...) inputs in [0, 1].
        y: (N,) int64 true labels (or targets when ``targeted``).
        eps: L-inf budget, >= 0, in input units.
        targeted: step towards class ``y`` instead of away from it.
        batch_size: optional chunk size for big inputs.

    Returns:
        (N, ...) detached adversarial examples in [0, 1], same dtype/device as x.

    >>> _ = torch.manual_seed(0)
    >>> net = nn.Linear(4, 3)
    >>> x = torch.rand(5, 4); y = torch.randint(0, 3, (5,))
    >>> x_adv = fgsm(net, x, y, eps=0.1)
    >>> x_adv.shape, bool(((x_adv - x).abs() <= 0.1 + 1e-7).all())
    (torch.Size([5, 4]), True)
    """
    _check_inputs(x, y)
    _check_eps(eps)
    direction = -1.0 if targeted else 1.0
    out = torch.empty_like(x)
    with eval_mode(model):
        for sl in _chunks(x.shape[0], batch_size):
            xb = x[sl].detach()
            grad = _input_grad(model, xb, y[sl])
            out[sl] = (xb + direction * eps * grad.sign()).clamp(0.0, 1.0)
    return out


def bim(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    step_size: float,
    steps: int,
    *,
    targeted: bool = False,
    batch_size: int | None = None,
) -> Tensor:
    """Basic Iterative Method (Kurakin, Goodfellow & Bengio 2016), L-inf.

    ``x_0 = x``; for k = 1..steps:
    ``x_k = clip_{x, eps}(x_{k-1} + a * sign(grad_x CE(f(x_{k-1}), y)))``, where
    ``a = step_size`` and ``clip_{x, eps}`` projects onto the L-inf ball of
    radius eps around x intersected with [0, 1]. Targeted: the step is ``-a * sign(...)``.
    With ``steps=1, step_size=eps`` this is FGSM. Kurakin et al. used
    ``a = 1/255`` and ``steps = min(eps*255 + 4, 1.25*eps*255)``.

    Args:
        model, x, y, targeted, batch_size: as in :func:`fgsm`.
        eps: L-inf budget, >= 0.
        step_size: > 0, size of each sign step.
        steps: >= 1, number of steps.

    Returns:
        (N, ...) detached adversarial examples with ``max|x' - x| <= eps``, in [0, 1].

    >>> _ = torch.manual_seed(0)
    >>> net = nn.Linear(4, 3)
    >>> x = torch.rand(5, 4); y = torch.randint(0, 3, (5,))
    >>> x_adv = bim(net, x, y, eps=0.1, step_size=0.02, steps=10)
    >>> bool(((x_adv - x).abs() <= 0.1 + 1e-7).all())
    True
    """
    _check_inputs(x, y)
    _check_eps(eps)
    _check_steps(step_size, steps)
    direction = -1.0 if targeted else 1.0
    out = torch.empty_like(x)
    with eval_mode(model):
        for sl in _chunks(x.shape[0], batch_size):
            xb, yb = x[sl].detach(), y[sl]
            lower, upper = (xb - eps).clamp(min=0.0), (xb + eps).clamp(max=1.0)  # ball & box
            x_adv = xb.clone()
            for _ in range(steps):
                grad = _input_grad(model, x_adv, yb)
                # in place (x_adv is our own copy): x_adv <- clip(x_adv + s * a * sign(g))
                x_adv.add_(grad.sign_(), alpha=direction * step_size).clamp_(lower, upper)
            out[sl] = x_adv
    return out


def _random_start(x: Tensor, eps: float, norm: str, generator: torch.Generator | None) -> Tensor:
    """A uniform random point of the eps ball around each example, shape of x.

    L-inf: ``delta ~ U(-eps, eps)`` per coordinate. L2: uniform in the ball:
    direction ``z / ||z||`` with ``z ~ N(0, I)``, radius ``eps * u^(1/d)`` with
    ``u ~ U(0, 1)`` and d the number of features per example.
    """
    kw = {"generator": generator, "device": x.device, "dtype": x.dtype}
    if norm == "inf":
        return (2.0 * torch.rand(x.shape, **kw) - 1.0) * eps
    z = torch.randn(x.shape, **kw)
    norms = _l2_norm(z)
    direction = z / torch.where(norms > 0, norms, torch.ones_like(norms))
    d = x[0].numel()
    u = torch.rand((x.shape[0],), **kw).view(-1, *([1] * (x.ndim - 1)))
    return direction * eps * u.pow(1.0 / d)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    step_size: float,
    steps: int,
    *,
    norm: str = "inf",
    random_start: bool = True,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Projected Gradient Descent (Madry et al., ICLR 2018), L-inf or L2.

    Start: ``x_0 = clip(x + delta_0, 0, 1)`` with ``delta_0`` uniform in the eps ball
    (``random_start=True``; L-inf: uniform per coordinate; L2: Gaussian direction,
    radius ``eps * u^(1/d)``), else ``x_0 = x``. For k = 1..steps, with
    ``g = grad_x CE(f(x_{k-1}), y)`` and ``s = +1`` (untargeted) or ``-1`` (targeted):

    * ``norm="inf"``: ``x_k = Proj(x_{k-1} + s * a * sign(g))``, Proj = clamp to
      ``[max(x - eps, 0), min(x + eps, 1)]``.
    * ``norm="2"``: ``x_k = clip(Proj(x_{k-1} + s * a * g / ||g||_2), 0, 1)``, Proj
      rescales ``x_k - x`` to norm eps when it is longer (per example). An example
      whose gradient is exactly zero takes no step (no division by zero).

    Madry et al. used eps = 0.3, a = 0.01, 40 steps (MNIST, L-inf) and
    eps = 8/255, a = 2/255, 7 steps (CIFAR-10).

    Args:
        model, x, y, targeted, batch_size: as in :func:`fgsm`.
        eps: radius of the ball, >= 0, in input units.
        step_size: > 0; ``a`` above.
        steps: >= 1.
        norm: ``"inf"`` or ``"2"`` (the int 2 and ``float("inf")`` are accepted too).
        random_start: start from a uniform random point of the ball.
        generator: torch.Generator on ``x.device`` for the random start (the whole
            start is drawn at once, so the result does not depend on batch_size).

    Returns:
        (N, ...) detached adversarial examples in the eps ball around x and in [0, 1].

    >>> _ = torch.manual_seed(0)
    >>> net = nn.Linear(4, 3)
    >>> x = torch.rand(5, 4); y = torch.randint(0, 3, (5,))
    >>> g = torch.Generator().manual_seed(1)
    >>> x_adv = pgd(net, x, y, eps=0.5, step_size=0.1, steps=5, norm="2", generator=g)
    >>> bool(((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-6).all())
    True
    """
    norm_name = {"inf": "inf", "linf": "inf", "2": "2", "l2": "2"}.get(str(norm).lower())
    if norm == 2 or norm == float("inf"):
        norm_name = "inf" if norm == float("inf") else "2"
    if norm_name is None:
        raise ValueError(f"unknown norm {norm!r}; expected 'inf' or '2'")
    _check_inputs(x, y)
    _check_eps(eps)
    _check_steps(step_size, steps)
    direction = -1.0 if targeted else 1.0
    x = x.detach()
    delta0 = _random_start(x, eps, norm_name, generator) if random_start else None
    out = torch.empty_like(x)
    with eval_mode(model):
        for sl in _chunks(x.shape[0], batch_size):
            xb, yb = x[sl], y[sl]
            x_adv = xb.clone() if delta0 is None else (xb + delta0[sl]).clamp_(0.0, 1.0)
            if norm_name == "inf":
                lower, upper = (xb - eps).clamp(min=0.0), (xb + eps).clamp(max=1.0)
                x_adv.clamp_(lower, upper)
                for _ in range(steps):
                    grad = _input_grad(model, x_adv, yb)
                    x_adv.add_(grad.sign_(), alpha=direction * step_size).clamp_(lower, upper)
            else:
                for _ in range(steps):
                    grad = _input_grad(model, x_adv, yb)
                    gnorm = _l2_norm(grad)
                    grad.div_(torch.where(gnorm > 0, gnorm, 1.0))  # zero gradient: no step
                    delta = x_adv.add_(grad, alpha=direction * step_size).sub_(xb)
                    dnorm = _l2_norm(delta)
                    # rescale onto the sphere only when outside the ball (dnorm > eps >= 0)
                    scale = torch.where(dnorm > eps, eps / torch.where(dnorm > 0, dnorm, 1.0), 1.0)
                    # clipping to the box moves each coordinate towards x: stays in the ball
                    x_adv = delta.mul_(scale).add_(xb).clamp_(0.0, 1.0)
            out[sl] = x_adv
    return out


def lbfgs(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    c_init: float = 1.0,
    c_steps: int = 8,
    max_iter: int = 100,
    batch_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Box-constrained L-BFGS targeted attack (Szegedy et al., ICLR 2014), L2.

    For each example, minimise over r::

        c * ||r||_2^2 + CE(f(x + r), target)   subject to  0 <= x + r <= 1

    (the squared L2 norm, which is smooth, stands for the paper's ``|r|``). The
    box is enforced exactly by ``scipy.optimize.minimize(method="L-BFGS-B")``
    with bounds [0, 1] on the variable ``z = x + r``, started at ``z = x``. A
    chunk of examples is optimised as one flattened vector: the objective is a
    sum of independent per-example terms (each with its own c), so its
    minimiser is the per-example one; L-BFGS-B's curvature memory and stopping
    test are shared. The model runs in x's dtype; scipy works in float64.
    Each objective evaluation is a round trip torch -> numpy -> scipy; for small
    models on a few busy cores torch's intra-op threads can spin against scipy
    (seen here: 30x slower), and ``torch.set_num_threads(1)`` is then faster.

    Search over c (per example, ``c_steps`` solves): a larger c penalises the
    perturbation more, so the smallest successful perturbation comes from the
    largest c that still reaches the target. Start at ``c_init``; while every
    solve succeeded multiply c by 10, while every solve failed divide it by 10,
    and once both a success (c_lo) and a failure (c_hi) are known bisect in log
    space, ``c = sqrt(c_lo * c_hi)``. Success means ``argmax f(x + r) == target``
    checked on the returned tensor; the successful example with the smallest
    ``||r||_2`` is kept.

    Args:
        model: maps (N, ...) inputs to (N, C) logits.
        x: (N, ...) inputs in [0, 1].
        target: (N,) int64 target classes.
        c_init: > 0, first value of c.
        c_steps: >= 1, number of values of c tried (one L-BFGS-B solve each).
        max_iter: >= 1, L-BFGS-B iterations per solve.
        batch_size: optional chunk size for big inputs.

    Returns:
        ``(x_adv, success)``: x_adv (N, ...) detached, in [0, 1]; success (N,)
        bool. Examples for which no c reached the target are returned as the
        original x (unchanged), with success False.

    >>> _ = torch.manual_seed(0)
    >>> net = nn.Linear(4, 3)
    >>> x = torch.rand(5, 4); t = torch.randint(0, 3, (5,))
    >>> x_adv, ok = lbfgs(net, x, t, c_steps=3, max_iter=20)
    >>> x_adv.shape, ok.dtype, bool(((x_adv >= 0) & (x_adv <= 1)).all())
    (torch.Size([5, 4]), torch.bool, True)
    """
    _check_inputs(x, target, y_name="target")
    if not math.isfinite(c_init) or c_init <= 0:
        raise ValueError(f"c_init must be a finite number > 0, got {c_init}")
    for name, value in (("c_steps", c_steps), ("max_iter", max_iter)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    x = x.detach()
    out = x.clone()
    success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    with eval_mode(model):
        for sl in _chunks(x.shape[0], batch_size):
            out[sl], success[sl] = _lbfgs_chunk(model, x[sl], target[sl], c_init, c_steps, max_iter)
    return out, success


def _lbfgs_chunk(
    model: nn.Module, x: Tensor, target: Tensor, c_init: float, c_steps: int, max_iter: int
) -> tuple[Tensor, Tensor]:
    n = x.shape[0]
    if n == 0:
        return x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device)
    x0 = x.detach().cpu().double().numpy().ravel()
    bounds = scipy.optimize.Bounds(np.zeros_like(x0), np.ones_like(x0))
    c = np.full(n, c_init, dtype=np.float64)
    c_lo = np.zeros(n)  # largest c known to succeed (0 = none yet)
    c_hi = np.full(n, np.inf)  # smallest c known to fail
    best = x.clone()
    best_norm = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)

    for _ in range(c_steps):
        c_t = torch.as_tensor(c, dtype=x.dtype, device=x.device)

        def objective(z_flat: np.ndarray, c_t: Tensor = c_t) -> tuple[float, np.ndarray]:
            z = torch.from_numpy(z_flat).to(device=x.device, dtype=x.dtype).view_as(x)
            z.requires_grad_(True)
            with torch.enable_grad():
                ce = F.cross_entropy(_logits(model, z), target, reduction="none")  # (n,)
                dist = (z - x).flatten(1).pow(2).sum(dim=1)  # (n,)
                loss = (c_t * dist + ce).sum()
                (grad,) = torch.autograd.grad(loss, z)
            return float(loss.item()), grad.detach().cpu().double().numpy().ravel()

        res = scipy.optimize.minimize(
            objective, x0, jac=True, method="L-BFGS-B", bounds=bounds,
            options={"maxiter": max_iter},
        )  # fmt: skip
        z = torch.from_numpy(np.clip(res.x, 0.0, 1.0)).to(device=x.device, dtype=x.dtype)
        z = z.view_as(x)
        with torch.no_grad():
            ok = _logits(model, z).argmax(dim=1) == target  # (n,)
        r_norm = (z - x).flatten(1).double().norm(dim=1)
        better = ok & (r_norm < best_norm)
        best[better] = z[better]
        best_norm = torch.where(better, r_norm, best_norm)

        ok_np = ok.cpu().numpy()
        c_lo = np.where(ok_np, np.maximum(c_lo, c), c_lo)
        c_hi = np.where(~ok_np, np.minimum(c_hi, c), c_hi)
        c = np.where(
            np.isinf(c_hi),
            c_lo * 10.0,  # only successes so far: penalise more
            np.where(c_lo > 0, np.sqrt(c_lo * c_hi), c_hi / 10.0),
        )
    return best, torch.isfinite(best_norm)


# --------------------------------------------------------------------------- transfer


@dataclass(frozen=True)
class TransferResult:
    """Result of :func:`transfer_matrix`.

    Attributes:
        matrix: (S, S) float64; ``matrix[s, t]`` = error rate of model t on the
            examples crafted on model s (diagonal = white-box error).
        clean_error: (S,) float64 error rate of each model on the clean x.
        names: the S model names, in row/column order.
    """

    matrix: Tensor
    clean_error: Tensor
    names: tuple[str, ...]


def transfer_matrix(
    models: Sequence[nn.Module] | Mapping[str, nn.Module],
    x: Tensor,
    y: Tensor,
    attack: Callable[[nn.Module, Tensor, Tensor], Tensor],
    *,
    batch_size: int | None = 256,
) -> TransferResult:
    """Transferability of adversarial examples between models (Szegedy et al. 2013, Table 2).

    For every source model s, craft ``x_adv_s = attack(model_s, x, y)`` (chunk by
    chunk), then for every target model t::

        matrix[s, t] = mean_i [argmax f_t(x_adv_s)_i != y_i]

    so row s says how well examples made on s fool each model, and the diagonal
    is the white-box error. ``clean_error[t] = mean_i [argmax f_t(x)_i != y_i]``.
    Predictions are made in eval mode (each model's mode is restored).

    Args:
        models: S models (a sequence, named ``"model_0"``, ...; or a name -> model mapping).
        x: (N, ...) inputs in [0, 1]; y: (N,) int64 true labels.
        attack: ``attack(model, x_chunk, y_chunk) -> x_adv_chunk`` of the same shape,
            e.g. ``lambda m, x, y: fgsm(m, x, y, eps=0.1)``.
        batch_size: chunk size (None = all at once).

    Returns:
        :class:`TransferResult` with ``matrix`` (S, S), ``clean_error`` (S,), ``names``.

    >>> _ = torch.manual_seed(0)
    >>> nets = {"a": nn.Linear(4, 3), "b": nn.Linear(4, 3)}
    >>> x = torch.rand(8, 4); y = torch.randint(0, 3, (8,))
    >>> res = transfer_matrix(nets, x, y, lambda m, xb, yb: fgsm(m, xb, yb, eps=0.2))
    >>> res.matrix.shape, res.names
    (torch.Size([2, 2]), ('a', 'b'))
    """
    if isinstance(models, Mapping):
        names = tuple(str(k) for k in models)
        nets = list(models.values())
    else:
        nets = list(models)
        names = tuple(f"model_{i}" for i in range(len(nets)))
    if not nets:
        raise ValueError("models must hold at least one model")
    for name, net in zip(names, nets, strict=True):
        if not isinstance(net, nn.Module):
            raise TypeError(f"model {name!r} is a {type(net).__name__}, not a torch.nn.Module")
    if not callable(attack):
        raise TypeError("attack must be callable as attack(model, x, y) -> x_adv")
    _check_inputs(x, y)
    n, s = x.shape[0], len(nets)
    if n == 0:
        raise ValueError("x must hold at least one example")
    chunks = _chunks(n, batch_size)

    def errors(inputs: Tensor, labels: Tensor) -> Tensor:  # (S,) misclassified counts
        wrong = torch.zeros(s, dtype=torch.float64)
        for t, net in enumerate(nets):
            with eval_mode(net), torch.no_grad():
                pred = _logits(net, inputs).argmax(dim=1)
            wrong[t] = (pred != labels).sum().item()
        return wrong

    matrix = torch.zeros(s, s, dtype=torch.float64)
    clean = torch.zeros(s, dtype=torch.float64)
    for sl in chunks:
        xb, yb = x[sl].detach(), y[sl]
        clean += errors(xb, yb)
        for src, net in enumerate(nets):
            x_adv = attack(net, xb, yb)
            if not isinstance(x_adv, Tensor) or x_adv.shape != xb.shape:
                got = tuple(x_adv.shape) if isinstance(x_adv, Tensor) else type(x_adv).__name__
                raise ValueError(
                    f"attack must return a tensor shaped like its input "
                    f"{tuple(xb.shape)}, got {got}"
                )
            matrix[src] += errors(x_adv.detach(), yb)
    return TransferResult(matrix=matrix / n, clean_error=clean / n, names=names)
