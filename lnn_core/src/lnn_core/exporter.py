"""From a quantized model to the IR, and from the IR to ONNX in a registered dialect.

``to_ir`` walks the graph of a model made by ``lnn.init`` with frozen eval semantics. It judges no
node: ``lnn.init`` classified each one (``node.meta["lnn"]``, a
:class:`~lnn_core.quant.rewrite.NodeRole`) and the exporter writes it by that role. Every quantized
op is written by the IR writer its op family registered (``lnn_register_exporters``,
``registry.add_node_writer("ir", op_id, fn)``), with exactly the integer exponents the eval
forward uses. A writer returns the IR name of the op's output, or one name per output (in the
order of the module's ``out_qs``) for an op with several; each output tensor carries its own
exponent, and each ``getitem`` that picks an output of the model reads that tensor.

Float data entering the quantized graph gets a ``Quant`` node, quantized data leaving it (graph
outputs, float islands) a ``Dequant`` node (spec 1.5). A float op between
quantized ops is written as an explicit Dequant -> float op -> Quant island and listed in a
warning; ``strict=True`` refuses and lists them all. Float ops are written by torch's own ONNX
exporter and spliced in.

The model is left as it was found: mode, buffers and parameters are restored.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import operator
import os
import warnings
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .calibration import require_calibrated
from .errors import ConfigError, ExportError, LnnError
from .graph import IR_DOMAIN, Graph, Node, TensorInfo
from .plugins import PluginHost
from .quant.qmodule import QModule, QuantStub, output_tree, tree_leaves
from .quant.rewrite import ROLE_KEY, LnnInfo, NodeRole, flat_nodes

__all__ = ["ExportContext", "FloatIslandWarning", "ExampleRunner", "check_example_inputs", "to_ir", "export"]

_TORCH_DTYPE = {torch.float32: "float32", torch.float64: "float64", torch.int64: "int64", torch.int32: "int32",
                torch.int8: "int8", torch.bool: "bool"}


class FloatIslandWarning(UserWarning):
    """Float ops were exported between Dequant and Quant nodes; the text lists them."""


@attrs.define
class _Builder:
    graph: Graph
    used: set[str] = attrs.field(factory=set)

    def fresh(self, base: str) -> str:
        base = base or "t"
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


@attrs.define
class ExportContext:
    """What an IR writer gets for one op.

    :param module: the quantized (or float) module being written; None for function nodes.
    :param node: the fx node.
    :param path: the module path (or node name): used for node and tensor names.
    :param inputs: IR tensor names of the op's inputs, in the order the module takes them.
    :param out_shape: output shape as run on the example inputs (batch axis symbolic if dynamic); None for an
        op with several outputs.
    :param params: parameter tensors passed to a functional op (``F.conv2d(x, self.w)``).
    :param out_shapes: the shape of every output, in order (``[out_shape]`` for an op with one output).

    A writer returns the IR name of its output tensor, or a list of names, one per output in the order of
    the module's ``out_qs``, each made with :meth:`tensor` (``shape=ctx.out_shapes[i]``, its own exponent).
    """

    builder: _Builder
    module: nn.Module | None
    node: fx.Node
    path: str
    inputs: list[str]
    out_shape: tuple[Any, ...] | None
    dynamic_batch: bool
    params: list[torch.Tensor] = attrs.field(factory=list)
    out_shapes: list[tuple[Any, ...] | None] = attrs.field(factory=list)

    @property
    def graph(self) -> Graph:
        return self.builder.graph

    def info(self, i: int = 0) -> TensorInfo:
        return self.graph.tensors[self.inputs[i]]

    def exponent(self, i: int = 0) -> int:
        n = self.info(i).exponent
        if n is None:
            raise ExportError(f"op {self.path!r}: input {i} is not quantized", {}, "this is a bug in the op's writer",
                              node=self.path, dialect="ir")
        return n

    def shape(self, i: int = 0) -> tuple[Any, ...] | None:
        return self.info(i).shape

    def initializer(self, suffix: str, array: np.ndarray, exponent: int | None = None) -> str:
        name = self.builder.fresh(f"{self.path}.{suffix}")
        self.graph.add_initializer(name, np.asarray(array), exponent)
        return name

    def tensor(self, exponent: int | None, dtype: str = "int8", shape: Sequence[Any] | None = None,
               suffix: str = "") -> str:
        name = self.builder.fresh(f"{self.path}{suffix}" if suffix else self.node.name)
        self.graph.add_tensor(name, dtype, tuple(shape) if shape is not None else self.out_shape, exponent)
        return name

    def add(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], attrs: dict[str, Any] | None = None,
            *, domain: str = IR_DOMAIN, suffix: str = "") -> Node:
        """Add a node; lnn's integer ops are in :data:`~lnn_core.graph.IR_DOMAIN`, standard ONNX ops pass
        ``domain=""``. ``attrs`` say what the op computes, never how a target's file spells it."""
        name = self.builder.fresh(f"{self.path}{suffix}")
        return self.graph.add_node(Node(name, op_type, list(inputs), list(outputs), dict(attrs or {}), domain))

    def clip(self, src: str, lo: int, hi: int, *, suffix: str = ".clip") -> str:
        """``Clip(x, lo, hi)`` with int8 scalar bounds (the linger 1 ReLU6 form); keeps the exponent."""
        info = self.graph.tensors[src]
        lo_t = self.initializer(f"{suffix.strip('.')}_min", np.array(lo, dtype=np.int8))
        hi_t = self.initializer(f"{suffix.strip('.')}_max", np.array(hi, dtype=np.int8))
        out = self.tensor(info.exponent, info.dtype, info.shape, suffix=suffix)
        self.add("Clip", [src, lo_t, hi_t], [out], domain="", suffix=suffix)
        return out


