"""The one place for input validation: labels, numbers, choices, shapes and distances.

Every public function validates through these helpers, so the same mistake gets
the same message everywhere. Conventions:

- Labels: any integer dtype (int8 ... int64, uint8) is accepted and returned as
  int64 on the requested device; bool, floating and complex labels are a
  ``TypeError``; a wrong shape is a ``ValueError``.
- Numbers: ``TypeError`` for non-numbers (bool included), ``ValueError`` for NaN,
  infinity or a value out of range, always naming the argument.
- Choices: ``ValueError`` listing the valid values (distances: :mod:`snnl.distances`).
- SNNL inputs: features (N, ...) of a floating dtype, finite, with labels; temperatures
  that the compute dtype represents as normal numbers; a search interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from snnl.distances import Distance

__all__ = [
    "DISTANCES",
    "check_bounds",
    "check_choice",
    "check_features_labels",
    "check_temperature",
    "check_temperature_range",
    "check_temperatures",
    "check_labels",
    "check_real",
    "check_positive",
    "check_int",
    "check_tensor",
]

#: Distance names (the values of :class:`snnl.distances.Distance`), for older callers.
DISTANCES: tuple[str, ...] = tuple(d.value for d in Distance)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing them.

    >>> check_choice("distance", "cosine", DISTANCES)
    'cosine'
    >>> check_choice("distance", "l1", DISTANCES)
    Traceback (most recent call last):
    ...
    ValueError: unknown distance 'l1'; expected one of: euclidean, cosine
    """
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(options)}")
    return value


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """A finite real number (Python number or one-element tensor) within the given range.

    >>> check_real("alpha", -0.5)
    -0.5
    >>> check_real("eps", -1, low=0.0)
    Traceback (most recent call last):
    ...
    ValueError: eps must be >= 0.0, got -1.0
    """
    if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
        value = float(value.detach())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (not low_inclusive and value == low)):
        raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low}, got {value}")
    if high is not None and (value > high or (not high_inclusive and value == high)):
        raise ValueError(f"{name} must be {'<=' if high_inclusive else '<'} {high}, got {value}")
    return value


def check_positive(name: str, value: Any) -> float:
    """A finite number > 0.

    >>> check_positive("temperature", 2)
    2.0
    """
    return check_real(name, value, low=0.0, low_inclusive=False)


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """An integer (not bool) within [low, high].

    >>> check_int("steps", 3, low=1)
    3
    """
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_tensor(name: str, value: Any, *, min_dim: int = 1, floating: bool = False) -> Tensor:
    """A tensor with at least ``min_dim`` dimensions (floating point if asked).

    >>> check_tensor("x", torch.zeros(2, 3), min_dim=2, floating=True).shape
    torch.Size([2, 3])
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s), got shape {tuple(value.shape)}"
        )
    return value


def check_labels(
    labels: Any,
    n: int | None = None,
    *,
    name: str = "labels",
    device: torch.device | str | None = None,
    non_negative: bool = False,
) -> Tensor:
    """Validate class labels of any integer dtype and return them as int64 ``(N,)``.

    Args:
        labels: (N,) tensor of an integer dtype.
        n: the expected N (e.g. the number of inputs), if known.
        name: the argument's name in error messages.
        device: move the result there (default: where it is).
        non_negative: require labels >= 0 (class indices).

    >>> check_labels(torch.tensor([0, 1], dtype=torch.int32)).dtype
    torch.int64
    >>> check_labels(torch.tensor([0.0, 1.0]))
    Traceback (most recent call last):
    ...
    TypeError: labels must be an integer tensor (any integer dtype), got dtype torch.float32
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(
            f"{name} must be an integer tensor (any integer dtype), got dtype {labels.dtype}"
        )
    if labels.dim() != 1 or (n is not None and labels.shape[0] != n):
        expected = f"({n},)" if n is not None else "(N,)"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(labels.shape)}")
    out = labels.to(device=device if device is not None else labels.device, dtype=torch.int64)
    if non_negative and out.numel() and int(out.min()) < 0:
        raise ValueError(f"{name} must be non-negative class indices, got {int(out.min())}")
    return out


# ----------------------------------------------------------------------------- SNNL inputs


