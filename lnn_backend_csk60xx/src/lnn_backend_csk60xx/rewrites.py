"""The packer's graph rewrites, in the order they run (:func:`run_rewrites` is the one entry point).

1. **Shape inference** (:func:`.inference.infer_shapes`): shape, dtype and exponent of every tensor; the
   rules (:mod:`.rules`) judge the graph right after it, under the names the user wrote.
2. **ReLU fusion** (:func:`fuse_relu`): a ReLU op whose input is written by an op that can absorb it
   (``OpDef.fuses_relu``: the convolutions), and read by nothing else (nor a graph output), becomes the op's
   ``act_type=1``
   (tpacker's CR_fusion). The simulator clamps the conv's requantized integers at 0, which is exactly
   what the ReLU op computed, so no result changes; the conv now writes the ReLU's output tensor and
   the conv's own output tensor disappears. A clip is never fused (the chip drops it, spec 3.13).
   **Pad folding** (:func:`.ops.pad.fold_pads`, with the fusion): a zero padding op whose only reader is a 2-D
   convolution becomes part of the conv's ``pads`` when the sum stays within the conv's pad limit and its kernel (the
   conv reads zeros there either way: the same integers, one op and one buffer fewer); otherwise it stays.
3. **Splits** (:func:`split_large_ops`): ops whose buffers exceed the engine limits are cut as the
   vendor's packer cuts them (the decisions are made once, by the op family's ``OpDef.fit``):

   - Conv weight above 32 KB (``A8(C_in)*kh*kw*A2(C_out)``): C_out in chunks of
     ``floor(32768 / (A8(C_in)*kh*kw))`` rounded down to even; each piece is a Conv with the slice of the
     weights and bias;
   - 2-D conv input above 64 KB: the output rows in equal parts; each piece reads a slice of the
     input rows (kernel halo included) with the top/bottom padding trimmed to what the slice needs;
   - linear weight above 32 KB (``A8(K)*A4(N)``): N in equal parts; rows above 64 KB
     (``A4(M)*A8(K)``): a slice of the rows per piece.

   The pieces' outputs are joined by an ``iqCat`` (a tree of them above 64 pieces) whose inputs and
   output share one exponent and one dtype, so the join moves bytes and never rescales: the split
   graph computes the same integers as the original. Every piece output is a new tensor
   ``<output>/part<k>``; the join writes the original output tensor, so consumers and graph outputs
   are untouched. When the pieces are contiguous slices
   of the joined tensor (leading dimensions 1, 64-byte aligned byte offsets), the memory planner places
   them *inside* the joined buffer (:func:`.planner.plan_memory`, "in-place concatenation") and the
   join costs neither memory nor time.
4. **Index narrowing** (:func:`.ops.gather.narrow_indices`): an embedding lookup's int64 indices become int32, the width
   the chip's kernel reads (the vendor kernel narrows them into a heap copy at every call, spec 2.8.4): a graph
   input changes its dtype (the simulator narrows the caller's array), a constant is converted.
5. **Aliasing** (:mod:`.planner`): reshape-like ops (``OpDef.alias``) share their input's
   buffer. This is part of memory planning, not a rewrite.

What cannot be made to fit is not touched here; the rules report it (``csk60xx.conv.weight_and_input``,
``csk60xx.conv.depthwise_weight_bytes``, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lnn_core.graph import Graph, Node, TensorInfo

from .inference import infer_shapes
from .ops.conv import row_slices
from .ops.gather import narrow_indices
from .ops.opset import OpSet
from .ops.pad import fold_pads
from .sizes import fit_node

__all__ = ["MAX_JOIN_INPUTS", "FusedRelu", "SplitRecord", "PassReport", "fuse_relu", "fold_pads", "split_large_ops",
           "run_rewrites", "split_groups", "crop_transposed_pads", "merge_leading_axes"]

log = logging.getLogger("lnn.backend.rewrites")


@dataclass(frozen=True)
class FusedRelu:
    """A ReLU op folded into the conv before it."""

    conv: str
    relu: str


@dataclass(frozen=True)
class SplitRecord:
    """One op cut into pieces.

    :param node: the original node name (its pieces are ``<node>/part<k>``).
    :param axis: ``out_channels``, ``rows``, ``out_features`` or ``in_rows``.
    :param parts: sizes of the pieces along that axis.
    :param reason: the limit that made the split necessary, with the actual aligned size.
    """

    node: str
    op_type: str
    axis: str
    parts: tuple[int, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "axis": self.axis, "parts": list(self.parts),
                "reason": self.reason}


@dataclass
class PassReport:
    """What the rewrites changed."""

    fused: list[FusedRelu] = field(default_factory=list)
    folded_pads: list[str] = field(default_factory=list)  # padding ops folded into the conv that reads them
    splits: list[SplitRecord] = field(default_factory=list)
    narrowed: list[str] = field(default_factory=list)  # int64 index tensors made int32

    def to_dict(self) -> dict[str, Any]:
        return {"fused_relu": [{"conv": f.conv, "relu": f.relu} for f in self.fused],
                "splits": [s.to_dict() for s in self.splits]}


def fuse_relu(graph: Graph, ops: OpSet | None = None) -> list[FusedRelu]:
    """Fold each ReLU op into a directly preceding op that can absorb it and that nothing else reads (rewrite 2);
    in place."""
    ops = ops if ops is not None else OpSet.builtin_only()
    consumers = graph.consumers()
    producers = graph.producers()
    fused: list[FusedRelu] = []
    drop: set[str] = set()
    for node in graph.nodes:
        if node.op_type != "Relu" or not node.inputs or node.inputs[0] not in producers:
            continue
        conv = producers[node.inputs[0]]
        mid = node.inputs[0]
        absorbs = conv.op_type in ops and ops[conv.op_type].fuses_relu
        if (not absorbs or conv.attrs.get("act_type") or len(consumers.get(mid, [])) != 1
                or mid in graph.outputs or conv.name in drop):
            continue
        conv.attrs["act_type"] = 1
        conv.outputs = [node.outputs[0]]
        del graph.tensors[mid]
        drop.add(node.name)
        fused.append(FusedRelu(conv.name, node.name))
    graph.nodes = [n for n in graph.nodes if n.name not in drop]
    if fused:
        log.info("fused %d ReLU ops into the convolutions before them", len(fused))
    return fused


class _Names:
    """Fresh tensor/node names that collide with nothing in the graph."""

    def __init__(self, graph: Graph) -> None:
        self.used = set(graph.tensors) | {n.name for n in graph.nodes}

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}~{k}", k + 1
        self.used.add(name)
        return name


def _const(graph: Graph, names: _Names, base: str, array: np.ndarray, exponent: int | None) -> str:
    return graph.add_initializer(names(base), np.ascontiguousarray(array), exponent)


def _slice_node(graph: Graph, names: _Names, node: Node, k: int, src: str, axis: int, start: int,
                length: int) -> tuple[Node, str]:
    info = graph.tensors[src]
    out = names(f"{src}/{node.name}/slice{k}")
    shape = list(info.shape)
    shape[axis] = length
    graph.tensors[out] = TensorInfo(out, info.dtype, tuple(shape), info.exponent)
    inputs = [src, _const(graph, names, f"{out}/starts", np.array([start], np.int64), None),
              _const(graph, names, f"{out}/ends", np.array([start + length], np.int64), None),
              _const(graph, names, f"{out}/axes", np.array([axis], np.int64), None)]
    return Node(names(f"{node.name}/slice{k}"), "Slice", inputs, [out], {}, ""), out


def _piece_output(graph: Graph, names: _Names, node: Node, k: int, axis: int, length: int) -> str:
    y = graph.tensors[node.outputs[0]]
    out = names(f"{y.name}/part{k}")
    shape = list(y.shape)
    shape[axis] = length
    graph.tensors[out] = TensorInfo(out, y.dtype, tuple(shape), y.exponent)
    return out


MAX_JOIN_INPUTS = 64
"""The most inputs one ``iqCat`` join takes (the simulator's ``LNN_SIM_MAX_OP_INPUTS``)."""


def _join(graph: Graph, names: _Names, node: Node, pieces: list[str], axis: int) -> list[Node]:
    """The ``iqCat`` (or tree of them) that writes ``node``'s output from its pieces along ``axis``.

    More than :data:`MAX_JOIN_INPUTS` pieces are joined in groups first (``<output>/join<k>``, same dtype and
    exponent): concatenation is associative, so the tree writes the same bytes as one join would.
    """
    y = graph.tensors[node.outputs[0]]
    nodes: list[Node] = []
    level = 0
    while len(pieces) > MAX_JOIN_INPUTS:
        joined = []
        for k in range(0, len(pieces), MAX_JOIN_INPUTS):
            group = pieces[k:k + MAX_JOIN_INPUTS]
            if len(group) == 1:
                joined.append(group[0])
                continue
            out = names(f"{y.name}/join{level}_{k // MAX_JOIN_INPUTS}")
            shape = list(y.shape)
            shape[axis] = sum(graph.tensors[p].shape[axis] for p in group)
            graph.tensors[out] = TensorInfo(out, y.dtype, tuple(shape), y.exponent)
            nodes.append(Node(names(f"{node.name}/cat{level}_{k // MAX_JOIN_INPUTS}"), "iqCat", group, [out],
                              {"dim": axis}))
            joined.append(out)
        pieces, level = joined, level + 1
    nodes.append(Node(names(f"{node.name}/cat"), "iqCat", pieces, [node.outputs[0]], {"dim": axis}))
    return nodes


def _split_conv_channels(graph: Graph, names: _Names, node: Node, parts: tuple[int, ...]) -> list[Node]:
    w = graph.initializers[node.inputs[1]]
    w_exp = graph.tensors[node.inputs[1]].exponent
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2])
    out, pieces, c0 = [], [], 0
    for k, size in enumerate(parts):
        inputs = [node.inputs[0], _const(graph, names, f"{node.inputs[1]}/{node.name}/part{k}", w[c0:c0 + size],
                                         w_exp)]
        if has_bias:
            b_info = graph.tensors[node.inputs[2]]
            inputs.append(_const(graph, names, f"{node.inputs[2]}/{node.name}/part{k}",
                                 graph.initializers[node.inputs[2]][c0:c0 + size], b_info.exponent))
        y = _piece_output(graph, names, node, k, 1, size)
        out.append(Node(names(f"{node.name}/part{k}"), node.op_type, inputs, [y], dict(node.attrs), node.domain))
        pieces.append(y)
        c0 += size
    return [*out, *_join(graph, names, node, pieces, 1)]


