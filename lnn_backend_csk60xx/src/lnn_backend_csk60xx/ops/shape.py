"""Data movement: ``iqCat``, ``Reshape``, ``Flatten``, ``Squeeze``, ``Unsqueeze``, ``Transpose``, ``Slice``.

Integer semantics (spec/int8-ops.md): ``iqCat`` rescales int8 inputs to the output exponent
(``RQ_8(SHR(x_i, n_i - n_o))``) and copies int16/int32 inputs that already share the output's exponent;
the reshape-like ops alias their input's buffer (no data moves); ``Transpose`` permutes axes and
``Slice`` copies a box with positive steps, both keeping the exponent. C kernels: ``csrc/ops/shape.c``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, rule

from ..thinker.lowering import DecodedOp, Problem, ThinkerLowering
from ._rules import INT, at, seq
from .base import INT_DTYPES, PLATFORM, AttrSpec, InferContext, Lowering, OpDef, ReadContext, engine_operands
from .eltwise import ELTWISE_BITS

__all__ = ["OPS", "slice_params"]


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


def _cat_workspace(graph: Graph, node: Node) -> list[tuple[Any, str, bool]]:
    """Only the rescaled inputs pass through the engine; copied ones and the output do not."""
    y_exp = graph.tensors[node.outputs[0]].exponent
    return [(i, t, False) for i, t in enumerate(node.inputs) if t and graph.tensors[t].exponent != y_exp]


def _lower_cat(node: Node, graph: Graph) -> list[int]:
    rank = len(graph.tensors[node.outputs[0]].shape)
    return [node.attrs["dim"] % rank]


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


def _lower_transpose(node: Node, graph: Graph) -> list[int]:
    rank = len(graph.tensors[node.inputs[0]].shape)
    return list(node.attrs.get("perm") or range(rank)[::-1])


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


def _axes_input(ctx: ReadContext) -> None:
    """Opset >= 13 passes Squeeze/Unsqueeze axes as a second input: it becomes the ``axes`` attribute."""
    if len(ctx.inputs) == 2:
        if "axes" in ctx.attrs or ctx.inputs[1] not in ctx.consts:
            raise ctx.fail("axes must be given once, as a constant")
        ctx.attrs["axes"] = [int(v) for v in np.asarray(ctx.consts[ctx.inputs[1]]).reshape(-1)]
        del ctx.inputs[1:]
    elif len(ctx.inputs) != 1:
        raise ctx.fail("too many inputs", {"inputs": list(ctx.inputs)})


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


def _lower_slice(node: Node, graph: Graph) -> list[int]:
    starts, steps, _ = slice_params(InferContext(graph, node, graph.meta.get("source")))
    return [v for pair in zip(starts, steps) for v in pair]


def _slice_view(graph: Graph, node: Node, attrs: dict[str, Any]) -> None:
    if len(node.inputs) > 4 and node.inputs[4] in graph.initializers:
        attrs["slice_steps"] = tuple(int(v) for v in np.asarray(graph.initializers[node.inputs[4]]).reshape(-1))


@rule("csk60xx.cat.inputs", ops=())
def check_cat_inputs(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqCat needs at least 2 inputs."""
    n = len(seq(op, "input_shapes"))
    if n < 2:
        return Finding(actual=f"{n} input", limit=">= 2 inputs", hint="remove the single-input concatenation")
    return None


