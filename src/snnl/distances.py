"""The distances the SNNL, its optimal temperature, DkNN and the measures understand.

:class:`Distance` is a string enum: every function that takes a distance accepts the
enum or its string (``Distance.COSINE == "cosine"``), and :func:`check_distance` turns
either into the enum, or raises a ``ValueError`` listing the choices.

- ``euclidean``: the squared Euclidean distance ``|x_i - x_j|^2`` (as in the paper);
- ``cosine``: ``1 - cos(x_i, x_j)``; a zero vector has cosine 0 with every point.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = ["Distance", "check_distance"]


class Distance(StrEnum):
    """A pairwise distance, by name.

    >>> Distance("cosine") is Distance.COSINE, Distance.EUCLIDEAN == "euclidean"
    (True, True)
    >>> [d.value for d in Distance]
    ['euclidean', 'cosine']
    """

    EUCLIDEAN = "euclidean"
    COSINE = "cosine"

    @property
    def euclidean(self) -> bool:
        """Whether this is the squared Euclidean distance."""
        return self is Distance.EUCLIDEAN


def check_distance(value: Any, name: str = "distance") -> Distance:
    """``value`` (a :class:`Distance` or its string) as a :class:`Distance`.

    >>> check_distance("euclidean")
    <Distance.EUCLIDEAN: 'euclidean'>
    >>> check_distance("l1")
    Traceback (most recent call last):
    ...
    ValueError: unknown distance 'l1'; expected one of: euclidean, cosine
    """
    if isinstance(value, Distance):
        return value
    if isinstance(value, str):
        try:
            return Distance(value)
        except ValueError:
            pass
    options = ", ".join(d.value for d in Distance)
    raise ValueError(f"unknown {name} {value!r}; expected one of: {options}")
