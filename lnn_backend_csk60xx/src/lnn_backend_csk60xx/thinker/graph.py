"""A thinker package read back into lnn's IR, so that lnn's simulator runs it (``lnn run m.pkg``).

Each operator record becomes the IR node of the op family whose ``OpDef.lowerings["thinker"].name`` is the
record's type; the family's ``read`` hook turns the attribute struct back into IR attributes and the stored
constants back into the IR's layout (the inverse of spec 6). Activation exponents come from the tensor records
(``scale_``). Workspaces and DMA buffers are dropped: they carry no data. The graph is then packed as lnn's
model.bin with lnn's own plan, without rewrites, so every record runs as written.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lnn_core.errors import ModelFileError
from lnn_core.graph import Graph, Node, TensorInfo

from ..ops.opset import OpSet
from .lowering import DecodedOp, ThinkerLowering, read_conv2d_attrs
from .package import Package, decode

__all__ = ["package_to_graph", "to_model_bin"]


def _by_name(ops: OpSet) -> dict[str, tuple[str, ThinkerLowering]]:
    out = {}
    for op_type, op in ops.items():
        low = op.lowerings.get("thinker")
        if isinstance(low, ThinkerLowering):
            out.setdefault(low.name, (op_type, low))
    return out


def _fold_vendor_pads(pkg: Package) -> list[tuple[Any, dict[str, Any]]]:
    """The records to read, each with IR attributes to add: an ``iqPad`` the vendor packer puts in front of a
    conv (zero padding of H and W, spec 3.3) is folded back into the pads of the one conv that reads it when the
    sums stay within the conv's kernel; any other iqPad is read as one."""
    readers: dict[int, list[int]] = {}
    for k, rec in enumerate(pkg.ops):
        for i in rec.inputs:
            readers.setdefault(i, []).append(k)
    out: list[tuple[Any, dict[str, Any]]] = []
    folded: dict[int, tuple[int, list[int]]] = {}
    for k, rec in enumerate(pkg.ops):
        if rec.type == "iqPad" and len(rec.inputs) >= 2 and len(rec.outputs) == 1:
            pads = pkg.tensors[rec.inputs[1]].data
            value = pkg.tensors[rec.inputs[2]].data if len(rec.inputs) > 2 else None
            users = readers.get(rec.outputs[0], [])
            if (pads is not None and pads.size == 8 and not pads[[0, 1, 4, 5]].any() and len(users) == 1
                    and pkg.ops[users[0]].type == "Conv2dInt" and (value is None or not np.asarray(value).any())
                    and _within_kernel(pkg.ops[users[0]].attrs, pads)):
                folded[users[0]] = (rec.inputs[0], [int(v) for v in pads])
                continue
        extra: dict[str, Any] = {}
        if k in folded:
            src, p = folded[k]
            rec = type(rec)(rec.type, rec.attrs, [src, *rec.inputs[1:]], rec.outputs, rec.temps, rec.name)
            extra["pads_add"] = [p[2], p[3], p[6], p[7]]
        out.append((rec, extra))
    return out


def _within_kernel(conv_attrs: bytes, pads: np.ndarray) -> bool:
    a = read_conv2d_attrs(conv_attrs)
    k, p = a["kernel_shape"], a["pads"]
    total = [p[0] + int(pads[2]), p[1] + int(pads[3]), p[2] + int(pads[6]), p[3] + int(pads[7])]
    return all(v <= k[j % 2] for j, v in enumerate(total))


def package_to_graph(pkg: Package, ops: OpSet | None = None, *, path: str | None = None) -> Graph:
    """The IR graph of a decoded package.

    :raises ModelFileError: a record whose type no installed op family reads.
    """
    ops = ops if ops is not None else OpSet.builtin_only()
    known = _by_name(ops)
    g = Graph(name="thinker", meta={"source": path} if path else {})
    names = [t.name for t in pkg.tensors]
    if len(set(names)) != len(names):  # debug names may repeat (cut to 60 characters): make them unique
        names = [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]

    def info(i: int) -> TensorInfo:
        t = pkg.tensors[i]
        exp = None if t.dtype == "float32" or t.scale == -1.0 else int(t.scale)
        return TensorInfo(names[i], t.dtype, tuple(t.shape), exp)

    for i in pkg.inputs:
        g.tensors[names[i]] = info(i)
    for k, (rec, extra) in enumerate(_fold_vendor_pads(pkg)):
        if rec.type not in known:
            raise ModelFileError(f"thinker package{' ' + repr(path) if path else ''}: op {k} ({rec.type}) cannot be "
                                 "run by lnn's simulator", {"readable": ", ".join(sorted(known))},
                                 "run it in the vendor runtime", path=path, node=None)
        op_type, low = known[rec.type]
        d = DecodedOp(rec.attrs, [pkg.tensors[i] for i in rec.inputs], [pkg.tensors[i] for i in rec.outputs])
        attrs, restored = low.read(d) if low.read is not None else ({}, {})
        if "pads_add" in extra:
            attrs["pads"] = [a + b for a, b in zip(attrs["pads"], extra["pads_add"])]
        spec = ops[op_type].attrs
        if "o_bits" in spec:
            attrs.setdefault("o_bits", {"int8": 8, "int16": 16, "int32": 32}.get(d.outputs[0].dtype, 8))
        positions = list(range(len(rec.inputs) if low.n_inputs is None else low.n_inputs))
        if low.ir_order is not None:
            positions = list(low.ir_order(len(rec.inputs)))
        inputs = [rec.inputs[p] for p in positions]
        for pos, i in zip(positions, inputs):
            t = pkg.tensors[i]
            if t.constant and names[i] not in g.initializers:
                arr = np.asarray(restored.get(pos, t.data))
                g.initializers[names[i]] = arr
                ti = info(i)
                g.tensors[names[i]] = TensorInfo(ti.name, str(arr.dtype), tuple(arr.shape), ti.exponent)
        for p in ops[op_type].params:  # a bias is stored without its exponent (the kernels use n_x + n_w)
            side, j = p.x
            if p.bias is not None and p.bias < len(inputs) and j < len(inputs if side == "in" else rec.outputs):
                b, w = (g.tensors[names[inputs[i]]] for i in (p.bias, p.weight))
                x = g.tensors[names[inputs[j]]] if side == "in" else info(rec.outputs[j])
                if x.exponent is not None and w.exponent is not None:
                    b.exponent = x.exponent + w.exponent
        for i in rec.outputs:
            g.tensors[names[i]] = info(i)
        g.nodes.append(Node(f"{rec.type}_{k}", op_type, [names[i] for i in inputs], [names[i] for i in rec.outputs],
                            attrs, ops[op_type].domain))
    g.inputs = [names[i] for i in pkg.inputs]
    g.outputs = [names[i] for i in pkg.outputs]
    return g


def to_model_bin(blob: bytes, ops: OpSet | None = None, *, path: str | None = None) -> bytes:
    """lnn's model.bin of a thinker package (decoded, then packed with lnn's plan and no rewrites)."""
    from ..pipeline import pack_graph

    graph = package_to_graph(decode(blob, path=path), ops, path=path)
    return pack_graph(graph, check=False, fuse_relu=False, split=False, ops=ops).blob


def describe(blob: bytes, *, path: str | None = None) -> dict[str, Any]:
    """Every section of a thinker package as plain data."""
    return decode(blob, path=path).to_dict()
