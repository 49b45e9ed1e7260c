"""Sandbox speed: per-call overhead, throughput and the cost of shipping a numpy mask.

    .venv/bin/python benchmarks/bench_sandbox.py [--calls 200]

Targets (issue 3): median overhead <= 20 ms for a trivial program; >= 50 trivial calls/s
on 2 cores; a numpy program over a 1000x1000 mask <= 50 ms slower than in-process.
The last line is machine-readable:
    sandbox: median_overhead_ms=... calls_per_s=... numpy_extra_ms=...
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox import isolation_layers, run_program  # noqa: E402
from sandbox.runner import pool_size  # noqa: E402

TRIVIAL = "def check():\n    return 1\n"
NUMPY_PROGRAM = """\
import numpy as np
from scipy import ndimage

def check(mask):
    labels, n = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())[1:]
    return {"components": int(n), "largest": int(sizes.max()) if n else 0, "area": int(mask.sum())}
"""


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per measurement")
    opts = parser.parse_args()

    for layer, state in isolation_layers().items():  # also warms the pool
        print(f"  {layer:13s} {state}")
    for _ in range(10):
        assert run_program(TRIVIAL).ok

    # 1. Overhead: a trivial program does no work, so its wall time is the overhead.
    overhead_ms = _median_ms(lambda: run_program(TRIVIAL), opts.calls)
    print(f"trivial call: median {overhead_ms:.2f} ms over {opts.calls} calls")

    # 2. Throughput with as many client threads as workers.
    threads = pool_size()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        results = list(ex.map(lambda _: run_program(TRIVIAL), range(opts.calls)))
    elapsed = time.perf_counter() - t0
    assert all(r.ok and r.value == 1 for r in results)
    calls_per_s = opts.calls / elapsed
    print(f"throughput: {calls_per_s:.1f} calls/s with {threads} threads and {threads} workers ({os.cpu_count()} cores)")

    # 3. numpy over a 1000x1000 mask, sandboxed vs in-process.
    rng = np.random.default_rng(0)
    mask = rng.random((1000, 1000)) > 0.7
    namespace: dict = {}
    exec(compile(NUMPY_PROGRAM, "<inprocess>", "exec"), namespace)
    expected = namespace["check"](mask)
    result = run_program(NUMPY_PROGRAM, args={"mask": mask})
    assert result.ok and result.value == expected, (result, expected)
    repeats = max(20, opts.calls // 5)
    in_process_ms = _median_ms(lambda: namespace["check"](mask), repeats)
    sandbox_ms = _median_ms(lambda: run_program(NUMPY_PROGRAM, args={"mask": mask}), repeats)
    numpy_extra_ms = sandbox_ms - in_process_ms
    print(f"numpy 1000x1000: in-process {in_process_ms:.2f} ms, sandboxed {sandbox_ms:.2f} ms")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"(1-minute load average during the run: {load:.1f})")
    print(f"sandbox: median_overhead_ms={overhead_ms:.2f} calls_per_s={calls_per_s:.1f} numpy_extra_ms={numpy_extra_ms:.2f}")


if __name__ == "__main__":
    main()
