"""Composition: one forward pass of the model for every regulariser's layers.

Every regulariser has a ``name`` (given at construction, unique among those composed),
``layers``, ``alpha``, ``active()`` and ``penalty(outputs, y, update=...) -> (term,
per_layer)``; :func:`regularized_loss` runs the model once with all their layers tapped
and returns ``CE - sum_r alpha_r * term_r`` with each regulariser's per-layer values
under its name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from snnl import distributed
from snnl._checks import check_labels, check_real
from snnl.taps import LayerTap, resolve_layers

__all__ = [
    "LayerRegularizer",
    "RegularizedOutput",
    "check_batch",
    "check_name",
    "regularized_layers",
    "regularized_loss",
]


@dataclass
class RegularizedOutput:
    """What :func:`regularized_loss` returns.

    Attributes:
        total: 0-dim loss to backpropagate, ``CE - sum_r alpha_r * term_r``.
        cross_entropy: 0-dim mean cross-entropy (detached).
        logits: (N, C) model output (with gradient).
        terms: regulariser name -> layer -> 0-dim value on this batch (detached), for
            every regulariser passed: an empty dict where its term was not computed
            (``alpha == 0`` without ``always_compute_*``, or a batch on which it is
            undefined, e.g. no class occurring twice for the SNNL).
    """

    total: Tensor
    cross_entropy: Tensor
    logits: Tensor
    terms: dict[str, dict[str, Tensor]] = field(default_factory=dict)


class LayerRegularizer(Protocol):
    """What :func:`regularized_loss` needs of a regulariser."""

    name: str
    layers: tuple[str, ...]
    alpha: float

    def active(self) -> bool: ...

    def penalty(
        self, outputs: Mapping[str, Tensor], y: Tensor, *, update: bool
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


def check_batch(x: Any, y: Any) -> Tensor:
    """Labels (N,) int64 of a batch ``x`` (N, ...), checked."""
    if not isinstance(x, Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"inputs must have shape (N, ...), got {tuple(x.shape)}")
    return check_labels(y, x.shape[0], device=x.device)


def check_name(name: Any) -> str:
    """A regulariser's name: a non-empty string (the key of its terms)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    return name


def regularized_layers(
    model: nn.Module, layers: str | Sequence[str], alpha: float | None, signs: str
) -> tuple[nn.Module, tuple[str, ...], float]:
    """(model, resolved layer names, alpha) of a regulariser, checked; ``signs`` says
    what the sign of alpha does (for the error when it is missing)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if alpha is None:
        raise TypeError(f"alpha is required: {signs}")
    names = resolve_layers(model, layers)
    _install_taps(model.module if isinstance(model, DistributedDataParallel) else model, names)
    return model, names, check_real("alpha", alpha)


class _TapHook:
    """A forward hook left on a regularised layer (registered when the regulariser is
    built, so outside any compiled region): it records the layer's output only while a
    compiled :func:`regularized_loss` has armed it (``outputs`` a dict), else does
    nothing. Eager calls use :class:`snnl.taps.LayerTap`; torch.compile cannot trace the
    registration of a hook, but traces one registered before."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.outputs: dict[str, Tensor] | None = None

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.outputs is None:
            return
        if self.name in self.outputs:
            raise RuntimeError(
                f"layer {self.name!r} fired more than once in one forward pass "
                "(the module is reused); give each use its own module to tap it"
            )
        self.outputs[self.name] = output


#: The attribute of a model holding its layer name -> persistent hook (see _TapHook).
_TAPS_ATTR = "_snnl_regularizer_taps"


def _install_taps(net: nn.Module, layers: Sequence[str]) -> dict[str, _TapHook]:
    """The persistent hooks of ``net``'s ``layers``, registering those missing."""
    hooks = net.__dict__.get(_TAPS_ATTR)
    if hooks is None:
        hooks = {}
        object.__setattr__(net, _TAPS_ATTR, hooks)
    missing = [n for n in layers if n not in hooks]
    if missing:
        if torch.compiler.is_compiling():
            raise RuntimeError(
                f"regularized_loss under torch.compile: layers {missing} have no tap yet; "
                "build the regularisers (or call regularized_loss once) before compiling"
            )
        modules = dict(net.named_modules())
        for name in missing:
            hooks[name] = _TapHook(name)
            modules[name].register_forward_hook(hooks[name])
    return hooks


def _compiled_forward(
    model: nn.Module, net: nn.Module, x: Tensor, layers: list[str]
) -> tuple[Any, dict[str, Tensor]]:
    """(logits, layer outputs) of one forward pass inside a compiled region."""
    hooks = _install_taps(net, layers)
    outputs: dict[str, Tensor] = {}
    for name in layers:
        hooks[name].outputs = outputs
    try:
        logits = model(x)
    finally:
        for name in layers:
            hooks[name].outputs = None
    missing = [n for n in layers if n not in outputs]
    if missing:
        raise RuntimeError(
            f"layer(s) {missing} did not fire during the forward pass of "
            f"{type(net).__name__} (not on the path taken by forward)"
        )
    return logits, {n: outputs[n] for n in layers}


