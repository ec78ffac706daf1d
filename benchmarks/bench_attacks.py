"""PGD overhead against plain input-gradient passes, measured in the same run.

For an MLP and a small CNN on random 28x28 inputs (random weights, batch 256):

* baseline: ``steps`` plain forward + backward passes that take the gradient of
  the cross-entropy with respect to the input (``torch.autograd.grad``), with no
  sign, projection or clipping;
* ``snnl.attacks.pgd`` (L-inf and L2) with the same number of steps.

Prints the median time of each over a few repeats and the ratio pgd / baseline
(the cost of the attack's own bookkeeping). Run: ``python benchmarks/bench_attacks.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from snnl.attacks import pgd


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )  # fmt: skip


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 14 x 14
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 64 x 7 x 7
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


def baseline(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        xr = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xr), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xr)


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    print(
        f"batch {args.batch}, {args.steps} steps, median of {args.repeats}, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(
        f"{'model':<6} {'baseline s':>10} {'pgd-inf s':>10} {'ratio':>6} "
        f"{'pgd-2 s':>10} {'ratio':>6}"
    )
    for name, build in (("mlp", mlp), ("cnn", small_cnn)):
        model = build().eval()
        base = timed(lambda m=model: baseline(m, x, y, args.steps), args.repeats)
        linf = timed(lambda m=model: pgd(m, x, y, 0.3, 0.01, args.steps, norm="inf"), args.repeats)
        l2 = timed(lambda m=model: pgd(m, x, y, 2.0, 0.2, args.steps, norm="2"), args.repeats)
        print(
            f"{name:<6} {base:>10.4f} {linf:>10.4f} {linf / base:>6.2f} "
            f"{l2:>10.4f} {l2 / base:>6.2f}"
        )


if __name__ == "__main__":
    main()