def _split_conv_rows(graph: Graph, names: _Names, node: Node, parts: tuple[int, ...]) -> list[Node]:
    out, pieces = [], []
    for k, (start, length, top, bottom) in enumerate(row_slices(graph, node, len(parts))):
        sl, x_k = _slice_node(graph, names, node, k, node.inputs[0], 2, start, length)
        attrs = dict(node.attrs)
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        attrs["pads"] = [top, pads[1], bottom, pads[3]]
        y = _piece_output(graph, names, node, k, 2, parts[k])
        out += [sl, Node(names(f"{node.name}/part{k}"), node.op_type, [x_k, *node.inputs[1:]], [y], attrs,
                         node.domain)]
        pieces.append(y)
    return [*out, *_join(graph, names, node, pieces, 2)]


def _split_linear_features(graph: Graph, names: _Names, node: Node, parts: tuple[int, ...]) -> list[Node]:
    w = graph.initializers[node.inputs[1]]
    w_exp = graph.tensors[node.inputs[1]].exponent
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2])
    rank = len(graph.tensors[node.outputs[0]].shape)
    out, pieces, n0 = [], [], 0
    for k, size in enumerate(parts):
        inputs = [node.inputs[0], _const(graph, names, f"{node.inputs[1]}/{node.name}/part{k}", w[n0:n0 + size],
                                         w_exp)]
        if has_bias:
            inputs.append(_const(graph, names, f"{node.inputs[2]}/{node.name}/part{k}",
                                 graph.initializers[node.inputs[2]][n0:n0 + size],
                                 graph.tensors[node.inputs[2]].exponent))
        y = _piece_output(graph, names, node, k, rank - 1, size)
        out.append(Node(names(f"{node.name}/part{k}"), node.op_type, inputs, [y], dict(node.attrs), node.domain))
        pieces.append(y)
        n0 += size
    return [*out, *_join(graph, names, node, pieces, rank - 1)]


