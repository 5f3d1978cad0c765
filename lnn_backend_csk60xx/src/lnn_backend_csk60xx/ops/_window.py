"""Sliding-window geometry shared by the convolution and pooling families: attribute specs, output
sizes, the hardware rules on kernel/stride/pad/dilation (each family reads its own section of the
target file: ``conv``, ``deconv``, ``pool``), and the model.bin geometry vector.

Output size of a convolution or pooling window along one axis (ONNX/PyTorch convention)::

    out = floor((in + pad_begin + pad_end - dilation * (kernel - 1) - 1) / stride) + 1

(``ceil`` instead of ``floor`` for pooling with ``ceil_mode=1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lnn_core.graph import Node
from lnn_core.rules import Finding, OpView, Rule, rule

from ._rules import fmt, ints
from .base import AttrSpec, InferContext

__all__ = ["geometry_attrs", "window", "conv_geometry", "geom2d", "kernel_size_rule", "stride_rule", "pad_rule",
           "check_kernel_ge_stride", "check_dilation"]


def geometry_attrs(n: int, *, dilations: bool = True) -> dict[str, AttrSpec]:
    """``kernel_shape``, ``strides``, ``pads`` (and ``dilations``) of an ``n``-D window."""
    out = {
        "kernel_shape": AttrSpec("ints", required=True, length=n, minimum=1),
        "strides": AttrSpec("ints", default=[1] * n, length=n, minimum=1),
        "pads": AttrSpec("ints", default=[0] * (2 * n), length=2 * n, minimum=0),
    }
    if dilations:
        out["dilations"] = AttrSpec("ints", default=[1] * n, length=n, minimum=1)
    return out


def window(c: InferContext, size: int, k: int, s: int, p0: int, p1: int, d: int, ceil: bool, axis: str) -> int:
    """Output size along one axis (the formula above)."""
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


def conv_geometry(c: InferContext, spatial: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Kernel, strides, dilations and pads of the node, checked for length."""
    k = list(c.attr("kernel_shape"))
    s = list(c.attr("strides", [1] * spatial))
    d = list(c.attr("dilations", [1] * spatial))
    p = list(c.attr("pads", [0] * (2 * spatial)))
    if len(k) != spatial or len(s) != spatial or len(d) != spatial or len(p) != 2 * spatial:
        raise c.fail("kernel_shape/strides/dilations/pads have the wrong length",
                     {"kernel_shape": k, "strides": s, "dilations": d, "pads": p, "spatial dims": spatial})
    return k, s, d, p


def geom2d(node: Node) -> list[int]:
    """model.bin geometry vector of a 2-D window: kh, kw, sh, sw, pt, pl, pb, pr, dh, dw."""
    k = node.attrs["kernel_shape"]
    s = node.attrs.get("strides", [1, 1])
    p = node.attrs.get("pads", [0, 0, 0, 0])
    d = node.attrs.get("dilations", [1, 1])
    return [k[0], k[1], s[0], s[1], p[0], p[1], p[2], p[3], d[0], d[1]]


def kernel_size_rule(rule_id: str, section: str) -> Rule:
    """Kernel size per axis within ``[section]`` ``kernel_min``..``kernel_max`` (``kernel_min`` defaults to 1)."""
    @rule(rule_id, ops=(), kmax=f"{section}.kernel_max")
    def check(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
        """Kernel size per axis must be 1..{kmax}."""
        k, kmax = ints(op, "kernel_shape"), limits[f"{section}.kernel_max"]
        if k and (max(k) > kmax or min(k) < limits.get(f"{section}.kernel_min", 1)):
            return Finding(actual=f"kernel {fmt(k)}", limit=f"1..{kmax} per axis",
                           hint=f"replace the {fmt(k)} kernel by stacked kernels of at most {kmax} "
                                f"(e.g. two 3x3 for a 5x5-like receptive field, 5 then 3 for 7)")
        return None

    return check


def stride_rule(rule_id: str, section: str) -> Rule:
    """Stride per axis in ``[section]`` ``strides``."""
    @rule(rule_id, ops=(), strides=f"{section}.strides")
    def check(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
        """Stride per axis must be one of {strides}."""
        s, allowed = ints(op, "strides"), tuple(limits[f"{section}.strides"])
        bad = [v for v in s if v not in allowed]
        if bad:
            return Finding(actual=f"stride {fmt(s)}", limit=f"each in {allowed}",
                           hint=f"use stride {max(v for v in allowed if v <= max(1, min(bad)))} and pool or "
                                "subsample after the layer")
        return None

    return check


def pad_rule(rule_id: str, section: str) -> Rule:
    """Padding per side within ``[section]`` ``pad_max`` and at most the kernel (global pooling excepted)."""
    @rule(rule_id, ops=(), pmax=f"{section}.pad_max")
    def check(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
        """Padding per side must be 0..{pmax} and at most the kernel size (global pooling excepted)."""
        if op.attrs.get("global"):
            return None
        p, k, pmax = ints(op, "pads"), ints(op, "kernel_shape"), limits[f"{section}.pad_max"]
        if not p:
            return None
        kk = (k * 2)[: len(p)] if k else []
        over_kernel = [i for i, v in enumerate(p) if kk and v > kk[i]]
        if max(p) > pmax or over_kernel:
            return Finding(actual=f"pads {fmt(p)} with kernel {fmt(k)}", limit=f"0..{pmax} and <= kernel",
                           hint=f"pad at most {pmax} per side and at most the kernel size: lower padding= "
                                + ("and pad the rest in front with nn.ZeroPad2d / F.pad (one more op), "
                                   if section == "conv" else "") + "or enlarge the kernel")
        return None

    return check


@rule("csk60xx.conv.kernel_ge_stride", ops=())
def check_kernel_ge_stride(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Kernel size must be at least the stride on every axis."""
    if op.attrs.get("global"):
        return None
    k, s = ints(op, "kernel_shape"), ints(op, "strides")
    if k and s and any(ki < si for ki, si in zip(k, s)):
        return Finding(actual=f"kernel {fmt(k)}, stride {fmt(s)}", limit="kernel >= stride per axis",
                       hint="raise the kernel to the stride, or lower the stride and subsample afterwards")
    return None


@rule("csk60xx.conv.dilation", ops=(), dilations="conv.dilations")
def check_dilation(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Dilation must be {dilations} on every axis."""
    d = ints(op, "dilations")
    if d and any(v not in tuple(limits["conv.dilations"]) for v in d):
        return Finding(actual=f"dilation {fmt(d)}", limit="1 per axis",
                       hint="use dilation 1; widen the receptive field with stride or extra layers")
    return None
