"""One training step per temperature mode of the entanglement regulariser, against a plain step.

    python benchmarks/bench_train_step.py [--repeats 20] [--threads 1]

For the MLP (784-500-500-2000-10) and the reference CNN on real 28x28 MNIST batches
(mnist5k, consecutive batches of 128 and 256, so the optimal mode's warm start sees
a new batch every step, as in training): the time of forward + backward + Adam step
with loss = CE - alpha * sum of hidden-layer SNNL for the "optimal" (T* per batch),
"learned" (Adam on log T) and "fixed" modes, and of the plain cross-entropy step,
measured in the same run with the steps interleaved (best of ``repeats``).
Printed: milliseconds, each mode / plain, and optimal / learned (target <= 1.5).
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F
from _timing import best_times

from snnl.data import load_dataset
from snnl.models import build_model
from snnl.regularizers import EntanglementRegularizer, regularized_loss

MODES = ("optimal", "learned", "fixed")


def step_fns(model_name: str, batch: int, data) -> dict:
    fns = {}
    xs, ys = data.x_train, data.y_train
    for kind in ("plain", *MODES):
        torch.manual_seed(0)
        model = build_model(model_name, (1, 28, 28), 10)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        regs = (
            []
            if kind == "plain"
            else [
                EntanglementRegularizer(model, alpha=0.1, temperature=10.0, temperature_mode=kind)
            ]
        )
        state = {"i": 0}

        def step(model=model, opt=opt, regs=regs, state=state) -> None:
            i = state["i"]
            state["i"] = (i + batch) % (len(ys) - batch)
            x, y = xs[i : i + batch], ys[i : i + batch]
            opt.zero_grad(set_to_none=True)
            if regs:
                regularized_loss(model, x, y, regs).total.backward()
            else:
                F.cross_entropy(model(x), y).backward()
            opt.step()

        fns[kind] = step
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    data = load_dataset("mnist5k")
    print(f"threads={torch.get_num_threads()} torch={torch.__version__}")
    print(
        f"{'model':<5} {'batch':>5} {'plain ms':>9} {'optimal':>8} {'learned':>8} {'fixed':>8}"
        f" {'opt/plain':>9} {'lrn/plain':>9} {'opt/lrn':>8}"
    )
    for model_name in ("mlp", "cnn"):
        for batch in (128, 256):
            t = best_times(step_fns(model_name, batch, data), args.repeats)
            ms = {k: v * 1e3 for k, v in t.items()}
            print(
                f"{model_name:<5} {batch:>5} {ms['plain']:>9.2f} {ms['optimal']:>8.2f} "
                f"{ms['learned']:>8.2f} {ms['fixed']:>8.2f} "
                f"{t['optimal'] / t['plain']:>9.2f} {t['learned'] / t['plain']:>9.2f} "
                f"{t['optimal'] / t['learned']:>8.2f}"
            )


if __name__ == "__main__":
    main()
