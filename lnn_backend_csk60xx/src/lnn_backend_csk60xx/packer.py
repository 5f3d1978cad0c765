"""model.bin writer: lnn's packed model format for the CSK60xx simulator (layout: README "model.bin format").

:func:`pack` lowers each IR node to a simulator op (type code, up to 16 int32 attributes, tensor
indices), writes one record per tensor (dtype, shape, exponent, region, offset, size), the weights
(initializers, 64-byte aligned, read in place as "flash"), the memory plan and the graph
inputs/outputs, then a header with the payload's CRC32 (``zlib.crc32``). Everything is
little-endian. The output depends only on the graph and the plan: packing is deterministic.

An op contributed by a plugin (its schema in :class:`~.extensions.PluginOps`) is written as an
external op (``EXTERNAL_OP_CODE``): all its inputs, and two attributes that are string references,
its op type and its non-scale attributes as canonical JSON (sorted keys). The simulator runs it
through the kernel the plugin registered.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lnn_core.errors import ModelFileError
from lnn_core.graph import Graph, Node

from .planner import REGION_PSRAM, REGION_SHARE, MemoryPlan

if TYPE_CHECKING:
    from .extensions import PluginOps

__all__ = ["pack", "describe", "OP_CODES", "EXTERNAL_OP_CODE", "DTYPE_CODES", "REGION_CODES", "FORMAT_VERSION",
           "TARGET_CSK60XX", "MAGIC", "HEADER_BYTES", "SECTION_KINDS"]

log = logging.getLogger("lnn.backend.packer")

MAGIC = b"LNNMODEL"
FORMAT_VERSION = 1
HEADER_BYTES = 64
TARGET_CSK60XX = 0x6000
ALIGN = 64
NO_EXPONENT = -(2 ** 31)
MAX_ATTRS = 16
TENSOR_RECORD = 48
OP_RECORD = 96
PLAN_RECORD = 16

#: section kind codes, in file order (weights last so that they can be 64-byte aligned cheaply)
SECTION_KINDS = {"strings": 1, "tensors": 2, "ops": 3, "ioidx": 4, "weights": 5, "plan": 6, "graph": 7}
DTYPE_CODES = {"float32": 1, "int8": 2, "uint8": 3, "int16": 4, "int32": 5, "int64": 6}
REGION_CODES = {"flash": 0, REGION_PSRAM: 1, REGION_SHARE: 2}
TF_INPUT, TF_OUTPUT, TF_CONST = 1, 2, 4

#: IR op type -> simulator op code (mirrors LNN_SIM_OP_* in csrc/include/lnn_sim.h; a test checks it)
OP_CODES = {
    "Quant": 1, "Dequant": 2, "Requant": 3, "Conv2dInt": 4, "Conv1dInt": 5, "ConvTranspose2dInt": 6,
    "LinearInt": 7, "BatchNorm2dInt": 8, "AvgPool2dInt": 9, "MaxPool": 10, "Relu": 11, "Clip": 12,
    "iqAdd": 13, "iqSub": 14, "iqMul": 15, "iqCat": 16, "Reshape": 17, "Flatten": 18, "Transpose": 19,
    "Squeeze": 20, "Unsqueeze": 21, "Slice": 22,
}
#: simulator op code of plugin ops (LNN_SIM_OP_EXTERNAL)
EXTERNAL_OP_CODE = 23


@dataclass
class _Lowered:
    code: int
    inputs: list[str]
    attrs: list[int]


def _geom2d(node: Node) -> list[int]:
    k = node.attrs["kernel_shape"]
    s = node.attrs.get("strides", [1, 1])
    p = node.attrs.get("pads", [0, 0, 0, 0])
    d = node.attrs.get("dilations", [1, 1])
    return [k[0], k[1], s[0], s[1], p[0], p[1], p[2], p[3], d[0], d[1]]


def _act(node: Node) -> list[int]:
    """The optional trailing attribute of conv ops: the fused activation (written only when set)."""
    act = int(node.attrs.get("act_type", 0) or 0)
    return [act] if act else []


def _lower_conv(node: Node, graph: Graph) -> list[int]:
    return [*_geom2d(node), node.attrs.get("group", 1), *_act(node)]


def _lower_conv1d(node: Node, graph: Graph) -> list[int]:
    k, s = node.attrs["kernel_shape"][0], node.attrs.get("strides", [1])[0]
    p, d = node.attrs.get("pads", [0, 0]), node.attrs.get("dilations", [1])[0]
    return [1, k, 1, s, 0, p[0], 0, p[1], 1, d, node.attrs.get("group", 1), *_act(node)]


def _lower_deconv(node: Node, graph: Graph) -> list[int]:
    return [*_geom2d(node), node.attrs.get("group", 1), *node.attrs.get("output_padding", [0, 0]), *_act(node)]


def _lower_avgpool(node: Node, graph: Graph) -> list[int]:
    return [*_geom2d(node)[:8], node.attrs.get("ceil_mode", 0)]


def _lower_maxpool(node: Node, graph: Graph) -> list[int]:
    g = _geom2d(node)
    return [*g[:8], node.attrs.get("ceil_mode", 0), g[8], g[9]]


def _lower_clip(node: Node, graph: Graph) -> list[int]:
    info = graph.tensors[node.inputs[0]]
    lim = np.iinfo(np.dtype(info.dtype))
    bounds = [int(lim.min), int(lim.max)]
    for i in (1, 2):
        if i < len(node.inputs) and node.inputs[i]:
            bounds[i - 1] = int(np.asarray(graph.initializers[node.inputs[i]]).reshape(-1)[0])
    return bounds


def _lower_cat(node: Node, graph: Graph) -> list[int]:
    rank = len(graph.tensors[node.outputs[0]].shape)
    return [node.attrs["dim"] % rank]


def _lower_transpose(node: Node, graph: Graph) -> list[int]:
    rank = len(graph.tensors[node.inputs[0]].shape)
    return list(node.attrs.get("perm") or range(rank)[::-1])


def _lower_slice(node: Node, graph: Graph) -> list[int]:
    from .passes import InferContext, slice_params

    starts, steps, _ = slice_params(InferContext(graph, node, graph.meta.get("source")))
    return [v for pair in zip(starts, steps) for v in pair]


def _no_attrs(node: Node, graph: Graph) -> list[int]:
    return []


#: IR op type -> (number of leading inputs passed to the simulator or None for all, attribute builder)
_LOWERING: dict[str, tuple[int | None, Callable[[Node, Graph], list[int]]]] = {
    "Quant": (1, _no_attrs), "Dequant": (1, _no_attrs), "Requant": (1, _no_attrs),
    "Conv2dInt": (3, _lower_conv), "Conv1dInt": (3, _lower_conv1d), "ConvTranspose2dInt": (3, _lower_deconv),
    "LinearInt": (3, _no_attrs), "BatchNorm2dInt": (3, _no_attrs),
    "AvgPool2dInt": (1, _lower_avgpool), "MaxPool": (1, _lower_maxpool),
    "Relu": (1, _no_attrs), "Clip": (1, _lower_clip),
    "iqAdd": (2, _no_attrs), "iqSub": (2, _no_attrs), "iqMul": (2, _no_attrs), "iqCat": (None, _lower_cat),
    "Reshape": (1, _no_attrs), "Flatten": (1, _no_attrs), "Squeeze": (1, _no_attrs), "Unsqueeze": (1, _no_attrs),
    "Transpose": (1, _lower_transpose), "Slice": (1, _lower_slice),
}


def _lower_external(node: Node, graph: Graph, strings: _Strings) -> _Lowered:
    try:
        text = json.dumps(node.attrs, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"node {node.name!r} ({node.op_type}) has attributes that cannot be stored as JSON",
                             {"attributes": node.attrs, "cause": str(exc)},
                             "plugin ops may carry ints, floats, strings and lists of them",
                             path=graph.meta.get("source"), node=node.name) from exc
    return _Lowered(EXTERNAL_OP_CODE, list(node.inputs), [strings.ref(node.op_type), strings.ref(text)])


def _lower(node: Node, graph: Graph, strings: _Strings, ops: PluginOps | None) -> _Lowered:
    if node.op_type not in _LOWERING:
        if ops is not None and node.op_type in ops.schemas:
            return _lower_external(node, graph, strings)
        raise ModelFileError(f"node {node.name!r} ({node.op_type}) cannot be packed: the simulator has no such op",
                             {"supported": ", ".join(sorted(_LOWERING))},
                             "remove or replace the op, or install the plugin that provides it",
                             path=graph.meta.get("source"), node=node.name)
    keep, build = _LOWERING[node.op_type]
    inputs = list(node.inputs if keep is None else node.inputs[:keep])
    attrs = [int(v) for v in build(node, graph)]
    if len(attrs) > MAX_ATTRS or any(not -(2 ** 31) <= v < 2 ** 31 for v in attrs):
        raise ModelFileError(f"node {node.name!r} ({node.op_type}) has attributes that do not fit model.bin",
                             {"attributes": attrs}, "check the op's attributes",
                             path=graph.meta.get("source"), node=node.name)
    return _Lowered(OP_CODES[node.op_type], inputs, attrs)


class _Strings:
    def __init__(self) -> None:
        self.data = bytearray()
        self.index: dict[str, int] = {}

    def ref(self, text: str) -> int:
        if text not in self.index:
            self.index[text] = len(self.data)
            self.data += text.encode("utf-8") + b"\0"
        return self.index[text]


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def pack(graph: Graph, plan: MemoryPlan, *, target_id: int = TARGET_CSK60XX, ops: PluginOps | None = None) -> bytes:
    """Write ``graph`` (shapes inferred, topologically sorted) with its memory ``plan`` as model.bin bytes.

    :param ops: plugin ops, written as external ops.
    :raises ModelFileError: an op the simulator does not have, or a tensor the plan does not place.
    """
    path = graph.meta.get("source")
    strings = _Strings()
    lowered = [(node, _lower(node, graph, strings, ops)) for node in graph.nodes]

    # tensor table: graph inputs, then every tensor in op order (inputs before outputs), then outputs
    order: dict[str, int] = {}
    for name in graph.inputs:
        order.setdefault(name, len(order))
    for node, low in lowered:
        for name in [*low.inputs, *node.outputs]:
            if name:
                order.setdefault(name, len(order))
    for name in graph.outputs:
        order.setdefault(name, len(order))

    weights = bytearray()
    tensor_records = bytearray()
    for name in order:
        info = graph.tensors.get(name)
        if info is None or info.shape is None or info.dtype not in DTYPE_CODES:
            raise ModelFileError(f"tensor {name!r} cannot be packed (unknown shape or dtype)",
                                 {"tensor": info}, "run shape inference before packing", path=path, node=None)
        shape = [int(d) for d in info.shape]
        if len(shape) > 6:
            raise ModelFileError(f"tensor {name!r} has rank {len(shape)}; model.bin holds at most 6", {},
                                 "reshape the tensor to fewer dimensions", path=path, node=None)
        flags = (TF_INPUT if name in graph.inputs else 0) | (TF_OUTPUT if name in graph.outputs else 0)
        dtype = info.dtype
        if name in graph.initializers:
            arr = np.ascontiguousarray(graph.initializers[name])
            if arr.dtype == np.int16 and dtype == "int16" and _is_bias(name, graph):
                arr, dtype = arr.astype("<i4"), "int32"  # int16 biases are widened; the value is unchanged
            arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
            region, offset, size = REGION_CODES["flash"], _align(len(weights), ALIGN), arr.nbytes
            weights += b"\0" * (offset - len(weights)) + arr.tobytes()
            flags |= TF_CONST
        else:
            placement = plan.placements.get(name)
            if placement is None:
                raise ModelFileError(f"tensor {name!r} has no place in the memory plan", {},
                                     "plan the graph that is being packed", path=path, node=None)
            region, offset, size = REGION_CODES[placement.region], placement.offset, placement.size
        exponent = NO_EXPONENT if info.exponent is None else int(info.exponent)
        dims = shape + [0] * (6 - len(shape))
        tensor_records += struct.pack("<IBBBBiII6i4x", strings.ref(name), DTYPE_CODES[dtype], len(shape), region,
                                      flags, exponent, offset, size, *dims)

    io: list[int] = []
    op_records = bytearray()
    for node, low in lowered:
        start = len(io)
        io += [order[t] if t else -1 for t in low.inputs] + [order[t] for t in node.outputs]
        attrs = low.attrs + [0] * (MAX_ATTRS - len(low.attrs))
        op_records += struct.pack("<iIIIII16i8x", low.code, strings.ref(node.name), len(low.inputs),
                                  len(node.outputs), start, len(low.attrs), *attrs)

    plan_records = bytearray()
    for region in (REGION_PSRAM, REGION_SHARE):
        rp = plan.regions[region]
        plan_records += struct.pack("<IIII", REGION_CODES[region], rp.size, rp.peak, 0)
    graph_io = struct.pack("<II", len(graph.inputs), len(graph.outputs)) + struct.pack(
        f"<{len(graph.inputs) + len(graph.outputs)}i", *[order[t] for t in [*graph.inputs, *graph.outputs]])

    sections = [
        ("strings", 0, bytes(strings.data)),
        ("tensors", len(order), bytes(tensor_records)),
        ("ops", len(lowered), bytes(op_records)),
        ("ioidx", len(io), struct.pack(f"<{len(io)}i", *io)),
        ("plan", 2, bytes(plan_records)),
        ("graph", len(graph.inputs) + len(graph.outputs), graph_io),
        ("weights", 0, bytes(weights)),
    ]
    table_end = HEADER_BYTES + 16 * len(sections)
    body = bytearray()
    table = bytearray()
    pos = table_end
    for kind, count, data in sections:
        start = _align(pos, ALIGN if kind == "weights" else 16)
        body += b"\0" * (start - pos) + data
        table += struct.pack("<IIII", SECTION_KINDS[kind], count, start, len(data))
        pos = start + len(data)
    payload = bytes(table) + bytes(body)
    header = struct.pack("<8sHHIIII", MAGIC, FORMAT_VERSION, HEADER_BYTES, target_id, len(payload),
                         zlib.crc32(payload), len(sections)) + b"\0" * 36
    blob = header + payload
    log.info("packed %d ops, %d tensors, %d weight bytes into %d bytes", len(lowered), len(order), len(weights),
             len(blob))
    return blob


def _is_bias(name: str, graph: Graph) -> bool:
    return any(len(n.inputs) > 2 and n.inputs[2] == name for n in graph.nodes
               if n.op_type in ("Conv2dInt", "Conv1dInt", "ConvTranspose2dInt"))


def describe(blob: bytes) -> dict[str, Any]:
    """Header fields and section table of a model.bin image (no validation; for reports and tests)."""
    magic, version, hsize, target, payload, crc, count = struct.unpack_from("<8sHHIIII", blob, 0)
    sections = {}
    names = {v: k for k, v in SECTION_KINDS.items()}
    for i in range(count):
        kind, n, off, size = struct.unpack_from("<IIII", blob, HEADER_BYTES + 16 * i)
        sections[names.get(kind, str(kind))] = {"count": n, "offset": off, "size": size}
    return {"magic": magic, "version": version, "header_size": hsize, "target": target, "payload_size": payload,
            "crc32": crc, "sections": sections}
