"""Benchmark: pack time and single-thread simulator forward time of the linger ResNet-18.

Usage: python benchmarks/bench_resnet18.py [--repeat N]

Targets: pack <= 0.5 s, forward <= 50 ms; the vendor's packer plans 331,440 bytes of share-memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from lnn_backend_csk60xx.dialect import read_onnx
from lnn_backend_csk60xx.pipeline import pack_graph
from lnn_backend_csk60xx.simulator import Simulator

DEMO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "linger-demo"
VENDOR_SHARE_MEM = 331440


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20, help="forward passes to time (median reported)")
    ap.add_argument("--data", type=Path, default=DEMO, help="folder with resnet18-12-regular.onnx and inputs")
    args = ap.parse_args(argv)
    model = args.data / "resnet18-12-regular.onnx"
    if not model.exists():
        print(f"shared data not found: {model}", file=sys.stderr)
        return 2
    pack_times = []
    for _ in range(5):
        t0 = time.perf_counter()
        res = pack_graph(read_onnx(model))
        pack_times.append(time.perf_counter() - t0)
    sim = Simulator(res.blob)
    x = np.load(args.data / "resnet18_inputs.npy")[:1]
    expected = np.load(args.data / "resnet18_outputs.npy")[:1]
    (out,) = sim.run([x])
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        sim.run([x])
        times.append(time.perf_counter() - t0)
    share = res.plan.regions["share_mem"]
    print(f"model.bin:           {len(res.blob)} bytes")
    print(f"pack (read+plan+pack): median {statistics.median(pack_times) * 1e3:.1f} ms of 5 (target <= 500 ms)")
    print(f"forward (1 thread):  median {statistics.median(times) * 1e3:.2f} ms of {args.repeat} (target <= 50 ms)")
    print(f"share-memory plan:   {share.peak} bytes (lower bound {share.lower_bound}, "
          f"vendor {VENDOR_SHARE_MEM}); PSRAM {res.plan.regions['psram'].peak} bytes")
    print(f"bit-exact on row 0:  {np.array_equal(out, expected)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
