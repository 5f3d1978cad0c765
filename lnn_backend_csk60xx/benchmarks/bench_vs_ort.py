"""Benchmark: the C int8 simulator against onnxruntime on the same model, one thread each.

Usage::

    python benchmarks/bench_vs_ort.py --csk model.onnx --qdq model.qdq.onnx [--repeat N] [--input x.npy] [--json]

``model.onnx`` is the CSK60xx-dialect export of a model (``lnn export``), ``model.qdq.onnx`` the standard
QuantizeLinear/DequantizeLinear export of the same model (dialect ``qdq``), which onnxruntime runs with its
int8 kernels. Both get the same float input (``--input`` or a seeded normal sample shaped like the CSK
model's input). Reported: the median milliseconds of each over ``--repeat`` runs after a warm-up, their
ratio (target: the simulator at most 2x onnxruntime), and the largest difference between the two outputs
(informational: onnxruntime's QDQ arithmetic is not the chip's).

Needs onnxruntime (``pip install onnxruntime``); everything else is torch-free.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from lnn_backend_csk60xx.pipeline import pack_onnx
from lnn_backend_csk60xx.simulator import Simulator

TARGET_RATIO = 2.0


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csk", type=Path, required=True, help="CSK60xx-dialect ONNX file")
    ap.add_argument("--qdq", type=Path, required=True, help="QDQ ONNX file of the same model (onnxruntime)")
    ap.add_argument("--repeat", type=int, default=50, help="timed runs of each (median reported)")
    ap.add_argument("--input", type=Path, help=".npy float input (default: seeded normal sample)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: pip install onnxruntime", file=sys.stderr)
        return 2
    for path in (args.csk, args.qdq):
        if not path.is_file():
            print(f"not found: {path}", file=sys.stderr)
            return 2

    t0 = time.perf_counter()
    sim = Simulator(pack_onnx(args.csk), path=str(args.csk))
    pack_ms = (time.perf_counter() - t0) * 1e3
    (spec,) = sim.inputs
    x = (np.load(args.input) if args.input else
         np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32))
    x = np.ascontiguousarray(x, dtype=np.float32)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(args.qdq), sess_options=opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}

    sim_ms = _median_ms(lambda: sim.run([x]), args.repeat)
    ort_ms = _median_ms(lambda: sess.run(None, feed), args.repeat)
    (sim_out,) = sim.run([x])[:1]
    ort_out = np.asarray(sess.run(None, feed)[0], dtype=np.float32)
    diff = float(np.max(np.abs(sim_out.astype(np.float32) - ort_out.reshape(sim_out.shape)))) \
        if ort_out.size == sim_out.size else None
    figures = {"simulator_ms": round(sim_ms, 3), "onnxruntime_ms": round(ort_ms, 3),
               "ratio": round(sim_ms / ort_ms, 3), "target_ratio": TARGET_RATIO,
               "meets_target": sim_ms <= TARGET_RATIO * ort_ms, "pack_ms": round(pack_ms, 1),
               "max_abs_output_difference": diff, "onnxruntime": ort.__version__, "threads": 1}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"simulator (C, 1 thread):       median {sim_ms:.2f} ms of {args.repeat}")
    print(f"onnxruntime {ort.__version__} (1 thread): median {ort_ms:.2f} ms of {args.repeat}")
    print(f"ratio simulator / onnxruntime: {sim_ms / ort_ms:.2f} (target <= {TARGET_RATIO:g}: "
          f"{'met' if figures['meets_target'] else 'NOT met'})")
    print(f"largest output difference:     {diff} (QDQ float arithmetic vs the chip's integers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
