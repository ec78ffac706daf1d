"""Training-time regularisers on hidden-layer geometry, composable in one forward pass.

- :class:`EntanglementRegularizer` (:mod:`snnl.regularizers.entanglement`): eq. 3 of
  Frosst, Papernot & Hinton (2019), CE - alpha * sum_l SNNL(h_l, y, T_l), with the
  temperature chosen by a :class:`TemperatureMode` (one strategy per mode,
  :mod:`snnl.regularizers.modes`) and the exact or the authors' SNNL formula.
- :class:`SelectivityRegularizer` (:mod:`snnl.regularizers.selectivity`): CE - alpha *
  mean class selectivity (Leavitt & Morcos 2020).
- :func:`regularized_loss` (:mod:`snnl.regularizers.compose`): one forward pass for any
  set of regularisers, each term under the regulariser's ``name``.

To add a regulariser: a class with ``name``, ``layers``, ``alpha``, ``active()`` and
``penalty(outputs, y, update=...)`` (:class:`LayerRegularizer`); to add a temperature
mode: a :class:`TemperatureMode` member and its strategy in ``modes.STRATEGIES``.
"""

from snnl.regularizers.compose import LayerRegularizer, RegularizedOutput, regularized_loss
from snnl.regularizers.entanglement import (
    REFERENCE_EPS,
    SNNL_FORMULAS,
    EntanglementOutput,
    EntanglementRegularizer,
    reference_formula_snnl,
)
from snnl.regularizers.modes import (
    DEFAULT_TEMPERATURE_MODE,
    LOG_T_BOUNDS,
    REFERENCE_T_STEP,
    TEMPERATURE_MODES,
    TemperatureMode,
    check_temperature_mode,
)
from snnl.regularizers.selectivity import SelectivityOutput, SelectivityRegularizer
from snnl.temperature import optimal_log_temperature

__all__ = [
    "DEFAULT_TEMPERATURE_MODE",
    "EntanglementOutput",
    "EntanglementRegularizer",
    "LOG_T_BOUNDS",
    "LayerRegularizer",
    "REFERENCE_EPS",
    "REFERENCE_T_STEP",
    "RegularizedOutput",
    "SNNL_FORMULAS",
    "SelectivityOutput",
    "SelectivityRegularizer",
    "TEMPERATURE_MODES",
    "TemperatureMode",
    "check_temperature_mode",
    "optimal_log_temperature",
    "reference_formula_snnl",
    "regularized_loss",
]