def _shape_of(meta: Any, dynamic_batch: bool) -> tuple[Any, ...] | None:
    if meta is None or not hasattr(meta, "shape"):
        return None
    shape = tuple(int(d) for d in meta.shape)
    if dynamic_batch and shape:
        shape = ("N",) + shape[1:]
    return shape


def _shape(node: fx.Node, dynamic_batch: bool) -> tuple[Any, ...] | None:
    return _shape_of(node.meta.get("tensor_meta"), dynamic_batch)


def _shapes(node: fx.Node, dynamic_batch: bool) -> list[tuple[Any, ...] | None]:
    """The shape of every tensor the node returns, depth first (one entry for a tensor)."""
    def leaves(meta: Any) -> list[Any]:
        if isinstance(meta, (tuple, list)) and not hasattr(meta, "shape"):  # TensorMetadata is a NamedTuple
            return [m for sub in meta for m in leaves(sub)]
        return [meta]

    return [_shape_of(m, dynamic_batch) for m in leaves(node.meta.get("tensor_meta"))]


class _Outputs(tuple):
    """The IR tensors of an op with several outputs, nested like its return value (tuples of names)."""


def _dtype(node: fx.Node) -> str:
    meta = node.meta.get("tensor_meta")
    return _TORCH_DTYPE.get(getattr(meta, "dtype", torch.float32), "float32")


