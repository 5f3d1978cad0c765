"""Pooling: ``AvgPool2dInt`` and ``MaxPool``.

Integer semantics (spec/int8-ops.md): max pooling copies integers (any int width, the input's exponent);
average pooling sums the window exactly and requantizes by the window area (a shift for a power-of-two
area, a rounded multiply otherwise), always dividing by the full area (``count_include_pad``). C kernels:
``csrc/ops/pool.c``. A MaxPool on an input above 64 KB runs by rows: ``A8(C) * kh * A_{8*s_w}(W)`` must fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, rule

from ..sizes import FitPlan, Problem, conv_input_bytes
from ..thinker.lowering import DecodedOp, ThinkerLowering, pool_attrs, read_pool_attrs
from ..thinker.lowering import Problem as TProblem
from ._rules import at, bits_rule, buffer_rule, fmt, ints, seq
from ._window import check_dilation, check_kernel_ge_stride, conv_geometry, geom2d, geometry_attrs, pad_rule, window
from .base import PLATFORM, AttrSpec, InferContext, Lowering, OpDef, engine_operands, known_shapes, obits_dtype

__all__ = ["OPS", "maxpool_fit"]


def _pool(c: InferContext, *, avg: bool) -> list[TensorInfo]:
    x = c.info(0)
    c.rank(x, [4], "input")
    c.dtype(x, ["int8"] if avg else ["int8", "int16", "int32"], "input")
    k, s, d, p = conv_geometry(c, 2)
    ceil = bool(c.attr("ceil_mode", 0))
    out = [window(c, x.shape[2 + i], k[i], s[i], p[i], p[i + 2], d[i], ceil, f"axis {2 + i}") for i in range(2)]
    if avg:
        return [c.out(obits_dtype(c), [*x.shape[:2], *out], None)]
    return [c.out(x.dtype, [*x.shape[:2], *out], x.exponent)]


def maxpool_fit(op_type: str, attrs: Mapping[str, Any], input_shapes: Any, output_shapes: Any,
                limits: Mapping[str, Any]) -> FitPlan | None:
    """MaxPool on an input above 64 KB runs by rows: ``A8(C) * kh * A_{8*s_w}(W)`` must fit 64 KB."""
    x = tuple(input_shapes[0])
    kh = attrs["kernel_shape"][0]
    sw = attrs.get("strides", [1, 1])[1]
    in_bytes = conv_input_bytes(x[1], x[2], x[3], sw)
    row_bytes = conv_input_bytes(x[1], kh, x[3], sw)
    problems = []
    if in_bytes > limits["conv.input_bytes_max"] and row_bytes > limits["pool.row_bytes_max"]:
        problems.append(Problem("csk60xx.pool.input_bytes", f"{limits['pool.row_bytes_max']} bytes per row window",
                                f"{row_bytes} bytes = A8({x[1]}) x {kh} x A{8 * sw}({x[3]})",
                                "reduce the channels or the width of the pooled tensor"))
    return FitPlan(None, (), tuple(problems), {"input_bytes": in_bytes, "row_bytes": row_bytes})


def _view(graph: Graph, node: Node, attrs: dict[str, Any]) -> None:
    """``global``: the window covers the whole input (pooling to 1x1)."""
    shapes = known_shapes(graph, node.inputs[0], node.outputs[0])
    if shapes is None or len(shapes[0]) != 4:
        return
    (x, y), k = shapes, list(node.attrs.get("kernel_shape") or [])
    attrs["global"] = tuple(y[2:]) == (1, 1) and len(k) == 2 and k[0] >= x[2] and k[1] >= x[3]


def _lower_avgpool(node: Node, graph: Graph) -> list[int]:
    return [*geom2d(node)[:8], node.attrs.get("ceil_mode", 0)]


def _lower_maxpool(node: Node, graph: Graph) -> list[int]:
    g = geom2d(node)
    return [*g[:8], node.attrs.get("ceil_mode", 0), g[8], g[9]]


@rule("csk60xx.pool.kernel_size", ops=(), kmax="pool.kernel_max")
def check_pool_kernel(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Pooling kernel per axis must be at most {kmax}, unless the pooling is global."""
    if op.attrs.get("global"):
        return None
    k = ints(op, "kernel_shape")
    if k and max(k) > limits["pool.kernel_max"]:
        return Finding(actual=f"kernel {fmt(k)}", limit=f"<= {limits['pool.kernel_max']} per axis",
                       hint="use global pooling (AdaptiveAvgPool to 1) or stack smaller pools")
    return None


