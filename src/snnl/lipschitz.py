"""Per-layer Lipschitz (operator-norm) upper bounds, Szegedy et al. (2013) section 4.3.

For a network f = phi_K o ... o phi_1, ``||f(x) - f(x + r)|| <= prod_k L_k ||r||`` (L2 norms)
with L_k the Lipschitz constant of layer k. :func:`layer_bounds` traces the layers of a
model in forward order and bounds each:

- ``nn.Linear``: the spectral norm of W (largest singular value, float64 SVD).
- ``nn.Conv2d`` (zero padding: int, tuple, "same", "valid", and snnl's ``Conv2dSame``):
  the exact operator norm of the convolution as a linear map on the traced input shape,
  with its stride, padding, dilation and groups: the largest eigenvalue of A^T A, with
  A = conv2d and A^T = conv_transpose2d in float64, by Lanczos iteration (ARPACK
  ``eigsh``, relative tolerance ``tol``); the reported value is sqrt(theta + rho), theta
  the converged Ritz value and rho = ||A^T A v - theta v|| its residual (an eigenvalue
  lies within rho of theta). Not the norm of the reshaped kernel, which
  ``torch.nn.utils.parametrizations.spectral_norm`` uses and which is not a bound.
- average pooling (``AvgPool2d``, ``AdaptiveAvgPool2d``): its operator norm, the same way
  (adjoint by autograd).
- ``MaxPool2d``: sqrt(m), m the largest number of pooling windows that share one input
  (1 for non-overlapping windows; exact: a change in a pixel that is the maximum of all
  its windows moves m outputs).
- ``BatchNorm1d/2d`` in eval mode: max_c |gamma_c / sqrt(running_var_c + eps)|.
- snnl's ``Normalize``: 1 / min(std).
- elementwise activations: sup |f'|: ReLU, ReLU6, Hardtanh, Tanh, Softplus 1; Sigmoid
  1/4; LeakyReLU max(1, |slope|); ELU max(1, alpha); GELU (erf form)
  Phi(sqrt 2) + sqrt(2) phi(sqrt 2) = 1.1289...; SiLU 1.0998... (numerical maximum).
- ``Flatten``, ``Unflatten``, ``Identity``, dropout (eval): 1.
- residual blocks (snnl's ``BasicBlock``): relu(branch(x) + shortcut(x)) with the
  option-A shortcut (subsampling and zero channel padding: operator norm 1), bounded by
  1 * (prod of the branch's bounds + 1); the branch's layers are in ``components``.

The bounds are for the model in eval mode (batch norm with running statistics). The
layers must form a chain: each traced layer's input must be the previous layer's
output (a view of it is fine), the first one's the model input and the model output
the last one's. A residual addition or a functional operation between modules breaks
the chain, and the model is refused with an error naming the layers, as is any module
of a type not listed above.

>>> from snnl.models import MLP
>>> _ = torch.manual_seed(0)
>>> res = layer_bounds(MLP((1, 8, 8), 3, widths=(16,)), (1, 8, 8))
>>> list(res.bounds)
['normalize', 'flatten', 'fc1', 'relu1', 'logits']
>>> abs(res.product - math.prod(res.bounds.values())) < 1e-12
True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.optimize
import scipy.sparse.linalg as sla
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snnl._checks import check_int, check_positive
from snnl.models import BasicBlock, Conv2dSame, Normalize
from snnl.taps import eval_mode

__all__ = ["LayerBounds", "layer_bounds", "empirical_check", "ACTIVATION_LIPSCHITZ"]


def _silu_lipschitz() -> float:
    """max_x d/dx [x sigmoid(x)] = sigmoid(x) (1 + x (1 - sigmoid(x))), at x ~ 2.40."""

    def slope(x: float) -> float:
        s = 1 / (1 + math.exp(-x))
        return s * (1 + x * (1 - s))

    res = scipy.optimize.minimize_scalar(
        lambda x: -slope(x), bounds=(0.0, 10.0), method="bounded", options={"xatol": 1e-12}
    )
    return slope(float(res.x))


#: sup |f'| of elementwise activations with a fixed constant.
ACTIVATION_LIPSCHITZ: dict[type[nn.Module], float] = {
    nn.ReLU: 1.0,
    nn.ReLU6: 1.0,
    nn.Hardtanh: 1.0,
    nn.Tanh: 1.0,
    nn.Softplus: 1.0,
    nn.Sigmoid: 0.25,
    nn.SiLU: _silu_lipschitz(),
}
_IDENTITY_LIKE = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_GELU = 0.5 * (1 + math.erf(1.0)) + math.exp(-1.0) / math.sqrt(math.pi)  # x = sqrt(2)

_SUPPORTED = (
    "Linear, Conv2d (zero padding), Conv2dSame, AvgPool2d, AdaptiveAvgPool2d, MaxPool2d, "
    "BatchNorm1d/2d, Normalize, ReLU, ReLU6, LeakyReLU, ELU, GELU, SiLU, Tanh, Sigmoid, "
    "Softplus, Hardtanh, Flatten, Unflatten, Identity, Dropout, and snnl.models.BasicBlock"
)


@dataclass
class LayerBounds:
    """Per-layer upper bounds on the Lipschitz constant (L2), in forward order.

    ``bounds[name]``: the bound of that layer; ``product``: their product, a bound for
    the whole network; ``cumulative[name]``: the product up to and including that layer
    (a bound for the map from the input to that layer's output); ``input_shapes``: the
    traced input shape of each layer (without the batch); ``methods``: how each bound
    was obtained; ``components``: for residual blocks, the bounds of their branch.
    """

    bounds: dict[str, float]
    product: float
    cumulative: dict[str, float]
    input_shapes: dict[str, tuple[int, ...]]
    methods: dict[str, str]
    components: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bounds": dict(self.bounds),
            "product": self.product,
            "cumulative": dict(self.cumulative),
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "methods": dict(self.methods),
            "components": {k: dict(v) for k, v in self.components.items()},
        }


# ----------------------------------------------------------------------------- tracing


_COMPOSITES: tuple[type[nn.Module], ...] = (BasicBlock,)


@dataclass
class _Call:
    name: str
    module: nn.Module
    input: Tensor
    output: Tensor


def _units(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """(units, inner): units are leaves and known composites, inner the leaves inside them."""
    units: dict[str, nn.Module] = {}
    inner: dict[str, nn.Module] = {}
    composite_prefixes: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in composite_prefixes):
            if not list(module.children()):
                inner[name] = module
            continue
        if isinstance(module, _COMPOSITES):
            units[name] = module
            composite_prefixes.append(name)
        elif not list(module.children()) and name:
            units[name] = module
    if not units and not list(model.children()):
        units[""] = model
    return units, inner


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    """b is a (view of) a: same memory, same number of elements."""
    return a.data_ptr() == b.data_ptr() and a.numel() == b.numel()


def _trace(model: nn.Module, x: Tensor) -> tuple[list[_Call], dict[str, tuple[int, ...]]]:
    """Run model(x) once, recording the chain of units and the inner leaves' input shapes."""
    units, inner = _units(model)
    calls: list[_Call] = []
    inner_shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def unit_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not args or not isinstance(args[0], Tensor) or not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {name!r} ({type(module).__name__}) must take and return one tensor"
                )
            calls.append(_Call(name, module, args[0], output))

        return hook

    def inner_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            inner_shapes[name] = tuple(args[0].shape[1:])

        return hook

    try:
        for name, module in units.items():
            handles.append(module.register_forward_hook(unit_hook(name)))
        for name, module in inner.items():
            handles.append(module.register_forward_hook(inner_hook(name)))
        with eval_mode(model), torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    if not calls:
        raise ValueError(f"no layer of {type(model).__name__} ran during the forward pass")
    names = [c.name for c in calls]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"layer(s) {repeated} run more than once in one forward pass; give each use "
            "its own module so that every layer is bounded once"
        )
    if not _same_tensor(x, calls[0].input):
        raise ValueError(
            f"the input of the first layer {calls[0].name!r} is not the model's input: an "
            "operation outside modules runs first in forward(); cannot bound it"
        )
    for prev, call in zip(calls[:-1], calls[1:], strict=True):
        if not _same_tensor(prev.output, call.input):
            raise ValueError(
                f"the input of layer {call.name!r} is not the output of {prev.name!r}: an "
                "operation outside modules (a residual addition, a functional call) runs "
                "between them, so the product of layer bounds would not bound the model. "
                "Supported residual blocks: snnl.models.BasicBlock"
            )
    if not isinstance(out, Tensor) or not _same_tensor(calls[-1].output, out):
        raise ValueError(
            f"the model's output is not the output of its last layer {calls[-1].name!r}: an "
            "operation outside modules runs last in forward(); cannot bound it"
        )
    return calls, inner_shapes


