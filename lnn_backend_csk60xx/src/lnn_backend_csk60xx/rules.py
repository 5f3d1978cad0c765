"""CSK60xx (VENUS) hardware rules: one ``check_<limit>`` per limit, its docstring the rule text.

Each rule judges an :class:`lnn_core.rules.OpView` whose attributes use the chip dialect's names
(``kernel_shape``, ``strides``, ``pads``, ``dilations``, ``group``, ``data_bits``, ...), so the same
rule judges a PyTorch module at ``lnn.init`` and an ONNX node at pack time. The numbers come from
``targets/csk60xx.toml`` and are formatted into the rule text, so docs cannot drift from code.

The second half holds the pack-time rules: they apply to IR op types only and read what
:func:`.check.op_view` adds to a node's attributes (``input_shapes``, ``input_dtypes``,
``input_exponents``, ``output_shapes``, ``output_dtypes``, ``output_exponents``). The buffer rules
share their arithmetic with the split pass (:mod:`.sizes`): a rule fires exactly when the pass
cannot make the op fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lnn_core.rules import Finding, OpView, Rule, rule

from .sizes import fit

__all__ = ["RULES", "PACK_RULES", "rules_for", "check_op_supported"]

CONV = ("builtin.Conv1d", "builtin.Conv2d", "Conv1dInt", "Conv2dInt")
DECONV = ("builtin.ConvTranspose1d", "builtin.ConvTranspose2d", "ConvTranspose2dInt")
LINEAR = ("builtin.Linear", "LinearInt")
POOL = ("builtin.MaxPool1d", "builtin.MaxPool2d", "builtin.AvgPool1d", "builtin.AvgPool2d", "MaxPool",
        "AvgPool2dInt")
AVGPOOL = ("builtin.AvgPool1d", "builtin.AvgPool2d", "AvgPool2dInt")
ELTWISE = ("builtin.Add", "builtin.Sub", "builtin.Mul", "builtin.Cat", "iqAdd", "iqSub", "iqMul", "iqCat")


def _list(op: OpView, key: str) -> list[int]:
    v = op.attrs.get(key)
    if v is None:
        return []
    return [int(i) for i in (v if isinstance(v, Sequence) else [v])]


def _fmt(values: Sequence[Any]) -> str:
    return "x".join(str(v) for v in values)


# -- convolution geometry (conv, deconv, pooling share it) ------------------------------------------


@rule("csk60xx.conv.kernel_size", ops=CONV + DECONV, kmax="conv.kernel_max")
def check_kernel_size(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Kernel size per axis must be 1..{kmax}."""
    k, kmax = _list(op, "kernel_shape"), limits["conv.kernel_max"]
    if k and (max(k) > kmax or min(k) < limits["conv.kernel_min"]):
        return Finding(actual=f"kernel {_fmt(k)}", limit=f"1..{kmax} per axis",
                       hint=f"replace the {_fmt(k)} kernel by stacked kernels of at most {kmax} "
                            f"(e.g. two 3x3 for a 5x5-like receptive field, 5 then 3 for 7)")
    return None


