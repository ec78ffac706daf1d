"""The benchmarks' one timing rule: variants interleaved round-robin, best of ``repeats``."""

from __future__ import annotations

import time
from collections.abc import Callable


def round_times(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per function in each of ``repeats`` rounds, after ``warmup`` calls of each.

    The functions run round-robin, so load from other processes hits every variant
    alike, and a ratio taken within one round compares runs made seconds apart.
    ``clock``: wall time (perf_counter) or, with one thread, CPU time (process_time),
    which time-slicing by other processes does not inflate.

    >>> [len(v) for v in round_times({"a": lambda: None, "b": lambda: None}, 3).values()]
    [3, 3]
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def best_times(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Best-of-``repeats`` seconds per function (see :func:`round_times`).

    >>> sorted(best_times({"a": lambda: None, "b": lambda: None}, 2))
    ['a', 'b']
    """
    return {k: min(v) for k, v in round_times(fns, repeats, warmup=warmup, clock=clock).items()}
