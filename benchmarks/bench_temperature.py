"""Eq. 2 at the price of a few losses: optimal_temperature against one loss evaluation.

    python benchmarks/bench_temperature.py [--sizes 512x64 512x512 8192x64 8192x512]
                                           [--repeats 5] [--threads 0]

For each N x D: the time of ``optimal_temperature(x, y)`` (the one SNNL* search: grid
over the data's distance range, Newton in log T with value and two derivatives per pass)
and of one evaluation of the loss at a fixed temperature (``soft_nearest_neighbor_loss``
under ``torch.no_grad``, T = the optimum), measured round-robin in one run
(``_timing.round_times``). Printed: both times (best of the rounds), their ratio, and
the median of the per-round ratios. Target (issue 19): at most 5x at N = 512 and 8192,
D = 64 and 512. The search's value is checked against the loss at its T (float64).

Data: 10 classes, Gaussian points around class centres scaled so that the classes
overlap (SNNL* of a few tenths, the minimum inside the distance range).
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from _timing import round_times

from snnl import optimal_temperature, soft_nearest_neighbor_loss


def make_data(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    centres = torch.randn(10, d, generator=g) * 0.5 * math.sqrt(64 / d)
    return torch.randn(n, d, generator=g) + centres[y], y


def bench(n: int, d: int, repeats: int) -> dict[str, float]:
    x, y = make_data(n, d)
    t_star, value = optimal_temperature(x, y)

    def loss() -> None:
        with torch.no_grad():
            soft_nearest_neighbor_loss(x, y, t_star)

    def search() -> None:
        optimal_temperature(x, y)

    times = round_times({"loss": loss, "search": search}, repeats)
    ratios = [s / lo for s, lo in zip(times["search"], times["loss"], strict=True)]
    with torch.no_grad():
        at_t = soft_nearest_neighbor_loss(x.double(), y, t_star).item()
    return {
        "loss_ms": 1e3 * min(times["loss"]),
        "search_ms": 1e3 * min(times["search"]),
        "ratio": min(times["search"]) / min(times["loss"]),
        "median_ratio": statistics.median(ratios),
        "snnl_star": value,
        "rel_to_loss_at_t": abs(value - at_t) / at_t,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["512x64", "512x512", "8192x64", "8192x512"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'N x D':>10} {'loss ms':>9} {'search ms':>10} {'ratio':>6} {'median':>7} "
          f"{'SNNL*':>9} {'vs float64 loss':>15}")  # fmt: skip
    for size in args.sizes:
        n, d = (int(v) for v in size.split("x"))
        r = bench(n, d, args.repeats if n < 4096 else max(2, args.repeats // 2))
        print(
            f"{size:>10} {r['loss_ms']:9.1f} {r['search_ms']:10.1f} {r['ratio']:6.2f} "
            f"{r['median_ratio']:7.2f} {r['snnl_star']:9.5f} {r['rel_to_loss_at_t']:15.1e}"
        )


if __name__ == "__main__":
    main()
