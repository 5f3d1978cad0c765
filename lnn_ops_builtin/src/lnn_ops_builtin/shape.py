"""Shape and data-movement ops, and dropout: exact on the integer grid, so they are passthroughs
whose output keeps the input's exponent (spec 3.29). Dropout is the identity in eval.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lnn_core.ops import OpFamily

__all__ = ["FAMILIES"]

def _describe_pad_lazy(ctx: Any) -> dict[str, Any]:
    return _describe_pad(ctx)


def _index_kind(item: Any) -> str:
    """How one item of ``x[...]`` runs on the chip: ``int``, ``slice`` (constant bounds), ``...``, or what it is
    (``None``, ``bool``, a step, a tensor or computed bound: none of these has an int8 Slice form)."""
    if item is Ellipsis:
        return "..."
    if isinstance(item, bool) or item is None:
        return repr(item)
    if isinstance(item, int):
        return "int"
    if isinstance(item, slice):
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in
                   (item.start, item.stop, item.step)):
            return "slice with computed bounds"
        return "slice" if item.step in (None, 1) else f"slice with step {item.step}"
    return "tensor index" if hasattr(item, "op") else type(item).__name__


def _index_text(idx: Any) -> str:
    items = idx if isinstance(idx, tuple) else (idx,)

    def one(it: Any) -> str:
        if it is Ellipsis:
            return "..."
        if isinstance(it, slice):
            parts = ["" if v is None else (str(v) if not hasattr(v, "op") else f"<{v}>")
                     for v in (it.start, it.stop)]
            return ":".join(parts) + ("" if it.step in (None, 1) else f":{it.step}")
        return f"<{it}>" if hasattr(it, "op") else repr(it)

    return "[" + ", ".join(one(it) for it in items) + "]"


def _describe_slice(ctx: Any) -> dict[str, Any]:
    """What the rules judge at lnn.init: the kind of every index item (``slice_kinds``) and its spelling."""
    idx = ctx.node.args[1]
    items = idx if isinstance(idx, tuple) else (idx,)
    return {"slice_kinds": [_index_kind(it) for it in items], "slice_index": _index_text(idx)}


FAMILIES = [
    OpFamily(id="builtin.Flatten", kind="passthrough", modules=(nn.Flatten,), functions=(torch.flatten,),
             methods=("flatten",), description="flatten (Flatten/Reshape)"),
    OpFamily(id="builtin.Reshape", kind="passthrough", functions=(torch.reshape,),
             methods=("view", "reshape", "view_as", "reshape_as"), description="view/reshape (Reshape)"),
    OpFamily(id="builtin.Squeeze", kind="passthrough", functions=(torch.squeeze,), methods=("squeeze",),
             description="squeeze"),
    OpFamily(id="builtin.Unsqueeze", kind="passthrough", functions=(torch.unsqueeze,), methods=("unsqueeze",),
             description="unsqueeze"),
    OpFamily(id="builtin.Transpose", kind="passthrough", functions=(torch.transpose, torch.permute, torch.t),
             methods=("transpose", "permute", "t"), description="transpose/permute (Transpose)"),
    OpFamily(id="builtin.Contiguous", kind="passthrough", methods=("contiguous",), description="no-op"),
    OpFamily(id="builtin.Slice", kind="passthrough", functions=(operator.getitem,), describe=_describe_slice,
             description="indexing with integers, constant slices a:b (step 1) and ...: x[:, -1], x[..., a:b], "
                         "x[:, :, 1:5]; one Slice per cut axis (+ Squeeze for an integer)"),
    OpFamily(id="builtin.Pad", kind="passthrough", modules=(nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d,
                                                            nn.ConstantPad2d), functions=(F.pad,),
             describe=_describe_pad_lazy,
             description="constant zero padding of the last two axes (F.pad, ZeroPad1d/2d, ConstantPad1d/2d with 0): "
                         "iqPad, exact at any scale"),
    OpFamily(id="builtin.Dropout", kind="passthrough",
             modules=(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity),
             functions=(F.dropout, F.dropout1d, F.dropout2d), description="dropout; identity in eval"),
]


# -- IR ----------------------------------------------------------------------------------------------


def _rank(ctx: Any) -> int:
    shape = ctx.shape(0)
    if shape is None:
        from lnn_core.errors import ExportError

        raise ExportError(f"op {ctx.path!r}: the input shape is unknown", {}, "export with example inputs",
                          node=ctx.path, dialect="ir")
    return len(shape)


def _same(ctx: Any) -> str:
    info = ctx.info(0)
    return ctx.tensor(info.exponent, info.dtype)


def _args(ctx: Any) -> tuple[Any, ...]:
    """The node's arguments after the input tensor, with keyword arguments appended in order."""
    return tuple(ctx.node.args[1:]) + tuple(ctx.node.kwargs.values())


def write_alias(ctx: Any) -> str:
    """Dropout (eval), contiguous, identity: no op, the output is the input tensor."""
    return ctx.inputs[0]


