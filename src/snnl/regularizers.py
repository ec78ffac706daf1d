"""Training-time regularisers on hidden-layer geometry, composable in one forward pass.

:class:`EntanglementRegularizer` is the objective of Frosst, Papernot & Hinton
(2019), eq. 3:

    loss = CE(f(x), y) - alpha * sum_{l in layers} SNNL(h_l(x), y, T_l)

- ``alpha > 0`` *maximises* the hidden layers' SNNL (the paper's "entangled
  models"; the reference code writes it as ``CE + factor * SNNL`` with
  ``factor = -10``), ``alpha < 0`` minimises it (clusters classes),
  ``alpha = 0`` is plain cross-entropy and skips the SNNL entirely.
- ``h_l(x)`` is the output of the named module ``l``, flattened to (N, D)
  (conv activations included), captured with :class:`snnl.taps.LayerTap` so
  the gradient reaches the network.

How T_l is chosen (``temperature_mode``):

- ``"optimal"`` (default): T_l = argmin_T SNNL(h_l, y, T) of this batch, found
  exactly (Newton steps in log T, warm-started from the previous batch's T*, on
  the batch's distance matrix, with a coarse grid on the first call and every
  ``regrid_every`` calls), then held fixed for the network's gradient. By the
  envelope theorem that is the exact gradient of SNNL*(h_l) = min_T SNNL(h_l, T).
  SNNL* is invariant to the scale of h and bounded above by its value for
  indistinguishable classes, so maximising it can neither shrink the layer into
  a collapse nor inflate distances without bound (FIELD_NOTES sections 1, 7).
- ``"learned"``: one Adam step per call on log T_l that minimises that layer's
  SNNL (its gradient does not reach the network).
- ``"reference"``: the authors' scheme, T = T0 / t with t starting at 1; each
  call takes one plain step t <- t - 0.1 dSNNL/dt (gradient not reaching the
  network) and uses the new T. A step that would make t <= 0 or non-finite (the
  authors' code lets it) is refused and counted in ``refused_steps``.
- ``"fixed"``: T_l never changes.

``snnl_formula``: ``"exact"`` (default) is :func:`snnl.loss.soft_nearest_neighbor_loss`
(log-space, exact in every regime); ``"reference"`` is the authors' formula
transcribed from their code (exp, then an epsilon of 1e-5 inside the log; it
saturates at -log(1e-5) = 11.51 with zero gradient when every exp underflows),
so that experiments can test whether a result depends on that saturation.

Composition: every regulariser here has ``layers``, ``alpha`` and
``penalty(outputs, y, update=...) -> (term, per_layer)``; :func:`regularized_loss`
runs the model once with every regulariser's layers tapped and returns
``CE - sum_r alpha_r * term_r``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from snnl import distributed
from snnl._checks import (
    DISTANCES,
    check_choice,
    check_int,
    check_labels,
    check_positive,
    check_real,
)
from snnl.loss import SNNLWarning, soft_nearest_neighbor_loss
from snnl.measures import class_selectivity
from snnl.taps import LayerTap, resolve_layers
from snnl.temperature import optimal_log_temperature, snnl_star

__all__ = [
    "EntanglementOutput",
    "EntanglementRegularizer",
    "RegularizedOutput",
    "TEMPERATURE_MODES",
    "SNNL_FORMULAS",
    "reference_formula_snnl",
    "regularized_loss",
    "optimal_log_temperature",
    "SelectivityOutput",
    "SelectivityRegularizer",
]

TEMPERATURE_MODES: tuple[str, ...] = ("optimal", "learned", "reference", "fixed")
SNNL_FORMULAS: tuple[str, ...] = ("exact", "reference")
#: The authors' STABILITY_EPS (cleverhans SNNLCrossEntropy).
REFERENCE_EPS = 1e-5
#: The authors' step on t (T = T0 / t) per evaluation.
REFERENCE_T_STEP = 0.1
#: Learned log-temperatures are clamped to this range (T in about [2e-9, 5e8]).
LOG_T_BOUNDS = (-20.0, 20.0)


# ----------------------------------------------------------------------------- outputs


@dataclass
class RegularizedOutput:
    """What :func:`regularized_loss` returns.

    Attributes:
        total: 0-dim loss to backpropagate, ``CE - sum_r alpha_r * term_r``.
        cross_entropy: 0-dim mean cross-entropy (detached).
        logits: (N, C) model output (with gradient).
        terms: regulariser name -> layer -> 0-dim value on this batch (detached).
    """

    total: Tensor
    cross_entropy: Tensor
    logits: Tensor
    terms: dict[str, dict[str, Tensor]] = field(default_factory=dict)


@dataclass
class EntanglementOutput:
    """What one call of :class:`EntanglementRegularizer` returns.

    Attributes:
        total: 0-dim loss to backpropagate, ``CE - alpha * sum(snnl)`` with gradient.
        cross_entropy: 0-dim mean cross-entropy (detached).
        snnl: layer -> 0-dim SNNL of that layer on this batch (detached); empty when
            ``alpha == 0`` and the SNNL was not asked for.
        temperatures: layer -> temperature the SNNL was computed at on this batch.
        logits: (N, C) model output (with gradient).
        left_out: number of anchors in the batch with no other point of their class
            (left out of every layer's SNNL).
    """

    total: Tensor
    cross_entropy: Tensor
    snnl: dict[str, Tensor]
    temperatures: dict[str, float]
    logits: Tensor
    left_out: int


class LayerRegularizer(Protocol):
    """What :func:`regularized_loss` needs of a regulariser."""

    name: str
    layers: tuple[str, ...]
    alpha: float

    def active(self) -> bool: ...

    def penalty(
        self, outputs: Mapping[str, Tensor], y: Tensor, *, update: bool
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


def _check_batch(x: Any, y: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"inputs must have shape (N, ...), got {tuple(x.shape)}")
    return check_labels(y, x.shape[0], device=x.device)


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
        regularizers: e.g. an :class:`EntanglementRegularizer` and a
            :class:`SelectivityRegularizer`; inactive ones (alpha 0) are skipped.
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
        >>> _ = torch.manual_seed(0)
        >>> model = MLP((4,), 3, widths=(8, 8))
        >>> reg = EntanglementRegularizer(model, alpha=0.1)
        >>> out = regularized_loss(model, torch.rand(12, 4), torch.arange(12) % 3, [reg])
        >>> sorted(out.terms["snnl"])
        ['relu1', 'relu2']
    """
    y = _check_batch(x, y)
    if update is None:
        update = torch.is_grad_enabled()
    active = [r for r in regularizers if r.active()]
    layers: list[str] = []
    for r in active:
        layers += [name for name in r.layers if name not in layers]
    ddp = isinstance(model, DistributedDataParallel)
    net = model.module if ddp else model  # layer names are those of the plain model
    if layers:
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
    terms: dict[str, dict[str, Tensor]] = {}
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


# ----------------------------------------------------------------------------- formulas


def reference_formula_snnl(
    features: Tensor, labels: Tensor, temperature: float | Tensor, *, distance: str = "euclidean"
) -> Tensor:
    """SNNL exactly as the authors' code computes it (cleverhans ``SNNLCrossEntropy.SNNL``).

    .. math::
        f_{ij} = e^{-d_{ij}/T} - [i = j], \\quad
        p_{ij} = f_{ij} / (\\epsilon + \\textstyle\\sum_k f_{ik}), \\quad
        \\mathrm{SNNL} = \\mathrm{mean}_i\\,
            -\\log(\\epsilon + \\textstyle\\sum_{j: y_j = y_i} p_{ij})

    with eps = 1e-5, d the expansion |a|^2 + |b|^2 - 2ab (squared euclidean, not
    centred) or 1 - cos, the same-label mask *including* the diagonal, and every
    anchor in the mean (one without a positive counts about 11.51). In the
    underflow regime the value is -log(1e-5) = 11.5129 with zero gradient.
    Computed in the features' dtype, (N, N) memory: for mini-batches only.

    Example:
        >>> x = torch.tensor([[0.0], [100.0], [200.0], [300.0]])
        >>> round(reference_formula_snnl(x, torch.tensor([0, 0, 1, 1]), 1.0).item(), 4)
        11.5129
    """
    x = features.reshape(features.shape[0], -1)
    y = check_labels(labels, x.shape[0], device=x.device)
    check_choice("distance", distance, DISTANCES)
    if distance == "cosine":
        xn = F.normalize(x, dim=1, eps=1e-12)
        d = 1.0 - xn @ xn.T
    else:
        sq = (x * x).sum(1)
        d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    f = torch.exp(-d / temperature) - torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    pick = f / (REFERENCE_EPS + f.sum(1, keepdim=True))
    same = (y[:, None] == y[None, :]).to(x.dtype)
    return (-torch.log(REFERENCE_EPS + (pick * same).sum(1))).mean()


def _snnl(formula: str, x: Tensor, y: Tensor, t: float | Tensor, distance: str) -> Tensor:
    if formula == "reference":
        return reference_formula_snnl(x, y, t, distance=distance)
    return soft_nearest_neighbor_loss(x, y, t, distance=distance)


# ----------------------------------------------------------------------------- entanglement


def _regularized_layers(
    model: nn.Module, layers: str | Sequence[str], alpha: float | None, signs: str
) -> tuple[nn.Module, tuple[str, ...], float]:
    """(model, resolved layer names, alpha) of a regulariser, checked; ``signs`` says
    what the sign of alpha does (for the error when it is missing)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if alpha is None:
        raise TypeError(f"alpha is required: {signs}")
    return model, resolve_layers(model, layers), check_real("alpha", alpha)


class EntanglementRegularizer:
    r"""Cross-entropy minus alpha times the SNNL of hidden layers (eq. 3).

    .. math::
        \mathcal{L} = \mathrm{CE}(f(x), y) - \alpha \sum_l \mathrm{SNNL}(h_l(x), y, T_l)

    Args:
        model: the network; ``model(x)`` returns logits (N, C).
        layers: ``"hidden"`` (``model.hidden_layer_names`` or every activation
            module, see :func:`snnl.taps.resolve_layers`) or a list of module names.
        alpha: weight of the SNNL term (required); > 0 entangles (maximises
            SNNL), < 0 disentangles, 0 is plain cross-entropy.
        temperature: initial (or fixed) T, a float for every layer or a dict layer ->
            float covering exactly the chosen layers; T0 of the ``"reference"`` mode.
            Not used by the ``"optimal"`` mode (its T is found per batch). Default
            100 (the reference code's T0).
        temperature_mode: ``"optimal"`` (default), ``"learned"``, ``"reference"`` or
            ``"fixed"`` (see the module docstring).
        snnl_formula: ``"exact"`` (default) or ``"reference"`` (the authors' formula).
        temperature_lr: Adam learning rate on log T (``"learned"`` mode).
        distance: "euclidean" (squared) or "cosine".
        always_compute_snnl: with ``alpha == 0``, still compute the SNNL (for logging).
        regrid_every: ``"optimal"`` mode: re-run the coarse grid every this many
            calls (Newton is warm-started from the previous T* in between), so a
            minimum that moved to another basin is found again.

    Anchors whose class occurs once in a batch are left out of the exact SNNL
    (counted in ``out.left_out``; one :class:`~snnl.loss.SNNLWarning` the first time).

    Example:
        >>> from snnl.models import MLP
        >>> _ = torch.manual_seed(0)
        >>> model = MLP((4,), 3, widths=(8, 8))
        >>> reg = EntanglementRegularizer(model, "hidden", alpha=1.0)
        >>> x, y = torch.rand(12, 4), torch.arange(12) % 3
        >>> out = reg(x, y)
        >>> out.total.backward()
        >>> sorted(out.snnl), reg.temperature_mode
        (['relu1', 'relu2'], 'optimal')
        >>> fixed = EntanglementRegularizer(model, alpha=1.0, temperature=10.0,
        ...                                 temperature_mode="fixed")
        >>> fixed(x, y).temperatures
        {'relu1': 10.0, 'relu2': 10.0}
    """

    name = "snnl"

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] = "hidden",
        alpha: float | None = None,
        temperature: float | Mapping[str, float] = 100.0,
        *,
        temperature_mode: str = "optimal",
        snnl_formula: str = "exact",
        temperature_lr: float = 0.05,
        distance: str = "euclidean",
        always_compute_snnl: bool = False,
        regrid_every: int = 50,
    ) -> None:
        self.model, self.layers, self.alpha = _regularized_layers(
            model, layers, alpha, "> 0 entangles (maximises SNNL), < 0 clusters, 0 is plain CE"
        )
        self.temperature_mode = check_choice(
            "temperature_mode", temperature_mode, TEMPERATURE_MODES
        )
        self.snnl_formula = check_choice("snnl_formula", snnl_formula, SNNL_FORMULAS)
        self.temperature_lr = check_positive("temperature_lr", temperature_lr)
        self.distance = check_choice("distance", distance, DISTANCES)
        self.always_compute_snnl = bool(always_compute_snnl)
        self.regrid_every = check_int("regrid_every", regrid_every, low=1)
        if isinstance(temperature, Mapping):
            keys = set(temperature)
            missing = [n for n in self.layers if n not in keys]
            extra = sorted(str(k) for k in keys if k not in self.layers)
            if missing or extra:
                raise ValueError(
                    f"temperature dict must have exactly the layers {list(self.layers)}; "
                    f"missing {missing}, unknown {extra}"
                )
            temps = {n: temperature[n] for n in self.layers}
        else:
            temps = {n: temperature for n in self.layers}
        # State, all float64 CPU scalars: log T (learned / fixed / optimal's warm start),
        # t of the reference mode (T = T0 / t), the number of calls and refused t-steps.
        self._log_t: dict[str, Tensor] = {}
        self._t0: dict[str, float] = {}
        self._t: dict[str, Tensor] = {}
        for name, t in temps.items():
            value = check_positive(f"temperature of layer {name!r}", t)
            self._log_t[name] = torch.tensor(math.log(value), dtype=torch.float64)
            self._t0[name] = value
            self._t[name] = torch.tensor(1.0, dtype=torch.float64)
        self._has_optimum = {n: False for n in self.layers}
        self._calls = 0
        self.refused_steps = 0
        self.search_evaluations = 0
        self._optimizer: torch.optim.Adam | None = None
        if self.temperature_mode == "learned":
            for p in self._log_t.values():
                p.requires_grad_(True)
            self._optimizer = torch.optim.Adam(list(self._log_t.values()), lr=self.temperature_lr)
        self._warned_left_out = False
        self._warned_refused = False
        self._last_temperatures: dict[str, float] = {}

    # ------------------------------------------------------------------ state

    @property
    def temperatures(self) -> dict[str, float]:
        """Current temperature per layer: the last T* (optimal), T0 / t (reference), or T."""
        if self.temperature_mode == "reference":
            return {n: self._t0[n] / float(self._t[n]) for n in self.layers}
        if self.temperature_mode == "fixed":
            return dict(self._t0)
        return {n: math.exp(float(p.detach())) for n, p in self._log_t.items()}

    def active(self) -> bool:
        return self.alpha != 0 or self.always_compute_snnl

    def state_dict(self) -> dict[str, Any]:
        """Plain dict (tensors, floats, strings) safe for ``torch.load(weights_only=True)``."""
        return {
            "layers": list(self.layers),
            "temperature_mode": self.temperature_mode,
            "log_temperature": {n: p.detach().clone() for n, p in self._log_t.items()},
            "reference_t": {n: p.clone() for n, p in self._t.items()},
            "has_optimum": dict(self._has_optimum),
            "calls": self._calls,
            "refused_steps": self.refused_steps,
            "search_evaluations": self.search_evaluations,
            "optimizer": None if self._optimizer is None else self._optimizer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the temperatures and the temperature optimiser's state."""
        if not isinstance(state, Mapping) or "log_temperature" not in state:
            raise ValueError(
                "state must be a dict from EntanglementRegularizer.state_dict() (keys "
                "'layers', 'temperature_mode', 'log_temperature', ...)"
            )
        layers = list(state.get("layers", []))
        if layers != list(self.layers):
            raise ValueError(
                f"state is for layers {layers}, this regulariser has {list(self.layers)}"
            )
        mode = state.get("temperature_mode", self.temperature_mode)
        if mode != self.temperature_mode:
            raise ValueError(
                f"state is for temperature_mode {mode!r}, this regulariser uses "
                f"{self.temperature_mode!r}"
            )
        with torch.no_grad():
            for n in self.layers:
                value = torch.as_tensor(state["log_temperature"][n], dtype=torch.float64)
                if value.numel() != 1 or not bool(torch.isfinite(value).all()):
                    raise ValueError(f"log temperature of {n!r} must be a finite scalar")
                self._log_t[n].copy_(value.reshape(()))
                if "reference_t" in state:
                    self._t[n].copy_(torch.as_tensor(state["reference_t"][n]).reshape(()))
        self._has_optimum.update(state.get("has_optimum", {}))
        self._calls = int(state.get("calls", 0))
        self.refused_steps = int(state.get("refused_steps", 0))
        self.search_evaluations = int(state.get("search_evaluations", 0))
        if self._optimizer is not None:
            self._optimizer.load_state_dict(state["optimizer"])

    # ------------------------------------------------------------------ call

    def __call__(
        self, x: Tensor, y: Tensor, *, update_temperature: bool | None = None
    ) -> EntanglementOutput:
        """Run the model on ``x`` (N, ...) with labels ``y`` (N,) and return the loss parts.

        ``update_temperature``: ``None`` (default) updates the temperature state
        when gradients are enabled (training steps); ``False`` never updates
        (the ``"optimal"`` mode still finds T* of the batch, without storing it);
        ``True`` forces an update.
        """
        y = _check_batch(x, y)
        if update_temperature and self.temperature_mode == "fixed":
            raise ValueError("update_temperature=True needs a temperature_mode other than 'fixed'")
        update = torch.is_grad_enabled() if update_temperature is None else update_temperature
        before = self.temperatures
        out = regularized_loss(self.model, x, y, [self], update=update)
        counts = torch.bincount(y)
        left_out = int((counts[y] < 2).sum())
        snnl = out.terms.get(self.name, {})
        temps = dict(self._last_temperatures) if snnl else before
        return EntanglementOutput(out.total, out.cross_entropy, snnl, temps, out.logits, left_out)

    def penalty(
        self, outputs: Mapping[str, Tensor], y: Tensor, *, update: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Sum over layers of SNNL(h_l, y, T_l) (with gradient) and the per-layer values."""
        counts = torch.bincount(y)
        left_out = int((counts[y] < 2).sum())
        if left_out and not self._warned_left_out and self.snnl_formula == "exact":
            self._warned_left_out = True
            warnings.warn(
                f"{left_out} of {y.shape[0]} anchors have no other point of their class in "
                "this batch and are left out of the SNNL (counted per batch in "
                "out.left_out; this warning is shown once per regulariser)",
                SNNLWarning,
                stacklevel=3,
            )
        terms: dict[str, Tensor] = {}
        used: dict[str, float] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SNNLWarning)
            for name in self.layers:
                h = outputs[name]
                feats = h.reshape(h.shape[0], -1)
                if feats.dtype not in (torch.float32, torch.float64):
                    feats = feats.float()
                t = self._temperature_for(name, feats, y, update)
                used[name] = t
                terms[name] = _snnl(self.snnl_formula, feats, y, t, self.distance)
        if update:
            self._calls += 1
        self._last_temperatures = used
        total = torch.stack(list(terms.values())).sum()
        return total, {n: v.detach() for n, v in terms.items()}

    def _temperature_for(self, name: str, feats: Tensor, y: Tensor, update: bool) -> float:
        """The temperature this batch's SNNL of layer ``name`` is computed at."""
        mode = self.temperature_mode
        if mode == "fixed":
            return self._t0[name]
        if mode == "optimal":
            regrid = not self._has_optimum[name] or self._calls % self.regrid_every == 0
            start = None if regrid else float(self._log_t[name])
            star = snnl_star(feats.detach(), y, distance=self.distance, start=start)
            u = star.log_temperature
            self.search_evaluations += star.evaluations
            if update:
                self._log_t[name].fill_(u)
                self._has_optimum[name] = True
            return math.exp(u)
        if not update:
            return self.temperatures[name]
        detached = feats.detach()
        if mode == "learned":
            t_now = math.exp(float(self._log_t[name].detach()))
            leaf = torch.tensor(t_now, dtype=detached.dtype, requires_grad=True)
            with torch.enable_grad():
                value = _snnl(self.snnl_formula, detached, y, leaf, self.distance)
                (grad,) = torch.autograd.grad(value, leaf, allow_unused=True)
            g_log = float(grad) * t_now if grad is not None else 0.0  # dT/dlogT = T
            assert self._optimizer is not None
            self._log_t[name].grad = torch.tensor(
                g_log if math.isfinite(g_log) else 0.0, dtype=torch.float64
            )
            self._optimizer.step()
            self._optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                self._log_t[name].clamp_(*LOG_T_BOUNDS)
            return t_now  # the network's SNNL uses the T before this step, as before
        # reference: T = T0 / t; one plain step on t, then the SNNL at the new T
        t0, t_var = self._t0[name], float(self._t[name])
        leaf = torch.tensor(t_var, dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            temp = (t0 / leaf).to(detached.dtype)
            value = _snnl(self.snnl_formula, detached, y, temp, self.distance)
            (grad,) = torch.autograd.grad(value, leaf, allow_unused=True)
        g = float(grad) if grad is not None else 0.0
        new_t = t_var - REFERENCE_T_STEP * g
        if math.isfinite(new_t) and new_t > 0:
            self._t[name].fill_(new_t)
        else:
            self.refused_steps += 1
            if not self._warned_refused:
                self._warned_refused = True
                warnings.warn(
                    f"reference temperature step on layer {name!r} would set t = {new_t:.4g} "
                    f"(T = {t0:g} / t): refused, t stays {t_var:.4g} (counted in refused_steps)",
                    RuntimeWarning,
                    stacklevel=4,
                )
        return t0 / float(self._t[name])

    def __repr__(self) -> str:
        temps = ", ".join(f"{n}={t:.4g}" for n, t in self.temperatures.items())
        return (
            f"EntanglementRegularizer(alpha={self.alpha}, layers={list(self.layers)}, "
            f"temperature_mode={self.temperature_mode!r}, snnl_formula={self.snnl_formula!r}, "
            f"temperatures=({temps}), distance={self.distance!r})"
        )


# ----------------------------------------------------------------------------- selectivity


@dataclass
class SelectivityOutput:
    """What one call of :class:`SelectivityRegularizer` returns.

    Attributes:
        total: 0-dim loss to backpropagate, ``CE - alpha * mean_l mean_u SI`` with gradient.
        cross_entropy: 0-dim mean cross-entropy (detached).
        selectivity: layer -> 0-dim mean class selectivity of its units on this batch
            (float64, detached); empty when the term was not computed (``alpha == 0``).
        logits: (N, C) model output (with gradient).
        classes_present: number of classes in the batch (the class means see only these).
    """

    total: Tensor
    cross_entropy: Tensor
    selectivity: dict[str, Tensor]
    logits: Tensor
    classes_present: int


class SelectivityRegularizer:
    r"""Cross-entropy minus alpha times the mean class selectivity of hidden units.

    .. math::
        \mathcal{L} = \mathrm{CE}(f(x), y) - \alpha \, \frac{1}{|L|} \sum_{l \in L}
            \frac{1}{U_l} \sum_{u=1}^{U_l} \mathrm{SI}_{l,u}

    (Leavitt & Morcos 2020) with ``SI`` the class selectivity index of
    :func:`snnl.measures.class_selectivity`, computed per mini-batch in float64 with its
    gradient: ``alpha < 0`` lowers selectivity, ``alpha > 0`` raises it, ``alpha = 0``
    is plain cross-entropy (the term is skipped). Convolutional units (N, C, H, W) are
    their feature maps averaged over space; the class means see only the classes
    present in the batch. A batch with fewer than two classes has no selectivity:
    its term is 0 (no gradient), counted in ``skipped_batches`` with one
    ``RuntimeWarning``. The regulariser has no state to learn.

    It composes with :class:`EntanglementRegularizer` in one forward pass through
    :func:`regularized_loss` (``[entangle, selectivity]``).

    Args:
        model: the network; ``model(x)`` returns logits (N, C).
        layers: ``"hidden"`` (post-ReLU outputs, see :func:`snnl.taps.resolve_layers`)
            or a list of module names.
        alpha: weight of the selectivity term (required).
        num_classes: if given, labels are checked to lie in [0, num_classes).
        always_compute_selectivity: with ``alpha == 0``, still compute the term (logging).

    Example:
        >>> from snnl.models import MLP
        >>> _ = torch.manual_seed(0)
        >>> model = MLP((4,), 3, widths=(8, 8))
        >>> reg = SelectivityRegularizer(model, "hidden", alpha=-1.0)
        >>> x, y = torch.rand(12, 4), torch.arange(12) % 3
        >>> out = reg(x, y)
        >>> out.total.backward()
        >>> sorted(out.selectivity), out.classes_present
        (['relu1', 'relu2'], 3)
        >>> si = torch.stack(list(out.selectivity.values())).mean()
        >>> bool(torch.isclose(out.total, out.cross_entropy + si.float()))  # CE - (-1) * SI
        True
    """

    name = "selectivity"

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] = "hidden",
        alpha: float | None = None,
        *,
        num_classes: int | None = None,
        always_compute_selectivity: bool = False,
    ) -> None:
        self.model, self.layers, self.alpha = _regularized_layers(
            model, layers, alpha, "< 0 lowers class selectivity, > 0 raises it, 0 is plain CE"
        )
        self.num_classes = (
            None if num_classes is None else check_int("num_classes", num_classes, low=2)
        )
        self.always_compute_selectivity = bool(always_compute_selectivity)
        self.skipped_batches = 0
        self._warned_skipped = False

    def active(self) -> bool:
        return self.alpha != 0 or self.always_compute_selectivity

    def state_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoints (the regulariser learns nothing; counts only)."""
        return {"layers": list(self.layers), "skipped_batches": self.skipped_batches}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (checks the layers match)."""
        if not isinstance(state, Mapping) or list(state.get("layers", [])) != list(self.layers):
            raise ValueError(
                f"state must come from SelectivityRegularizer.state_dict() for the layers "
                f"{list(self.layers)}, got {state!r}"
            )
        self.skipped_batches = int(state.get("skipped_batches", 0))

    def __call__(self, x: Tensor, y: Tensor) -> SelectivityOutput:
        """Run the model on ``x`` (N, ...) with labels ``y`` (N,) and return the loss parts."""
        y = _check_batch(x, y)
        out = regularized_loss(self.model, x, y, [self])
        selectivity = out.terms.get(self.name, {})
        return SelectivityOutput(
            out.total, out.cross_entropy, selectivity, out.logits, int(torch.unique(y).numel())
        )

    def penalty(
        self, outputs: Mapping[str, Tensor], y: Tensor, *, update: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean over layers of the mean unit selectivity (float64, with gradient), per layer.

        ``update`` is accepted for the :func:`regularized_loss` protocol; nothing is updated.
        """
        if int(torch.unique(y).numel()) < 2:
            self.skipped_batches += 1
            if not self._warned_skipped:
                self._warned_skipped = True
                warnings.warn(
                    "a batch with fewer than two classes has no class selectivity: its "
                    "selectivity term is 0 (counted in skipped_batches; shown once)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            zero = torch.zeros((), dtype=torch.float64, device=y.device)
            return zero, {}
        per_layer = {
            name: class_selectivity(outputs[name], y, self.num_classes).mean()
            for name in self.layers
        }
        total = torch.stack(list(per_layer.values())).mean()
        return total, {n: v.detach() for n, v in per_layer.items()}

    def __repr__(self) -> str:
        return f"SelectivityRegularizer(alpha={self.alpha}, layers={list(self.layers)})"