@rule("csk60xx.pool.ceil_mode", ops=())
def check_pool_ceil_mode(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Pooling must use ceil_mode=False (partial windows have no exact chip form)."""
    if op.attrs.get("ceil_mode"):
        return Finding(actual="ceil_mode=True", limit="ceil_mode=False", hint="set ceil_mode=False")
    return None


@rule("csk60xx.avgpool.divisor", ops=())
def check_avgpool_divisor(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Average pooling divides by the full window area: count_include_pad=True and no divisor_override."""
    if op.attrs.get("divisor_override"):
        return Finding(actual=f"divisor_override={op.attrs['divisor_override']}", limit="None",
                       hint="remove divisor_override")
    if not op.attrs.get("count_include_pad", 1) and any(ints(op, "pads")):
        return Finding(actual="count_include_pad=False with padding", limit="count_include_pad=True",
                       hint="set count_include_pad=True (the chip divides by the window area)")
    return None


@rule("csk60xx.avgpool.ties", ops=(), severity="warning")
def check_avgpool_ties(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """An even window area that is not a power of two can give exact ties (sum / area = k + 1/2): lnn rounds them
    half up (spec int8-ops.md 3.10); the vendor's x86 Luna library rounds some of them the other way, depending on
    the area (measured on areas 3..66: odd part 3, 9, 11, 13, 21, 33 away from zero, 5, 7, 15 toward zero); which
    one the silicon does is unverified."""
    k = ints(op, "kernel_shape")
    if not k:
        return None
    area = k[0] * (k[1] if len(k) > 1 else 1)
    if area % 2 or area & (area - 1) == 0:
        return None
    return Finding(actual=f"window {fmt(k)} (area {area})", limit="an odd or power-of-two window area",
                   hint="use a window whose area is odd or a power of two (e.g. 2x2, 3x3, 4x4), or check this "
                        "layer on a board: a tie may differ by one LSB")


@rule("csk60xx.avgpool.out_exponent", ops=())
def check_avgpool_out_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """AvgPool2dInt: a power-of-two window needs n_o = n_x (the chip shifts by log2 of the area); other
    windows need n_o >= n_x."""
    ins, outs = seq(op, "input_exponents"), seq(op, "output_exponents")
    n_x, n_o = at(ins, 0), at(outs, 0)
    k = ints(op, "kernel_shape")
    if n_x is None or n_o is None or not k:
        return None
    area = k[0] * (k[1] if len(k) > 1 else 1)
    pow2 = area & (area - 1) == 0
    if pow2 and n_o != n_x:
        return Finding(actual=f"window {fmt(k)} (area {area}), n_o {n_o}, n_x {n_x}", limit="n_o = n_x",
                       hint="give the pooling output the input's scale")
    if not pow2 and n_o < n_x:
        return Finding(actual=f"window {fmt(k)}, n_o {n_o} < n_x {n_x}", limit="n_o >= n_x",
                       hint="give the pooling output at least the input's scale")
    return None


_POOL_RULES = (pad_rule("csk60xx.pool.pad", "pool"), check_kernel_ge_stride, check_dilation,
               bits_rule("csk60xx.pool.bits", "pool"), check_pool_kernel, check_pool_ceil_mode)


# -- thinker package (spec/thinker-package.md 3.3) ----------------------------------------------------------------


def _a(v: int, k: int) -> int:
    return (v + k - 1) // k * k


def _thinker_avgpool_workspace(node: Node, graph: Graph) -> int:
    """The VENUS average pool's scratch, input in share-memory (venus/avgpool2dint.h: a global non-power-of-two
    pool keeps int32 sums after max(C*H*W, 4*outputs) bytes, more than the vendor packer's max(H*W, ...))."""
    c, h, w = graph.tensors[node.inputs[0]].shape[1:4]
    oh, ow = graph.tensors[node.outputs[0]].shape[2:4]
    kh, kw = node.attrs["kernel_shape"]
    s_w = node.attrs.get("strides", [1, 1])[1]
    p = node.attrs.get("pads", [0, 0, 0, 0])
    pow2 = (kh * kw) & (kh * kw - 1) == 0
    if kh == h + p[0] + p[2] and kw == w + p[1] + p[3]:
        ch = 8 if _a(c, 8) * h * w > 65536 else c
        acc = ch * oh * ow * 4
        return max(h * w, acc) if pow2 else max(ch * h * w, acc) + acc
    ch = 8 if _a(c, 8) * h * _a(w, 8 * s_w) > 65536 else c
    return ch * oh * ow * (2 if pow2 else 8)


def _thinker_maxpool_workspace(node: Node, graph: Graph) -> int:
    """The VENUS max pool needs scratch only when it pools an input above 64 KB by rows."""
    c, h, w = graph.tensors[node.inputs[0]].shape[1:4]
    s_w = node.attrs.get("strides", [1, 1])[1]
    if _a(c, 8) * h * _a(w, 8 * s_w) <= 65536:
        return 0
    return max(60 * 1024, graph.tensors[node.outputs[0]].nbytes)


def _thinker_pool_check(node: Node, graph: Graph) -> list[TProblem]:
    rank = len(graph.tensors[node.inputs[0]].shape)
    if rank != 4:
        return [TProblem("csk60xx.thinker.pool_rank", "the runtime pools NCHW tensors", 4, rank,
                        "reshape the input to N, C, H, W")]
    d = node.attrs.get("dilations", [1, 1])
    if any(v != 1 for v in d):
        return [TProblem("csk60xx.thinker.pool_dilation", "the runtime's pools take dilation 1", 1, list(d),
                        "use dilation 1")]
    return []


def _thinker_read_pool(d: DecodedOp) -> tuple[dict[str, Any], dict[int, Any]]:
    return read_pool_attrs(d.attrs), {}


_THINKER_AVGPOOL = ThinkerLowering("AvgPool2dInt", attrs=lambda n, g: pool_attrs(n),
                                   workspace=_thinker_avgpool_workspace, check=_thinker_pool_check,
                                   read=_thinker_read_pool)
_THINKER_MAXPOOL = ThinkerLowering("MaxPool", attrs=lambda n, g: pool_attrs(n), workspace=_thinker_maxpool_workspace,
                                   check=_thinker_pool_check, read=_thinker_read_pool)

OPS = (
    OpDef("AvgPool2dInt", "thinker", (1, 1), lambda c: _pool(c, avg=True),
          attrs={**geometry_attrs(2, dilations=False), "ceil_mode": AttrSpec("int", default=0, choices=(0,)),
                 "data_bits": AttrSpec("int", default=8, choices=(8,)),
                 "o_bits": AttrSpec("int", default=8, choices=(8, 16)), **PLATFORM},
          scales={"scale_x": ("in", 0), "scale_o": ("out", 0)},
          rules=(*_POOL_RULES, check_avgpool_divisor, check_avgpool_ties), pack_rules=(check_avgpool_out_exponent,),
          torch_ops=("builtin.AvgPool1d", "builtin.AvgPool2d"), view=_view, workspace=engine_operands,
          lowerings={"lnn": Lowering(9, 1, _lower_avgpool, "pool.c"), "thinker": _THINKER_AVGPOOL}),
    OpDef("MaxPool", "", (1, 1), lambda c: _pool(c, avg=False),
          attrs={**geometry_attrs(2), "ceil_mode": AttrSpec("int", default=0, choices=(0, 1)),
                 "auto_pad": AttrSpec("str", default="NOTSET", choices=("NOTSET",)),
                 "storage_order": AttrSpec("int", default=0, choices=(0,))},
          rules=_POOL_RULES,
          pack_rules=(buffer_rule("csk60xx.pool.input_bytes", maxpool_fit,
                                  "MaxPool on an input above 64 KB runs by rows: A8(C)*kh*A_(8*s_w)(W) must be at "
                                  "most {max} bytes.", max="pool.row_bytes_max"),),
          torch_ops=("builtin.MaxPool1d", "builtin.MaxPool2d"), view=_view, fit=maxpool_fit,
          workspace=engine_operands, lowerings={"lnn": Lowering(10, 1, _lower_maxpool, "pool.c"),
                                                         "thinker": _THINKER_MAXPOOL}),
)
