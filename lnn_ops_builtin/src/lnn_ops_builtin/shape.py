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
    OpFamily(id="builtin.Slice", kind="passthrough", functions=(operator.getitem,),
             description="basic slicing x[a:b] (Slice)"),
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
    """Basic slicing ``x[a:b, ...]`` with step 1 as one Slice (starts/ends/axes initializers)."""
    import numpy as np

    from lnn_core.errors import ExportError

    idx = ctx.node.args[1]
    idx = idx if isinstance(idx, tuple) else (idx,)
    rank = _rank(ctx)
    starts, ends, axes = [], [], []
    axis = 0
    for i, item in enumerate(idx):
        if item is Ellipsis:
            axis = rank - (len(idx) - i - 1)
            continue
        if not isinstance(item, slice) or item.step not in (None, 1) or not all(
                v is None or isinstance(v, int) for v in (item.start, item.stop)):
            raise ExportError(f"op {ctx.path!r}: indexing {item!r} has no int8 form",
                              {"rule": "only basic slices a:b with step 1 are exported"},
                              "use slices with constant bounds and step 1", node=ctx.path, dialect="ir")
        if item != slice(None):
            starts.append(item.start or 0)
            ends.append(item.stop if item.stop is not None else 2**62)
            axes.append(axis)
        axis += 1
    if not axes:
        return ctx.inputs[0]
    y = _same(ctx)
    ins = [ctx.inputs[0]] + [ctx.initializer(k, np.array(v, dtype=np.int64))
                             for k, v in (("starts", starts), ("ends", ends), ("axes", axes))]
    ctx.add("Slice", ins, [y], domain="")
    return y


WRITERS = {"builtin.Flatten": write_flatten, "builtin.Reshape": write_reshape, "builtin.Squeeze": write_squeeze,
           "builtin.Unsqueeze": write_unsqueeze, "builtin.Transpose": write_transpose,
           "builtin.Contiguous": write_alias, "builtin.Slice": write_slice, "builtin.Dropout": write_alias}
