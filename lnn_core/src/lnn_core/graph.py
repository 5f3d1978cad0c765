"""The small graph IR that exporters write, readers produce, and the packer consumes.

It is deliberately plain: a list of nodes in topological order, a table of tensors with dtype,
shape and power-of-two exponent, and initializers as numpy arrays.

The vocabulary is lnn's own and names no chip. Standard ONNX ops (``Relu``, ``Clip``, ``Reshape``,
``MaxPool`` ...) keep their ONNX names, attributes and the default domain ``""``. lnn's integer ops are
in the domain :data:`IR_DOMAIN`; their op types (``Quant``, ``Dequant``, ``Conv2dInt``, ``LinearInt``,
``iqAdd``, ``iqCat`` ...) are lnn's IR names, spelled as the linger/thinker toolchain spells the ops they
became, and their attributes say only what the op computes (``kernel_shape``, ``o_bits``, ``dim`` ...).
Scales are not attributes: every quantized tensor carries its exponent in :class:`TensorInfo`. An op may
have several outputs (each with its own tensor and exponent) and several weight/bias pairs; a bias is
quantized at ``n(activation it adds to) + n(its weight)``.

A target's dialect writer maps the IR onto its file format (domain, file-only attributes, scale
attributes from the exponents); its reader maps a file back onto the IR. Other dialects are written
from the IR too (standard QDQ ONNX).

This module imports neither torch nor onnx.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import numpy as np

from .errors import ModelFileError

__all__ = ["TensorInfo", "Node", "Graph", "DTYPES", "IR_DOMAIN", "exponent_from_scale"]

#: the domain of lnn's own integer ops in the IR (standard ONNX ops use ``""``). It names no chip: a
#: dialect writer puts each op in its target's domain.
IR_DOMAIN = "lnn"

#: dtype name -> numpy dtype. The IR names dtypes by string so that it stays serialisable.
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "bool": np.dtype(np.bool_),
}


def exponent_from_scale(scale: float, *, what: str = "scale", tol: float = 1e-6) -> int:
    """Return ``n`` with ``scale == 2**n``; raise ``ValueError`` when ``scale`` is not a power of two.

    The tolerance on ``log2`` is the one the chip packer applies (1e-6).
    """
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{what}={scale!r} is not a positive finite number")
    n = math.log2(scale)
    if abs(n - round(n)) > tol:
        raise ValueError(f"{what}={scale!r} is not a power of two (log2 = {n:.6f})")
    return int(round(n))


@attrs.define(eq=True)
class TensorInfo:
    """What the IR knows about one tensor.

    :param name: unique name in the graph.
    :param dtype: a key of :data:`DTYPES`.
    :param shape: tuple of ints (a str or None marks a symbolic/unknown dimension); None if unknown.
    :param exponent: power-of-two scale exponent ``n`` (``real = q / 2**n``), None for float tensors.
    """

    name: str
    dtype: str = "float32"
    shape: tuple[Any, ...] | None = None
    exponent: int | None = None

    @property
    def nbytes(self) -> int | None:
        if self.shape is None or not all(isinstance(d, int) for d in self.shape):
            return None
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype].itemsize


@attrs.define(eq=True)
class Node:
    """One operator. ``inputs`` may contain ``""`` for an omitted optional input; ``outputs`` lists every
    output in order (an op may have several). ``domain`` is :data:`IR_DOMAIN` for lnn's integer ops and
    ``""`` for standard ONNX ops."""

    name: str
    op_type: str
    inputs: list[str] = attrs.field(factory=list)
    outputs: list[str] = attrs.field(factory=list)
    attrs: dict[str, Any] = attrs.field(factory=dict)
    domain: str = ""


def _array_eq(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a)


@attrs.define(eq=False)
class Graph:
    """A directed acyclic graph of :class:`Node` over named tensors."""

    name: str = "graph"
    nodes: list[Node] = attrs.field(factory=list)
    tensors: dict[str, TensorInfo] = attrs.field(factory=dict)
    initializers: dict[str, np.ndarray] = attrs.field(factory=dict)
    inputs: list[str] = attrs.field(factory=list)
    outputs: list[str] = attrs.field(factory=list)
    meta: dict[str, Any] = attrs.field(factory=dict)

    # -- equality: ops, attributes, tensors and initializer bytes ---------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return (
            self.nodes == other.nodes
            and self.tensors == other.tensors
            and self.inputs == other.inputs
            and self.outputs == other.outputs
            and _array_eq(self.initializers, other.initializers)
        )

    def diff(self, other: Graph) -> list[str]:
        """Human-readable differences to ``other`` (empty when equal); used by round-trip tests."""
        out: list[str] = []
        if self.inputs != other.inputs:
            out.append(f"inputs {self.inputs} != {other.inputs}")
        if self.outputs != other.outputs:
            out.append(f"outputs {self.outputs} != {other.outputs}")
        if len(self.nodes) != len(other.nodes):
            out.append(f"{len(self.nodes)} nodes != {len(other.nodes)} nodes")
        for a, b in zip(self.nodes, other.nodes):
            if a != b:
                out.append(f"node {a.name!r}: {a} != {b}")
        for k in sorted(set(self.tensors) | set(other.tensors)):
            if self.tensors.get(k) != other.tensors.get(k):
                out.append(f"tensor {k!r}: {self.tensors.get(k)} != {other.tensors.get(k)}")
        for k in sorted(set(self.initializers) | set(other.initializers)):
            a, b = self.initializers.get(k), other.initializers.get(k)
            if a is None or b is None or not _array_eq({k: a}, {k: b}):
                out.append(f"initializer {k!r} differs")
        return out

    def copy(self) -> Graph:
        return copy.deepcopy(self)

    # -- construction helpers ---------------------------------------------------------------
    def add_tensor(self, name: str, dtype: str = "float32", shape: Iterable[Any] | None = None,
                   exponent: int | None = None) -> TensorInfo:
        info = TensorInfo(name, dtype, tuple(shape) if shape is not None else None, exponent)
        self.tensors[name] = info
        return info

    def add_initializer(self, name: str, array: np.ndarray, exponent: int | None = None) -> str:
        array = np.require(array, requirements="C")  # keeps 0-d arrays 0-d (ascontiguousarray does not)
        dtype = next((k for k, v in DTYPES.items() if v == array.dtype), None)
        if dtype is None:
            raise ValueError(f"initializer {name!r} has unsupported dtype {array.dtype}")
        self.initializers[name] = array
        self.tensors[name] = TensorInfo(name, dtype, tuple(int(d) for d in array.shape), exponent)
        return name

    def add_node(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    # -- queries ------------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def producers(self) -> dict[str, Node]:
        return {t: n for n in self.nodes for t in n.outputs if t}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for t in n.inputs:
                if t:
                    out.setdefault(t, []).append(n)
        return out

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def prune_dead(self) -> list[str]:
        """Remove the nodes none of whose outputs is read (by another node or as a graph output), until none is
        left, with the tensors and initializers only they used; return the removed nodes' names in order.

        A writer emits every output its op has (a stacked RNN's joined ``h_n``/``c_n``, say) without knowing
        whether the model reads it; such a node computes nothing observable, and on a chip it would cost time and
        memory (and may need an op form the target lacks)."""
        removed: list[str] = []
        while True:
            read = set(self.outputs) | {t for n in self.nodes for t in n.inputs if t}
            dead = [n for n in self.nodes if not any(t in read for t in n.outputs if t)]
            if not dead:
                break
            gone = {id(n) for n in dead}
            self.nodes = [n for n in self.nodes if id(n) not in gone]
            removed += [n.name for n in dead]
            read = set(self.outputs) | set(self.inputs) | {t for n in self.nodes for t in (*n.inputs, *n.outputs) if t}
            for name in [t for n in dead for t in (*n.inputs, *n.outputs) if t and t not in read]:
                self.tensors.pop(name, None)
                self.initializers.pop(name, None)
        return removed

    # -- validation -----------------------------------------------------------------------------
    def toposort(self, *, path: str | None = None) -> None:
        """Order ``nodes`` topologically (stable); raise ModelFileError on cycles or dangling inputs."""
        available = set(self.inputs) | set(self.initializers)
        producer: dict[str, Node] = {}
        for n in self.nodes:
            if not n.name:
                raise ModelFileError("a node without a name cannot be referenced", {"op": n.op_type},
                                     "give every node a unique name", path=path, node=None)
            for t in n.outputs:
                if t in producer:
                    raise ModelFileError(
                        f"node {n.name!r} ({n.op_type}) writes tensor {t!r}, which node "
                        f"{producer[t].name!r} also writes",
                        {"rule": "every tensor has exactly one producer"},
                        "rename one of the two outputs", path=path, node=n.name)
                if t in available:
                    raise ModelFileError(
                        f"node {n.name!r} ({n.op_type}) writes tensor {t!r}, which is a graph input "
                        "or initializer", {"rule": "every tensor has exactly one producer"},
                        "rename the output", path=path, node=n.name)
                if t:
                    producer[t] = n
        for n in self.nodes:
            for t in n.inputs:
                if t and t not in available and t not in producer:
                    raise ModelFileError(
                        f"node {n.name!r} ({n.op_type}) reads tensor {t!r}, which nothing produces",
                        {"rule": "every input is a graph input, an initializer or a node output"},
                        "the file is incomplete; re-export the model", path=path, node=n.name)
        for t in self.outputs:
            if t not in available and t not in producer:
                raise ModelFileError(f"graph output {t!r} is never produced", {},
                                     "re-export the model", path=path, node=None)
        order: list[Node] = []
        done = set(available)
        pending = list(self.nodes)
        while pending:
            rest = []
            for n in pending:
                if all(not t or t in done for t in n.inputs):
                    order.append(n)
                    done.update(t for t in n.outputs if t)
                else:
                    rest.append(n)
            if len(rest) == len(pending):
                cycle = _cycle(rest, producer, done)
                raise ModelFileError(
                    f"node {cycle[0].name!r} ({cycle[0].op_type}) is part of a cycle",
                    {"rule": "the graph must be acyclic",
                     "cycle": " -> ".join(repr(n.name) for n in [*cycle, cycle[0]])},
                    "the file is damaged or was not written by an ONNX exporter", path=path,
                    node=cycle[0].name, cycle=[n.name for n in cycle])
            pending = rest
        self.nodes = order


def _cycle(stuck: list[Node], producer: dict[str, Node], done: set[str]) -> list[Node]:
    """One cycle among ``stuck`` (nodes that wait on each other), in data-flow order: only its own nodes, not
    the nodes after it that wait on it too."""
    seen: dict[str, int] = {}
    path: list[Node] = []
    node = stuck[0]
    while node.name not in seen:  # step to a producer of a missing input: every stuck node has one that is stuck
        seen[node.name] = len(path)
        path.append(node)
        node = next(producer[t] for t in node.inputs if t and t not in done)
    return list(reversed(path[seen[node.name]:]))
