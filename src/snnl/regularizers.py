"""Training-time regularisers on hidden-layer geometry.

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
- A learned temperature is kept per layer as ``log T_l`` (owned by the
  regulariser, not a model parameter) and, at every call with gradients
  enabled, takes one Adam step that *minimises* that layer's SNNL, as the
  reference code does (one gradient step on the temperature per evaluation,
  its gradient not reaching the network).

One kernel pass per layer: the SNNL of a layer is computed once with the
network's features and a fresh leaf tensor ``T`` (a detached copy of
``exp(log T)`` that requires grad). ``torch.autograd.grad(snnl, T)`` reads the
temperature gradient the fused kernel already computed in its forward pass,
and because ``T`` is not connected to ``log T``, ``total.backward()`` never
moves the temperature. The network's gradient is therefore exactly the
gradient with ``T`` held fixed at the value used.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snnl.loss import SNNLWarning, soft_nearest_neighbor_loss
from snnl.taps import LayerTap, resolve_layers

__all__ = ["EntanglementOutput", "EntanglementRegularizer"]

#: Learned log-temperatures are clamped to this range (T in about [2e-9, 5e8]) so
#: a layer whose SNNL keeps falling as T grows or shrinks cannot reach 0 or inf.
LOG_T_BOUNDS = (-20.0, 20.0)
_DISTANCES = ("euclidean", "cosine")


@dataclass
class EntanglementOutput:
    """What one call of :class:`EntanglementRegularizer` returns.

    Attributes:
        total: 0-dim loss to backpropagate, ``CE - alpha * sum(snnl)`` with gradient.
        cross_entropy: 0-dim mean cross-entropy (detached).
        snnl: layer -> 0-dim SNNL of that layer on this batch (detached); empty when
            ``alpha == 0`` and the SNNL was not asked for.
        temperatures: layer -> temperature used for this batch (before any update).
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


def _check_real(name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, Tensor) and value.numel() == 1:
            value = float(value)
        else:
            raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


