"""Convolutions on the VENUS conv engine: ``Conv2dInt``, ``Conv1dInt`` and ``ConvTranspose2dInt``.

Integer semantics (spec/int8-ops.md): ``y = RQ_o(sum x*w + bias, n_x + n_w - n_o)`` with an exact
accumulator, an optional int32 (or int16) bias at exponent ``n_x + n_w``, and an optional fused ReLU
(``act_type=1``, written by the ReLU-fusion rewrite) on the requantized integers. C kernels: ``csrc/ops/conv.c``.

Engine buffers (spec section 5; ``A_n(v)`` = ``v`` rounded up to a multiple of ``n``):

- conv input ``A8(C_in) * H * A_{8*s_w}(W)`` <= 64 KB, else the output rows are split;
- conv weight ``A8(C_in) * kh * kw * A2(C_out)`` <= 32 KB, else C_out is split into even chunks;
  depthwise ``A16(C) * kh * kw`` <= 32 KB (not split);
- transposed conv: input ``A8(C_in) * H * A8(W)`` and both weight forms ``A8(C_in)*A2(C_out)*kh*kw``,
  ``A8(C_out)*A2(C_in)*kh*kw`` within their limits (never split).

Output size of a transposed convolution along one axis::

    out = (in - 1) * stride - pad_begin - pad_end + dilation * (kernel - 1) + 1 + output_padding
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, rule

from ..sizes import FitPlan, Problem, align, chunks, conv_input_bytes, divisor_parts, shape_of
from ..thinker.lowering import (
    DecodedOp,
    ThinkerLowering,
    conv1d_attrs,
    conv2d_attrs,
    deconv_attrs,
    read_conv1d_attrs,
    read_conv2d_attrs,
    read_deconv_attrs,
    relayout_conv,
    relayout_deconv,
    restore_conv,
    restore_deconv,
)
from ..thinker.lowering import (
    Problem as TProblem,
)
from ._rules import bits_rule, buffer_rule, dtype_rule, exponent_rule, fmt, ints
from ._window import (
    check_dilation,
    check_kernel_ge_stride,
    conv_geometry,
    geom2d,
    geometry_attrs,
    kernel_size_rule,
    pad_rule,
    stride_rule,
    window,
)
from .base import PLATFORM, AttrSpec, InferContext, Lowering, OpDef, Params, engine_operands, known_shapes, obits_dtype

__all__ = ["OPS", "PADS_FOLD_INTO", "conv_fit", "deconv_fit", "row_slices", "conv_weight_bytes",
           "depthwise_weight_bytes", "deconv_weight_bytes"]

_BITS = (8, 16, 32)
_XWO = {"scale_x": ("in", 0), "scale_w": ("in", 1), "scale_o": ("out", 0)}
_QBITS = {
    "data_bits": AttrSpec("int", default=8, choices=(8,)),
    "parameter_bits": AttrSpec("int", default=8, choices=(8,)),
    "o_bits": AttrSpec("int", default=8, choices=_BITS),
}
#: ``act_type`` is written by the ReLU-fusion rewrite only (1 = ReLU on the requantized output, as tpacker's
#: CR_fusion); files exported for the vendor's tools never carry it.
_ACT = {"act_type": AttrSpec("int", choices=(0, 1))}
_GROUP = {"group": AttrSpec("int", default=1, minimum=1)}
_WEIGHT_BIAS = (Params(1, 2),)


# -- sizes ------------------------------------------------------------------------------------------


def conv_weight_bytes(c_in: int, kh: int, kw: int, c_out: int) -> int:
    """``A8(C_in) * kh * kw * A2(C_out)``: packed weights of a regular convolution."""
    return align(c_in, 8) * kh * kw * align(c_out, 2)


def depthwise_weight_bytes(c: int, kh: int, kw: int) -> int:
    """``A16(C) * kh * kw``: packed weights of a depthwise convolution (NHWC16)."""
    return align(c, 16) * kh * kw


def deconv_weight_bytes(c_in: int, c_out: int, kh: int, kw: int) -> tuple[int, int]:
    """The two transposed-conv weight checks: ``A8(C_in)*A2(C_out)*kh*kw`` and ``A8(C_out)*A2(C_in)*kh*kw``."""
    return align(c_in, 8) * align(c_out, 2) * kh * kw, align(c_out, 8) * align(c_in, 2) * kh * kw


def conv_fit(op_type: str, attrs: Mapping[str, Any], input_shapes: Any, output_shapes: Any,
             limits: Mapping[str, Any]) -> FitPlan | None:
    """A convolution against the 64 KB input and 32 KB weight buffers.

    - regular conv, weight too large: split C_out into chunks of ``floor(32768 / (A8(C_in)*kh*kw))``
      rounded down to even (the last chunk takes the rest); impossible when that is below 2;
    - 2-D conv, input too large: split the output rows into equal parts (the number of parts divides
      H_out) whose input rows, halo included, fit 64 KB; impossible when one output row does not fit;
    - both at once: unsupported (1-D conv: supported when either fits, spec 3.5);
    - depthwise weight above 32 KB and grouped convs whose per-group weight is above 32 KB: unsupported.
    """
    if len(input_shapes) < 2 or input_shapes[1] is None:
        return None
    x, w, y = tuple(input_shapes[0]), tuple(input_shapes[1]), tuple(output_shapes[0])
    conv1d = len(x) == 3
    c_in, c_out, g = x[1], y[1], int(attrs.get("group", 1))
    h, wd = (1, x[2]) if conv1d else (x[2], x[3])
    kh, kw = (1, w[2]) if conv1d else (w[2], w[3])
    sh, sw = (1, attrs.get("strides", [1])[0]) if conv1d else tuple(attrs.get("strides", [1, 1]))
    dh = 1 if conv1d else attrs.get("dilations", [1, 1])[0]
    in_max, w_max = limits["conv.input_bytes_max"], limits["conv.weight_bytes_max"]
    in_bytes = conv_input_bytes(c_in, h, wd, sw)
    depthwise = g > 1 and g == c_in and c_out % g == 0 and c_out // g == 1
    if depthwise:
        w_bytes = depthwise_weight_bytes(c_in, kh, kw)
    elif g > 1:
        w_bytes = conv_weight_bytes(c_in // g, kh, kw, c_out // g)
    else:
        w_bytes = conv_weight_bytes(c_in, kh, kw, c_out)
    sizes = {"input_bytes": in_bytes, "weight_bytes": w_bytes}
    if depthwise:
        w_max = limits["conv.depthwise_weight_bytes_max"]
    w_over, in_over = w_bytes > w_max, in_bytes > in_max
    problems: list[Problem] = []
    shape_txt = f"C_in {c_in} x {h}x{wd}, stride_w {sw}"
    if w_over and in_over:
        problems.append(Problem(
            "csk60xx.conv.weight_and_input", f"weight <= {w_max} or input <= {in_max} bytes",
            f"weight {w_bytes} and input {in_bytes} bytes", "shrink the input (pool or stride earlier) or the "
            "channel counts; the chip splits a large weight or a large input, never both"))
        return FitPlan(None, (), tuple(problems), sizes)
    if w_over:
        if depthwise:
            problems.append(Problem("csk60xx.conv.depthwise_weight_bytes", f"{w_max} bytes (A16(C) * kh * kw)",
                                    f"{w_bytes} bytes = A16({c_in}) x {kh}x{kw}",
                                    "split the depthwise conv into channel groups (separate convs) or use a "
                                    "smaller kernel"))
        elif g > 1:
            problems.append(Problem("csk60xx.conv.group_weight_bytes", f"{w_max} bytes per group",
                                    f"{w_bytes} bytes = A8({c_in // g}) x {kh}x{kw} x A2({c_out // g})",
                                    "use more groups or fewer channels per group"))
        else:
            chunk = (w_max // (align(c_in, 8) * kh * kw)) // 2 * 2
            if chunk < 2:
                problems.append(Problem(
                    "csk60xx.conv.weight_bytes", f"{w_max} bytes for 2 output channels",
                    f"{align(c_in, 8) * kh * kw * 2} bytes = A8({c_in}) x {kh}x{kw} x 2",
                    "reduce in_channels x kernel area below "
                    f"{w_max // 2} (a 1x1 bottleneck before this conv)"))
            else:
                return FitPlan("out_channels", chunks(c_out, chunk), (), sizes, "conv.weight_bytes_max")
        return FitPlan(None, (), tuple(problems), sizes)
    if in_over and not conv1d:
        row_bytes = conv_input_bytes(c_in, 1, wd, sw)
        max_rows = in_max // row_bytes
        halo = (kh - 1) * dh + 1
        out_rows = (max_rows - halo) // sh + 1 if max_rows >= halo else 0
        ho = y[2]
        parts = divisor_parts(ho, lambda rows: rows <= out_rows) if out_rows >= 1 else None
        if parts is not None and _row_slices(attrs, h, ho, parts) is not None:
            return FitPlan("rows", (ho // parts,) * parts, (), sizes, "conv.input_bytes_max")
        problems.append(Problem("csk60xx.conv.input_bytes", f"{in_max} bytes per slice of rows",
                                f"{row_bytes * halo} bytes for the {halo} input rows of one output row "
                                f"({shape_txt})", "reduce the channels or the width of this layer's input"))
    return FitPlan(None, (), tuple(problems), sizes)


def _row_slices(attrs: Mapping[str, Any], h: int, ho: int, parts: int) -> list[tuple[int, int, int, int]] | None:
    """Per part: (first input row, input rows, top pad, bottom pad); None when a part has no input row."""
    kh = attrs["kernel_shape"][0]
    sh = attrs.get("strides", [1, 1])[0]
    dh = attrs.get("dilations", [1, 1])[0]
    pt = attrs.get("pads", [0, 0, 0, 0])[0]
    rows = ho // parts
    out = []
    for k in range(parts):
        r0 = k * rows * sh - pt
        r1 = (k * rows + rows - 1) * sh - pt + (kh - 1) * dh + 1
        lo, hi = max(r0, 0), min(r1, h)
        if hi <= lo:
            return None
        out.append((lo, hi - lo, lo - r0, r1 - hi))
    return out


def row_slices(graph: Graph, node: Node, parts: int) -> list[tuple[int, int, int, int]]:
    """The input row slices of a ``"rows"`` split of a 2-D convolution (see :func:`conv_fit`)."""
    h, ho = shape_of(graph, node.inputs[0])[2], shape_of(graph, node.outputs[0])[2]
    slices = _row_slices(node.attrs, h, ho, parts)
    if slices is None:
        raise ValueError(f"node {node.name!r} cannot be split into {parts} row slices")
    return slices


def deconv_fit(op_type: str, attrs: Mapping[str, Any], input_shapes: Any, output_shapes: Any,
               limits: Mapping[str, Any]) -> FitPlan | None:
    """Transposed conv: both weight checks and the input check; the chip does not split deconvolutions."""
    if len(input_shapes) < 2 or input_shapes[1] is None:
        return None
    x, w, y = tuple(input_shapes[0]), tuple(input_shapes[1]), tuple(output_shapes[0])
    c_in, c_out, kh, kw = x[1], y[1], w[2], w[3]
    in_bytes = conv_input_bytes(c_in, x[2], x[3], 1)
    wa, wb = deconv_weight_bytes(c_in, c_out, kh, kw)
    problems = []
    if max(wa, wb) > limits["deconv.weight_bytes_max"]:
        problems.append(Problem("csk60xx.deconv.weight_bytes",
                                f"{limits['deconv.weight_bytes_max']} bytes (both forms)",
                                f"{max(wa, wb)} bytes (A8(C_in)*A2(C_out)*k = {wa}, A8(C_out)*A2(C_in)*k = {wb})",
                                "reduce the channels of the transposed conv, or upsample and use a conv"))
    if in_bytes > limits["deconv.input_bytes_max"]:
        problems.append(Problem("csk60xx.deconv.input_bytes", f"{limits['deconv.input_bytes_max']} bytes",
                                f"{in_bytes} bytes = A8({c_in}) x {x[2]} x A8({x[3]})",
                                "reduce the input size of the transposed conv"))
    return FitPlan(None, (), tuple(problems), {"input_bytes": in_bytes, "weight_bytes": max(wa, wb)})


def _conv_prefetch(graph: Graph, node: Node) -> int:
    x, w = shape_of(graph, node.inputs[0]), shape_of(graph, node.inputs[1])
    g, c_in, c_out = int(node.attrs.get("group", 1)), x[1], w[0]
    area = math.prod(w[2:])
    if g > 1 and g == c_in and c_out == g:
        return align(c_in, 16) * area
    return g * align(c_in // g, 8) * area * align(c_out // g, 2)


def _deconv_prefetch(graph: Graph, node: Node) -> int:
    w = shape_of(graph, node.inputs[1])
    return max(deconv_weight_bytes(w[0], w[1] * int(node.attrs.get("group", 1)), w[2], w[3]))


# -- shape rules --------------------------------------------------------------------------------------


def _conv(c: InferContext, spatial: int) -> list[TensorInfo]:
    x = c.info(0)
    w = c.info(1)
    c.rank(x, [2 + spatial], "input")
    c.dtype(x, ["int8"], "input")
    c.rank(w, [2 + spatial], "weight")
    c.dtype(w, ["int8"], "weight")
    k, s, d, p = conv_geometry(c, spatial)
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
    out = [window(c, x.shape[2 + i], k[i], s[i], p[i], p[i + spatial], d[i], False, f"axis {2 + i}")
           for i in range(spatial)]
    return [c.out(obits_dtype(c), [n, m, *out], None)]


def _deconv2d(c: InferContext) -> list[TensorInfo]:
    x = c.info(0)
    w = c.info(1)
    c.rank(x, [4], "input")
    c.dtype(x, ["int8"], "input")
    c.rank(w, [4], "weight")
    c.dtype(w, ["int8"], "weight")
    k, s, d, p = conv_geometry(c, 2)
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
    return [c.out(obits_dtype(c), [n, m, *out], None)]


def _view(graph: Graph, node: Node, attrs: dict[str, Any]) -> None:
    shapes = known_shapes(graph, node.inputs[0], node.outputs[0])
    if shapes is not None and len(shapes[0]) >= 2:
        attrs["in_channels"], attrs["out_channels"] = shapes[0][1], shapes[1][1]


# -- model.bin lowering -------------------------------------------------------------------------------


def _act(node: Node) -> list[int]:
    """The optional trailing attribute of conv ops: the fused activation (written only when set)."""
    act = int(node.attrs.get("act_type", 0) or 0)
    return [act] if act else []


def _lower_conv2d(node: Node, graph: Graph) -> list[int]:
    return [*geom2d(node), node.attrs.get("group", 1), *_act(node)]


def _lower_conv1d(node: Node, graph: Graph) -> list[int]:
    k, s = node.attrs["kernel_shape"][0], node.attrs.get("strides", [1])[0]
    p, d = node.attrs.get("pads", [0, 0]), node.attrs.get("dilations", [1])[0]
    return [1, k, 1, s, 0, p[0], 0, p[1], 1, d, node.attrs.get("group", 1), *_act(node)]


def _lower_deconv(node: Node, graph: Graph) -> list[int]:
    return [*geom2d(node), node.attrs.get("group", 1), *node.attrs.get("output_padding", [0, 0]), *_act(node)]


# -- rules ----------------------------------------------------------------------------------------------


@rule("csk60xx.conv.padding_mode", ops=(), modes="conv.padding_modes")
def check_padding_mode(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Padding mode must be one of {modes}."""
    mode = op.attrs.get("padding_mode", "zeros")
    if mode not in tuple(limits["conv.padding_modes"]):
        return Finding(actual=f"padding_mode={mode!r}", limit="'zeros'",
                       hint="use padding_mode='zeros'")
    return None


