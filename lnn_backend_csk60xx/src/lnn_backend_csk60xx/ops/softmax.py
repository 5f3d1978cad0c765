"""Softmax and log-softmax over the last dimension: ``SoftmaxInt``, ``LogSoftmaxInt`` (spec/int8-seq-ops.md 2.4,
2.5). NOT bit-verified against the vendor: the core is the closed HiFi ``vec_softmax32x32`` / ``vec_logn_32x32``;
the C kernel implements the spec's stated model (``OpDef.bit_verified=False``, ``lnn rules`` marks the ops).

Integer semantics (C kernel ``csrc/ops/softmax.c``), per row of ``R`` int8 values at ``n_x`` (the last dim)::

    x25 = SAT_32(x * 2^(25 - n_x))                                      0 <= n_x <= 25
    y15 = softmax_q15(x25)          max subtraction, log2-domain Q23 exponent (5-term polynomial), saturating
                                    sum, normalized reciprocal (seed 0xBB5000 - X, two Newton steps); Q15
    SoftmaxInt:     y = SAT_8(SHR(y15, 15 - n_o))                       n_o <= 15
    LogSoftmaxInt:  l = y15 <= 0 ? -2^31 : min(0, R(ln(y15 / 2^15) * 2^25));  y = SAT_8(SHR(l, 25 - n_o))   n_o <= 25

Dialect (linger 1.1.1, spec 2.4.3, 2.5.3): ``thinker::SoftmaxInt(x)`` / ``thinker::LogSoftmaxInt(x)`` with
``scale_x``, ``data_bits``, ``dim`` (as the user gave it; lnn export writes -1), ``scale_o``, ``o_bits``,
``platform_quant``. Limits (spec 2.4.5, 2.5.5, 6.5): int8 in and out; the last dimension only (SoftmaxInt: dim -1
or rank - 1; LogSoftmaxInt: dim -1 literally, or 1 of a 2-D input, because the chip reads any other dim as axis
1); rows of at most 2048; ``0 <= n_x <= 25``; ``n_o <= 15`` (softmax) / ``25`` (log-softmax). The kernel's
row-by-row path needs 8R bytes of share-memory workspace (tpacker declares 2R, spec 1.5), planned through
``kernel_workspace``.

Thinker package (spec/thinker-package.md 3.5): ``SoftmaxInt`` / ``LogSoftmaxInt`` records with the one-byte
{axis} struct (the IR's ``dim``) and one 8R-byte workspace, which the VENUS kernels dereference whatever its size
(none would crash them). The vendor's x86 build cannot run them (its HiFi library is not public).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, rule

from ..thinker.lowering import DecodedOp, ThinkerLowering
from ._rules import at, dtype_rule, seq
from .base import PLATFORM, AttrSpec, InferContext, Lowering, OpDef, engine_operands, known_shapes

__all__ = ["OPS"]

_IR = ("SoftmaxInt", "LogSoftmaxInt")


def _infer(c: InferContext) -> list[TensorInfo]:
    """Same shape, int8 out at the file's ``scale_o``."""
    x = c.info(0)
    c.dtype(x, ["int8"], "input")
    return [c.out("int8", x.shape, None)]


def _rank(op: OpView) -> int | None:
    x = at(seq(op, "input_shapes"), 0)
    return len(x) if x is not None else None


