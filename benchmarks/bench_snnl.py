"""SNNL forward+backward: speed and peak memory against baselines in one run.

    python benchmarks/bench_snnl.py [--n 8192] [--d 512] [--repeats 3]
    python benchmarks/bench_snnl.py --crossover      # where the symmetric kernel pays

Baselines, measured in the same run on the same data:
  (a) the naive formulation of the public implementations: full N x N matrices,
      exp, subtract-the-identity, eps-guarded division and log, autograd backward;
  (b) the three-product floor: the three N x N x D matrix products of a one-sided
      kernel (X X^T for the logits, G X and G^T X for the gradient), as bare torch.mm;
  (c) the row kernel (the previous default, three products) through the same public call.

Targets: the symmetric kernel (the default at this size: one product per pair of row
tiles, statistics from both orientations; the forward's logits kept for the gradient
pass while they fit in KEEP_LOGITS_BYTES, 1.5 products' worth of work in all, else
recomputed, 2 products' worth, reported too as "recomputing") at most 0.85x of (b);
snnl at least 2.5x faster than (a); peak extra memory at most a quarter of (a). The
ratio to the floor is given as best time over best time and, since the floor itself
swings by up to 1.5x on a shared machine, as the median of per-round ratios (each
round times every variant once, seconds apart). Peak memory is the growth of the
process's high-water RSS (VmHWM) over its resident size after setup, measured in a
fresh subprocess per variant. The floor is the faster of the products done on full
N x N matrices and done in row blocks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from _timing import round_times

from snnl import _blocked, soft_nearest_neighbor_loss
from snnl._blocked import default_block_rows


def naive_snnl(x: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """The public formulation (eps = 1e-5 guards, identity subtraction, full matrices)."""
    eps = 1e-5
    sq = (x * x).sum(1)
    dist = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
    f = torch.exp(-dist / temperature) - torch.eye(x.shape[0], dtype=x.dtype)
    pick = f / (eps + f.sum(1, keepdim=True))
    same = (y[:, None] == y[None, :]).to(x.dtype)
    return -torch.log(eps + (pick * same).sum(1)).mean()


def make_data(n: int, d: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y, float(d)  # T of the order of the distances: no underflow for the naive code


def _snnl_with_kernel(x: torch.Tensor, y: torch.Tensor, t: float, kernel: str) -> None:
    """Forward+backward through the public call with the kernel forced (auto, rows,
    symmetric, or recompute: the default kernel without the kept logits)."""
    xr = x.clone().requires_grad_(True)
    default, keep = _blocked.SYMMETRIC_MIN_POINTS, _blocked.KEEP_LOGITS_BYTES
    if kernel == "rows":
        _blocked.SYMMETRIC_MIN_POINTS = x.shape[0] + 1
    elif kernel == "symmetric":
        _blocked.SYMMETRIC_MIN_POINTS = 0
    elif kernel == "recompute":
        _blocked.KEEP_LOGITS_BYTES = 0
    try:
        soft_nearest_neighbor_loss(xr, y, t).backward()
    finally:
        _blocked.SYMMETRIC_MIN_POINTS = default
        _blocked.KEEP_LOGITS_BYTES = keep


def run_variant(name: str, x: torch.Tensor, y: torch.Tensor, t: float) -> None:
    if name == "snnl":
        _snnl_with_kernel(x, y, t, "auto")
    elif name == "snnl_rows":
        _snnl_with_kernel(x, y, t, "rows")
    elif name == "snnl_symmetric":
        _snnl_with_kernel(x, y, t, "symmetric")
    elif name == "snnl_recompute":
        _snnl_with_kernel(x, y, t, "recompute")
    elif name == "naive":
        xr = x.clone().requires_grad_(True)
        naive_snnl(xr, y, t).backward()
    elif name == "floor":
        logits = x @ x.T
        torch.mm(logits, x)
        torch.mm(logits.T, x)
    elif name == "floor_blocked":
        rows = default_block_rows(x.shape[0])
        acc = torch.zeros_like(x)
        for r0 in range(0, x.shape[0], rows):
            block = x[r0 : r0 + rows] @ x.T
            torch.mm(block, x)
            acc.addmm_(block.T, x[r0 : r0 + rows])
    else:
        raise ValueError(name)


def time_variants(names, x, y, t, repeats: int, clock=time.perf_counter) -> dict[str, list[float]]:
    """Seconds per variant in each round (see :func:`_timing.round_times`)."""
    fns = {name: (lambda name=name: run_variant(name, x, y, t)) for name in names}
    return round_times(fns, repeats, clock=clock)


def _status_kib(field: str) -> int:
    """VmRSS / VmHWM of this process in KiB (ru_maxrss is inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_memory_mib(name: str, n: int, d: int) -> float:
    """Peak RSS growth (MiB) of one forward+backward of ``name`` in a fresh process."""
    out = subprocess.run(
        [sys.executable, __file__, "--measure-memory", name, "--n", str(n), "--d", str(d)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def _measure_memory(name: str, n: int, d: int) -> None:
    x, y, t = make_data(n, d)
    # the floor variant's inputs are part of setup, not of the measured extra
    base = _status_kib("VmRSS")
    run_variant(name, x, y, t)
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_mib": max(peak - base, 0) / 1024}))


def crossover(d: int, repeats: int) -> None:
    """Row kernel (one masked block up to N = 1024) against the symmetric kernel per N
    (CPU time with one thread, else wall time)."""
    one = torch.get_num_threads() == 1
    clock = time.process_time if one else time.perf_counter
    print(
        f"crossover, D={d}, threads={torch.get_num_threads()} ({'cpu' if one else 'wall'} "
        "time): symmetric / rows"
    )
    for n in (256, 512, 1024, 1536, 2048, 4096, 8192):
        x, y, t = make_data(n, d)
        times = _best(time_variants(("snnl_rows", "snnl_symmetric"), x, y, t, repeats, clock))
        ratio = times["snnl_symmetric"] / times["snnl_rows"]
        print(
            f"  N={n:5d}: rows {times['snnl_rows'] * 1e3:8.1f} ms  symmetric "
            f"{times['snnl_symmetric'] * 1e3:8.1f} ms  ratio {ratio:.2f}"
        )
    print(f"  default: symmetric from N = {_blocked.SYMMETRIC_MIN_POINTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crossover", action="store_true", help="time both kernels per N")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads; with 1, CPU time is reported too (robust on a shared machine)",
    )
    parser.add_argument("--measure-memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        _measure_memory(args.measure_memory, args.n, args.d)
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.crossover:
        crossover(args.d, args.repeats)
        return
    x, y, t = make_data(args.n, args.d)
    kernel = "symmetric" if args.n >= _blocked.SYMMETRIC_MIN_POINTS else "rows"
    print(
        f"N={args.n} D={args.d} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"(snnl uses the {kernel} kernel here)"
    )
    variants = ("floor", "floor_blocked", "snnl", "snnl_recompute", "snnl_rows", "naive")
    rounds = time_variants(variants, x, y, t, args.repeats)
    times = _best(rounds)
    floor = min(times["floor"], times["floor_blocked"])
    mems = {v: peak_memory_mib(v, args.n, args.d) for v in ("snnl", "naive")}
    print(f"time  floor, full mats  : {times['floor']:.3f} s")
    print(f"time  floor, row blocks : {times['floor_blocked']:.3f} s")
    print(f"time  snnl fwd+bwd      : {times['snnl']:.3f} s")
    print(f"time  snnl recomputing  : {times['snnl_recompute']:.3f} s")
    print(f"time  row kernel fwd+bwd: {times['snnl_rows']:.3f} s")
    print(f"time  naive fwd+bwd     : {times['naive']:.3f} s")
    print(f"peak extra memory snnl  : {mems['snnl']:.1f} MiB")
    print(f"peak extra memory naive : {mems['naive']:.1f} MiB")
    sp = times["naive"] / times["snnl"]
    fl = times["snnl"] / floor
    rows = times["snnl_rows"] / floor
    mem = mems["snnl"] / mems["naive"]
    if torch.get_num_threads() == 1:
        cpu = _best(time_variants(("floor", "floor_blocked", "snnl", "snnl_rows"), x, y, t,
                                  args.repeats, clock=time.process_time))  # fmt: skip
        cpu_floor = min(cpu["floor"], cpu["floor_blocked"])
        print(
            f"cpu time: floor {cpu_floor:.3f} s, snnl {cpu['snnl']:.3f} s "
            f"({cpu['snnl'] / cpu_floor:.2f}x), row kernel {cpu['snnl_rows']:.3f} s "
            f"({cpu['snnl_rows'] / cpu_floor:.2f}x)"
        )
    print(
        f"speed-up over naive     : {sp:.2f}x   (target >= 2.5x)  {'OK' if sp >= 2.5 else 'MISS'}"
    )
    print(
        f"time / 3-product floor  : {fl:.2f}x   (target <= 0.85x) {'OK' if fl <= 0.85 else 'MISS'}"
    )
    per_round = [
        s / min(f, fb)
        for s, f, fb in zip(rounds["snnl"], rounds["floor"], rounds["floor_blocked"], strict=True)
    ]
    print(
        f"  per round (snnl / that round's floor): median {statistics.median(per_round):.2f}x, "
        f"range {min(per_round):.2f}-{max(per_round):.2f}x over {len(per_round)} rounds"
    )
    recompute = times["snnl_recompute"] / floor
    print(f"recomputing / floor     : {recompute:.2f}x   (2 products: logits not kept)")
    print(f"row kernel / floor      : {rows:.2f}x   (the previous default, for reference)")
    verdict = "OK" if mem <= 0.25 else "MISS"
    print(f"memory / naive          : {mem:.3f}    (target <= 0.25)  {verdict}")


def _best(rounds: dict[str, list[float]]) -> dict[str, float]:
    return {name: min(times) for name, times in rounds.items()}


if __name__ == "__main__":
    main()