def _split_linear_rows(graph: Graph, names: _Names, node: Node, parts: tuple[int, ...]) -> list[Node]:
    rank = len(graph.tensors[node.inputs[0]].shape)
    out, pieces, r0 = [], [], 0
    for k, size in enumerate(parts):
        sl, x_k = _slice_node(graph, names, node, k, node.inputs[0], rank - 2, r0, size)
        y = _piece_output(graph, names, node, k, rank - 2, size)
        out += [sl, Node(names(f"{node.name}/part{k}"), node.op_type, [x_k, *node.inputs[1:]], [y],
                         dict(node.attrs), node.domain)]
        pieces.append(y)
        r0 += size
    return [*out, *_join(graph, names, node, pieces, rank - 2)]


_SPLITTERS: dict[str, Callable[[Graph, _Names, Node, tuple[int, ...]], list[Node]]] = {
    "out_channels": _split_conv_channels,
    "rows": _split_conv_rows,
    "out_features": _split_linear_features,
    "in_rows": _split_linear_rows,
}

def split_large_ops(graph: Graph, limits: Mapping[str, Any], ops: OpSet | None = None) -> list[SplitRecord]:
    """Cut the ops whose buffers exceed the engine limits (rewrite 3); in place. Pieces are re-examined,
    so a linear layer split by rows is then split by features when its weight is too large as well."""
    ops = ops if ops is not None else OpSet.builtin_only()
    names = _Names(graph)
    records: list[SplitRecord] = []
    work = list(graph.nodes)
    done: list[Node] = []
    while work:
        node = work.pop(0)
        fit = fit_node(graph, node, limits, ops)
        if fit is None or fit.action is None or not _has_constant_weights(graph, node):
            done.append(node)
            continue
        new = _SPLITTERS[fit.action](graph, names, node, fit.parts)
        size_key = "weight_bytes" if fit.action == "out_channels" else (
            "input_bytes" if fit.action == "rows" else "right_bytes" if fit.action == "out_features" else "left_bytes")
        records.append(SplitRecord(node.name, node.op_type, fit.action, fit.parts,
                                   f"{size_key} {fit.sizes.get(size_key)} > {fit.limit_key} "
                                   f"{limits.get(fit.limit_key)}"))
        log.info("split %s (%s) along %s into %s", node.name, node.op_type, fit.action, list(fit.parts))
        work = new + work
    graph.nodes = done
    used = {t for n in graph.nodes for t in n.inputs if t}
    for name in [k for k in graph.initializers if k not in used]:
        del graph.initializers[name]
        del graph.tensors[name]
    return records


