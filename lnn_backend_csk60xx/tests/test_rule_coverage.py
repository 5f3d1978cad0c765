"""Every CSK60xx rule fires in some test, and stays quiet at its limit.

The pack-time rules (:data:`PACK_RULES`: shapes, dtypes and exponents after inference) are exercised here,
torch-free, through :func:`check_graph` on small IR graphs. The rules that also judge PyTorch modules at
``lnn.init`` (:data:`RULES`) are exercised in ``tests/test_module_rule_coverage.py`` on tiny torch models;
:data:`MODULE_RULES` below declares them, and that file checks that its cases cover exactly this
declaration. So a rule added to either index without a case fails the suite: a pack rule in this file
(every env), a module rule here (declaration) and in the torch file (its cases).

Each :class:`Case` builds a graph twice: just over the limit (the rule fires on the named node, with its
limit, actual value, hint and rule text) and at the limit (the graph checks clean). The module rules judge IR
nodes too (:data:`MODULE_CASES_ON_IR`, or :data:`NOT_ON_IR` says why one cannot). :data:`UNREAD_LIMITS` lists
the limits of ``targets/csk60xx.toml`` that no rule reads while judging all these cases.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import attrs
import numpy as np
import pytest

from lnn_backend_csk60xx.check import check_graph
from lnn_backend_csk60xx.rules import PACK_RULES, RULES, rules_for
from lnn_backend_csk60xx.target import load_target
from lnn_core.graph import Graph, Node
from lnn_core.rules import Rule

#: the rules that also judge PyTorch modules; tests/test_module_rule_coverage.py makes each of them fire
MODULE_RULES = frozenset({
    "csk60xx.conv.kernel_size", "csk60xx.conv.stride", "csk60xx.conv.pad", "csk60xx.conv.kernel_ge_stride",
    "csk60xx.conv.dilation", "csk60xx.conv.padding_mode", "csk60xx.conv.groups", "csk60xx.conv.bits",
    "csk60xx.deconv.kernel_size", "csk60xx.deconv.stride", "csk60xx.deconv.pad", "csk60xx.deconv.kernel_for_stride",
    "csk60xx.deconv.groups", "csk60xx.deconv.out_bits", "csk60xx.pool.pad",
    "csk60xx.linear.bits", "csk60xx.linear.in_features", "csk60xx.pool.bits", "csk60xx.pool.kernel_size",
    "csk60xx.pool.ceil_mode", "csk60xx.avgpool.divisor", "csk60xx.avgpool.ties", "csk60xx.eltwise.bits",
    "csk60xx.sub.unverified",
    "csk60xx.activation.input_bits",
    "csk60xx.layernorm.bits", "csk60xx.layernorm.row", "csk60xx.layernorm.eps", "csk60xx.layernorm.dims",
    "csk60xx.softmax.dim", "csk60xx.softmax.row", "csk60xx.softmax.input_bits", "csk60xx.bmm.bits",
    "csk60xx.bmm.rank", "csk60xx.bmm.right_matrix",
    "csk60xx.gather.bits", "csk60xx.gather.max_norm", "csk60xx.slice.index", "csk60xx.pad.form",
    "csk60xx.gru.direction",
})

#: fired by shape inference when an op's inputs are invalid; some dtype rules can only fire along with it
SHAPE = "csk60xx.graph.shape"

_ONNX_OPS = ("Relu", "Clip", "MaxPool", "Reshape", "Transpose", "Slice", "Flatten", "Squeeze", "Unsqueeze")


class G:
    """A small IR graph under construction: float inputs, int8 initializers, one output per node."""

    def __init__(self) -> None:
        self.graph = Graph(name="rules")

    def input(self, name: str, shape: tuple[int, ...], dtype: str = "float32") -> str:
        self.graph.add_tensor(name, dtype, shape)
        self.graph.inputs.append(name)
        return name

    def const(self, name: str, array: np.ndarray, exponent: int | None = None) -> str:
        self.graph.add_initializer(name, np.asarray(array), exponent)
        return name

    def op(self, name: str, op_type: str, inputs: list[str], exponent: int | None = None, dtype: str = "int8",
           **attrs: object) -> str:
        """Add a node whose output is ``<name>_out`` (inference overwrites its shape and dtype)."""
        out = f"{name}_out"
        domain = "" if op_type in _ONNX_OPS else "thinker"
        self.graph.add_node(Node(name, op_type, list(inputs), [out], dict(attrs), domain))
        self.graph.add_tensor(out, dtype, None, exponent)
        self.graph.outputs = [out]
        return out

    def quant(self, shape: tuple[int, ...], n: int = 4, name: str = "x") -> str:
        """A float input ``name`` quantized at exponent ``n`` by node ``q_<name>``."""
        return self.op(f"q_{name}", "Quant", [self.input(name, shape)], n)

    def requant16(self, x: str, name: str = "r16", n: int = 12) -> str:
        return self.op(name, "Requant", [x], n, o_bits=16)


def w8(*shape: int) -> np.ndarray:
    return np.ones(shape, np.int8)


def i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def conv2d(g: G, x: str, w: np.ndarray, *, n_o: int = 3, bias: np.ndarray | None = None, **attrs: object) -> str:
    k = list(w.shape[2:])
    a = {"kernel_shape": k, "strides": [1, 1], "pads": [v // 2 for v in k] * 2, **attrs}
    ins = [x, g.const("w", w, 7)] + ([g.const("b", bias, 11)] if bias is not None else [])
    return g.op("conv", "Conv2dInt", ins, n_o, **a)


def deconv(g: G, x: str, w: np.ndarray, *, n_o: int = 3, stride: int = 2, bias: np.ndarray | None = None) -> str:
    k = list(w.shape[2:])
    ins = [x, g.const("w", w, 7)] + ([g.const("b", bias, 11)] if bias is not None else [])
    return g.op("deconv", "ConvTranspose2dInt", ins, n_o, kernel_shape=k, strides=[stride, stride], pads=[0] * 4)


def linear(g: G, x: str, w: np.ndarray, *, n_o: int = 3, bias: np.ndarray | None = None) -> str:
    ins = [x, g.const("w", w, 7)] + ([g.const("b", bias, 11)] if bias is not None else [])
    return g.op("fc", "LinearInt", ins, n_o)


def layernorm(g: G, shape: tuple[int, ...] = (1, 2, 8), *, n_x: int = 4, n_g: int = 14, n_o: int = 5,
              x: str | None = None, **attrs: object) -> str:
    """LayerNormInt (node ``ln``) over the last dimension of a quantized input, gamma = 1, beta = 0."""
    t = shape[-1]
    x = x if x is not None else g.quant(shape, n_x)
    return g.op("ln", "LayerNormInt", [x, g.const("gamma", np.ones(t, np.int16), n_g),
                                       g.const("beta", np.zeros(t, np.int32), 10 + n_g)], n_o,
                **{"parameter_bits": 16, **attrs})


def softmax(g: G, shape: tuple[int, ...] = (1, 2, 8), *, n_x: int = 4, n_o: int = 7, op_type: str = "SoftmaxInt",
            x: str | None = None, **attrs: object) -> str:
    """SoftmaxInt / LogSoftmaxInt (node ``sm``) over the last dimension of a quantized input."""
    x = x if x is not None else g.quant(shape, n_x)
    return g.op("sm", op_type, [x], n_o, **{"dim": -1, **attrs})


def bmm(g: G, xs: tuple[int, ...] = (1, 2, 8), ys: tuple[int, ...] = (1, 8, 4), *, n_o: int = 5,
        x: str | None = None) -> str:
    """BmmInt (node ``bmm``) of x at exponent 4 and y at exponent 3."""
    x = x if x is not None else g.quant(xs, 4)
    return g.op("bmm", "BmmInt", [x, g.quant(ys, 3, name="y")], n_o)


def gru(g: G, *, batch: int = 1, batch_first: int = 1, n_i: int = 4, n_iw: int = 7, n_hw: int = 7, n_o: int = 8,
        n_h: int | None = None, x: str | None = None, lengths: bool = False, h0: bool = False,
        **attrs: object) -> str:
    """GRUInt (node ``gru``): D = 3, H = 2, T = 4 on a quantized input; outputs ``gru_out`` (y) and ``gru_h``."""
    shape = (batch, 4, 3) if batch_first else (4, batch, 3)
    x = x if x is not None else g.quant(shape, n_i)
    ins = [x, g.const("w_ih", w8(6, 3), n_iw), g.const("w_hh", w8(6, 2), n_hw),
           g.const("b_ih", np.zeros(6, np.int32), n_i + n_iw), g.const("b_hh", np.zeros(6, np.int32), n_o + n_hw)]
    ins += [g.const("len", i64(4))] if lengths or h0 else []
    ins += [g.quant((1, batch, 2), n_o, name="h0")] if h0 else []
    g.graph.add_node(Node("gru", "GRUInt", ins, ["gru_out", "gru_h"], {"batch_first": batch_first, **attrs},
                          "thinker"))
    g.graph.add_tensor("gru_out", "int8", None, n_o)
    g.graph.add_tensor("gru_h", "int8", None, n_o if n_h is None else n_h)
    g.graph.outputs = ["gru_out", "gru_h"]
    return "gru_out"


def lstm(g: G, *, batch: int = 1, batch_first: int = 1, n_i: int = 4, n_iw: int = 7, n_hw: int = 7, n_o: int = 7,
         n_h: int | None = None, x: str | None = None, lengths: bool = False, **attrs: object) -> str:
    """LSTMInt (node ``lstm``): D = 3, H = 2, T = 4 on a quantized input; outputs ``lstm_out``, ``lstm_h``,
    ``lstm_c``."""
    shape = (batch, 4, 3) if batch_first else (4, batch, 3)
    x = x if x is not None else g.quant(shape, n_i)
    ins = [x, g.const("w_ih", w8(8, 3), n_iw), g.const("w_hh", w8(8, 2), n_hw),
           g.const("b_ih", np.zeros(8, np.int32), n_i + n_iw), g.const("b_hh", np.zeros(8, np.int32), n_o + n_hw)]
    ins += [g.const("len", i64(batch))] if lengths else []
    g.graph.add_node(Node("lstm", "LSTMInt", ins, ["lstm_out", "lstm_h", "lstm_c"],
                          {"batch_first": batch_first, **attrs}, "thinker"))
    g.graph.add_tensor("lstm_out", "int8", None, n_o)
    g.graph.add_tensor("lstm_h", "int8", None, n_o if n_h is None else n_h)
    g.graph.add_tensor("lstm_c", "int16", None, 7)
    g.graph.outputs = ["lstm_out", "lstm_h", "lstm_c"]
    return "lstm_out"


def gather(g: G, *, idx_dtype: str = "int64", n_w: int = 5, n_o: int = 5, **attrs: object) -> str:
    """Gather (node ``emb``): rows of a 10 x 4 int8 table at ``n_w`` by integer graph input ``tok`` [1, 6]."""
    idx = g.input("tok", (1, 6), idx_dtype)
    return g.op("emb", "Gather", [g.const("table", w8(10, 4), n_w), idx], n_o, **{"parameter_bits": 8, **attrs})


def two_operands(g: G, op_type: str, y_shape: tuple[int, ...], n_o: int, *, n_y: int = 3) -> str:
    """x [1, 4, 2, 2] at exponent 4 and y at ``n_y`` into ``op_type`` (node ``op``)."""
    return g.op("op", op_type, [g.quant((1, 4, 2, 2)), g.quant(y_shape, n_y, name="y")], n_o)


@dataclass(frozen=True)
class Case:
    """``build(over)`` returns a graph just over the limit (``over=True``) or at it (``over=False``).

    :param actual: the finding's actual value; a tuple when the rule finds several things on the node.
    :param also: other error rule ids that fire on the over-limit graph (the rule is shadowed by them).
    :param hint: a phrase the hint contains.
    :param quiet_also: error rule ids that still fire at the limit (the rule itself does not).
    """

    rule_id: str
    node: str
    build: Callable[[bool], Graph]
    limit: object
    actual: str | tuple[str, ...]
    hint: str
    also: frozenset[str] = frozenset()
    name: str = ""
    quiet_also: frozenset[str] = frozenset()


def _g(fill: Callable[[G, bool], object]) -> Callable[[bool], Graph]:
    def build(over: bool) -> Graph:
        g = G()
        fill(g, over)
        return g.graph

    return build


CASES: list[Case] = [
    # -- engine buffers: the same arithmetic as the split pass; the rule fires where no split helps -------------
    Case("csk60xx.conv.input_bytes", "conv",  # one input row of a 1x1 conv is A8(C) x A8(W) bytes
         _g(lambda g, over: conv2d(g, g.quant((1, 1025 if over else 1024, 1, 64)),
                                   w8(2, 1025 if over else 1024, 1, 1))),
         "65536 bytes per slice of rows", "66048 bytes for the 1 input rows of one output row "
         "(C_in 1025 x 1x64, stride_w 1)", "reduce the channels"),
    Case("csk60xx.conv.weight_bytes", "conv",  # two output channels are 2 x A8(C_in) x 3 x 3 bytes
         _g(lambda g, over: conv2d(g, g.quant((1, 1824 if over else 1816, 1, 1)),
                                   w8(4, 1824 if over else 1816, 3, 3))),
         "32768 bytes for 2 output channels", "32832 bytes = A8(1824) x 3x3 x 2", "1x1 bottleneck"),
    Case("csk60xx.conv.weight_and_input", "conv",  # 36864 weight bytes; input 64 x H x 32
         _g(lambda g, over: conv2d(g, g.quant((1, 64, 33 if over else 32, 32)), w8(64, 64, 3, 3))),
         "weight <= 32768 or input <= 65536 bytes", "weight 36864 and input 67584 bytes", "never both"),
    Case("csk60xx.conv.depthwise_weight_bytes", "conv",  # A16(C) x 3 x 3, not split
         _g(lambda g, over: conv2d(g, g.quant((1, 3648 if over else 3632, 1, 1)), w8(3648 if over else 3632, 1, 3, 3),
                                   group=3648 if over else 3632)),
         "32768 bytes (A16(C) * kh * kw)", "32832 bytes = A16(3648) x 3x3", "channel groups"),
    Case("csk60xx.conv.group_weight_bytes", "conv",  # per group A8(64) x 3 x 3 x A2(C_out / 2)
         _g(lambda g, over: conv2d(g, g.quant((1, 128, 1, 1)), w8(116 if over else 112, 64, 3, 3), group=2)),
         "32768 bytes per group", "33408 bytes = A8(64) x 3x3 x A2(58)", "more groups"),
    Case("csk60xx.deconv.weight_bytes", "deconv",  # A8(C) x A2(C) x 2 x 2, not split
         _g(lambda g, over: deconv(g, g.quant((1, 96 if over else 88, 2, 2)), w8(96 if over else 88, 96 if over else 88,
                                                                                  2, 2))),
         "32768 bytes (both forms)", "36864 bytes (A8(C_in)*A2(C_out)*k = 36864, A8(C_out)*A2(C_in)*k = 36864)",
         "reduce the channels"),
    Case("csk60xx.deconv.input_bytes", "deconv",  # A8(16) x 64 x A8(W), not split
         _g(lambda g, over: deconv(g, g.quant((1, 16, 64, 65 if over else 64)), w8(16, 8, 1, 1), stride=1)),
         "65536 bytes", "73728 bytes = A8(16) x 64 x A8(65)", "input size"),
    Case("csk60xx.linear.weight_bytes", "fc",  # even N = 1 column needs A8(K) x A4(1) bytes: the in_features
         # rule has the same bound (every weight that K <= 8192 allows splits into single columns that fit)
         _g(lambda g, over: linear(g, g.quant((1, 8193 if over else 8192)), w8(2, 8193 if over else 8192))),
         "32768 bytes (A8(K) * A4(N))", "32800 bytes = A8(8193) x A4(2); no equal split of N=2 fits",
         "in_features", also=frozenset({"csk60xx.linear.in_features"})),
    Case("csk60xx.linear.input_bytes", "fc",  # rows 2 x 16 cannot be sliced as one axis: A4(32) x A8(K)
         _g(lambda g, over: linear(g, g.quant((2, 16, 2049 if over else 2048)), w8(4, 2049 if over else 2048))),
         "65536 bytes (A4(M) * A8(K))", "65792 bytes = A4(32) x A8(2049), input (2, 16, 2049) cannot be cut by rows",
         "[1, M, K]"),
    Case("csk60xx.pool.input_bytes", "pool",  # a 2-row window of a > 64 KB input: A8(C) x 2 x A16(64)
         _g(lambda g, over: g.op("pool", "MaxPool", [g.quant((1, 520 if over else 512, 4, 64))], 4,
                                 kernel_shape=[2, 2], strides=[2, 2])),
         "65536 bytes per row window", "66560 bytes = A8(520) x 2 x A16(64)", "channels or the width"),
    # -- output exponents: n_x = 4, n_w = 7 -> n_o <= 11 ------------------------------------------------------
    Case("csk60xx.conv.out_exponent", "conv",
         _g(lambda g, over: conv2d(g, g.quant((1, 4, 4, 4)), w8(4, 4, 3, 3), n_o=12 if over else 11)),
         "n_o <= 11", "n_o 12 > n_x 4 + n_w 7", "2^11"),
    Case("csk60xx.conv.out_exponent", "conv",
         _g(lambda g, over: g.op("conv", "Conv1dInt", [g.quant((1, 4, 6)), g.const("w", w8(4, 4, 3), 7)],
                                 12 if over else 11, kernel_shape=[3], strides=[1], pads=[1, 1])),
         "n_o <= 11", "n_o 12 > n_x 4 + n_w 7", "2^11", name="conv1d"),
    Case("csk60xx.deconv.out_exponent", "deconv",
         _g(lambda g, over: deconv(g, g.quant((1, 4, 2, 2)), w8(4, 4, 2, 2), n_o=12 if over else 11)),
         "n_o <= 11", "n_o 12 > n_x 4 + n_w 7", "2^11"),
    Case("csk60xx.linear.out_exponent", "fc",
         _g(lambda g, over: linear(g, g.quant((1, 16)), w8(4, 16), n_o=12 if over else 11)),
         "n_o <= 11", "n_o 12 > n_x 4 + n_w 7", "2^11"),
    Case("csk60xx.batchnorm.out_exponent", "bn",
         _g(lambda g, over: g.op("bn", "BatchNorm2dInt", [g.quant((1, 4, 2, 2)), g.const("w", w8(4), 7),
                                                          g.const("b", np.zeros(4, np.int32), 11)],
                                 12 if over else 11)),
         "n_o <= 11", "n_o 12 > n_x 4 + n_w 7", "2^11"),
    Case("csk60xx.mul.out_exponent", "op",  # n_x 4 + n_y 3
         _g(lambda g, over: two_operands(g, "iqMul", (1, 4, 2, 2), 8 if over else 7)),
         "n_o <= 7", "n_o 8 > n_x 4 + n_y 3", "2^7"),
    Case("csk60xx.add.out_exponent", "op",  # min(n_x 4, n_y 3)
         _g(lambda g, over: two_operands(g, "iqAdd", (1, 4, 2, 2), 4 if over else 3)),
         "n_o <= 3", "n_o 4 with n_x 4, n_y 3", "smaller input scale"),
    Case("csk60xx.add.out_exponent", "op",
         _g(lambda g, over: two_operands(g, "iqSub", (1, 4, 2, 2), 4 if over else 3)),
         "n_o <= 3", "n_o 4 with n_x 4, n_y 3", "smaller input scale", name="iqSub"),
    Case("csk60xx.avgpool.out_exponent", "pool",  # a power-of-two window keeps the input's exponent
         _g(lambda g, over: g.op("pool", "AvgPool2dInt", [g.quant((1, 4, 6, 6))], 5 if over else 4,
                                 kernel_shape=[2, 2], strides=[2, 2])),
         "n_o = n_x", "window 2x2 (area 4), n_o 5, n_x 4", "input's scale"),
    Case("csk60xx.avgpool.out_exponent", "pool",  # other windows: n_o >= n_x
         _g(lambda g, over: g.op("pool", "AvgPool2dInt", [g.quant((1, 4, 6, 6))], 3 if over else 4,
                                 kernel_shape=[3, 3], strides=[3, 3])),
         "n_o >= n_x", "window 3x3, n_o 3 < n_x 4", "at least the input's scale", name="3x3"),
    Case("csk60xx.quant.exponent", "q_x",
         _g(lambda g, over: g.quant((1, 4), n=-1 if over else 0)),
         "n >= 0", "n -1 (scale 2^-1)", "normalise the input"),
    # -- operand shapes -----------------------------------------------------------------------------------
    Case("csk60xx.add.equal_shapes", "op",
         _g(lambda g, over: two_operands(g, "iqAdd", (1, 4, 1, 1) if over else (1, 4, 2, 2), 3)),
         "equal shapes", "x (1, 4, 2, 2), y (1, 4, 1, 1)", "expand the smaller operand"),
    Case("csk60xx.mul.broadcast", "op",  # per-channel [N, C, 1, 1] is the broadcast the chip has
         _g(lambda g, over: two_operands(g, "iqMul", (1, 1, 2, 2) if over else (1, 4, 1, 1), 7)),
         "y == x, [N, C, 1, 1] or scalar", "x (1, 4, 2, 2), y (1, 1, 2, 2)", "[N, C, 1, 1]"),
    Case("csk60xx.mul.broadcast", "op",
         _g(lambda g, over: two_operands(g, "iqMul", (1, 4, 2, 1) if over else (1,), 7)),
         "y == x, [N, C, 1, 1] or scalar", "x (1, 4, 2, 2), y (1, 4, 2, 1)", "[N, C, 1, 1]", name="scalar"),
    Case("csk60xx.cat.inputs", "cat",
         _g(lambda g, over: g.op("cat", "iqCat", [g.quant((1, 4), name=f"x{i}") for i in range(1 if over else 2)], 4,
                                 dim=1)),
         ">= 2 inputs", "1 input", "single-input"),
    Case("csk60xx.slice.single_axis", "slice",
         _g(lambda g, over: g.op("slice", "Slice", [g.quant((1, 4, 6, 6)), g.const("s", i64(0, 1) if over else i64(1)),
                                                    g.const("e", i64(2, 5) if over else i64(5)),
                                                    g.const("a", i64(1, 2) if over else i64(2))], 4)),
         "one axis, step 1", "axes [1, 2], steps []", "one axis at a time"),
    Case("csk60xx.slice.single_axis", "slice",
         _g(lambda g, over: g.op("slice", "Slice", [g.quant((1, 4, 6, 6)), g.const("s", i64(1)), g.const("e", i64(5)),
                                                    g.const("a", i64(2)), g.const("st", i64(2 if over else 1))], 4)),
         "one axis, step 1", "axes [2], steps [2]", "instead of a step", name="step"),
    Case("csk60xx.transpose.rank", "t",  # transpose.max_rank = 6
         _g(lambda g, over: g.op("t", "Transpose", [g.quant((1, 2) * 3 + ((1,) if over else ()))], 4,
                                 perm=list(range(7 if over else 6))[::-1])),
         "<= 6 axes", "rank 7", "Reshape"),
    Case("csk60xx.transpose.rank", "t",
         _g(lambda g, over: g.op("t", "Transpose", [g.quant((1, 4, 6, 6))], 4,
                                 perm=[1, 0, 2, 3] if over else [0, 2, 3, 1])),
         "4-D: perm[0] = 0", "perm [1, 0, 2, 3]", "batch axis first", name="4d"),
    # -- dtypes (spec section 4). Shape inference refuses most wrong dtypes itself (csk60xx.graph.shape) -------
    Case("csk60xx.quant.dtype", "q",
         _g(lambda g, over: g.op("q", "Quant", [g.input("x", (1, 4), "int8" if over else "float32")], 4)),
         "input 0 in ('float32',)", "input 0 int8", "float32", also=frozenset({SHAPE})),
    Case("csk60xx.dequant.dtype", "dq",
         _g(lambda g, over: g.op("dq", "Dequant", [g.requant16(g.quant((1, 4))) if over else g.quant((1, 4))],
                                 dtype="float32")),
         "input 0 in ('int8', 'uint8')", "input 0 int16", "int8 or uint8"),
    Case("csk60xx.requant.dtype", "rq",
         _g(lambda g, over: g.op("rq", "Requant", [g.requant16(g.quant((1, 4))) if over else g.quant((1, 4))], 12,
                                 o_bits=32)),
         "input 0 in ('int8',)", "input 0 int16", "int8", also=frozenset({SHAPE})),
    Case("csk60xx.conv.dtype", "conv",
         _g(lambda g, over: conv2d(g, g.quant((1, 4, 4, 4)), w8(4, 4, 3, 3),
                                   bias=np.zeros(4, np.int8 if over else np.int16))),
         "input 2 in ('int32', 'int16')", "input 2 int8", "int32 or int16", also=frozenset({SHAPE})),
    Case("csk60xx.deconv.dtype", "deconv",
         _g(lambda g, over: deconv(g, g.quant((1, 4, 2, 2)), w8(4, 4, 2, 2),
                                   bias=np.zeros(4, np.int16 if over else np.int32))),
         "input 2 in ('int32',)", "input 2 int16", "int32", also=frozenset({SHAPE})),
    Case("csk60xx.linear.dtype", "fc",
         _g(lambda g, over: linear(g, g.quant((1, 16)), w8(4, 16), bias=np.zeros(4, np.int16 if over else np.int32))),
         "input 2 in ('int32',)", "input 2 int16", "int32", also=frozenset({SHAPE})),
    Case("csk60xx.batchnorm.dtype", "bn",
         _g(lambda g, over: g.op("bn", "BatchNorm2dInt", [g.quant((1, 4, 2, 2)), g.const("w", w8(4), 7),
                                                          g.const("b", np.zeros(4, np.int32), 11)], 3,
                                 o_bits=16 if over else 8)),
         "output in ('int8',)", "output int16", "writes int8"),
    Case("csk60xx.eltwise.dtype", "op",
         _g(lambda g, over: g.op("op", "iqAdd", [g.quant((1, 4)), g.requant16(g.quant((1, 4), name="y"))
                                                 if over else g.quant((1, 4), name="y")], 4)),
         "input 1 in ('int8',)", "input 1 int16", "int8 at input 1", also=frozenset({SHAPE})),
    Case("csk60xx.relu.dtype", "relu",  # int16 passes; a float input and output do not
         _g(lambda g, over: g.op("relu", "Relu", [g.input("x", (1, 4))] if over else [g.requant16(g.quant((1, 4)))],
                                 dtype="float32" if over else "int16")),
         "input 0 in ('int8', 'int16', 'int32')", ("input 0 float32", "output float32"), "int8 or int16 or int32",
         also=frozenset({SHAPE})),
    Case("csk60xx.clip.dtype", "clip",
         _g(lambda g, over: g.op("clip", "Clip", [g.requant16(g.quant((1, 4))) if over else g.quant((1, 4))])),
         "input 0 in ('int8',)", ("input 0 int16", "output int16"), "int8"),
    # -- iqSigmoid / iqTanh (spec/int8-seq-ops.md 2.6.5): int16 in at exponent >= 11, int8 out at exponent 7 -------
    Case("csk60xx.activation.in_exponent", "act",
         _g(lambda g, over: g.op("act", "iqSigmoid", [g.requant16(g.quant((1, 4)), n=10 if over else 11)], 7)),
         "n_x >= 11", "n_x 10", "requantize"),
    Case("csk60xx.activation.out_exponent", "act",
         _g(lambda g, over: g.op("act", "iqTanh", [g.requant16(g.quant((1, 4)))], 8 if over else 7)),
         "n_o = 7 (scale_o 128)", "n_o 8 (scale_o 256)", "scale_o = 128"),
    Case("csk60xx.activation.dtype", "act",
         _g(lambda g, over: g.op("act", "iqSigmoid", [g.quant((1, 4), n=4) if over else g.requant16(g.quant((1, 4)))],
                                 7)),
         "input 0 in ('int16',)", "input 0 int8", "int16",
         also=frozenset({"csk60xx.activation.in_exponent"})),
    Case("csk60xx.tanh.shared_input", "act",  # the int16 tensor is a graph output too: iqTanh would rescale it
         _g(lambda g, over: (g.op("act", "iqTanh", [r := g.requant16(g.quant((1, 4)), n=12 if over else 11)], 7),
                             g.graph.outputs.append(r))),
         "one reader, or n_x = 11", "n_x 12, input read by 2 ops (or a graph output)", "its own requantization"),
    # -- LayerNormInt (spec/int8-seq-ops.md 2.3.5, 6.4) ------------------------------------------------------------
    Case("csk60xx.layernorm.rank", "ln", _g(lambda g, over: layernorm(g, (2, 8) if over else (1, 2, 8))),
         "rank >= 3", "rank 2", "unsqueeze"),
    Case("csk60xx.layernorm.in_exponent", "ln", _g(lambda g, over: layernorm(g, n_x=16 if over else 15)),
         "0 <= n_x <= 15", "n_x 16", "exponent 15 first"),
    Case("csk60xx.layernorm.out_exponent", "ln", _g(lambda g, over: layernorm(g, n_g=10, n_o=21 if over else 20)),
         "n_o <= 20", "n_o 21 > 10 + n_g 10", "at most 2^20"),
    Case("csk60xx.layernorm.dtype", "ln",
         _g(lambda g, over: layernorm(g, x=g.requant16(g.quant((1, 2, 8))) if over else None)),
         "input 0 in ('int8',)", "input 0 int16", "int8", also=frozenset({SHAPE, "csk60xx.layernorm.bits"})),
    # -- GRUInt (spec/int8-seq-ops.md 2.2.5, 6.2) ---------------------------------------------------------------------
    Case("csk60xx.gru.batch", "gru", _g(lambda g, over: gru(g, batch=2 if over else 1)),
         "batch <= 1", "batch 2", "one at a time"),
    Case("csk60xx.gru.batch", "gru", _g(lambda g, over: gru(g, batch=2 if over else 1, batch_first=0)),
         "batch <= 1", "batch 2", "one at a time", name="seq_first"),
    Case("csk60xx.gru.vendor_state", "gru", _g(lambda g, over: gru(g, lengths=over)),
         "the vendor runtime: zero initial state, all T steps", "lengths given", "zero state"),
    Case("csk60xx.gru.vendor_state", "gru", _g(lambda g, over: gru(g, lengths=over, h0=over)),
         "the vendor runtime: zero initial state, all T steps", "lengths given and h0 given", "zero state",
         name="h0"),
    Case("csk60xx.gru.in_alignment", "gru", _g(lambda g, over: gru(g, n_i=3 if over else 4)),
         "n_i + n_iw >= 11", "n_i + n_iw = 3 + 7 = 10", "finer scale"),
    Case("csk60xx.gru.hidden_alignment", "gru", _g(lambda g, over: gru(g, n_hw=2 if over else 3)),
         "n_o + n_hw >= 11", "n_o + n_hw = 8 + 2 = 10", "right shift only"),
    Case("csk60xx.gru.out_exponent", "gru", _g(lambda g, over: gru(g, n_o=9 if over else 8)),
         "n_o = n_h = 8", "n_o 9, n_h 9", "scale_h = 256"),
    Case("csk60xx.gru.out_exponent", "gru", _g(lambda g, over: gru(g, n_h=7 if over else 8)),
         "n_o = n_h = 8", "n_o 8, n_h 7", "Q8", name="state"),
    Case("csk60xx.gru.dtype", "gru", _g(lambda g, over: gru(g, x=g.requant16(g.quant((1, 4, 3), 4)) if over else None)),
         "input 0 in ('int8',)", "input 0 int16", "int8", also=frozenset({SHAPE})),
    # -- LSTMInt (spec/int8-seq-ops.md 2.1.5, 6.2) --------------------------------------------------------------------
    Case("csk60xx.lstm.batch", "lstm", _g(lambda g, over: lstm(g, batch=2 if over else 1)),
         "batch <= 1", "batch 2", "one at a time"),
    Case("csk60xx.lstm.in_alignment", "lstm", _g(lambda g, over: lstm(g, n_i=0, n_iw=-20 if over else -19)),
         "n_i + n_iw >= -19", "n_i + n_iw = 0 + -20 = -20", "finer scale"),
    Case("csk60xx.lstm.hidden_alignment", "lstm", _g(lambda g, over: lstm(g, n_o=0, n_hw=-20 if over else -19)),
         "n_o + n_hw >= -19", "n_o + n_hw = 0 + -20 = -20", "left shift of at most 30"),
    Case("csk60xx.lstm.out_exponent", "lstm", _g(lambda g, over: lstm(g, n_o=15 if over else 14)),
         "n_o <= 14", "n_o 15", "coarser scale"),
    Case("csk60xx.lstm.state_exponent", "lstm", _g(lambda g, over: lstm(g, n_h=8 if over else 7)),
         "h_n = h0 = n_o, c0 = 7", "n_o 7, h_n 8", "scale_h = scale_o"),
    Case("csk60xx.lstm.vendor_lengths", "lstm", _g(lambda g, over: lstm(g, lengths=over)),
         "y rows >= lengths[0] are zeros in lnn, unwritten on the vendor runtime", "lengths given",
         "first lengths[0] rows"),
    Case("csk60xx.lstm.dtype", "lstm",
         _g(lambda g, over: lstm(g, x=g.requant16(g.quant((1, 4, 3), 4)) if over else None)),
         "input 0 in ('int8',)", "input 0 int16", "int8", also=frozenset({SHAPE})),
    # -- SoftmaxInt / LogSoftmaxInt (spec/int8-seq-ops.md 2.4.5, 2.5.5) ---------------------------------------------
    Case("csk60xx.softmax.in_exponent", "sm", _g(lambda g, over: softmax(g, n_x=26 if over else 25)),
         "0 <= n_x <= 25", "n_x 26", "exponent 25 or less"),
    Case("csk60xx.softmax.in_exponent", "sm", _g(lambda g, over: softmax(g, n_x=-1 if over else 0)),
         "0 <= n_x <= 25", "n_x -1", "|x| < 128", also=frozenset({"csk60xx.quant.exponent"}), name="coarse"),
    Case("csk60xx.softmax.out_exponent", "sm", _g(lambda g, over: softmax(g, n_o=16 if over else 15)),
         "n_o <= 15", "n_o 16", "at most 2^15"),
    Case("csk60xx.softmax.out_exponent", "sm",
         _g(lambda g, over: softmax(g, n_o=26 if over else 25, op_type="LogSoftmaxInt")),
         "n_o <= 25", "n_o 26", "at most 2^25", name="log"),
    Case("csk60xx.softmax.dtype", "sm",
         _g(lambda g, over: softmax(g, x=g.requant16(g.quant((1, 2, 8))) if over else None)),
         "input 0 in ('int8',)", "input 0 int16", "int8", also=frozenset({SHAPE, "csk60xx.softmax.input_bits"})),
    # -- BmmInt (spec/int8-seq-ops.md 2.9.5) ------------------------------------------------------------------------
    Case("csk60xx.bmm.out_exponent", "bmm", _g(lambda g, over: bmm(g, n_o=8 if over else 7)),
         "n_o <= 7", "n_o 8 > n_x 4 + n_y 3", "at most 2^7"),
    Case("csk60xx.bmm.dtype", "bmm",
         _g(lambda g, over: bmm(g, x=g.requant16(g.quant((1, 2, 8))) if over else None)),
         "input 0 in ('int8',)", "input 0 int16", "int8", also=frozenset({SHAPE, "csk60xx.bmm.bits"})),
    # -- Gather (spec/int8-seq-ops.md 2.8.5): integer indices, the output at the table's exponent ----------------
    Case("csk60xx.gather.index_dtype", "emb", _g(lambda g, over: gather(g, idx_dtype="int16" if over else "int32")),
         "indices in ('int32', 'int64')", "indices int16", "torch.long", also=frozenset({SHAPE})),
    Case("csk60xx.gather.scale", "emb", _g(lambda g, over: gather(g, n_o=6 if over else 5)),
         "n_o = n_w", "n_o 6, n_w 5", "scale_o = scale_w = 32"),
    Case("csk60xx.cat.dtype", "cat",
         _g(lambda g, over: g.op("cat", "iqCat", [g.quant((1, 4), name="x0"),
                                                  g.requant16(g.quant((1, 4), name="x1")) if over
                                                  else g.quant((1, 4), name="x1")], 4, dim=1)),
         "one integer dtype", "inputs ['int8', 'int16'] -> int8", "one dtype", also=frozenset({SHAPE})),
]


def conv_k(g: G, k: int, **attrs: object) -> str:
    """Conv2dInt with a ``k`` x ``k`` kernel on a [1, 4, 8, 8] input, no padding unless given."""
    return conv2d(g, g.quant((1, 4, 8, 8)), w8(4, 4, k, k), **{"pads": [0] * 4, **attrs})


#: the rules that also judge PyTorch modules judge the IR nodes those modules export to, from the node's attributes
#: and what :func:`~lnn_backend_csk60xx.check.op_view` derives (bits from dtypes, in_features, global pooling)
MODULE_CASES_ON_IR: list[Case] = [
    # shape rules: judged at lnn.init when it is given example_inputs (tests/test_module_rule_coverage.py)
    Case("csk60xx.softmax.row", "sm", _g(lambda g, over: softmax(g, (1, 2049 if over else 2048))),
         "row <= 2048", "row of 2049", "rows of <= 2048"),
    Case("csk60xx.bmm.rank", "bmm", _g(lambda g, over: bmm(g, (2, 2, 8) if over else (1, 2, 8))),
         "equal ranks in (2, 3), equal batches", "operands (2, 2, 8) and (1, 8, 4)", "[batch, M, K]",
         also=frozenset({SHAPE})),
    Case("csk60xx.bmm.right_matrix", "bmm",
         _g(lambda g, over: bmm(g, (1, 2, 64), (1, 64, 513 if over else 512))),
         "<= 32768 bytes", "right matrix (64, 513): 33024 bytes", "split the product"),
    Case("csk60xx.conv.kernel_size", "conv", _g(lambda g, over: conv_k(g, 6 if over else 5)),
         "1..5 per axis", "kernel 6x6", "stacked kernels"),
    Case("csk60xx.conv.stride", "conv",
         _g(lambda g, over: conv_k(g, 3 if over else 4, strides=[3, 3] if over else [4, 4])),
         "each in (1, 2, 4)", "stride 3x3", "use stride 2"),
    Case("csk60xx.conv.pad", "conv", _g(lambda g, over: conv_k(g, 5, pads=[5 if over else 4] * 4)),
         "0..4 and <= kernel", "pads 5x5x5x5 with kernel 5x5", "pad at most 4"),
    Case("csk60xx.conv.kernel_ge_stride", "conv", _g(lambda g, over: conv_k(g, 1 if over else 2, strides=[2, 2])),
         "kernel >= stride per axis", "kernel 1x1, stride 2x2", "raise the kernel"),
    Case("csk60xx.conv.dilation", "conv",
         _g(lambda g, over: conv_k(g, 3, pads=[2 if over else 1] * 4, dilations=[2, 2] if over else [1, 1])),
         "1 per axis", "dilation 2x2", "dilation 1"),
    Case("csk60xx.conv.bits", "conv",  # shape inference refuses a 16-bit conv input as well
         _g(lambda g, over: conv2d(g, g.requant16(g.quant((1, 4, 8, 8))) if over else g.quant((1, 4, 8, 8)),
                                   w8(4, 4, 3, 3))),
         "input bits in (8,)", "16-bit input", "act_bits=8", also=frozenset({SHAPE})),
    Case("csk60xx.deconv.kernel_size", "deconv",  # [deconv] kernel_max, not [conv]'s
         _g(lambda g, over: deconv(g, g.quant((1, 4, 2, 2)), w8(4, 4, 6 if over else 5, 6 if over else 5), stride=1)),
         "1..5 per axis", "kernel 6x6", "stacked kernels"),
    Case("csk60xx.deconv.stride", "deconv",
         _g(lambda g, over: deconv(g, g.quant((1, 4, 2, 2)), w8(4, 4, 3, 3) if over else w8(4, 4, 4, 4),
                                   stride=3 if over else 4)),
         "each in (1, 2, 4)", "stride 3x3", "use stride 2"),
    Case("csk60xx.deconv.pad", "deconv",
         _g(lambda g, over: g.op("deconv", "ConvTranspose2dInt",
                                 [g.quant((1, 4, 8, 8)), g.const("w", w8(4, 4, 5, 5), 7)], 3,
                                 kernel_shape=[5, 5], strides=[1, 1], pads=[5 if over else 4] * 4)),
         "0..4 and <= kernel", "pads 5x5x5x5 with kernel 5x5", "pad at most 4"),
    Case("csk60xx.pool.pad", "pool",  # [pool] pad_max
         _g(lambda g, over: g.op("pool", "MaxPool", [g.quant((1, 4, 8, 8))], 4, kernel_shape=[5, 5], strides=[1, 1],
                                 pads=[5 if over else 4] * 4)),
         "0..4 and <= kernel", "pads 5x5x5x5 with kernel 5x5", "pad at most 4"),
    Case("csk60xx.deconv.kernel_for_stride", "deconv",
         _g(lambda g, over: deconv(g, g.quant((1, 4, 2, 2)), w8(4, 4, 3 if over else 4, 3 if over else 4), stride=4)),
         "stride 4: kernel in (4, 5)", "kernel 3x3 with stride 4x4", "kernel of 4..5",
         also=frozenset({"csk60xx.conv.kernel_ge_stride"})),
    Case("csk60xx.deconv.groups", "deconv",
         _g(lambda g, over: g.op("deconv", "ConvTranspose2dInt", [g.quant((1, 4, 2, 2)),
                                                                  g.const("w", w8(4, 2 if over else 4, 2, 2), 7)], 3,
                                 kernel_shape=[2, 2], strides=[2, 2], pads=[0] * 4, group=2 if over else 1)),
         "1", "groups 2", "groups=1"),
    Case("csk60xx.deconv.out_bits", "deconv",
         _g(lambda g, over: g.op("deconv", "ConvTranspose2dInt",
                                 [g.quant((1, 4, 2, 2)), g.const("w", w8(4, 4, 2, 2), 7)], 3,
                                 kernel_shape=[2, 2], strides=[2, 2], pads=[0] * 4, o_bits=16 if over else 8)),
         "8-bit", "16-bit output", "act_bits=8"),
    Case("csk60xx.linear.bits", "fc",  # shape inference refuses a 16-bit linear input as well
         _g(lambda g, over: linear(g, g.requant16(g.quant((1, 16))) if over else g.quant((1, 16)), w8(4, 16))),
         "input bits in (8,)", "16-bit input", "act_bits=8", also=frozenset({SHAPE})),
    Case("csk60xx.linear.in_features", "fc",  # the same bound as the weight's buffer: one column, A8(K) x A4(1)
         _g(lambda g, over: linear(g, g.quant((1, 8193 if over else 8192)), w8(2, 8193 if over else 8192))),
         "<= 8192", "8193 input features", "reduce the features",
         also=frozenset({"csk60xx.linear.weight_bytes"})),
    Case("csk60xx.pool.bits", "pool",  # MaxPool runs int16 data through shape inference; the engine does not
         _g(lambda g, over: g.op("pool", "MaxPool",
                                 [g.requant16(g.quant((1, 4, 8, 8))) if over else g.quant((1, 4, 8, 8))],
                                 12 if over else 4, kernel_shape=[2, 2], strides=[2, 2])),
         "input bits in (8,)", "16-bit input", "act_bits=8"),
    Case("csk60xx.pool.kernel_size", "pool",
         _g(lambda g, over: g.op("pool", "MaxPool", [g.quant((1, 4, 8, 8))], 4, kernel_shape=[6 if over else 5] * 2,
                                 strides=[6 if over else 5] * 2)),
         "<= 5 per axis", "kernel 6x6", "global pooling"),
    Case("csk60xx.pool.kernel_size", "pool",  # a window over the whole input is global: any size
         _g(lambda g, over: g.op("pool", "AvgPool2dInt", [g.quant((1, 4) + ((8, 8) if over else (6, 6)))], 4,
                                 kernel_shape=[6, 6], strides=[6, 6])),
         "<= 5 per axis", "kernel 6x6", "global pooling", name="global"),
    Case("csk60xx.pool.ceil_mode", "pool",
         _g(lambda g, over: g.op("pool", "MaxPool", [g.quant((1, 4, 7, 7))], 4, kernel_shape=[2, 2], strides=[2, 2],
                                 ceil_mode=int(over))),
         "ceil_mode=False", "ceil_mode=True", "ceil_mode=False"),
    Case("csk60xx.eltwise.bits", "cat",  # shape inference and csk60xx.cat.dtype accept int16 inputs at one scale
         _g(lambda g, over: g.op("cat", "iqCat", [g.requant16(g.quant((1, 4), name="x0"), name="r0"),
                                                  g.requant16(g.quant((1, 4), name="x1"), name="r1")] if over else
                                 [g.quant((1, 4), name="x0"), g.quant((1, 4), name="x1")], 12 if over else 4, dim=1)),
         "input bits in (8,)", ("16-bit input", "16-bit output"), "act_bits=8"),
    Case("csk60xx.layernorm.row", "ln", _g(lambda g, over: layernorm(g, (1, 2, 363 if over else 362))),
         "4 <= T <= 362", "row of 363", "at most 362"),
    Case("csk60xx.layernorm.row", "ln", _g(lambda g, over: layernorm(g, (1, 2, 3 if over else 4))),
         "4 <= T <= 362", "row of 3", "at least 4", name="short"),
    Case("csk60xx.layernorm.bits", "ln", _g(lambda g, over: layernorm(g, parameter_bits=8 if over else 16)),
         "weight bits in (16,)", "8-bit weight", "weight_bits=16"),
    Case("csk60xx.softmax.dim", "sm", _g(lambda g, over: softmax(g, dim=1 if over else 2)),
         "dim=-1 (the last dimension)", "dim=1 of a rank-3 input", "move the softmax dimension last"),
    Case("csk60xx.softmax.dim", "sm",  # the chip reads any LogSoftmaxInt dim but -1 as axis 1
         _g(lambda g, over: softmax(g, op_type="LogSoftmaxInt", dim=2 if over else -1)),
         "dim=-1 (the last dimension)", "dim=2 of a rank-3 input", "log-softmax", name="log"),
    Case("csk60xx.softmax.input_bits", "sm",
         _g(lambda g, over: softmax(g, x=g.requant16(g.quant((1, 2, 8))) if over else None)),
         "input bits in (8,)", "16-bit input", "act_bits=8", also=frozenset({SHAPE, "csk60xx.softmax.dtype"})),
    Case("csk60xx.bmm.bits", "bmm",
         _g(lambda g, over: bmm(g, x=g.requant16(g.quant((1, 2, 8))) if over else None)),
         "input bits in (8,)", "16-bit input", "act_bits=8", also=frozenset({SHAPE, "csk60xx.bmm.dtype"})),
    Case("csk60xx.gather.bits", "emb", _g(lambda g, over: gather(g, parameter_bits=4 if over else 8)),
         "weight bits in (8,)", "4-bit weight", "weight_bits=8"),
]

#: module rules that cannot fire on an IR node: the IR op has no attribute for what they judge
NOT_ON_IR = {
    "csk60xx.conv.padding_mode": "Conv1dInt/Conv2dInt have no padding_mode: the exporter pads with zeros only",
    "csk60xx.avgpool.divisor": "AvgPool2dInt has no count_include_pad or divisor_override attribute",
    "csk60xx.activation.input_bits": "iqSigmoid / iqTanh read the int16 that a Requant writes; the rule judges the "
                                     "torch op's input, which the Requant reads (activation.dtype judges the node)",
    "csk60xx.layernorm.eps": "LayerNormInt has no eps attribute: the chip's kernel adds a fixed 1e-5",
    "csk60xx.layernorm.dims": "LayerNormInt's gamma is 1-D: shape inference checks it covers the last one or two dims",
    "csk60xx.gather.max_norm": "Gather has no max_norm attribute: the exporter writes the table as it is",
    "csk60xx.slice.index": "a Slice node has constant starts/ends/axes, never the torch index spelling; "
                           "csk60xx.slice.single_axis judges its axes and steps",
    "csk60xx.pad.form": "an iqPad node holds constant pads and fill; its shape rule refuses any other form than "
                        "zeros around H and W (the module rule judges the torch spelling)",
}

#: warning rules, judged on IR nodes by test_warnings_do_not_stop_a_graph
WARNINGS_ON_IR = frozenset({"csk60xx.conv.groups", "csk60xx.sub.unverified", "csk60xx.avgpool.ties",
                            "csk60xx.gru.direction"})

#: pack-time warning rules (what the vendor runtime does differently): their cases fire as warnings
PACK_WARNINGS = frozenset({"csk60xx.lstm.vendor_lengths", "csk60xx.gru.vendor_state"})


def _case_id(case: Case) -> str:
    return case.rule_id.removeprefix("csk60xx.") + (f"-{case.name}" if case.name else "")


def _by_id() -> dict[str, object]:
    return {r.id: r for r in (*RULES, *PACK_RULES)}


@pytest.mark.parametrize("case", CASES + MODULE_CASES_ON_IR, ids=_case_id)
def test_rule_fires_over_the_limit(case: Case):
    report = check_graph(case.build(True))
    found = [v for v in report.violations if v.rule_id == case.rule_id]
    assert {v.op_name for v in found} == {case.node}, report.table()
    actual = case.actual if isinstance(case.actual, tuple) else (case.actual,)
    assert tuple(v.actual for v in found) == actual
    rule = _by_id()[case.rule_id]
    warn = case.rule_id in PACK_WARNINGS
    for v in found:
        assert v.severity == ("warning" if warn else "error") and v.target == "csk60xx"
        assert v.hint and case.hint in v.hint
        assert v.rule == rule.describe(load_target().limits)
    assert found[0].limit == case.limit
    assert {v.rule_id for v in report.errors} == {*case.also, *(() if warn else (case.rule_id,))}, report.table()
    assert report.ok == (warn and not case.also)


@pytest.mark.parametrize("case", CASES + MODULE_CASES_ON_IR, ids=_case_id)
def test_rule_is_quiet_at_the_limit(case: Case):
    report = check_graph(case.build(False))
    assert {v.rule_id for v in report.errors} == case.quiet_also, report.table()
    assert report.fits and report.ok == (not case.quiet_also)


def test_every_pack_rule_has_a_case_and_every_module_rule_is_declared():
    """A rule added to the index without a case here (pack time) or in the torch file (module) fails."""
    pack_ids, module_ids = [r.id for r in PACK_RULES], [r.id for r in RULES]
    assert len(set(pack_ids) | set(module_ids)) == len(pack_ids) + len(module_ids), "a rule id is used twice"
    covered = {c.rule_id for c in CASES}
    assert covered - set(pack_ids) == set(), "cases for rules that are not pack-time rules"
    assert set(pack_ids) - covered == set(), "pack-time rules without a case in this file"
    assert set(module_ids) == MODULE_RULES, "update MODULE_RULES and add cases to tests/test_module_rule_coverage.py"


def test_every_module_rule_judges_ir_nodes_or_says_why_not():
    on_ir = {c.rule_id for c in MODULE_CASES_ON_IR}
    assert on_ir.isdisjoint(NOT_ON_IR) and on_ir.isdisjoint(WARNINGS_ON_IR)
    assert on_ir | set(NOT_ON_IR) | WARNINGS_ON_IR == MODULE_RULES
    ir_types = {"Conv1dInt", "Conv2dInt", "ConvTranspose2dInt", "LinearInt", "MaxPool", "AvgPool2dInt", "iqAdd",
                "iqSub", "iqMul", "iqCat", "iqSigmoid", "iqTanh", "LayerNormInt", "SoftmaxInt", "LogSoftmaxInt",
                "BmmInt", "Gather", "Slice", "iqPad", "GRUInt"}
    for r in RULES:  # each one is bound to IR op types as well as to torch op ids
        assert set(r.ops) & ir_types, r.id


def test_a_linear_within_the_init_limit_packs():
    """The init-time limit on in_features is the pack-time one: a Linear at the limit packs, with one column per
    part of its weight."""
    g = G()
    linear(g, g.quant((1, 8192)), w8(2, 8192))
    assert check_graph(g.graph).ok


def test_warnings_do_not_stop_a_graph():
    """The warning rules fire at pack time too, and leave the graph fitting."""
    g = G()
    x = g.quant((1, 8, 4, 4))
    y = conv2d(g, x, w8(8, 4, 3, 3), n_o=4, group=2)
    z = g.op("op", "iqSub", [y, g.quant((1, 8, 4, 4), n=4, name="y")], 4)
    g.op("pool", "AvgPool2dInt", [z], 4, kernel_shape=[2, 3], strides=[2, 1])
    report = check_graph(g.graph)
    assert [(v.op_name, v.rule_id, v.severity) for v in report.violations] == [
        ("conv", "csk60xx.conv.groups", "warning"), ("op", "csk60xx.sub.unverified", "warning"),
        ("pool", "csk60xx.avgpool.ties", "warning")]
    assert "window 2x3 (area 6)" in report.violations[2].actual
    assert report.ok


def test_the_gru_direction_warning_on_ir_leaves_the_graph_fitting():
    """A reverse GRUInt node (a bidirectional GRU) runs in lnn's simulator; the rule warns what the vendor does."""
    g = G()
    gru(g, go_forward=0)
    report = check_graph(g.graph)
    assert [(v.op_name, v.rule_id, v.severity, v.actual) for v in report.violations] == [
        ("gru", "csk60xx.gru.direction", "warning", "go_forward 0")]
    assert report.ok