def write_reshape(ctx: Any) -> str:
    """Reshape to the traced output shape (first axis -1 when the batch is dynamic)."""
    import numpy as np

    shape = [(-1 if isinstance(d, str) else int(d)) for d in ctx.out_shape]
    y = _same(ctx)
    ctx.add("Reshape", [ctx.inputs[0], ctx.initializer("shape", np.array(shape, dtype=np.int64))], [y], domain="")
    return y


def write_flatten(ctx: Any) -> str:
    """Flatten(axis=1) for the usual flatten(1); any other range becomes a Reshape."""
    node = ctx.node
    if node.op == "call_module":
        start, end = ctx.module.start_dim, ctx.module.end_dim
    else:
        a = _args(ctx)
        start = a[0] if len(a) > 0 else node.kwargs.get("start_dim", 0)
        end = a[1] if len(a) > 1 else node.kwargs.get("end_dim", -1)
    rank = _rank(ctx)
    start, end = start % rank, end % rank
    if start == 1 and end == rank - 1:
        y = _same(ctx)
        ctx.add("Flatten", ctx.inputs[:1], [y], {"axis": 1}, domain="")
        return y
    return write_reshape(ctx)


def write_transpose(ctx: Any) -> str:
    rank = _rank(ctx)
    a = _args(ctx)
    if ctx.node.target in ("t", torch.t):
        perm = [1, 0]
    elif ctx.node.target in ("permute", torch.permute):
        dims = a[0] if len(a) == 1 and isinstance(a[0], (list, tuple)) else a
        perm = [int(d) % rank for d in dims]
    else:
        d0, d1 = int(a[0]) % rank, int(a[1]) % rank
        perm = list(range(rank))
        perm[d0], perm[d1] = perm[d1], perm[d0]
    y = _same(ctx)
    ctx.add("Transpose", ctx.inputs[:1], [y], {"perm": perm}, domain="")
    return y


def write_squeeze(ctx: Any) -> str:
    shape = ctx.shape(0)
    rank = _rank(ctx)
    a = _args(ctx)
    if a:
        dims = a[0] if isinstance(a[0], (list, tuple)) else [a[0]]
        axes = sorted(int(d) % rank for d in dims if shape[int(d) % rank] == 1)
    else:
        axes = [i for i, d in enumerate(shape) if d == 1]
    if not axes:
        return ctx.inputs[0]
    y = _same(ctx)
    ctx.add("Squeeze", ctx.inputs[:1], [y], {"axes": axes}, domain="")
    return y


def write_unsqueeze(ctx: Any) -> str:
    rank = _rank(ctx) + 1
    axis = int(_args(ctx)[0]) % rank
    y = _same(ctx)
    ctx.add("Unsqueeze", ctx.inputs[:1], [y], {"axes": [axis]}, domain="")
    return y


def write_slice(ctx: Any) -> str:
    """Indexing ``x[...]`` with integers, constant step-1 slices and ``...``: one single-axis Slice per cut axis
    (the chip's Slice cuts one axis, step 1), then one Squeeze of the axes an integer picked."""
    import numpy as np

    from lnn_core.errors import ExportError

    idx = ctx.node.args[1]
    items = idx if isinstance(idx, tuple) else (idx,)
    rank = _rank(ctx)
    in_shape = list(ctx.shape(0))
    cuts: list[tuple[int, int, int]] = []  # (axis, start, end)
    squeeze: list[int] = []
    axis = 0
    for i, item in enumerate(items):
        kind = _index_kind(item)
        if kind == "...":
            axis = rank - sum(1 for it in items[i + 1:] if it is not Ellipsis)
            continue
        if kind == "int":
            size = int(in_shape[axis]) if isinstance(in_shape[axis], int) else None
            start = item
            if size is not None and not -size <= item < size:
                raise ExportError(f"op {ctx.path!r}: index {item} is out of range for axis {axis} of size {size}",
                                  {"index": _index_text(idx)}, "index inside the tensor", node=ctx.path,
                                  dialect="ir")
            end = item + 1 if item != -1 else 2**62
            cuts.append((axis, start, end))
            squeeze.append(axis)
        elif kind == "slice":
            if item != slice(None):
                cuts.append((axis, item.start or 0, item.stop if item.stop is not None else 2**62))
        else:
            raise ExportError(f"op {ctx.path!r}: indexing {_index_text(idx)} has no int8 form ({kind})",
                              {"rule": "integers, constant slices a:b with step 1 and ... (lnn.init reports this "
                                       "as csk60xx.slice.index)"},
                              "index with constants; subsample with a strided conv or pooling instead of a step",
                              node=ctx.path, dialect="ir")
        axis += 1
    if not cuts:
        return ctx.inputs[0]
    info = ctx.info(0)
    x = ctx.inputs[0]
    shape = list(in_shape)
    for k, (ax, start, end) in enumerate(cuts):
        size = shape[ax]
        if isinstance(size, int):
            b = max(0, min(size, start + size if start < 0 else start))
            e = max(0, min(size, end + size if end < 0 else end))
            shape[ax] = max(0, e - b)
        last = k == len(cuts) - 1 and not squeeze
        y = ctx.tensor(info.exponent, info.dtype, None if last else tuple(shape),
                       suffix="" if last else f".slice{k}")
        ins = [x] + [ctx.initializer(f"{name}{k}" if len(cuts) > 1 else name, np.array([v], dtype=np.int64))
                     for name, v in (("starts", start), ("ends", end), ("axes", ax))]
        ctx.add("Slice", ins, [y], domain="", suffix="" if len(cuts) == 1 else f".slice{k}")
        x = y
    if squeeze:
        y = ctx.tensor(info.exponent, info.dtype)
        ctx.add("Squeeze", [x], [y], {"axes": squeeze}, domain="", suffix=".squeeze")
        x = y
    return x


