"""Element-wise ops: ``Relu``, ``Clip``, ``iqAdd``, ``iqSub`` and ``iqMul``.

Integer semantics (spec/int8-ops.md): ``Relu`` and ``Clip`` clamp integers at the input's scale (Clip's
bounds are integers at that scale); ``iqAdd``/``iqSub`` shift each operand to the output exponent and
add, ``RQ_8(SHR(x, n_x - n_o) +/- SHR(y, n_y - n_o))``; ``iqMul`` is ``RQ_8(x * y, n_x + n_y - n_o)``
with y of x's shape, ``[N, C, 1, 1]`` or a scalar. C kernels: ``csrc/ops/eltwise.c``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, rule

from ..thinker.lowering import DecodedOp, Problem, ThinkerLowering
from ._rules import INT, at, bits_rule, dtype_rule, exponent_rule, seq
from .base import INT_DTYPES, PLATFORM, AttrSpec, InferContext, Lowering, OpDef, engine_operands

__all__ = ["OPS", "ELTWISE_BITS"]

#: bit widths of the element-wise engine (also judges concatenation, in :mod:`.shape`)
ELTWISE_BITS = bits_rule("csk60xx.eltwise.bits", "eltwise")


def _passthrough(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    c.dtype(x, sorted(INT_DTYPES), "input")
    return [c.out(x.dtype, x.shape, x.exponent)]


def _clip(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    c.dtype(x, sorted(INT_DTYPES), "input")
    for i in (1, 2):
        if i < len(c.node.inputs) and c.node.inputs[i]:
            v = c.const(i)
            if v.size != 1 or v.dtype != np.dtype(x.dtype):
                raise c.fail(f"input {i} must be a {x.dtype} scalar",
                             {"rule": "Clip min/max are pre-quantized integers of the input's dtype",
                              "actual": f"{v.dtype} shape {v.shape}"})
    return [c.out(x.dtype, x.shape, x.exponent)]


def _binary(c: InferContext) -> list[TensorInfo]:
    """The output has the broadcast shape of the operands. Which broadcast forms the chip runs is a
    hardware rule (``csk60xx.add.equal_shapes``, ``csk60xx.mul.broadcast``), checked with all other rules;
    the simulator's loader refuses the other forms."""
    x = c.info(0)
    y = c.info(1)
    c.dtype(x, ["int8"], "input x")
    c.dtype(y, ["int8"], "input y")
    try:
        shape = np.broadcast_shapes(x.shape, y.shape)
    except ValueError:
        raise c.fail("operand shapes cannot be broadcast", {"x": x.shape, "y": y.shape}) from None
    return [c.out("int8", shape, None)]


def _lower_clip(node: Node, graph: Graph) -> list[int]:
    info = graph.tensors[node.inputs[0]]
    lim = np.iinfo(np.dtype(info.dtype))
    bounds = [int(lim.min), int(lim.max)]
    for i in (1, 2):
        if i < len(node.inputs) and node.inputs[i]:
            bounds[i - 1] = int(np.asarray(graph.initializers[node.inputs[i]]).reshape(-1)[0])
    return bounds


