"""Buffer sizes as the VENUS engines see them (spec/int8-ops.md section 5), and how an op is split to fit.

The formulas live here once; the hardware rules (:mod:`.rules`), the split pass
(:mod:`.graph_passes`) and the memory planner's weight-prefetch buffers (:mod:`.planner`) all call
them, so a rule can never disagree with the pass that fixes what it flags. The numbers (64 KB, 32 KB)
come from ``targets/csk60xx.toml`` through the ``limits`` mapping.

Alignment (``A_n(v)`` = ``v`` rounded up to a multiple of ``n``; int8 data, one byte per element):

- conv input: ``A8(C_in) * H * A_{8*s_w}(W)``; conv weight ``A8(C_in) * kh * kw * A2(C_out)``
  (NHWC8 blocks of 2 outputs x 8 inputs); depthwise weight ``A16(C) * kh * kw``;
- deconv weight: ``A8(C_in) * A2(C_out) * kh * kw`` and ``A8(C_out) * A2(C_in) * kh * kw``;
- linear: left matrix ``A4(M) * A8(K)``, right matrix ``A8(K) * A4(N)``.

This module imports neither torch nor onnx.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lnn_core.graph import Graph, Node

__all__ = ["align", "conv_input_bytes", "conv_weight_bytes", "depthwise_weight_bytes", "deconv_weight_bytes",
           "linear_left_bytes", "linear_right_bytes", "Problem", "FitPlan", "conv_fit", "deconv_fit", "linear_fit",
           "maxpool_fit", "fit", "fit_node", "row_slices", "packed_weight_bytes", "divisor_parts"]

Shape = tuple[int, ...]


def align(value: int, to: int) -> int:
    """``value`` rounded up to a multiple of ``to``."""
    return -(-int(value) // to) * to


def conv_input_bytes(c: int, h: int, w: int, stride_w: int) -> int:
    """``A8(C) * H * A_{8*s_w}(W)``: the conv engine's view of an int8 NCHW input (one image)."""
    return align(c, 8) * h * align(w, 8 * stride_w)


def conv_weight_bytes(c_in: int, kh: int, kw: int, c_out: int) -> int:
    """``A8(C_in) * kh * kw * A2(C_out)``: packed weights of a regular convolution."""
    return align(c_in, 8) * kh * kw * align(c_out, 2)


def depthwise_weight_bytes(c: int, kh: int, kw: int) -> int:
    """``A16(C) * kh * kw``: packed weights of a depthwise convolution (NHWC16)."""
    return align(c, 16) * kh * kw


def deconv_weight_bytes(c_in: int, c_out: int, kh: int, kw: int) -> tuple[int, int]:
    """The two transposed-conv weight checks: ``A8(C_in)*A2(C_out)*kh*kw`` and ``A8(C_out)*A2(C_in)*kh*kw``."""
    return align(c_in, 8) * align(c_out, 2) * kh * kw, align(c_out, 8) * align(c_in, 2) * kh * kw


def linear_left_bytes(m: int, k: int) -> int:
    """``A4(M) * A8(K)``: the matrix engine's left operand (the activations)."""
    return align(m, 4) * align(k, 8)


def linear_right_bytes(k: int, n: int) -> int:
    """``A8(K) * A4(N)``: the matrix engine's right operand (the weights)."""
    return align(k, 8) * align(n, 4)