class _Exporter:
    def __init__(self, model: fx.GraphModule, info: LnnInfo, host: PluginHost, *, dynamic_batch: bool,
                 strict: bool, inputs: Sequence[Any] = ()) -> None:
        self.model, self.info, self.host = model, info, host
        self.dynamic_batch, self.strict = dynamic_batch, strict
        self.b = _Builder(Graph(name=type(model).__name__))
        self.tmap: dict[fx.Node, Any] = {}  # fx node -> IR tensor name (or python value for META)
        self.float_cache: dict[str, str] = {}  # quantized IR tensor -> its Dequant output
        self.islands: list[tuple[str, str]] = []
        self.island_nodes: set[fx.Node] = set()  # float ops on quantized data, and the float ops they feed
        self.sources: dict[str, str] = {}  # IR tensor -> fx node whose eval value it holds
        self.island_meta: list[dict[str, Any]] = []
        # graph input -> the example value: a float op reading a graph input directly is traced on it (the lengths
        # of pack_padded_sequence must be real lengths), other inputs of float ops on zeros of their shape
        self.examples: dict[fx.Node, Any] = dict(zip((n for n in model.graph.nodes if n.op == "placeholder"), inputs))

    @property
    def g(self) -> Graph:
        return self.b.graph

    def dequant(self, name: str) -> str:
        """A float view of an IR tensor (a Dequant node for quantized tensors)."""
        info = self.g.tensors[name]
        if info.exponent is None:
            return name
        if name not in self.float_cache:
            out = self.b.fresh(f"{name}.float")
            self.g.add_tensor(out, "float32", info.shape, None)
            self.g.add_node(Node(self.b.fresh(f"{name}.dequant"), "Dequant", [name], [out], {}, IR_DOMAIN))
            self.float_cache[name] = out
        return self.float_cache[name]

    def run(self, input_names: Sequence[str] | None, output_names: Sequence[str] | None) -> Graph:
        placeholders = [n for n in self.model.graph.nodes if n.op == "placeholder"]
        if input_names is not None and len(input_names) != len(placeholders):
            raise ConfigError(
                f"export: {len(input_names)} input names for {len(placeholders)} model inputs",
                {"inputs": ", ".join(p.name for p in placeholders)}, "pass one name per forward() argument",
                option="input_names", value=list(input_names), valid=len(placeholders))
        for i, node in enumerate(placeholders):
            name = self.b.fresh(input_names[i] if input_names else node.name)
            self.g.add_tensor(name, _dtype(node), _shape(node, self.dynamic_batch), None)
            self.g.inputs.append(name)
            self.tmap[node] = name
        for node in self.model.graph.nodes:
            if node.op in ("placeholder", "output"):
                continue
            self.visit(node)
        out_node = next(n for n in self.model.graph.nodes if n.op == "output")
        outs = [t for node in flat_nodes(out_node.args) for t in _leaves(self.tmap[node])]
        if output_names is not None and len(output_names) != len(outs):
            raise ConfigError(
                f"export: {len(output_names)} output names for {len(outs)} model outputs", {},
                "pass one name per output tensor", option="output_names", value=list(output_names), valid=len(outs))
        for i, src in enumerate(outs):
            want = output_names[i] if output_names else f"output_{i}" if len(outs) > 1 else "output"
            info = self.g.tensors[src]
            name = self.b.fresh(want)
            if info.exponent is not None:
                self.g.add_tensor(name, "float32", info.shape, None)
                self.g.add_node(Node(self.b.fresh(f"{src}.dequant"), "Dequant", [src], [name], {}, IR_DOMAIN))
            else:
                self.g.add_tensor(name, info.dtype, info.shape, None)
                self.g.add_node(Node(self.b.fresh(f"{src}.identity"), "Identity", [src], [name], {}, ""))
            self.g.outputs.append(name)
        if self.islands:
            listing = "\n".join(f"{op} (node {n!r})" for n, op in self.islands)
            if self.strict:
                raise ExportError(
                    f"{len(self.islands)} float op(s) inside the quantized graph; strict export refuses them",
                    {"ops": listing, "rule": "strict=True: every op between Quant and Dequant must be an int8 op"},
                    "replace them with supported ops, or export without strict to get Dequant/float/Quant islands",
                    node=self.islands[0][0], dialect="ir", ops=self.islands)
            warnings.warn(f"exported {len(self.islands)} float op(s) in islands (Dequant -> float ops -> Quant):\n"
                          f"{listing}", FloatIslandWarning, stacklevel=3)
        self.g.toposort()
        self.g.meta["sources"] = dict(self.sources)
        # float islands, for dialects of targets that have no float (the CSK60xx writer refuses them by module):
        # one {"node", "op", "module", "ir_nodes"} per float op on quantized data
        self.g.meta["float_islands"] = list(self.island_meta)
        return self.g

    def visit(self, node: fx.Node) -> None:
        """Write one fx node by the role ``lnn.init`` gave it."""
        role = node.meta.get(ROLE_KEY)
        if not isinstance(role, NodeRole):
            raise ExportError(
                f"node {node.name!r} ({node.op} {node.target}) was not classified by lnn.init",
                {"rule": "every node of a prepared model carries its role in node.meta['lnn']"},
                "export the model lnn.init returned (a pickled or re-traced GraphModule loses its node metadata: "
                "save the state_dict and load it into a model built with lnn.init)", node=node.name, dialect="ir")
        kind = role.kind
        if kind == "param":
            self.tmap[node] = ("get_attr", node)
        elif kind == "value":
            self.tmap[node] = ("meta", node)  # sizes, dims, constants: python values baked into their users
        elif kind == "quant":
            self.quant_stub(node, self.model.get_submodule(str(node.target)))
        elif kind == "alias":  # folded BatchNorm
            self.tmap[node] = self.tmap[node.args[0]]
        elif kind == "select":
            self.select(node, role.index)
        elif kind == "op" and self.host.exporters.node_writer("ir", role.op) is not None:
            self.write_op(node, role.op)
        elif (node.op == "call_function" and node.target is operator.getitem
              and isinstance(self.tmap.get(node.args[0]), _Outputs)):  # one value of a float op's tuple
            self.select(node, node.args[1])
        else:
            ins = flat_nodes((node.args, node.kwargs))
            self.float_op(node, [i for i in ins if isinstance(self.tmap.get(i), str)], role)

    def select(self, node: fx.Node, index: Any) -> None:
        """``getitem`` on an op with several outputs: the IR tensor(s) of the picked output(s)."""
        picked = self.tmap[node.args[0]][index]
        self.tmap[node] = _Outputs(picked) if isinstance(picked, tuple) else picked
        if isinstance(picked, str):
            self.sources.setdefault(picked, node.name)

    def write_op(self, node: fx.Node, op_id: str) -> None:
        writer = self.host.exporters.node_writer("ir", op_id)
        path = str(node.target) if node.op == "call_module" else node.name
        module = self.model.get_submodule(path) if node.op == "call_module" else None
        if isinstance(module, QModule):
            srcs = list(node.args)
        else:
            srcs = [i for i in flat_nodes((node.args, node.kwargs)) if isinstance(self.tmap.get(i), str)][:1]
        ir_inputs = [self.tmap[s] for s in srcs if isinstance(self.tmap.get(s), str)]
        params = [self.load_attr(s) for s in srcs if isinstance(s, fx.Node) and s.op == "get_attr"]
        if isinstance(module, QModule):
            self.check_wiring(path, module, ir_inputs)
        tree = output_tree(module) if isinstance(module, QModule) else 0
        shapes = _shapes(node, self.dynamic_batch)
        ctx = ExportContext(self.b, module, node, path, ir_inputs, shapes[0] if isinstance(tree, int) else None,
                            self.dynamic_batch, params, shapes)
        out = writer(ctx)
        names = [out] if isinstance(out, str) else list(out) if isinstance(out, (list, tuple)) else None
        n_out = len(tree_leaves(tree)) if not isinstance(tree, int) else 1
        if names is None or len(names) != n_out or not all(isinstance(t, str) and t in self.g.tensors for t in names):
            raise ExportError(
                f"op {path!r} ({op_id}): its IR writer returned {out!r}, not {n_out} output tensor name(s) of the IR",
                {"rule": "an IR writer returns one tensor name per output (out_qs order), each made with ctx.tensor"},
                f"fix the IR writer of {op_id}: return ctx.tensor(...) names, a list for several outputs",
                node=path, dialect="ir")
        if isinstance(tree, int):
            self.tmap[node] = names[0]
            self.sources.setdefault(names[0], node.name)
        else:
            self.tmap[node] = _nest(tree, names)

    def check_wiring(self, path: str, module: QModule, ir_inputs: list[str]) -> None:
        """Every input exponent a module computes with is the exponent of the tensor it reads.

        Checked here once for every writer, the plugins' included: a module bound to a quantizer that
        no longer feeds it would compute on the wrong grid and export integers the chip does not compute.
        """
        for i, (q, name) in enumerate(zip(module.input_quantizers, ir_inputs)):
            n_ir = self.g.tensors[name].exponent
            if q is not None and n_ir is not None and q.current() != n_ir:
                raise ExportError(
                    f"op {path!r}: input {i} ({name!r}) has exponent {n_ir} but the module computes with "
                    f"{q.current()}", {"rule": "a module's input exponent is the exponent of the tensor it reads"},
                    "this is a bug in lnn's graph wiring; please report it with the model", node=path, dialect="ir")

    def load_attr(self, node: fx.Node) -> torch.Tensor:
        obj: Any = self.model
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj

    def quant_stub(self, node: fx.Node, mod: QuantStub) -> None:
        src = self.dequant(self.tmap[node.args[0]])
        n = mod.out_q.eval_exponent()
        out = self.b.fresh(str(node.target))
        self.g.add_tensor(out, "int8", self.g.tensors[src].shape, n)
        self.g.add_node(Node(self.b.fresh(str(node.target)), "Quant", [src], [out], {"data_bits": mod.act_bits},
                             IR_DOMAIN))
        self.tmap[node] = out
        self.sources[out] = node.name

    def float_op(self, node: fx.Node, tensor_ins: list[fx.Node], role: NodeRole) -> None:
        """Write a float op with torch's ONNX exporter and splice its nodes in."""
        island = role.quantized or any(i in self.island_nodes for i in tensor_ins)
        if island:  # every op of the island is listed
            self.islands.append((node.name, role.name))
            self.island_nodes.add(node)
        first_ir_node = len(self.g.nodes)
        args_in = [self.dequant(self.tmap[i]) for i in tensor_ins]
        sub = _single_node_module(self.model, node, tensor_ins)
        examples = tuple(
            self.examples[i] if isinstance(self.examples.get(i), torch.Tensor) and self.tmap[i] == a else
            torch.zeros(_concrete(self.g.tensors[a].shape, node.name), dtype=torch.float32)
            for i, a in zip(tensor_ins, args_in))
        tree = _float_tree(node.meta.get("tensor_meta"))  # a module may return a tuple (nn.GRU: (y, h_n))
        metas = [m for m in _leaves(tree) if m is not None] if isinstance(tree, _Outputs) else [tree]
        n_out = len(metas)
        out_names = [f"out{i}" for i in range(n_out)] if isinstance(tree, _Outputs) else ["out"]
        buf = io.BytesIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(sub, examples, buf, dynamo=False, opset_version=13,
                                  input_names=[f"in{i}" for i in range(len(examples))], output_names=out_names)
            except Exception as exc:
                raise ExportError(
                    f"float op {role.name} (node {node.name!r}) cannot be written to ONNX",
                    {"cause": f"{type(exc).__name__}: {exc}"},
                    "replace the op, or keep it out of the exported part of the model", node=node.name,
                    dialect="onnx") from exc
        import onnx
        from onnx import numpy_helper

        proto = onnx.load_from_string(buf.getvalue())
        rename = {f"in{i}": a for i, a in enumerate(args_in)}
        prefix = node.name
        for init in proto.graph.initializer:
            rename[init.name] = self.b.fresh(f"{prefix}.{init.name}")
            self.g.add_initializer(rename[init.name], numpy_helper.to_array(init))
        outs = [self.b.fresh(node.name if len(out_names) == 1 else f"{node.name}.{i}") for i in range(n_out)]
        rename.update(zip(out_names, outs))
        for n in proto.graph.node:
            for o in n.output:
                if o not in rename:
                    rename[o] = self.b.fresh(f"{prefix}.{o.strip('/').replace('/', '.')}")
                    self.g.add_tensor(rename[o], "float32", None, None)
            attrs_ = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            for k, v in list(attrs_.items()):
                if isinstance(v, onnx.TensorProto):
                    attrs_[k] = numpy_helper.to_array(v)
                elif isinstance(v, bytes):
                    attrs_[k] = v.decode()
            self.g.add_node(Node(self.b.fresh(f"{prefix}.{n.op_type}"), n.op_type,
                                 [rename.get(i, i) for i in n.input], [rename[o] for o in n.output], attrs_, n.domain))
        if island:
            self.island_meta.append({"node": node.name, "op": role.name, "module": _module_path(self.model, node)[0],
                                     "ir_nodes": [n.name for n in self.g.nodes[first_ir_node:]]})
        if not isinstance(tree, _Outputs):
            self.g.add_tensor(outs[0], _dtype(node), _shape(node, self.dynamic_batch), None)
            self.tmap[node] = outs[0]
            return
        for name, meta in zip(outs, metas):
            self.g.add_tensor(name, _TORCH_DTYPE.get(meta.dtype, "float32"), _shape_of(meta, self.dynamic_batch), None)
        it = iter(outs)
        self.tmap[node] = _map_outputs(tree, lambda _: next(it))


