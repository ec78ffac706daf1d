"""The benchmarks' one timing rule: best of ``repeats``, variants interleaved."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_times(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Best-of-``repeats`` seconds per function, after ``warmup`` calls of each.

    The functions run round-robin, so load from other processes hits every variant
    alike. ``clock``: wall time (perf_counter) or, with one thread, CPU time
    (process_time), which time-slicing by other processes does not inflate.

    >>> sorted(best_times({"a": lambda: None, "b": lambda: None}, 2))
    ['a', 'b']
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            best[name] = min(best[name], clock() - start)
    return best