@rule("csk60xx.cat.dtype", ops=())
def check_cat_dtype(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqCat inputs and output share one dtype: int8 (rescaled to the output scale), or int16/int32 at one scale."""
    dtypes, out = seq(op, "input_dtypes"), at(seq(op, "output_dtypes"), 0)
    if out is None or not dtypes:
        return None
    if out not in INT or any(d != out for d in dtypes):
        return Finding(actual=f"inputs {list(dtypes)} -> {out}", limit="one integer dtype",
                       hint="requantize the inputs to one dtype before the concatenation")
    return None


@rule("csk60xx.slice.single_axis", ops=())
def check_slice_single_axis(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Slice must cut one axis with step 1 (the chip reads the first start, end and axis and ignores steps)."""
    ins, outs = seq(op, "input_shapes"), seq(op, "output_shapes")
    steps = op.attrs.get("slice_steps") or ()
    if not ins or not outs or ins[0] is None or outs[0] is None:
        return None
    cut = [d for d, (a, b) in enumerate(zip(ins[0], outs[0])) if a != b]
    if len(cut) > 1 or any(s != 1 for s in steps):
        return Finding(actual=f"axes {cut}, steps {list(steps)}", limit="one axis, step 1",
                       hint="slice one axis at a time; flip or subsample with a conv instead of a step")
    return None


@rule("csk60xx.slice.index", ops=())
def check_slice_index(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Indexing x[...] (judged at lnn.init) runs as Slice ops cutting one axis each with step 1: integers,
    constant slices a:b and ... only (no step, None, bool, tensor index or computed bound)."""
    kinds = op.attrs.get("slice_kinds")
    if kinds is None:  # an IR Slice: csk60xx.slice.single_axis judges it
        return None
    bad = [k for k in kinds if k not in ("int", "slice", "...")]
    if not bad:
        return None
    return Finding(actual=f"index {op.attrs.get('slice_index', '?')} ({', '.join(bad)})",
                   limit="integers, constant a:b with step 1, ...",
                   hint="index with constants, one item per axis; subsample with a strided conv or pooling instead "
                        "of a step, and add axes with unsqueeze instead of None")


@rule("csk60xx.transpose.rank", ops=(), rmax="transpose.max_rank")
def check_transpose_rank(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Transpose supports at most {rmax} axes; a 4-D transpose must keep axis 0 in place (perm[0] = 0)."""
    shapes = seq(op, "input_shapes")
    if not shapes or shapes[0] is None:
        return None
    rank = len(shapes[0])
    perm = list(op.attrs.get("perm") or range(rank)[::-1])
    if rank > limits["transpose.max_rank"]:
        return Finding(actual=f"rank {rank}", limit=f"<= {limits['transpose.max_rank']} axes",
                       hint="merge axes with a Reshape before transposing")
    if rank == 4 and perm[0] != 0:
        return Finding(actual=f"perm {perm}", limit="4-D: perm[0] = 0", hint="keep the batch axis first")
    return None


def _alias(op_type: str, inputs: tuple[int, int | None], infer: Any, code: int, **kw: Any) -> OpDef:
    """A reshape-like op: its output is the input buffer seen with another shape."""
    return OpDef(op_type, "", inputs, infer, alias=True, lowerings={"lnn": Lowering(code, 1, None, "shape.c"),
                                                               "thinker": _THINKER_SHAPE[op_type]}, **kw)



# -- thinker package (spec/thinker-package.md 3.3) ----------------------------------------------------------------


def _thinker_axis(node: Node, graph: Graph) -> bytes:
    if node.op_type == "iqCat":
        return struct.pack("<b", node.attrs["dim"] % len(graph.tensors[node.outputs[0]].shape))
    return struct.pack("<b", node.attrs.get("axis", 1))


def _thinker_transpose_attrs(node: Node, graph: Graph) -> bytes:
    perm = _lower_transpose(node, graph)
    return struct.pack("<B8b", len(perm), *perm, *[0] * (8 - len(perm)))


def _thinker_transpose_check(node: Node, graph: Graph) -> list[Problem]:
    rank = len(graph.tensors[node.inputs[0]].shape)
    if rank > 5:
        return [Problem("csk60xx.thinker.transpose_rank", "the runtime transposes at most 5 axes", 5, rank,
                        "merge axes with a Reshape first")]
    return []


def _squeezed_axes(node: Node, graph: Graph) -> list[int]:
    x, y = graph.tensors[node.inputs[0]].shape, graph.tensors[node.outputs[0]].shape
    if node.op_type == "Squeeze":
        axes = node.attrs.get("axes")
        return sorted(a % len(x) for a in axes) if axes is not None else [i for i, d in enumerate(x) if d == 1]
    return sorted(a % len(y) for a in node.attrs["axes"])


def _thinker_squeeze_attrs(node: Node, graph: Graph) -> bytes:
    axes = _squeezed_axes(node, graph)
    return struct.pack("<B7b", len(axes), *axes, *[0] * (7 - len(axes)))


def _thinker_squeeze_check(node: Node, graph: Graph) -> list[Problem]:
    n = len(_squeezed_axes(node, graph))
    if n > 7:
        return [Problem("csk60xx.thinker.squeeze_axes", "the runtime's SqueezeAttrs hold 7 axes", 7, n,
                        "use a Reshape")]
    return []


def _thinker_read_axes(d: DecodedOp) -> tuple[dict[str, Any], dict[int, Any]]:
    return {"axes": list(d.attrs[1:1 + d.attrs[0]])}, {}


def _thinker_slice(node: Node, graph: Graph) -> tuple[list[int], list[int], list[int], list[int]]:
    """The axes the slice cuts (starts, steps, dims of every axis too)."""
    x = graph.tensors[node.inputs[0]].shape
    starts, steps, dims = slice_params(InferContext(graph, node, graph.meta.get("source")))
    cut = [a for a in range(len(x)) if starts[a] != 0 or dims[a] != x[a] or steps[a] != 1]
    return cut, starts, steps, dims


def _thinker_slice_inputs(node: Node, graph: Graph) -> list[Any]:
    cut, starts, _, dims = _thinker_slice(node, graph)
    axis = cut[0] if cut else len(dims) - 1
    return [node.inputs[0], *(np.array([v], dtype=np.int64) for v in (starts[axis], starts[axis] + dims[axis], axis,
                                                                       1))]


def _thinker_slice_check(node: Node, graph: Graph) -> list[Problem]:
    """The runtime slices one axis with step 1, reads element 0 of each parameter, and copies nothing on axis 0."""
    cut, _, steps, _ = _thinker_slice(node, graph)
    out = []
    if len(cut) > 1:
        out.append(Problem("csk60xx.thinker.slice_axes", "the runtime's Slice cuts one axis", 1, len(cut),
                           "slice one axis per Slice op"))
    if any(steps[a] != 1 for a in cut):
        out.append(Problem("csk60xx.thinker.slice_step", "the runtime's Slice takes step 1", 1,
                           [steps[a] for a in cut], "slice with step 1"))
    if 0 in cut:
        out.append(Problem("csk60xx.thinker.slice_axis0", "the runtime's Slice copies nothing along axis 0",
                           "axis >= 1", 0, "keep the batch axis whole; reshape to put the sliced axis later"))
    return out


def _thinker_read_flatten(d: DecodedOp) -> tuple[dict[str, Any], dict[int, Any]]:
    """The axis, or (the vendor packer writes no attributes) the one that gives the output's first dimension."""
    x, lead = d.inputs[0].shape, d.outputs[0].shape[0]
    if d.attrs:
        axis = struct.unpack_from("<b", d.attrs)[0]
        if math.prod(x[:axis % (len(x) + 1)]) == lead:
            return {"axis": axis}, {}
    return {"axis": next((a for a in range(len(x) + 1) if math.prod(x[:a]) == lead), 1)}, {}


_THINKER_SHAPE = {
    "iqCat": ThinkerLowering("iqCat", attrs=_thinker_axis, workspace=lambda n, g: 0,
                             read=lambda d: ({"dim": struct.unpack_from("<b", d.attrs)[0]}, {})),
    "Reshape": ThinkerLowering("Reshape", workspace=None),
    "Flatten": ThinkerLowering("Flatten", attrs=_thinker_axis, workspace=None, read=_thinker_read_flatten),
    "Transpose": ThinkerLowering("Transpose", attrs=_thinker_transpose_attrs, check=_thinker_transpose_check,
                                 read=lambda d: ({"perm": list(struct.unpack_from(f"<{d.attrs[0]}b", d.attrs, 1))},
                                                 {})),
    "Squeeze": ThinkerLowering("Squeeze", attrs=_thinker_squeeze_attrs, inputs=lambda n, g: n.inputs[:1],
                               workspace=None, check=_thinker_squeeze_check, read=_thinker_read_axes),
    "Unsqueeze": ThinkerLowering("Unsqueeze", attrs=_thinker_squeeze_attrs, inputs=lambda n, g: n.inputs[:1],
                                 workspace=None, check=_thinker_squeeze_check, read=_thinker_read_axes),
    "Slice": ThinkerLowering("Slice", inputs=_thinker_slice_inputs, workspace=None, check=_thinker_slice_check),
}

OPS = (
    OpDef("iqCat", "thinker", (1, None), _cat, attrs={"dim": AttrSpec("int", required=True), **PLATFORM},
          scales={"scale_o": ("out", 0)}, variadic_scale="scale_x_{i}", rules=(ELTWISE_BITS,),
          pack_rules=(check_cat_inputs, check_cat_dtype), torch_ops=("builtin.Cat",), join=True,
          workspace=_cat_workspace, lowerings={"lnn": Lowering(16, None, _lower_cat, "shape.c"),
                                                         "thinker": _THINKER_SHAPE["iqCat"]}),
    _alias("Reshape", (2, 2), _reshape, 17, attrs={"allowzero": AttrSpec("int", choices=(0,))}),
    _alias("Flatten", (1, 1), _flatten, 18, attrs={"axis": AttrSpec("int", default=1)}),
    OpDef("Transpose", "", (1, 1), _transpose, attrs={"perm": AttrSpec("ints")}, pack_rules=(check_transpose_rank,),
          workspace=engine_operands, lowerings={"lnn": Lowering(19, 1, _lower_transpose, "shape.c"),
                                    "thinker": _THINKER_SHAPE["Transpose"]}),
    _alias("Squeeze", (1, 2), _squeeze, 20, attrs={"axes": AttrSpec("ints")}, read=_axes_input),
    _alias("Unsqueeze", (1, 2), _unsqueeze, 21, attrs={"axes": AttrSpec("ints", required=True)}, read=_axes_input),
    OpDef("Slice", "", (3, 5), _slice, rules=(check_slice_index,), pack_rules=(check_slice_single_axis,),
          view=_slice_view, torch_ops=("builtin.Slice",),
          lowerings={"lnn": Lowering(22, 1, _lower_slice, "shape.c"), "thinker": _THINKER_SHAPE["Slice"]}),
)