@rule("csk60xx.conv.groups", ops=(), severity="warning")
def check_groups(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """A grouped convolution (1 < groups < channels) runs as one convolution per group."""
    g, cin = int(op.attrs.get("group", 1)), op.attrs.get("in_channels")
    if g > 1 and cin is not None and g != cin:
        return Finding(actual=f"groups {g} of {cin} input channels", limit="1 or depthwise",
                       hint="expect one NPU call per group; depthwise (groups = channels) is native")
    return None


@rule("csk60xx.deconv.kernel_for_stride", ops=(), k2="deconv.kernels_stride_2", k4="deconv.kernels_stride_4")
def check_deconv_kernel_for_stride(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Transposed conv: stride 2 needs kernel in {k2}, stride 4 needs kernel in {k4} (per axis)."""
    k, s = ints(op, "kernel_shape"), ints(op, "strides")
    table = {2: tuple(limits["deconv.kernels_stride_2"]), 4: tuple(limits["deconv.kernels_stride_4"])}
    for ki, si in zip(k, s):
        if si in table and ki not in table[si]:
            return Finding(actual=f"kernel {fmt(k)} with stride {fmt(s)}",
                           limit=f"stride {si}: kernel in {table[si]}",
                           hint=f"use a kernel of {table[si][0]}..{table[si][-1]} for stride {si}")
    return None


@rule("csk60xx.deconv.groups", ops=(), groups="deconv.groups")
def check_deconv_groups(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Transposed conv must have groups in {groups} (no grouped or depthwise deconvolution)."""
    g = int(op.attrs.get("group", 1))
    if g not in tuple(limits["deconv.groups"]):
        return Finding(actual=f"groups {g}", limit="1", hint="use groups=1, or upsample and use a depthwise conv")
    return None


@rule("csk60xx.deconv.out_bits", ops=(), bits="deconv.out_bits")
def check_deconv_out_bits(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Transposed conv output must be {bits} bit."""
    o = op.attrs.get("o_bits")
    if o is not None and o not in tuple(limits["deconv.out_bits"]):
        return Finding(actual=f"{o}-bit output", limit="8-bit", hint="set act_bits=8 for this layer")
    return None


_CONV_BITS = bits_rule("csk60xx.conv.bits", "conv")
_CONV_RULES = (kernel_size_rule("csk60xx.conv.kernel_size", "conv"), stride_rule("csk60xx.conv.stride", "conv"),
               pad_rule("csk60xx.conv.pad", "conv"), check_kernel_ge_stride, check_dilation, check_padding_mode,
               check_groups, _CONV_BITS)
_DECONV_RULES = (kernel_size_rule("csk60xx.deconv.kernel_size", "deconv"),
                 stride_rule("csk60xx.deconv.stride", "deconv"), pad_rule("csk60xx.deconv.pad", "deconv"),
                 check_kernel_ge_stride, check_dilation, check_deconv_kernel_for_stride, check_deconv_groups,
                 check_deconv_out_bits, _CONV_BITS)

_CONV_PACK_RULES = (
    buffer_rule("csk60xx.conv.weight_bytes", conv_fit,
                "Conv weights A8(C_in)*kh*kw*A2(C_out) above {max} bytes are split into even chunks of output "
                "channels; two output channels must fit {max} bytes.", max="conv.weight_bytes_max"),
    buffer_rule("csk60xx.conv.weight_and_input", conv_fit,
                "A conv may exceed the {w} byte weight buffer or the {i} byte input buffer, not both at once.",
                w="conv.weight_bytes_max", i="conv.input_bytes_max"),
    buffer_rule("csk60xx.conv.depthwise_weight_bytes", conv_fit,
                "Depthwise conv weights A16(C)*kh*kw must be at most {max} bytes (not split).",
                max="conv.depthwise_weight_bytes_max"),
    buffer_rule("csk60xx.conv.group_weight_bytes", conv_fit,
                "Grouped conv weights per group A8(C_in/g)*kh*kw*A2(C_out/g) must be at most {max} bytes.",
                max="conv.weight_bytes_max"),
    exponent_rule("csk60xx.conv.out_exponent", "Conv output exponent n_o must be at most n_x + n_w.", "n_w"),
    dtype_rule("csk60xx.conv.dtype", "Conv1dInt / Conv2dInt", (None, None, ("int32", "int16")), None),
)
_CONV2D_PACK_RULES = (
    buffer_rule("csk60xx.conv.input_bytes", conv_fit,
                "Conv input A8(C_in)*H*A_(8*s_w)(W) above {max} bytes is split along H into equal row slices; "
                "the input rows of one output row must fit {max} bytes.", max="conv.input_bytes_max"),
)
_DECONV_PACK_RULES = (
    buffer_rule("csk60xx.deconv.weight_bytes", deconv_fit,
                "Transposed conv weights A8(C_in)*A2(C_out)*kh*kw and A8(C_out)*A2(C_in)*kh*kw must be at most "
                "{max} bytes (not split).", max="deconv.weight_bytes_max"),
    buffer_rule("csk60xx.deconv.input_bytes", deconv_fit,
                "Transposed conv input A8(C_in)*H*A8(W) must be at most {max} bytes (not split).",
                max="deconv.input_bytes_max"),
    exponent_rule("csk60xx.deconv.out_exponent", "Transposed conv output exponent n_o must be at most n_x + n_w.",
                  "n_w"),
    dtype_rule("csk60xx.deconv.dtype", "ConvTranspose2dInt", (("int8",), ("int8",), ("int32",)), None),
)


def _conv_attrs(spatial: int, *extra: dict[str, AttrSpec]) -> dict[str, AttrSpec]:
    out = {**geometry_attrs(spatial), **_GROUP}
    for e in extra:
        out.update(e)
    return {**out, **_QBITS, **PLATFORM, **_ACT}



# -- thinker package (spec/thinker-package.md 3.3, 6) -------------------------------------------------------------


def _thinker_conv_check(node: Node, graph: Graph) -> list[TProblem]:
    """The runtime's conv contract: dilation 1, group 1 or depthwise, kernel within 32 KB, input within 64 KB
    (the runtime's own splits of larger ones are wrong for the stored weight shape; lnn's split pass cuts them)."""
    x, w = graph.tensors[node.inputs[0]].shape, graph.initializers.get(node.inputs[1])
    out: list[TProblem] = []
    d = node.attrs.get("dilations", [1] * (len(x) - 2))
    if any(v != 1 for v in d):
        out.append(TProblem("csk60xx.thinker.conv_dilation", "the runtime's convs take dilation 1", 1, list(d),
                           "use dilation 1 (a larger kernel, or stride) for a thinker package"))
    if w is None:
        return out + [TProblem("csk60xx.thinker.conv_weight", "the weight must be a constant", "constant", "computed",
                              "export the weights as initializers")]
    group = node.attrs.get("group", 1)
    k = math.prod(w.shape[2:])
    if node.op_type == "ConvTranspose2dInt":
        i_ch, o_ch = w.shape[0], w.shape[1] * group
        kernel = align(o_ch, 2) * align(i_ch, 8) * k
        k_hw, p = w.shape[2:], node.attrs.get("pads", [0, 0, 0, 0])
        if any(p[j] > k_hw[j % 2] - 1 for j in range(4)):
            out.append(TProblem("csk60xx.thinker.deconv_pads", "the runtime pads a transposed conv's input by "
                                "kernel - 1 - pad, so each pad must be below the kernel", "pad <= kernel - 1", list(p),
                                "use smaller padding (crop the output in a following slice)"))
        if group != 1:
            out.append(TProblem("csk60xx.thinker.deconv_group", "the runtime's transposed conv takes group 1", 1, group,
                               "use group 1"))
    elif group > 1:
        if not (group == w.shape[0] and w.shape[1] == 1):
            out.append(TProblem("csk60xx.thinker.conv_group", "the runtime's convs take group 1 or depthwise "
                               "(group = C_out, one input channel per group)", "1 or depthwise", group,
                               "split the grouped conv into convs and a concatenation"))
        kernel = align(w.shape[0], 16) * k
    else:
        kernel = align(w.shape[0], 2) * align(w.shape[1], 8) * k
    if kernel > 32768:
        out.append(TProblem("csk60xx.thinker.conv_kernel_bytes", "the aligned kernel exceeds the 32 KB weight buffer",
                           32768, kernel, "lnn's split pass cuts larger kernels: pack with split enabled"))
    s_w = node.attrs.get("strides", [1, 1])[-1]
    w_in = x[-1]
    data = align(x[1], 8) * (x[2] if len(x) == 4 else 1) * align(w_in, 8 * s_w)
    if data > 65536:
        out.append(TProblem("csk60xx.thinker.conv_input_bytes", "the aligned input exceeds 64 KB", 65536, data,
                           "lnn's split pass cuts 2-D conv inputs by rows; shrink the input of this conv"))
    return out


def _thinker_read_conv(read_attrs: Any):
    def read(d: DecodedOp) -> tuple[dict[str, Any], dict[int, Any]]:
        attrs = read_attrs(d.attrs)
        o_ch, i_ch = d.outputs[0].shape[1], d.inputs[0].shape[1]
        w = restore_conv(d.inputs[1].data, o_ch, i_ch, attrs["kernel_shape"], attrs.get("group", 1))
        return attrs, {1: w}
    return read


def _thinker_read_deconv(d: DecodedOp) -> tuple[dict[str, Any], dict[int, Any]]:
    attrs = read_deconv_attrs(d.attrs)
    return attrs, {1: restore_deconv(d.inputs[1].data, d.inputs[0].shape[1], d.outputs[0].shape[1])}


_THINKER_CONV2D = ThinkerLowering("Conv2dInt", attrs=lambda n, g: conv2d_attrs(n), relayout={1: relayout_conv},
                                  dma=True, workspace=lambda n, g: 0, check=_thinker_conv_check,
                                  read=_thinker_read_conv(read_conv2d_attrs))
_THINKER_CONV1D = ThinkerLowering("Conv1dInt", attrs=lambda n, g: conv1d_attrs(n), relayout={1: relayout_conv},
                                  dma=True, workspace=lambda n, g: 0, check=_thinker_conv_check,
                                  read=_thinker_read_conv(read_conv1d_attrs))
_THINKER_DECONV = ThinkerLowering("ConvTranspose2dInt", attrs=lambda n, g: deconv_attrs(n),
                                  relayout={1: relayout_deconv}, dma=True, workspace=lambda n, g: 0,
                                  check=_thinker_conv_check, read=_thinker_read_deconv)

OPS = (
    OpDef("Conv2dInt", "thinker", (2, 3), lambda c: _conv(c, 2),
          attrs=_conv_attrs(2, {"castor_mode": AttrSpec("str", default="luna", dialect_only=True)}), scales=_XWO,
          params=_WEIGHT_BIAS,
          rules=_CONV_RULES, pack_rules=_CONV_PACK_RULES + _CONV2D_PACK_RULES, torch_ops=("builtin.Conv2d",),
          view=_view, fit=conv_fit, fuses_relu=True, prefetch_bytes=_conv_prefetch, workspace=engine_operands,
          lowerings={"lnn": Lowering(4, 3, _lower_conv2d, "conv.c"), "thinker": _THINKER_CONV2D}),
    OpDef("Conv1dInt", "thinker", (2, 3), lambda c: _conv(c, 1), attrs=_conv_attrs(1), scales=_XWO,
          params=_WEIGHT_BIAS, rules=_CONV_RULES, pack_rules=_CONV_PACK_RULES, torch_ops=("builtin.Conv1d",),
          view=_view, fit=conv_fit, fuses_relu=True, prefetch_bytes=_conv_prefetch,
          workspace=lambda g, n: engine_operands(g, n, whole=(0,)),
          lowerings={"lnn": Lowering(5, 3, _lower_conv1d, "conv.c"), "thinker": _THINKER_CONV1D}),
    OpDef("ConvTranspose2dInt", "thinker", (2, 3), _deconv2d,
          attrs=_conv_attrs(2, {"output_padding": AttrSpec("ints", default=[0, 0], length=2, minimum=0)}),
          scales=_XWO, params=_WEIGHT_BIAS, rules=_DECONV_RULES, pack_rules=_DECONV_PACK_RULES,
          torch_ops=("builtin.ConvTranspose1d", "builtin.ConvTranspose2d"), view=_view, fit=deconv_fit,
          fuses_relu=True, prefetch_bytes=_deconv_prefetch,
          workspace=lambda g, n: engine_operands(g, n, whole=(0, "out")),
          lowerings={"lnn": Lowering(6, 3, _lower_deconv, "conv.c"), "thinker": _THINKER_DECONV}),
)

#: the ops whose zero ``pads`` read exactly what a zero padding op in front of them writes: ``lnn pack`` folds such
#: a padding into them (:func:`.pad.fold_pads`; a transposed conv's pads crop instead, a 1-D conv runs lifted)
PADS_FOLD_INTO = (OPS[0].op_type,)
