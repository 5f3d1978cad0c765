"""Matrix product of two activations: ``BmmInt`` (spec/int8-seq-ops.md 2.9, int8-ops.md 3.27, 5.4).

Integer semantics (C kernel ``csrc/ops/bmm.c``), per batch ``b``::

    z_b = SAT_8(SHR(x_b @ y_b, n_x + n_y - n_o))        x [B, M, K] (or [M, K]), y [B, K, N] (or [K, N])

Dialect (linger 1.1.1, spec 2.9.3): ``thinker::BmmInt(x, y)`` with ``scale_x``, ``scale_y``, ``data_bits``,
``scale_o``, ``o_bits``, ``platform_quant``. Limits (spec 2.9.5): int8 in and out; equal ranks 2 or 3 with equal
batches and ``x[-1] = y[-2]``; the right matrix ``ALIGN8(K) * ALIGN4(N) <= 32768`` bytes (tpacker asserts it);
``n_o <= n_x + n_y``. The left matrix is split into row blocks by the kernel when it exceeds 64 KB (no limit).

Thinker package (spec/thinker-package.md 3.5): a ``BmmInt`` record without attributes (the wrapper's struct is
not read). The VENUS kernel stages an operand that is not in share-memory (a constant, which stays in the PSRAM
blob) through its workspace: one batch's right matrix, then the left one; with both operands activations it has
none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, rule

from ..thinker.lowering import ThinkerLowering
from ._rules import at, bits_rule, dtype_rule, exponent_rule, seq
from .base import PLATFORM, AttrSpec, InferContext, Lowering, OpDef, engine_operands

__all__ = ["OPS", "right_bytes"]


def _align(v: int, a: int) -> int:
    return (v + a - 1) // a * a


def right_bytes(k: int, n: int) -> int:
    """The right matrix's aligned int8 bytes on the NPU: ``ALIGN8(K) * ALIGN4(N)``."""
    return _align(k, 8) * _align(n, 4)


def _infer(c: InferContext) -> list[TensorInfo]:
    """``[B, M, K] x [B, K, N] -> [B, M, N]`` (or 2-D), int8."""
    x, y = c.info(0), c.info(1)
    c.dtype(x, ["int8"], "input x")
    c.dtype(y, ["int8"], "input y")
    xs, ys = tuple(x.shape), tuple(y.shape)
    if len(xs) not in (2, 3) or len(ys) != len(xs) or xs[-1] != ys[-2] or xs[:-2] != ys[:-2]:
        raise c.fail(f"operands {xs} and {ys} do not multiply",
                     {"rule": "BmmInt multiplies [B, M, K] by [B, K, N] (or [M, K] by [K, N]), equal ranks 2 or 3"})
    return [c.out("int8", xs[:-1] + ys[-1:], None)]


@rule("csk60xx.bmm.rank", ops=(), ranks="bmm.rank")
def check_rank(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """BmmInt operands must have equal ranks in {ranks} and equal batches (no broadcasting)."""
    x, y = at(seq(op, "input_shapes"), 0), at(seq(op, "input_shapes"), 1)
    ranks = tuple(limits["bmm.rank"])
    if x is None or y is None or (len(x) == len(y) and len(x) in ranks and tuple(x[:-2]) == tuple(y[:-2])):
        return None
    return Finding(actual=f"operands {tuple(x)} and {tuple(y)}", limit=f"equal ranks in {ranks}, equal batches",
                   hint="reshape both operands to [batch, M, K] and [batch, K, N] (lnn export folds 4-D ones)")


@rule("csk60xx.bmm.right_matrix", ops=(), rmax="bmm.right_bytes_max")
def check_right(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """BmmInt's right matrix [K, N] must fit the NPU buffer: ALIGN8(K) * ALIGN4(N) <= {rmax} bytes."""
    y = at(seq(op, "input_shapes"), 1)
    rmax = limits["bmm.right_bytes_max"]
    if y is None or len(y) < 2 or not all(isinstance(d, int) for d in y[-2:]):
        return None
    size = right_bytes(int(y[-2]), int(y[-1]))
    if size <= rmax:
        return None
    return Finding(actual=f"right matrix {tuple(y[-2:])}: {size} bytes", limit=f"<= {rmax} bytes",
                   hint="shorten the sequence, or split the product into blocks of columns (or per head)")


_BITS = {
    "data_bits": AttrSpec("int", default=8, choices=(8,)),
    "o_bits": AttrSpec("int", default=8, choices=(8,)),
}

def _thinker_workspace(node: Node, graph: Graph) -> int:
    """Bytes the VENUS kernel copies its constant operands (PSRAM) into: y's [K, N] and x's [M, K] of one batch."""
    x, y = (graph.tensors[t].shape for t in node.inputs[:2])
    return ((y[-2] * y[-1] if node.inputs[1] in graph.initializers else 0)
            + (x[-2] * x[-1] if node.inputs[0] in graph.initializers else 0))


OPS = (
    OpDef("BmmInt", "thinker", (2, 2), _infer, attrs={**_BITS, **PLATFORM},
          scales={"scale_x": ("in", 0), "scale_y": ("in", 1), "scale_o": ("out", 0)},
          rules=(bits_rule("csk60xx.bmm.bits", "bmm"), check_rank, check_right), torch_ops=("builtin.Matmul",),
          pack_rules=(exponent_rule("csk60xx.bmm.out_exponent",
                                    "BmmInt output exponent n_o must be at most n_x + n_y.", "n_y"),
                      dtype_rule("csk60xx.bmm.dtype", "BmmInt", (("int8",), ("int8",)), ("int8",))),
          workspace=engine_operands, lowerings={"lnn": Lowering(29, 2, None, "bmm.c"),
                                                "thinker": ThinkerLowering("BmmInt", workspace=_thinker_workspace)}),
)
