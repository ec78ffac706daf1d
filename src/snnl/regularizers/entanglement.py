"""The entanglement regulariser: :class:`EntanglementRegularizer` is the objective of
Frosst, Papernot & Hinton (2019), eq. 3:

    loss = CE(f(x), y) - alpha * sum_{l in layers} SNNL(h_l(x), y, T_l)

- ``alpha > 0`` *maximises* the hidden layers' SNNL (the paper's "entangled
  models"; the reference code writes it as ``CE + factor * SNNL`` with
  ``factor = -10``), ``alpha < 0`` minimises it (clusters classes),
  ``alpha = 0`` is plain cross-entropy and skips the SNNL entirely.
- ``h_l(x)`` is the output of the named module ``l``, flattened to (N, D)
  (conv activations included), captured with :class:`snnl.taps.LayerTap` so
  the gradient reaches the network.

How T_l is chosen (``temperature_mode``, a :class:`~snnl.regularizers.TemperatureMode`):
one strategy per mode in :mod:`snnl.regularizers.modes` (``optimal``, the default: T* of
each batch by :func:`snnl.temperature.snnl_star`, held fixed for the gradient, which is
then by the envelope theorem the exact gradient of SNNL*(h_l) = min_T SNNL(h_l, T);
SNNL* is invariant to the scale of h and bounded above by its value for
indistinguishable classes, so maximising it can neither shrink the layer into a collapse
nor inflate distances without bound; ``learned``; ``reference``; ``fixed``).

``snnl_formula``: ``"exact"`` (default) is :func:`snnl.loss.soft_nearest_neighbor_loss`
(log-space, exact in every regime); ``"reference"`` is the authors' formula
transcribed from their code (exp, then an epsilon of 1e-5 inside the log; it
saturates at -log(1e-5) = 11.51 with zero gradient when every exp underflows),
so that experiments can test whether a result depends on that saturation.

In a user's own loop (tests/regularizers/test_regularizer_training_loops.py):
autocast (the SNNL in float32, the loss float32); ``create_graph=True`` gives a
differentiable gradient (gradient penalties): for ``optimal`` (exact formula) the second
derivatives of SNNL* itself, the implicit dependence of T* on h included
(:func:`snnl.loss.snnl_at_optimum`); for the other modes those of the SNNL at the batch's
temperature held fixed. Every mode's temperature choice (the optimal search, the learned Adam step,
the authors' step, with their counters and warnings) runs on the host inside one
registered op, ``snnl::choose_temperature`` (:mod:`snnl.regularizers.modes`), so:
torch.func.grad in every mode (the state updated once, as by an eager call);
torch.vmap of calls that do not update (``update_temperature=False`` or under
``torch.no_grad``; the optimal mode then finds each problem's own T*; an update under
vmap raises, a batch of problems has no one state); torch.compile(fullgraph=True) of a
step calling :func:`~snnl.regularizers.regularized_loss` in every mode, no graph break,
the op run once per call (inside a graph the left-out count and warning are skipped).

A batch in which no class occurs twice has no SNNL (eq. 1 is undefined there): it
contributes no SNNL term (one :class:`~snnl.loss.SNNLWarning`, counted in
``skipped_batches``), as a user's DataLoader's last batch of one point may.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snnl._checks import check_choice, check_int, check_labels, check_positive
from snnl.distances import Distance, check_distance
from snnl.loss import (
    SNNLWarning,
    snnl_at_optimum,
    soft_nearest_neighbor_loss,
    soft_nearest_neighbor_loss_and_slope,
    soft_nearest_neighbor_loss_at_chosen_temperature,
    transformed,
)
from snnl.regularizers.compose import (
    check_batch,
    check_name,
    regularized_layers,
    regularized_loss,
)
from snnl.regularizers.modes import (
    DEFAULT_TEMPERATURE_MODE,
    STRATEGIES,
    TemperatureMode,
    TemperatureState,
    check_temperature_mode,
)

__all__ = [
    "EntanglementOutput",
    "EntanglementRegularizer",
    "REFERENCE_EPS",
    "SNNL_FORMULAS",
    "reference_formula_snnl",
]

SNNL_FORMULAS: tuple[str, ...] = ("exact", "reference")
#: The authors' STABILITY_EPS (cleverhans SNNLCrossEntropy).
REFERENCE_EPS = 1e-5


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


# ----------------------------------------------------------------------------- formulas


def reference_formula_snnl(
    features: Tensor,
    labels: Tensor,
    temperature: float | Tensor,
    *,
    distance: Distance | str = Distance.EUCLIDEAN,
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
    if not check_distance(distance).euclidean:
        xn = F.normalize(x, dim=1, eps=1e-12)
        d = 1.0 - xn @ xn.T
    else:
        sq = (x * x).sum(1)
        d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    f = torch.exp(-d / temperature) - torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    pick = f / (REFERENCE_EPS + f.sum(1, keepdim=True))
    same = (y[:, None] == y[None, :]).to(x.dtype)
    return (-torch.log(REFERENCE_EPS + (pick * same).sum(1))).mean()


def _snnl_formula(formula: str, distance: Distance, mode: TemperatureMode):
    """The SNNL function (features, labels, T) -> 0-dim tensor of ``formula``; in the
    optimal mode the exact formula is SNNL* (T the batch's T*), second derivatives
    included (:func:`snnl.loss.snnl_at_optimum`)."""
    if formula == "reference":
        return lambda x, y, t: reference_formula_snnl(x, y, t, distance=distance)
    loss = snnl_at_optimum if mode is TemperatureMode.OPTIMAL else soft_nearest_neighbor_loss
    return lambda x, y, t: loss(x, y, t, distance=distance.value)


# ----------------------------------------------------------------------------- entanglement


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
        temperature_mode: a :class:`~snnl.regularizers.TemperatureMode` or its string:
            ``"optimal"`` (the default, ``DEFAULT_TEMPERATURE_MODE``), ``"learned"``,
            ``"reference"`` or ``"fixed"`` (:mod:`snnl.regularizers.modes`).
        snnl_formula: ``"exact"`` (default) or ``"reference"`` (the authors' formula).
        temperature_lr: Adam learning rate on log T (``"learned"`` mode).
        distance: "euclidean" (squared) or "cosine" (:class:`snnl.distances.Distance`).
        always_compute_snnl: with ``alpha == 0``, still compute the SNNL (for logging).
        regrid_every: ``"optimal"`` mode: re-run the grid every this many calls (Newton
            is warm-started from the previous T* in between), so a minimum that moved
            to another basin is found again.
        name: the key of its terms in :func:`~snnl.regularizers.regularized_loss`
            (two entanglement regularisers composed need different names).

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
        >>> sorted(out.snnl), str(reg.temperature_mode)
        (['relu1', 'relu2'], 'optimal')
        >>> fixed = EntanglementRegularizer(model, alpha=1.0, temperature=10.0,
        ...                                 temperature_mode="fixed")
        >>> fixed(x, y).temperatures
        {'relu1': 10.0, 'relu2': 10.0}
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] = "hidden",
        alpha: float | None = None,
        temperature: float | Mapping[str, float] = 100.0,
        *,
        temperature_mode: TemperatureMode | str = DEFAULT_TEMPERATURE_MODE,
        snnl_formula: str = "exact",
        temperature_lr: float = 0.05,
        distance: Distance | str = Distance.EUCLIDEAN,
        always_compute_snnl: bool = False,
        regrid_every: int = 50,
        name: str = "snnl",
    ) -> None:
        self.name = check_name(name)
        self.model, self.layers, self.alpha = regularized_layers(
            model, layers, alpha, "> 0 entangles (maximises SNNL), < 0 clusters, 0 is plain CE"
        )
        self.temperature_mode = check_temperature_mode(temperature_mode)
        self.snnl_formula = check_choice("snnl_formula", snnl_formula, SNNL_FORMULAS)
        self.temperature_lr = check_positive("temperature_lr", temperature_lr)
        self.distance = check_distance(distance)
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
        t0 = {n: check_positive(f"temperature of layer {n!r}", t) for n, t in temps.items()}
        self._state = TemperatureState(t0)
        self._snnl = _snnl_formula(self.snnl_formula, self.distance, self.temperature_mode)
        self._strategy = STRATEGIES[self.temperature_mode](
            self._state,
            layers=self.layers,
            snnl=self._snnl,
            distance=self.distance,
            lr=self.temperature_lr,
            regrid_every=self.regrid_every,
            formula=self.snnl_formula,
        )
        self.skipped_batches = 0
        self._warned_left_out = False
        self._warned_skipped = False

    # ------------------------------------------------------------------ state

    @property
    def temperatures(self) -> dict[str, float]:
        """Current temperature per layer: the last T* (optimal), T0 / t (reference), or T."""
        return {n: self._strategy.current(n) for n in self.layers}

    @property
    def refused_steps(self) -> int:
        """Reference-mode steps on t refused (they would make t <= 0 or non-finite)."""
        return self._state.refused_steps

    @property
    def search_evaluations(self) -> int:
        """Curve evaluations of the optimal mode's searches so far."""
        return self._state.search_evaluations

    @property
    def _last_temperatures(self) -> dict[str, float]:
        """Layer -> the temperature of its last SNNL (under vmap: the last problem's)."""
        return dict(self._strategy.last)

    @property
    def _log_t(self) -> dict[str, Tensor]:
        return self._state.log_t

    def active(self) -> bool:
        return self.alpha != 0 or self.always_compute_snnl

    def state_dict(self) -> dict[str, Any]:
        """Plain dict (tensors, floats, strings) safe for ``torch.load(weights_only=True)``."""
        s = self._state
        return {
            "layers": list(self.layers),
            "temperature_mode": self.temperature_mode.value,
            "log_temperature": {n: p.detach().clone() for n, p in s.log_t.items()},
            "reference_t": {n: p.clone() for n, p in s.t.items()},
            "has_optimum": dict(s.has_optimum),
            "calls": s.calls,
            "refused_steps": s.refused_steps,
            "search_evaluations": s.search_evaluations,
            "skipped_batches": self.skipped_batches,
            "optimizer": self._strategy.optimizer_state(),
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
                f"{self.temperature_mode.value!r}"
            )
        s = self._state
        with torch.no_grad():
            for n in self.layers:
                value = torch.as_tensor(state["log_temperature"][n], dtype=torch.float64)
                if value.numel() != 1 or not bool(torch.isfinite(value).all()):
                    raise ValueError(f"log temperature of {n!r} must be a finite scalar")
                s.log_t[n].copy_(value.reshape(()))
                if "reference_t" in state:
                    s.t[n].copy_(torch.as_tensor(state["reference_t"][n]).reshape(()))
        s.has_optimum.update(state.get("has_optimum", {}))
        s.calls = int(state.get("calls", 0))
        s.refused_steps = int(state.get("refused_steps", 0))
        s.search_evaluations = int(state.get("search_evaluations", 0))
        self.skipped_batches = int(state.get("skipped_batches", 0))
        if state.get("optimizer") is not None:
            self._strategy.load_optimizer_state(state["optimizer"])

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
        y = check_batch(x, y)
        if update_temperature and not self._strategy.updates:
            raise ValueError(
                f"update_temperature=True needs a temperature_mode that updates, not "
                f"{self.temperature_mode.value!r}"
            )
        update = torch.is_grad_enabled() if update_temperature is None else update_temperature
        before = self.temperatures
        out = regularized_loss(self.model, x, y, [self], update=update)
        snnl = out.terms[self.name]
        temps = dict(self._last_temperatures) if snnl else before
        left_out = _left_out(y)
        return EntanglementOutput(out.total, out.cross_entropy, snnl, temps, out.logits, left_out)

    def penalty(
        self, outputs: Mapping[str, Tensor], y: Tensor, *, update: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Sum over layers of SNNL(h_l, y, T_l) (with gradient) and the per-layer values;
        (0, {}) on a batch where no class occurs twice (the SNNL is undefined there)."""
        compiling = torch.compiler.is_compiling()
        left_out = 0 if compiling else _left_out(y)  # host syncs: skipped inside a graph
        if left_out == y.shape[0]:
            self.skipped_batches += 1
            if not self._warned_skipped:
                self._warned_skipped = True
                warnings.warn(
                    f"no class occurs twice in this batch of {y.shape[0]} point(s), so its "
                    "SNNL is undefined: the batch contributes no SNNL term (counted in "
                    "skipped_batches; shown once per regulariser)",
                    SNNLWarning,
                    stacklevel=3,
                )
            return torch.zeros((), device=y.device), {}
        if left_out and not self._warned_left_out and self.snnl_formula == "exact":
            self._warned_left_out = True
            warnings.warn(
                f"{left_out} of {y.shape[0]} anchors have no other point of their class in "
                "this batch and are left out of the SNNL (counted per batch in "
                "out.left_out; this warning is shown once per regulariser)",
                SNNLWarning,
                stacklevel=3,
            )
        feats: dict[str, Tensor] = {}
        for name in self.layers:
            h = outputs[name]
            f = h.reshape(h.shape[0], -1)
            feats[name] = f if f.dtype in (torch.float32, torch.float64) else f.float()
        if compiling:  # a graph holds no warnings filter (and the loss warns none there)
            terms = self._terms(feats, y, update)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SNNLWarning)
                terms = self._terms(feats, y, update)
        total = torch.stack(list(terms.values())).sum()
        return total, {n: v.detach() for n, v in terms.items()}

    def _terms(self, feats: Mapping[str, Tensor], y: Tensor, update: bool) -> dict:
        """Each layer's SNNL at the temperature its mode chooses on this batch."""
        if self._shares_the_loss_pass(feats, y, update):
            term = {
                TemperatureMode.OPTIMAL: self._chosen_term,
                TemperatureMode.LEARNED: self._learned_term,
                TemperatureMode.REFERENCE: self._chosen_term,
            }[self._strategy.mode]
            return {n: term(n, feats[n], y) for n in self.layers}
        used = {n: self._strategy.temperature(n, feats[n], y, update) for n in self.layers}
        return {n: self._snnl(feats[n], y, used[n]) for n in self.layers}

    def _shares_the_loss_pass(self, feats: Mapping[str, Tensor], y: Tensor, update) -> bool:
        """Whether the mode's temperature choice shares the loss's pass (eager, exact
        formula, updating, with a gradient): the learned mode's Adam step takes its slope
        from the loss's fused pass; the optimal mode's search and the reference mode's
        step take the batch's distances from the loss's block logits (mini-batches)."""
        return (
            self._strategy.mode is not TemperatureMode.FIXED
            and self.snnl_formula == "exact"
            and update
            and torch.is_grad_enabled()
            and not transformed(*feats.values(), y)
        )

    def _chosen_term(self, name: str, feats: Tensor, y: Tensor) -> Tensor:
        """The optimal or reference mode's SNNL of layer ``name`` at the T its rule
        chooses from the loss's own block logits (T* of the batch; the authors' step from
        the slope at the current T), which the loss at that T reuses
        (:func:`snnl.loss.soft_nearest_neighbor_loss_at_chosen_temperature`); beyond a
        mini-batch the rule runs on the features (``TemperatureStrategy.temperature``)."""
        strategy = self._strategy

        def choose(block) -> float:
            if block is None:
                return strategy.temperature(name, feats, y, True)  # recorded by the op
            t = strategy.choose_on_block(name, block)
            strategy.record(name, t, True)
            return t

        optimal = strategy.mode is TemperatureMode.OPTIMAL
        term, _ = soft_nearest_neighbor_loss_at_chosen_temperature(
            feats, y, strategy.current(name), choose, distance=self.distance.value,
            optimal=optimal,
        )  # fmt: skip
        return term

    def _learned_term(self, name: str, feats: Tensor, y: Tensor) -> Tensor:
        """The learned mode's SNNL of layer ``name`` at the current T, and its Adam step on
        log T from the slope of that same pass (the one-pass slope where the features
        carry no gradient); the SNNL uses the T before the step, as ``choose`` does."""
        t = self._strategy.current(name)
        term, slope = soft_nearest_neighbor_loss_and_slope(
            feats, y, t, distance=self.distance.value
        )
        if slope is None:
            slope = self._strategy.slope(feats.detach(), y, t)
        self._strategy.step(name, slope)
        self._strategy.record(name, t, True)
        return term

    def __repr__(self) -> str:
        temps = ", ".join(f"{n}={t:.4g}" for n, t in self.temperatures.items())
        return (
            f"EntanglementRegularizer(name={self.name!r}, alpha={self.alpha}, "
            f"layers={list(self.layers)}, temperature_mode={self.temperature_mode.value!r}, "
            f"snnl_formula={self.snnl_formula!r}, temperatures=({temps}), "
            f"distance={self.distance.value!r})"
        )


def _left_out(y: Tensor) -> int:
    """Anchors of the batch with no other point of their class."""
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    return int((counts[inverse] < 2).sum())
