"""Capture named layers' activations with forward hooks.

Layers are named the way ``model.named_modules()`` names them (``"relu1"``,
``"stage2.0"``, ...). :class:`LayerTap` keeps the captured tensors attached to
the autograd graph, so a loss on them (e.g. the SNNL regulariser) trains the
network; :func:`capture` runs a model over a whole dataset in batches and
returns flattened, detached activations for analysis (DkNN, measures).

>>> import torch
>>> from snnl.models import MLP
>>> model = MLP((4,), 3, widths=(5, 6))
>>> with LayerTap(model, "hidden") as tap:
...     logits = model(torch.rand(2, 4))
>>> {name: tuple(t.shape) for name, t in tap.outputs.items()}
{'relu1': (2, 5), 'relu2': (2, 6)}
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "LayerTap",
    "resolve_layers",
    "split_logits",
    "capture",
    "eval_mode",
    "ACTIVATION_TYPES",
]

#: Module types :func:`resolve_layers` treats as activations for ``"hidden"``.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.ELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
)

Layers = str | Sequence[str]


def _available(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def resolve_layers(model: nn.Module, layers: Layers) -> tuple[str, ...]:
    """Turn a layer request into a validated tuple of module names.

    - ``"hidden"``: ``model.hidden_layer_names`` if the model defines it, else
      every leaf activation module (:data:`ACTIVATION_TYPES`) in
      ``named_modules()`` order.
    - any other string: that single module name.
    - a sequence of names: checked to exist, be non-empty and unique.

    Raises ``ValueError`` listing the available names for an unknown name.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    >>> resolve_layers(net, "hidden")
    ('1',)
    >>> resolve_layers(net, ["0", "2"])
    ('0', '2')
    """
    if isinstance(layers, str):
        if layers == "hidden":
            names = getattr(model, "hidden_layer_names", None)
            if names is None:
                names = tuple(
                    n
                    for n, m in model.named_modules()
                    if n and isinstance(m, ACTIVATION_TYPES) and not list(m.children())
                )
                if not names:
                    raise ValueError(
                        f"'hidden' found no activation modules "
                        f"({', '.join(t.__name__ for t in ACTIVATION_TYPES)}) in "
                        f"{type(model).__name__}; name the layers explicitly"
                    )
            layers = tuple(names)
        else:
            layers = (layers,)
    names = tuple(layers)
    if not names:
        raise ValueError("no layers requested")
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"layer names must be strings, got {names!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"layer names requested more than once: {dup}")
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(
            f"unknown layer name(s) {unknown} for {type(model).__name__}; "
            f"available: {', '.join(_available(model))}"
        )
    return names


class LayerTap:
    """Context manager recording named modules' outputs, with gradients, on each pass.

    On ``__enter__`` a forward hook is registered on every requested module
    and a pre-hook and hook on ``model`` itself mark the start and end of
    each forward pass of ``model``. After each pass ``tap.outputs`` is a dict
    name -> output tensor (not flattened, not detached) in the order
    requested. Checks at each pass: a requested layer that did not fire, or
    that fired more than once (a module reused inside ``forward``), raises
    ``RuntimeError`` naming it. All hooks are removed on exit, also when the
    body raises.

    Do not request modules whose output is later modified in place
    (``ReLU(inplace=True)`` followed by an in-place op): the recorded tensor
    would change with it.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> with LayerTap(net, ["1"]) as tap:
    ...     _ = net(torch.ones(5, 3))
    >>> tap.outputs["1"].shape, tap.outputs["1"].requires_grad
    (torch.Size([5, 4]), True)
    """

    def __init__(self, model: nn.Module, layer_names: Layers) -> None:
        self.model = model
        self.layer_names = resolve_layers(model, layer_names)
        self.outputs: dict[str, Tensor] = {}
        self._pending: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> LayerTap:
        if self._handles:
            raise RuntimeError("LayerTap is already active")
        modules = dict(self.model.named_modules())
        try:
            for name in self.layer_names:
                self._handles.append(modules[name].register_forward_hook(self._layer_hook(name)))
            # registered after the layer hooks so that for name "" (the model
            # itself) the layer hook runs before the end-of-pass check
            self._handles.append(self.model.register_forward_pre_hook(self._start_pass))
            self._handles.append(self.model.register_forward_hook(self._end_pass))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this tap registered (idempotent)."""
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()

    def _layer_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if name in self._pending:
                raise RuntimeError(
                    f"layer {name!r} fired more than once in one forward pass "
                    "(the module is reused); give each use its own module to tap it"
                )
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {name!r} returned {type(output).__name__}, LayerTap needs a Tensor"
                )
            self._pending[name] = output

        return hook

    def _start_pass(self, module: nn.Module, args: Any) -> None:
        self._pending = {}

    def _end_pass(self, module: nn.Module, args: Any, output: Any) -> None:
        missing = [n for n in self.layer_names if n not in self._pending]
        if missing:
            raise RuntimeError(
                f"layer(s) {missing} did not fire during the forward pass of "
                f"{type(self.model).__name__} (not on the path taken by forward)"
            )
        self.outputs = {n: self._pending[n] for n in self.layer_names}
        self._pending = {}


