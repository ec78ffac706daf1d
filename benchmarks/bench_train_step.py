"""One training step with the entanglement regulariser against the same step without it.

    python benchmarks/bench_train_step.py [--repeats 20]

For the MLP (784-500-500-2000-10) and the reference CNN on 28x28 inputs, batch 128
and 256: time of forward + backward + Adam step with loss = CE - alpha * sum of
hidden-layer SNNL (learned temperatures), divided by the time of the plain
cross-entropy step, measured in the same run with the two interleaved.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F

from snnl.models import build_model
from snnl.regularizers import EntanglementRegularizer


def step_fns(model_name: str, batch: int):
    torch.manual_seed(0)
    model = build_model(model_name, (1, 28, 28), 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    reg = EntanglementRegularizer(model, "hidden", alpha=1.0, temperature=10.0)
    x = torch.rand(batch, 1, 28, 28)
    y = torch.arange(batch) % 10

    def plain() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def regularised() -> None:
        opt.zero_grad(set_to_none=True)
        reg(x, y).total.backward()
        opt.step()

    return plain, regularised


def best_times(fns: dict, repeats: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'model':<6} {'batch':>5} {'plain ms':>9} {'with SNNL ms':>13} {'ratio':>6}")
    for model_name in ("mlp", "cnn"):
        for batch in (128, 256):
            plain, regularised = step_fns(model_name, batch)
            t = best_times({"plain": plain, "reg": regularised}, args.repeats)
            print(
                f"{model_name:<6} {batch:>5} {t['plain'] * 1e3:>9.2f} {t['reg'] * 1e3:>13.2f} "
                f"{t['reg'] / t['plain']:>6.2f}"
            )


if __name__ == "__main__":
    main()
