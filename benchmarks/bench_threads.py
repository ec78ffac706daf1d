"""A busy machine: training time quiet against loaded, per torch thread count, in one run.

    python benchmarks/bench_threads.py [--epochs 3] [--repeats 2]

The workload is `snnl train --dataset digits --epochs 3` (the issue's example), run in a
fresh subprocess with torch set to 1 thread, 2 threads, and the package's default
(``snnl.train.default_threads``). "Loaded" runs it while one other process spins on a
core (a pure-Python busy loop, as in the report of the problem). Printed: best wall
seconds of ``repeats`` and loaded / quiet per thread count (target: <= 1.6 for the
default). On a machine where other jobs already run, "quiet" is not quiet: the
load average is printed so the figures can be read against it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time

WORKLOAD = """
import sys, time, warnings, torch
warnings.simplefilter("ignore")
from snnl.train import TrainConfig, train, default_threads
threads = int(sys.argv[1]) if sys.argv[1] != "default" else default_threads("mlp")
torch.set_num_threads(threads)
start = time.perf_counter()
train(TrainConfig(dataset="digits", epochs=int(sys.argv[3])), sys.argv[2], force=True)
print(time.perf_counter() - start)
"""


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _run(threads: str, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": threads if threads != "default" else "1"}
        out = subprocess.run(
            [sys.executable, "-c", WORKLOAD, threads, f"{tmp}/run", str(epochs)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"cores={os.cpu_count()} load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'threads':>8} {'quiet s':>8} {'loaded s':>9} {'loaded/quiet':>13}")
    for threads in ("default", "1", "2"):
        quiet = min(_run(threads, args.epochs) for _ in range(args.repeats))
        stop = mp.Event()
        spinner = mp.Process(target=_spin, args=(stop,))
        spinner.start()
        time.sleep(0.5)
        try:
            loaded = min(_run(threads, args.epochs) for _ in range(args.repeats))
        finally:
            stop.set()
            spinner.join()
        print(f"{threads:>8} {quiet:>8.2f} {loaded:>9.2f} {loaded / quiet:>13.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