# ----------------------------------------------------------------------------- operator norms


def _top_singular_value(
    forward: Callable[[Tensor], Tensor],
    adjoint: Callable[[Tensor], Tensor],
    in_shape: tuple[int, ...],
    tol: float,
    generator: torch.Generator,
) -> float:
    """sqrt(theta + rho) for the top eigenpair of A^T A (Lanczos, float64)."""
    n = math.prod(in_shape)
    shape = (1, *in_shape)

    def gram(z: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float64)).reshape(shape)
        return adjoint(forward(v)).reshape(-1).numpy()

    if n <= 2:  # ARPACK needs n > 2: build the 1 x 1 or 2 x 2 Gram matrix
        gram_matrix = np.stack([gram(e) for e in np.eye(n)], axis=1)
        return float(np.sqrt(max(np.linalg.eigvalsh(gram_matrix).max(), 0.0)))
    start = torch.rand(n, generator=generator, dtype=torch.float64).numpy() + 0.5
    op = sla.LinearOperator((n, n), matvec=gram, dtype=np.float64)
    theta, vecs = sla.eigsh(op, k=1, which="LA", tol=tol, v0=start, maxiter=100 * n)
    v = vecs[:, 0] / np.linalg.norm(vecs[:, 0])
    rho = float(np.linalg.norm(gram(v) - theta[0] * v))
    return float(np.sqrt(max(theta[0] + rho, 0.0)))


