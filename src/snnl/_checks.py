"""The one place for input validation: labels, numbers, choices, shapes and distances.

Every public function validates through these helpers, so the same mistake gets
the same message everywhere. Conventions:

- Labels: any integer dtype (int8 ... int64, uint8) is accepted and returned as
  int64 on the requested device; bool, floating and complex labels are a
  ``TypeError``; a wrong shape is a ``ValueError``.
- Numbers: ``TypeError`` for non-numbers (bool included), ``ValueError`` for NaN,
  infinity or a value out of range, always naming the argument.
- Choices: ``ValueError`` listing the valid values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DISTANCES",
    "check_choice",
    "check_labels",
    "check_real",
    "check_positive",
    "check_int",
    "check_tensor",
]

#: Distance names understood by the SNNL kernel, DkNN and the regularisers.
DISTANCES: tuple[str, ...] = ("euclidean", "cosine")


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
