"""What the backend knows about one IR op type: :class:`OpDef`, and the context its shape rule sees.

Every op the CSK60xx backend reads, checks, plans, packs or simulates is one :class:`OpDef`, built
in the module of its op family (``ops/conv.py``, ``ops/pool.py``, ...) or in a third-party plugin,
and registered through the ``lnn_register_target_ops`` hook. The phase modules (dialect reader and
writer, shape inference, checker, graph rewrites, planner, packer, simulator front) ask the
:class:`~.registry.OpSet` built from those registrations; none of them holds a table of op types.

This module imports neither torch nor onnx.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lnn_core.errors import ModelFileError
from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Rule

if TYPE_CHECKING:
    from ..sizes import FitPlan

__all__ = ["AttrSpec", "InferContext", "ReadContext", "Lowering", "OpDef", "Params", "PLATFORM", "OBITS_DTYPE",
           "INT_DTYPES", "obits_dtype", "engine_operands", "known_shapes"]

#: ``o_bits`` / ``data_bits`` attribute value -> integer dtype name
OBITS_DTYPE = {8: "int8", 16: "int16", 32: "int32"}

INT_DTYPES = frozenset({"int8", "int16", "int32"})


@dataclass(frozen=True)
class AttrSpec:
    """One attribute of an op in the dialect: its kind, whether it is required, its default and allowed values.

    :param kind: ``"int"``, ``"float"``, ``"ints"`` or ``"str"``.
    :param length: for ``ints``: the required number of elements (None: any).
    :param choices: allowed values (None: any).
    :param minimum: lower bound of an ``int`` or of every element of ``ints``.
    :param dialect_only: the attribute belongs to the file format, not to the op's meaning (the vendor
        toolchain's ``platform_quant``): the reader checks it and leaves it out of the IR when it has its
        default, and the writer always writes it.
    """

    kind: str
    required: bool = False
    default: Any = None
    length: int | None = None
    choices: tuple[Any, ...] | None = None
    minimum: int | None = None
    dialect_only: bool = False


#: the vendor toolchain's quantization platform attribute, carried by most ``thinker``-domain ops
PLATFORM = {"platform_quant": AttrSpec("str", default="luna_quant", choices=("luna_quant",), dialect_only=True)}


@dataclass(frozen=True)
class Params:
    """One weight/bias pair of an op: input indices of the weight and of its optional int32 bias.

    The bias is quantized at exponent ``n(x) + n(weight)``, where ``x`` is the tensor the weight multiplies:
    input 0 by default, or another input or an output of the op (``("out", 0)``: a second stage that reads
    the first stage's output). Weight and bias are constant initializers, DMA'd from flash into the op's
    weight-prefetch buffer.
    """

    weight: int
    bias: int | None = None
    x: tuple[str, int] = ("in", 0)


@dataclass(frozen=True)
class Lowering:
    """How an op is written into lnn's model.bin and which C kernel runs it.

    :param code: the simulator op code (``LNN_SIM_OP_*`` in ``csrc/include/lnn_sim.h``).
    :param inputs: how many leading inputs the simulator receives (None: all).
    :param attrs: ``attrs(node, graph) -> list[int]``: the op record's int32 attribute vector.
    :param c_file: the ``csrc/ops/`` family file that holds the op's prepare and run functions.
    """

    code: int
    inputs: int | None = 1
    attrs: Callable[[Node, Graph], list[int]] | None = None
    c_file: str = ""


@dataclass(frozen=True)
class OpDef:
    """Everything the CSK60xx backend knows about one IR op type.

    Dialect (reader and writer):

    :param op_type: the IR op type, which is also its name in the dialect file.
    :param domain: the ONNX domain the dialect writes it in (``"thinker"``, ``""`` for standard ONNX, or
        a plugin's own domain).
    :param inputs: (minimum, maximum) number of inputs; maximum None = variadic.
    :param outputs: number of outputs.
    :param attrs: attribute name -> :class:`AttrSpec` (scale attributes excluded).
    :param scales: scale attribute -> ``("in" | "out", index)``: the tensor that carries its exponent.
    :param variadic_scale: format of per-input scale names of variadic ops (``"scale_x_{i}"``).
    :param params: the op's weight/bias pairs (:class:`Params`).
    :param same_scale_inputs: constant inputs quantized at input 0's exponent (a clip's bounds).
    :param index_inputs: inputs that hold integer indices, not quantized values (an embedding's token ids): they
        carry no scale, and the packer narrows int64 ones to the kernel's int32.
    :param input_exponents: optional inputs whose exponent the op fixes although no scale attribute names them:
        input index -> the scale attribute whose exponent they carry, or a fixed exponent (a recurrent op's initial
        state: h0 at ``scale_o``, an LSTM's c0 at 7). The reader gives them to an integer graph input (the raw
        state a host copies in) and checks them against a producer's.
    :param file_op_types: other op types the dialect reader reads as this op (the names another exporter gives its
        variants: linger's ``*_Is8_Is64`` recurrent ops); the writer writes ``op_type``.
    :param read: ``read(ctx)`` normalises a node as the reader builds it (before its inputs are counted):
        e.g. axes given as an input become the attribute. ``ctx`` is a :class:`ReadContext`.
    :param write: ``write(inputs) -> inputs``: the node's inputs in the file's order, when it differs from the
        IR's (the recurrent ops: the file puts the optional inputs before the weights); the inverse of ``read``.

    Shape inference and checks:

    :param infer: the shape rule ``infer(ctx: InferContext) -> list[TensorInfo]`` (one per output); an
        output whose exponent is not derived from the inputs gets ``exponent=None`` (the file's scale).
    :param rules: hardware rules judging this op, both as an IR node at pack time and, through
        ``torch_ops``, as a PyTorch module at ``lnn.init``.
    :param pack_rules: hardware rules judging the IR node only (they read shapes, dtypes, exponents).
    :param torch_ops: torch-side op ids (``builtin.Conv2d``) that export to this op: ``rules`` judge them too.
    :param view: ``view(graph, node, attrs)`` adds op-specific keys to what rules see (:func:`~..check.op_view`).

    Graph rewrites, memory and packing:

    :param fit: ``fit(op_type, attrs, input_shapes, output_shapes, limits) -> FitPlan | None``: how the op
        fits the engine buffers, and how the split pass cuts it when it does not.
    :param fuses_relu: a following ReLU op can be folded into this op (``act_type=1``).
    :param alias: the output is the input buffer seen with another shape (no data movement).
    :param join: the op concatenates its inputs along attribute ``dim`` (the planner may place no-rescale
        inputs inside the output buffer).
    :param prefetch_bytes: ``prefetch_bytes(graph, node) -> int``: packed weight bytes the engine reads
        (the weight-prefetch buffer), for ops with ``params``.
    :param workspace: which operands need a share-memory workspace when they live in PSRAM: None = none
        (CPU ops, DMA-only ops); otherwise ``workspace(graph, node) -> [(where, tensor, whole)]`` with
        ``where`` an input index or ``"out"`` and ``whole`` True when the engine reads the whole tensor
        from share-memory. :func:`engine_operands` is the default for NPU ops.
    :param kernel_workspace: ``kernel_workspace(graph, node) -> bytes``: scratch the op's kernel itself needs in
        share-memory while it runs (the sequence kernels' real needs, spec/int8-seq-ops.md 1.5 and 6.9; tpacker's
        declarations are smaller); None = none.
    :param lowerings: package format name -> that format's lowering (:class:`Lowering` for ``"lnn"``).
    :param kernel: a Python simulator kernel ``kernel(call: KernelCall) -> array | tuple of arrays``; an
        op with one runs as an external op (plugin ops), its C kernel otherwise.
    :param bit_verified: False when the op's integers are not verified against the vendor's kernels.
    """

    op_type: str
    domain: str
    inputs: tuple[int, int | None]
    infer: Callable[[InferContext], list[TensorInfo]]
    outputs: int = 1
    attrs: Mapping[str, AttrSpec] = field(default_factory=dict)
    scales: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    variadic_scale: str | None = None
    params: tuple[Params, ...] = ()
    same_scale_inputs: tuple[int, ...] = ()
    index_inputs: tuple[int, ...] = ()
    input_exponents: Mapping[int, str | int] = field(default_factory=dict)
    file_op_types: tuple[str, ...] = ()
    read: Callable[[ReadContext], None] | None = None
    write: Callable[[list[str]], list[str]] | None = None
    rules: tuple[Rule, ...] = ()
    pack_rules: tuple[Rule, ...] = ()
    torch_ops: tuple[str, ...] = ()
    view: Callable[[Graph, Node, dict[str, Any]], None] | None = None
    fit: Callable[..., FitPlan | None] | None = None
    fuses_relu: bool = False
    alias: bool = False
    join: bool = False
    prefetch_bytes: Callable[[Graph, Node], int] | None = None
    workspace: Callable[[Graph, Node], list[tuple[Any, str, bool]]] | None = None
    kernel_workspace: Callable[[Graph, Node], int] | None = None
    lowerings: Mapping[str, Any] = field(default_factory=dict)
    kernel: Callable[..., Any] | None = None
    bit_verified: bool = True

    def scale_targets(self, node: Node) -> dict[str, tuple[str, int]]:
        """Scale attribute -> (``"in"``/``"out"``, index) for ``node`` (variadic scales expanded)."""
        targets = dict(self.scales)
        if self.variadic_scale:
            for i in range(len(node.inputs)):
                targets[self.variadic_scale.format(i=i)] = ("in", i)
        return targets

    def bias_inputs(self) -> dict[int, Params]:
        """Bias input index -> its weight/bias pair."""
        return {p.bias: p for p in self.params if p.bias is not None}


def known_shapes(graph: Graph, *names: str) -> list[tuple[int, ...]] | None:
    """The shapes of tensors ``names`` when every one is fully known (integer dimensions), else None."""
    out = []
    for name in names:
        info = graph.tensors.get(name) if name else None
        if info is None or info.shape is None or not all(isinstance(d, int) for d in info.shape):
            return None
        out.append(tuple(info.shape))
    return out


def engine_operands(graph: Graph, node: Node, whole: Sequence[Any] = ()) -> list[tuple[Any, str, bool]]:
    """Every activation operand of an NPU op (inputs that are not constants, then outputs).

    :param whole: operand positions (input indices or ``"out"``) the engine reads whole from share-memory.
    """
    ops = [(i, t) for i, t in enumerate(node.inputs) if t and t not in graph.initializers]
    ops += [("out", t) for t in node.outputs]
    return [(where, t, where in whole) for where, t in ops]


class ReadContext:
    """What an op's ``read`` hook sees while the dialect reader builds its node: ``inputs`` and ``attrs``
    (both may be changed in place), the file's constants, and ``fail`` (a :class:`ModelFileError` naming
    the node and the file)."""

    def __init__(self, node_name: str, op_type: str, inputs: list[str], attrs: dict[str, Any],
                 consts: Mapping[str, np.ndarray], fail: Callable[..., ModelFileError]) -> None:
        self.node_name = node_name
        self.op_type = op_type
        self.inputs = inputs
        self.attrs = attrs
        self.consts = consts
        self.fail = fail


class InferContext:
    """What a shape rule sees: the graph, one node, and helpers that raise :class:`ModelFileError`
    naming the node and the file (``info``, ``dtype``, ``rank``, ``const``, ``attr``, ``out``, ``fail``)."""

    def __init__(self, graph: Graph, node: Node, path: str | None) -> None:
        self.graph = graph
        self.node = node
        self.path = path

    def fail(self, what: str, details: dict[str, Any] | None = None, hint: str | None = None) -> ModelFileError:
        where = f" in '{self.path}'" if self.path else ""
        return ModelFileError(
            f"node {self.node.name!r} ({self.node.op_type}){where}: {what}",
            details, hint or "re-export the model; the file does not describe a valid CSK60xx graph",
            path=self.path, node=self.node.name)

    def info(self, index: int, *, optional: bool = False) -> TensorInfo | None:
        if index >= len(self.node.inputs) or not self.node.inputs[index]:
            if optional:
                return None
            raise self.fail(f"input {index} is missing", {"inputs": self.node.inputs})
        name = self.node.inputs[index]
        info = self.graph.tensors.get(name)
        if info is None or info.shape is None or not all(isinstance(d, int) for d in info.shape):
            raise self.fail(f"the shape of input {index} ({name!r}) cannot be inferred",
                            {"tensor": name, "known shape": None if info is None else info.shape},
                            "give the graph inputs fixed shapes (no symbolic dimensions)")
        return info

    def dtype(self, info: TensorInfo, allowed: Sequence[str], role: str) -> None:
        if info.dtype not in allowed:
            raise self.fail(f"{role} {info.name!r} has dtype {info.dtype}",
                            {"rule": f"{self.node.op_type} {role} must be {' or '.join(allowed)}",
                             "actual": info.dtype})

    def rank(self, info: TensorInfo, ranks: Sequence[int], role: str) -> None:
        if len(info.shape) not in ranks:
            raise self.fail(f"{role} {info.name!r} has rank {len(info.shape)}",
                            {"rule": f"{self.node.op_type} {role} rank must be {' or '.join(map(str, ranks))}",
                             "shape": info.shape})

    def const(self, index: int) -> np.ndarray:
        name = self.node.inputs[index] if index < len(self.node.inputs) else ""
        if name not in self.graph.initializers:
            raise self.fail(f"input {index} ({name!r}) must be a constant initializer",
                            {"rule": f"{self.node.op_type} input {index} is read at pack time"})
        return self.graph.initializers[name]

    def attr(self, key: str, default: Any = None) -> Any:
        return self.node.attrs.get(key, default)

    def out(self, dtype: str, shape: Sequence[int], exponent: int | None, index: int = 0) -> TensorInfo:
        if index >= len(self.node.outputs):
            raise self.fail(f"output {index} is missing", {"outputs": self.node.outputs})
        if any(int(d) < 1 for d in shape):
            raise self.fail(f"output {self.node.outputs[index]!r} would have shape {tuple(shape)}",
                            {"rule": "every output dimension must be at least 1", "inputs": self.node.inputs},
                            "check kernel, stride and padding against the input size")
        return TensorInfo(self.node.outputs[index], dtype, tuple(int(d) for d in shape), exponent)


def obits_dtype(c: InferContext, key: str = "o_bits") -> str:
    """The integer dtype named by the node's ``o_bits`` (or ``key``) attribute; default int8."""
    bits = c.attr(key, 8)
    if bits not in OBITS_DTYPE:
        raise c.fail(f"{key}={bits} is not supported", {"rule": f"{key} must be 8, 16 or 32", "actual": bits})
    return OBITS_DTYPE[bits]