def divisor_parts(total: int, fits: Any) -> int | None:
    """The smallest number of equal parts ``p`` (``p`` divides ``total``) with ``fits(total // p)``; None if none."""
    for p in range(1, total + 1):
        if total % p == 0 and fits(total // p):
            return p
    return None


@dataclass(frozen=True)
class Problem:
    """Why an op cannot be made to fit: the rule id, its limit, the actual value and a hint."""

    rule_id: str
    limit: Any
    actual: Any
    hint: str


@dataclass(frozen=True)
class FitPlan:
    """How one op fits the engine buffers.

    :param action: None (fits as is), ``"out_channels"`` (split C_out into ``parts`` chunks),
        ``"rows"`` (split the output rows into ``parts`` equal slices), ``"out_features"`` (split N into
        equal parts), ``"in_rows"`` (split the linear's rows M into equal parts).
    :param parts: the sizes of the pieces along the split axis.
    :param problems: what cannot be made to fit (each becomes a violation).
    :param sizes: the aligned byte counts the decision was taken on (for reports).
    """

    action: str | None = None
    parts: tuple[int, ...] = ()
    problems: tuple[Problem, ...] = ()
    sizes: Mapping[str, int] = field(default_factory=dict)
    limit_key: str | None = None


def _shape(graph: Graph, name: str) -> Shape:
    return tuple(int(d) for d in graph.tensors[name].shape)


def _chunks(total: int, chunk: int) -> tuple[int, ...]:
    full, rest = divmod(total, chunk)
    return (chunk,) * full + ((rest,) if rest else ())


def conv_fit(op_type: str, attrs: Mapping[str, Any], x: Shape, w: Shape, y: Shape,
             limits: Mapping[str, Any]) -> FitPlan:
    """Conv2dInt / Conv1dInt against the 64 KB input and 32 KB weight buffers.

    - regular conv, weight too large: split C_out into chunks of ``floor(32768 / (A8(C_in)*kh*kw))``
      rounded down to even (the last chunk takes the rest); impossible when that is below 2;
    - Conv2dInt, input too large: split the output rows into equal parts (the number of parts divides
      H_out) whose input rows, halo included, fit 64 KB; impossible when one output row does not fit;
    - both at once: unsupported (Conv1dInt: supported when either fits, spec 3.5);
    - depthwise weight above 32 KB and grouped convs whose per-group weight is above 32 KB: unsupported.
    """
    conv1d = op_type == "Conv1dInt"
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
                return FitPlan("out_channels", _chunks(c_out, chunk), (), sizes, "conv.weight_bytes_max")
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
    """The input row slices of a ``"rows"`` split of a Conv2dInt (see :func:`conv_fit`)."""
    h, ho = _shape(graph, node.inputs[0])[2], _shape(graph, node.outputs[0])[2]
    slices = _row_slices(node.attrs, h, ho, parts)
    if slices is None:
        raise ValueError(f"node {node.name!r} cannot be split into {parts} row slices")
    return slices


def deconv_fit(op_type: str, attrs: Mapping[str, Any], x: Shape, w: Shape, y: Shape,
               limits: Mapping[str, Any]) -> FitPlan:
    """ConvTranspose2dInt: both weight checks and the input check; the chip does not split deconvolutions."""
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


def linear_fit(op_type: str, attrs: Mapping[str, Any], x: Shape, w: Shape, y: Shape,
               limits: Mapping[str, Any]) -> FitPlan:
    """LinearInt: right matrix above 32 KB -> N split into equal parts; left matrix above 64 KB -> rows split.

    The rows (M) split slices the input along its second-to-last axis, so the axes before it must be 1.
    The N split is decided on each rows piece again (the pass re-examines the pieces).
    """
    k, n = w[1], w[0]
    m = math.prod(x[:-1])
    left, right = linear_left_bytes(m, k), linear_right_bytes(k, n)
    l_max, r_max = limits["linear.left_bytes_max"], limits["linear.right_bytes_max"]
    sizes = {"left_bytes": left, "right_bytes": right}
    problems = []
    if left > l_max:
        rows_ok = len(x) >= 2 and math.prod(x[:-2]) == 1
        parts = divisor_parts(m, lambda rows: linear_left_bytes(rows, k) <= l_max) if rows_ok else None
        if parts is not None:
            return FitPlan("in_rows", (m // parts,) * parts, (), sizes, "linear.left_bytes_max")
        problems.append(Problem("csk60xx.linear.input_bytes", f"{l_max} bytes (A4(M) * A8(K))",
                                f"{left} bytes = A4({m}) x A8({k})" + ("" if rows_ok else
                                                                        f", input {x} cannot be cut by rows"),
                                "reduce in_features, or feed the rows as a [1, M, K] tensor so they can be split"))
    if right > r_max:
        parts = divisor_parts(n, lambda cols: linear_right_bytes(k, cols) <= r_max)
        if parts is not None and not problems:
            return FitPlan("out_features", (n // parts,) * parts, (), sizes, "linear.right_bytes_max")
        if parts is None:
            problems.append(Problem("csk60xx.linear.weight_bytes", f"{r_max} bytes (A8(K) * A4(N))",
                                    f"{right} bytes = A8({k}) x A4({n}); no equal split of N={n} fits",
                                    f"keep A8(in_features) x 4 <= {r_max}, or choose out_features with small divisors"))
    return FitPlan(None, (), tuple(problems), sizes)


def maxpool_fit(op_type: str, attrs: Mapping[str, Any], x: Shape, w: Shape | None, y: Shape,
                limits: Mapping[str, Any]) -> FitPlan:
    """MaxPool on an input above 64 KB runs by rows: ``A8(C) * kh * A_{8*s_w}(W)`` must fit 64 KB."""
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


_FITS = {"Conv2dInt": conv_fit, "Conv1dInt": conv_fit, "ConvTranspose2dInt": deconv_fit, "LinearInt": linear_fit,
         "MaxPool": maxpool_fit}


def fit(op_type: str, attrs: Mapping[str, Any], input_shapes: Sequence[Shape | None],
        output_shapes: Sequence[Shape | None], limits: Mapping[str, Any]) -> FitPlan | None:
    """The buffer plan of one op from its shapes (None: the op has no engine buffer limit here)."""
    fn = _FITS.get(op_type)
    if fn is None or not input_shapes or input_shapes[0] is None or not output_shapes or output_shapes[0] is None:
        return None
    w = input_shapes[1] if len(input_shapes) > 1 else None
    if op_type != "MaxPool" and w is None:
        return None
    return fn(op_type, attrs, tuple(input_shapes[0]), w, tuple(output_shapes[0]), limits)


def fit_node(graph: Graph, node: Node, limits: Mapping[str, Any]) -> FitPlan | None:
    """:func:`fit` for a node of a shape-inferred graph."""
    shapes = [_shape(graph, t) if t else None for t in node.inputs]
    return fit(node.op_type, node.attrs, shapes, [_shape(graph, t) for t in node.outputs], limits)


def packed_weight_bytes(graph: Graph, node: Node) -> int:
    """Bytes of the op's packed weights (without bias) as the engine reads them; 0 for ops without weights."""
    if node.op_type in ("Conv2dInt", "Conv1dInt"):
        x, w = _shape(graph, node.inputs[0]), _shape(graph, node.inputs[1])
        g, c_in, c_out = int(node.attrs.get("group", 1)), x[1], w[0]
        area = math.prod(w[2:])
        if g > 1 and g == c_in and c_out == g:
            return align(c_in, 16) * area
        return g * align(c_in // g, 8) * area * align(c_out // g, 2)
    if node.op_type == "ConvTranspose2dInt":
        w = _shape(graph, node.inputs[1])
        return max(deconv_weight_bytes(w[0], w[1] * int(node.attrs.get("group", 1)), w[2], w[3]))
    if node.op_type == "LinearInt":
        w = _shape(graph, node.inputs[1])
        return linear_right_bytes(w[1], w[0])
    if node.op_type == "BatchNorm2dInt":
        return _shape(graph, node.inputs[1])[0]
    return 0
