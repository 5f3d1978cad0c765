"""Moving between float and integers, and between integer widths: ``Quant``, ``Dequant``, ``Requant``.

Integer semantics (spec/int8-ops.md): ``Quant`` is ``SAT_8(floorf(2^n * x + 0.5f))`` in float32 (it runs
on the CPU); ``Dequant`` is ``q * 2^-n`` in float32; ``Requant`` is ``RQ_o(x, n_x - n_o)`` from int8 to
8, 16 or 32 bits. C kernels: ``csrc/ops/quant.c``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, rule

from ..thinker.lowering import QUANT_LUNA, Problem, ThinkerLowering
from ._rules import INT, at, dtype_rule, seq
from .base import PLATFORM, AttrSpec, InferContext, Lowering, OpDef, engine_operands, obits_dtype

__all__ = ["OPS"]


def _quant(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    c.dtype(x, ["float32"], "input")
    if c.attr("data_bits", 8) != 8:
        raise c.fail("Quant writes int8 only", {"data_bits": c.attr("data_bits")})
    return [c.out("int8", x.shape, None)]


def _dequant(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    c.dtype(x, ["int8", "uint8", "int16", "int32"], "input")
    return [c.out("float32", x.shape, None)]


def _requant(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    c.dtype(x, ["int8"], "input")
    if c.attr("data_bits", 8) != 8:
        raise c.fail("Requant reads int8 only", {"data_bits": c.attr("data_bits")})
    return [c.out(obits_dtype(c), x.shape, None)]


@rule("csk60xx.quant.exponent", ops=(), emin="quant.exponent_min")
def check_quant_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Quant output exponent n must be at least {emin} (the chip computes 1 << n)."""
    n = at(seq(op, "output_exponents"), 0)
    if n is not None and n < limits["quant.exponent_min"]:
        return Finding(actual=f"n {n} (scale 2^{n})", limit=f"n >= {limits['quant.exponent_min']}",
                       hint="the input range is above 127; normalise the input (divide by a power of two) "
                            "before it enters the model")
    return None


_DATA8 = {"data_bits": AttrSpec("int", default=8, choices=(8,))}


# -- thinker package (spec/thinker-package.md 3.3) ---------------------------------------------------------------


def _thinker_float_io(index: int, dtype: str, role: str):
    def check(node: Node, graph: Graph) -> list[Problem]:
        name = node.inputs[0] if role == "input" else node.outputs[0]
        actual = graph.tensors[name].dtype
        if actual != dtype:
            return [Problem(f"csk60xx.thinker.{node.op_type.lower()}_dtype",
                            f"the runtime's {node.op_type} {role} must be {dtype}", dtype, actual,
                            "keep the float graph input/output at int8 (8-bit Quant/Dequant)")]
        return []
    return check


_THINKER_QUANT = ThinkerLowering("Quant", attrs=lambda n, g: bytes([8, QUANT_LUNA]),
                                 check=_thinker_float_io(0, "int8", "output"))
_THINKER_DEQUANT = ThinkerLowering("Dequant", check=_thinker_float_io(0, "int8", "input"))
_THINKER_REQUANT = ThinkerLowering(
    "Requant", attrs=lambda n, g: bytes([8, {"int8": 8, "int16": 16, "int32": 32}[g.tensors[n.outputs[0]].dtype],
                                         QUANT_LUNA]),
    workspace=None, read=lambda d: ({"data_bits": d.attrs[0], "o_bits": d.attrs[1]}, {}))

OPS = (
    OpDef("Quant", "thinker", (1, 1), _quant, attrs={**_DATA8, **PLATFORM}, scales={"scale_x": ("out", 0)},
          pack_rules=(check_quant_exponent,
                      dtype_rule("csk60xx.quant.dtype", "Quant", (("float32",),), ("int8",))),
          lowerings={"lnn": Lowering(1, 1, None, "quant.c"), "thinker": _THINKER_QUANT}),
    OpDef("Dequant", "thinker", (1, 1), _dequant, scales={"scale_o": ("in", 0)},
          pack_rules=(dtype_rule("csk60xx.dequant.dtype", "Dequant", (("int8", "uint8"),), ("float32",)),),
          lowerings={"lnn": Lowering(2, 1, None, "quant.c"), "thinker": _THINKER_DEQUANT}),
    OpDef("Requant", "thinker", (1, 1), _requant,
          attrs={**_DATA8, "o_bits": AttrSpec("int", required=True, choices=(8, 16, 32)), **PLATFORM},
          scales={"scale_x": ("in", 0), "scale_o": ("out", 0)},
          pack_rules=(dtype_rule("csk60xx.requant.dtype", "Requant", (("int8",),), INT),),
          workspace=engine_operands, lowerings={"lnn": Lowering(3, 1, None, "quant.c"), "thinker": _THINKER_REQUANT}),
)