@rule("csk60xx.conv.stride", ops=CONV + DECONV, strides="conv.strides")
def check_stride(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Stride per axis must be one of {strides}."""
    s, allowed = _list(op, "strides"), tuple(limits["conv.strides"])
    bad = [v for v in s if v not in allowed]
    if bad:
        return Finding(actual=f"stride {_fmt(s)}", limit=f"each in {allowed}",
                       hint=f"use stride {max(v for v in allowed if v <= max(1, min(bad)))} and pool or "
                            "subsample after the conv")
    return None


@rule("csk60xx.conv.pad", ops=CONV + DECONV + POOL, pmax="conv.pad_max")
def check_pad(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Padding per side must be 0..{pmax} and at most the kernel size (global pooling excepted)."""
    if op.attrs.get("global"):
        return None
    p, k, pmax = _list(op, "pads"), _list(op, "kernel_shape"), limits["conv.pad_max"]
    if not p:
        return None
    kk = (k * 2)[: len(p)] if k else []
    over_kernel = [i for i, v in enumerate(p) if kk and v > kk[i]]
    if max(p) > pmax or over_kernel:
        return Finding(actual=f"pads {_fmt(p)} with kernel {_fmt(k)}", limit=f"0..{pmax} and <= kernel",
                       hint=f"pad at most {pmax} per side (pad the input with F.pad in a float island, or "
                            "enlarge the kernel)")
    return None


@rule("csk60xx.conv.kernel_ge_stride", ops=CONV + DECONV + POOL)
def check_kernel_ge_stride(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Kernel size must be at least the stride on every axis."""
    if op.attrs.get("global"):
        return None
    k, s = _list(op, "kernel_shape"), _list(op, "strides")
    if k and s and any(ki < si for ki, si in zip(k, s)):
        return Finding(actual=f"kernel {_fmt(k)}, stride {_fmt(s)}", limit="kernel >= stride per axis",
                       hint="raise the kernel to the stride, or lower the stride and subsample afterwards")
    return None


@rule("csk60xx.conv.dilation", ops=CONV + DECONV + POOL, dilations="conv.dilations")
def check_dilation(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Dilation must be {dilations} on every axis."""
    d = _list(op, "dilations")
    if d and any(v not in tuple(limits["conv.dilations"]) for v in d):
        return Finding(actual=f"dilation {_fmt(d)}", limit="1 per axis",
                       hint="use dilation 1; widen the receptive field with stride or extra layers")
    return None


@rule("csk60xx.conv.padding_mode", ops=CONV, modes="conv.padding_modes")
def check_padding_mode(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Padding mode must be one of {modes}."""
    mode = op.attrs.get("padding_mode", "zeros")
    if mode not in tuple(limits["conv.padding_modes"]):
        return Finding(actual=f"padding_mode={mode!r}", limit="'zeros'",
                       hint="use padding_mode='zeros'")
    return None


@rule("csk60xx.conv.groups", ops=CONV, severity="warning")
def check_groups(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """A grouped convolution (1 < groups < channels) runs as one convolution per group."""
    g, cin = int(op.attrs.get("group", 1)), op.attrs.get("in_channels")
    if g > 1 and cin is not None and g != cin:
        return Finding(actual=f"groups {g} of {cin} input channels", limit="1 or depthwise",
                       hint="expect one NPU call per group; depthwise (groups = channels) is native")
    return None


# -- transposed convolution ---------------------------------------------------------------------


@rule("csk60xx.deconv.kernel_for_stride", ops=DECONV, k2="deconv.kernels_stride_2", k4="deconv.kernels_stride_4")
def check_deconv_kernel_for_stride(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Transposed conv: stride 2 needs kernel in {k2}, stride 4 needs kernel in {k4} (per axis)."""
    k, s = _list(op, "kernel_shape"), _list(op, "strides")
    table = {2: tuple(limits["deconv.kernels_stride_2"]), 4: tuple(limits["deconv.kernels_stride_4"])}
    for ki, si in zip(k, s):
        if si in table and ki not in table[si]:
            return Finding(actual=f"kernel {_fmt(k)} with stride {_fmt(s)}",
                           limit=f"stride {si}: kernel in {table[si]}",
                           hint=f"use a kernel of {table[si][0]}..{table[si][-1]} for stride {si}")
    return None


@rule("csk60xx.deconv.groups", ops=DECONV, groups="deconv.groups")
def check_deconv_groups(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Transposed conv must have groups in {groups} (no grouped or depthwise deconvolution)."""
    g = int(op.attrs.get("group", 1))
    if g not in tuple(limits["deconv.groups"]):
        return Finding(actual=f"groups {g}", limit="1", hint="use groups=1, or upsample and use a depthwise conv")
    return None


@rule("csk60xx.deconv.out_bits", ops=DECONV, bits="deconv.out_bits")
def check_deconv_out_bits(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Transposed conv output must be {bits} bit."""
    o = op.attrs.get("o_bits")
    if o is not None and o not in tuple(limits["deconv.out_bits"]):
        return Finding(actual=f"{o}-bit output", limit="8-bit", hint="set act_bits=8 for this layer")
    return None


# -- bit widths ----------------------------------------------------------------------------------


def _bits_rule(rule_id: str, ops: tuple[str, ...], section: str) -> Rule:
    @rule(rule_id, ops=ops, data=f"{section}.data_bits")
    def check(op: OpView, limits: Mapping[str, Any]) -> list[Finding]:
        """Input data must be {data} bit; weights and outputs must use the widths the engine supports."""
        found = []
        for key, lim_key, what in (("data_bits", "data_bits", "input"), ("parameter_bits", "weight_bits", "weight"),
                                   ("o_bits", "out_bits", "output")):
            v, allowed = op.attrs.get(key), limits.get(f"{section}.{lim_key}")
            if v is not None and allowed is not None and v not in tuple(allowed):
                found.append(Finding(actual=f"{v}-bit {what}", limit=f"{what} bits in {tuple(allowed)}",
                                     hint=f"set {'weight_bits' if what == 'weight' else 'act_bits'}="
                                          f"{tuple(allowed)[0]} for this layer (QuantConfig.by_path)"))
        return found

    return check


# -- matrix engine ---------------------------------------------------------------------------


@rule("csk60xx.linear.in_features", ops=LINEAR, kmax="linear.in_features_max")
def check_linear_in_features(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Linear layers may have at most {kmax} input features (4 x ALIGN8(K) bytes <= 64 KB)."""
    k = op.attrs.get("in_features")
    if k is not None and k > limits["linear.in_features_max"]:
        return Finding(actual=f"{k} input features", limit=f"<= {limits['linear.in_features_max']}",
                       hint="reduce the features first (pooling or a 1x1 conv) before the linear layer")
    return None


# -- pooling ---------------------------------------------------------------------------------------


@rule("csk60xx.pool.kernel_size", ops=POOL, kmax="pool.kernel_max")
def check_pool_kernel(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Pooling kernel per axis must be at most {kmax}, unless the pooling is global."""
    if op.attrs.get("global"):
        return None
    k = _list(op, "kernel_shape")
    if k and max(k) > limits["pool.kernel_max"]:
        return Finding(actual=f"kernel {_fmt(k)}", limit=f"<= {limits['pool.kernel_max']} per axis",
                       hint="use global pooling (AdaptiveAvgPool to 1) or stack smaller pools")
    return None


@rule("csk60xx.pool.ceil_mode", ops=POOL)
def check_pool_ceil_mode(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Pooling must use ceil_mode=False (partial windows have no exact chip form)."""
    if op.attrs.get("ceil_mode"):
        return Finding(actual="ceil_mode=True", limit="ceil_mode=False", hint="set ceil_mode=False")
    return None


@rule("csk60xx.avgpool.divisor", ops=AVGPOOL)
def check_avgpool_divisor(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Average pooling divides by the full window area: count_include_pad=True and no divisor_override."""
    if op.attrs.get("divisor_override"):
        return Finding(actual=f"divisor_override={op.attrs['divisor_override']}", limit="None",
                       hint="remove divisor_override")
    if not op.attrs.get("count_include_pad", 1) and any(_list(op, "pads")):
        return Finding(actual="count_include_pad=False with padding", limit="count_include_pad=True",
                       hint="set count_include_pad=True (the chip divides by the window area)")
    return None


@rule("csk60xx.sub.unverified", ops=("builtin.Sub", "iqSub"), severity="warning")
def check_sub_unverified(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqSub on VENUS is unverified on silicon (spec 3.15): check the result on a board."""
    return Finding(actual="iqSub", limit="verified ops", hint="prefer x + (-1 * y) folded into a preceding layer, "
                   "or validate this layer on a board with lnn verify")


# ================================================================================================
# Pack-time rules (IR nodes with shapes, dtypes and exponents)
# ================================================================================================

IR_CONV = ("Conv1dInt", "Conv2dInt")


def _shapes(op: OpView, key: str) -> tuple[Any, ...]:
    return tuple(op.attrs.get(key) or ())


def _at(values: Sequence[Any], i: int) -> Any:
    return values[i] if i < len(values) else None


def _buffer_rule(rule_id: str, ops: tuple[str, ...], text: str, **limit_keys: str) -> Rule:
    def check(op: OpView, limits: Mapping[str, Any]) -> list[Finding] | None:
        plan = fit(op.op_type, op.attrs, _shapes(op, "input_shapes"), _shapes(op, "output_shapes"), limits)
        if plan is None:
            return None
        found = [Finding(actual=p.actual, limit=p.limit, hint=p.hint) for p in plan.problems if p.rule_id == rule_id]
        return found or None

    check.__doc__ = text
    return rule(rule_id, ops=ops, **limit_keys)(check)


BUFFER_RULES: tuple[Rule, ...] = (
    _buffer_rule("csk60xx.conv.input_bytes", ("Conv2dInt",),
                 "Conv input A8(C_in)*H*A_(8*s_w)(W) above {max} bytes is split along H into equal row slices; "
                 "the input rows of one output row must fit {max} bytes.", max="conv.input_bytes_max"),
    _buffer_rule("csk60xx.conv.weight_bytes", IR_CONV,
                 "Conv weights A8(C_in)*kh*kw*A2(C_out) above {max} bytes are split into even chunks of output "
                 "channels; two output channels must fit {max} bytes.", max="conv.weight_bytes_max"),
    _buffer_rule("csk60xx.conv.weight_and_input", IR_CONV,
                 "A conv may exceed the {w} byte weight buffer or the {i} byte input buffer, not both at once.",
                 w="conv.weight_bytes_max", i="conv.input_bytes_max"),
    _buffer_rule("csk60xx.conv.depthwise_weight_bytes", IR_CONV,
                 "Depthwise conv weights A16(C)*kh*kw must be at most {max} bytes (not split).",
                 max="conv.depthwise_weight_bytes_max"),
    _buffer_rule("csk60xx.conv.group_weight_bytes", IR_CONV,
                 "Grouped conv weights per group A8(C_in/g)*kh*kw*A2(C_out/g) must be at most {max} bytes.",
                 max="conv.weight_bytes_max"),
    _buffer_rule("csk60xx.deconv.weight_bytes", ("ConvTranspose2dInt",),
                 "Transposed conv weights A8(C_in)*A2(C_out)*kh*kw and A8(C_out)*A2(C_in)*kh*kw must be at most "
                 "{max} bytes (not split).", max="deconv.weight_bytes_max"),
    _buffer_rule("csk60xx.deconv.input_bytes", ("ConvTranspose2dInt",),
                 "Transposed conv input A8(C_in)*H*A8(W) must be at most {max} bytes (not split).",
                 max="deconv.input_bytes_max"),
    _buffer_rule("csk60xx.linear.weight_bytes", ("LinearInt",),
                 "Linear weights A8(K)*A4(N) above {max} bytes are split into equal parts of N; some equal part "
                 "must fit {max} bytes.", max="linear.right_bytes_max"),
    _buffer_rule("csk60xx.linear.input_bytes", ("LinearInt",),
                 "Linear input A4(M)*A8(K) above {max} bytes is split into equal row slices (rows on the "
                 "second-to-last axis, size-1 axes before it); some slice must fit {max} bytes.",
                 max="linear.left_bytes_max"),
    _buffer_rule("csk60xx.pool.input_bytes", ("MaxPool",),
                 "MaxPool on an input above 64 KB runs by rows: A8(C)*kh*A_(8*s_w)(W) must be at most {max} bytes.",
                 max="pool.row_bytes_max"),
)


def _exp_rule(rule_id: str, ops: tuple[str, ...], text: str, second: str) -> Rule:
    def check(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
        ins, outs = _shapes(op, "input_exponents"), _shapes(op, "output_exponents")
        n_x, n_w, n_o = _at(ins, 0), _at(ins, 1), _at(outs, 0)
        if n_x is None or n_w is None or n_o is None or n_o <= n_x + n_w:
            return None
        return Finding(actual=f"n_o {n_o} > n_x {n_x} + {second} {n_w}", limit=f"n_o <= {n_x + n_w}",
                       hint=f"choose an output scale of at most 2^{n_x + n_w} (the requantizing shift "
                            f"n_x + {second} - n_o is unsigned on the chip)")

    check.__doc__ = text
    return rule(rule_id, ops=ops)(check)


EXPONENT_RULES: tuple[Rule, ...] = (
    _exp_rule("csk60xx.conv.out_exponent", IR_CONV, "Conv output exponent n_o must be at most n_x + n_w.", "n_w"),
    _exp_rule("csk60xx.deconv.out_exponent", ("ConvTranspose2dInt",),
              "Transposed conv output exponent n_o must be at most n_x + n_w.", "n_w"),
    _exp_rule("csk60xx.linear.out_exponent", ("LinearInt",), "Linear output exponent n_o must be at most n_x + n_w.",
              "n_w"),
    _exp_rule("csk60xx.batchnorm.out_exponent", ("BatchNorm2dInt",),
              "BatchNorm output exponent n_o must be at most n_x + n_w.", "n_w"),
    _exp_rule("csk60xx.mul.out_exponent", ("iqMul",), "iqMul output exponent n_o must be at most n_x + n_y.", "n_y"),
)


@rule("csk60xx.add.out_exponent", ops=("iqAdd", "iqSub"))
def check_add_out_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqAdd / iqSub output exponent n_o must be at most min(n_x, n_y) (each operand is shifted right)."""
    ins, outs = _shapes(op, "input_exponents"), _shapes(op, "output_exponents")
    n_x, n_y, n_o = _at(ins, 0), _at(ins, 1), _at(outs, 0)
    if None in (n_x, n_y, n_o) or n_o <= min(n_x, n_y):
        return None
    return Finding(actual=f"n_o {n_o} with n_x {n_x}, n_y {n_y}", limit=f"n_o <= {min(n_x, n_y)}",
                   hint="cap the output scale at the smaller input scale (lnn does this when it quantizes an add)")


@rule("csk60xx.avgpool.out_exponent", ops=("AvgPool2dInt",))
def check_avgpool_out_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """AvgPool2dInt: a power-of-two window needs n_o = n_x (the chip shifts by log2 of the area); other
    windows need n_o >= n_x."""
    ins, outs = _shapes(op, "input_exponents"), _shapes(op, "output_exponents")
    n_x, n_o = _at(ins, 0), _at(outs, 0)
    k = _list(op, "kernel_shape")
    if n_x is None or n_o is None or not k:
        return None
    area = k[0] * (k[1] if len(k) > 1 else 1)
    pow2 = area & (area - 1) == 0
    if pow2 and n_o != n_x:
        return Finding(actual=f"window {_fmt(k)} (area {area}), n_o {n_o}, n_x {n_x}", limit="n_o = n_x",
                       hint="give the pooling output the input's scale")
    if not pow2 and n_o < n_x:
        return Finding(actual=f"window {_fmt(k)}, n_o {n_o} < n_x {n_x}", limit="n_o >= n_x",
                       hint="give the pooling output at least the input's scale")
    return None


@rule("csk60xx.quant.exponent", ops=("Quant",), emin="quant.exponent_min")
def check_quant_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Quant output exponent n must be at least {emin} (the chip computes 1 << n)."""
    n = _at(_shapes(op, "output_exponents"), 0)
    if n is not None and n < limits["quant.exponent_min"]:
        return Finding(actual=f"n {n} (scale 2^{n})", limit=f"n >= {limits['quant.exponent_min']}",
                       hint="the input range is above 127; normalise the input (divide by a power of two) "
                            "before it enters the model")
    return None


@rule("csk60xx.add.equal_shapes", ops=("iqAdd", "iqSub"))
def check_add_equal_shapes(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqAdd / iqSub operands must have equal shapes (the chip does not broadcast them)."""
    shapes = _shapes(op, "input_shapes")
    if len(shapes) >= 2 and None not in shapes[:2] and tuple(shapes[0]) != tuple(shapes[1]):
        return Finding(actual=f"x {tuple(shapes[0])}, y {tuple(shapes[1])}", limit="equal shapes",
                       hint="expand the smaller operand explicitly (e.g. a 1x1 conv or a repeat) before the add")
    return None


@rule("csk60xx.mul.broadcast", ops=("iqMul",))
def check_mul_broadcast(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqMul operands must have equal shapes, or y must be [N, C, 1, 1] against a 4-D x, or a scalar."""
    shapes = _shapes(op, "input_shapes")
    if len(shapes) < 2 or None in shapes[:2]:
        return None
    x, y = tuple(shapes[0]), tuple(shapes[1])
    per_channel = len(x) == 4 and y == (x[0], x[1], 1, 1)
    if x == y or per_channel or int(np.prod(y)) == 1:
        return None
    return Finding(actual=f"x {x}, y {y}", limit="y == x, [N, C, 1, 1] or scalar",
                   hint="reshape y to [N, C, 1, 1], or swap the operands when x is the broadcast one")


@rule("csk60xx.cat.inputs", ops=("iqCat",))
def check_cat_inputs(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqCat needs at least 2 inputs."""
    n = len(_shapes(op, "input_shapes"))
    if n < 2:
        return Finding(actual=f"{n} input", limit=">= 2 inputs", hint="remove the single-input concatenation")
    return None


@rule("csk60xx.slice.single_axis", ops=("Slice",))
def check_slice_single_axis(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Slice must cut one axis with step 1 (the chip reads the first start, end and axis and ignores steps)."""
    ins, outs = _shapes(op, "input_shapes"), _shapes(op, "output_shapes")
    steps = op.attrs.get("slice_steps") or ()
    if not ins or not outs or ins[0] is None or outs[0] is None:
        return None
    cut = [d for d, (a, b) in enumerate(zip(ins[0], outs[0])) if a != b]
    if len(cut) > 1 or any(s != 1 for s in steps):
        return Finding(actual=f"axes {cut}, steps {list(steps)}", limit="one axis, step 1",
                       hint="slice one axis at a time; flip or subsample with a conv instead of a step")
    return None


@rule("csk60xx.transpose.rank", ops=("Transpose",), rmax="transpose.max_rank")
def check_transpose_rank(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Transpose supports at most {rmax} axes; a 4-D transpose must keep axis 0 in place (perm[0] = 0)."""
    shapes = _shapes(op, "input_shapes")
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


_INT = ("int8", "int16", "int32")
#: family -> (op types, allowed dtypes per input position (None: not checked here), allowed output dtypes).
#: Positions the bits rules already judge (conv/linear/pool/eltwise data, weight and output bits) are None.
DTYPE_TABLE: dict[str, tuple[tuple[str, ...], tuple[tuple[str, ...] | None, ...], tuple[str, ...] | None]] = {
    "quant": (("Quant",), (("float32",),), ("int8",)),
    "dequant": (("Dequant",), (("int8", "uint8"),), ("float32",)),
    "requant": (("Requant",), (("int8",),), _INT),
    "conv": (IR_CONV, (None, None, ("int32", "int16")), None),
    "deconv": (("ConvTranspose2dInt",), (("int8",), ("int8",), ("int32",)), None),
    "linear": (("LinearInt",), (None, None, ("int32",)), None),
    "batchnorm": (("BatchNorm2dInt",), (("int8",), ("int8",), ("int32",)), ("int8",)),
    "eltwise": (("iqAdd", "iqSub", "iqMul"), (None, ("int8",)), None),
    "relu": (("Relu",), (_INT,), _INT),
    "clip": (("Clip",), (("int8",),), ("int8",)),
}


def _dtype_rule(family: str) -> Rule:
    op_types, ins_allowed, out_allowed = DTYPE_TABLE[family]

    def check(op: OpView, limits: Mapping[str, Any]) -> list[Finding] | None:
        dtypes, out = _shapes(op, "input_dtypes"), _shapes(op, "output_dtypes")
        found = []
        for i, allowed in enumerate(ins_allowed):
            d = _at(dtypes, i)
            if allowed is not None and d is not None and d not in allowed:
                found.append(Finding(actual=f"input {i} {d}", limit=f"input {i} in {allowed}",
                                     hint=f"{op.op_type} on the chip takes {' or '.join(allowed)} at input {i}"))
        d = _at(out, 0)
        if out_allowed is not None and d is not None and d not in out_allowed:
            found.append(Finding(actual=f"output {d}", limit=f"output in {out_allowed}",
                                 hint=f"{op.op_type} on the chip writes {' or '.join(out_allowed)}"))
        return found or None

    check.__doc__ = (f"{' / '.join(op_types)} dtypes (spec section 4): inputs "
                     + ", ".join("as the bits rule" if a is None else "/".join(a) for a in ins_allowed)
                     + f"; output {'as the bits rule' if out_allowed is None else '/'.join(out_allowed)}.")
    return rule(f"csk60xx.{family}.dtype", ops=op_types)(check)


@rule("csk60xx.cat.dtype", ops=("iqCat",))
def check_cat_dtype(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """iqCat inputs and output share one dtype: int8 (rescaled to the output scale), or int16/int32 at one scale."""
    dtypes, out = _shapes(op, "input_dtypes"), _at(_shapes(op, "output_dtypes"), 0)
    if out is None or not dtypes:
        return None
    if out not in _INT or any(d != out for d in dtypes):
        return Finding(actual=f"inputs {list(dtypes)} -> {out}", limit="one integer dtype",
                       hint="requantize the inputs to one dtype before the concatenation")
    return None


@rule("csk60xx.graph.op_supported", ops=())
def check_op_supported(op: OpView, limits: Mapping[str, Any]) -> Finding:
    """Every op must be a CSK60xx op or an op whose plugin is installed (schema and simulator kernel)."""
    return Finding(actual=f"op type {op.op_type!r}", limit="CSK60xx dialect ops and installed plugin ops",
                   hint="replace the op, or install the plugin that provides it (`lnn plugins` lists them)")


PACK_RULES: tuple[Rule, ...] = (
    *BUFFER_RULES, *EXPONENT_RULES, check_add_out_exponent, check_avgpool_out_exponent, check_quant_exponent,
    check_add_equal_shapes, check_mul_broadcast, check_cat_inputs, check_slice_single_axis, check_transpose_rank,
    *(_dtype_rule(family) for family in DTYPE_TABLE), check_cat_dtype,
)


RULES: tuple[Rule, ...] = (
    check_kernel_size, check_stride, check_pad, check_kernel_ge_stride, check_dilation, check_padding_mode,
    check_groups, check_deconv_kernel_for_stride, check_deconv_groups, check_deconv_out_bits,
    _bits_rule("csk60xx.conv.bits", CONV + DECONV, "conv"),
    _bits_rule("csk60xx.linear.bits", LINEAR, "linear"),
    _bits_rule("csk60xx.pool.bits", POOL, "pool"),
    _bits_rule("csk60xx.eltwise.bits", ELTWISE, "eltwise"),
    check_linear_in_features, check_pool_kernel, check_pool_ceil_mode, check_avgpool_divisor, check_sub_unverified,
)


def rules_for(op_type: str) -> list[Rule]:
    """Every CSK60xx rule for ``op_type``: op rules (module and IR names) and pack-time rules (IR names)."""
    return [r for r in (*RULES, *PACK_RULES) if r.applies_to(op_type)]