@rule("csk60xx.sub.unverified", ops=(), severity="warning")
def check_sub_unverified(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqSub on VENUS is unverified on silicon (spec 3.15): check the result on a board."""
    return Finding(actual="iqSub", limit="verified ops", hint="prefer x + (-1 * y) folded into a preceding layer, "
                   "or validate this layer on a board with lnn verify")


@rule("csk60xx.add.out_exponent", ops=())
def check_add_out_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqAdd / iqSub output exponent n_o must be at most min(n_x, n_y) (each operand is shifted right)."""
    ins, outs = seq(op, "input_exponents"), seq(op, "output_exponents")
    n_x, n_y, n_o = at(ins, 0), at(ins, 1), at(outs, 0)
    if None in (n_x, n_y, n_o) or n_o <= min(n_x, n_y):
        return None
    return Finding(actual=f"n_o {n_o} with n_x {n_x}, n_y {n_y}", limit=f"n_o <= {min(n_x, n_y)}",
                   hint="cap the output scale at the smaller input scale (lnn does this when it quantizes an add)")


@rule("csk60xx.add.equal_shapes", ops=())
def check_add_equal_shapes(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqAdd / iqSub operands must have equal shapes (the chip does not broadcast them)."""
    shapes = seq(op, "input_shapes")
    if len(shapes) >= 2 and None not in shapes[:2] and tuple(shapes[0]) != tuple(shapes[1]):
        return Finding(actual=f"x {tuple(shapes[0])}, y {tuple(shapes[1])}", limit="equal shapes",
                       hint="expand the smaller operand explicitly (e.g. a 1x1 conv or a repeat) before the add")
    return None


@rule("csk60xx.mul.broadcast", ops=())
def check_mul_broadcast(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqMul operands must have equal shapes, or y must be [N, C, 1, 1] against a 4-D x, or a scalar."""
    shapes = seq(op, "input_shapes")
    if len(shapes) < 2 or None in shapes[:2]:
        return None
    x, y = tuple(shapes[0]), tuple(shapes[1])
    per_channel = len(x) == 4 and y == (x[0], x[1], 1, 1)
    if x == y or per_channel or int(np.prod(y)) == 1:
        return None
    return Finding(actual=f"x {x}, y {y}", limit="y == x, [N, C, 1, 1] or scalar",
                   hint="reshape y to [N, C, 1, 1], or swap the operands when x is the broadcast one")


_XYO = {"scale_x": ("in", 0), "scale_y": ("in", 1), "scale_o": ("out", 0)}
_MODE = {"mode": AttrSpec("str", default="Non_t710_mode", dialect_only=True)}
_BINARY_DTYPE = dtype_rule("csk60xx.eltwise.dtype", "iqAdd / iqSub / iqMul", (None, ("int8",)), None)
_ADD_PACK_RULES = (check_add_out_exponent, check_add_equal_shapes, _BINARY_DTYPE)


def _binary_op(op_type: str, code: int, attrs: dict[str, AttrSpec], rules: tuple[Any, ...],
               pack_rules: tuple[Any, ...], torch_op: str) -> OpDef:
    return OpDef(op_type, "thinker", (2, 2), _binary, attrs={**PLATFORM, **attrs}, scales=_XYO,
                 rules=(ELTWISE_BITS, *rules), pack_rules=pack_rules, torch_ops=(torch_op,),
                 workspace=engine_operands, lowerings={"lnn": Lowering(code, 2, None, "eltwise.c"),
                                                              "thinker": _THINKER_BINARY[op_type]})



# -- thinker package (spec/thinker-package.md 3.3) ----------------------------------------------------------------


def _thinker_clip_inputs(node: Node, graph: Graph) -> list[Any]:
    """The runtime reads integer bounds from two constant inputs of the input's dtype (its attributes are floats)."""
    lo, hi = _lower_clip(node, graph)
    dtype = np.dtype(graph.tensors[node.inputs[0]].dtype)
    return [node.inputs[0], np.array([lo], dtype=dtype), np.array([hi], dtype=dtype)]


def _thinker_clip_attrs(node: Node, graph: Graph) -> bytes:
    lo, hi = _lower_clip(node, graph)
    return struct.pack("<ff", float(hi), float(lo))


def _thinker_read_clip(d: DecodedOp) -> tuple[dict[str, Any], dict[int, Any]]:
    return {}, {1: d.inputs[1].data.reshape(()), 2: d.inputs[2].data.reshape(())}


def _thinker_add_workspace(node: Node, graph: Graph) -> int:
    """iqAdd rescales through the workspace when both operands' exponents differ from the output's."""
    n = [graph.tensors[t].exponent for t in (*node.inputs, node.outputs[0])]
    return graph.tensors[node.inputs[0]].nbytes if n[0] != n[2] and n[1] != n[2] else 0


def _thinker_add_check(node: Node, graph: Graph) -> list[Problem]:
    """The VENUS iqAdd adds operands of one shape and dtype (it broadcasts nothing)."""
    a, b = (graph.tensors[t] for t in node.inputs)
    if a.shape != b.shape or a.dtype != b.dtype:
        return [Problem("csk60xx.thinker.add_shapes", "the runtime's iqAdd takes two operands of one shape and dtype",
                        f"{a.dtype} {a.shape}", f"{b.dtype} {b.shape}",
                        "expand the smaller operand in the layer that computes it (the runtime does not broadcast)")]
    return []


def _mul_operands(node: Node, graph: Graph) -> list[str]:
    """The runtime scales by a one-element constant only as its second operand."""
    a, b = node.inputs
    if graph.tensors[a].nbytes == np.dtype(graph.tensors[a].dtype).itemsize and a in graph.initializers:
        return [b, a]
    return [a, b]


def _mul_form(node: Node, graph: Graph) -> str:
    """Which VENUS iqMul path runs: ``channel`` ([1,C,H,W] by [1,C,1,1]), ``scalar`` (by a one-element constant),
    ``same`` (elementwise, one shape), else ``none``."""
    a, b = (graph.tensors[t] for t in _mul_operands(node, graph))
    if len(a.shape) == 4 and len(b.shape) == 4 and a.shape[1] == b.shape[1] and b.shape[2:] == (1, 1):
        return "channel" if a.shape[0] == b.shape[0] == 1 and a.dtype == b.dtype == "int8" else "none"
    if math.prod(b.shape) == 1 and b.name in graph.initializers:
        return "scalar"
    return "same" if a.shape == b.shape and a.dtype == b.dtype else "none"


def _thinker_mul_workspace(node: Node, graph: Graph) -> int:
    """The per-channel path expands the [1,C,1,1] operand through max(H*W, C) + C*H*W bytes of scratch."""
    if _mul_form(node, graph) != "channel":
        return 0
    _, c, h, w = graph.tensors[_mul_operands(node, graph)[0]].shape
    return max(h * w, c) + c * h * w


def _thinker_mul_check(node: Node, graph: Graph) -> list[Problem]:
    if _mul_form(node, graph) == "none":
        shapes = [graph.tensors[t].shape for t in node.inputs]
        return [Problem("csk60xx.thinker.mul_shapes", "the runtime's iqMul multiplies operands of one shape, by a "
                        "one-element constant, or a [1,C,H,W] tensor by a [1,C,1,1] one (batch 1)",
                        "one of these forms", shapes, "expand the operand in the layer that computes it")]
    return []


def _scalar(arr: np.ndarray, node: Node, graph: Graph) -> tuple[np.ndarray, int]:
    """A one-element second operand is stored with rank 0: the runtime's scalar path tests ``ndim == 0``."""
    return (arr.reshape(()) if arr.size == 1 else arr), 0


def _thinker_sub_check(node: Node, graph: Graph) -> list[Problem]:
    return [Problem("csk60xx.thinker.sub", "the VENUS iqSub kernel subtracts from its output buffer (vendor bug): "
                    "the runtime computes it wrong", "no iqSub", "iqSub",
                    "write x + (-1 * y): negate y in the layer that computes it (e.g. negate its weights), then add")]


_THINKER_RELU = ThinkerLowering("Relu")
_THINKER_CLIP = ThinkerLowering("Clip", attrs=_thinker_clip_attrs, inputs=_thinker_clip_inputs,
                                workspace=None, read=_thinker_read_clip)
_THINKER_BINARY = {
    "iqAdd": ThinkerLowering("iqAdd", workspace=_thinker_add_workspace, check=_thinker_add_check),
    "iqSub": ThinkerLowering("iqSub", check=_thinker_sub_check),
    "iqMul": ThinkerLowering("iqMul", inputs=_mul_operands, relayout={1: _scalar}, workspace=_thinker_mul_workspace,
                             check=_thinker_mul_check),
}

OPS = (
    OpDef("Relu", "", (1, 1), _passthrough,
          pack_rules=(dtype_rule("csk60xx.relu.dtype", "Relu", (INT,), INT),),
          workspace=engine_operands, lowerings={"lnn": Lowering(11, 1, None, "eltwise.c"), "thinker": _THINKER_RELU}),
    OpDef("Clip", "", (1, 3), _clip, same_scale_inputs=(1, 2),
          pack_rules=(dtype_rule("csk60xx.clip.dtype", "Clip", (("int8",),), ("int8",)),),
          workspace=engine_operands, lowerings={"lnn": Lowering(12, 1, _lower_clip, "eltwise.c"),
                                                         "thinker": _THINKER_CLIP}),
    _binary_op("iqAdd", 13, _MODE, (), _ADD_PACK_RULES, "builtin.Add"),
    _binary_op("iqSub", 14, _MODE, (check_sub_unverified,), _ADD_PACK_RULES, "builtin.Sub"),
    _binary_op("iqMul", 15, {}, (),
               (exponent_rule("csk60xx.mul.out_exponent", "iqMul output exponent n_o must be at most n_x + n_y.",
                              "n_y"), check_mul_broadcast, _BINARY_DTYPE), "builtin.Mul"),
)
