"""Shape, dtype and exponent inference: the first step of reading, checking and packing a graph.

Each op's shape rule lives with its op family (``OpDef.infer``, :mod:`.ops`); this module runs them in
topological order. A rule returns ``exponent=None`` for an output whose exponent is not derived from the
inputs (a conv's output exponent comes from its ``scale_o``); :func:`infer_shapes` then keeps the
exponent already stored on the tensor. The graph rewrites that come after it are in :mod:`.rewrites`.

This module imports neither torch nor onnx.
"""

from __future__ import annotations

import logging

from lnn_core.graph import Graph, Node, TensorInfo

from .ops.base import InferContext
from .ops.opset import OpSet

__all__ = ["infer_node", "infer_shapes"]

log = logging.getLogger("lnn.backend.inference")


def infer_node(graph: Graph, node: Node, ops: OpSet | None = None, *, path: str | None = None) -> list[TensorInfo]:
    """Check ``node``'s inputs and return its output tensors (shape, dtype, exponent or None).

    :param ops: the ops of this run (:meth:`OpSet.from_host`; default: the built-in ones).
    :raises ModelFileError: (attributes ``node`` and ``path``) when the op is unknown, an input is
        missing or ill-shaped, or an output dimension would be smaller than 1.
    """
    c = InferContext(graph, node, path)
    ops = ops if ops is not None else OpSet.builtin_only()
    op = ops.get(node.op_type)
    if op is None:
        raise c.fail(f"op type {node.op_type!r} has no shape rule", {"supported": ", ".join(sorted(ops))},
                     "if a plugin provides this op, install it and pack through `lnn pack` (or pass "
                     "ops=OpSet.from_host(host))")
    if len(node.outputs) != op.outputs or not all(node.outputs):
        raise c.fail(f"the op must have exactly {op.outputs} output{'s' if op.outputs != 1 else ''}",
                     {"outputs": node.outputs})
    try:
        infos = op.infer(c)
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        # an attribute of the wrong structure (the reader checks types; hand-built graphs may not)
        raise c.fail(f"attributes cannot be interpreted: {exc}", {"attributes": node.attrs}) from exc
    if len(infos) != len(node.outputs):
        raise c.fail(f"the shape rule of {node.op_type} returned {len(infos)} tensors for {len(node.outputs)} outputs",
                     {"outputs": node.outputs}, "fix the op's shape rule: one TensorInfo per output")
    return infos


def infer_shapes(graph: Graph, ops: OpSet | None = None, *, path: str | None = None) -> Graph:
    """Fill shape, dtype and (for pass-through ops) exponent of every node output, in place.

    ``graph`` is first sorted topologically (:meth:`Graph.toposort`). An output exponent already
    stored on the tensor is kept when the rule does not derive one; an integer output without any
    exponent is an error. Returns ``graph``.
    """
    ops = ops if ops is not None else OpSet.builtin_only()
    graph.toposort(path=path)
    for node in graph.nodes:
        for info in infer_node(graph, node, ops, path=path):
            old = graph.tensors.get(info.name)
            if info.exponent is None and old is not None:
                info.exponent = old.exponent
            if info.exponent is None and info.dtype != "float32":
                raise InferContext(graph, node, path).fail(
                    f"output {info.name!r} has no scale exponent",
                    {"rule": "every integer tensor carries a power-of-two exponent"})
            graph.tensors[info.name] = info
    log.debug("inferred shapes of %d nodes", len(graph.nodes))
    return graph
