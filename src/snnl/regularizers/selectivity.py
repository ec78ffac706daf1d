"""The class-selectivity regulariser (Leavitt & Morcos 2020), composable with the
entanglement regulariser through :func:`snnl.regularizers.regularized_loss`."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from snnl._checks import check_int
from snnl.measures import class_selectivity
from snnl.regularizers.compose import (
    check_batch,
    check_name,
    regularized_layers,
    regularized_loss,
)

__all__ = ["SelectivityOutput", "SelectivityRegularizer"]


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
        num_classes: if given, labels are checked to lie in [0, num_classes); required
            under ``torch.compile`` (the class means then have a static shape).
        always_compute_selectivity: with ``alpha == 0``, still compute the term (logging).
        name: the key of its terms in :func:`regularized_loss` (unique among those composed).

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

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] = "hidden",
        alpha: float | None = None,
        *,
        num_classes: int | None = None,
        always_compute_selectivity: bool = False,
        name: str = "selectivity",
    ) -> None:
        self.name = check_name(name)
        self.model, self.layers, self.alpha = regularized_layers(
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
        y = check_batch(x, y)
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
        if torch.compiler.is_compiling():
            return self._compiled_penalty(outputs, y)
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

    def _compiled_penalty(
        self, outputs: Mapping[str, Tensor], y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The penalty inside a ``torch.compile`` graph: class means over ``num_classes``
        static slots; a batch with fewer than two classes gives 0 (not counted, no
        warning: host work)."""
        if self.num_classes is None:
            raise ValueError(
                "SelectivityRegularizer under torch.compile needs num_classes=... (the class "
                "means need a static number of classes)"
            )
        slots = torch.arange(self.num_classes, device=y.device)
        two = (y[:, None] == slots).any(0).sum() >= 2
        per_layer = {
            name: class_selectivity(outputs[name], y, self.num_classes).mean()
            for name in self.layers
        }
        total = torch.where(two, torch.stack(list(per_layer.values())).mean(), 0.0)
        return total, {n: torch.where(two, v, 0.0).detach() for n, v in per_layer.items()}

    def __repr__(self) -> str:
        return f"SelectivityRegularizer(alpha={self.alpha}, layers={list(self.layers)})"
