"""How an entanglement regulariser chooses each layer's temperature: one strategy per
:class:`TemperatureMode`.

- ``optimal`` (the default): T_l = argmin_T SNNL(h_l, y, T) of this batch
  (:func:`snnl.temperature.snnl_star`, warm-started from the previous batch's T*, with
  the grid on the first call and every ``regrid_every`` calls), held fixed for the
  network's gradient: by the envelope theorem the exact gradient of SNNL*(h_l).
- ``learned``: one Adam step per call on log T_l that minimises that layer's SNNL (its
  gradient does not reach the network); the SNNL uses the T before the step. In an eager
  training step its slope dSNNL/dlog T comes from the loss's own fused pass
  (:func:`snnl.loss.soft_nearest_neighbor_loss_and_slope`: no pass of its own), else
  from :meth:`TemperatureStrategy.slope` (as the ``reference`` mode's step).
- ``reference``: the authors' scheme, T = T0 / t with t starting at 1; each call takes
  one plain step t <- t - 0.1 dSNNL/dt and uses the new T. A step that would make t <= 0
  or non-finite (the authors' code lets it) is refused and counted.
- ``fixed``: T_l never changes.

In an eager training step on a mini-batch (at most ``snnl.loss.WHOLE_BLOCK_POINTS``
points) the optimal mode's search and the reference mode's slope take the batch's
distances from the loss's own block logits at T = 1, which the loss at the chosen T then
reuses (:meth:`TemperatureStrategy.choose_on_block`,
:func:`snnl.loss.soft_nearest_neighbor_loss_at_chosen_temperature`): no product of their
own.

A mode's choice is host work (a search, an optimiser step, counters, warnings): it runs
inside the registered op ``snnl::choose_temperature``, one opaque node of a
``torch.compile(fullgraph=True)`` graph run once per call, with a ``vmap`` rule (a loop
over the problems, without updates) and reached from torch.func transforms.

To add a mode: a member of :class:`TemperatureMode` and a :class:`TemperatureStrategy`
subclass registered in ``STRATEGIES``.
"""

from __future__ import annotations

import itertools
import math
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
from torch import Tensor

from snnl.distances import Distance
from snnl.loss import MiniBatchBlock, transformed, vmap_by_loop
from snnl.temperature import (
    optimal_temperature_of_block,
    snnl_log_temperature_slope,
    snnl_star,
    whole_block_log_temperature_slope,
)

__all__ = [
    "DEFAULT_TEMPERATURE_MODE",
    "LOG_T_BOUNDS",
    "REFERENCE_T_STEP",
    "STRATEGIES",
    "TEMPERATURE_MODES",
    "TemperatureMode",
    "TemperatureState",
    "TemperatureStrategy",
    "check_temperature_mode",
]

#: The authors' step on t (T = T0 / t) per evaluation.
REFERENCE_T_STEP = 0.1
#: Learned log-temperatures are clamped to this range (T in about [2e-9, 5e8]).
LOG_T_BOUNDS = (-20.0, 20.0)

#: SNNL of (features, labels) at a temperature (float or tensor), with autograd.
SNNLFunction = Callable[[Tensor, Tensor, "float | Tensor"], Tensor]


class TemperatureMode(StrEnum):
    """How the temperature of each regularised layer is chosen (see the module doc).

    >>> TemperatureMode("learned") is TemperatureMode.LEARNED
    True
    """

    OPTIMAL = "optimal"
    LEARNED = "learned"
    REFERENCE = "reference"
    FIXED = "fixed"


#: The one default, used by the regulariser, ``TrainConfig`` and the command line.
DEFAULT_TEMPERATURE_MODE = TemperatureMode.OPTIMAL
#: The modes' strings, in the order of :class:`TemperatureMode`.
TEMPERATURE_MODES: tuple[str, ...] = tuple(m.value for m in TemperatureMode)


def check_temperature_mode(value: Any) -> TemperatureMode:
    """``value`` (a :class:`TemperatureMode` or its string) as the enum; the one check.

    >>> check_temperature_mode("fixed")
    <TemperatureMode.FIXED: 'fixed'>
    >>> check_temperature_mode("best")
    Traceback (most recent call last):
    ...
    ValueError: unknown temperature_mode 'best'; expected one of: optimal, learned, reference, fixed
    """
    if isinstance(value, str) and value in TEMPERATURE_MODES:
        return TemperatureMode(value)
    raise ValueError(
        f"unknown temperature_mode {value!r}; expected one of: {', '.join(TEMPERATURE_MODES)}"
    )


