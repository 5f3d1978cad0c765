"""Shape, dtype and exponent inference, shared by the dialect reader and the packer (the first graph pass).

The other graph passes, and the order in which the packer runs them, are in :mod:`.graph_passes`.

Every supported op has one rule ``(ctx) -> list[TensorInfo]`` in :data:`SHAPE_RULES` (``ctx`` is an
:class:`InferContext` bound to the node) that checks its inputs (rank, dtype, matching dimensions) and
returns the output tensors. Ops contributed by plugins bring their rule with their dialect schema
(:class:`~.dialect.OpSchema` ``infer``) and reach :func:`infer_node` through ``rules``. A rule
returns ``exponent=None`` for an output whose exponent is not derived from the inputs (a conv's
output exponent comes from its ``scale_o``); :func:`infer_shapes` then keeps the exponent already
stored on the tensor. Pass-through ops (Relu, MaxPool, Clip and the shape ops) copy the input's
exponent.

Output size of a convolution or pooling window along one axis (ONNX/PyTorch convention)::

    out = floor((in + pad_begin + pad_end - dilation * (kernel - 1) - 1) / stride) + 1

(``ceil`` instead of ``floor`` for pooling with ``ceil_mode=1``), and of a transposed convolution::

    out = (in - 1) * stride - pad_begin - pad_end + dilation * (kernel - 1) + 1 + output_padding

This module imports neither torch nor onnx.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lnn_core.errors import ModelFileError
from lnn_core.graph import Graph, Node, TensorInfo

__all__ = ["SHAPE_RULES", "InferContext", "infer_node", "infer_shapes", "ALIAS_OPS", "OBITS_DTYPE", "slice_params"]

log = logging.getLogger("lnn.backend.passes")

#: ops whose output is the input buffer seen with another shape (no data movement)
ALIAS_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})

#: ``o_bits`` / ``data_bits`` attribute value -> integer dtype name
OBITS_DTYPE = {8: "int8", 16: "int16", 32: "int32"}

INT_DTYPES = frozenset({"int8", "int16", "int32"})


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
        if any(int(d) < 1 for d in shape):
            raise self.fail(f"output {self.node.outputs[index]!r} would have shape {tuple(shape)}",
                            {"rule": "every output dimension must be at least 1", "inputs": self.node.inputs},
                            "check kernel, stride and padding against the input size")
        return TensorInfo(self.node.outputs[index], dtype, tuple(int(d) for d in shape), exponent)


def _obits(c: InferContext, key: str = "o_bits") -> str:
    bits = c.attr(key, 8)
    if bits not in OBITS_DTYPE:
        raise c.fail(f"{key}={bits} is not supported", {"rule": f"{key} must be 8, 16 or 32", "actual": bits})
    return OBITS_DTYPE[bits]


def _window(c: InferContext, size: int, k: int, s: int, p0: int, p1: int, d: int, ceil: bool, axis: str) -> int:
    if k < 1 or s < 1 or d < 1 or p0 < 0 or p1 < 0:
        raise c.fail(f"invalid window along {axis}", {"kernel": k, "stride": s, "pads": (p0, p1), "dilation": d})
    span = size + p0 + p1 - d * (k - 1) - 1
    if span < 0:
        raise c.fail(f"the kernel does not fit the input along {axis}",
                     {"input": size, "kernel": k, "dilation": d, "pads": (p0, p1)})
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p0:  # ONNX: the last window must start inside the (left-padded) input
        out -= 1
    return out


def _conv_geometry(c: InferContext, spatial: int) -> tuple[list[int], list[int], list[int], list[int]]:
    k = list(c.attr("kernel_shape"))
    s = list(c.attr("strides", [1] * spatial))
    d = list(c.attr("dilations", [1] * spatial))
    p = list(c.attr("pads", [0] * (2 * spatial)))
    if len(k) != spatial or len(s) != spatial or len(d) != spatial or len(p) != 2 * spatial:
        raise c.fail("kernel_shape/strides/dilations/pads have the wrong length",
                     {"kernel_shape": k, "strides": s, "dilations": d, "pads": p, "spatial dims": spatial})
    return k, s, d, p


def _conv(c: InferContext, spatial: int) -> list[TensorInfo]:
    x = c.info(0)
    w = c.info(1)
    c.rank(x, [2 + spatial], "input")
    c.dtype(x, ["int8"], "input")
    c.rank(w, [2 + spatial], "weight")
    c.dtype(w, ["int8"], "weight")
    k, s, d, p = _conv_geometry(c, spatial)
    g = c.attr("group", 1)
    n, cin = x.shape[0], x.shape[1]
    m = w.shape[0]
    if g < 1 or cin % g or m % g or w.shape[1] * g != cin:
        raise c.fail("group does not divide the channels",
                     {"group": g, "input channels": cin, "weight shape": w.shape,
                      "rule": "in_channels = group * weight.shape[1] and group divides out_channels"})
    if list(w.shape[2:]) != k:
        raise c.fail("kernel_shape does not match the weight", {"kernel_shape": k, "weight shape": w.shape})
    b = c.info(2, optional=True)
    if b is not None:
        c.dtype(b, ["int32", "int16"], "bias")
        if b.shape != (m,):
            raise c.fail("bias shape does not match the output channels", {"bias": b.shape, "out channels": m})
    out = [_window(c, x.shape[2 + i], k[i], s[i], p[i], p[i + spatial], d[i], False, f"axis {2 + i}")
           for i in range(spatial)]
    return [c.out(_obits(c), [n, m, *out], None)]


def _conv2d(c: InferContext) -> list[TensorInfo]:
    return _conv(c, 2)


def _conv1d(c: InferContext) -> list[TensorInfo]:
    return _conv(c, 1)


def _deconv2d(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    w = c.info(1)
    c.rank(x, [4], "input")
    c.dtype(x, ["int8"], "input")
    c.rank(w, [4], "weight")
    c.dtype(w, ["int8"], "weight")
    k, s, d, p = _conv_geometry(c, 2)
    op = list(c.attr("output_padding", [0, 0]))
    g = c.attr("group", 1)
    n, cin = x.shape[0], x.shape[1]
    if g < 1 or w.shape[0] != cin or cin % g:
        raise c.fail("weight does not match the input channels",
                     {"rule": "ConvTranspose weight is [in_channels, out_channels/group, kh, kw]",
                      "weight shape": w.shape, "input channels": cin, "group": g})
    if list(w.shape[2:]) != k:
        raise c.fail("kernel_shape does not match the weight", {"kernel_shape": k, "weight shape": w.shape})
    m = w.shape[1] * g
    b = c.info(2, optional=True)
    if b is not None:
        c.dtype(b, ["int32"], "bias")
        if b.shape != (m,):
            raise c.fail("bias shape does not match the output channels", {"bias": b.shape, "out channels": m})
    if len(op) != 2 or any(o < 0 or (o >= s[i] and o >= d[i]) for i, o in enumerate(op)):
        raise c.fail("invalid output_padding", {"output_padding": op, "strides": s})
    out = []
    for i in range(2):
        if k[i] < 1 or s[i] < 1 or d[i] < 1 or p[i] < 0 or p[i + 2] < 0:
            raise c.fail("invalid window", {"kernel": k, "strides": s, "dilations": d, "pads": p})
        out.append((x.shape[2 + i] - 1) * s[i] - p[i] - p[i + 2] + d[i] * (k[i] - 1) + 1 + op[i])
    return [c.out(_obits(c), [n, m, *out], None)]


def _linear(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    w = c.info(1)
    c.dtype(x, ["int8"], "input")
    c.rank(x, [1, 2, 3, 4], "input")
    c.dtype(w, ["int8"], "weight")
    c.rank(w, [2], "weight")
    if w.shape[1] != x.shape[-1]:
        raise c.fail("weight does not match the input features",
                     {"rule": "LinearInt weight is [out_features, in_features]", "input": x.shape,
                      "weight": w.shape})
    b = c.info(2, optional=True)
    if b is not None:
        c.dtype(b, ["int32"], "bias")
        if b.shape != (w.shape[0],):
            raise c.fail("bias shape does not match out_features", {"bias": b.shape, "weight": w.shape})
    return [c.out(_obits(c), [*x.shape[:-1], w.shape[0]], None)]


def _batchnorm(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    w = c.info(1)
    b = c.info(2)
    c.rank(x, [4], "input")
    c.dtype(x, ["int8"], "input")
    c.dtype(w, ["int8"], "weight")
    c.dtype(b, ["int32"], "bias")
    if w.shape != (x.shape[1],) or b.shape != (x.shape[1],):
        raise c.fail("weight/bias do not match the channels", {"input": x.shape, "weight": w.shape, "bias": b.shape})
    return [c.out(_obits(c), x.shape, None)]


def _pool(c: InferContext, *, avg: bool) -> list[TensorInfo]:
    x = c.info(0)
    c.rank(x, [4], "input")
    c.dtype(x, ["int8"] if avg else ["int8", "int16", "int32"], "input")
    k, s, d, p = _conv_geometry(c, 2)
    ceil = bool(c.attr("ceil_mode", 0))
    out = [_window(c, x.shape[2 + i], k[i], s[i], p[i], p[i + 2], d[i], ceil, f"axis {2 + i}") for i in range(2)]
    if avg:
        return [c.out(_obits(c), [*x.shape[:2], *out], None)]
    return [c.out(x.dtype, [*x.shape[:2], *out], x.exponent)]


def _avgpool(c: InferContext) -> list[TensorInfo]:
    return _pool(c, avg=True)


def _maxpool(c: InferContext) -> list[TensorInfo]:
    return _pool(c, avg=False)


def _passthrough(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    c.dtype(x, sorted(INT_DTYPES), "input")
    return [c.out(x.dtype, x.shape, x.exponent)]


def _clip(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    c.dtype(x, sorted(INT_DTYPES), "input")
    for i in (1, 2):
        if i < len(c.node.inputs) and c.node.inputs[i]:
            v = c.const(i)
            if v.size != 1 or v.dtype != np.dtype(x.dtype):
                raise c.fail(f"input {i} must be a {x.dtype} scalar",
                             {"rule": "Clip min/max are pre-quantized integers of the input's dtype",
                              "actual": f"{v.dtype} shape {v.shape}"})
    return [c.out(x.dtype, x.shape, x.exponent)]


def _quant(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    c.dtype(x, ["float32"], "input")
    if c.attr("data_bits", 8) != 8:
        raise c.fail("Quant writes int8 only", {"data_bits": c.attr("data_bits")})
    return [c.out("int8", x.shape, None)]


def _dequant(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    c.dtype(x, ["int8", "uint8", "int16", "int32"], "input")
    return [c.out("float32", x.shape, None)]


def _requant(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    c.dtype(x, ["int8"], "input")
    if c.attr("data_bits", 8) != 8:
        raise c.fail("Requant reads int8 only", {"data_bits": c.attr("data_bits")})
    return [c.out(_obits(c), x.shape, None)]


def _eltwise(c: InferContext) -> list[TensorInfo]:
    """iqAdd / iqSub / iqMul: the output has the broadcast shape of the operands.

    Which broadcast forms the chip runs (iqAdd/iqSub: none; iqMul: ``[N, C, 1, 1]`` or a scalar second
    operand) is a hardware rule (``csk60xx.add.equal_shapes``, ``csk60xx.mul.broadcast``), checked with all
    other rules; the simulator's loader refuses the other forms.
    """
    x = c.info(0)
    y = c.info(1)
    c.dtype(x, ["int8"], "input x")
    c.dtype(y, ["int8"], "input y")
    try:
        shape = np.broadcast_shapes(x.shape, y.shape)
    except ValueError:
        raise c.fail("operand shapes cannot be broadcast", {"x": x.shape, "y": y.shape}) from None
    return [c.out("int8", shape, None)]


def slice_params(c: InferContext) -> tuple[list[int], list[int], list[int]]:
    """Normalised Slice parameters of ``c.node``: per-axis ``(starts, steps, output dims)`` of its input.

    ONNX clamping: negative starts/ends count from the end, ends beyond the axis are clamped; only
    positive steps are accepted.
    """
    x = c.info(0)
    rank = len(x.shape)
    consts = [c.const(i) if i < len(c.node.inputs) and c.node.inputs[i] else None for i in range(1, 5)]
    starts_in, ends_in, axes_in, steps_in = consts
    if starts_in is None or ends_in is None:
        raise c.fail("starts and ends must be constant inputs")
    arrays = [np.asarray(a).reshape(-1) for a in (starts_in, ends_in)]
    n = arrays[0].size
    axes = [int(a) for a in np.asarray(axes_in).reshape(-1)] if axes_in is not None else list(range(n))
    steps = [int(a) for a in np.asarray(steps_in).reshape(-1)] if steps_in is not None else [1] * n
    if arrays[1].size != n or len(axes) != n or len(steps) != n:
        raise c.fail("starts, ends, axes and steps have different lengths",
                     {"starts": arrays[0].tolist(), "ends": arrays[1].tolist(), "axes": axes, "steps": steps})
    if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        raise c.fail("axes are out of range or repeat", {"axes": axes, "rank": rank})
    if any(s < 1 for s in steps):
        raise c.fail("only positive steps are supported", {"steps": steps})
    out_starts, out_steps, dims = [0] * rank, [1] * rank, list(x.shape)
    for a, b, e, s in zip(axes, arrays[0].tolist(), arrays[1].tolist(), steps):
        a %= rank
        size = x.shape[a]
        b = max(0, min(size, b + size if b < 0 else b))
        e = max(0, min(size, e + size if e < 0 else e))
        out_starts[a], out_steps[a], dims[a] = b, s, max(0, -(-(e - b) // s))
    return out_starts, out_steps, dims


def _slice(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    _, _, dims = slice_params(c)
    return [c.out(x.dtype, dims, x.exponent)]


def _cat(c: InferContext) -> list[TensorInfo]:
    infos = [c.info(i) for i in range(len(c.node.inputs))]
    first = infos[0]
    for info in infos:
        c.dtype(info, [first.dtype] if first.dtype in INT_DTYPES else ["int8"], "input")
        if len(info.shape) != len(first.shape):
            raise c.fail("inputs have different ranks", {"shapes": [i.shape for i in infos]})
    rank = len(first.shape)
    axis = c.attr("dim")
    if not -rank <= axis < rank:
        raise c.fail(f"dim={axis} is out of range", {"rank": rank})
    axis %= rank
    for info in infos:
        if any(info.shape[i] != first.shape[i] for i in range(rank) if i != axis):
            raise c.fail("inputs differ outside the concatenation axis",
                         {"dim": axis, "shapes": [i.shape for i in infos]})
    shape = list(first.shape)
    shape[axis] = sum(i.shape[axis] for i in infos)
    # int8 inputs are rescaled to the output's exponent; wider ones are copied and keep a common one
    if first.dtype != "int8" and any(i.exponent != first.exponent for i in infos):
        raise c.fail("int16/int32 inputs must share one exponent", {"exponents": [i.exponent for i in infos]})
    return [c.out(first.dtype, shape, None if first.dtype == "int8" else first.exponent)]


def _reshape(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    target = c.const(1)
    if target.dtype != np.int64 or target.ndim != 1:
        raise c.fail("the shape input must be a 1-D int64 constant", {"actual": f"{target.dtype} {target.shape}"})
    allowzero = c.attr("allowzero", 0)
    shape = [int(v) for v in target]
    for i, v in enumerate(shape):
        if v == 0 and not allowzero:
            if i >= len(x.shape):
                raise c.fail("shape entry 0 copies a dimension the input does not have", {"shape": shape})
            shape[i] = x.shape[i]
    numel = math.prod(x.shape)
    if shape.count(-1) > 1 or any(v < -1 for v in shape):
        raise c.fail("the target shape is invalid", {"rule": "at most one -1, no other negative value",
                                                     "shape": shape})
    if -1 in shape:
        rest = math.prod(v for v in shape if v != -1)
        if rest == 0 or numel % rest:
            raise c.fail("the target shape does not divide the input", {"input": x.shape, "shape": shape})
        shape[shape.index(-1)] = numel // rest
    if math.prod(shape) != numel:
        raise c.fail("the target shape has a different number of elements", {"input": x.shape, "shape": shape})
    return [c.out(x.dtype, shape, x.exponent)]


def _flatten(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    rank = len(x.shape)
    axis = c.attr("axis", 1)
    if not -rank <= axis <= rank:
        raise c.fail(f"axis={axis} is out of range", {"rank": rank})
    axis = axis + rank if axis < 0 else axis
    return [c.out(x.dtype, [math.prod(x.shape[:axis]), math.prod(x.shape[axis:])], x.exponent)]


def _transpose(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    rank = len(x.shape)
    perm = list(c.attr("perm", list(range(rank))[::-1]))
    if sorted(perm) != list(range(rank)):
        raise c.fail("perm is not a permutation of the axes", {"perm": perm, "rank": rank})
    return [c.out(x.dtype, [x.shape[i] for i in perm], x.exponent)]


def _squeeze(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    rank = len(x.shape)
    axes = c.attr("axes")
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    if any(not -rank <= a < rank for a in axes):
        raise c.fail("axes out of range", {"axes": list(axes), "rank": rank})
    norm = sorted({a % rank for a in axes})
    if len(norm) != len(axes) or any(x.shape[a] != 1 for a in norm):
        raise c.fail("only distinct dimensions of size 1 can be squeezed", {"axes": list(axes), "shape": x.shape})
    return [c.out(x.dtype, [d for i, d in enumerate(x.shape) if i not in norm], x.exponent)]


def _unsqueeze(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    axes = c.attr("axes")
    rank = len(x.shape) + len(axes)
    if any(not -rank <= a < rank for a in axes):
        raise c.fail("axes out of range", {"axes": list(axes), "output rank": rank})
    norm = sorted({a % rank for a in axes})
    if len(norm) != len(axes):
        raise c.fail("axes repeat", {"axes": list(axes)})
    dims = iter(x.shape)
    return [c.out(x.dtype, [1 if i in norm else next(dims) for i in range(rank)], x.exponent)]


#: op type -> inference rule
SHAPE_RULES: dict[str, Callable[[InferContext], list[TensorInfo]]] = {
    "Quant": _quant,
    "Dequant": _dequant,
    "Requant": _requant,
    "Conv2dInt": _conv2d,
    "Conv1dInt": _conv1d,
    "ConvTranspose2dInt": _deconv2d,
    "LinearInt": _linear,
    "BatchNorm2dInt": _batchnorm,
    "AvgPool2dInt": _avgpool,
    "MaxPool": _maxpool,
    "Relu": _passthrough,
    "Clip": _clip,
    "iqAdd": _eltwise,
    "iqSub": _eltwise,
    "iqMul": _eltwise,
    "iqCat": _cat,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
}


def infer_node(graph: Graph, node: Node, *, path: str | None = None,
               rules: Mapping[str, Callable[[InferContext], list[TensorInfo]]] | None = None) -> list[TensorInfo]:
    """Check ``node``'s inputs and return its output tensors (shape, dtype, exponent or None).

    :param rules: shape rules of plugin ops (``op type -> rule``), consulted after :data:`SHAPE_RULES`.
    :raises ModelFileError: (attributes ``node`` and ``path``) when the op is unknown, an input is
        missing or ill-shaped, or an output dimension would be smaller than 1.
    """
    c = InferContext(graph, node, path)
    rule = SHAPE_RULES.get(node.op_type) or (rules or {}).get(node.op_type)
    if rule is None:
        known = sorted(set(SHAPE_RULES) | set(rules or {}))
        raise c.fail(f"op type {node.op_type!r} has no shape rule", {"supported": ", ".join(known)},
                     "if a plugin provides this op, install it and pack through `lnn pack` (or pass "
                     "ops=PluginOps.from_host(host))")
    if len(node.outputs) != 1 or not node.outputs[0]:
        raise c.fail("the op must have exactly one output", {"outputs": node.outputs})
    try:
        return rule(c)
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        # an attribute of the wrong structure (the reader checks types; hand-built graphs may not)
        raise c.fail(f"attributes cannot be interpreted: {exc}", {"attributes": node.attrs}) from exc


def infer_shapes(graph: Graph, *, path: str | None = None,
                 rules: Mapping[str, Callable[[InferContext], list[TensorInfo]]] | None = None) -> Graph:
    """Fill shape, dtype and (for pass-through ops) exponent of every node output, in place.

    ``graph`` is first sorted topologically (:meth:`Graph.toposort`). An output exponent already
    stored on the tensor is kept when the rule does not derive one; an integer output without any
    exponent is an error. ``rules`` adds the shape rules of plugin ops. Returns ``graph``.
    """
    graph.toposort(path=path)
    for node in graph.nodes:
        for info in infer_node(graph, node, path=path, rules=rules):
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
