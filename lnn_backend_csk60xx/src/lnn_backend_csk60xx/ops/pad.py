"""Constant zero padding: ``iqPad`` (spec/int8-ops.md 3.31; thinker ``venus/iqpad.h``).

Integer semantics (C kernel ``csrc/ops/pad.c``): zero is exact at every scale, so dtype and exponent pass
through and nothing is computed::

    y[n, c, h + top, w + left] = x[n, c, h, w]          every other element of y is 0

Dialect: ``thinker::iqPad(x, pads, value)`` with ``mode="constant"``; ``pads`` an int64 constant in ONNX order
(all begins, then all ends), ``value`` an int8 constant 0. Limits (spec 5.x): a 4-D tensor, pads on H and W only
(N and C pads 0), fill 0, no negative pad (a crop is slicing). The shape rule refuses any other iqPad node; the
torch op (``F.pad``, ``nn.ZeroPad1d/2d``, ``nn.ConstantPad1d/2d``) is judged at ``lnn.init`` by
``csk60xx.pad.form``.

Thinker package (spec/thinker-package.md 3.3; ``venus/iqpad.h``): pack folds most paddings into the conv after
them; one that stays is an ``iqPad`` record (x, pads int64 [8], fill int8 [1]) with the {i8 mode} struct
(0, constant) and a workspace of x's bytes, which the kernel requires (it transposes x to channels-last there).
The kernel copies bytes, so x must be int8.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, rule

from ..thinker.lowering import DecodedOp, Problem, ThinkerLowering
from .base import AttrSpec, InferContext, Lowering, OpDef
from .conv import PADS_FOLD_INTO

__all__ = ["OPS", "hw_pads", "fold_pads"]

log = logging.getLogger("lnn.backend.rewrites")


def hw_pads(c: InferContext) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of an iqPad node; a ModelFileError for any other padding."""
    x = c.info(0)
    c.rank(x, [4], "input")
    pads = [int(v) for v in np.asarray(c.const(1)).reshape(-1)]
    value = np.asarray(c.const(2)).reshape(-1) if len(c.node.inputs) > 2 and c.node.inputs[2] else np.zeros(1)
    if len(pads) != 8 or pads[0] or pads[1] or pads[4] or pads[5] or min(pads) < 0:
        raise c.fail("iqPad pads H and W of a 4-D tensor only, by non-negative amounts",
                     {"rule": "pads = [0, 0, top, left, 0, 0, bottom, right], each >= 0", "actual": pads})
    if value.size != 1 or int(value[0]) != 0 or c.attr("mode", "constant") != "constant":
        raise c.fail("iqPad fills with the constant 0 only",
                     {"mode": c.attr("mode", "constant"), "value": value.tolist()})
    return pads[2], pads[3], pads[6], pads[7]


def _infer(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    top, left, bottom, right = hw_pads(c)
    n, ch, h, w = x.shape
    return [c.out(x.dtype, (n, ch, h + top + bottom, w + left + right), x.exponent)]


def _lower(node: Node, graph: Graph) -> list[int]:
    return list(hw_pads(InferContext(graph, node, graph.meta.get("source"))))


@rule("csk60xx.pad.form", ops=())
def check_pad_form(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Padding runs as iqPad: the constant 0 on the last two axes (H and W, or L of (N, C, L)), no negative pad."""
    pads = op.attrs.get("torch_pads")
    if pads is None:  # an IR iqPad: its shape rule refuses any other form
        return None
    mode, value = op.attrs.get("torch_pad_mode", "constant"), op.attrs.get("torch_pad_value")
    problems = []
    if mode != "constant":
        problems.append(f"mode {mode!r}")
    if value not in (None, 0, 0.0):
        problems.append(f"value {value!r}")
    if any(not isinstance(p, int) for p in pads):
        problems.append("pads computed at run time")
    else:
        if any(p < 0 for p in pads):
            problems.append("a negative pad (a crop)")
        if any(p != 0 for p in pads[4:]):
            problems.append("pads beyond the last two axes")
    if not problems:
        return None
    return Finding(actual=f"pad {list(pads)} ({', '.join(problems)})",
                   limit="constant 0 on the last two axes, pads >= 0",
                   hint="pad with zeros (F.pad(x, (l, r, t, b)), nn.ZeroPad2d); crop with slicing x[..., a:b]; "
                        "or fold the padding into the next conv's padding=")


# -- thinker package --------------------------------------------------------------------------------------------------

def _thinker_inputs(node: Node, graph: Graph) -> list[Any]:
    """x, the eight ONNX pads as int64, the fill (always read by the kernel, so written even when the IR omits it)."""
    top, left, bottom, right = _lower(node, graph)
    return [node.inputs[0], np.array([0, 0, top, left, 0, 0, bottom, right], np.int64), np.zeros(1, np.int8)]


def _thinker_check(node: Node, graph: Graph) -> list[Problem]:
    x = graph.tensors[node.inputs[0]]
    if x.dtype == "int8":
        return []
    return [Problem("csk60xx.thinker.pad_dtype", "the runtime's iqPad copies one byte per element", "int8", x.dtype,
                    "pad the int8 tensor before it is requantized")]


def _thinker_read(d: DecodedOp) -> tuple[dict[str, Any], dict[int, Any]]:
    return {"mode": "constant"}, {}


_THINKER_PAD = ThinkerLowering("iqPad", attrs=lambda n, g: bytes([0]), inputs=_thinker_inputs,
                               workspace=lambda n, g: g.tensors[n.inputs[0]].nbytes, check=_thinker_check,
                               read=_thinker_read)


OPS = (
    OpDef("iqPad", "thinker", (2, 3), _infer, attrs={"mode": AttrSpec("str", default="constant",
                                                                      choices=("constant",))},
          same_scale_inputs=(2,), rules=(check_pad_form,), torch_ops=("builtin.Pad",),
          lowerings={"lnn": Lowering(33, 1, _lower, "pad.c"), "thinker": _THINKER_PAD}),
)


def fold_pads(graph: Graph, limits: Mapping[str, Any], ops: Any = None) -> list[str]:
    """Fold each zero padding of H and W into the one 2-D convolution that reads it when the conv's pads stay within
    ``conv.pad_max`` and its kernel; in place. Returns the names of the folded padding ops."""
    consumers = graph.consumers()
    pmax = int(limits["conv.pad_max"])
    drop: list[str] = []
    for node in graph.nodes:
        if node.op_type != OPS[0].op_type:
            continue
        mid = node.outputs[0]
        users = consumers.get(mid, [])
        if (len(users) != 1 or mid in graph.outputs or users[0].op_type not in PADS_FOLD_INTO
                or users[0].inputs[0] != mid):
            continue
        conv = users[0]
        top, left, bottom, right = hw_pads(InferContext(graph, node, graph.meta.get("source")))
        p = [int(v) for v in conv.attrs.get("pads", [0, 0, 0, 0])]
        k = [int(v) for v in conv.attrs.get("kernel_shape", [1, 1])]
        new = [p[0] + top, p[1] + left, p[2] + bottom, p[3] + right]
        if max(new) > pmax or new[0] > k[0] or new[2] > k[0] or new[1] > k[1] or new[3] > k[1]:
            continue
        conv.attrs["pads"] = new
        conv.inputs[0] = node.inputs[0]
        del graph.tensors[mid]
        drop.append(node.name)
    graph.nodes = [n for n in graph.nodes if n.name not in drop]
    if drop:
        log.info("folded %d padding ops into the convolutions after them", len(drop))
    return drop
