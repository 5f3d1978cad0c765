"""Benchmark: the C int8 simulator against onnxruntime on the same model, one thread each.

Usage::

    python benchmarks/bench_vs_ort.py --csk model.onnx [--float model.float.onnx] [--qdq model.qdq.onnx]
                                      [--repeat N] [--rounds R] [--input x.npy] [--json]

``model.onnx`` is the CSK60xx-dialect export of a model (``lnn export``). Timed in one process, on the same
float input (``--input`` or a seeded normal sample shaped like the CSK model's input), one thread each:

- ``simulator``: lnn's C simulator on the packed model (what ``lnn run`` and ``lnn verify`` compute);
- ``ort_int8``: onnxruntime's own int8 path, the honest reference: ``--float`` (the float model, e.g.
  ``benchmarks/export_resnetish.py``) quantized with ``onnxruntime.quantization.quantize_static`` (QDQ, uint8
  activations, int8 weights, per-tensor, 16 seeded normal calibration inputs), which onnxruntime fuses into
  QLinearConv / QLinearMatMul; the fastest int8 path it has;
- ``ort_fp32``: onnxruntime on the float model;
- ``ort_lnn_qdq``: onnxruntime on lnn's own QDQ export (``--qdq``), which it cannot fuse into its int8 kernels
  (lnn's QDQ emulates the chip's half-up rounding), so this is not onnxruntime's int8 speed; informational.

The timings alternate between the engines in ``--rounds`` rounds of ``--repeat`` runs (so that all see the
same load on a shared machine); each figure is the median over all rounds. Reported: the figures, the ratios
simulator / ort_int8 (target <= 2) and simulator / ort_fp32, and the instruction-set path the simulator took
(``LNN_SIM_ISA`` forces one: portable, avx2, avx512vnni).

Needs onnxruntime (``pip install onnxruntime``); everything else is torch-free.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lnn_backend_csk60xx.pipeline import pack_onnx
from lnn_backend_csk60xx.simulator import Simulator

TARGET_RATIO = 2.0


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol: ``count`` seeded normal inputs, then None."""

    def __init__(self, name: str, shape: tuple[int, ...], count: int = 16) -> None:
        rng = np.random.default_rng(1)
        self._data = [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]
        self._items = iter(self._data)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)

    def rewind(self) -> None:
        """Start again from the first input (calibrators that read the data twice call this)."""
        self._items = iter(self._data)


def _session(ort, path: Path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _ort_int8(ort, float_model: Path, shape: tuple[int, ...], workdir: Path) -> Path:
    """onnxruntime's own static int8 quantization of the float model (u8 activations, s8 weights, QDQ)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = workdir / "pre.onnx"
    out = workdir / "ort_int8.onnx"
    quant_pre_process(str(float_model), str(pre))
    name = _session(ort, pre).get_inputs()[0].name
    quantize_static(str(pre), str(out), _Calibration(name, shape), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False)
    return out


def _time_alternating(fns: dict[str, object], repeat: int, rounds: int) -> dict[str, float]:
    """median ms of each callable over rounds x repeat runs, the engines taking turns round by round"""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for key, fn in fns.items():
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csk", type=Path, required=True, help="CSK60xx-dialect ONNX file")
    ap.add_argument("--float", dest="float_model", type=Path,
                    help="the float ONNX model: onnxruntime fp32 and onnxruntime's own int8 (quantize_static)")
    ap.add_argument("--qdq", type=Path, help="lnn's QDQ export of the same model (informational)")
    ap.add_argument("--repeat", type=int, default=20, help="timed runs of each engine per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds in which the engines take turns")
    ap.add_argument("--input", type=Path, help=".npy float input (default: seeded normal sample)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: pip install onnxruntime", file=sys.stderr)
        return 2
    for path in (args.csk, args.float_model, args.qdq):
        if path is not None and not path.is_file():
            print(f"not found: {path}", file=sys.stderr)
            return 2

    t0 = time.perf_counter()
    sim = Simulator(pack_onnx(args.csk), path=str(args.csk))
    pack_ms = (time.perf_counter() - t0) * 1e3
    (spec,) = sim.inputs
    x = (np.load(args.input) if args.input else
         np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32))
    x = np.ascontiguousarray(x, dtype=np.float32)

    fns: dict[str, object] = {"simulator": lambda: sim.run([x])}
    outputs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        if args.float_model is not None:
            sessions["ort_int8"] = _session(ort, _ort_int8(ort, args.float_model, tuple(spec.shape), Path(tmp)))
            sessions["ort_fp32"] = _session(ort, args.float_model)
        if args.qdq is not None:
            sessions["ort_lnn_qdq"] = _session(ort, args.qdq)
        for key, sess in sessions.items():
            feed = {sess.get_inputs()[0].name: x}
            fns[key] = (lambda s, f: lambda: s.run(None, f))(sess, feed)
            outputs[key] = np.asarray(sess.run(None, feed)[0], dtype=np.float32)
        ms = _time_alternating(fns, args.repeat, args.rounds)
    (sim_out,) = sim.run([x])[:1]
    sim_out = sim_out.astype(np.float32)
    figures: dict[str, object] = {f"{k}_ms": round(v, 4) for k, v in ms.items()}
    for key in ms:
        if key != "simulator":
            figures[f"ratio_vs_{key}"] = round(ms["simulator"] / ms[key], 3)
    figures["max_abs_output_difference"] = {
        k: float(np.max(np.abs(sim_out - v.reshape(sim_out.shape))))
        for k, v in outputs.items() if v.size == sim_out.size}
    figures.update({"target_ratio_vs_ort_int8": TARGET_RATIO, "pack_ms": round(pack_ms, 1),
                    "simulator_isa": getattr(sim, "isa", None), "onnxruntime": ort.__version__, "threads": 1,
                    "timed_runs_each": args.repeat * args.rounds})
    if "ort_int8_ms" in figures:
        figures["meets_target"] = ms["simulator"] <= TARGET_RATIO * ms["ort_int8"]
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"{args.csk.name}: medians of {args.repeat * args.rounds} runs each, 1 thread, engines alternating")
    for key, v in ms.items():
        print(f"  {key:<12} {v:8.3f} ms" + ("" if key == "simulator" else f"   simulator / {key}: "
                                              f"{ms['simulator'] / v:.2f}"))
    print(f"  simulator path: {figures['simulator_isa']}; onnxruntime {ort.__version__}")
    if "meets_target" in figures:
        print(f"  target simulator <= {TARGET_RATIO:g} x ort_int8: {'met' if figures['meets_target'] else 'NOT met'}")
    print(f"  largest output difference to the simulator (float arithmetic, not the chip's): "
          f"{figures['max_abs_output_difference']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
