"""One training step per temperature mode of the entanglement regulariser, against a plain step.

    python benchmarks/bench_train_step.py [--repeats 20] [--threads 1] [--models mlp,cnn,small]
                                          [--compile]

For the MLP (784-500-500-2000-10), the reference CNN and a user's small CNN (conv 16,
conv 32, issue 19) on real 28x28 MNIST batches (mnist5k, consecutive batches of 128 and
256, so the optimal mode's warm start sees a new batch every step, as in training): the
time of forward + backward + Adam step with loss = CE - alpha * sum of hidden-layer SNNL
for the "optimal" (T* per batch), "learned" (Adam on log T), "reference" (T0 / t) and
"fixed" modes, of the plain cross-entropy step, and of the floor: the plain step plus one
fixed-T SNNL per hidden layer by the fused loss on activations captured by hooks
registered once (the products the SNNL needs, no regulariser machinery). All measured in
the same run with the steps interleaved (best of ``repeats``). Printed: milliseconds,
each mode / plain, floor / plain, and the issue's targets (optimal <= 1.2x, others <= 1.5x).

``--compile``: the same steps with the loss (forward, taps, the SNNL terms: the dense
formula, the mode's temperature op) in ``torch.compile(fullgraph=True)`` and the optimiser
step eager, ratios against the compiled plain step (the floor is an eager construct and
is left out: "-").
"""

from __future__ import annotations

import argparse
import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from _timing import best_times
from torch import nn

from snnl.data import load_dataset
from snnl.loss import soft_nearest_neighbor_loss
from snnl.models import build_model
from snnl.regularizers import EntanglementRegularizer, regularized_loss

MODES = ("optimal", "learned", "reference", "fixed")
TARGETS = {"optimal": 1.2, "learned": 1.5, "reference": 1.5, "fixed": 1.5}
T_FIXED = 10.0


def small_cnn() -> nn.Module:
    """The user's small CNN of issue 19: conv 16, conv 32 (3x3, ReLU, 2x2 max-pool), linear."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 16, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flat=nn.Flatten(),
            fc=nn.Linear(32 * 7 * 7, 10),
        )
    )


def make_model(name: str) -> nn.Module:
    return small_cnn() if name == "small" else build_model(name, (1, 28, 28), 10)


def step_fns(model_name: str, batch: int, data, compiled: bool = False) -> dict:
    fns = {}
    xs, ys = data.x_train, data.y_train
    kinds = ("plain", *MODES) if compiled else ("plain", "floor", *MODES)
    for kind in kinds:
        torch.manual_seed(0)
        model = make_model(model_name)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        regs = (
            [EntanglementRegularizer(model, alpha=0.1, temperature=T_FIXED, temperature_mode=kind)]
            if kind in MODES
            else []
        )
        captured: dict[str, torch.Tensor] = {}
        if kind == "floor":
            layers = EntanglementRegularizer(model, alpha=0.1).layers
            modules = dict(model.named_modules())
            for name in layers:
                modules[name].register_forward_hook(
                    lambda m, i, o, name=name, store=captured: store.__setitem__(name, o)
                )

        def loss_of(x, y, model=model, regs=regs, kind=kind, captured=captured):
            if regs:
                return regularized_loss(model, x, y, regs).total
            if kind == "floor":
                loss = F.cross_entropy(model(x), y)
                for h in captured.values():
                    loss = loss - 0.1 * soft_nearest_neighbor_loss(
                        h.reshape(h.shape[0], -1), y, T_FIXED
                    )
                return loss
            return F.cross_entropy(model(x), y)

        if compiled:
            loss_of = torch.compile(loss_of, fullgraph=True)
        state = {"i": 0}

        def step(opt=opt, state=state, loss_of=loss_of) -> None:
            i = state["i"]
            state["i"] = (i + batch) % (len(ys) - batch)
            opt.zero_grad(set_to_none=True)
            loss_of(xs[i : i + batch], ys[i : i + batch]).backward()
            opt.step()

        fns[kind] = step
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="mlp,cnn,small")
    parser.add_argument("--batches", default="128,256")
    parser.add_argument("--compile", action="store_true", help="the loss compiled (fullgraph)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    data = load_dataset("mnist5k")
    mode = "compiled loss (fullgraph)" if args.compile else "eager"
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} {mode}")
    print("targets: " + ", ".join(f"{m} <= {t}x plain" for m, t in TARGETS.items()))
    head = " ".join(f"{m[:3] + '/pl':>7}" for m in MODES)
    print(f"{'model':<5} {'batch':>5} {'plain ms':>9} {'flr/pl':>7} {head}  misses")
    for model_name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            if args.compile:  # one compiled loss per kind: each its own cache entries
                torch._dynamo.reset()
                torch._dynamo.config.recompile_limit = 2 * (len(MODES) + 1)
            t = best_times(step_fns(model_name, batch, data, args.compile), args.repeats)
            ratios = {k: v / t["plain"] for k, v in t.items()}
            floor = f"{ratios['floor']:>7.2f}" if "floor" in ratios else f"{'-':>7}"
            cells = " ".join(f"{ratios[m]:>7.2f}" for m in MODES)
            misses = [m for m in MODES if ratios[m] > TARGETS[m]]
            print(
                f"{model_name:<5} {batch:>5} {t['plain'] * 1e3:>9.2f} {floor} "
                f"{cells}  {','.join(misses) or '-'}"
            )


if __name__ == "__main__":
    main()
