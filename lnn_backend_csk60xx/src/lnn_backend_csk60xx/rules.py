"""CSK60xx (VENUS) hardware rules: one ``check_<limit>`` per limit, its docstring the rule text.

Each rule judges an :class:`lnn_core.rules.OpView` whose attributes use the chip dialect's names
(``kernel_shape``, ``strides``, ``pads``, ``dilations``, ``group``, ``data_bits``, ...), so the same
rule judges a PyTorch module at ``lnn.init`` and an ONNX node at pack time. The numbers come from
``targets/csk60xx.toml`` and are formatted into the rule text, so docs cannot drift from code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lnn_core.rules import Finding, OpView, Rule, rule

__all__ = ["RULES", "rules_for"]

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
    return [r for r in RULES if r.applies_to(op_type)]
