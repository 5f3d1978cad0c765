"""Fully connected layers on the VENUS matrix engine: ``LinearInt``.

Integer semantics (spec/int8-ops.md): ``y = RQ_o(x @ w.T + bias, n_x + n_w - n_o)`` over the last axis,
int32 bias at ``n_x + n_w``. C kernel: ``csrc/ops/fc.c``.

Engine buffers (``A_n`` rounds up to a multiple of ``n``): the left matrix (activations)
``A4(M) * A8(K)`` <= 64 KB, else its rows M are split; the right matrix (weights) ``A8(K) * A4(N)``
<= 32 KB, else N is split into equal parts.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, rule

from ..sizes import FitPlan, Problem, align, divisor_parts, shape_of
from ..thinker.lowering import QUANT_LUNA, DecodedOp, ThinkerLowering, relayout_linear, restore_linear
from ..thinker.lowering import Problem as TProblem
from ._rules import bits_rule, buffer_rule, dtype_rule, exponent_rule
from .base import PLATFORM, AttrSpec, InferContext, Lowering, OpDef, Params, engine_operands, known_shapes, obits_dtype

__all__ = ["OPS", "linear_fit", "linear_left_bytes", "linear_right_bytes"]


def linear_left_bytes(m: int, k: int) -> int:
    """``A4(M) * A8(K)``: the matrix engine's left operand (the activations)."""
    return align(m, 4) * align(k, 8)


def linear_right_bytes(k: int, n: int) -> int:
    """``A8(K) * A4(N)``: the matrix engine's right operand (the weights)."""
    return align(k, 8) * align(n, 4)


