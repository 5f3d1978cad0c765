"""Benchmark: pack time and single-thread simulator forward time of the linger ResNet-18, and its memory plan.

Usage: python benchmarks/bench_resnet18.py [--repeat N] [--json]

Targets: pack <= 0.5 s, forward <= 50 ms; the vendor's packer plans 331,440 bytes of share-memory, and our
plan must stay below it with the weight-prefetch and workspace buffers counted.
"""

from __future__ import annotations

import argparse
import json
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
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
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
    live = res.plan.live_bytes("share_mem")
    figures = {
        "model_bin_bytes": len(res.blob),
        "pack_ms_median": round(statistics.median(pack_times) * 1e3, 2),
        "forward_ms_median": round(statistics.median(times) * 1e3, 3),
        "share_mem_bytes": share.peak,
        "share_mem_lower_bound": share.lower_bound,
        "share_mem_activation_lower_bound": share.activation_lower_bound,
        "prefetch_max_live_bytes": max(live["prefetch"]),
        "workspace_max_live_bytes": max(live["workspace"]),
        "vendor_share_mem_bytes": VENDOR_SHARE_MEM,
        "psram_bytes": res.plan.regions["psram"].peak,
        "ops": len(res.graph.nodes),
        "splits": len(res.passes.splits),
        "fused_relu": len(res.passes.fused),
        "bit_exact_row0": bool(np.array_equal(out, expected)),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"model.bin:           {len(res.blob)} bytes, {figures['ops']} ops after {figures['splits']} splits and "
          f"{figures['fused_relu']} Relu fusions")
    print(f"pack (read+rules+passes+plan+pack): median {figures['pack_ms_median']:.1f} ms of 5 (target <= 500 ms)")
    print(f"forward (1 thread):  median {figures['forward_ms_median']:.2f} ms of {args.repeat} (target <= 50 ms)")
    print(f"share-memory plan:   {share.peak} bytes with weight prefetch (max {figures['prefetch_max_live_bytes']} "
          f"bytes live) and workspaces counted; lower bound {share.lower_bound}, activations alone "
          f"{share.activation_lower_bound}; vendor {VENDOR_SHARE_MEM} -> "
          f"{'below' if share.peak < VENDOR_SHARE_MEM else 'NOT below'}")
    print(f"PSRAM:               {res.plan.regions['psram'].peak} bytes")
    print(f"bit-exact on row 0:  {figures['bit_exact_row0']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
