"""Pooling: MaxPool1d/2d (exact on the integer grid: a passthrough), AvgPool1d/2d and global
average pooling (``AdaptiveAvgPool`` to 1, and ``x.mean``/``torch.mean`` over the spatial dims of an
(N, C, L) or (N, C, H, W) tensor, keepdim or not).

Average pooling keeps the input exponent (``n_o = n_x``, required by the chip for power-of-two
windows and kept for all) and rounds half-up (spec 3.10)::

    s = window sum (zero padding, count_include_pad=True);   A = window area
    y = SAT_8(R(s / A)) = SAT_8(floor((2 s + A) / (2 A)))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lnn_core.ops import OpFamily
from lnn_core.quant.functional import fake_quant, qrange
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.rewrite import BuildContext, Built

__all__ = ["QAvgPool", "FAMILIES"]


def _nt(v: Any, n: int) -> list[int]:
    if isinstance(v, (list, tuple)):
        return [int(i) for i in v] if len(v) == n else [int(v[0])] * n
    return [int(v)] * n


class QAvgPool(QModule):
    """Average pooling with ``n_o = n_x``; ``kernel=None`` means global (adaptive to 1)."""

    def __init__(self, op_id: str, dims: int, kernel: list[int] | None, stride: list[int] | None,
                 padding: list[int] | None, *, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override: int | None = None, keepdim: bool = True, mean_dims: tuple[int, ...] | None = None,
                 recipe: Any, act_bits: int, stage: str) -> None:
        super().__init__(recipe, act_bits=act_bits, stage=stage, clamps=())
        self.op_id = op_id  # type: ignore[misc]
        self.keepdim = keepdim
        #: the ``dim`` of a ``mean`` spelling, as written (negative dims resolve against the input's rank)
        self.mean_dims = mean_dims
        self.dims, self.kernel, self.stride, self.padding = dims, kernel, stride, padding
        self.ceil_mode, self.count_include_pad, self.divisor_override = ceil_mode, count_include_pad, divisor_override

    def _check_mean(self, x: torch.Tensor) -> None:
        """A ``mean`` spelling is global pooling only over the spatial dims of a rank-3 or rank-4 tensor."""
        if self.mean_dims is None:
            return
        rank = x.dim()
        dims = sorted(d % rank for d in self.mean_dims) if rank else []
        if rank not in (3, 4) or dims != list(range(2, rank)) or len(set(dims)) != len(self.mean_dims):
            raise ValueError(
                f"mean over dims {list(self.mean_dims)} of a rank-{rank} tensor {tuple(x.shape)} is not global "
                "average pooling: lnn runs mean only over the spatial dims of (N, C, L) or (N, C, H, W), e.g. "
                "x.mean(dim=(2, 3)) or x.mean(-1) on (N, C, L)")

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        fn = F.avg_pool1d if self.dims == 1 else F.avg_pool2d
        kw = {} if self.dims == 1 else {"divisor_override": self.divisor_override}
        return fn(x, self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad, **kw)

    def _sum_area(self, xi: torch.Tensor) -> tuple[torch.Tensor, int]:
        if self.kernel is None:
            area = 1
            for d in xi.shape[2:]:
                area *= int(d)
            return xi.sum(dim=tuple(range(2, xi.dim())), keepdim=True), area
        area = 1
        for k in self.kernel:
            area *= k
        if self.dims == 1:
            s = F.avg_pool1d(xi, self.kernel, self.stride, self.padding, self.ceil_mode, True) * area
            s = torch.floor(s + 0.5)  # float64 sum/area*area: recover the exact integer sum
        else:
            s = F.avg_pool2d(xi, self.kernel, self.stride, self.padding, self.ceil_mode, True, divisor_override=1)
        return s, area

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_mean(x)
        y = self._float(x)
        if not self.quantizing:
            return self._shape(y)
        n = self.in_exponent(0)
        if self.training:
            return self._shape(fake_quant(y, n, self.act_bits))
        with torch.no_grad():
            s, area = self._sum_area(x.double() * 2.0**n)
            lo, hi = qrange(self.act_bits)
            q = torch.floor((2.0 * s + area) / (2.0 * area)).clamp(lo, hi)
            return self._shape((q * 2.0**-n).float())

    def _shape(self, y: torch.Tensor) -> torch.Tensor:
        """Global pooling keeps (N, C, 1, ..) unless a ``mean(..., keepdim=False)`` asked for (N, C)."""
        return y if self.keepdim else y.flatten(1)

    def op_attrs(self) -> dict[str, Any]:
        attrs = super().op_attrs()
        if self.kernel is None:
            attrs["global"] = True
            return attrs
        attrs.update(kernel_shape=list(self.kernel), strides=list(self.stride), pads=list(self.padding) * 2,
                     ceil_mode=int(self.ceil_mode), count_include_pad=int(self.count_include_pad),
                     divisor_override=self.divisor_override)
        return attrs


def _avg_sig(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,  # noqa: A002
             divisor_override=None):
    """Signature of F.avg_poolNd."""


def _adaptive_sig(input, output_size):  # noqa: A002
    """Signature of F.adaptive_avg_poolNd."""


def _mean_sig(input, dim=None, keepdim=False, *, dtype=None):  # noqa: A002
    """Signature of torch.mean / Tensor.mean."""


def _is_mean(node: Any) -> bool:
    return node.target is torch.mean or (node.op == "call_method" and node.target == "mean")


def _build_mean(op_id: str, ctx: BuildContext, kw: dict[str, Any]) -> Built | None:
    """``mean`` over the spatial dims: global average pooling. Dims that cannot be spatial (none given, the
    batch or channel axis) have no int8 form: None, so ``lnn.init`` reports the call site at once."""
    a = ctx.bind(_mean_sig)
    dim = a["dim"]
    dims = tuple(dim) if isinstance(dim, (list, tuple)) else (dim,)
    if dim is None or not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        return None
    if any(d in (0, 1) for d in dims) or a["dtype"] not in (None, torch.float32) or len(dims) > 2:
        return None
    return Built(QAvgPool(op_id, 2, None, None, None, keepdim=bool(a["keepdim"]), mean_dims=dims, **kw),
                 [a["input"]])


def _build_avg(op_id: str, dims: int):
    def build(ctx: BuildContext) -> Built | None:
        kw = dict(recipe=ctx.recipe, act_bits=ctx.layer.act_bits, stage=ctx.stage)
        if ctx.module is not None:
            m = ctx.module
            if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
                return _adaptive(op_id, dims, m.output_size, ctx, kw)
            k = _nt(m.kernel_size, dims)
            q = QAvgPool(op_id, dims, k, _nt(m.stride if m.stride is not None else m.kernel_size, dims),
                         _nt(m.padding, dims), ceil_mode=bool(m.ceil_mode),
                         count_include_pad=bool(m.count_include_pad),
                         divisor_override=getattr(m, "divisor_override", None), **kw)
            return Built(q, [ctx.node.args[0]])
        if _is_mean(ctx.node):
            return _build_mean(op_id, ctx, kw)
        if ctx.node.target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d):
            a = ctx.bind(_adaptive_sig)
            return _adaptive(op_id, dims, a["output_size"], ctx, kw)
        a = ctx.bind(_avg_sig)
        k = _nt(a["kernel_size"], dims)
        stride = a["stride"] if a["stride"] not in (None, []) else a["kernel_size"]
        q = QAvgPool(op_id, dims, k, _nt(stride, dims), _nt(a["padding"], dims), ceil_mode=bool(a["ceil_mode"]),
                     count_include_pad=bool(a["count_include_pad"]), divisor_override=a["divisor_override"], **kw)
        return Built(q, [a["input"]])

    return build


def _adaptive(op_id: str, dims: int, output_size: Any, ctx: BuildContext, kw: dict[str, Any]) -> Built | None:
    sizes = output_size if isinstance(output_size, (list, tuple)) else [output_size]
    if any(s != 1 for s in sizes):
        return None  # only global pooling has a fixed integer form without knowing the input size
    return Built(QAvgPool(op_id, dims, None, None, None, **kw), [ctx.node.args[0]])


def _max_sig(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,  # noqa: A002
             return_indices=False):
    """Signature of F.max_poolNd."""


def _describe_max(dims: int):
    def describe(ctx: BuildContext) -> dict[str, Any]:
        if ctx.module is not None:
            m = ctx.module
            k, s, p, d, c = m.kernel_size, m.stride if m.stride is not None else m.kernel_size, m.padding, \
                m.dilation, m.ceil_mode
        else:
            a = ctx.bind(_max_sig)
            k, s, p, d, c = a["kernel_size"], a["stride"] or a["kernel_size"], a["padding"], a["dilation"], \
                a["ceil_mode"]
        return {"kernel_shape": _nt(k, dims), "strides": _nt(s, dims), "pads": _nt(p, dims) * 2,
                "dilations": _nt(d, dims), "ceil_mode": int(bool(c)), "data_bits": ctx.layer.act_bits,
                "o_bits": ctx.layer.act_bits}

    return describe


FAMILIES = [
    OpFamily(id="builtin.MaxPool1d", kind="passthrough", modules=(nn.MaxPool1d,), functions=(F.max_pool1d,),
             describe=_describe_max(1), description="max pooling, exact on int8 (scale passes through)"),
    OpFamily(id="builtin.MaxPool2d", kind="passthrough", modules=(nn.MaxPool2d,), functions=(F.max_pool2d,),
             describe=_describe_max(2), description="max pooling, exact on int8 (scale passes through)"),
    OpFamily(id="builtin.AvgPool1d", kind="stateless", modules=(nn.AvgPool1d, nn.AdaptiveAvgPool1d),
             functions=(F.avg_pool1d, F.adaptive_avg_pool1d), build=_build_avg("builtin.AvgPool1d", 1),
             description="average pooling with half-up rounding; adaptive only to output size 1"),
    OpFamily(id="builtin.AvgPool2d", kind="stateless", modules=(nn.AvgPool2d, nn.AdaptiveAvgPool2d),
             functions=(F.avg_pool2d, F.adaptive_avg_pool2d, torch.mean), methods=("mean",),
             build=_build_avg("builtin.AvgPool2d", 2),
             description="average pooling with half-up rounding; adaptive only to output size 1; mean over the "
                         "spatial dims (x.mean((2, 3)), torch.mean(x, -1) on (N, C, L), keepdim or not) as global "
                         "pooling"),
]


# -- IR ----------------------------------------------------------------------------------------------


def _lift(ctx: Any, x: str, rank1: bool) -> str:
    """(N, C, L) -> (N, C, 1, L): 1-D pooling runs as 2-D pooling over one row."""
    if not rank1:
        return x
    shape = ctx.shape(0)
    info = ctx.graph.tensors[x]
    y = ctx.tensor(info.exponent, info.dtype, None if shape is None else (*shape[:2], 1, shape[2]),
                   suffix=".unsqueeze")
    ctx.add("Unsqueeze", [x], [y], {"axes": [2]}, domain="", suffix=".unsqueeze")
    return y


def _drop(ctx: Any, y: str, rank1: bool) -> str:
    if not rank1:
        return y
    info = ctx.graph.tensors[y]
    out = ctx.tensor(info.exponent, info.dtype)
    ctx.add("Squeeze", [y], [out], {"axes": [2]}, domain="", suffix=".squeeze")
    return out


def _out4(ctx: Any, rank1: bool) -> Any:
    s = ctx.out_shape
    return (*s[:2], 1, s[2]) if (rank1 and s is not None) else s


def write_avg(ctx: Any) -> str:
    """AvgPool2dInt (n_o = n_x); global pooling uses the whole input as the window."""
    m: QAvgPool = ctx.module
    in_shape = ctx.shape(0)
    rank1 = m.dims == 1 if m.kernel is not None or in_shape is None else len(in_shape) == 3
    n = ctx.exponent(0)
    x = _lift(ctx, ctx.inputs[0], rank1)
    if m.kernel is None:
        shape = ctx.graph.tensors[x].shape
        k, s, p = [int(shape[2]), int(shape[3])], [1, 1], [0, 0]
    else:
        lift = (lambda v, fill: [fill] + list(v)) if rank1 else (lambda v, fill: list(v))
        k, s, p = lift(m.kernel, 1), lift(m.stride, 1), lift(m.padding, 0)
    if not getattr(m, "keepdim", True):  # mean(..., keepdim=False): pool, then drop the unit spatial axes
        pooled_shape = None if in_shape is None else (*in_shape[:2], 1, 1)
        y = ctx.tensor(n, "int8", pooled_shape, suffix=".pool")
        ctx.add("AvgPool2dInt", [x], [y], {"kernel_shape": k, "strides": s, "pads": p + p, "ceil_mode": 0,
                                           "data_bits": 8, "o_bits": 8}, suffix=".pool")
        out = ctx.tensor(n, "int8", ctx.out_shape)
        ctx.add("Squeeze", [y], [out], {"axes": [2, 3]}, domain="", suffix=".squeeze")
        return out
    y = ctx.tensor(n, "int8", _out4(ctx, rank1), suffix=".out" if rank1 else "")
    ctx.add("AvgPool2dInt", [x], [y], {"kernel_shape": k, "strides": s, "pads": p + p, "ceil_mode": 0,
                                       "data_bits": 8, "o_bits": 8})
    return _drop(ctx, y, rank1)


def write_max(ctx: Any) -> str:
    """Standard MaxPool (scale passes through; padding never wins)."""
    fam_dims = 1 if (isinstance(ctx.module, nn.MaxPool1d) or ctx.node.target is F.max_pool1d) else 2
    from lnn_core.quant.config import LayerConfig
    from lnn_core.quant.rewrite import BuildContext

    bctx = BuildContext(ctx.path, ctx.node, ctx.module, LayerConfig(8, 8), None, "quant")
    d = _describe_max(fam_dims)(bctx)
    rank1 = fam_dims == 1
    lift = (lambda v, fill: [fill] + list(v)) if rank1 else (lambda v, fill: list(v))
    x = _lift(ctx, ctx.inputs[0], rank1)
    n = ctx.exponent(0)
    half = len(d["pads"]) // 2
    y = ctx.tensor(n, "int8", _out4(ctx, rank1), suffix=".out" if rank1 else "")
    pads = lift(d["pads"][:half], 0)
    ctx.add("MaxPool", [x], [y], {"kernel_shape": lift(d["kernel_shape"], 1), "strides": lift(d["strides"], 1),
                                  "pads": pads + pads, "dilations": lift(d["dilations"], 1),
                                  "ceil_mode": d["ceil_mode"], "auto_pad": "NOTSET", "storage_order": 0}, domain="")
    return _drop(ctx, y, rank1)


WRITERS = {"builtin.AvgPool1d": write_avg, "builtin.AvgPool2d": write_avg, "builtin.MaxPool1d": write_max,
           "builtin.MaxPool2d": write_max}
