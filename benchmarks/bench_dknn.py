"""DkNN predict throughput against the bare faiss searches it runs.

Baseline: for each layer, ``index.search(queries, k)`` on the same faiss
index, the same (already captured and transformed) query representations
and the same k, timed in the same run. DkNN.predict additionally runs the
network forward pass, the per-layer transforms, the label counting and the
conformal p-values; the overhead is predict / bare search - 1 (target:
<= 30%). Also times the pure-torch backend against the same baseline. The
functions are timed in interleaved rounds (the machine is shared); the best
time of each and the median of the per-round ratios are printed.

    python benchmarks/bench_dknn.py [--train 10000] [--queries 2000] [--k 75]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from snnl.dknn import DkNN
from snnl.models import MLP
from snnl.taps import capture


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Time each function once per round, rounds interleaved so load spikes hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--calibration", type=int, default=750)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--k", type=int, default=75)
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    classes = 10
    model = MLP((1, 28, 28), classes, widths=tuple(args.widths)).eval()
    x_train = torch.rand(args.train, 1, 28, 28)
    y_train = torch.randint(0, classes, (args.train,))
    x_cal = torch.rand(args.calibration, 1, 28, 28)
    y_cal = torch.randint(0, classes, (args.calibration,))
    x_query = torch.rand(args.queries, 1, 28, 28)
    print(
        f"train={args.train} queries={args.queries} k={args.k} layers={model.hidden_layer_names} "
        f"widths={args.widths} torch threads={torch.get_num_threads()}"
    )

    for metric in ("euclidean", "cosine"):
        dknn = DkNN(model, "hidden", k=args.k, metric=metric, backend="faiss")
        dknn.fit(x_train, y_train).calibrate(x_cal, y_cal)
        # the exact query vectors the faiss indexes see inside predict
        reps = capture(model, x_query, dknn.layers, batch_size=dknn.batch_size)
        queries = {n: dknn._transforms[n](reps[n]) for n in dknn.layers}

        def bare(dknn: DkNN = dknn, queries: dict[str, torch.Tensor] = queries) -> None:
            for n in dknn.layers:
                dknn._indexes[n].search(queries[n], dknn.k)

        def full(dknn: DkNN = dknn) -> None:
            dknn.predict(x_query)

        torch_dknn = DkNN(model, "hidden", k=args.k, metric=metric, backend="torch")
        torch_dknn.fit(x_train, y_train).calibrate(x_cal, y_cal)

        def forward(d: DkNN = dknn) -> None:
            capture(model, x_query, d.layers, batch_size=d.batch_size)

        def full_torch(d: DkNN = torch_dknn) -> None:
            d.predict(x_query)

        fns = {"bare": bare, "predict": full, "forward": forward, "torch": full_torch}
        for fn in fns.values():  # warm-up
            fn()
        t = _interleaved(fns, args.repeats)
        ratios = [p / b for p, b in zip(t["predict"], t["bare"], strict=True)]
        torch_ratios = [p / b for p, b in zip(t["torch"], t["bare"], strict=True)]
        best = {name: min(v) for name, v in t.items()}
        print(f"\n[{metric}]  best of {args.repeats} interleaved rounds, ratio medians per round")
        print(f"  bare faiss searches    {best['bare'] * 1e3:8.1f} ms  (baseline)")
        print(
            f"  DkNN.predict (faiss)   {best['predict'] * 1e3:8.1f} ms  "
            f"ratio best {best['predict'] / best['bare']:5.2f}  "
            f"median {statistics.median(ratios):5.2f}  "
            f"overhead {100 * (best['predict'] / best['bare'] - 1):+6.1f}%  "
            f"({args.queries / best['predict']:,.0f} queries/s)"
        )
        print(
            f"    of which forward+capture {best['forward'] * 1e3:6.1f} ms "
            f"({100 * best['forward'] / best['bare']:.1f}% of baseline)"
        )
        print(
            f"  DkNN.predict (torch)   {best['torch'] * 1e3:8.1f} ms  "
            f"ratio best {best['torch'] / best['bare']:5.2f}  "
            f"median {statistics.median(torch_ratios):5.2f}  vs the same bare faiss baseline"
        )


if __name__ == "__main__":
    main()
