"""Benchmark: pack time and single-thread simulator forward time of the linger ResNet-18, and its memory plan.

Usage: python benchmarks/bench_resnet18.py [--repeat N] [--profile] [--json]

Targets: pack <= 0.5 s, forward <= 3 ms (issue 15; the vendor's x86 simulator takes 170-280 ms); the vendor's
packer plans 331,440 bytes of share-memory, and our plan must stay below it with the weight-prefetch and workspace
buffers counted. The forward time is reported as the median and the minimum of ``--repeat`` runs, with the load
average: on a machine shared with other jobs the median moves with their load, the minimum much less. ``--profile``
adds the per-op times (``Simulator.profile``) summed by op kind and the slowest ops.
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

from lnn_backend_csk60xx.dialect import read_onnx
from lnn_backend_csk60xx.pipeline import pack_graph
from lnn_backend_csk60xx.simulator import Simulator

DEMO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "linger-demo"
VENDOR_SHARE_MEM = 331440


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20, help="forward passes to time (median reported)")
    ap.add_argument("--data", type=Path, default=DEMO, help="folder with resnet18-12-regular.onnx and inputs")
    ap.add_argument("--profile", action="store_true", help="also print per-op times (by kind, slowest ops)")
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
        "forward_ms_min": round(min(times) * 1e3, 3),
        "isa": sim.isa,
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
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
    profile = sim.profile([x], repeat=args.repeat) if args.profile else None
    if profile is not None:
        kinds: dict[str, float] = {}
        for t in profile:
            kinds[t.kind] = kinds.get(t.kind, 0.0) + t.us
        figures["profile_us_by_kind"] = {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
        figures["profile_slowest"] = [{"op": t.name, "kind": t.kind, "macs": t.macs, "us": round(t.us, 1)}
                                      for t in sorted(profile, key=lambda t: -t.us)[:10]]
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"model.bin:           {len(res.blob)} bytes, {figures['ops']} ops after {figures['splits']} splits and "
          f"{figures['fused_relu']} Relu fusions")
    print(f"pack (read+rules+passes+plan+pack): median {figures['pack_ms_median']:.1f} ms of 5 (target <= 500 ms)")
    print(f"forward (1 thread):  median {figures['forward_ms_median']:.2f} ms, min {figures['forward_ms_min']:.2f} ms "
          f"of {args.repeat} (target <= 3 ms; {sim.isa} kernels, load average {figures['load_average']})")
    print(f"share-memory plan:   {share.peak} bytes with weight prefetch (max {figures['prefetch_max_live_bytes']} "
          f"bytes live) and workspaces counted; lower bound {share.lower_bound}, activations alone "
          f"{share.activation_lower_bound}; vendor {VENDOR_SHARE_MEM} -> "
          f"{'below' if share.peak < VENDOR_SHARE_MEM else 'NOT below'}")
    print(f"PSRAM:               {res.plan.regions['psram'].peak} bytes")
    print(f"bit-exact on row 0:  {figures['bit_exact_row0']}")
    if profile is not None:
        print("per-op time by kind (us): " + ", ".join(f"{k} {v}" for k, v in figures["profile_us_by_kind"].items()))
        for t in figures["profile_slowest"]:
            print(f"  {t['us']:8.1f} us  {t['kind']:<10} {t['op']} ({t['macs']} MACs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