def regularized_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    regularizers: Sequence[LayerRegularizer],
    *,
    update: bool | None = None,
) -> RegularizedOutput:
    """One forward pass of ``model`` with every regulariser's layers tapped.

    .. math::
        \\mathcal{L} = \\mathrm{CE}(f(x), y) - \\sum_r \\alpha_r \\, \\mathrm{term}_r

    Args:
        model: returns logits (N, C); or a ``DistributedDataParallel`` wrapper of
            it, see below.
        x: (N, ...) inputs; y: (N,) integer labels.
        regularizers: e.g. an :class:`~snnl.regularizers.EntanglementRegularizer` and a
            :class:`~snnl.regularizers.SelectivityRegularizer`, each with its own
            ``name`` (two of one class need different names: ``name=`` at construction);
            inactive ones (alpha 0) are skipped, their ``terms`` entry empty.
        update: update the regularisers' state (temperatures); default: when
            gradients are enabled.

    Under DistributedDataParallel (``model`` wrapped in it, W ranks), ``x``, ``y``
    are this rank's share B_r of a global batch B (N = sum_r n_r) and the result
    is that of one process on B (the concatenation of the shares in rank order):
    every tapped layer's outputs and the labels are gathered from all ranks with
    :func:`snnl.distributed.all_gather_batch`, so each regulariser's term (SNNL
    with its temperature search or step, class selectivity) is computed on the
    global batch, identically on every rank. The gather's backward gives rank r W
    times the term's gradient for its rows, and DDP's gradient average divides by
    W: the term needs no factor. The cross-entropy backpropagated is
    CE_sum(B_r) * W / N, which DDP's average turns into the gradient of CE_mean(B);
    its value (``cross_entropy`` and the value of ``total``) is the global mean,
    all-reduced, so every rank returns the same loss (the derivation is in
    :mod:`snnl.distributed`). ``logits`` are this rank's.

    Example:
        >>> from snnl.models import MLP
        >>> from snnl.regularizers import EntanglementRegularizer
        >>> _ = torch.manual_seed(0)
        >>> model = MLP((4,), 3, widths=(8, 8))
        >>> reg = EntanglementRegularizer(model, alpha=0.1)
        >>> out = regularized_loss(model, torch.rand(12, 4), torch.arange(12) % 3, [reg])
        >>> sorted(out.terms["snnl"])
        ['relu1', 'relu2']
    """
    y = check_batch(x, y)
    names = [r.name for r in regularizers]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(
            f"two regularisers are named {clash[0]!r}: their terms would share one key; "
            "give each its own name (name=... when constructing it)"
        )
    if update is None:
        update = torch.is_grad_enabled()
    active = [r for r in regularizers if r.active()]
    layers: list[str] = []
    for r in active:
        layers += [name for name in r.layers if name not in layers]
    ddp = isinstance(model, DistributedDataParallel)
    net = model.module if ddp else model  # layer names are those of the plain model
    if layers and torch.compiler.is_compiling():
        logits, outputs = _compiled_forward(model, net, x, layers)
    elif layers:
        with LayerTap(net, layers) as tap:
            logits = model(x)
        outputs = tap.outputs
    else:
        logits, outputs = model(x), {}
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"model must return logits of shape (N, C), got {shape}")
    group = model.process_group if ddp else None
    if ddp and distributed.world_size(group) > 1:
        ce, y, outputs = _global_batch(logits, y, outputs, layers, group)
    else:
        ce = F.cross_entropy(logits, y)
    total = ce
    terms: dict[str, dict[str, Tensor]] = {name: {} for name in names}
    for r in active:
        term, per_layer = r.penalty({n: outputs[n] for n in r.layers}, y, update=update)
        total = total - r.alpha * term.to(ce.dtype)
        terms[r.name] = per_layer
    if not torch.is_grad_enabled():
        total = total.detach()
    return RegularizedOutput(total, ce.detach(), logits, terms)


def _global_batch(
    logits: Tensor, y: Tensor, outputs: Mapping[str, Tensor], layers: list[str], group: Any
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(CE, labels, layer outputs) of the global batch, on a rank of W (see regularized_loss).

    The CE's value is the global mean (all-reduced local sums / N); its gradient is
    that of CE_sum(B_r) * W / N (``share - share.detach()`` is exactly 0).
    """
    sizes = distributed.batch_sizes(y.shape[0], y.device, group)
    n = sum(sizes)
    ce_sum = F.cross_entropy(logits, y, reduction="sum")
    mean = distributed.all_reduce_sum(ce_sum.double().reshape(1), group)[0] / n
    share = ce_sum * (len(sizes) / n)
    ce = mean.to(ce_sum.dtype) + (share - share.detach())
    y_all = distributed.all_gather_batch(y, sizes, group)
    gathered = {name: distributed.all_gather_batch(outputs[name], sizes, group) for name in layers}
    return ce, y_all, gathered
