"""Normalisation: ``BatchNorm2dInt`` (a BatchNorm that could not be folded into a preceding conv).

Integer semantics (spec/int8-ops.md): per channel ``y = RQ_8(x * a[c] + b[c], n_x + n_a - n_o)`` with int8
``a`` and int32 ``b`` at ``n_x + n_a``. C kernel: ``csrc/ops/norm.c``.
"""

from __future__ import annotations

import math

from lnn_core.graph import Graph, Node, TensorInfo

from ..sizes import shape_of
from ..thinker.lowering import ThinkerLowering
from ._rules import dtype_rule, exponent_rule
from .base import PLATFORM, AttrSpec, InferContext, Lowering, OpDef, Params, engine_operands, obits_dtype

__all__ = ["OPS"]


def _infer(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    w = c.info(1)
    b = c.info(2)
    c.rank(x, [4], "input")
    c.dtype(x, ["int8"], "input")
    c.dtype(w, ["int8"], "weight")
    c.dtype(b, ["int32"], "bias")
    if w.shape != (x.shape[1],) or b.shape != (x.shape[1],):
        raise c.fail("weight/bias do not match the channels", {"input": x.shape, "weight": w.shape, "bias": b.shape})
    return [c.out(obits_dtype(c), x.shape, None)]


def _prefetch(graph: Graph, node: Node) -> int:
    return shape_of(graph, node.inputs[1])[0]



# -- thinker package (spec/thinker-package.md 3.3): a, b read in place from the blob; H*W*4 bytes of workspace --

_THINKER_BN = ThinkerLowering("BatchNorm2dInt", inputs=lambda n, g: n.inputs[:3],
                              workspace=lambda n, g: 4 * math.prod(g.tensors[n.inputs[0]].shape[2:4]))

OPS = (
    OpDef("BatchNorm2dInt", "thinker", (3, 5), _infer,
          attrs={"data_bits": AttrSpec("int", default=8, choices=(8,)),
                 "parameter_bits": AttrSpec("int", default=8, choices=(8,)),
                 "o_bits": AttrSpec("int", default=8, choices=(8,)), **PLATFORM},
          scales={"scale_x": ("in", 0), "scale_w": ("in", 1), "scale_o": ("out", 0)}, params=(Params(1, 2),),
          pack_rules=(exponent_rule("csk60xx.batchnorm.out_exponent",
                                    "BatchNorm output exponent n_o must be at most n_x + n_w.", "n_w"),
                      dtype_rule("csk60xx.batchnorm.dtype", "BatchNorm2dInt", (("int8",), ("int8",), ("int32",)),
                                 ("int8",))),
          prefetch_bytes=_prefetch, workspace=engine_operands, lowerings={"lnn": Lowering(8, 3, None, "norm.c"),
                                                                        "thinker": _THINKER_BN}),
)