@dataclass
class TemperatureState:
    """Per-layer temperature state (float64 CPU scalars), saved in checkpoints.

    ``t0``: the initial (or fixed) T; ``log_t``: log T (learned, and the optimal mode's
    warm start); ``t``: the reference mode's t (T = T0 / t); ``has_optimum``: whether
    the optimal mode has found a T* to warm-start from; counters of the calls that
    updated the temperatures (modes that update), refused steps and the optimal search's
    curve evaluations.
    """

    t0: dict[str, float]
    log_t: dict[str, Tensor] = field(default_factory=dict)
    t: dict[str, Tensor] = field(default_factory=dict)
    has_optimum: dict[str, bool] = field(default_factory=dict)
    calls: int = 0
    refused_steps: int = 0
    search_evaluations: int = 0

    def __post_init__(self) -> None:
        for name, value in self.t0.items():
            self.log_t.setdefault(name, torch.tensor(math.log(value), dtype=torch.float64))
            self.t.setdefault(name, torch.tensor(1.0, dtype=torch.float64))
            self.has_optimum.setdefault(name, False)


class TemperatureStrategy:
    """One mode's rule: the temperature a layer's SNNL is computed at on a batch.

    Subclasses set ``mode`` and implement :meth:`current` and :meth:`choose`;
    ``updates`` is False where nothing is ever updated (``update_temperature=True``
    is then an error).
    """

    mode: TemperatureMode
    updates = True

    def __init__(
        self,
        state: TemperatureState,
        *,
        layers: Sequence[str],
        snnl: SNNLFunction,
        distance: Distance,
        lr: float,
        regrid_every: int,
        formula: str = "exact",
    ) -> None:
        self.state = state
        self.layers = list(layers)
        self.snnl = snnl  # the regulariser's SNNL formula (features, labels, T)
        self.distance = distance
        self.lr = lr
        self.regrid_every = regrid_every
        self.formula = formula  # "exact": temperature steps from one pass (no autograd)
        #: layer -> the temperature of its last SNNL (the value :meth:`temperature` gave)
        self.last: dict[str, float] = {}
        self._register()

    def _register(self) -> None:
        self.handle = next(_HANDLES)
        _STRATEGIES_BY_HANDLE[self.handle] = self

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._register()  # a copy (deepcopy, pickle) is its own strategy, not the original's

    def temperature(self, name: str, feats: Tensor, y: Tensor, update: bool) -> float | Tensor:
        """The temperature of this batch's SNNL of layer ``name``, updating the state
        when ``update``: a float in eager calls; under ``torch.compile`` and torch.func
        transforms a float64 0-dim tensor, the output of the registered op
        ``snnl::choose_temperature`` (the mode's search or step runs inside it, on the
        host, so a ``fullgraph=True`` graph holds it and ``vmap`` loops over it)."""
        if not self.updates:
            self.last[name] = self.choose(name, feats, y, update)
            return self.last[name]
        t = torch.ops.snnl.choose_temperature(feats.detach(), y, self.handle, name, update)
        return t if transformed(feats, y) else float(t)

    def slope(self, feats: Tensor, y: Tensor, t: float) -> float:
        """dSNNL/dlog T of ``snnl`` at T = ``t`` on detached ``feats``: for the exact
        formula on a mini-batch (N <= ``WHOLE_BLOCK_POINTS``) the dense formula's closed
        form over the loss's block logits (one product and a few N x N passes,
        :func:`snnl.temperature.whole_block_log_temperature_slope`), else, or where that
        is not finite, one pass over the shifted distances
        (:func:`snnl.temperature.snnl_log_temperature_slope`, exact in every regime); for
        the authors' formula autograd through it. 0 where not finite."""
        if self.formula == "exact":
            g = whole_block_log_temperature_slope(feats, y, t, distance=self.distance)
            if g is None:
                _, g = snnl_log_temperature_slope(feats, y, t, distance=self.distance)
        else:
            leaf = torch.tensor(t, dtype=feats.dtype, requires_grad=True)
            with _autograd_restored(), torch.enable_grad():
                value = self.snnl(feats, y, leaf)
                (grad,) = torch.autograd.grad(value, leaf, allow_unused=True)
            g = float(grad) * t if grad is not None else 0.0  # dT/dlog T = T
        return g if math.isfinite(g) else 0.0

    def current(self, name: str) -> float:
        """The temperature of layer ``name`` now."""
        raise NotImplementedError

    def record(self, name: str, t: float, update: bool) -> None:
        """Note that layer ``name``'s SNNL of this call was at ``t``; an updating call is
        counted once its last layer is done."""
        self.last[name] = t
        if update and name == self.layers[-1]:
            self.state.calls += 1

    def choose(self, name: str, feats: Tensor, y: Tensor, update: bool) -> float:
        """The mode's rule on the host: the temperature of this batch's SNNL of layer
        ``name`` (``feats`` (N, D) detached), updating the state when ``update``."""
        raise NotImplementedError

    def choose_on_block(self, name: str, block: MiniBatchBlock) -> float:
        """:meth:`choose` (updating) from a mini-batch's loss block at T = 1 (the batch's
        distances, which the loss at the chosen T then reuses) instead of the features:
        the optimal and reference modes."""
        raise NotImplementedError

    def optimizer_state(self) -> dict[str, Any] | None:
        return None

    def load_optimizer_state(self, state: dict[str, Any] | None) -> None:
        del state