class EntanglementRegularizer:
    r"""Cross-entropy plus (minus) alpha times the SNNL of hidden layers (eq. 3).

    .. math::
        \mathcal{L} = \mathrm{CE}(f(x), y) - \alpha \sum_l \mathrm{SNNL}(h_l(x), y, T_l)

    Args:
        model: the network; ``model(x)`` returns logits (N, C).
        layers: ``"hidden"`` (``model.hidden_layer_names`` or every activation
            module, see :func:`snnl.taps.resolve_layers`) or a list of module names.
        alpha: weight of the SNNL term (required); > 0 entangles (maximises
            SNNL), < 0 disentangles, 0 is plain cross-entropy. Its useful size
            depends on the temperature regime, see the note below.
        temperature: initial (or fixed) T, a float for every layer or a dict
            layer -> float covering exactly the chosen layers. Default 100 (the
            reference code's T0).
        learn_temperature: take one Adam step on each ``log T_l`` per call (when
            gradients are enabled) to minimise that layer's SNNL.
        temperature_lr: Adam learning rate on ``log T``. Adam's step is about
            ``lr`` in log T whatever the scale of dSNNL/dlogT (which differs by
            orders of magnitude between layers and over training). With 0.05 T can
            move by a factor e per 20 steps: on a digits MLP the SNNL-minimising T
            of a layer grows about 20-fold in the first 300 steps, which 0.01 could
            barely follow; near the optimum the step jitters T by about 5%, where
            the SNNL is flat in log T.
        distance: "euclidean" (squared) or "cosine".
        always_compute_snnl: with ``alpha == 0``, still compute (and, if learned,
            update) the SNNL for logging; by default it is skipped.

    Note on scale (observed on an MLP 64-64-64-10 on sklearn digits scaled to
    [0, 1], Adam 1e-3, batch 128, 300 steps, one seed; SNNL* = min_T SNNL of
    relu1 / relu2 on 400 held-out points): with a learned temperature (T0 = 0.1,
    temperature_lr = 0.01) that tracks the minimiser, the objective is close to
    SNNL* itself and is strong: plain CE gave SNNL* 0.13 / 0.14 and 95.5% test
    accuracy; alpha = 0.01 gave 0.15 / 0.18 (94.2%), 0.03 gave 0.34 / 0.51
    (88.9%), 0.1 gave 1.09 / 1.50 (53%), alpha >= 0.3 collapsed the network
    (~10%); alpha = -0.1 gave 0.075 / 0.077 (96.7%). With T *fixed* far above the
    layer's optimal T (the reference's T = 100 while squared distances are ~1)
    the effect flips: maximising SNNL(T=100) shrank the representation and
    *lowered* SNNL* (alpha = 1 / 10: 0.100 / 0.093 and 0.095 / 0.069, accuracy
    95.0% / 95.5%), and alpha = -1 raised it (0.18 / 0.21). Measure SNNL* with
    :func:`snnl.loss.optimal_temperature` after training rather than trusting
    the sign of alpha alone.

    Anchors whose class occurs once in a batch are left out of the SNNL. The
    loss warns about them on every call; here the count goes to
    ``out.left_out`` and a single :class:`~snnl.loss.SNNLWarning` is raised the
    first time it happens (with many classes and small batches every batch would
    warn, which would bury other messages).

    Example:
        >>> from snnl.models import MLP
        >>> _ = torch.manual_seed(0)
        >>> model = MLP((4,), 3, widths=(8, 8))
        >>> reg = EntanglementRegularizer(model, "hidden", alpha=1.0, temperature=10.0)
        >>> x, y = torch.rand(12, 4), torch.arange(12) % 3
        >>> out = reg(x, y)
        >>> out.total.backward()
        >>> sorted(out.snnl), {n: round(t, 6) for n, t in out.temperatures.items()}
        (['relu1', 'relu2'], {'relu1': 10.0, 'relu2': 10.0})
        >>> bool(reg.temperatures["relu1"] != 10.0)  # one Adam step on log T
        True
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] = "hidden",
        alpha: float | None = None,
        temperature: float | Mapping[str, float] = 100.0,
        *,
        learn_temperature: bool = True,
        temperature_lr: float = 0.05,
        distance: str = "euclidean",
        always_compute_snnl: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layers: tuple[str, ...] = resolve_layers(model, layers)
        if alpha is None:
            raise TypeError(
                "alpha is required: > 0 entangles (maximises SNNL), < 0 clusters, 0 is plain CE"
            )
        self.alpha = _check_real("alpha", alpha, positive=False)
        self.temperature_lr = _check_real("temperature_lr", temperature_lr, positive=True)
        if distance not in _DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; expected one of {_DISTANCES}")
        self.distance = distance
        self.learn_temperature = bool(learn_temperature)
        self.always_compute_snnl = bool(always_compute_snnl)
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
        # log T per layer: float64 CPU scalars owned by the regulariser
        self._log_t: dict[str, Tensor] = {}
        for name, t in temps.items():
            value = _check_real(f"temperature of layer {name!r}", t, positive=True)
            self._log_t[name] = torch.tensor(math.log(value), dtype=torch.float64)
        self._optimizer: torch.optim.Adam | None = None
        if self.learn_temperature:
            for p in self._log_t.values():
                p.requires_grad_(True)
            self._optimizer = torch.optim.Adam(list(self._log_t.values()), lr=self.temperature_lr)
        self._warned_left_out = False

    # ------------------------------------------------------------------ state

    @property
    def temperatures(self) -> dict[str, float]:
        """Current temperature per layer (what the next call will use)."""
        return {n: math.exp(float(p.detach())) for n, p in self._log_t.items()}

    def state_dict(self) -> dict[str, Any]:
        """Plain dict (tensors, floats, strings) safe for ``torch.load(weights_only=True)``."""
        return {
            "layers": list(self.layers),
            "log_temperature": {n: p.detach().clone() for n, p in self._log_t.items()},
            "optimizer": None if self._optimizer is None else self._optimizer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore log T per layer and the temperature optimiser's state."""
        if not isinstance(state, Mapping) or "log_temperature" not in state:
            raise ValueError(
                "state must be a dict from EntanglementRegularizer.state_dict() with keys "
                "'layers', 'log_temperature', 'optimizer'"
            )
        layers = list(state.get("layers", []))
        if layers != list(self.layers):
            raise ValueError(
                f"state is for layers {layers}, this regulariser has {list(self.layers)}"
            )
        opt_state = state.get("optimizer")
        if (opt_state is None) != (self._optimizer is None):
            raise ValueError(
                "state and regulariser disagree on learn_temperature "
                f"(state has optimizer state: {opt_state is not None}, "
                f"learn_temperature={self.learn_temperature})"
            )
        with torch.no_grad():
            for n in self.layers:
                value = torch.as_tensor(state["log_temperature"][n], dtype=torch.float64)
                if value.numel() != 1 or not bool(torch.isfinite(value).all()):
                    raise ValueError(f"log temperature of {n!r} must be a finite scalar")
                self._log_t[n].copy_(value.reshape(()))
        if self._optimizer is not None:
            self._optimizer.load_state_dict(opt_state)

    # ------------------------------------------------------------------ call

    def __call__(
        self, x: Tensor, y: Tensor, *, update_temperature: bool | None = None
    ) -> EntanglementOutput:
        """Run the model on ``x`` (N, ...) with labels ``y`` (N,) and return the loss parts.

        ``update_temperature``: ``None`` (default) updates learned temperatures
        when gradients are enabled (training steps) and not under ``torch.no_grad``
        (evaluation); ``False`` never updates; ``True`` forces an update (only with
        ``learn_temperature=True``).
        """
        if not isinstance(y, Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(y).__name__}")
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise TypeError(f"labels must be an integer tensor, got dtype {y.dtype}")
        if not isinstance(x, Tensor):
            raise TypeError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
        if y.dim() != 1 or x.dim() < 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"labels must have shape (N,) matching inputs (N, ...); got inputs "
                f"{tuple(x.shape)} and labels {tuple(y.shape)}"
            )
        if update_temperature and not self.learn_temperature:
            raise ValueError("update_temperature=True needs learn_temperature=True")
        grad_enabled = torch.is_grad_enabled()
        update = (
            self.learn_temperature and grad_enabled
            if update_temperature is None
            else bool(update_temperature)
        )

        with LayerTap(self.model, self.layers) as tap:
            logits = self.model(x)
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != y.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"model must return logits of shape (N, C), got {shape}")
        y = y.to(device=logits.device, dtype=torch.int64)
        ce = F.cross_entropy(logits, y)
        temps = self.temperatures
        counts = torch.bincount(y)
        left_out = int((counts[y] < 2).sum())

        if self.alpha == 0 and not self.always_compute_snnl:
            return EntanglementOutput(ce, ce.detach(), {}, temps, logits, left_out)
        if left_out and not self._warned_left_out:
            self._warned_left_out = True
            warnings.warn(
                f"{left_out} of {y.shape[0]} anchors have no other point of their class in "
                "this batch and are left out of the SNNL (counted per batch in "
                "out.left_out; this warning is shown once per regulariser)",
                SNNLWarning,
                stacklevel=2,
            )

        terms: dict[str, Tensor] = {}
        leaves: dict[str, Tensor] = {}
        with torch.set_grad_enabled(grad_enabled or update), warnings.catch_warnings():
            warnings.simplefilter("ignore", SNNLWarning)
            for name, h in tap.outputs.items():
                feats = h.reshape(h.shape[0], -1)
                if not grad_enabled:
                    feats = feats.detach()
                dtype = feats.dtype if feats.dtype in (torch.float32, torch.float64) else None
                t_value = math.exp(float(self._log_t[name].detach()))
                if update:
                    # a fresh leaf: autograd.grad reads dSNNL/dT from the fused pass,
                    # and total.backward() cannot reach log T through it
                    t = torch.tensor(t_value, dtype=dtype or torch.float32, device=feats.device)
                    leaves[name] = t.requires_grad_(True)
                    terms[name] = soft_nearest_neighbor_loss(
                        feats, y, leaves[name], distance=self.distance
                    )
                else:
                    terms[name] = soft_nearest_neighbor_loss(
                        feats, y, t_value, distance=self.distance
                    )
        if update:
            self._step_temperature(terms, leaves)

        snnl_sum = torch.stack([v for v in terms.values()]).sum()
        total = ce - self.alpha * snnl_sum.to(ce.dtype)
        if not grad_enabled:
            total = total.detach()
        snnl = {n: v.detach() for n, v in terms.items()}
        return EntanglementOutput(total, ce.detach(), snnl, temps, logits, left_out)

    def _step_temperature(self, terms: dict[str, Tensor], leaves: dict[str, Tensor]) -> None:
        """One Adam step on every log T_l along -dSNNL_l/dlogT_l = -T dSNNL_l/dT."""
        assert self._optimizer is not None
        names = list(leaves)
        grads = torch.autograd.grad(
            [terms[n] for n in names], [leaves[n] for n in names], retain_graph=True
        )
        for n, g in zip(names, grads, strict=True):
            g_log = float(g) * float(leaves[n].detach())  # chain rule: dT/dlogT = T
            self._log_t[n].grad = torch.tensor(
                g_log if math.isfinite(g_log) else 0.0, dtype=torch.float64
            )
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p in self._log_t.values():
                p.clamp_(*LOG_T_BOUNDS)

    def __repr__(self) -> str:
        temps = ", ".join(f"{n}={t:.4g}" for n, t in self.temperatures.items())
        return (
            f"EntanglementRegularizer(alpha={self.alpha}, layers={list(self.layers)}, "
            f"temperatures=({temps}), learn_temperature={self.learn_temperature}, "
            f"distance={self.distance!r})"
        )
