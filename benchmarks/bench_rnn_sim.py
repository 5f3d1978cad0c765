"""The C simulator on recurrent models: a keyword-spotting CRNN on 1 s of audio at once, and streamed frame by frame.

The CRNN is built at the dialect level (what `lnn export` writes for it; random int8 weights, exponents inside
the chip's contract): per-frame features 1x40 -> Conv2dInt 16 (kernel 1x3, stride 1x2, BatchNorm folded) + ReLU ->
Conv2dInt 16 (same) + ReLU -> 160 values per frame -> GRUInt 64 (or LSTMInt 64 with --rnn lstm) -> LinearInt 12 per
frame. The convolutions see one frame at a time, so the model streams exactly: the same network packed for one frame
with its recurrent state as input and output (h0 -> h_n, c0 -> c_n) gives, call after call, the integers of the
100-frame model.

Measured in one process, single thread, after warm-up runs (median of --repeats, and the best run):

- ``whole``: one ``Simulator.run`` of the 100-frame model (1 s of 10 ms frames); target <= 2 ms;
- ``stream``: 100 ``StatefulRun.run`` calls of the one-frame model, state carried; target <= 5 ms in total;
- ``call``: 100 ``Simulator.run`` calls of a model that only quantizes and dequantizes one frame: the Python/cffi
  cost of a call, the floor under ``stream``; ``stream / whole`` and ``call / stream`` say what dominates.

The exit code is 1 when the streamed integers differ from the whole sequence's or a target is missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

try:
    from lnn_backend_csk60xx.pipeline import pack_onnx
    from lnn_backend_csk60xx.simulator import Simulator
except ImportError:  # run from a checkout without the backend installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lnn_backend_csk60xx" / "src"))
    from lnn_backend_csk60xx.pipeline import pack_onnx
    from lnn_backend_csk60xx.simulator import Simulator

FEATURES, CHANNELS, HIDDEN, CLASSES = 40, 16, 64, 12
TARGETS = {"whole": 2.0, "stream": 5.0}


def _t(op: str, ins: list[str], outs: list[str], name: str, **attrs: object) -> onnx.NodeProto:
    """A thinker-domain node; ``scale_*`` attributes given as exponents."""
    attrs = {k: float(2.0 ** v) if k.startswith("scale_") else v for k, v in attrs.items()}
    if op != "Dequant":
        attrs.setdefault("platform_quant", "luna_quant")
    return helper.make_node(op, ins, outs, name=name, domain="thinker", **attrs)


def crnn(frames: int, rnn: str = "gru", *, state: bool = False, seed: int = 0) -> onnx.ModelProto:
    """The CRNN of the module docstring on ``frames`` frames; with ``state`` the recurrent state is a graph input
    and output (int8 h at the GRU/LSTM output exponent, int16 Q7 c), as a streaming export writes it."""
    rng = np.random.default_rng(seed)
    gates, n_o = (3, 8) if rnn == "gru" else (4, 7)
    op = "GRUInt" if rnn == "gru" else "LSTMInt"
    width = FEATURES // 4
    inits = {
        "w1": rng.integers(-128, 128, (CHANNELS, 1, 1, 3), dtype=np.int8),
        "b1": rng.integers(-512, 512, CHANNELS).astype(np.int32),
        "w2": rng.integers(-128, 128, (CHANNELS, CHANNELS, 1, 3), dtype=np.int8),
        "b2": rng.integers(-512, 512, CHANNELS).astype(np.int32),
        "shape": np.array([1, frames, CHANNELS * width], np.int64),
        "w_ih": rng.integers(-128, 128, (gates * HIDDEN, CHANNELS * width), dtype=np.int8),
        "w_hh": rng.integers(-128, 128, (gates * HIDDEN, HIDDEN), dtype=np.int8),
        "b_ih": rng.integers(-4096, 4096, gates * HIDDEN).astype(np.int32),
        "b_hh": rng.integers(-4096, 4096, gates * HIDDEN).astype(np.int32),
        "w_fc": rng.integers(-128, 128, (CLASSES, HIDDEN), dtype=np.int8),
        "b_fc": rng.integers(-512, 512, CLASSES).astype(np.int32),
    }
    conv = dict(kernel_shape=[1, 3], strides=[1, 2], pads=[0, 1, 0, 1])
    extra, inputs, outputs = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, frames, FEATURES])], []
    if state:
        inits["len"] = np.array([frames], np.int64)
        extra = ["len", "h0"] + (["c0"] if rnn == "lstm" else [])
        inputs.append(helper.make_tensor_value_info("h0", TensorProto.INT8, [1, 1, HIDDEN]))
        outputs.append(helper.make_tensor_value_info("h_n", TensorProto.INT8, [1, 1, HIDDEN]))
        if rnn == "lstm":
            inputs.append(helper.make_tensor_value_info("c0", TensorProto.INT16, [1, 1, HIDDEN]))
            outputs.append(helper.make_tensor_value_info("c_n", TensorProto.INT16, [1, 1, HIDDEN]))
    rnn_outs = ["r", "h_n"] + (["c_n"] if rnn == "lstm" else [])
    nodes = [
        _t("Quant", ["x"], ["q"], "quant", scale_x=4, data_bits=8),
        _t("Conv2dInt", ["q", "w1", "b1"], ["c1"], "conv1", scale_x=4, scale_w=8, scale_o=4, **conv),
        helper.make_node("Relu", ["c1"], ["a1"], name="relu1"),
        _t("Conv2dInt", ["a1", "w2", "b2"], ["c2"], "conv2", scale_x=4, scale_w=9, scale_o=4, **conv),
        helper.make_node("Relu", ["c2"], ["a2"], name="relu2"),
        helper.make_node("Transpose", ["a2"], ["tr"], name="frames", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["tr", "shape"], ["seq"], name="flatten"),
        _t(op, ["seq", *extra, "w_ih", "w_hh", "b_ih", "b_hh"], rnn_outs, rnn, input_size=CHANNELS * width,
           hidden_size=HIDDEN, num_layers=1, batch_first=1, dropout=0.0, go_forward=1, scale_i=4, scale_iw=7,
           scale_hw=7, scale_o=n_o, scale_h=n_o, data_bits=8, parameter_bits=8, o_bits=8),
        _t("LinearInt", ["r", "w_fc", "b_fc"], ["fc"], "fc", scale_x=n_o, scale_w=7, scale_o=3),
        _t("Dequant", ["fc"], ["scores"], "deq", scale_o=3),
    ]
    outputs.insert(0, helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, frames, CLASSES]))
    graph = helper.make_graph(nodes, f"crnn_{rnn}", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12), helper.make_opsetid("thinker", 1)])


def call_floor_model() -> onnx.ModelProto:
    """Quant -> Dequant of one frame: what a call costs with (almost) nothing to compute."""
    nodes = [_t("Quant", ["x"], ["q"], "quant", scale_x=4, data_bits=8), _t("Dequant", ["q"], ["y"], "deq", scale_o=4)]
    graph = helper.make_graph(nodes, "floor", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [1, 1, 1, FEATURES])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, FEATURES])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12), helper.make_opsetid("thinker", 1)])


def _times_ms(fn, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """(median, best) wall ms of ``fn`` over ``repeats`` runs; on a shared machine the best says what the code
    costs, the median what this machine gave it."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def bench(rnn: str, frames: int, repeats: int) -> dict[str, object]:
    x = np.random.default_rng(1).standard_normal((1, 1, frames, FEATURES)).astype(np.float32)
    whole = Simulator(pack_onnx(crnn(frames, rnn)))
    step = Simulator(pack_onnx(crnn(1, rnn, state=True)))
    floor = Simulator(pack_onnx(call_floor_model()))
    frame_views = [np.ascontiguousarray(x[:, :, t:t + 1]) for t in range(frames)]

    (want,) = whole.run([x])
    stream = step.stream()
    got = np.concatenate([stream.run([f])[0] for f in frame_views], 1)
    exact = bool(np.array_equal(got, want))

    def streamed() -> None:
        s = step.stream()
        for f in frame_views:
            s.run([f])

    def calls() -> None:
        for f in frame_views:
            floor.run([f])

    res: dict[str, object] = {"rnn": rnn, "frames": frames, "exact": exact, "macs": whole.macs}
    for key, fn in (("whole", lambda: whole.run([x])), ("stream", streamed), ("call", calls)):
        res[f"{key}_ms"], res[f"{key}_best_ms"] = _times_ms(fn, repeats)
    res["ok"] = exact and res["whole_ms"] <= TARGETS["whole"] and res["stream_ms"] <= TARGETS["stream"]
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rnn", default="gru,lstm", help="recurrent layers to measure: gru, lstm (default both)")
    p.add_argument("--frames", type=int, default=100, help="frames of 10 ms (default 100 = 1 s)")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats, the median is reported")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    results = [bench(r.strip(), args.frames, args.repeats) for r in args.rnn.split(",") if r.strip()]
    if args.json:
        print(json.dumps({"targets_ms": TARGETS, "results": results}, indent=2))
    else:
        print(f"targets: whole <= {TARGETS['whole']} ms, stream <= {TARGETS['stream']} ms (medians; best in brackets)")
        print(f"{'rnn':5} {'frames':>6} {'whole ms':>16} {'stream ms':>16} {'call ms':>16} {'exact':>6}")
        for r in results:
            cells = [f"{r[k + '_ms']:.3f} ({r[k + '_best_ms']:.3f})" for k in ("whole", "stream", "call")]
            print(f"{r['rnn']:5} {r['frames']:>6} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16} {str(r['exact']):>6}"
                  + ("" if r["ok"] else "  MISSED"))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
