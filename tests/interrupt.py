"""A simulated kill for the resume tests of snnl.train and snnl.gan, and a bit-for-bit
comparison of their checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class Kill(Exception):
    """Raised by :func:`kill_at`'s hook: the run stops as if the process died."""


def kill_at(epoch: int, step: int) -> Callable[[int, int], None]:
    """An ``on_step`` hook that raises :class:`Kill` at (epoch, step)."""

    def hook(e: int, s: int) -> None:
        if (e, s) == (epoch, step):
            raise Kill

    return hook


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def same_state(a: Any, b: Any) -> bool:
    """Whether two checkpoint values (nested dicts, lists, tensors, numbers, strings)
    are equal bit for bit: tensors by dtype, shape and every value (NaN equal to NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(_bytes(a), _bytes(b)))
        )
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return (
            isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(same_state(x, y) for x, y in zip(a, b, strict=True))
        )
    return a == b