def _leaves(value: Any) -> list[Any]:
    """The IR tensors of a value: itself, or every output of an op with several, in order."""
    return [t for v in value for t in _leaves(v)] if isinstance(value, _Outputs) else [value]


def _float_tree(meta: Any) -> Any:
    """A float op's return value as recorded by the example run: its TensorMetadata (one tensor), or an
    :class:`_Outputs` shaped like a (nested) tuple, None where a value is not a tensor."""
    if isinstance(meta, (tuple, list)) and not hasattr(meta, "shape"):
        return _Outputs(_float_tree(m) for m in meta)
    return meta if hasattr(meta, "shape") else None


def _map_outputs(tree: Any, leaf: Any) -> Any:
    """``tree`` with every tensor's metadata replaced by ``leaf(meta)`` (None stays None)."""
    if isinstance(tree, _Outputs):
        return _Outputs(_map_outputs(t, leaf) for t in tree)
    return None if tree is None else leaf(tree)


def _nest(tree: Any, names: list[str]) -> Any:
    """``tree`` (nested output indices) with every index replaced by its IR tensor name."""
    return names[tree] if isinstance(tree, int) else _Outputs(_nest(t, names) for t in tree)


class _Call(nn.Module):
    def __init__(self, fn: Any, build: Any) -> None:
        super().__init__()
        self.fn, self.build = fn, build

    def forward(self, *xs: torch.Tensor) -> Any:
        args, kwargs = self.build(xs)
        return self.fn(*args, **kwargs)


