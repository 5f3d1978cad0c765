"""model.bin writer: lnn's packed model format for the CSK60xx simulator (layout: README "model.bin format").

:func:`pack` lowers each IR node to a simulator op (its family's ``Lowering``: type code, up to 16
int32 attributes, tensor indices), writes one record per tensor (dtype, shape, exponent, region,
offset, size), the weights (initializers, 64-byte aligned, read in place as "flash"), the memory plan
and the graph inputs/outputs, then a header with the payload's CRC32 (``zlib.crc32``). Everything is
little-endian. The output depends only on the graph and the plan: packing is deterministic.

An op with a Python kernel (``OpDef.kernel``: plugin ops) is written as an external op
(``EXTERNAL_OP_CODE``): all its inputs and outputs, and two attributes that are string references,
its op type and its non-scale attributes as canonical JSON (sorted keys). The simulator runs it
through that kernel.

The packer never writes what the simulator's loader refuses. It checks the loader's own limits
(:data:`~.limits.SIM_LIMITS`, read from ``lnn_sim.h``: exponents, ranks, sizes, counts, attribute JSON) first
and names the node and tensor; then it loads the image it wrote with the C loader (without the loader's MAC
limit, which is a run-time choice) and refuses, naming the node, what only an op's own checks find (its
attributes, its exponent differences such as the left shifts of an add).
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnn_core.errors import ModelFileError
from lnn_core.graph import Graph, Node

from ._sim import ffi, lib
from .formats import DEFAULT_FORMAT
from .limits import SIM_LIMITS, attr_json_depth, check_attr_nesting
from .ops.base import Lowering
from .ops.opset import OpSet
from .planner import REGION_PSRAM, REGION_SHARE, MemoryPlan

__all__ = ["pack", "describe", "OP_CODES", "EXTERNAL_OP_CODE", "DTYPE_CODES", "REGION_CODES", "FORMAT_VERSION",
           "TARGET_CSK60XX", "MAGIC", "HEADER_BYTES", "SECTION_KINDS", "op_codes"]

log = logging.getLogger("lnn.backend.packer")

MAGIC = b"LNNMODEL"
FORMAT_VERSION = 1
HEADER_BYTES = 64
TARGET_CSK60XX = 0x6000
ALIGN = 64
NO_EXPONENT = -(2 ** 31)
MAX_ATTRS = lib.LNN_SIM_MAX_ATTRS  # attribute slots of an op record
TENSOR_RECORD = 48
OP_RECORD = 96
PLAN_RECORD = 16

#: section kind codes, in file order (weights last so that they can be 64-byte aligned cheaply)
SECTION_KINDS = {"strings": 1, "tensors": 2, "ops": 3, "ioidx": 4, "weights": 5, "plan": 6, "graph": 7}
DTYPE_CODES = {"float32": 1, "int8": 2, "uint8": 3, "int16": 4, "int32": 5, "int64": 6}
REGION_CODES = {"flash": 0, REGION_PSRAM: 1, REGION_SHARE: 2}
TF_INPUT, TF_OUTPUT, TF_CONST = 1, 2, 4

#: simulator op code of ops with a Python kernel (LNN_SIM_OP_EXTERNAL)
EXTERNAL_OP_CODE = 23


def op_codes(ops: OpSet | None = None) -> dict[str, int]:
    """IR op type -> simulator op code of every op with a model.bin lowering (``LNN_SIM_OP_*``)."""
    ops = ops if ops is not None else OpSet.builtin_only()
    return {t: op.lowerings[DEFAULT_FORMAT].code for t, op in ops.items() if DEFAULT_FORMAT in op.lowerings}


#: the built-in ops' codes (mirrors LNN_SIM_OP_* in csrc/include/lnn_sim.h; a test checks it)
OP_CODES = op_codes()


@dataclass
class _Lowered:
    code: int
    inputs: list[str]
    attrs: list[int]


def _lower_external(node: Node, graph: Graph, strings: _Strings) -> _Lowered:
    path = graph.meta.get("source")
    try:
        text = json.dumps(node.attrs, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ModelFileError(f"node {node.name!r} ({node.op_type}) has attributes that cannot be stored as JSON",
                             {"attributes": _short(node.attrs), "cause": str(exc)},
                             "plugin ops may carry ints, floats, strings and lists of them",
                             path=path, node=node.name) from exc
    size = len(text.encode("utf-8"))
    if size > SIM_LIMITS.max_attr_json_bytes or "\0" in text:
        raise ModelFileError(f"node {node.name!r} ({node.op_type}) has attributes too large for model.bin",
                             {"rule": "a plugin op's attributes as JSON, without NUL characters",
                              "limit": f"{SIM_LIMITS.max_attr_json_bytes} bytes", "actual": f"{size} bytes"},
                             "pass large tables as constant inputs of the op, not as attributes", path=path,
                             node=node.name, tensor=None, limit=SIM_LIMITS.max_attr_json_bytes, actual=size)
    return _Lowered(EXTERNAL_OP_CODE, list(node.inputs), [strings.ref(node.op_type), strings.ref(text)])


def _short(value: Any) -> str:
    text = repr(value) if attr_json_depth(value, stop=8) <= 8 else f"<{type(value).__name__} nested deeper than 8>"
    return text if len(text) <= 200 else text[:197] + "..."


def _lower(node: Node, graph: Graph, strings: _Strings, ops: OpSet) -> _Lowered:
    op = ops.get(node.op_type)
    if op is not None and op.kernel is not None:
        return _lower_external(node, graph, strings)
    low: Lowering | None = op.lowerings.get(DEFAULT_FORMAT) if op is not None else None
    if low is None:
        raise ModelFileError(f"node {node.name!r} ({node.op_type}) cannot be packed: the simulator has no such op",
                             {"supported": ", ".join(sorted(t for t, o in ops.items()
                                                            if DEFAULT_FORMAT in o.lowerings or o.kernel))},
                             "remove or replace the op, or install the plugin that provides it",
                             path=graph.meta.get("source"), node=node.name)
    inputs = list(node.inputs if low.inputs is None else node.inputs[:low.inputs])
    attrs = [int(v) for v in (low.attrs(node, graph) if low.attrs is not None else [])]
    if len(attrs) > SIM_LIMITS.max_attrs or any(not -(2 ** 31) <= v < 2 ** 31 for v in attrs):
        raise ModelFileError(f"node {node.name!r} ({node.op_type}) has attributes that do not fit model.bin",
                             {"attributes": attrs}, "check the op's attributes",
                             path=graph.meta.get("source"), node=node.name)
    return _Lowered(low.code, inputs, attrs)


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


def _limit_error(graph: Graph, node: Node | None, tensor: str | None, what: str, rule: str, limit: Any, actual: Any,
                 hint: str) -> ModelFileError:
    where = f"node {node.name!r} ({node.op_type})" if node is not None else f"graph '{graph.name}'"
    subject = f"{where}, tensor {tensor!r}" if tensor else where
    return ModelFileError(f"{subject}: {what}, beyond what the simulator loads", {
        "rule": rule, "limit": limit, "actual": actual}, hint, path=graph.meta.get("source"),
        node=node.name if node is not None else None, tensor=tensor, limit=limit, actual=actual)


def _check_limits(graph: Graph, lowered: list[tuple[Node, _Lowered]], order: dict[str, int], plan: MemoryPlan
                  ) -> None:
    """Refuse, naming the node and tensor, what the C loader would refuse (the limits of :data:`SIM_LIMITS`)."""
    lim = SIM_LIMITS
    writer = {t: node for node, _ in lowered for t in node.outputs if t}
    reader: dict[str, Node] = {}
    for node, low in lowered:
        for t in low.inputs:
            if t:
                reader.setdefault(t, node)
    for what, count, limit in (("tensors", len(order), lim.max_tensors), ("ops", len(lowered), lim.max_ops),
                               ("graph inputs", len(graph.inputs), lim.max_graph_io),
                               ("graph outputs", len(graph.outputs), lim.max_graph_io)):
        if count > limit:
            raise _limit_error(graph, None, None, f"{count} {what}", f"at most {limit} {what}", limit, count,
                               "split the model into several packages")
    for node, low in lowered:
        if not 1 <= len(low.inputs) <= lim.max_op_inputs or not 1 <= len(node.outputs) <= lim.max_op_outputs:
            raise _limit_error(graph, node, None, f"{len(low.inputs)} inputs and {len(node.outputs)} outputs",
                               f"1..{lim.max_op_inputs} inputs, 1..{lim.max_op_outputs} outputs per op",
                               f"{lim.max_op_inputs} inputs, {lim.max_op_outputs} outputs",
                               f"{len(low.inputs)} inputs, {len(node.outputs)} outputs",
                               "split the op (for a join, concatenate in stages)")
    for name in order:
        info = graph.tensors[name]
        node = writer.get(name) or reader.get(name)
        shape = [int(d) for d in info.shape]
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(info.dtype).itemsize if shape else np.dtype(
            info.dtype).itemsize
        if len(shape) > lim.max_rank or any(d < 1 for d in shape):
            raise _limit_error(graph, node, name, f"shape {tuple(shape)}",
                               f"rank at most {lim.max_rank}, every dimension at least 1", f"rank <= {lim.max_rank}",
                               f"rank {len(shape)}, shape {tuple(shape)}", "reshape the tensor to fewer dimensions")
        if size > lim.max_tensor_bytes:
            raise _limit_error(graph, node, name, f"{size} bytes", f"a tensor holds at most {lim.max_tensor_bytes} "
                               "bytes", lim.max_tensor_bytes, size, "use a smaller input shape")
        n = info.exponent
        if n is not None and not -lim.max_exponent <= int(n) <= lim.max_exponent:
            raise _limit_error(graph, node, name, f"exponent {n} (scale 2**{n})",
                               f"|n| <= {lim.max_exponent} for every tensor (real = q / 2**n)",
                               lim.max_exponent, int(n),
                               "check the node's scale_* attributes: such a scale comes from a failed calibration")
    for region, rp in plan.regions.items():
        if rp.size > lim.max_region_bytes:
            raise _limit_error(graph, None, None, f"a {region} arena of {rp.size} bytes",
                               f"an arena holds at most {lim.max_region_bytes} bytes", lim.max_region_bytes, rp.size,
                               "use a smaller input shape")


_C_OP = re.compile(r"\bop '([^']*)'")
_C_TENSOR = re.compile(r"\b(?:tensor|weight|constant|input|output) '([^']*)'")


def _validate(blob: bytes, graph: Graph) -> None:
    """Load the image with the C loader (no MAC limit): the packer refuses whatever the simulator would."""
    from .simulator import check_isa_env

    check_isa_env()
    out = ffi.new("lnn_sim_model **")
    msg = ffi.new("char[]", lib.LNN_SIM_MAX_MSG)
    status = lib.lnn_sim_load_ex(blob, len(blob), 2 ** 64 - 1, out, msg, lib.LNN_SIM_MAX_MSG)
    if status == lib.LNN_SIM_OK:
        lib.lnn_sim_free(out[0])
        return
    text = ffi.string(msg).decode("utf-8", "replace")
    op, tensor = _C_OP.search(text), _C_TENSOR.search(text)
    node = next((n for n in graph.nodes if op and n.name == op.group(1)), None)
    where = f"node {node.name!r} ({node.op_type})" if node is not None else f"graph '{graph.name}'"
    raise ModelFileError(f"{where} cannot be packed: the simulator's loader refuses the package", {
        "loader": text, "status": int(status)}, "check the node's attributes and scales against docs (the "
        "model.bin limits are LNN_SIM_MAX_* in lnn_sim.h)", path=graph.meta.get("source"),
        node=node.name if node is not None else None, tensor=tensor.group(1) if tensor else None, status=int(status))


def pack(graph: Graph, plan: MemoryPlan, *, target_id: int = TARGET_CSK60XX, ops: OpSet | None = None,
         validate: bool = True) -> bytes:
    """Write ``graph`` (shapes inferred, topologically sorted) with its memory ``plan`` as model.bin bytes.

    :param ops: the ops of this run (default: the built-in ones); ops with a Python kernel become external ops.
    :param validate: load the written image with the C loader and refuse what it refuses (False: write it anyway,
        for tests of the loader).
    :raises ModelFileError: an op the simulator does not have, a tensor the plan does not place, or anything
        beyond the simulator's limits (``.node``, ``.tensor``, ``.limit``, ``.actual``).
    """
    path = graph.meta.get("source")
    ops = ops if ops is not None else OpSet.builtin_only()
    check_attr_nesting(graph)  # before json.dumps, which recurses
    biases = {node.inputs[b] for node in graph.nodes if node.op_type in ops
              for b in ops[node.op_type].bias_inputs() if b < len(node.inputs) and node.inputs[b]}
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
    for name in order:
        info = graph.tensors.get(name)
        if info is None or info.shape is None or info.dtype not in DTYPE_CODES or any(
                not isinstance(d, (int, np.integer)) for d in info.shape):
            raise ModelFileError(f"tensor {name!r} cannot be packed (unknown shape or dtype)",
                                 {"tensor": info}, "run shape inference before packing", path=path, node=None)
    _check_limits(graph, lowered, order, plan)

    weights = bytearray()
    tensor_records = bytearray()
    for name in order:
        info = graph.tensors[name]
        shape = [int(d) for d in info.shape]
        flags = (TF_INPUT if name in graph.inputs else 0) | (TF_OUTPUT if name in graph.outputs else 0)
        dtype = info.dtype
        if name in graph.initializers:
            arr = np.ascontiguousarray(graph.initializers[name])
            if arr.dtype == np.int16 and dtype == "int16" and name in biases:
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
    if validate:
        _validate(blob, graph)
    log.info("packed %d ops, %d tensors, %d weight bytes into %d bytes", len(lowered), len(order), len(weights),
             len(blob))
    return blob


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