@rule("csk60xx.softmax.dim", ops=())
def check_dim(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """softmax / log-softmax run over the last dimension only: dim -1 (SoftmaxInt also the last index; the chip's
    LogSoftmaxInt reads any dim other than -1 as axis 1, so only a 2-D input may say 1)."""
    dim, rank = op.attrs.get("dim"), _rank(op)
    if "dim" not in op.attrs:
        return None
    if isinstance(dim, int) and dim == -1:
        return None
    if op.op_type in _IR and rank is not None:
        if op.op_type == "SoftmaxInt" and dim == rank - 1:
            return None
        if op.op_type == "LogSoftmaxInt" and rank == 2 and dim == 1:
            return None
    elif op.op_type not in _IR and isinstance(dim, int) and dim >= 0 and rank is None:
        return None  # the torch op, shape unknown: whether a positive dim is the last is checked at its first forward
    kind = "log-softmax" if "Log" in op.op_type or op.attrs.get("kind") == "log_softmax" else "softmax"
    return Finding(actual=f"dim={dim}" + (f" of a rank-{rank} input" if rank is not None else ""),
                   limit="dim=-1 (the last dimension)",
                   hint=f"move the {kind} dimension last (x.transpose(d, -1)), apply it with dim=-1, and transpose "
                        "back" + ("" if op.op_type in _IR else "; give dim explicitly"))


@rule("csk60xx.softmax.row", ops=(), rmax="softmax.row_max")
def check_row(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """softmax / log-softmax rows (the last dimension) must have at most {rmax} elements (the torch op: at lnn.init
    when it is given example_inputs, else at its first forward, where the shape is known)."""
    x = at(seq(op, "input_shapes"), 0)
    rmax = limits["softmax.row_max"]
    if not x or not isinstance(x[-1], int) or x[-1] <= rmax:
        return None
    return Finding(actual=f"row of {x[-1]}", limit=f"row <= {rmax}",
                   hint=f"split the last dimension into rows of <= {rmax} (or shorten the sequence)")


@rule("csk60xx.softmax.input_bits", ops=(), data="softmax.data_bits")
def check_input_bits(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """softmax / log-softmax read a {data}-bit tensor."""
    bits, allowed = op.attrs.get("data_bits"), tuple(limits["softmax.data_bits"])
    if bits is None or bits in allowed:
        return None
    return Finding(actual=f"{bits}-bit input", limit=f"input bits in {allowed}",
                   hint=f"set act_bits={allowed[0]} for the layer that feeds this op (QuantConfig.by_path)")


@rule("csk60xx.softmax.in_exponent", ops=(), emin="softmax.in_exponent_min", emax="softmax.in_exponent_max")
def check_in_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """SoftmaxInt / LogSoftmaxInt input exponent must be {emin}..{emax} (x is widened to Q25 by a left shift)."""
    n = at(seq(op, "input_exponents"), 0)
    lo, hi = limits["softmax.in_exponent_min"], limits["softmax.in_exponent_max"]
    if n is None or lo <= n <= hi:
        return None
    return Finding(actual=f"n_x {n}", limit=f"{lo} <= n_x <= {hi}",
                   hint="scale the softmax input into |x| < 128 (n_x >= 0), e.g. by scaling the logits down"
                   if n < lo else f"requantize the input to exponent {hi} or less")


@rule("csk60xx.softmax.out_exponent", ops=(), smax="softmax.out_exponent_max", lmax="softmax.log_out_exponent_max")
def check_out_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """SoftmaxInt output exponent must be at most {smax}, LogSoftmaxInt's at most {lmax} (the shift is unsigned)."""
    n = at(seq(op, "output_exponents"), 0)
    hi = limits["softmax.log_out_exponent_max" if op.op_type == "LogSoftmaxInt" else "softmax.out_exponent_max"]
    if n is None or n <= hi:
        return None
    return Finding(actual=f"n_o {n}", limit=f"n_o <= {hi}", hint=f"choose an output scale of at most 2^{hi}")


def _kernel_workspace(graph: Graph, node: Node) -> int:
    """The row-by-row path's scratch: an int32 input and an int32 output row, 8R bytes (tpacker declares 2R;
    spec 2.4.5, 2.5.5, 6.9)."""
    shapes = known_shapes(graph, node.inputs[0])
    return 8 * int(shapes[0][-1]) if shapes is not None and shapes[0] else 0


def _workspace(graph: Graph, node: Node) -> list[tuple[Any, str, bool]]:
    """The kernel reads and writes whole rows: a PSRAM operand is copied to share-memory whole."""
    return engine_operands(graph, node, whole=(0, "out"))


_ATTRS = {
    "data_bits": AttrSpec("int", default=8, choices=(8,)),
    "o_bits": AttrSpec("int", default=8, choices=(8,)),
    "dim": AttrSpec("int", default=-1),
}


_DTYPE = dtype_rule("csk60xx.softmax.dtype", "SoftmaxInt / LogSoftmaxInt", (("int8",),), ("int8",))


# -- thinker package (spec/thinker-package.md 3.5) ----------------------------------------------------------------

def _thinker_attrs(node: Node, graph: Graph) -> bytes:
    """{i8 axis}: the IR's dim (-1, or the last index, which both kernels read as the last dimension)."""
    return int(node.attrs.get("dim", -1)).to_bytes(1, "little", signed=True)


def _thinker_read(d: DecodedOp) -> tuple[dict[str, Any], dict[int, Any]]:
    return {"dim": int.from_bytes(d.attrs[:1], "little", signed=True)}, {}


def _thinker(op_type: str) -> ThinkerLowering:
    return ThinkerLowering(op_type, attrs=_thinker_attrs, workspace=lambda n, g: _kernel_workspace(g, n),
                           read=_thinker_read)


def _op(op_type: str, code: int, torch_op: str) -> OpDef:
    return OpDef(op_type, "thinker", (1, 1), _infer, attrs={**_ATTRS, **PLATFORM},
                 scales={"scale_x": ("in", 0), "scale_o": ("out", 0)},
                 rules=(check_dim, check_row, check_input_bits), torch_ops=(torch_op,),
                 pack_rules=(check_in_exponent, check_out_exponent, _DTYPE),
                 workspace=_workspace, kernel_workspace=_kernel_workspace, bit_verified=False,
                 lowerings={"lnn": Lowering(code, 1, None, "softmax.c"), "thinker": _thinker(op_type)})


OPS = (
    _op("SoftmaxInt", 27, "builtin.Softmax"),
    _op("LogSoftmaxInt", 28, "builtin.LogSoftmax"),
)
