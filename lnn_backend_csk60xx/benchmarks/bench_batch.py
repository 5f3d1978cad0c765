"""Benchmark: ``Simulator.run_batch`` on N threads against 1 thread, same model, same batch, one process.

Usage::

    python benchmarks/bench_batch.py MODEL [--rows 256] [--threads 2] [--rounds 15] [--json]

``MODEL`` is a model.bin (``lnn pack``) or a CSK60xx-dialect ONNX file (packed here), e.g. the digits CNN of
``benchmarks/export_resnetish.py``. The batch is ``--rows`` seeded normal rows of the model's input shape. The
1-thread and N-thread runs alternate (``--rounds`` of each; the workers are loaded before the first timed round),
so that both see the same load on a shared machine; reported are the medians, the rows per second of each, their
ratio (target for 256 digits images on 2 threads: >= 1.8) and how many CPUs the process kept busy during the
N-thread runs (process CPU time / wall time: on a machine whose other jobs hold cores it stays below N, and so does
the speedup). The whole batch is one C call that runs the rows on N POSIX threads. Every N-thread result is
checked equal to the 1-thread one. torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from lnn_backend_csk60xx.pipeline import pack_onnx
from lnn_backend_csk60xx.simulator import Simulator

TARGET = 1.8


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="model.bin or CSK60xx-dialect .onnx")
    ap.add_argument("--rows", type=int, default=256, help="rows in the batch")
    ap.add_argument("--threads", type=int, default=2, help="threads of the parallel run")
    ap.add_argument("--rounds", type=int, default=15, help="timed runs of each (median reported)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    if not args.model.is_file():
        print(f"not found: {args.model}", file=sys.stderr)
        return 2
    blob = args.model.read_bytes() if args.model.suffix == ".bin" else pack_onnx(args.model)
    sim = Simulator(blob, path=str(args.model))
    xs = [np.random.default_rng(i).standard_normal((args.rows * s.shape[0], *s.shape[1:])).astype(s.dtype)
          for i, s in enumerate(sim.inputs)]
    ref = sim.run_batch(xs, threads=1)
    got = sim.run_batch(xs, threads=args.threads)  # loads the workers
    assert all(np.array_equal(a, b) for a, b in zip(ref, got)), "the threaded batch differs from the 1-thread one"
    times: dict[int, list[float]] = {1: [], args.threads: []}
    cpu: dict[int, list[float]] = {1: [], args.threads: []}  # process CPU seconds per wall second
    for _ in range(args.rounds):
        for t in times:
            c0, t0 = time.process_time(), time.perf_counter()
            sim.run_batch(xs, threads=t)
            wall = time.perf_counter() - t0
            times[t].append(wall)
            cpu[t].append((time.process_time() - c0) / wall)
    one, many = statistics.median(times[1]), statistics.median(times[args.threads])
    figures = {"rows": args.rows, "threads": args.threads, "one_thread_ms": round(one * 1e3, 3),
               "n_threads_ms": round(many * 1e3, 3), "one_thread_rows_per_s": round(args.rows / one),
               "n_threads_rows_per_s": round(args.rows / many), "speedup": round(one / many, 3),
               "target_speedup": TARGET, "isa": sim.isa, "cpus": os.cpu_count(),
               "n_threads_cpus_busy": round(statistics.median(cpu[args.threads]), 2),
               "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"{args.model.name}: {args.rows} rows, medians of {args.rounds} alternating runs ({sim.isa} kernels, "
          f"{os.cpu_count()} CPUs, load average {figures['load_average']})")
    print(f"  1 thread:   {one * 1e3:8.2f} ms  ({figures['one_thread_rows_per_s']} rows/s)")
    print(f"  {args.threads} threads:  {many * 1e3:8.2f} ms  ({figures['n_threads_rows_per_s']} rows/s; the process "
          f"had {figures['n_threads_cpus_busy']} CPUs busy: below {args.threads}, other jobs held the cores)")
    print(f"  speedup {one / many:.2f} (target for 256 digits on 2 threads: >= {TARGET:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