class FixedTemperature(TemperatureStrategy):
    mode = TemperatureMode.FIXED
    updates = False

    def current(self, name: str) -> float:
        return self.state.t0[name]

    def choose(self, name, feats, y, update) -> float:
        return self.state.t0[name]


class OptimalTemperature(TemperatureStrategy):
    mode = TemperatureMode.OPTIMAL

    def current(self, name: str) -> float:
        return math.exp(float(self.state.log_t[name]))

    def choose(self, name, feats, y, update) -> float:
        star = snnl_star(feats, y, distance=self.distance, start=self._start(name), check=False)
        return self._found(name, star.temperature, star.evaluations, update)

    def choose_on_block(self, name: str, block: MiniBatchBlock) -> float:
        t, evaluations = optimal_temperature_of_block(block, start=self._start(name))
        return self._found(name, t, evaluations, True)

    def _start(self, name: str) -> float | None:
        """The warm start (the previous T*), or None: the grid (first call, regrid)."""
        s = self.state
        regrid = not s.has_optimum[name] or s.calls % self.regrid_every == 0
        return None if regrid else float(s.log_t[name])

    def _found(self, name: str, t: float, evaluations: int, update: bool) -> float:
        s = self.state
        s.search_evaluations += evaluations
        if update:  # a new tensor, not fill_: also inside torch.func transforms
            s.log_t[name] = torch.tensor(math.log(t), dtype=torch.float64)
            s.has_optimum[name] = True
        return t


class LearnedTemperature(TemperatureStrategy):
    mode = TemperatureMode.LEARNED

    def __init__(self, state: TemperatureState, **kwargs: Any) -> None:
        super().__init__(state, **kwargs)
        for p in state.log_t.values():
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(list(state.log_t.values()), lr=self.lr)

    def current(self, name: str) -> float:
        return math.exp(float(self.state.log_t[name].detach()))

    def choose(self, name, feats, y, update) -> float:
        t_now = self.current(name)
        if not update:
            return t_now
        self.step(name, self.slope(feats, y, t_now))
        return t_now  # the network's SNNL uses the T before this step

    def step(self, name: str, g_log: float) -> None:
        """One Adam step on layer ``name``'s log T with dSNNL/dlog T = ``g_log`` (taken as
        0 where not finite), then the clamp to ``LOG_T_BOUNDS``."""
        log_t = self.state.log_t[name]
        g = g_log if math.isfinite(g_log) else 0.0
        log_t.grad = torch.tensor(g, dtype=torch.float64)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            log_t.clamp_(*LOG_T_BOUNDS)

    def optimizer_state(self) -> dict[str, Any] | None:
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict[str, Any] | None) -> None:
        self.optimizer.load_state_dict(state)


