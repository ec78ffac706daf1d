"""One training step with the class-selectivity regulariser against the same step without it.

    python benchmarks/bench_selectivity.py [--repeats 20] [--threads 1]

For the MLP (784-500-500-2000-10) and the reference CNN on 28x28 inputs (mnist5k-sized
images), batch 128: time of forward + backward + Adam step with
loss = CE - alpha * mean over hidden layers of mean unit selectivity (float64, with
gradient), divided by the time of the plain cross-entropy step; and the same with the
entanglement regulariser (fixed T) composed in the same forward pass. All steps are
measured in the same run, interleaved, best of ``repeats``.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import best_times

from snnl.models import build_model
from snnl.regularizers import EntanglementRegularizer, SelectivityRegularizer, regularized_loss


def step_fns(model_name: str, batch: int) -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    model = build_model(model_name, (1, 28, 28), 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    selectivity = SelectivityRegularizer(model, "hidden", alpha=-1.0)
    entangle = EntanglementRegularizer(
        model, "hidden", alpha=0.1, temperature=10.0, temperature_mode="fixed"
    )
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, generator=g)
    y = torch.arange(batch) % 10

    def plain() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def with_selectivity() -> None:
        opt.zero_grad(set_to_none=True)
        regularized_loss(model, x, y, [selectivity]).total.backward()
        opt.step()

    def with_both() -> None:
        opt.zero_grad(set_to_none=True)
        regularized_loss(model, x, y, [entangle, selectivity]).total.backward()
        opt.step()

    return {"plain": plain, "selectivity": with_selectivity, "both": with_both}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} repeats={args.repeats}")
    print(
        f"{'model':<6} {'batch':>5} {'plain ms':>9} {'+select ms':>11} {'ratio':>6} "
        f"{'+select+SNNL ms':>16} {'ratio':>6}"
    )
    for model_name in ("mlp", "cnn"):
        batch = 128
        t = best_times(step_fns(model_name, batch), args.repeats)
        print(
            f"{model_name:<6} {batch:>5} {t['plain'] * 1e3:>9.2f} {t['selectivity'] * 1e3:>11.2f} "
            f"{t['selectivity'] / t['plain']:>6.2f} {t['both'] * 1e3:>16.2f} "
            f"{t['both'] / t['plain']:>6.2f}"
        )


if __name__ == "__main__":
    main()
