"""The standard QDQ exporter: the IR written as plain ONNX that onnxruntime (or any ONNX runtime) runs.

Every quantized IR tensor ``t`` (exponent ``n``: real = q / 2**n) keeps its IR name and its integer
type, and ops compute in float between ``DequantizeLinear`` and ``QuantizeLinear`` nodes with
``scale = 2**-n`` (float32) and zero point 0. Weight initializers stay int8 and are dequantized with
``DequantizeLinear``; int32 biases are dequantized at their own exponent ``n_x + n_w`` with an int32
zero point. The chip ops become ``Conv``, ``ConvTranspose``, ``Gemm`` (``MatMul`` + ``Add`` for
inputs that are not 2-D), ``Mul`` + ``Add`` (BatchNorm2dInt), ``AveragePool``, and ``Add``, ``Sub``,
``Mul``, ``Concat`` (iq*); ``Quant`` becomes ``QuantizeLinear`` and ``Dequant`` ``DequantizeLinear``;
``Requant`` a DequantizeLinear/QuantizeLinear pair; ``iqSigmoid``/``iqTanh`` a ``Gather`` from the chip's
65536-entry int8 table of the int16 input (exact); ``Gather`` (an embedding) the standard ``Gather`` on the int8
table by the integer indices (exact); ``LayerNormInt`` a float layer norm (ReduceMean, Sub, Mul,
Sqrt, Div; not exact: the chip uses an rsqrt table, spec 2.3.4); ``SoftmaxInt``/``LogSoftmaxInt`` a float
``Softmax``/``LogSoftmax`` over the last axis (not exact: the chip's core is a fixed-point HiFi routine, spec 2.4.4);
``BmmInt`` a ``MatMul`` (exact while the integer sums stay below 2^24); ``GRUInt``/``LSTMInt`` the standard
``GRU``/``LSTM`` on dequantized weights (not exact: the chip's gates are fixed-point, spec 2.1.4, 2.2.4).
Default-domain nodes whose inputs are all float (float islands, e.g. Dequant -> Sigmoid -> Quant)
are copied unchanged. Each op node carries its IR node's name, the nodes around it add
``.quantize``, ``.dequantize``, ``.round_half_up``; graph input and output names and symbolic
dimensions (``N``) are the IR's. The lowering of each IR op type is one small function in
:data:`LOWERINGS`; an op type without one is an :class:`~lnn_core.errors.ExportError` naming the node.

Opset 13: the lowest default-domain opset that covers everything written here (Squeeze/Unsqueeze
with ``axes`` as an input, Clip with min/max inputs, and the float-island nodes, which torch writes
at opset 13). Graphs holding int16 activations are written at opset 21, the first with 16-bit
QuantizeLinear (float-island reductions then get their ``axes`` as an input, as opset 18 wants);
no opset has a QuantizeLinear to int32, so int32 activations are refused.

The known difference, and what the writer does about it. onnxruntime's ``QuantizeLinear`` rounds
half to even where the chip rounds half up (``floor(v + 0.5)``, spec 1.2), and a plain QDQ graph
rounds an iqAdd's float sum once where the chip rescales each operand (half up) and then adds, so
outputs can differ by one step on ties. Ties are not rare: every rescale by a small shift (an add
operand, a cat input, a 2x2 average) meets one for a large share of its values, and in the plain
form about half of a small CNN's outputs end up one or more steps off. By default
(``round_half_up=True``) the writer therefore

- adds half a grid step before each QuantizeLinear that can meet a tie: ``DQ -> Conv ->
  Add(2**-(g+1)) -> Q``, ``g`` the exponent whose multiples the exact result is (``n_x + n_w`` for
  a conv). A tie moves up, every other value stays on its side of the rounding boundary;
- rescales iqAdd/iqSub operands and iqCat inputs one by one, as the chip does;
- writes ``Quant`` as the chip computes it in float32, ``floor(x * 2**n + 0.5) * 2**-n``
  (Mul, Add, Floor, Mul), before its QuantizeLinear.

onnxruntime then gives the eval-mode model's (and the chip's) integers bit for bit, as long as
its float32 accumulators stay exact (partial sums below 2**24 grid steps; the eval model uses
float64) and float-island ops agree with torch to the last bit. ``round_half_up=False`` writes the
canonical ``DQ -> op -> Q`` pattern that runtimes fuse into int8 kernels, with the rounding
difference above.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lnn_core.errors import ExportError
from lnn_core.graph import Graph, Node, TensorInfo

__all__ = ["write_qdq", "QdqWriter", "OPSET", "OPSET_INT16", "LOWERINGS"]

#: default-domain opset of files whose quantized tensors are all 8-bit.
OPSET = 13
#: first opset with 16-bit QuantizeLinear/DequantizeLinear.
OPSET_INT16 = 21

_ONNX_TYPE = {
    "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8, "int16": TensorProto.INT16, "int32": TensorProto.INT32,
    "int64": TensorProto.INT64, "bool": TensorProto.BOOL,
}
#: dtype of a quantized activation -> the opset its QuantizeLinear needs.
_Q_OPSET = {"int8": OPSET, "uint8": OPSET, "int16": OPSET_INT16}
_DEFAULT_DOMAINS = ("", "ai.onnx")


class QdqWriter:
    """Builds the ONNX graph node by node; one instance per :func:`write_qdq` call.

    A lowering ``fn(w, node)`` (built-in or a plugin's) uses: ``w.dq(t)`` (a float view of IR tensor
    ``t``), ``w.result(op_type, inputs, grid=n, **attrs)`` (emit the float op and quantize its result
    to the node's output, with the chip's half-up rounding on grid ``2**-n``), ``w.exponent(t)``,
    ``w.info(t)``, ``w.derived(name, array, like)`` (a new initializer derived from ``like``) and
    ``w.g`` (the IR graph).
    """

    def __init__(self, graph: Graph, round_half_up: bool) -> None:
        self.g = graph
        self.round_half_up = round_half_up
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, TensorProto] = {}
        self.extra: dict[str, TensorInfo] = {}  # quantized initializers the writer derives (W^T, [C,1,1])
        self.used: set[str] = set(graph.tensors) | {n.name for n in graph.nodes}
        self.float_view: dict[str, str] = {}
        self.consts: dict[tuple[Any, ...], str] = {}
        # activations decide (an int16 initializer such as LayerNormInt's gamma is written as floats)
        self.opset = max([OPSET] + [_Q_OPSET.get(t.dtype, OPSET) for name, t in graph.tensors.items()
                                    if t.exponent is not None and name not in graph.initializers])
        self.node: Node | None = None

    # -- names and constants --------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def const(self, key: tuple[Any, ...], base: str, array: np.ndarray) -> str:
        """A shared initializer (scales, zero points, half steps, axes), created on first use."""
        if key not in self.consts:
            name = self.fresh(base)
            self.inits[name] = numpy_helper.from_array(np.array(array, order="C"), name)
            self.consts[key] = name
        return self.consts[key]

    def scale(self, n: int) -> str:
        """The float32 scalar ``2**-n``."""
        return self.const(("scale", n), f"scale_2^{-n}", np.array(2.0 ** -n, dtype=np.float32))

    def zero_point(self, dtype: str) -> str:
        return self.const(("zero_point", dtype), f"zero_point_{dtype}", np.zeros((), dtype=dtype))

    def float_const(self, base: str, value: float) -> str:
        return self.const(("float", base, value), base, np.array(value, dtype=np.float32))

    def int64s(self, base: str, values: list[int]) -> str:
        return self.const(("int64", base, tuple(values)), base, np.array(values, dtype=np.int64))

    def derived(self, name: str, array: np.ndarray, like: str) -> str:
        """A new integer initializer with the exponent of ``like`` (a reshaped or transposed weight)."""
        out = self.fresh(name)
        self.inits[out] = numpy_helper.from_array(np.array(array, order="C"), out)
        self.extra[out] = TensorInfo(out, self.info(like).dtype, tuple(array.shape), self.info(like).exponent)
        return out

    # -- tensors ------------------------------------------------------------------------------------
    def info(self, name: str) -> TensorInfo:
        info = self.extra.get(name) or self.g.tensors.get(name)
        if info is None:
            raise self.error(f"reads tensor {name!r}, which the IR does not describe", {"tensor": name},
                             "this is a bug in the IR writer of this op; please report it")
        return info

    def quantized(self, name: str) -> bool:
        info = self.extra.get(name) or self.g.tensors.get(name)
        return info is not None and info.exponent is not None

    def exponent(self, name: str) -> int:
        n = self.info(name).exponent
        if n is None:
            raise self.error(f"needs a quantized tensor, but {name!r} has no exponent", {"tensor": name},
                             "this is a bug in the IR writer of this op; please report it")
        return n

    def qtype(self, name: str) -> str:
        """The integer type of a quantized tensor, checked against what Q/DQ can carry."""
        info = self.info(name)
        is_init = name in self.g.initializers or name in self.extra
        if info.dtype == "int32" and is_init:
            return "int32"
        if info.dtype not in _Q_OPSET:
            raise self.error(f"has tensor {name!r} of type {info.dtype}, which QuantizeLinear cannot write",
                             {"tensor": name, "rule": "activations int8/uint8 (opset 13) or int16 (opset 21); "
                                                      "int32 only for bias initializers"},
                             "give this op 8-bit outputs (act_bits=8), or export in the csk60xx dialect")
        return info.dtype

    def dq(self, name: str) -> str:
        """The float view of ``name``: one DequantizeLinear per quantized tensor, the tensor itself otherwise."""
        if not self.quantized(name):
            return name
        if name not in self.float_view:
            self.emit_dq(name, self.fresh(f"{name}.dq"), self.fresh(f"{name}.dequantize"))
        return self.float_view[name]

    def emit_dq(self, name: str, out: str, node_name: str) -> None:
        dtype = self.qtype(name)
        self.add("DequantizeLinear", [name, self.scale(self.exponent(name)), self.zero_point(dtype)], [out],
                 name=node_name)
        self.float_view.setdefault(name, out)

    def emit_q(self, src: str, out: str, node_name: str) -> None:
        dtype = self.qtype(out)
        self.add("QuantizeLinear", [src, self.scale(self.exponent(out)), self.zero_point(dtype)], [out],
                 name=node_name)

    def add(self, op_type: str, inputs: list[str], outputs: list[str], *, name: str, **attrs: Any) -> None:
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))

    def half_up(self, src: str, grid: int | None, n_out: int, base: str) -> str:
        """``src + 2**-(grid + 1)`` when rounding ``src`` (a multiple of ``2**-grid``) to ``2**-n_out`` can tie.

        A tie moves up by half a grid step and every other value stays on its side of the rounding
        boundary, so QuantizeLinear's half-to-even gives the chip's half-up.
        """
        if not self.round_half_up or grid is None or grid <= n_out:
            return src
        out = self.fresh(f"{src}.half_up")
        self.add("Add", [src, self.float_const(f"half_2^{-grid - 1}", 2.0 ** (-grid - 1))], [out],
                 name=self.fresh(f"{base}.round_half_up"))
        return out

    def result(self, op_type: str, inputs: list[str], *, grid: int | None = None, **attrs: Any) -> None:
        """Write the current IR node as ``op_type`` over float ``inputs``, then quantize its output.

        :param grid: the exact float result is a multiple of ``2**-grid`` (None: it needs no rounding).
        """
        node = self.node
        out = node.outputs[0]
        if not self.quantized(out):
            self.add(op_type, inputs, [out], name=node.name, **attrs)
            return
        pre = self.fresh(f"{out}.f32")
        self.add(op_type, inputs, [pre], name=node.name, **attrs)
        pre = self.half_up(pre, grid, self.exponent(out), node.name)
        self.emit_q(pre, out, self.fresh(f"{node.name}.quantize"))

    def rescaled(self, name: str, n_out: int, tag: str) -> str:
        """The float view of ``name`` rescaled to ``2**-n_out`` on its own (spec 1.3), half up."""
        n = self.exponent(name)
        if n <= n_out or not self.round_half_up:
            return self.dq(name)
        node, info = self.node, self.info(name)
        q = self.fresh(f"{node.outputs[0]}.{tag}")
        self.extra[q] = TensorInfo(q, info.dtype, info.shape, n_out)
        self.emit_q(self.half_up(self.dq(name), n, n_out, f"{node.name}.{tag}"), q,
                    self.fresh(f"{node.name}.{tag}.quantize"))
        return self.dq(q)

    def error(self, what: str, details: dict[str, Any] | None = None, hint: str | None = None) -> ExportError:
        node = self.node
        head = f"node {node.name!r} ({node.op_type}) {what}" if node is not None else what
        return ExportError(head, {**(details or {}), "dialect": "qdq (standard ONNX)"}, hint,
                           node=node.name if node is not None else None, dialect="qdq")

    def attrs(self, *keep: str) -> dict[str, Any]:
        return {k: self.node.attrs[k] for k in keep if k in self.node.attrs}

    def acc_grid(self, *names: str) -> int:
        """Grid of ``x * w (+ b)``: ``n_x + n_w``, finer if the bias is finer."""
        x, w, *rest = names
        grid = self.exponent(x) + self.exponent(w)
        return max([grid] + [self.exponent(b) for b in rest if b])


# -- lowerings: one small function per IR op type -------------------------------------------------

def _quant(w: QdqWriter, node: Node) -> None:
    """Float data entering the quantized graph: QuantizeLinear, after the chip's float32 rounding
    ``floor(x * 2**n + 0.5)`` (spec 3.1) when rounding half up (the values then lie on the grid)."""
    x, y = node.inputs[0], node.outputs[0]
    if w.round_half_up:
        n = w.exponent(y)
        steps = [("Mul", w.scale(-n), "to_steps"),
                 ("Add", w.float_const("half", 0.5), "round_half_up"),
                 ("Floor", None, "floor"),
                 ("Mul", w.scale(n), "from_steps")]
        for op_type, operand, tag in steps:
            out = w.fresh(f"{y}.{tag}")
            w.add(op_type, [x] + ([operand] if operand else []), [out], name=w.fresh(f"{node.name}.{tag}"))
            x = out
    w.emit_q(x, y, node.name)


def _dequant(w: QdqWriter, node: Node) -> None:
    w.emit_dq(node.inputs[0], node.outputs[0], node.name)


def _conv(w: QdqWriter, node: Node) -> None:
    w.result("Conv", [w.dq(t) for t in node.inputs if t], grid=w.acc_grid(*node.inputs),
             **w.attrs("kernel_shape", "strides", "pads", "dilations", "group"))


def _conv_transpose(w: QdqWriter, node: Node) -> None:
    w.result("ConvTranspose", [w.dq(t) for t in node.inputs if t], grid=w.acc_grid(*node.inputs),
             **w.attrs("kernel_shape", "strides", "pads", "dilations", "group", "output_padding"))


def _linear(w: QdqWriter, node: Node) -> None:
    """``Gemm(transB=1)`` for 2-D inputs; otherwise ``MatMul`` with the transposed int8 weight, ``Add`` bias."""
    x, wt = node.inputs[:2]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    grid = w.acc_grid(*node.inputs)
    shape = w.info(x).shape
    if shape is not None and len(shape) == 2:
        w.result("Gemm", [w.dq(t) for t in (x, wt, bias) if t], grid=grid, transB=1)
        return
    w_t = w.derived(f"{wt}.T", w.g.initializers[wt].T, wt)
    if bias is None:
        w.result("MatMul", [w.dq(x), w.dq(w_t)], grid=grid)
        return
    mm = w.fresh(f"{node.outputs[0]}.matmul")
    w.add("MatMul", [w.dq(x), w.dq(w_t)], [mm], name=w.fresh(f"{node.name}.matmul"))
    # the bias at the output's rank ([1, ..., 1, N]): onnxruntime then leaves MatMul + Add alone (its
    # MatMulAddFusion into Reshape + Gemm inserts a QuantizeLinear it cannot type at opset 21)
    b = w.g.initializers[bias]
    b_nd = w.derived(f"{bias}.nd", b.reshape((1,) * (len(shape) - 1) + b.shape) if shape is not None else b, bias)
    w.result("Add", [mm, w.dq(b_nd)], grid=grid)


def _batchnorm(w: QdqWriter, node: Node) -> None:
    """``y = x * alpha[c] + beta[c]``: Mul and Add with the per-channel initializers as ``[C, 1, 1]``."""
    x, alpha, beta = node.inputs[:3]
    shape = w.info(x).shape
    rank = len(shape) if shape is not None else 4

    def channels(name: str) -> str:
        arr = w.g.initializers[name]
        return w.dq(w.derived(f"{name}.per_channel", arr.reshape((-1,) + (1,) * (rank - 2)), name))

    prod = w.fresh(f"{node.outputs[0]}.scaled")
    w.add("Mul", [w.dq(x), channels(alpha)], [prod], name=w.fresh(f"{node.name}.mul"))
    w.result("Add", [prod, channels(beta)], grid=w.acc_grid(x, alpha, beta))


def _avgpool(w: QdqWriter, node: Node) -> None:
    """AveragePool over the window, padding counted (the chip divides by ``kh * kw``)."""
    x, y = node.inputs[0], node.outputs[0]
    area = math.prod(int(k) for k in node.attrs["kernel_shape"])
    # s / area rounds to 2**-n_o: ties are 1/(2 area) steps away from any other value
    grid = max(w.exponent(x), w.exponent(y)) + math.ceil(math.log2(area)) + 1 if area > 1 else None
    w.result("AveragePool", [w.dq(x)], grid=grid, count_include_pad=1,
             **w.attrs("kernel_shape", "strides", "pads", "ceil_mode"))


def _add_sub(op_type: str) -> Callable[[QdqWriter, Node], None]:
    def lower(w: QdqWriter, node: Node) -> None:
        n_o = w.exponent(node.outputs[0])
        w.result(op_type, [w.rescaled(t, n_o, f"rescale{i}") for i, t in enumerate(node.inputs[:2])])

    lower.__doc__ = f"``{op_type}`` of the operands, each rescaled to the output exponent first (spec 3.14)."
    return lower


def _mul(w: QdqWriter, node: Node) -> None:
    x, y = node.inputs[:2]
    w.result("Mul", [w.dq(x), w.dq(y)], grid=w.exponent(x) + w.exponent(y))


def _cat(w: QdqWriter, node: Node) -> None:
    """Concat of the inputs, each rescaled to the output exponent on its own (spec 3.18)."""
    n_o = w.exponent(node.outputs[0])
    ins = [w.half_up(w.dq(t), w.exponent(t), n_o, f"{node.name}.input{i}") for i, t in enumerate(node.inputs)]
    w.result("Concat", ins, axis=int(node.attrs.get("dim", node.attrs.get("axis", 0))))


def _clip(w: QdqWriter, node: Node) -> None:
    """Clip with int8 scalar bounds at the input exponent (spec 3.13): float bounds ``q * 2**-n``."""
    x = node.inputs[0]
    n = w.exponent(x)
    bounds = []
    for t in node.inputs[1:3]:
        if not t or w.quantized(t) or t not in w.g.initializers:
            bounds.append(w.dq(t) if t else "")
            continue
        q = int(np.asarray(w.g.initializers[t]).reshape(()))
        bounds.append(w.float_const(f"{t}.float", q * 2.0 ** -n))
    w.result("Clip", [w.dq(x), *bounds])


def _requant(w: QdqWriter, node: Node) -> None:
    """Requant from int8 to a wider or equal type at a higher exponent: exact in float, saturated by the
    QuantizeLinear (the chip's ``SAT(q << (n_o - n_x))``, spec int8-ops 3.3); a lower exponent rounds half up."""
    x = node.inputs[0]
    w.result("Identity", [w.dq(x)], grid=w.exponent(x))


def _table(kind: str) -> Callable[[QdqWriter, Node], None]:
    def lower(w: QdqWriter, node: Node) -> None:
        from .pwl import int16_table

        x, y = node.inputs[0], node.outputs[0]
        if w.info(x).dtype != "int16" or w.exponent(y) != 7:
            raise w.error(f"reads {w.info(x).dtype} and writes exponent {w.exponent(y)}",
                          {"rule": "iqSigmoid / iqTanh read int16 and write int8 at exponent 7"},
                          "re-export the model with lnn export (it requantizes the input to int16)")
        table = w.const(("pwl", kind, w.exponent(x)), f"{kind}_table_2^{w.exponent(x)}",
                        int16_table(kind, w.exponent(x)))
        wide = w.fresh(f"{x}.int32")
        w.add("Cast", [x], [wide], name=w.fresh(f"{node.name}.cast"), to=TensorProto.INT32)
        index = w.fresh(f"{x}.index")
        w.add("Add", [wide, w.const(("int32", 32768), "offset_32768", np.array(32768, np.int32))], [index],
              name=w.fresh(f"{node.name}.index"))
        w.add("Gather", [table, index], [y], name=node.name, axis=0)

    lower.__doc__ = (f"iq{kind.capitalize()}: a Gather from the 65536-entry int8 table of the chip's {kind} at the "
                     "input's exponent (exact: the int8 output at exponent 7 for every int16 input).")
    return lower


def _same_scale(op_type: str, *, axes_input: bool = False) -> Callable[[QdqWriter, Node], None]:
    def lower(w: QdqWriter, node: Node) -> None:
        attrs = dict(node.attrs)
        inputs = [w.dq(node.inputs[0]), *node.inputs[1:]]
        if axes_input and "axes" in attrs:  # an attribute before opset 13, an input since
            inputs.append(w.int64s(f"{node.name}.axes", [int(a) for a in attrs.pop("axes")]))
        w.result(op_type, inputs, **attrs)

    lower.__doc__ = f"``{op_type}`` between DequantizeLinear and QuantizeLinear at the same exponent."
    return lower


def _pad(w: QdqWriter, node: Node) -> None:
    """iqPad as a standard Pad with zeros between DequantizeLinear and QuantizeLinear (exact: 0 at any scale)."""
    w.result("Pad", [w.dq(node.inputs[0]), node.inputs[1]], mode="constant")


#: IR op type -> lowering ``fn(writer, node)``. Default-domain nodes whose inputs are all float
#: (float islands) are copied unchanged and need no entry.
def _layernorm(w: QdqWriter, node: Node) -> None:
    """LayerNormInt as a float layer norm over the rows between DequantizeLinear and QuantizeLinear (ReduceMean,
    Sub, Mul, Sqrt, Div with the chip's eps 1e-5; gamma and beta as float32 constants of their integers). Not exact:
    the chip normalizes with a 768-entry rsqrt table (spec 2.3.4); most outputs agree, the rest are one step off."""
    x, gamma, beta = node.inputs[:3]
    shape = w.info(x).shape
    g_arr, b_arr = w.g.initializers[gamma], w.g.initializers[beta]
    two = shape is not None and len(shape) >= 2 and g_arr.size != shape[-1]
    axes = [-2, -1] if two else [-1]
    row = tuple(shape[-2:]) if two else (g_arr.size,)
    g_f = w.const(("layernorm", gamma), f"{gamma}.f32",
                  (g_arr.astype(np.float64) * 2.0 ** -w.exponent(gamma)).astype(np.float32).reshape(row))
    b_f = w.const(("layernorm", beta), f"{beta}.f32",
                  (b_arr.astype(np.float64) * 2.0 ** -w.exponent(beta)).astype(np.float32).reshape(row))
    base = node.outputs[0]

    def step(op_type: str, inputs: list[str], tag: str, **attrs: Any) -> str:
        out = w.fresh(f"{base}.{tag}")
        w.add(op_type, inputs, [out], name=w.fresh(f"{node.name}.{tag}"), **attrs)
        return out

    def mean(src: str, tag: str) -> str:
        if w.opset >= 18:
            return step("ReduceMean", [src, w.int64s(f"{node.name}.axes", axes)], tag, keepdims=1)
        return step("ReduceMean", [src], tag, axes=axes, keepdims=1)

    xf = w.dq(x)
    centred = step("Sub", [xf, mean(xf, "mean")], "centred")
    var = mean(step("Mul", [centred, centred], "square"), "var")
    std = step("Sqrt", [step("Add", [var, w.float_const("layernorm_eps", 1e-5)], "var_eps")], "std")
    scaled = step("Mul", [step("Div", [centred, std], "normalized"), g_f], "scaled")
    w.result("Add", [scaled, b_f])


#: PyTorch gate blocks -> ONNX gate blocks: GRU r, z, n -> z, r, h; LSTM i, f, g, o -> i, o, f, c
_RNN_GATES = {"GRUInt": ("GRU", (1, 0, 2)), "LSTMInt": ("LSTM", (0, 3, 1, 2))}


def _rnn(w: QdqWriter, node: Node) -> None:
    """GRUInt / LSTMInt as the standard ONNX ``GRU`` (``linear_before_reset=1``, PyTorch's form) / ``LSTM`` on the
    dequantized input, weights and biases (gate blocks reordered to ONNX's), one direction per node, time first (a
    ``batch_first`` node's int8 input and output are transposed); lengths become ``sequence_lens`` and an initial
    state ``initial_h`` / ``initial_c`` (dequantized); each output is quantized at its exponent. Not
    exact: the chip's gates are 16-segment fixed-point functions with Q11 inputs (spec 2.1.4, 2.2.4); eval and this
    graph agree to a few steps."""
    op_type, order = _RNN_GATES[node.op_type]
    x, w_ih, w_hh, b_ih, b_hh = node.inputs[:5]
    hid = int(w.g.initializers[w_hh].shape[1])
    base = node.outputs[0]

    def blocks(name: str) -> np.ndarray:
        a = w.g.initializers[name].astype(np.float64) * 2.0 ** -w.exponent(name)
        return np.concatenate([a[k * hid:(k + 1) * hid] for k in order], 0).astype(np.float32)

    wi = w.const(("rnn", w_ih), f"{w_ih}.onnx", blocks(w_ih)[None])
    wh = w.const(("rnn", w_hh), f"{w_hh}.onnx", blocks(w_hh)[None])
    bb = w.const(("rnn", b_ih), f"{b_ih}.onnx", np.concatenate([blocks(b_ih), blocks(b_hh)])[None])

    def step(op: str, inputs: list[str], tag: str, n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [w.fresh(f"{base}.{tag}{k if n_out > 1 else ''}") for k in range(n_out)]
        w.add(op, inputs, outs, name=w.fresh(f"{node.name}.{tag}"), **attrs)
        return outs

    batch_first = bool(node.attrs.get("batch_first", 0))
    xq = x
    if batch_first:  # transposed as int8 (onnxruntime's QDQ transpose optimizer mistypes a float-side Transpose)
        info = w.info(x)
        xq = w.fresh(f"{x}.time_first")
        w.g.add_tensor(xq, info.dtype, None if info.shape is None else (info.shape[1], info.shape[0],
                                                                          *info.shape[2:]), info.exponent)
        w.add("Transpose", [x], [xq], name=w.fresh(f"{node.name}.time_first"), perm=[1, 0, 2])
    direction = "forward" if int(node.attrs.get("go_forward", 1)) else "reverse"
    extra = {"linear_before_reset": 1} if op_type == "GRU" else {}
    state = []  # lengths (ONNX's sequence_lens, int32), then the dequantized initial state (h0, c0)
    if len(node.inputs) > 5:
        state = step("Cast", [node.inputs[5]], "sequence_lens", to=TensorProto.INT32) + [
            w.dq(name) for name in node.inputs[6:]]
    outs = step(op_type, [w.dq(xq), wi, wh, bb, *state], op_type.lower(), n_out=2 if op_type == "GRU" else 3,
                hidden_size=hid, direction=direction, **extra)
    ys = [step("Squeeze", [outs[0], w.int64s(f"{node.name}.axis1", [1])], "squeeze")[0], *outs[1:]]  # [T, B, H]
    for k, (src, out) in enumerate(zip(ys, node.outputs)):
        if not out:
            continue
        if k or not batch_first:
            w.emit_q(src, out, w.fresh(f"{node.name}.quantize"))
            continue
        info = w.info(out)
        yt = w.fresh(f"{out}.time_first")
        w.g.add_tensor(yt, info.dtype, None if info.shape is None else (info.shape[1], info.shape[0],
                                                                          *info.shape[2:]), info.exponent)
        w.emit_q(src, yt, w.fresh(f"{node.name}.quantize"))
        w.add("Transpose", [yt], [out], name=w.fresh(f"{node.name}.batch_first"), perm=[1, 0, 2])


def _softmax(op_type: str) -> Callable[[QdqWriter, Node], None]:
    def lower(w: QdqWriter, node: Node) -> None:
        w.result(op_type, [w.dq(node.inputs[0])], axis=-1)

    lower.__doc__ = (f"``{op_type}`` over the last axis in float between DequantizeLinear and QuantizeLinear. Not "
                     "exact: the chip's core is a fixed-point HiFi routine (spec 2.4.4); most outputs agree with "
                     "eval, the rest are one step off.")
    return lower


def _bmm(w: QdqWriter, node: Node) -> None:
    """BmmInt as ``MatMul`` of the dequantized operands (exact in float32 while the integer sums stay below 2^24,
    i.e. K < 1024), rounded half up to the output exponent (spec 2.9.4)."""
    x, y = node.inputs[:2]
    w.result("MatMul", [w.dq(x), w.dq(y)], grid=w.exponent(x) + w.exponent(y))


def _gather(w: QdqWriter, node: Node) -> None:
    """Gather (an embedding): the standard ``Gather`` on the int8 table by the integer indices, writing the int8
    output itself (its consumers dequantize it at the table's exponent). Exact: a row copy, as on the chip."""
    table, idx = node.inputs[:2]
    y = node.outputs[0]
    if w.info(idx).dtype not in ("int32", "int64") or w.exponent(y) != w.exponent(table):
        raise w.error(f"reads {w.info(idx).dtype} indices and writes exponent {w.exponent(y)}",
                      {"rule": "Gather reads integer indices and writes the table's integers at its exponent"},
                      "re-export the model with lnn export")
    w.add("Gather", [table, idx], [y], name=node.name, axis=0)


LOWERINGS: dict[str, Callable[[QdqWriter, Node], None]] = {
    "Quant": _quant,
    "Dequant": _dequant,
    "Conv2dInt": _conv,
    "Conv1dInt": _conv,
    "ConvTranspose2dInt": _conv_transpose,
    "LinearInt": _linear,
    "BatchNorm2dInt": _batchnorm,
    "AvgPool2dInt": _avgpool,
    "iqAdd": _add_sub("Add"),
    "iqSub": _add_sub("Sub"),
    "iqMul": _mul,
    "iqCat": _cat,
    "iqPad": _pad,
    "Clip": _clip,
    "Requant": _requant,
    "iqSigmoid": _table("sigmoid"),
    "iqTanh": _table("tanh"),
    "LayerNormInt": _layernorm,
    "SoftmaxInt": _softmax("Softmax"),
    "LogSoftmaxInt": _softmax("LogSoftmax"),
    "BmmInt": _bmm,
    "GRUInt": _rnn,
    "LSTMInt": _rnn,
    "Gather": _gather,
    "Relu": _same_scale("Relu"),
    "MaxPool": _same_scale("MaxPool"),
    "Reshape": _same_scale("Reshape"),
    "Flatten": _same_scale("Flatten"),
    "Transpose": _same_scale("Transpose"),
    "Squeeze": _same_scale("Squeeze", axes_input=True),
    "Unsqueeze": _same_scale("Unsqueeze", axes_input=True),
    "Slice": _same_scale("Slice"),
    "Identity": _same_scale("Identity"),
}


#: reductions whose ``axes`` attribute became an input at opset 18 (ReduceSum's did at 13).
_AXES_INPUT_SINCE_18 = frozenset({"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                  "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSumSquare"})


def _copy_float_node(w: QdqWriter, node: Node) -> None:
    """A float-island node as torch wrote it (opset 13); reductions' axes move to an input at opset 18+."""
    attrs = {k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v for k, v in node.attrs.items()}
    inputs = list(node.inputs)
    if w.opset >= 18 and node.op_type in _AXES_INPUT_SINCE_18 and "axes" in attrs:
        inputs = [inputs[0], w.int64s(f"{node.name}.axes", [int(a) for a in attrs.pop("axes")])]
    w.add(node.op_type, inputs, list(node.outputs), name=node.name, **attrs)


def _value_info(info: TensorInfo) -> onnx.ValueInfoProto:
    shape = None if info.shape is None else [d if isinstance(d, (int, str)) else None for d in info.shape]
    return helper.make_tensor_value_info(info.name, _ONNX_TYPE[info.dtype], shape)


def write_qdq(graph: Graph, *, round_half_up: bool = True,
              lowerings: Mapping[str, Callable[[QdqWriter, Node], None]] | None = None) -> onnx.ModelProto:
    """Write ``graph`` as standard ONNX with QuantizeLinear/DequantizeLinear (default domain only).

    :param graph: the IR, as made by :func:`lnn_core.exporter.to_ir` or a dialect reader.
    :param round_half_up: add the half-step ``Add`` nodes that make ties round as on the chip
        (module docstring); False writes the canonical, fusable ``DQ -> op -> Q`` pattern.
    :param lowerings: extra ``IR op type -> fn(writer, node)`` lowerings (plugin ops register them
        with ``registry.add_node_writer("qdq", op_type, fn)``); a built-in op cannot be replaced.
    :return: the model: opset 13 (21 when it holds int16 activations), IR version the lowest
        that opset allows.
    :raises ExportError: an op without a QDQ lowering (naming the node), or a tensor type that
        QuantizeLinear cannot write.
    """
    table = dict(LOWERINGS)
    for op_type, fn in (lowerings or {}).items():
        if op_type in LOWERINGS:
            raise ExportError(f"a plugin redefines the QDQ lowering of the built-in op {op_type!r}", {},
                              "give the plugin's op its own IR op type", node=None, dialect="qdq")
        table[op_type] = fn
    w = QdqWriter(graph, round_half_up)
    for node in graph.nodes:
        w.node = node
        data = [t for t in node.inputs if t and t not in graph.initializers]
        if node.domain in _DEFAULT_DOMAINS and not any(w.quantized(t) for t in data):
            _copy_float_node(w, node)
            continue
        lower = table.get(node.op_type)
        if lower is None:
            raise w.error("has no lowering to standard QDQ ONNX",
                          {"domain": node.domain or "ai.onnx (default)", "supported": ", ".join(table)},
                          "replace the op with a supported one, or export in the csk60xx dialect")
        lower(w, node)
    w.node = None
    read = {t for n in w.nodes for t in n.input}
    written = {t for n in w.nodes for t in n.output}
    for name, arr in graph.initializers.items():
        if name in read and name not in w.inits:
            w.inits[name] = numpy_helper.from_array(np.array(arr, order="C"), name)
    boundary = set(graph.inputs) | set(graph.outputs)
    value_info = [_value_info(info) for name, info in graph.tensors.items()
                  if name in written and name not in boundary and info.shape is not None]
    g = helper.make_graph(w.nodes, graph.name, [_value_info(graph.tensors[t]) for t in graph.inputs],
                          [_value_info(graph.tensors[t]) for t in graph.outputs],
                          [t for k, t in w.inits.items() if k in read], value_info=value_info)
    opsets = [helper.make_opsetid("", w.opset)]
    model = helper.make_model(g, opset_imports=opsets, producer_name="lnn",
                              doc_string="lnn int8 model in standard QDQ form: power-of-two scales, zero point 0")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    props = {f"lnn.{k}": str(graph.meta[k]) for k in ("target",) if graph.meta.get(k) is not None}
    props["lnn.round_half_up"] = str(round_half_up).lower()
    helper.set_model_props(model, props)
    return model