class _RecordingLimits(Mapping):
    """The target limits, noting in ``read`` every key looked up."""

    def __init__(self, limits: Mapping[str, object], read: set[str]) -> None:
        self._limits, self._read = limits, read

    def __getitem__(self, key: str) -> object:
        value = self._limits[key]
        self._read.add(key)
        return value

    def __iter__(self):
        return iter(self._limits)

    def __len__(self) -> int:
        return len(self._limits)


def _recording_rules_for(read: set[str]) -> Callable[[str], list[Rule]]:
    """The backend's ``rules_for``, each rule reading its limits through :class:`_RecordingLimits`."""
    def wrap(r: Rule) -> Rule:
        return attrs.evolve(r, check=lambda op, limits: r.check(op, _RecordingLimits(limits, read)))

    return lambda op_type: [wrap(r) for r in rules_for(op_type)]


#: limits in targets/csk60xx.toml that no rule reads: none (the window rules read each family's own section)
UNREAD_LIMITS: frozenset[str] = frozenset()


def test_the_rule_limits_that_no_rule_reads_are_known():
    """Judging every case reads every rule limit but the known unread ones ([memory] is the planner's, [target]
    names the target, [ir] lists op types)."""
    read: set[str] = set()
    for case in CASES + MODULE_CASES_ON_IR:
        for over in (True, False):
            check_graph(case.build(over), rules_for=_recording_rules_for(read))
    rule_limits = {k for k in load_target().limits if k.split(".")[0] not in ("target", "memory", "ir")}
    assert read <= rule_limits
    assert rule_limits - read == UNREAD_LIMITS
