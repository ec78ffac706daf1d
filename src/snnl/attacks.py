"""Gradient-based adversarial attacks and a transferability matrix.

One function per attack, each written the way its paper states the algorithm:

* :func:`fgsm`  - Fast Gradient Sign Method (Goodfellow et al. 2015), L-inf.
* :func:`bim`   - Basic Iterative Method (Kurakin et al. 2016), L-inf.
* :func:`pgd`   - Projected Gradient Descent (Madry et al. 2018), L-inf or L2.
* :func:`lbfgs` - box-constrained L-BFGS (Szegedy et al. 2013), targeted, L2
  (:func:`lbfgs_search` also returns the success mask and the c found).
* :func:`input_gradient` - ``grad_x`` of the summed cross-entropy, the one
  place every attack takes its gradient.
* :func:`transfer_matrix` - error of every target model on examples crafted on
  every source model (Szegedy et al. 2013, Table 2), or with ``targets`` the
  rate at which every target model predicts the target class (targeted transfer).
* :func:`next_class_targets` - the fixed target rule ``(y + 1) mod C``.

Conventions shared by every attack (the ones torchattacks, foolbox and ART
users expect):

* ``x`` is a float tensor of shape (N, ...) with values in [0, 1]; the
  returned adversarial examples are in [0, 1] too. Normalisation, if any,
  belongs inside the model. ``eps`` and ``step_size`` are in input units.
* ``y`` is an integer tensor of shape (N,) (any integer dtype; float labels
  are a TypeError): the true labels, or the target labels when
  ``targeted=True`` (the step then goes *against* the gradient of the
  target's cross-entropy).
* The model maps (N, ...) to logits (N, C). A model whose outputs look like
  probabilities (rows in [0, 1] summing to 1) or log-probabilities (rows
  whose logsumexp is 0) gets one UserWarning per attack call: the
  cross-entropy of probabilities is not the model's loss and its gradient
  is squashed. It is put in eval mode during the attack and every
  submodule's train/eval flag is restored afterwards, also when an error is
  raised.
* Gradients are taken with :func:`torch.autograd.grad` with respect to a
  detached copy of the input only, so parameters' ``.grad`` is untouched;
  the caller's ``x`` is never modified; results are detached and live on
  ``x.device``.
* ``batch_size`` (optional) splits big inputs into chunks; the loss is a sum
  of per-example terms, so chunking does not change the result.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snnl import _checks
from snnl.taps import eval_mode

__all__ = [
    "fgsm",
    "bim",
    "pgd",
    "lbfgs",
    "lbfgs_search",
    "LBFGSResult",
    "input_gradient",
    "transfer_matrix",
    "TransferResult",
    "next_class_targets",
    "NORMS",
]

#: Norms accepted by :func:`pgd` (``"linf"``/``"l2"``, ``2`` and ``float("inf")`` too).
NORMS: tuple[str, ...] = ("inf", "2")
_NORM_ALIASES = {"inf": "inf", "linf": "inf", "2": "2", "l2": "2"}


# --------------------------------------------------------------------------- helpers


def _check_inputs(x: Tensor, y: Tensor, *, y_name: str = "y", box: bool = True) -> Tensor:
    """Validate x (N, ...) floating, without NaN (in [0, 1] if ``box``) and labels y (N,).

    Labels of any integer dtype are accepted and returned as int64 on x's device.
    """
    _checks.check_tensor("x", x, min_dim=2, floating=True)
    y = _checks.check_labels(y, x.shape[0], name=y_name, device=x.device, non_negative=True)
    if x.numel() == 0:
        return y
    if torch.isnan(x).any():
        raise ValueError("x contains NaN")
    if box:
        lo, hi = x.min().item(), x.max().item()
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"x must lie in [0, 1], got values in [{lo:.6g}, {hi:.6g}]")
    return y


def _check_eps(eps: float) -> float:
    return _checks.check_real("eps", eps, low=0.0)


def _check_steps(step_size: float, steps: int) -> tuple[float, int]:
    return _checks.check_positive("step_size", step_size), _checks.check_int("steps", steps, low=1)


def _check_norm(norm: str | float) -> str:
    """``"inf"``/``"linf"``/``float("inf")`` -> ``"inf"``; ``"2"``/``"l2"``/``2`` -> ``"2"``."""
    if not isinstance(norm, bool) and isinstance(norm, (int, float)):
        norm = {2.0: "2", math.inf: "inf"}.get(float(norm), str(norm))
    key = norm.lower() if isinstance(norm, str) else norm
    return _NORM_ALIASES[_checks.check_choice("norm", key, _NORM_ALIASES)]


def _chunks(n: int, batch_size: int | None) -> list[slice]:
    if batch_size is None:
        return [slice(0, n)]
    batch_size = _checks.check_int("batch_size", batch_size, low=1)
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"model must return logits of shape (N, C) = ({x.shape[0]}, C), got {shape}"
        )
    return out


def _output_kind(out: Tensor, tol: float = 1e-4) -> str:
    """``"probabilities"`` if every row lies in [0, 1] and sums to 1 (within ``tol``),
    ``"log-probabilities"`` if every row is <= 0 with logsumexp 0, else ``"logits"``.

    >>> _output_kind(torch.tensor([[0.2, 0.8], [0.5, 0.5]]))
    'probabilities'
    >>> _output_kind(torch.tensor([[0.2, 0.8], [0.5, 0.5]]).log())
    'log-probabilities'
    >>> _output_kind(torch.tensor([[2.0, -1.0], [0.3, 0.1]]))
    'logits'
    """
    if out.ndim != 2 or out.shape[0] == 0 or out.shape[1] < 2:
        return "logits"
    o = out.detach().double()
    if not bool(torch.isfinite(o).all()):
        return "logits"
    if float(o.min()) >= 0.0 and float(o.max()) <= 1.0:
        if float((o.sum(dim=1) - 1.0).abs().max()) <= tol:
            return "probabilities"
    if float(o.max()) <= 0.0 and float(o.logsumexp(dim=1).abs().max()) <= tol:
        return "log-probabilities"
    return "logits"


def _warn_if_not_logits(out: Tensor) -> None:
    """One UserWarning when the model's outputs look like (log-)probabilities."""
    kind = _output_kind(out)
    if kind == "probabilities":
        detail = "every row lies in [0, 1] and sums to 1"
    elif kind == "log-probabilities":
        detail = "every row is <= 0 with logsumexp 0"
    else:
        return
    warnings.warn(
        f"the attacks expect a model that returns logits, but its outputs look like {kind} "
        f"({detail}); the cross-entropy of probabilities is not the model's loss and its "
        f"gradient is squashed: return the logits (drop the final softmax/log_softmax)",
        UserWarning,
        stacklevel=4,
    )