def _replace(graph: Graph, node: Node, nodes: list[Node]) -> None:
    i = graph.nodes.index(node)
    graph.nodes[i:i + 1] = nodes


def split_groups(graph: Graph, ops: OpSet | None = None) -> list[SplitRecord]:
    """Cut every grouped convolution that is not depthwise into one convolution per group: a slice of the input
    channels, the group's weights and bias, ``group=1``; an ``iqCat`` joins the outputs (same dtype and exponent,
    so the integers are unchanged). For package formats whose runtime has only plain and depthwise convolutions
    (the thinker package); lnn's simulator runs grouped convolutions as they are.
    """
    ops = ops if ops is not None else OpSet.builtin_only()
    names = _Names(graph)
    records = []
    for node in list(graph.nodes):
        op = ops.get(node.op_type)
        group = node.attrs.get("group", 1)
        if (op is None or "group" not in op.attrs or "output_padding" in op.attrs or group <= 1
                or not _has_constant_weights(graph, node)):
            continue
        w = graph.initializers[node.inputs[1]]
        if w.shape[1] == 1 and w.shape[0] == group:
            continue  # depthwise
        ci, co = w.shape[1], w.shape[0] // group
        w_exp = graph.tensors[node.inputs[1]].exponent
        has_bias = len(node.inputs) > 2 and bool(node.inputs[2])
        new, pieces = [], []
        for k in range(group):
            sl, x_k = _slice_node(graph, names, node, k, node.inputs[0], 1, k * ci, ci)
            inputs = [x_k, _const(graph, names, f"{node.inputs[1]}/{node.name}/group{k}", w[k * co:(k + 1) * co],
                                  w_exp)]
            if has_bias:
                inputs.append(_const(graph, names, f"{node.inputs[2]}/{node.name}/group{k}",
                                     graph.initializers[node.inputs[2]][k * co:(k + 1) * co],
                                     graph.tensors[node.inputs[2]].exponent))
            y = _piece_output(graph, names, node, k, 1, co)
            new += [sl, Node(names(f"{node.name}/group{k}"), node.op_type, inputs, [y], {**node.attrs, "group": 1},
                             node.domain)]
            pieces.append(y)
        _replace(graph, node, [*new, *_join(graph, names, node, pieces, 1)])
        records.append(SplitRecord(node.name, node.op_type, "groups", tuple([co] * group),
                                   f"group={group} is neither 1 nor depthwise"))
    return records


