"""Activations on int16: ``iqSigmoid`` and ``iqTanh`` (spec/int8-seq-ops.md 1.3, 2.6, 2.7).

An int8 tensor reaches them through a requantization to int16 (linger writes x256; lnn export lands on exponent
11 wherever an exact left shift can, and first requantizes to int8 at exponent 3 when the int8 exponent is below
3: the kernels read Q11 and only shift right). Integer semantics (C kernel
``csrc/ops/activation.c``)::

    t = n_x > 11 ? SAT_16(SHR(x, n_x - 11)) : x        n_x >= 11
    y = SAT_8(SHR(SAT_16(pwl15(t)), 8))                 int8 at exponent 7 (scale_o = 128)

``pwl15`` is the 16-segment piecewise-linear ``luna_sigmoid`` / ``luna_tanh`` (Q11 in, Q15 out).

Dialect (linger 1.1.1, spec 2.6.3): ``thinker::iqSigmoid`` / ``thinker::iqTanh`` with ``scale_x`` (of the
int16 input), ``scale_o = 128.0``, ``platform_quant = "luna_quant"``, ``castor_mode = "luna"``; the output is
declared int8. Limits (spec 2.6.5, 6.6): int16 input at exponent >= 11, int8 output at exponent 7, both operands
in share-memory (a PSRAM operand gets a whole-tensor workspace); iqTanh rescales its input in place when its
exponent is not 11 (spec 2.6.4), so that tensor may have no other reader. At ``lnn.init`` the torch ops must
read an int8 input (the requantization to int16 widens int8 only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, rule

from ..thinker.lowering import QUANT_LUNA, ThinkerLowering
from ._rules import INT, at, dtype_rule, seq
from .base import PLATFORM, AttrSpec, InferContext, Lowering, OpDef, engine_operands

__all__ = ["OPS"]


def _activation(c: InferContext) -> list[TensorInfo]:
    """Same shape, int8 out; the output's exponent is the file's ``scale_o`` (a rule requires 7)."""
    x = c.info(0)
    c.dtype(x, list(INT), "input")
    return [c.out("int8", x.shape, None)]


@rule("csk60xx.activation.in_exponent", ops=(), emin="activation.in_exponent_min")
def check_in_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqSigmoid / iqTanh input exponent must be at least {emin} (Q11: the kernel only shifts right)."""
    n = at(seq(op, "input_exponents"), 0)
    emin = limits["activation.in_exponent_min"]
    if n is None or n >= emin:
        return None
    return Finding(actual=f"n_x {n}", limit=f"n_x >= {emin}",
                   hint=f"requantize the int8 input to int16 at exponent {emin} or more (x256 from an int8 exponent of "
                        f"at least {emin - 8}; lnn export first requantizes int8 to exponent {emin - 8} when it is "
                        "lower)")


@rule("csk60xx.activation.out_exponent", ops=(), eout="activation.out_exponent")
def check_out_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqSigmoid / iqTanh output exponent must be {eout} (the kernel writes Q7 whatever scale_o says)."""
    n = at(seq(op, "output_exponents"), 0)
    want = limits["activation.out_exponent"]
    if n is None or n == want:
        return None
    return Finding(actual=f"n_o {n} (scale_o {2.0 ** n:g})", limit=f"n_o = {want} (scale_o {2.0 ** want:g})",
                   hint=f"write scale_o = {2.0 ** want:g}: the chip's output is Q{want} whatever the attribute says")


@rule("csk60xx.activation.input_bits", ops=(), data="activation.data_bits")
def check_input_bits(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """sigmoid / tanh read a {data}-bit tensor, which a requantization widens to int16 for the kernel."""
    bits, allowed = op.attrs.get("data_bits"), tuple(limits["activation.data_bits"])
    if op.op_type in _IR_TYPES:
        return None  # the IR node reads the requantized int16; csk60xx.activation.dtype judges it
    if bits is None or bits in allowed:
        return None
    return Finding(actual=f"{bits}-bit input", limit=f"input bits in {allowed}",
                   hint=f"set act_bits={allowed[0]} for the layer that feeds this op (QuantConfig.by_path)")


@rule("csk60xx.tanh.shared_input", ops=(), emin="activation.in_exponent_min")
def check_tanh_shared_input(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqTanh with an input exponent other than {emin} rescales its int16 input in place: no other op may read it."""
    n, readers = at(seq(op, "input_exponents"), 0), op.attrs.get("input_readers")
    q = limits["activation.in_exponent_min"]
    if n is None or n == q or readers is None or readers <= 1:
        return None
    return Finding(actual=f"n_x {n}, input read by {readers} ops (or a graph output)",
                   limit=f"one reader, or n_x = {q}",
                   hint="give iqTanh its own requantization (lnn export does), or requantize its input to exponent "
                        f"{q}")


def _readers(graph: Graph, node: Node, attrs: dict[str, Any]) -> None:
    """``input_readers``: the ops that read input 0, a graph output counting as one more."""
    x = node.inputs[0] if node.inputs else ""
    attrs["input_readers"] = sum(x in n.inputs for n in graph.nodes) + (x in graph.outputs)


_DTYPE = dtype_rule("csk60xx.activation.dtype", "iqSigmoid / iqTanh", (("int16",),), ("int8",))


def _workspace(graph: Graph, node: Node) -> list[tuple[Any, str, bool]]:
    """Both operands must be in share-memory (tpacker asserts it): a PSRAM one is copied there whole."""
    return engine_operands(graph, node, whole=(0, "out"))


_CASTOR = {"castor_mode": AttrSpec("str", default="luna", choices=("luna",), dialect_only=True)}


def _op(op_type: str, code: int, torch_op: str, *extra: Any) -> OpDef:
    return OpDef(op_type, "thinker", (1, 1), _activation, attrs={**PLATFORM, **_CASTOR},
                 scales={"scale_x": ("in", 0), "scale_o": ("out", 0)}, rules=(check_input_bits,),
                 torch_ops=(torch_op,), pack_rules=(check_in_exponent, check_out_exponent, _DTYPE, *extra),
                 view=_readers, workspace=_workspace, lowerings={"lnn": Lowering(code, 1, None, "activation.c"),
                                                                  "thinker": _THINKER_ACT[op_type]})


_IR_TYPES = ("iqSigmoid", "iqTanh")


# -- thinker package (spec/thinker-package.md 3.5) ----------------------------------------------------------------


def _thinker_sigmoid_workspace(node: Node, graph: Graph) -> int:
    """iqSigmoid rescales a non-Q11 input through 2 bytes per input byte of scratch; its wrapper always reads a
    workspace tensor, so one (of 16 bytes) is listed even when the input is on Q11."""
    x = graph.tensors[node.inputs[0]]
    return 2 * x.nbytes if x.exponent != 11 else 16


_THINKER_ACT = {
    "iqSigmoid": ThinkerLowering("iqSigmoid", workspace=_thinker_sigmoid_workspace),
    "iqTanh": ThinkerLowering("iqTanh", attrs=lambda n, g: bytes([QUANT_LUNA, 0]), workspace=None),
}

OPS = (
    _op("iqSigmoid", 24, "builtin.Sigmoid"),
    _op("iqTanh", 25, "builtin.Tanh", check_tanh_shared_input),
)
