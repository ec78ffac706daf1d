"""A 2-process DDP training step (global-batch SNNL) against a 1-process step on the same batch.

    python benchmarks/bench_ddp.py [--repeats 15] [--batch 256]

For the MLP (784-500-500-2000-10) and the reference CNN on real 28x28 MNIST
batches (mnist5k, consecutive global batches of ``--batch``): the time of forward
+ backward + Adam step of loss = CE - alpha * sum of hidden-layer SNNL (optimal
temperature mode) and of the plain cross-entropy step,

- in one process with one torch thread, then with two (the same cores as 2 ranks);
- on 2 ranks (gloo on CPU, one thread each, forked, file:// rendezvous), each with
  half of every global batch; the SNNL gathers the hidden layers of the whole batch.
  A rank's step is timed from a barrier to the end of its optimiser step (DDP's
  gradient all-reduce makes the ranks finish together); rank 0's times are kept.

All of it runs inside the 2 rank processes, interleaved step by step: rank 0
times the 1-process steps (full batch, 1 then 2 threads) while rank 1 waits at a
barrier, then both time a DDP step; the same background load falls on all three.
Best of ``repeats`` per setting (after two warm-up steps). Printed: milliseconds and
ratios 2 ranks / 1 process (1 thread) and 2 ranks / 1 process (2 threads).
On a machine with 2 cores, the 2 ranks and the 2-thread process have the cores to
themselves only when nothing else runs: the figures move with other load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from snnl import distributed
from snnl.data import load_dataset
from snnl.models import build_model
from snnl.regularizers import EntanglementRegularizer, regularized_loss

KINDS = ("plain", "snnl")
MODELS = ("mlp", "cnn")


def make_step(model_name: str, kind: str, batch: int, data, wrap: bool):
    """A closure running one training step on the next global batch (DDP: this rank's share)."""
    torch.manual_seed(0)
    model = build_model(model_name, (1, 28, 28), 10)
    net = distributed.wrap_model(model) if wrap else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    regs = (
        [EntanglementRegularizer(model, alpha=0.1, temperature_mode="optimal")]
        if kind == "snnl"
        else []
    )
    xs, ys = data.x_train, data.y_train
    state = {"i": 0}

    def step() -> None:
        i = state["i"]
        state["i"] = (i + batch) % (len(ys) - batch)
        rows = torch.arange(i, i + batch)
        mine = distributed.shard(rows) if wrap else rows
        x, y = xs[mine], ys[mine]
        opt.zero_grad(set_to_none=True)
        if regs:
            regularized_loss(net, x, y, regs).total.backward()
        else:
            F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def _timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _rank(rank: int, init: str, batch: int, repeats: int, out: str) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        data = load_dataset("mnist5k")
        times: dict[str, dict[str, float]] = {}
        for m in MODELS:
            for k in KINDS:
                ddp = make_step(m, k, batch, data, wrap=True)
                single = make_step(m, k, batch, data, wrap=False) if rank == 0 else None
                best = {"x1": math.inf, "x2": math.inf, "ddp": math.inf}
                for r in range(repeats + 2):  # the first two are warm-up
                    if single is not None:
                        t1 = _timed(single)
                        torch.set_num_threads(2)
                        t2 = _timed(single)
                        torch.set_num_threads(1)
                        if r >= 2:
                            best["x1"], best["x2"] = min(best["x1"], t1), min(best["x2"], t2)
                    distributed.barrier()
                    t = _timed(ddp)
                    if r >= 2:
                        best["ddp"] = min(best["ddp"], t)
                times[f"{m}/{k}"] = best
        if rank == 0:
            Path(out).write_text(json.dumps(times))
    finally:
        dist.destroy_process_group()


def measure(batch: int, repeats: int) -> dict[str, dict[str, float]]:
    import torch._dynamo  # noqa: F401  imported by DDP's constructor: once, before forking

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        init = f"file://{os.path.join(tmp, 'rendezvous')}"
        mp.start_processes(
            _rank, args=(init, batch, repeats, out), nprocs=2, join=True, start_method="fork"
        )
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    times = measure(args.batch, args.repeats)
    print(
        f"torch={torch.__version__} cores={os.cpu_count()} global batch={args.batch} "
        f"(2 ranks: {args.batch // 2} + {args.batch - args.batch // 2}) best of {args.repeats}"
    )
    print(
        f"{'model':<5} {'step':<6} {'1p x1 ms':>9} {'1p x2 ms':>9} {'2 ranks ms':>11} "
        f"{'2r / 1p x1':>11} {'2r / 1p x2':>11}"
    )
    for m in MODELS:
        for k in KINDS:
            key = f"{m}/{k}"
            a, b, c = (times[key][n] * 1e3 for n in ("x1", "x2", "ddp"))
            print(f"{m:<5} {k:<6} {a:>9.2f} {b:>9.2f} {c:>11.2f} {c / a:>11.2f} {c / b:>11.2f}")


if __name__ == "__main__":
    main()