# -- padding -----------------------------------------------------------------------------------------


def _pad_sig(input, pad, mode="constant", value=None):  # noqa: A002
    """Signature of F.pad."""


def _pad_args(ctx: Any) -> tuple[list[Any], str, Any]:
    """``(pad, mode, value)`` of a padding node: F.pad's ``pad`` order (last axis first: left, right, top, ...)."""
    import inspect

    module = getattr(ctx, "module", None)
    if module is not None and hasattr(module, "padding"):
        return [int(v) for v in module.padding], "constant", float(getattr(module, "value", 0.0))
    bound = inspect.signature(_pad_sig).bind(*ctx.node.args, **ctx.node.kwargs)
    bound.apply_defaults()
    pad, mode, value = bound.arguments["pad"], bound.arguments["mode"], bound.arguments["value"]
    return list(pad) if isinstance(pad, (list, tuple)) else [pad], mode, value


def _describe_pad(ctx: Any) -> dict[str, Any]:
    """What csk60xx.pad.form judges at lnn.init: the pads, mode and fill value."""
    pad, mode, value = _pad_args(ctx)
    return {"torch_pads": [p if isinstance(p, int) and not isinstance(p, bool) else str(p) for p in pad],
            "torch_pad_mode": mode, "torch_pad_value": value}


def write_pad(ctx: Any) -> str:
    """Zero padding of the last two axes as one iqPad (an (N, C, L) tensor runs as (N, C, 1, L))."""
    import numpy as np

    from lnn_core.errors import ExportError

    pad, mode, value = _pad_args(ctx)
    rank = _rank(ctx)
    if (mode != "constant" or value not in (None, 0, 0.0) or rank not in (3, 4) or len(pad) % 2
            or not all(isinstance(p, int) and p >= 0 for p in pad) or any(pad[4:])
            or (rank == 3 and any(pad[2:]))):
        raise ExportError(f"op {ctx.path!r}: padding {pad} ({mode}, value {value}) of a rank-{rank} tensor has no "
                          "int8 form", {"rule": "constant 0 on the last two axes of (N, C, H, W), or on L of "
                                                "(N, C, L), pads >= 0 (csk60xx.pad.form)"},
                          "pad with zeros on H and W only", node=ctx.path, dialect="ir")
    left, right = pad[0], pad[1]
    top, bottom = (pad[2], pad[3]) if len(pad) >= 4 else (0, 0)
    info = ctx.info(0)
    x = ctx.inputs[0]
    shape = list(ctx.shape(0))
    if rank == 3:
        shape = [shape[0], shape[1], 1, shape[2]]
        lifted = ctx.tensor(info.exponent, info.dtype, tuple(shape), suffix=".unsqueeze")
        ctx.add("Unsqueeze", [x], [lifted], {"axes": [2]}, domain="", suffix=".unsqueeze")
        x = lifted
    out = [shape[0], shape[1], shape[2] + top + bottom if isinstance(shape[2], int) else shape[2],
           shape[3] + left + right if isinstance(shape[3], int) else shape[3]]
    pads = ctx.initializer("pads", np.array([0, 0, top, left, 0, 0, bottom, right], dtype=np.int64))
    fill = ctx.initializer("value", np.array(0, dtype=np.int8), info.exponent)
    y = ctx.tensor(info.exponent, info.dtype, tuple(out) if rank == 3 else None, suffix=".pad" if rank == 3 else "")
    ctx.add("iqPad", [x, pads, fill], [y], {"mode": "constant"})
    if rank == 3:
        z = ctx.tensor(info.exponent, info.dtype)
        ctx.add("Squeeze", [y], [z], {"axes": [2]}, domain="", suffix=".squeeze")
        y = z
    return y


WRITERS = {"builtin.Flatten": write_flatten, "builtin.Reshape": write_reshape, "builtin.Squeeze": write_squeeze,
           "builtin.Unsqueeze": write_unsqueeze, "builtin.Transpose": write_transpose,
           "builtin.Contiguous": write_alias, "builtin.Slice": write_slice, "builtin.Pad": write_pad,
           "builtin.Dropout": write_alias}