def _single_node_module(model: fx.GraphModule, node: fx.Node, tensor_ins: list[fx.Node]) -> nn.Module:
    """A module computing just ``node`` from its tensor inputs (constants and parameters baked in)."""

    def build(xs: tuple[torch.Tensor, ...]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        env = dict(zip(tensor_ins, xs))

        def load(a: Any) -> Any:
            if a.op == "get_attr":
                obj: Any = model
                for part in str(a.target).split("."):
                    obj = getattr(obj, part)
                return obj
            if a in env:
                return env[a]
            meta = a.meta.get("tensor_meta")
            raise ExportError(f"node {node.name!r} depends on a value only known at run time ({a.name!r})",
                              {"meta": str(meta)}, "compute shapes from constants", node=node.name, dialect="onnx")

        return fx.node.map_arg(node.args, load), fx.node.map_arg(node.kwargs, load)

    if node.op == "call_module":
        fn: Any = model.get_submodule(str(node.target))
    elif node.op == "call_method":
        method = str(node.target)

        def fn(self_: Any, *a: Any, **k: Any) -> Any:
            return getattr(self_, method)(*a, **k)
    else:
        fn = node.target
    return _Call(fn, build)


def _concrete(shape: Sequence[Any] | None, node: str) -> tuple[int, ...]:
    if shape is None:
        raise ExportError(f"float op {node!r}: the shape of its input is unknown", {},
                          "export with example inputs of fixed shape", node=node, dialect="onnx")
    return tuple(1 if isinstance(d, str) else int(d) for d in shape)


def _module_path(model: fx.GraphModule, node: fx.Node) -> tuple[str, str]:
    """The module path a node belongs to and that module's class name (``""`` for the model's own forward)."""
    stack = node.meta.get("nn_module_stack") or {}
    if node.op == "call_module":
        entry = list(stack.values())[-1] if stack else None
        if entry is None:
            return str(node.target), type(model.get_submodule(str(node.target))).__name__
        return str(node.target), getattr(entry[1], "__name__", str(entry[1]))
    if stack:
        path, cls = list(stack.values())[-1]
        return str(path), getattr(cls, "__name__", str(cls))
    return "", type(model).__name__


def _describe(xs: Sequence[Any]) -> str:
    return ", ".join("x".join(map(str, x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__ for x in xs)


def check_example_inputs(model: fx.GraphModule, inputs: Sequence[Any]) -> None:
    """As many example inputs as ``forward()`` takes (arguments with a default may be left out), else a
    ConfigError."""
    places = [n for n in model.graph.nodes if n.op == "placeholder"]
    required = sum(1 for n in places if not n.args)  # a placeholder's args hold the argument's default
    if not required <= len(inputs) <= len(places):
        want = f"{required}..{len(places)}" if required != len(places) else str(len(places))
        raise ConfigError(
            f"model {type(model).__name__}: {len(inputs)} example input(s) for {want} forward() argument(s)",
            {"arguments": ", ".join(n.name for n in places), "given": _describe(inputs)},
            "pass one tensor per forward() argument (on the command line: one --input-shape each)",
            option="example_inputs", value=_describe(inputs), valid=f"{want} tensor(s)", module="")


class ExampleRunner(fx.Interpreter):
    """Runs a prepared model node by node on example inputs; an error of a node (a wrong input shape, most
    often) becomes a :class:`~lnn_core.errors.ConfigError` naming the module path it happened in (``.module``,
    ``.node``, ``.cause``), never a bare RuntimeError from deep inside torch.

    :param shapes: also record each node's output shape and dtype as ``node.meta["tensor_meta"]`` (what torch's
        ShapeProp does).
    """

    def __init__(self, gm: fx.GraphModule, *, shapes: bool = False) -> None:
        super().__init__(gm)
        self.shapes = shapes
        self.inputs: Sequence[Any] = ()
        self.extra_traceback = False  # fx would append its graph dump to our error's text

    def run(self, *args: Any, **kwargs: Any) -> Any:
        check_example_inputs(self.module, args)
        self.inputs = args
        return super().run(*args, **kwargs)

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except LnnError:
            raise
        except Exception as exc:
            path, cls = _module_path(self.module, n)
            where = f"module {path!r} ({cls})" if path else f"the forward() of {cls}"
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConfigError(
                f"{where} cannot run on the example inputs",
                {"inputs": _describe(self.inputs),
                 "node": f"{n.name} ({n.op} {getattr(n.target, '__name__', n.target)})",
                 "cause": f"{type(exc).__name__}: {cause}"},
                "give example inputs of the shapes the model's forward() expects (lnn commands: --input-shape)",
                option="example_inputs", value=_describe(self.inputs), valid="the shapes forward() accepts",
                module=path, node=n.name, cause=exc) from exc
        if self.shapes:
            from torch.fx.node import map_aggregate
            from torch.fx.passes.shape_prop import _extract_tensor_metadata

            found = False

            def meta(obj: Any) -> Any:
                nonlocal found
                if isinstance(obj, torch.Tensor):
                    found = True
                    return _extract_tensor_metadata(obj)
                return obj

            m = map_aggregate(result, meta)
            if found:
                n.meta["tensor_meta"] = m
            n.meta["type"] = type(result)
        return result


def to_ir(model: nn.Module, example_inputs: Any, *, input_names: Sequence[str] | None = None,
          output_names: Sequence[str] | None = None, dynamic_batch: bool = False, strict: bool = False,
          host: PluginHost | None = None, allow_uncalibrated: bool = False) -> Graph:
    """The IR of a model prepared by ``lnn.init``, with the exponents its eval forward uses.

    :param allow_uncalibrated: warn (:class:`~lnn_core.calibration.UncalibratedWarning`) instead of raising
        :class:`~lnn_core.calibration.UncalibratedError` when activation quantizers never saw data.
    """
    info = getattr(model, "lnn", None)
    if not isinstance(info, LnnInfo) or not isinstance(model, fx.GraphModule):
        raise ExportError(
            f"export needs a model prepared by lnn.init, got {type(model).__name__}", {},
            "call model = lnn.init(model) first (and train it)", node=None, dialect="ir")
    if info.stage != "quant":
        raise ExportError("export needs the stage-2 (lnn.init) model, got a stage-1 (lnn.constrain) model",
                          {"stage": info.stage}, "build the stage-2 model with lnn.init and load this checkpoint",
                          node=None, dialect="ir")
    host = host or PluginHost()
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if any(t.device.type != "cpu" for t in itertools.chain(model.parameters(), model.buffers())):
        # a model trained on a GPU: its eval integers are the same on the host (exact arithmetic), and the
        # writers read them into numpy there; the user's model stays where it is
        model = copy.deepcopy(model).cpu()
        inputs = tuple(x.cpu() if isinstance(x, torch.Tensor) else x for x in inputs)
    was_training = model.training
    saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    try:
        model.eval()
        with torch.no_grad():
            ExampleRunner(model, shapes=True).run(*inputs)
            exporter = _Exporter(model, info, host, dynamic_batch=dynamic_batch, strict=strict, inputs=inputs)
            graph = exporter.run(input_names, output_names)
            graph.prune_dead()
    finally:
        model.train(was_training)
        with torch.no_grad():
            for k, v in model.state_dict(keep_vars=True).items():
                v.copy_(saved[k])
    # after the graph is built: a wrong input or an op without an int8 form is the first thing to fix
    require_calibrated(model, "export", allow=allow_uncalibrated)
    _share_constants(graph, getattr(info, "shared", {}))
    graph.meta["producer"] = "lnn"
    graph.meta["target"] = info.target
    return graph


def _share_constants(graph: Graph, shared: dict[str, str]) -> None:
    """A module called more than once runs as one op per call on the same constants: each later call's
    initializer that equals (dtype, shape, bytes, exponent) the module's own is replaced by it, so the packed
    model stores the weights once."""
    for call, module in shared.items():
        prefix = f"{call}."
        for name in [n for n in graph.initializers if n.startswith(prefix)]:
            own = f"{module}.{name[len(prefix):]}"
            a, b = graph.initializers.get(own), graph.initializers[name]
            if (a is None or a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes()
                    or graph.tensors[own].exponent != graph.tensors[name].exponent):
                continue
            for node in graph.nodes:
                node.inputs = [own if t == name else t for t in node.inputs]
            del graph.initializers[name]
            del graph.tensors[name]


def export(model: nn.Module, example_inputs: Any, path: str | None = None, *, dialect: str = "csk60xx",
           input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
           dynamic_batch: bool = False, strict: bool = False, host: PluginHost | None = None,
           allow_uncalibrated: bool = False) -> Any:
    """Export a quantized model to ONNX in ``dialect`` (``csk60xx`` or ``qdq``); returns the ModelProto.

    :param path: where to save the file (None: only return the ModelProto).
    :param dynamic_batch: make the first axis of inputs and outputs symbolic (``N``).
    :param strict: refuse float islands instead of writing Dequant -> float op -> Quant.
    :param allow_uncalibrated: export a model whose activation quantizers never saw data with a warning
        instead of an :class:`~lnn_core.calibration.UncalibratedError` (see :func:`lnn_core.calibration`).
    """
    host = host or PluginHost()
    writer = host.exporters[dialect]
    if path is not None:
        _writable(str(path))  # before the export's work
    graph = to_ir(model, example_inputs, input_names=input_names, output_names=output_names,
                  dynamic_batch=dynamic_batch, strict=strict, host=host, allow_uncalibrated=allow_uncalibrated)
    proto = writer(graph, host=host)
    if path is not None:
        import onnx

        try:
            onnx.save(proto, str(path))
        except OSError as exc:
            raise _unwritable(str(path), exc.strerror or type(exc).__name__) from exc
    return proto


def _unwritable(path: str, why: str) -> ConfigError:
    return ConfigError(f"export: cannot write '{path}': {why}", {},
                       "choose a path in an existing folder you can write to (lnn export: -o)", option="path",
                       value=path, valid="a writable file path")


def _writable(path: str) -> None:
    """Refuse an output path that cannot be a file: a folder, or in a folder that does not exist."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise _unwritable(path, "it is a folder")
    if not os.path.exists(parent):
        raise _unwritable(path, f"the folder '{os.path.dirname(path) or parent}' does not exist")
    if not os.path.isdir(parent):
        raise _unwritable(path, f"'{os.path.dirname(path) or parent}' is a file, not a folder")
