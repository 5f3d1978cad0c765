"""Engine-buffer arithmetic shared by the op families (spec/int8-ops.md section 5), and the plan type
that says how an op fits the buffers.

Each op family computes its own buffer sizes and split decision (its ``OpDef.fit``); the hardware rules,
the split rewrite (:mod:`.rewrites`) and the memory planner's weight-prefetch buffers (:mod:`.planner`)
all ask that one function, so a rule can never disagree with the rewrite that fixes what it flags. The
numbers (64 KB, 32 KB) come from ``targets/csk60xx.toml`` through the ``limits`` mapping.

Alignment: ``A_n(v)`` = ``v`` rounded up to a multiple of ``n``; int8 data, one byte per element.

This module imports neither torch nor onnx.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lnn_core.graph import Graph, Node

if TYPE_CHECKING:
    from .ops.opset import OpSet

__all__ = ["align", "conv_input_bytes", "divisor_parts", "chunks", "shape_of", "Problem", "FitPlan", "fit_node"]

Shape = tuple[int, ...]


def align(value: int, to: int) -> int:
    """``value`` rounded up to a multiple of ``to``."""
    return -(-int(value) // to) * to


def conv_input_bytes(c: int, h: int, w: int, stride_w: int) -> int:
    """``A8(C) * H * A_{8*s_w}(W)``: the conv engine's view of an int8 NCHW input (one image)."""
    return align(c, 8) * h * align(w, 8 * stride_w)


def divisor_parts(total: int, fits: Callable[[int], bool]) -> int | None:
    """The smallest number of equal parts ``p`` (``p`` divides ``total``) with ``fits(total // p)``; None if none."""
    for p in range(1, total + 1):
        if total % p == 0 and fits(total // p):
            return p
    return None


def chunks(total: int, chunk: int) -> tuple[int, ...]:
    """``total`` cut into pieces of ``chunk`` (the last one takes the rest)."""
    full, rest = divmod(total, chunk)
    return (chunk,) * full + ((rest,) if rest else ())


def shape_of(graph: Graph, name: str) -> Shape:
    return tuple(int(d) for d in graph.tensors[name].shape)


@dataclass(frozen=True)
class Problem:
    """Why an op cannot be made to fit: the rule id, its limit, the actual value and a hint."""

    rule_id: str
    limit: Any
    actual: Any
    hint: str


@dataclass(frozen=True)
class FitPlan:
    """How one op fits the engine buffers.

    :param action: None (fits as is), or the split the rewrite applies: ``"out_channels"`` (C_out in
        ``parts`` chunks), ``"rows"`` (the output rows in equal slices), ``"out_features"`` (N in equal
        parts), ``"in_rows"`` (the linear's rows M in equal parts).
    :param parts: the sizes of the pieces along the split axis.
    :param problems: what cannot be made to fit (each becomes a violation).
    :param sizes: the aligned byte counts the decision was taken on (for reports).
    :param limit_key: the limit that made the split necessary.
    """

    action: str | None = None
    parts: tuple[int, ...] = ()
    problems: tuple[Problem, ...] = ()
    sizes: Mapping[str, int] = field(default_factory=dict)
    limit_key: str | None = None


def fit_node(graph: Graph, node: Node, limits: Mapping[str, Any], ops: OpSet) -> FitPlan | None:
    """The buffer plan of a node of a shape-inferred graph (None: its op has no engine buffer limit)."""
    op = ops.get(node.op_type)
    if op is None or op.fit is None:
        return None
    shapes = [shape_of(graph, t) if t else None for t in node.inputs]
    return op.fit(node.op_type, node.attrs, shapes, [shape_of(graph, t) for t in node.outputs], limits)