def crop_transposed_pads(graph: Graph, ops: OpSet | None = None) -> list[SplitRecord]:
    """A transposed convolution padded by a kernel or more (which the thinker runtime cannot run: it pads its input
    by ``kernel - 1 - pad``) computes with pads ``min(pad, kernel - 1)``, and slices crop the rows and columns
    the larger pads removed. The cropped values are the ones the original computed, so nothing changes."""
    ops = ops if ops is not None else OpSet.builtin_only()
    names = _Names(graph)
    records = []
    for node in list(graph.nodes):
        op = ops.get(node.op_type)
        if op is None or "output_padding" not in op.attrs:
            continue
        k = node.attrs["kernel_shape"]
        pads = list(node.attrs.get("pads", [0, 0, 0, 0]))
        kept = [min(p, k[j % 2] - 1) for j, p in enumerate(pads)]
        if kept == pads:
            continue
        y = graph.tensors[node.outputs[0]]
        shape = list(y.shape)
        for j in range(4):
            shape[2 + j % 2] += pads[j] - kept[j]
        src = names(f"{y.name}/uncropped")
        graph.tensors[src] = TensorInfo(src, y.dtype, tuple(shape), y.exponent)
        new = [Node(names(f"{node.name}/uncropped"), node.op_type, list(node.inputs), [src],
                    {**node.attrs, "pads": kept}, node.domain)]
        cuts = [(axis, pads[axis - 2] - kept[axis - 2], y.shape[axis]) for axis in (2, 3)
                if shape[axis] != y.shape[axis]]
        for n, (axis, start, length) in enumerate(cuts):
            sl, out = _slice_node(graph, names, node, n, src, axis, start, length)
            if n == len(cuts) - 1:
                del graph.tensors[out]
                sl.outputs = [node.outputs[0]]
            new.append(sl)
            src = out
        _replace(graph, node, new)
        records.append(SplitRecord(node.name, node.op_type, "crop", tuple(pads[j] - kept[j] for j in range(4)),
                                   f"pads {pads} reach the kernel {list(k)}"))
    return records


def merge_leading_axes(graph: Graph, ops: OpSet, rank_of: Callable[[Any], int | None]) -> list[SplitRecord]:
    """Ops whose kernel reads only the trailing ``rank_of(op)`` axes read a reshape of their input with the leading
    axes merged into one and write a reshape of their output (reshapes alias: no data moves, nothing changes)."""
    names = _Names(graph)
    records = []
    for node in list(graph.nodes):
        op = ops.get(node.op_type)
        rank = rank_of(op) if op is not None else None
        x = graph.tensors[node.inputs[0]] if node.inputs else None
        if rank is None or x is None or len(x.shape) <= rank:
            continue
        y = graph.tensors[node.outputs[0]]
        keep = rank - 1
        new = []
        x2 = names(f"{x.name}/merged")
        graph.tensors[x2] = TensorInfo(x2, x.dtype, (int(np.prod(x.shape[:-keep])), *x.shape[-keep:]), x.exponent)
        new.append(Node(names(f"{node.name}/merge_in"), "Reshape",
                        [x.name, _const(graph, names, f"{x2}/shape", np.array(graph.tensors[x2].shape, np.int64),
                                        None)], [x2], {}, ""))
        y2 = names(f"{y.name}/merged")
        graph.tensors[y2] = TensorInfo(y2, y.dtype, (int(np.prod(y.shape[:-keep])), *y.shape[-keep:]), y.exponent)
        new.append(Node(node.name, node.op_type, [x2, *node.inputs[1:]], [y2], dict(node.attrs), node.domain))
        new.append(Node(names(f"{node.name}/merge_out"), "Reshape",
                        [y2, _const(graph, names, f"{y.name}/shape", np.array(y.shape, np.int64), None)],
                        [y.name], {}, ""))
        _replace(graph, node, new)
        records.append(SplitRecord(node.name, node.op_type, "leading_axes", (int(np.prod(x.shape[:-keep])),),
                                   f"the kernel reads {rank} axes; input {tuple(x.shape)}"))
    return records


def _has_constant_weights(graph: Graph, node: Node) -> bool:
    return len(node.inputs) > 1 and node.inputs[1] in graph.initializers and (
        len(node.inputs) < 3 or not node.inputs[2] or node.inputs[2] in graph.initializers)


def run_rewrites(graph: Graph, limits: Mapping[str, Any], ops: OpSet | None = None, *, fuse: bool = True,
                 split: bool = True) -> PassReport:
    """Run rewrites 2 and 3 on ``graph`` (shapes already inferred), in place, then re-infer shapes.

    :param ops: the ops of this run (default: the built-in ones).
    :param fuse: fold ReLU into convs (off when every tensor of the original graph must stay visible,
        e.g. for ``lnn verify``).
    :param split: cut ops that exceed the engine buffers.
    """
    ops = ops if ops is not None else OpSet.builtin_only()
    report = PassReport()
    if fuse:
        report.fused = fuse_relu(graph, ops)
        report.folded_pads = fold_pads(graph, limits, ops)
    if split:
        report.splits = split_large_ops(graph, limits, ops)
    report.narrowed = narrow_indices(graph, ops)
    infer_shapes(graph, ops, path=graph.meta.get("source"))
    return report