def linear_fit(op_type: str, attrs: Mapping[str, Any], input_shapes: Any, output_shapes: Any,
               limits: Mapping[str, Any]) -> FitPlan | None:
    """Right matrix above 32 KB -> N split into equal parts; left matrix above 64 KB -> rows split.

    The rows (M) split slices the input along its second-to-last axis, so the axes before it must be 1.
    The N split is decided on each rows piece again (the rewrite re-examines the pieces).
    """
    if len(input_shapes) < 2 or input_shapes[1] is None:
        return None
    x, w = tuple(input_shapes[0]), tuple(input_shapes[1])
    k, n = w[1], w[0]
    m = math.prod(x[:-1])
    left, right = linear_left_bytes(m, k), linear_right_bytes(k, n)
    l_max, r_max = limits["linear.left_bytes_max"], limits["linear.right_bytes_max"]
    sizes = {"left_bytes": left, "right_bytes": right}
    problems = []
    if left > l_max:
        rows_ok = len(x) >= 2 and math.prod(x[:-2]) == 1
        parts = divisor_parts(m, lambda rows: linear_left_bytes(rows, k) <= l_max) if rows_ok else None
        if parts is not None:
            return FitPlan("in_rows", (m // parts,) * parts, (), sizes, "linear.left_bytes_max")
        problems.append(Problem("csk60xx.linear.input_bytes", f"{l_max} bytes (A4(M) * A8(K))",
                                f"{left} bytes = A4({m}) x A8({k})" + ("" if rows_ok else
                                                                        f", input {x} cannot be cut by rows"),
                                "reduce in_features, or feed the rows as a [1, M, K] tensor so they can be split"))
    if right > r_max:
        parts = divisor_parts(n, lambda cols: linear_right_bytes(k, cols) <= r_max)
        if parts is not None and not problems:
            return FitPlan("out_features", (n // parts,) * parts, (), sizes, "linear.right_bytes_max")
        if parts is None:
            problems.append(Problem("csk60xx.linear.weight_bytes", f"{r_max} bytes (A8(K) * A4(N))",
                                    f"{right} bytes = A8({k}) x A4({n}); no equal split of N={n} fits",
                                    f"keep A8(in_features) x 4 <= {r_max}, or choose out_features with small divisors"))
    return FitPlan(None, (), tuple(problems), sizes)


def _prefetch(graph: Graph, node: Node) -> int:
    w = shape_of(graph, node.inputs[1])
    return linear_right_bytes(w[1], w[0])


def _infer(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    w = c.info(1)
    c.dtype(x, ["int8"], "input")
    c.rank(x, [1, 2, 3, 4], "input")
    c.dtype(w, ["int8"], "weight")
    c.rank(w, [2], "weight")
    if w.shape[1] != x.shape[-1]:
        raise c.fail("weight does not match the input features",
                     {"rule": "LinearInt weight is [out_features, in_features]", "input": x.shape,
                      "weight": w.shape})
    b = c.info(2, optional=True)
    if b is not None:
        c.dtype(b, ["int32"], "bias")
        if b.shape != (w.shape[0],):
            raise c.fail("bias shape does not match out_features", {"bias": b.shape, "weight": w.shape})
    return [c.out(obits_dtype(c), [*x.shape[:-1], w.shape[0]], None)]


def _view(graph: Graph, node: Node, attrs: dict[str, Any]) -> None:
    shapes = known_shapes(graph, node.inputs[0], node.outputs[0])
    if shapes is not None and len(shapes[0]) >= 2:
        attrs["in_features"], attrs["out_features"] = shapes[0][-1], shapes[1][-1]


@rule("csk60xx.linear.in_features", ops=(), kmax="linear.in_features_max")
def check_linear_in_features(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Linear layers may have at most {kmax} input features: even one output column of the weight takes
    ALIGN8(K) x ALIGN4(1) bytes of the 32 KB right-matrix buffer (linger allows 16384, which cannot be packed)."""
    k = op.attrs.get("in_features")
    if k is not None and k > limits["linear.in_features_max"]:
        return Finding(actual=f"{k} input features", limit=f"<= {limits['linear.in_features_max']}",
                       hint="reduce the features first (pooling or a 1x1 conv) before the linear layer")
    return None


_PACK_RULES = (
    buffer_rule("csk60xx.linear.weight_bytes", linear_fit,
                "Linear weights A8(K)*A4(N) above {max} bytes are split into equal parts of N; some equal part "
                "must fit {max} bytes.", max="linear.right_bytes_max"),
    buffer_rule("csk60xx.linear.input_bytes", linear_fit,
                "Linear input A4(M)*A8(K) above {max} bytes is split into equal row slices (rows on the "
                "second-to-last axis, size-1 axes before it); some slice must fit {max} bytes.",
                max="linear.left_bytes_max"),
    exponent_rule("csk60xx.linear.out_exponent", "Linear output exponent n_o must be at most n_x + n_w.", "n_w"),
    dtype_rule("csk60xx.linear.dtype", "LinearInt", (None, None, ("int32",)), None),
)

_QBITS = {
    "data_bits": AttrSpec("int", default=8, choices=(8,)),
    "parameter_bits": AttrSpec("int", default=8, choices=(8,)),
    "o_bits": AttrSpec("int", default=8, choices=(8, 16, 32)),
}


# -- thinker package (spec/thinker-package.md 3.3, 6) -------------------------------------------------------------


def _thinker_linear_workspace(node: Node, graph: Graph) -> int:
    """With a bias the VENUS kernel accumulates int32 rows in the workspace (4 bytes per output element)."""
    if len(node.inputs) < 3 or not node.inputs[2]:
        return 0
    return 4 * math.prod(graph.tensors[node.outputs[0]].shape)


def _thinker_linear_check(node: Node, graph: Graph) -> list[TProblem]:
    x = graph.tensors[node.inputs[0]].shape
    out = []
    if len(x) > 3:
        out.append(TProblem("csk60xx.thinker.linear_rank", "the runtime's LinearInt reads inputs of rank 1 to 3",
                           "rank <= 3", len(x), "flatten the leading dimensions first"))
    if node.inputs[1] not in graph.initializers:
        out.append(TProblem("csk60xx.thinker.linear_weight", "the weight must be a constant", "constant", "computed",
                           "export the weights as initializers"))
    return out


def _thinker_read_linear(d: DecodedOp) -> tuple[dict[str, Any], dict[int, Any]]:
    return {}, {1: restore_linear(d.inputs[1].data)}


_THINKER_LINEAR = ThinkerLowering("LinearInt", attrs=lambda n, g: struct.pack("<ffiiB3x", 0.0, 0.0, 0, 0, QUANT_LUNA),
                                  relayout={1: relayout_linear}, dma=True, workspace=_thinker_linear_workspace,
                                  check=_thinker_linear_check, read=_thinker_read_linear, max_rank=3)

OPS = (
    OpDef("LinearInt", "thinker", (2, 3), _infer, attrs={**_QBITS, **PLATFORM},
          scales={"scale_x": ("in", 0), "scale_w": ("in", 1), "scale_o": ("out", 0)}, params=(Params(1, 2),),
          rules=(bits_rule("csk60xx.linear.bits", "linear"), check_linear_in_features), pack_rules=_PACK_RULES,
          torch_ops=("builtin.Linear",), view=_view, fit=linear_fit, prefetch_bytes=_prefetch,
          workspace=engine_operands, lowerings={"lnn": Lowering(7, 3, None, "fc.c"), "thinker": _THINKER_LINEAR}),
)