def _conv_pads(conv: nn.Conv2d, in_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Zero padding (top, bottom, left, right) the convolution applies to this input."""
    if conv.padding_mode != "zeros":
        raise TypeError(
            f"cannot bound Conv2d with padding_mode={conv.padding_mode!r}: only zero "
            "padding is supported"
        )
    h, w = in_shape[-2:]
    if isinstance(conv, Conv2dSame):
        pads = []
        for size, k, s in zip((h, w), conv.kernel_size, conv.stride, strict=True):
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        return (*pads[0], *pads[1])
    if conv.padding == "same":
        pads = []
        for d, k in zip(conv.dilation, conv.kernel_size, strict=True):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        return (*pads[0], *pads[1])
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    ph, pw = conv.padding  # type: ignore[misc]
    return (ph, ph, pw, pw)


def _conv_bound(conv: nn.Conv2d, in_shape: tuple[int, ...], tol: float, g) -> float:
    weight = conv.weight.detach().to("cpu", torch.float64)
    top, bottom, left, right = _conv_pads(conv, in_shape)
    h, w = in_shape[-2:]
    ph, pw = h + top + bottom, w + left + right
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    kh, kw = conv.kernel_size
    oh, ow = (ph - dh * (kh - 1) - 1) // sh + 1, (pw - dw * (kw - 1) - 1) // sw + 1
    out_pad = (ph - ((oh - 1) * sh + dh * (kh - 1) + 1), pw - ((ow - 1) * sw + dw * (kw - 1) + 1))

    def forward(v: Tensor) -> Tensor:
        padded = F.pad(v, (left, right, top, bottom))
        return F.conv2d(padded, weight, None, conv.stride, 0, conv.dilation, conv.groups)

    def adjoint(u: Tensor) -> Tensor:
        full = F.conv_transpose2d(
            u, weight, None, conv.stride, 0, out_pad, conv.groups, conv.dilation
        )
        return full[..., top : top + h, left : left + w]

    return _top_singular_value(forward, adjoint, in_shape, tol, g)


def _linear_map_bound(module: nn.Module, in_shape: tuple[int, ...], tol: float, g) -> float:
    """Operator norm of a linear module (pooling), adjoint by autograd, float64."""
    m = copy.deepcopy(module).to("cpu", torch.float64)

    def forward(v: Tensor) -> Tensor:
        return m(v)

    def adjoint(u: Tensor) -> Tensor:
        v = torch.zeros((1, *in_shape), dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(m(v), v, u)
        return grad

    return _top_singular_value(forward, adjoint, in_shape, tol, g)


def _max_pool_bound(pool: nn.MaxPool2d, in_shape: tuple[int, ...], out_shape) -> float:
    """sqrt(largest number of windows containing one input position)."""

    def pair(v: Any) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]

    (kh, kw), (sh, sw) = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size)
    (ph, pw), (dh, dw) = pair(pool.padding), pair(pool.dilation)
    h, w = in_shape[-2:]
    oh, ow = out_shape[-2:]
    count = torch.zeros(h + 2 * ph + dh * kh + sh * oh, w + 2 * pw + dw * kw + sw * ow)
    for i in range(oh):
        for j in range(ow):
            count[
                i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw
            ] += 1
    inside = count[ph : ph + h, pw : pw + w]
    return math.sqrt(float(inside.max()))


def _batchnorm_bound(bn: nn.modules.batchnorm._BatchNorm) -> float:
    if bn.running_var is None:
        raise TypeError(
            f"cannot bound {type(bn).__name__} without running statistics "
            "(track_running_stats=False normalises by each batch's own statistics)"
        )
    scale = 1 / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    return float(scale.abs().max())


def _leaf_bound(
    module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...], tol: float, g
) -> tuple[float, str]:
    if isinstance(module, nn.Linear):
        w = module.weight.detach().to("cpu", torch.float64)
        return float(torch.linalg.matrix_norm(w, 2)), "spectral norm of W"
    if isinstance(module, nn.Conv2d):
        return _conv_bound(module, in_shape, tol, g), "conv operator norm (Lanczos)"
    if isinstance(module, nn.AvgPool2d | nn.AdaptiveAvgPool2d):
        return _linear_map_bound(module, in_shape, tol, g), "pooling operator norm (Lanczos)"
    if isinstance(module, nn.MaxPool2d):
        return _max_pool_bound(module, in_shape, out_shape), "sqrt(max windows per input)"
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        return _batchnorm_bound(module), "max |gamma / sqrt(var + eps)|"
    if isinstance(module, Normalize):
        return float(1 / module.std.detach().double().min()), "1 / min(std)"
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope)), "max(1, |negative_slope|)"
    if isinstance(module, nn.ELU):
        return max(1.0, float(module.alpha)), "max(1, alpha)"
    if isinstance(module, nn.GELU):
        if module.approximate != "none":
            raise TypeError("cannot bound GELU(approximate='tanh'); use the erf form")
        return _GELU, "sup |GELU'| at x = sqrt(2)"
    for kind, value in ACTIVATION_LIPSCHITZ.items():
        if type(module) is kind:
            return value, "sup |f'|"
    if isinstance(module, _IDENTITY_LIKE):
        return 1.0, "isometry / identity in eval"
    raise TypeError(f"cannot bound {type(module).__name__}; supported: {_SUPPORTED}")


# ----------------------------------------------------------------------------- public


def layer_bounds(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    tol: float = 1e-12,
    generator: torch.Generator | None = None,
) -> LayerBounds:
    """Upper bounds on every layer's Lipschitz constant (L2), traced in forward order.

    One forward pass on a zero input of shape (1, *input_shape) (eval mode, flags
    restored) records each layer's input shape; every bound is then computed in float64
    on the CPU as the module docstring lists.

    Args:
        model: a network whose layers form a chain (see the module docstring).
        input_shape: one input's shape without the batch, e.g. (1, 28, 28).
        tol: relative tolerance of the Lanczos iterations (convolutions, pooling).
        generator: seeds the Lanczos start vectors (default: seed 0).

    Returns:
        :class:`LayerBounds`.

    >>> from snnl.models import ReferenceCNN
    >>> _ = torch.manual_seed(0)
    >>> res = layer_bounds(ReferenceCNN((1, 8, 8), 10, channels=4), (1, 8, 8))
    >>> list(res.bounds)[:4], res.input_shapes["conv2"]
    (['normalize', 'conv1', 'relu1', 'conv2'], (4, 4, 4))
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be positive sizes without the batch, got {input_shape}")
    tol = check_positive("tol", tol)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros((1, *shape), device=device, dtype=dtype)
    calls, inner_shapes = _trace(model, x)
    bounds: dict[str, float] = {}
    methods: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    components: dict[str, dict[str, float]] = {}
    for call in calls:
        in_shape = tuple(call.input.shape[1:])
        out_shape = tuple(call.output.shape[1:])
        shapes[call.name] = in_shape
        if isinstance(call.module, BasicBlock):
            parts: dict[str, float] = {}
            for child in ("conv1", "bn1", "relu1", "conv2", "bn2"):
                full = f"{call.name}.{child}"
                module = getattr(call.module, child)
                parts[child], _ = _leaf_bound(module, inner_shapes[full], (), tol, g)
            branch = math.prod(parts.values())
            components[call.name] = parts
            bounds[call.name] = branch + 1.0  # relu2 (1) x (branch + option-A shortcut (1))
            methods[call.name] = "residual block: prod(branch) + 1 (shortcut), times ReLU (1)"
            continue
        bounds[call.name], methods[call.name] = _leaf_bound(
            call.module, in_shape, out_shape, tol, g
        )
    cumulative: dict[str, float] = {}
    running = 1.0
    for name, value in bounds.items():
        running *= value
        cumulative[name] = running
    return LayerBounds(bounds, running, cumulative, shapes, methods, components)


def empirical_check(
    model: nn.Module,
    x: Tensor,
    *,
    eps: float = 1e-3,
    trials: int = 8,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Largest measured ||f_l(h + r) - f_l(h)|| / ||r|| of every layer, on its own input.

    One forward pass on ``x`` (eval mode) records each layer's input h (the layers of
    :func:`layer_bounds`); then, in float64, each layer is applied to h and to h + r for
    ``trials`` random Gaussian directions r per example, scaled to ||r|| = eps (per
    example, L2 over all its values). The largest ratio over examples and trials is
    returned per layer; it can never exceed that layer's bound from :func:`layer_bounds`.

    >>> from snnl.models import MLP
    >>> _ = torch.manual_seed(0)
    >>> model = MLP((1, 8, 8), 3, widths=(16,))
    >>> ratios = empirical_check(model, torch.rand(5, 1, 8, 8))
    >>> bounds = layer_bounds(model, (1, 8, 8)).bounds
    >>> all(ratios[k] <= bounds[k] * (1 + 1e-9) for k in bounds)
    True
    """
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise ValueError("x must be a non-empty batch of inputs (N, ...)")
    eps = check_positive("eps", eps)
    trials = check_int("trials", trials, low=1)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    calls, _ = _trace(model, x)
    ratios: dict[str, float] = {}
    with torch.no_grad():
        for call in calls:
            module = copy.deepcopy(call.module).to("cpu", torch.float64).eval()
            h = call.input.detach().to("cpu", torch.float64)
            base = module(h)
            best = 0.0
            for _ in range(trials):
                r = torch.randn(h.shape, generator=g, dtype=torch.float64)
                r = r * (eps / r.flatten(1).norm(dim=1)).view(-1, *([1] * (h.dim() - 1)))
                change = (module(h + r) - base).flatten(1).norm(dim=1) / eps
                best = max(best, float(change.max()))
            ratios[call.name] = best
    return ratios