def check_features_labels(
    features: Any, labels: Any, *, check_values: bool = True
) -> tuple[Tensor, Tensor]:
    """(features as (N, D) float32/float64, labels as (N,) int64) for the SNNL.

    float16/bfloat16 features become float32; NaN or Inf is a ValueError counting the
    points that hold one (``check_values=False`` skips that check, which reads the values
    on the host: under ``torch.compile`` and torch.func transforms).

    >>> x, y = check_features_labels(torch.zeros(3, 2, 2, dtype=torch.half), torch.arange(3))
    >>> tuple(x.shape), x.dtype, y.dtype
    ((3, 4), torch.float32, torch.int64)
    """
    check_tensor("features", features, floating=True)
    if features.dim() < 2:
        raise ValueError(
            f"features must have shape (N, ...) with N points, got shape {tuple(features.shape)}"
        )
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"SNNL needs at least 2 points, got {n}")
    y = check_labels(labels, n, device=features.device)
    x = features.reshape(n, -1)
    if x.shape[1] == 0:
        raise ValueError(f"features have no dimensions per point: shape {tuple(features.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # float16 / bfloat16: computed in float32
    if not check_values:
        return x, y
    lo, hi = torch.aminmax(x.detach())  # one read; NaN and +-Inf show here (isfinite: 10x slower)
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        bad = int((~torch.isfinite(x)).any(1).sum())
        raise ValueError(f"features contain NaN or Inf (in {bad} of {n} points)")
    return x, y


def check_temperature_range(name: str, value: float, dtype: torch.dtype) -> None:
    """``value`` must be a normal, finite number of ``dtype`` (the temperature is a tensor
    of that dtype when it carries a gradient).

    >>> check_temperature_range("temperature", 1e-40, torch.float32)
    Traceback (most recent call last):
    ...
    ValueError: temperature 1e-40 is outside the range float32 features can use: [1.18e-38, 3.4e+38] (the smallest normal and the largest finite float32); float64 features accept temperatures in [2.23e-308, 1.8e308]
    """  # noqa: E501
    info = torch.finfo(dtype)
    if info.tiny <= value <= info.max:
        return
    kind = str(dtype).removeprefix("torch.")
    hint = (
        "; float64 features accept temperatures in [2.23e-308, 1.8e308]"
        if dtype != torch.float64
        else ""
    )
    raise ValueError(
        f"{name} {value:g} is outside the range {kind} features can use: "
        f"[{info.tiny:.3g}, {info.max:.3g}] (the smallest normal and the largest finite "
        f"{kind}){hint}"
    )


def check_temperature(temperature: Any, dtype: torch.dtype, *, check_value: bool = True) -> float:
    """A positive, finite temperature (Python number or one-element tensor) that ``dtype``
    represents as a normal number, as a Python float (``check_value=False``: a tensor's
    shape and dtype only, its value not read, returned as NaN; under ``torch.compile`` and
    torch.func transforms).

    >>> check_temperature(torch.tensor(2.0), torch.float32)
    2.0
    """
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1 or temperature.dim() > 1:
            raise ValueError(
                f"temperature must be a scalar (0-dim or one-element 1-D tensor), got shape "
                f"{tuple(temperature.shape)}"
            )
        if temperature.dtype == torch.bool or temperature.is_complex():
            raise TypeError(f"temperature must be a real number, got dtype {temperature.dtype}")
        if not check_value:
            return math.nan
        value = float(temperature.detach())
    else:
        value = temperature
    value = check_positive("temperature", value)
    check_temperature_range("temperature", value, dtype)
    return value


def check_bounds(bounds: Any, dtype: torch.dtype) -> tuple[float, float] | None:
    """A temperature interval (low, high) with 0 < low < high within ``dtype``'s normal
    range, or None (the search follows the data's distances).

    >>> check_bounds((1e-3, 1e3), torch.float32), check_bounds(None, torch.float32)
    ((0.001, 1000.0), None)
    """
    if bounds is None:
        return None
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (low, high) of numbers, got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"bounds must satisfy 0 < low < high (finite), got {bounds}")
    check_temperature_range("lower temperature bound", lo, dtype)
    check_temperature_range("upper temperature bound", hi, dtype)
    return lo, hi


def check_temperatures(temperatures: Any, dtype: torch.dtype | None = None) -> list[float]:
    """A non-empty 1-D sequence of positive, finite temperatures (within ``dtype``'s range).

    >>> check_temperatures([0.5, 2])
    [0.5, 2.0]
    """
    temps = np.asarray(temperatures, dtype=np.float64)
    if temps.ndim != 1 or len(temps) == 0:
        raise ValueError("temperatures must be a non-empty 1-D sequence")
    if not np.isfinite(temps).all() or (temps <= 0).any():
        raise ValueError(f"temperatures must be positive and finite, got {temps.tolist()}")
    out = [float(t) for t in temps]
    if dtype is not None:
        for t in (min(out), max(out)):
            check_temperature_range("temperature", t, dtype)
    return out
