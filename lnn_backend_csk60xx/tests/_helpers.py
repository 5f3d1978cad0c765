"""Test helpers: build small CSK60xx-dialect ONNX models, run them, and a numpy reference of the integer maths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
LINGER_DEMO = SHARED / "data" / "linger-demo"


def tnode(op: str, inputs: list[str], outputs: list[str], name: str | None = None, **attrs):
    """A thinker-domain node; scale attributes are given as exponents ``n`` and written as ``2.0**n``."""
    written = {}
    for k, v in attrs.items():
        written[k] = float(2.0 ** v) if k.startswith("scale_") else v
    if op != "Dequant":
        written.setdefault("platform_quant", "luna_quant")
    return helper.make_node(op, inputs, outputs, name=name or f"{op}_{outputs[0]}", domain="thinker", **written)


def snode(op: str, inputs: list[str], outputs: list[str], name: str | None = None, **attrs):
    return helper.make_node(op, inputs, outputs, name=name or f"{op}_{outputs[0]}", **attrs)


def make_model(nodes, inputs: dict[str, tuple[int, ...]], outputs: dict[str, tuple[int, ...] | None],
               inits: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v) if v else None) for k, v in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 12), helper.make_opsetid("thinker", 1)])


def quantize(x: np.ndarray, n: int) -> np.ndarray:
    """Reference Quant: SAT_8(floor(2^n x + 0.5)) in float32."""
    t = np.floor(np.float32(2.0 ** n) * x.astype(np.float32) + np.float32(0.5))
    return np.clip(t, -128, 127).astype(np.int8)


def shr(v, s: int) -> np.ndarray:
    """Reference SHR on int64 (spec 1.2): floor(v / 2^s + 0.5) for s > 0, exact left shift for s < 0."""
    v = np.asarray(v, dtype=np.int64)
    if s > 0:
        return (v + (np.int64(1) << np.int64(s - 1))) >> np.int64(s)
    return v << np.int64(-s)


def sat(v, bits: int = 8) -> np.ndarray:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.clip(v, lo, hi).astype({8: np.int8, 16: np.int16, 32: np.int32}[bits])


def conv2d_ref(x, w, b, stride, pads, dil, group, shift, bits=8):
    """Exact int64 NCHW convolution + RQ (pads = [top, left, bottom, right])."""
    x = x.astype(np.int64)
    w = w.astype(np.int64)
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.zeros((n, c, h + pads[0] + pads[2], wd + pads[1] + pads[3]), np.int64)
    xp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd] = x
    ho = (xp.shape[2] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (xp.shape[3] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, m, ho, wo), np.int64)
    mg = m // group
    for o in range(m):
        g = o // mg
        for ky in range(kh):
            for kx in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, ky * dil[0]:ky * dil[0] + stride[0] * (ho - 1) + 1:stride[0],
                           kx * dil[1]:kx * dil[1] + stride[1] * (wo - 1) + 1:stride[1]]
                out[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, ky, kx])
    if b is not None:
        out += b.astype(np.int64)[None, :, None, None]
    return sat(shr(out, shift), bits)


def ir_graph(name: str = "g"):
    """An empty IR graph (built directly, without ONNX)."""
    from lnn_core.graph import Graph

    return Graph(name=name)


def ir_conv_graph(x_shape, w, b=None, *, stride=(1, 1), pads=(1, 1, 1, 1), group=1, n_x=4, n_w=7, n_o=3,
                  relu=False, name="conv"):
    """x (float) -> Quant(n_x) -> Conv2dInt [-> Relu] -> Dequant: an IR graph with the given int8 weights."""
    from lnn_core.graph import Node

    g = ir_graph()
    g.add_tensor("x", "float32", x_shape)
    g.inputs = ["x"]
    g.add_initializer("w", w, n_w)
    inputs = ["q", "w"]
    if b is not None:
        g.add_initializer("b", b, n_x + n_w)
        inputs.append("b")
    g.add_node(Node("quant", "Quant", ["x"], ["q"], {"data_bits": 8}, "thinker"))
    g.add_tensor("q", "int8", None, n_x)
    g.add_node(Node(name, "Conv2dInt", inputs, ["c"], {"kernel_shape": list(w.shape[2:]), "strides": list(stride),
                                                       "pads": list(pads), "dilations": [1, 1], "group": group},
                    "thinker"))
    g.add_tensor("c", "int8", None, n_o)
    last = "c"
    if relu:
        g.add_node(Node("relu", "Relu", ["c"], ["r"], {}, ""))
        last = "r"
    g.add_node(Node("deq", "Dequant", [last], ["y"], {}, "thinker"))
    g.outputs = ["y"]
    return g