def _input_grad(model: nn.Module, x: Tensor, y: Tensor, *, check_output: bool = False) -> Tensor:
    """grad_x of sum_i CE(model(x)_i, y_i), taken w.r.t. a detached copy of x only.

    The one place the attacks take their gradient. ``check_output``: warn (once, the
    caller asks on its first call) when the outputs look like (log-)probabilities.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = _logits(model, x)
        if check_output:
            _warn_if_not_logits(logits)
        loss = F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def input_gradient(
    model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int | None = None
) -> Tensor:
    """Gradient of the summed cross-entropy with respect to the inputs.

    ``g_i = d/dx_i sum_j CE(f(x)_j, y_j) = d CE(f(x_i), y_i) / d x_i`` (each example's
    own loss, since examples do not interact in eval mode). Taken in eval mode (every
    submodule's flag restored, also on error) with :func:`torch.autograd.grad` on a
    detached copy of x, so no parameter's ``.grad`` changes. This is the gradient every
    attack here steps along (FGSM: ``x + eps * sign(g)``).

    Args:
        model: maps (N, ...) inputs to (N, C) logits (a warning if they look like
            probabilities).
        x: (N, ...) floating inputs (any range; NaN refused).
        y: (N,) integer class labels (any integer dtype).
        batch_size: optional chunk size (the result does not depend on it).

    Returns:
        (N, ...) detached gradient, dtype and device of x.

    >>> net = nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    >>> # CE = logsumexp(x) - x_y; at x = 0: softmax = (1/2, 1/2), g = (1/2, 1/2) - e_y
    >>> input_gradient(net, torch.zeros(1, 2), torch.tensor([0], dtype=torch.int32))
    tensor([[-0.5000,  0.5000]])
    """
    y = _check_inputs(x, y, box=False)
    out = torch.empty_like(x)
    with eval_mode(model):
        for i, sl in enumerate(_chunks(x.shape[0], batch_size)):
            out[sl] = _input_grad(model, x[sl], y[sl], check_output=i == 0)
    return out.detach()


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
        y: (N,) integer true labels (or targets when ``targeted``), any integer dtype.
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
    y = _check_inputs(x, y)
    eps = _check_eps(eps)
    direction = -1.0 if targeted else 1.0
    out = torch.empty_like(x)
    with eval_mode(model):
        for i, sl in enumerate(_chunks(x.shape[0], batch_size)):
            xb = x[sl].detach()
            grad = _input_grad(model, xb, y[sl], check_output=i == 0)
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
    y = _check_inputs(x, y)
    eps = _check_eps(eps)
    step_size, steps = _check_steps(step_size, steps)
    direction = -1.0 if targeted else 1.0
    out = torch.empty_like(x)
    with eval_mode(model):
        for i, sl in enumerate(_chunks(x.shape[0], batch_size)):
            xb, yb = x[sl].detach(), y[sl]
            lower, upper = (xb - eps).clamp(min=0.0), (xb + eps).clamp(max=1.0)  # ball & box
            x_adv = xb.clone()
            for step in range(steps):
                grad = _input_grad(model, x_adv, yb, check_output=i == 0 and step == 0)
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
    norm_name = _check_norm(norm)
    y = _check_inputs(x, y)
    eps = _check_eps(eps)
    step_size, steps = _check_steps(step_size, steps)
    direction = -1.0 if targeted else 1.0
    x = x.detach()
    delta0 = _random_start(x, eps, norm_name, generator) if random_start else None
    out = torch.empty_like(x)
    with eval_mode(model):
        for i, sl in enumerate(_chunks(x.shape[0], batch_size)):
            xb, yb = x[sl], y[sl]
            x_adv = xb.clone() if delta0 is None else (xb + delta0[sl]).clamp_(0.0, 1.0)
            if norm_name == "inf":
                lower, upper = (xb - eps).clamp(min=0.0), (xb + eps).clamp(max=1.0)
                x_adv.clamp_(lower, upper)
                for step in range(steps):
                    grad = _input_grad(model, x_adv, yb, check_output=i == 0 and step == 0)
                    x_adv.add_(grad.sign_(), alpha=direction * step_size).clamp_(lower, upper)
            else:
                for step in range(steps):
                    grad = _input_grad(model, x_adv, yb, check_output=i == 0 and step == 0)
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


@dataclass(frozen=True)
class LBFGSResult:
    """Result of :func:`lbfgs_search` for N examples.

    Attributes:
        x_adv: (N, ...) detached, in [0, 1]: the smallest successful perturbation found,
            or the original x where no c reached the target.
        success: (N,) bool, ``argmax f(x_adv) == target``.
        c: (N,) float64, the c whose solve gave ``x_adv`` (NaN where unsuccessful).
    """

    x_adv: Tensor
    success: Tensor
    c: Tensor


def lbfgs(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    c_init: float = 1.0,
    c_steps: int = 8,
    max_iter: int = 100,
    batch_size: int | None = None,
) -> Tensor:
    """Box-constrained L-BFGS targeted attack (Szegedy et al., ICLR 2014), L2.

    Returns the adversarial inputs only, like :func:`fgsm` and :func:`pgd` (so it can be
    handed to :func:`transfer_matrix`); :func:`lbfgs_search` runs the same search and
    also returns which examples reached their target and the c that did it. The
    algorithm and arguments are described there.

    Args:
        model, x, c_init, c_steps, max_iter, batch_size: as in :func:`lbfgs_search`.
        target: (N,) integer target classes (any integer dtype).

    Returns:
        (N, ...) detached, in [0, 1]; examples for which no c reached the target are
        returned unchanged (the original x).

    In a transfer matrix (targets: the next class)::

        transfer_matrix(models, x, y, lambda m, xb, yb: lbfgs(m, xb, (yb + 1) % C))

    >>> _ = torch.manual_seed(0)
    >>> net = nn.Linear(4, 3)
    >>> x = torch.rand(5, 4); t = torch.randint(0, 3, (5,))
    >>> x_adv = lbfgs(net, x, t, c_steps=3, max_iter=20)
    >>> x_adv.shape, bool(((x_adv >= 0) & (x_adv <= 1)).all())
    (torch.Size([5, 4]), True)
    """
    return _lbfgs(model, x, target, c_init, c_steps, max_iter, batch_size).x_adv


def lbfgs_search(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    c_init: float = 1.0,
    c_steps: int = 8,
    max_iter: int = 100,
    batch_size: int | None = None,
) -> LBFGSResult:
    """Box-constrained L-BFGS targeted attack (Szegedy et al., ICLR 2014), with its search over c.

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
        target: (N,) integer target classes (any integer dtype).
        c_init: > 0, first value of c.
        c_steps: >= 1, number of values of c tried (one L-BFGS-B solve each).
        max_iter: >= 1, L-BFGS-B iterations per solve.
        batch_size: optional chunk size for big inputs.

    Returns:
        :class:`LBFGSResult` ``(x_adv, success, c)``: x_adv (N, ...) detached, in
        [0, 1]; success (N,) bool; c (N,) float64. Examples for which no c reached the
        target are returned as the original x (unchanged), with success False, c NaN.

    >>> _ = torch.manual_seed(0)
    >>> net = nn.Linear(4, 3)
    >>> x = torch.rand(5, 4); t = torch.randint(0, 3, (5,))
    >>> res = lbfgs_search(net, x, t, c_steps=3, max_iter=20)
    >>> res.x_adv.shape, res.success.dtype, bool(res.c[res.success].gt(0).all())
    (torch.Size([5, 4]), torch.bool, True)
    """
    return _lbfgs(model, x, target, c_init, c_steps, max_iter, batch_size)


def _lbfgs(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    c_init: float,
    c_steps: int,
    max_iter: int,
    batch_size: int | None,
) -> LBFGSResult:
    target = _check_inputs(x, target, y_name="target")
    c_init = _checks.check_positive("c_init", c_init)
    c_steps = _checks.check_int("c_steps", c_steps, low=1)
    max_iter = _checks.check_int("max_iter", max_iter, low=1)
    x = x.detach()
    out = x.clone()
    success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    c_found = torch.full((x.shape[0],), math.nan, dtype=torch.float64, device=x.device)
    with eval_mode(model):
        for i, sl in enumerate(_chunks(x.shape[0], batch_size)):
            if i == 0 and x.shape[0] > 0:
                with torch.no_grad():
                    _warn_if_not_logits(_logits(model, x[sl]))
            out[sl], success[sl], c_found[sl] = _lbfgs_chunk(
                model, x[sl], target[sl], c_init, c_steps, max_iter
            )
    return LBFGSResult(x_adv=out, success=success, c=c_found)


def _lbfgs_chunk(
    model: nn.Module, x: Tensor, target: Tensor, c_init: float, c_steps: int, max_iter: int
) -> tuple[Tensor, Tensor, Tensor]:
    n = x.shape[0]
    if n == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=x.device)
        return x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device), empty
    x0 = x.detach().cpu().double().numpy().ravel()
    bounds = scipy.optimize.Bounds(np.zeros_like(x0), np.ones_like(x0))
    c = np.full(n, c_init, dtype=np.float64)
    c_lo = np.zeros(n)  # largest c known to succeed (0 = none yet)
    c_hi = np.full(n, np.inf)  # smallest c known to fail
    best = x.clone()
    best_norm = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
    best_c = torch.full((n,), math.nan, dtype=torch.float64, device=x.device)

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
        best_c = torch.where(better, torch.as_tensor(c, device=x.device), best_c)

        ok_np = ok.cpu().numpy()
        c_lo = np.where(ok_np, np.maximum(c_lo, c), c_lo)
        c_hi = np.where(~ok_np, np.minimum(c_hi, c), c_hi)
        c = np.where(
            np.isinf(c_hi),
            c_lo * 10.0,  # only successes so far: penalise more
            np.where(c_lo > 0, np.sqrt(c_lo * c_hi), c_hi / 10.0),
        )
    return best, torch.isfinite(best_norm), best_c


# --------------------------------------------------------------------------- transfer


@dataclass(frozen=True)
class TransferResult:
    """Result of :func:`transfer_matrix`.

    Attributes:
        matrix: (S, S) float64; ``matrix[s, t]`` = error rate of model t on the
            examples crafted on model s (diagonal = white-box error); with ``targets``
            (``targeted=True``) the rate at which model t predicts the target class.
        clean_error: (S,) float64 error rate of each model on the clean x.
        names: the S model names, in row/column order.
        targeted: whether ``matrix`` holds targeted success rates.
        clean_target_rate: (S,) float64 rate at which each model predicts the target
            class on the clean x (the targeted baseline); None when untargeted.
    """

    matrix: Tensor
    clean_error: Tensor
    names: tuple[str, ...]
    targeted: bool = False
    clean_target_rate: Tensor | None = None


def transfer_matrix(
    models: Sequence[nn.Module] | Mapping[str, nn.Module],
    x: Tensor,
    y: Tensor,
    attack: Callable[[nn.Module, Tensor, Tensor], Tensor],
    *,
    targets: Tensor | None = None,
    batch_size: int | None = 256,
) -> TransferResult:
    """Transferability of adversarial examples between models (Szegedy et al. 2013, Table 2).

    For every source model s, craft ``x_adv_s = attack(model_s, x, y)`` (chunk by
    chunk), then for every target model t::

        matrix[s, t] = mean_i [argmax f_t(x_adv_s)_i != y_i]

    so row s says how well examples made on s fool each model, and the diagonal
    is the white-box error. ``clean_error[t] = mean_i [argmax f_t(x)_i != y_i]``.
    Predictions are made in eval mode (each model's mode is restored).

    Targeted transfer (``targets`` given, target classes c_i): the attack is called as
    ``attack(model_s, x_chunk, targets_chunk)`` and

        matrix[s, t] = mean_i [argmax f_t(x_adv_s)_i == c_i]

    (the targeted success rate; ``clean_target_rate[t]`` is the same on the clean x).

    Args:
        models: S models (a sequence, named ``"model_0"``, ...; or a name -> model mapping).
        x: (N, ...) inputs in [0, 1]; y: (N,) integer true labels.
        attack: ``attack(model, x_chunk, labels_chunk) -> x_adv_chunk`` of the same
            shape, e.g. ``lambda m, x, y: fgsm(m, x, y, eps=0.1)``; the labels are y, or
            the targets when ``targets`` is given (e.g. ``fgsm(..., targeted=True)``).
        targets: optional (N,) integer target classes (e.g. :func:`next_class_targets`).
        batch_size: chunk size (None = all at once).

    Returns:
        :class:`TransferResult` with ``matrix`` (S, S), ``clean_error`` (S,), ``names``,
        ``targeted`` and ``clean_target_rate`` (S,) (None when untargeted).

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
    y = _check_inputs(x, y)
    targeted = targets is not None
    c = _check_inputs(x, targets, y_name="targets") if targets is not None else y
    n, s = x.shape[0], len(nets)
    if n == 0:
        raise ValueError("x must hold at least one example")
    chunks = _chunks(n, batch_size)

    def counts(inputs: Tensor, labels: Tensor, hit: bool) -> Tensor:  # (S,) per model
        out = torch.zeros(s, dtype=torch.float64)
        for t, net in enumerate(nets):
            with eval_mode(net), torch.no_grad():
                pred = _logits(net, inputs).argmax(dim=1)
            out[t] = ((pred == labels) if hit else (pred != labels)).sum().item()
        return out

    matrix = torch.zeros(s, s, dtype=torch.float64)
    clean = torch.zeros(s, dtype=torch.float64)
    clean_hit = torch.zeros(s, dtype=torch.float64)
    for sl in chunks:
        xb, yb, cb = x[sl].detach(), y[sl], c[sl]
        clean += counts(xb, yb, hit=False)
        if targeted:
            clean_hit += counts(xb, cb, hit=True)
        for src, net in enumerate(nets):
            x_adv = attack(net, xb, cb)
            if not isinstance(x_adv, Tensor) or x_adv.shape != xb.shape:
                got = tuple(x_adv.shape) if isinstance(x_adv, Tensor) else type(x_adv).__name__
                raise ValueError(
                    f"attack must return a tensor shaped like its input "
                    f"{tuple(xb.shape)}, got {got}"
                )
            matrix[src] += counts(x_adv.detach(), cb, hit=targeted)
    return TransferResult(
        matrix=matrix / n,
        clean_error=clean / n,
        names=names,
        targeted=targeted,
        clean_target_rate=clean_hit / n if targeted else None,
    )


def next_class_targets(y: Tensor, num_classes: int) -> Tensor:
    """The fixed target rule of the targeted attacks here: ``c_i = (y_i + 1) mod C``.

    Every target differs from the true class (C >= 2), and each class is the target
    of exactly one other class.

    Args:
        y: (N,) integer labels in [0, num_classes).
        num_classes: C >= 2.

    Returns:
        (N,) int64 target classes on y's device.

    >>> next_class_targets(torch.tensor([0, 3, 9]), 10)
    tensor([1, 4, 0])
    """
    num_classes = _checks.check_int("num_classes", num_classes, low=2)
    y = _checks.check_labels(y, name="y", non_negative=True)
    if y.numel() and int(y.max()) >= num_classes:
        raise ValueError(f"y holds label {int(y.max())}, not below num_classes={num_classes}")
    return (y + 1) % num_classes
