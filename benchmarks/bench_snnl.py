"""SNNL forward+backward: speed and peak memory against two baselines in one run.

    python benchmarks/bench_snnl.py [--n 8192] [--d 512] [--repeats 3]

Baselines, measured in the same run on the same data:
  (a) the naive formulation of the public implementations: full N x N matrices,
      exp, subtract-the-identity, eps-guarded division and log, autograd backward;
  (b) the compute floor: the three N x N x D matrix products the math needs
      (X X^T for the logits, G X and G^T X for the gradient), as bare torch.mm.

Targets (issue 2): snnl at least 2.5x faster than (a), at most 1.3x of (b), and
peak extra memory at most a quarter of (a). Peak memory is the growth of the
process's high-water RSS (VmHWM) over its resident size after setup, measured in
a fresh subprocess per variant. The floor is the faster of the products done on
full N x N matrices and done in the same row blocks as snnl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from snnl import soft_nearest_neighbor_loss
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


def run_variant(name: str, x: torch.Tensor, y: torch.Tensor, t: float) -> None:
    if name == "snnl":
        xr = x.clone().requires_grad_(True)
        soft_nearest_neighbor_loss(xr, y, t).backward()
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


def time_variants(names, x, y, t, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` wall time per variant, the variants interleaved round-robin
    so that load from other processes hits every variant alike."""
    for name in names:
        run_variant(name, x, y, t)  # warm-up
    best = dict.fromkeys(names, float("inf"))
    for _ in range(repeats):
        for name in names:
            start = time.perf_counter()
            run_variant(name, x, y, t)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure-memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        _measure_memory(args.measure_memory, args.n, args.d)
        return
    x, y, t = make_data(args.n, args.d)
    print(f"N={args.n} D={args.d} threads={torch.get_num_threads()} torch={torch.__version__}")
    variants = ("floor", "floor_blocked", "snnl", "naive")
    times = time_variants(variants, x, y, t, args.repeats)
    floor = min(times["floor"], times["floor_blocked"])
    mems = {v: peak_memory_mib(v, args.n, args.d) for v in ("snnl", "naive")}
    print(f"time  floor, full mats  : {times['floor']:.3f} s")
    print(f"time  floor, row blocks : {times['floor_blocked']:.3f} s")
    print(f"time  snnl fwd+bwd      : {times['snnl']:.3f} s")
    print(f"time  naive fwd+bwd     : {times['naive']:.3f} s")
    print(f"peak extra memory snnl  : {mems['snnl']:.1f} MiB")
    print(f"peak extra memory naive : {mems['naive']:.1f} MiB")
    sp = times["naive"] / times["snnl"]
    fl = times["snnl"] / floor
    mem = mems["snnl"] / mems["naive"]
    print(
        f"speed-up over naive     : {sp:.2f}x   (target >= 2.5x)  {'OK' if sp >= 2.5 else 'MISS'}"
    )
    print(
        f"time / compute floor    : {fl:.2f}x   (target <= 1.3x)  {'OK' if fl <= 1.3 else 'MISS'}"
    )
    verdict = "OK" if mem <= 0.25 else "MISS"
    print(f"memory / naive          : {mem:.3f}    (target <= 0.25)  {verdict}")


if __name__ == "__main__":
    main()
