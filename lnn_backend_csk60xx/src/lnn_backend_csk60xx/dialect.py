"""The CSK60xx ONNX dialect (linger 1.x / thinker): reader into the IR and writer back out.

Files in this dialect hold ``thinker``-domain ops (quantize, convolutions, adds, ...) next
to standard ONNX shape ops, int8 weights and int32 biases as initializers, and every
quantization scale as a float attribute that must be a power of two (``scale_x = 2**n_x``).

In the IR the scales live on the tensors, not on the nodes: a convolution's ``(scale_x, scale_w,
scale_o)`` becomes exponents ``n_x`` on the input, ``n_w`` on the weight initializer, ``n_o`` on
the output, and ``n_x + n_w`` on the bias. The reader checks that every scale attribute agrees
with the exponent the tensor already has (from its producer); the writer turns exponents back
into ``2.0 ** n`` attributes.

What each op accepts (domain, inputs, attributes, scales) is data on its :class:`~.ops.OpDef`, in the
module of its op family; ops contributed by plugins register theirs the same way
(``lnn_register_target_ops``). Pass the run's :class:`~.ops.OpSet` as ``ops=`` (default: the built-in
ops); the ``lnn`` commands pass ``OpSet.from_host(host)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from lnn_core.errors import ConfigError, ExportError, ModelFileError
from lnn_core.graph import DTYPES, IR_DOMAIN, Graph, Node, TensorInfo, exponent_from_scale

from .inference import infer_node
from .ops.base import AttrSpec, ReadContext
from .ops.opset import OpSet

__all__ = ["DOMAIN", "read_onnx", "write_onnx"]

log = logging.getLogger("lnn.backend.dialect")

DOMAIN = "thinker"
DEFAULT_OPSET = 12
THINKER_OPSET = 1

_ONNX_DTYPE = {
    TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64", TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8", TensorProto.INT16: "int16", TensorProto.INT32: "int32",
    TensorProto.INT64: "int64", TensorProto.BOOL: "bool",
}
_DTYPE_ONNX = {v: k for k, v in _ONNX_DTYPE.items()}

_KIND_TYPES = {
    "int": (AttributeProto.INT,),
    "float": (AttributeProto.FLOAT, AttributeProto.INT),
    "ints": (AttributeProto.INTS,),
    "str": (AttributeProto.STRING,),
}


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------

class _Reader:
    def __init__(self, path: str | None, ops: OpSet) -> None:
        self.path = path
        self.ops = ops

    def fail(self, what: str, details: dict[str, Any] | None = None, hint: str | None = None, *,
             node: Node | None = None, onnx_node: onnx.NodeProto | None = None) -> ModelFileError:
        name = node.name if node is not None else (onnx_node.name if onnx_node is not None else None)
        op = node.op_type if node is not None else (onnx_node.op_type if onnx_node is not None else None)
        where = f" in '{self.path}'" if self.path else ""
        subject = f"node {name!r} ({op})" if name is not None else "the model"
        return ModelFileError(f"{subject}{where}: {what}", details,
                              hint or "re-export the model with linger 1.x or lnn export",
                              path=self.path, node=name)

    def option_fail(self, what: str, details: dict[str, Any], hint: str, *, value: Any, valid: Any) -> ConfigError:
        """An ``input_shapes`` (``--input-shape``) value that does not fit the file."""
        where = f" in '{self.path}'" if self.path else ""
        return ConfigError(f"the model{where}: {what}", details, hint, option="--input-shape", value=value,
                           valid=valid, path=self.path)

    # -- tensors ------------------------------------------------------------------------------
    def array(self, tensor: TensorProto, owner: str) -> np.ndarray:
        try:
            arr = numpy_helper.to_array(tensor)
        except Exception as exc:  # onnx raises several types for damaged tensor payloads
            raise self.fail(f"{owner} {tensor.name!r} cannot be decoded: {exc}") from exc
        if arr.dtype not in DTYPES.values():
            raise self.fail(f"{owner} {tensor.name!r} has unsupported dtype {arr.dtype}",
                            {"supported": ", ".join(DTYPES)})
        return np.ascontiguousarray(arr)

    def value_info(self, vi: onnx.ValueInfoProto, role: str,
                   override: Mapping[str, tuple[int, ...]] | None) -> TensorInfo:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tt.elem_type not in _ONNX_DTYPE:
            raise self.fail(f"graph {role} {vi.name!r} is not a tensor of a supported dtype",
                            {"elem_type": tt.elem_type if vi.type.HasField("tensor_type") else None})
        dtype = _ONNX_DTYPE[tt.elem_type]
        dims: list[Any] | None = None
        if tt.HasField("shape"):
            dims = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                    for d in tt.shape.dim]
        if override and vi.name in override:
            shape = tuple(int(d) for d in override[vi.name])
            fixed_ok = dims is None or (len(dims) == len(shape) and all(
                not isinstance(d, int) or d == s for d, s in zip(dims, shape)))
            if not fixed_ok:
                given = f"{vi.name}={','.join(map(str, shape))}"
                raise self.option_fail(
                    f"input shape {given} contradicts the shape of graph {role} {vi.name!r}",
                    {"rule": "an input shape may only fix the symbolic axes of the file's shape (same rank, same "
                             "fixed sizes)", "file": "x".join(map(str, dims or [])),
                     "given": "x".join(map(str, shape))},
                    "leave the fixed axes as the file has them, or re-export the model for the new shape",
                    value=given, valid="x".join(map(str, dims or [])))
            return TensorInfo(vi.name, dtype, shape)
        return TensorInfo(vi.name, dtype, tuple(dims) if dims is not None else None)

    # -- attributes -------------------------------------------------------------------------------
    def attribute(self, a: AttributeProto, spec: AttrSpec | None, onnx_node: onnx.NodeProto) -> Any:
        if spec is not None and a.type not in _KIND_TYPES[spec.kind]:
            raise self.fail(f"attribute {a.name!r} has the wrong type",
                            {"expected": spec.kind, "actual": AttributeProto.AttributeType.Name(a.type)},
                            onnx_node=onnx_node)
        try:
            value = helper.get_attribute_value(a)
        except Exception as exc:  # malformed attribute payload
            raise self.fail(f"attribute {a.name!r} cannot be decoded: {exc}", onnx_node=onnx_node) from exc
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self.fail(f"attribute {a.name!r} is not UTF-8 text", onnx_node=onnx_node) from exc
        elif isinstance(value, (list, tuple)):
            value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        if spec is None:
            if isinstance(value, (TensorProto, onnx.GraphProto)) or (
                    isinstance(value, list) and value and not isinstance(value[0], (int, float, str))):
                raise self.fail(f"attribute {a.name!r} holds a tensor or graph, which the dialect does not use",
                                onnx_node=onnx_node)
            return value
        if spec.kind == "float":
            value = float(value)
        if spec.kind == "ints":
            value = [int(v) for v in value]
            if spec.length is not None and len(value) != spec.length:
                raise self.fail(f"attribute {a.name!r} has {len(value)} values",
                                {"expected": spec.length, "actual": value}, onnx_node=onnx_node)
        items = value if spec.kind == "ints" else [value]
        if spec.minimum is not None and any(v < spec.minimum for v in items):
            raise self.fail(f"attribute {a.name!r} is below its minimum",
                            {"minimum": spec.minimum, "actual": value}, onnx_node=onnx_node)
        if spec.choices is not None and value not in spec.choices:
            raise self.fail(f"attribute {a.name!r}={value!r} is not supported",
                            {"allowed": ", ".join(map(str, spec.choices)), "actual": value}, onnx_node=onnx_node)
        return value

    def node(self, n: onnx.NodeProto, index: int, consts: dict[str, np.ndarray],
             default_opset: int) -> tuple[Node, dict[str, int]]:
        """Convert one ONNX node; returns the IR node and its scale exponents by attribute name."""
        if not n.name:
            n = onnx.NodeProto.FromString(n.SerializeToString())
            n.name = f"{n.op_type}_{index}"
        schema = self.ops.get(n.op_type)
        if schema is None:  # a variant's own name in another exporter's files
            schema = next((op for op in self.ops.values() if n.op_type in op.file_op_types), None)
        domain = "" if n.domain == "ai.onnx" else n.domain
        if schema is None or domain != schema.domain:
            known = ", ".join(sorted(self.ops))
            hint = ("this is a linger 3.x (domain 'linger') file; export with the linger 1.x dialect"
                    if domain == "linger" else
                    "only the CSK60xx dialect ops and the ops of installed plugins can be read (`lnn plugins` "
                    "lists them; from Python pass ops=OpSet.from_host(host))")
            raise self.fail(f"unknown op '{n.domain + '::' if n.domain else ''}{n.op_type}'",
                            {"supported": known}, hint, onnx_node=n)
        inputs = list(n.input)
        lo, hi = schema.inputs
        attrs: dict[str, Any] = {}
        scales: dict[str, int] = {}
        scale_names = set(schema.scales)
        if schema.variadic_scale:
            scale_names |= {schema.variadic_scale.format(i=i) for i in range(len(inputs))}
        for a in n.attribute:
            if a.name in attrs or a.name in scales:
                raise self.fail(f"attribute {a.name!r} appears twice", onnx_node=n)
            if a.name in scale_names:
                value = self.attribute(a, AttrSpec("float"), n)
                try:
                    scales[a.name] = exponent_from_scale(value, what=a.name)
                except ValueError as exc:
                    raise self.fail(f"attribute {a.name}={value!r} is not a power of two",
                                    {"rule": "every scale is 2**n with integer n (|log2 - n| <= 1e-6)",
                                     "cause": str(exc)}, onnx_node=n) from exc
                continue
            spec = schema.attrs.get(a.name)
            if spec is None and a.name == "auto_pad" and "pads" in schema.attrs:
                value = self.attribute(a, AttrSpec("str"), n)
                if value == "NOTSET":  # ONNX's default: the explicit pads hold
                    continue
                raise self.fail(f"attribute auto_pad={value!r} is not supported",
                                {"rule": f"{n.op_type} pads by its explicit 'pads' attribute (auto_pad NOTSET)",
                                 "actual": value},
                                "export with explicit pads (torch.onnx writes them; padding='same' becomes pads)",
                                onnx_node=n)
            if spec is None:
                known = ", ".join(sorted([*schema.attrs, *scale_names])) or "none"
                raise self.fail(f"attribute {a.name!r} is not an attribute of {n.op_type}",
                                {"rule": "every attribute is one the op's definition knows; an unknown one may change "
                                         "what the op computes", "known": known},
                                "remove the attribute, or export with linger 1.x / lnn export (a plugin op: install "
                                "the plugin version that defines it)", onnx_node=n)
            attrs[a.name] = self.attribute(a, spec, n)
        if schema.read is not None:
            schema.read(ReadContext(n.name, n.op_type, inputs, attrs, consts,
                                    lambda what, details=None, hint=None: self.fail(what, details, hint, onnx_node=n)))
        if len(inputs) < lo or (hi is not None and len(inputs) > hi):
            raise self.fail(f"has {len(inputs)} inputs",
                            {"expected": f"{lo}..{hi if hi is not None else 'any'}", "inputs": inputs},
                            onnx_node=n)
        for name, spec in schema.attrs.items():
            if name not in attrs:
                if spec.required:
                    raise self.fail(f"required attribute {name!r} is missing",
                                    {"expected": spec.kind}, onnx_node=n)
                if spec.default is not None and not spec.dialect_only:
                    attrs[name] = list(spec.default) if isinstance(spec.default, list) else spec.default
            elif spec.dialect_only and attrs[name] == spec.default:
                del attrs[name]  # the file format's own attribute: the writer puts it back
        for name in sorted(scale_names):
            if name not in scales:
                raise self.fail(f"required scale attribute {name!r} is missing",
                                {"rule": "every quantized tensor carries a power-of-two scale"}, onnx_node=n)
        if len(n.output) != schema.outputs or not all(n.output):
            raise self.fail(f"has {len(n.output)} outputs", {"expected": schema.outputs}, onnx_node=n)
        # the IR names no chip: the file's domain (thinker, a plugin's) becomes lnn's own, standard ONNX stays ""
        return Node(n.name, schema.op_type, inputs, list(n.output), attrs, IR_DOMAIN if domain else ""), scales


def read_onnx(source: str | os.PathLike[str] | onnx.ModelProto, *,
              input_shapes: Mapping[str, tuple[int, ...]] | None = None, ops: OpSet | None = None) -> Graph:
    """Read a CSK60xx-dialect ONNX file (linger 1.x, domain ``thinker``) into a :class:`Graph`.

    Every attribute is checked against its op's :class:`~.ops.OpDef`, scale attributes become tensor
    exponents (``scale = 2**n``), ``Constant`` nodes become initializers, and the shape, dtype and
    exponent of every tensor are inferred (:mod:`.inference`).

    :param source: a path or an already loaded ``onnx.ModelProto``.
    :param input_shapes: fixed shapes for graph inputs whose shape is symbolic in the file.
    :param ops: the ops of this run (default: the built-in ones; ``OpSet.from_host(host)`` adds plugins' ops).
    :raises ModelFileError: with ``.path`` and ``.node`` for any defect (unreadable file, unknown op,
        missing/ill-typed attribute, non-power-of-two scale, dangling input, cycle, scale conflict,
        shape that cannot be inferred).
    """
    path = None if isinstance(source, onnx.ModelProto) else os.fspath(source)
    ops = ops if ops is not None else OpSet.builtin_only()
    r = _Reader(path, ops)
    model = source if isinstance(source, onnx.ModelProto) else _load(r, path)
    _check_model(r, model)
    default_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), DEFAULT_OPSET)
    g = model.graph
    graph = Graph(name=g.name or "graph")
    graph.meta.update({"producer": model.producer_name, "producer_version": model.producer_version,
                       "opset": default_opset, "source": path})

    consts: dict[str, np.ndarray] = {}
    for t in g.initializer:
        if not t.name or t.name in consts:
            raise r.fail(f"initializer {t.name!r} is unnamed or defined twice")
        consts[t.name] = r.array(t, "initializer")
    const_nodes = []
    for i, n in enumerate(g.node):
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            value = [a for a in n.attribute if a.name == "value" and a.type == AttributeProto.TENSOR]
            if len(value) != 1 or len(n.attribute) != 1 or len(n.output) != 1:
                raise r.fail("only Constant nodes with one tensor 'value' are supported", onnx_node=n)
            if n.output[0] in consts:
                raise r.fail(f"constant {n.output[0]!r} is defined twice", onnx_node=n)
            consts[n.output[0]] = r.array(value[0].t, "constant")
            const_nodes.append(i)
    for name, arr in consts.items():
        graph.add_initializer(name, arr)

    for vi in g.input:
        if vi.name in consts:
            continue  # older exporters list initializers as graph inputs too
        info = r.value_info(vi, "input", input_shapes)
        if info.name in graph.tensors:
            raise r.fail(f"graph input {info.name!r} is declared twice")
        graph.tensors[info.name] = info
        graph.inputs.append(info.name)
    unknown = [k for k in (input_shapes or {}) if k not in graph.inputs]
    if unknown:
        raise r.option_fail(f"an input shape names {', '.join(map(repr, unknown))}, which is no graph input",
                            {"graph inputs": ", ".join(f"{k} {graph.tensors[k].shape}" for k in graph.inputs)
                             or "none"}, "name one of the graph inputs above: --input-shape NAME=D1,D2,...",
                            value=unknown[0], valid=list(graph.inputs))
    declared_outputs = {vi.name: r.value_info(vi, "output", None) for vi in g.output}
    graph.outputs = [vi.name for vi in g.output]
    if len(set(graph.outputs)) != len(graph.outputs) or not graph.outputs:
        raise r.fail("graph outputs are missing or repeated", {"outputs": graph.outputs})

    scales_of: dict[str, dict[str, int]] = {}
    for i, n in enumerate(g.node):
        if i in const_nodes:
            continue
        node, scales = r.node(n, i, consts, default_opset)
        if any(m.name == node.name for m in graph.nodes):
            raise r.fail("two nodes have the same name", node=node)
        graph.add_node(node)
        scales_of[node.name] = scales
    # drop initializers that only fed axes inputs (turned into attributes by an op's read hook) and nothing else
    used = {t for node in graph.nodes for t in node.inputs} | set(graph.outputs)
    for name in [k for k in graph.initializers if k not in used]:
        del graph.initializers[name]
        del graph.tensors[name]

    graph.toposort(path=path)
    for node in graph.nodes:
        _assign_input_exponents(r, graph, node, scales_of[node.name])
        out_scales = {index: key for key, (kind, index) in ops[node.op_type].scale_targets(node).items()
                      if kind == "out"}
        try:
            infos = infer_node(graph, node, ops, path=path)
        except ModelFileError as exc:
            raise _blame_upstream(r, graph, node, exc) from exc
        for k, info in enumerate(infos):
            if k in out_scales:
                info.exponent = scales_of[node.name][out_scales[k]]
            graph.tensors[info.name] = info
    indices = {node.inputs[i] for node in graph.nodes for i in ops[node.op_type].index_inputs
               if i < len(node.inputs)}  # token ids (an embedding's): integers that are not quantized
    for node in graph.nodes:
        for name in [*node.inputs, *node.outputs]:
            info = graph.tensors.get(name) if name else None
            if (info is not None and info.dtype in ("int8", "int16", "int32") and info.exponent is None
                    and name not in indices):
                raise r.fail(f"tensor {name!r} is an integer tensor without a scale",
                             {"rule": "every int8/int16/int32 tensor needs a power-of-two scale from an attribute"},
                             node=node)
    for name in graph.outputs:
        info, declared = graph.tensors[name], declared_outputs[name]
        shape_ok = declared.shape is None or not all(isinstance(d, int) for d in declared.shape) \
            or declared.shape == info.shape
        if declared.dtype != info.dtype or not shape_ok:
            raise r.fail(f"graph output {name!r} is declared as {declared.dtype} {declared.shape} "
                         f"but computes {info.dtype} {info.shape}")
    log.info("read %s: %d nodes, %d initializers", path or "<ModelProto>", len(graph.nodes), len(graph.initializers))
    return graph


def _load(r: _Reader, path: str) -> onnx.ModelProto:
    """Parse the file, then its external data (a missing data file is named as such, not as a damaged file)."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    if not os.path.exists(path):
        raise ModelFileError(f"cannot read ONNX file '{path}': it does not exist", {}, "check the path", path=path,
                             node=None)
    if os.path.isdir(path):
        raise ModelFileError(f"cannot read ONNX file '{path}': it is a folder", {}, "pass the .onnx file",
                             path=path, node=None)
    if os.path.getsize(path) == 0:
        raise ModelFileError(f"cannot read ONNX file '{path}': the file is empty", {"size": "0 bytes"},
                             "the export or the copy did not finish; write the file again", path=path, node=None)
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError
        raise ModelFileError(f"cannot read ONNX file '{path}': it is not a valid ONNX protobuf",
                             {"cause": f"{type(exc).__name__}: {exc}"},
                             "check that the file was written by torch.onnx / lnn export and copied completely",
                             path=path, node=None) from exc
    base = os.path.dirname(os.path.abspath(path))
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t"))]
    for t in tensors:
        if not uses_external_data(t):
            continue
        where = {e.key: e.value for e in t.external_data}.get("location", "")
        if not where or not os.path.isfile(os.path.join(base, where)):
            raise ModelFileError(
                f"cannot read ONNX file '{path}': tensor {t.name!r} keeps its data in the external file "
                f"{where!r}, which is missing", {"looked in": base, "rule": "external data files lie beside the "
                                                 ".onnx file, at the location the file names"},
                "copy the data file(s) written with the model next to it (or save the model without external data)",
                path=path, node=None)
    try:
        load_external_data_for_model(model, base)
    except Exception as exc:  # a data file shorter than the offsets it is read at, a location outside the folder
        raise ModelFileError(f"cannot read ONNX file '{path}': its external data cannot be read",
                             {"cause": f"{type(exc).__name__}: {exc}"},
                             "copy the data file(s) written with the model again, completely", path=path,
                             node=None) from exc
    return model


def _check_model(r: _Reader, model: onnx.ModelProto) -> None:
    """A model the reader understands: a graph with nodes, an IR version and opsets it knows."""
    if not model.HasField("graph"):
        raise r.fail("it is not an ONNX model: it has no graph", {"ir_version": model.ir_version or None},
                     "pass the .onnx file written by lnn export or linger 1.x")
    if not 3 <= model.ir_version <= onnx.IR_VERSION:
        raise r.fail(f"it has ONNX IR version {model.ir_version}, which this reader does not know",
                     {"rule": f"IR version 3..{onnx.IR_VERSION} (the installed onnx {onnx.__version__})",
                      "actual": model.ir_version},
                     "re-export with an exporter of this ONNX version (lnn export writes IR version 7)")
    newest = onnx.defs.onnx_opset_version()
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and not 1 <= o.version <= newest:
            raise r.fail(f"it imports the standard ONNX opset {o.version}, which this reader does not know",
                         {"rule": f"opset 1..{newest} (the installed onnx {onnx.__version__})", "actual": o.version},
                         f"export with opset {DEFAULT_OPSET} (linger 1.x and lnn export do)")
        if o.domain == DOMAIN and o.version != THINKER_OPSET:
            raise r.fail(f"it imports the {DOMAIN!r} opset {o.version}, which this reader does not know",
                         {"rule": f"the CSK60xx dialect is opset {THINKER_OPSET} of domain {DOMAIN!r}",
                          "actual": o.version}, "export with linger 1.x or lnn export")
    if not model.graph.node:
        raise r.fail("its graph has no nodes", {"rule": "a model computes something: at least one node"},
                     "export the model again; the graph came out empty")


def _absurd_window(node: Node) -> str | None:
    """What is absurd about a window op's pads: a pad as wide as the dilated kernel gives output rows that read
    padding only (no exporter writes that), and a huge one makes every shape after the op wrong."""
    k, p = node.attrs.get("kernel_shape"), node.attrs.get("pads")
    if not k or not p or "output_padding" in node.attrs or len(p) != 2 * len(k):
        return None  # a transposed conv's pads shrink its output: an error there is reported at the node itself
    d = node.attrs.get("dilations") or [1] * len(k)
    extent = [di * (ki - 1) + 1 for ki, di in zip(k, d)]
    if all(pi < extent[i % len(k)] for i, pi in enumerate(p)):
        return None
    return f"pads {list(p)} reach beyond its kernel {'x'.join(map(str, k))}"


def _blame_upstream(r: _Reader, graph: Graph, failed: Node, exc: ModelFileError) -> ModelFileError:
    """Shape inference failed at ``failed``: when an op upstream of it has absurd pads, that op is the defect
    (its output shape made the later op's shapes disagree), and the error names it; else ``exc`` as it is."""
    producer = {t: n for n in graph.nodes for t in n.outputs if t}
    seen: set[str] = set()
    stack = [failed]
    upstream: list[Node] = []
    while stack:
        for t in stack.pop().inputs:
            n = producer.get(t)
            if n is not None and n.name not in seen:
                seen.add(n.name)
                upstream.append(n)
                stack.append(n)
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    for n in sorted(upstream, key=lambda n: order[n.name]):
        what = _absurd_window(n)
        if what is not None:
            out = graph.tensors.get(n.outputs[0]) if n.outputs else None
            return r.fail(what, {"rule": "each pad is smaller than the (dilated) kernel it pads for",
                                 "output": "x".join(map(str, out.shape)) if out is not None and out.shape else None,
                                 "then": exc.headline}, f"fix the pads of node {n.name!r} and export the model again",
                          node=n)
    return exc


def _assign_input_exponents(r: _Reader, graph: Graph, node: Node, scales: dict[str, int]) -> None:
    """Give input tensors the exponents of the node's scale attributes, or check that they agree."""
    schema = r.ops[node.op_type]
    for attr, (kind, index) in schema.scale_targets(node).items():
        if kind != "in":
            continue
        exp = scales[attr]
        name = node.inputs[index] if index < len(node.inputs) else ""
        if not name:
            raise r.fail(f"{attr} describes input {index}, which is missing", node=node)
        _set_exponent(r, graph, node, name, exp, attr)
    out_scale = {index: scales[key] for key, (kind, index) in schema.scale_targets(node).items() if kind == "out"}
    for bias, pair in schema.bias_inputs().items():
        if len(node.inputs) <= bias or not node.inputs[bias]:
            continue
        name = node.inputs[bias]
        if name not in graph.initializers:
            raise r.fail(f"bias {name!r} must be an initializer", node=node)
        kind, index = pair.x
        n_x = out_scale.get(index) if kind == "out" else graph.tensors[node.inputs[index]].exponent
        if n_x is None:
            raise r.fail(f"bias {name!r} scales with output {index}, which has no scale attribute", node=node)
        exp = n_x + graph.tensors[node.inputs[pair.weight]].exponent
        _set_exponent(r, graph, node, name, exp, "bias (n_x + n_w)")
    for i, src in schema.input_exponents.items():  # a recurrent op's initial state: at a scale of the op
        if i < len(node.inputs) and node.inputs[i]:
            exp = src if isinstance(src, int) else scales[src]
            info = graph.tensors.get(node.inputs[i])
            if info is not None and info.dtype not in ("float32", "float64"):
                _set_exponent(r, graph, node, node.inputs[i], exp, f"{node.op_type} input {i}")
    for i in schema.same_scale_inputs:  # constants quantized at the input's scale (a clip's bounds)
        if len(node.inputs) > i and node.inputs[i] in graph.initializers:
            src = graph.tensors[node.inputs[0]].exponent
            if src is not None:
                _set_exponent(r, graph, node, node.inputs[i], src, f"{node.op_type} input {i} (n_x)")


def _set_exponent(r: _Reader, graph: Graph, node: Node, name: str, exp: int, what: str) -> None:
    info = graph.tensors.get(name)
    if info is None:
        raise r.fail(f"input {name!r} is unknown", node=node)
    if info.exponent is None:
        if info.dtype == "float32" or info.dtype == "float64":
            raise r.fail(f"{what} is given for float tensor {name!r}",
                         {"rule": "quantized ops read integer tensors; quantize the input first"}, node=node)
        info.exponent = exp
    elif info.exponent != exp:
        raise r.fail(f"{what} = 2**{exp} disagrees with tensor {name!r}, which has scale 2**{info.exponent}",
                     {"rule": "a tensor has one scale; consumers must declare the producer's scale"}, node=node)


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------

def _value_info(info: TensorInfo) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(info.name, _DTYPE_ONNX[info.dtype],
                                         list(info.shape) if info.shape is not None else None)


def _refuse_float_islands(graph: Graph) -> None:
    """The chip has no float: a layer kept float inside the quantized graph (``lnn.disable_quant``,
    ``LayerConfig(float=True)``, an op without a quantized form) cannot be written, whatever its ONNX ops."""
    present = {n.name for n in graph.nodes}
    islands = [i for i in graph.meta.get("float_islands", ()) if present.intersection(i.get("ir_nodes", ()))]
    if not islands:
        return
    where = [f"{i['op']} (module {i['module']!r})" if i.get("module") else f"{i['op']} (node {i['node']!r})"
             for i in islands]
    first = islands[0]
    raise ExportError(
        f"{where[0]} is kept float inside the quantized graph; the CSK60xx dialect has no float ops"
        + (f" ({len(islands) - 1} more)" if len(islands) > 1 else ""),
        {"float ops": "; ".join(where),
         "rule": "every op of the quantized graph runs on the chip in integers"},
        "quantize the layer (remove lnn.disable_quant / LayerConfig(float=True) there, or replace the op with a "
        "supported one), or export the float layer with dialect='qdq'",
        node=first["node"], module=first.get("module", ""), dialect="csk60xx", ops=where)


def write_onnx(graph: Graph, *, ops: OpSet | None = None) -> onnx.ModelProto:
    """Write ``graph`` in the CSK60xx dialect: domain ``thinker`` (opset 1), default opset 12.

    Scale attributes are written from the tensor exponents as ``2.0 ** n``; other attributes as
    stored on the nodes, plus the file format's own attributes with their defaults
    (``platform_quant="luna_quant"``, ``castor_mode="luna"``) where the IR node does not set them.
    Initializers keep their integer dtypes. Ops outside the ``thinker`` domain and standard ONNX
    (plugin ops) are written in their own domain, which is then imported at opset 1.

    :raises ExportError: an op the run's ``ops`` do not know, or a scaled tensor without exponent.
    """
    schemas = ops if ops is not None else OpSet.builtin_only()
    _refuse_float_islands(graph)
    nodes = []
    extra_domains: set[str] = set()
    for node in graph.nodes:
        schema = schemas.get(node.op_type)
        if schema is None:
            raise ExportError(f"node {node.name!r} ({node.op_type}) has no form in the CSK60xx dialect",
                              {"supported": ", ".join(sorted(schemas))},
                              "remove or replace the op, or install the plugin that provides it",
                              node=node.name, dialect="csk60xx")
        if schema.domain not in ("", DOMAIN):
            extra_domains.add(schema.domain)
        attrs: dict[str, Any] = {}
        for key, (kind, index) in schema.scale_targets(node).items():
            names = node.inputs if kind == "in" else node.outputs
            info = graph.tensors.get(names[index]) if index < len(names) else None
            if info is None or info.exponent is None:
                raise ExportError(f"node {node.name!r} ({node.op_type}): {key} has no exponent to write",
                                  {"tensor": names[index] if index < len(names) else None},
                                  "run shape inference or set the tensor's exponent", node=node.name,
                                  dialect="csk60xx")
            attrs[key] = float(2.0 ** info.exponent)
        attrs.update(node.attrs)
        for name, spec in schema.attrs.items():
            if spec.dialect_only:
                attrs.setdefault(name, spec.default)
        inputs = schema.write(list(node.inputs)) if schema.write is not None else node.inputs
        nodes.append(helper.make_node(node.op_type, inputs, node.outputs, name=node.name,
                                      domain=schema.domain, **dict(sorted(attrs.items()))))
    inits = [numpy_helper.from_array(arr, name) for name, arr in graph.initializers.items()]
    g = helper.make_graph(nodes, graph.name, [_value_info(graph.tensors[n]) for n in graph.inputs],
                          [_value_info(graph.tensors[n]) for n in graph.outputs], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET),
                                                helper.make_opsetid(DOMAIN, THINKER_OPSET)]
                              + [helper.make_opsetid(d, 1) for d in sorted(extra_domains)],
                              producer_name="lnn")
    model.ir_version = 7
    return model