def split_logits(model: nn.Module, layers: Layers) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names to tap, names to return) for ``layers``, validated against ``model``.

    ``"logits"`` names the model's output unless the model has a module of that name;
    ``"hidden"`` is every activation (:func:`resolve_layers`). Raises ValueError for an
    unknown or repeated name.

    >>> net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    >>> split_logits(net, ["1", "logits"])
    (('1',), ('1', 'logits'))
    >>> split_logits(net, "hidden")
    (('1',), ('1',))
    """
    if isinstance(layers, str):
        if layers == "hidden":
            names = resolve_layers(model, layers)
            return names, names
        layers = [layers]
    names = tuple(layers)
    output_logits = "logits" in names and "logits" not in dict(model.named_modules())
    if output_logits and names.count("logits") > 1:
        raise ValueError("layer names requested more than once: ['logits']")
    taps = tuple(n for n in names if not (output_logits and n == "logits"))
    return (resolve_layers(model, taps) if taps else ()), names


def _device_of(model: nn.Module, fallback: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return fallback


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; restore every submodule's train/eval flag on exit.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())
    >>> _ = net[1].eval()
    >>> with eval_mode(net):
    ...     net.training
    False
    >>> net.training, net[1].training
    (True, False)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def capture(
    model: nn.Module,
    x: Tensor,
    layers: Layers,
    *,
    batch_size: int = 512,
    grad: bool = False,
) -> dict[str, Tensor]:
    """Run ``model`` over ``x`` in batches and return each layer's outputs as (N, D).

    ``layers`` is anything :func:`resolve_layers` accepts; in addition the name
    ``"logits"`` means the model's own output when no module is named
    ``"logits"`` (our models have such a module, so there it is that module).
    The model is put in eval mode for the run and every module's train/eval
    flag is restored afterwards. Batches are moved to the model's device and
    the results are returned on ``x``'s device, flattened to (N, prod(shape)),
    detached (computed under ``torch.no_grad``) unless ``grad=True``.

    Shapes: x (N, *input_shape) -> {name: (N, D_name)}, in the order requested.

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU())
    >>> out = capture(net, torch.ones(10, 2, 2), ["2", "logits"], batch_size=4)
    >>> {k: tuple(v.shape) for k, v in out.items()}
    {'2': (10, 3), 'logits': (10, 3)}
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"capture expects a Tensor of inputs, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"capture needs a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    taps, order = split_logits(model, layers)
    device = _device_of(model, x.device)
    chunks: dict[str, list[Tensor]] = {n: [] for n in order}
    tap_context: LayerTap | _Null = LayerTap(model, taps) if taps else _Null()
    with eval_mode(model), torch.set_grad_enabled(grad), tap_context as tap:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device)
            out = model(xb)
            got = dict(tap.outputs) if taps else {}
            got.setdefault("logits", out)
            for n in order:
                t = got[n]
                chunks[n].append(t.reshape(t.shape[0], -1).to(x.device))
    return {n: torch.cat(c) for n, c in chunks.items()}


class _Null:
    outputs: dict[str, Tensor] = {}

    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
