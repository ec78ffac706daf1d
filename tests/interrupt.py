"""A simulated kill for the resume tests of snnl.train and snnl.gan."""

from __future__ import annotations

from collections.abc import Callable


class Kill(Exception):
    """Raised by :func:`kill_at`'s hook: the run stops as if the process died."""


def kill_at(epoch: int, step: int) -> Callable[[int, int], None]:
    """An ``on_step`` hook that raises :class:`Kill` at (epoch, step)."""

    def hook(e: int, s: int) -> None:
        if (e, s) == (epoch, step):
            raise Kill

    return hook