class ReferenceTemperature(TemperatureStrategy):
    mode = TemperatureMode.REFERENCE

    def __init__(self, state: TemperatureState, **kwargs: Any) -> None:
        super().__init__(state, **kwargs)
        self._warned = False

    def current(self, name: str) -> float:
        return self.state.t0[name] / float(self.state.t[name])

    def choose(self, name, feats, y, update) -> float:
        if not update:
            return self.current(name)
        return self.step(name, self.slope(feats, y, self.current(name)))

    def choose_on_block(self, name: str, block: MiniBatchBlock) -> float:
        t_now = self.current(name)
        g = block.log_temperature_slope(t_now)
        if g is None:  # not finite there: the one-pass slope of the features (sorted)
            batch = block.batch
            g = self.slope(block.logits.prep.source[batch.perm], batch.group, t_now)
        return self.step(name, g)

    def step(self, name: str, g_log: float) -> float:
        """The authors' step on layer ``name``'s t with dSNNL/dlog T = ``g_log`` at the
        current T (refused and counted where it would make t <= 0 or not finite): the
        new T."""
        t0, t_var = self.state.t0[name], float(self.state.t[name])
        # T = T0 / t: dSNNL/dt = dSNNL/dlog T * dlog T/dt = -dSNNL/dlog T / t
        grad = -g_log / t_var
        new_t = t_var - REFERENCE_T_STEP * grad
        if math.isfinite(new_t) and new_t > 0:  # a new tensor: also inside torch.func
            self.state.t[name] = torch.tensor(new_t, dtype=torch.float64)
        else:
            self.state.refused_steps += 1
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"reference temperature step on layer {name!r} would set t = {new_t:.4g} "
                    f"(T = {t0:g} / t): refused, t stays {t_var:.4g} (counted in refused_steps)",
                    RuntimeWarning,
                    stacklevel=5,
                )
        return self.current(name)


#: Mode -> its strategy class.
STRATEGIES: dict[TemperatureMode, type[TemperatureStrategy]] = {
    cls.mode: cls
    for cls in (OptimalTemperature, LearnedTemperature, ReferenceTemperature, FixedTemperature)
}


# ----------------------------------------------------------------------------- the op

_HANDLES = itertools.count()
#: handle -> strategy: the op below reaches the strategy (its state, optimiser) by handle
_STRATEGIES_BY_HANDLE: weakref.WeakValueDictionary[int, TemperatureStrategy] = (
    weakref.WeakValueDictionary()
)


def _autograd_restored():
    """A region where autograd records again inside an op's kernel (the dispatcher turns
    it off below the op's autograd key): the authors' formula's temperature slope is
    computed by autograd there."""
    exclude = torch._C._dispatch_tls_local_exclude_set() & torch._C._after_autograd_keyset
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


@torch.library.custom_op("snnl::choose_temperature", mutates_args=())
def choose_temperature(
    features: Tensor, labels: Tensor, strategy: int, layer: str, update: bool
) -> Tensor:
    """The temperature strategy ``strategy`` (a handle) chooses for layer ``layer`` on the
    batch (``features`` (N, D) detached, ``labels`` (N,)), updating its state when
    ``update``: a float64 0-dim CPU tensor.

    A registered op so that the mode's host work (a search, an optimiser step, counters
    and warnings) is one opaque node of a ``torch.compile(fullgraph=True)`` graph, run
    once per call of the compiled function, and loops under ``vmap``.
    """
    chooser = _STRATEGIES_BY_HANDLE.get(strategy)
    if chooser is None:
        raise RuntimeError(f"no temperature strategy {strategy}: its regulariser was freed")
    t = chooser.choose(layer, features, labels, update)
    chooser.record(layer, t, update)
    return torch.tensor(t, dtype=torch.float64)


@choose_temperature.register_fake
def _(features, labels, strategy, layer, update):
    return torch.empty((), dtype=torch.float64, device="cpu")


@choose_temperature.register_vmap
def _(info, in_dims, features, labels, strategy, layer, update):
    if update:
        mode = _STRATEGIES_BY_HANDLE[strategy].mode.value
        raise RuntimeError(
            f"temperature_mode={mode!r} cannot update its temperature under torch.vmap (one "
            "state, a batch of problems): call the regulariser with update_temperature=False "
            "(or under torch.no_grad) inside vmap; each problem then gets its own "
            f"{'T*' if mode == 'optimal' else 'current T'}"
        )
    op = choose_temperature
    return vmap_by_loop(op, info, in_dims, (features, labels), strategy, layer, update)
