"""Layer normalization over the last dimension (or the last two): ``LayerNormInt`` (spec/int8-seq-ops.md 2.3).

Integer semantics (C kernel ``csrc/ops/layernorm.c``), per row of ``T = len(gamma)`` int8 values at ``n_x``::

    s1 = sum x ;  s2 = sum x^2 ;  q_eps = floor(f32(f32(f32(1e-5f * 2^(2 n_x)) * T) * T) + 0.5)
    D  = wrap32(T * s2) - wrap32(s1^2) + q_eps
    u  = SAT_16(SHR(SAT_32(T * x - s1) * rsqrt_q14(D normalized to [256, 1023]), k + 5))     Q10
    y  = SAT_8(SHR(u * gamma + beta, 10 + n_g - n_o))

gamma int16 at ``n_g`` (floor rule at 16 bits), beta int32 at ``10 + n_g``. Dialect (linger 1.1.1, spec 2.3.3):
``thinker::LayerNormInt(x, gamma, beta)`` with ``data_bits`` 8, ``parameter_bits`` 16, ``o_bits`` 8, ``scale_x``,
``scale_w`` (gamma), ``scale_o`` and ``platform_quant``; eps and the normalized shape are not in the file (the
chip's eps is 1e-5), beta has no scale attribute (the reader gives it ``10 + n_g``). Limits (spec 2.3.5, 6.4):
``4 <= T <= 362`` (below, the kernel's scratch aliases; above, the int32 sums can wrap), x of rank >= 3,
``0 <= n_x <= 15``, ``n_o <= 10 + n_g``, the module's eps 1e-5. The kernel's own workspace, 8T bytes in
share-memory, is planned for the op (``kernel_workspace``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, rule

from ..thinker.lowering import Problem as ThinkerProblem
from ..thinker.lowering import ThinkerLowering
from ._rules import at, bits_rule, dtype_rule, seq
from .base import PLATFORM, AttrSpec, InferContext, Lowering, OpDef, engine_operands, known_shapes

__all__ = ["OPS", "NORM_Q"]

#: the normalized value's format (Q10): beta's exponent is ``NORM_Q + n_g``
NORM_Q = 10


def _infer(c: InferContext) -> list[TensorInfo]:
    """Same shape, int8 out; gamma [T] with T the last dimension or the product of the last two, beta [T]. A beta
    without exponent (the linger file gives it none) gets ``10 + n_g``."""
    x, g, b = c.info(0), c.info(1), c.info(2)
    c.dtype(x, ["int8"], "input")
    c.dtype(g, ["int16"], "gamma")
    c.dtype(b, ["int32"], "beta")
    c.rank(g, [1], "gamma")
    last = x.shape[-1] if x.shape else 0
    last2 = last * x.shape[-2] if len(x.shape) >= 2 else None
    if g.shape[0] not in (last, last2) or b.shape != g.shape:
        raise c.fail("gamma/beta do not match the normalized row",
                     {"rule": "LayerNormInt gamma and beta are 1-D of the last dimension (or the last two)",
                      "input": x.shape, "gamma": g.shape, "beta": b.shape})
    if g.exponent is not None:
        if b.exponent is None:
            b.exponent = NORM_Q + g.exponent
        elif b.exponent != NORM_Q + g.exponent:
            raise c.fail(f"beta's scale 2**{b.exponent} is not 2**(10 + n_g) = 2**{NORM_Q + g.exponent}",
                         {"rule": "LayerNormInt adds beta to the Q10 normalized value times gamma"})
    return [c.out("int8", x.shape, None)]


def _view(graph: Graph, node: Node, attrs: dict[str, Any]) -> None:
    shapes = known_shapes(graph, node.inputs[1])
    if shapes is not None and shapes[0]:
        attrs["row_length"] = shapes[0][0]


@rule("csk60xx.layernorm.row", ops=(), tmin="layernorm.row_min", tmax="layernorm.row_max")
def check_row(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """LayerNorm rows (the normalized elements) must have {tmin}..{tmax} elements: below, the kernel's scratch
    buffers overlap; above, T * sum(x^2) and (sum x)^2 can overflow int32 for int8 rows."""
    t = op.attrs.get("row_length")
    lo, hi = limits["layernorm.row_min"], limits["layernorm.row_max"]
    if t is None or lo <= t <= hi:
        return None
    hint = (f"normalize at least {lo} elements (or drop the LayerNorm)" if t < lo else
            f"normalize at most {hi} elements: split the features into groups of <= {hi}, or reduce d_model")
    return Finding(actual=f"row of {t}", limit=f"{lo} <= T <= {hi}", hint=hint)


@rule("csk60xx.layernorm.eps", ops=(), eps="layernorm.eps")
def check_eps(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """LayerNorm eps must be {eps}: the chip's kernel adds a fixed eps (it is not in the file)."""
    eps, want = op.attrs.get("eps"), float(limits["layernorm.eps"])
    if eps is None or math.isclose(float(eps), want, rel_tol=1e-6):
        return None
    return Finding(actual=f"eps {eps:g}", limit=f"eps {want:g}",
                   hint=f"construct the LayerNorm with eps={want:g} (the chip's value) and train with it")


@rule("csk60xx.layernorm.dims", ops=(), dmax="layernorm.normalized_dims_max")
def check_dims(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """LayerNorm may normalize the last dimension or the last {dmax} (gamma is 1-D on the chip)."""
    d = op.attrs.get("normalized_dims")
    dmax = limits["layernorm.normalized_dims_max"]
    if d is None or d <= dmax:
        return None
    return Finding(actual=f"{d} normalized dims", limit=f"<= {dmax}",
                   hint="normalize over the last dimension: reshape the input so the normalized elements are last")


@rule("csk60xx.layernorm.rank", ops=(), rmin="layernorm.rank_min")
def check_rank(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """LayerNormInt input must have rank {rmin} or more (the kernel reads rows from the last three dimensions)."""
    x = at(seq(op, "input_shapes"), 0)
    rmin = limits["layernorm.rank_min"]
    if x is None or len(x) >= rmin:
        return None
    return Finding(actual=f"rank {len(x)}", limit=f"rank >= {rmin}",
                   hint="unsqueeze the input to [1, rows, T] (lnn export does it for 2-D inputs)")


@rule("csk60xx.layernorm.in_exponent", ops=(), emax="layernorm.in_exponent_max")
def check_in_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """LayerNormInt input exponent must be 0..{emax} (the kernel forms 1 << 2 n_x as a C int)."""
    n = at(seq(op, "input_exponents"), 0)
    emax = limits["layernorm.in_exponent_max"]
    if n is None or 0 <= n <= emax:
        return None
    return Finding(actual=f"n_x {n}", limit=f"0 <= n_x <= {emax}",
                   hint="scale the LayerNorm's input into |x| < 128 (n_x >= 0): e.g. lower the producer's output "
                        "range, or requantize it first" if n < 0 else
                   f"requantize the input to exponent {emax} first (lnn export does it)")


@rule("csk60xx.layernorm.out_exponent", ops=())
def check_out_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """LayerNormInt output exponent n_o must be at most 10 + n_g (gamma's exponent): the shift is unsigned."""
    n_g, n_o = at(seq(op, "input_exponents"), 1), at(seq(op, "output_exponents"), 0)
    if n_g is None or n_o is None or n_o <= NORM_Q + n_g:
        return None
    return Finding(actual=f"n_o {n_o} > 10 + n_g {n_g}", limit=f"n_o <= {NORM_Q + n_g}",
                   hint=f"choose an output scale of at most 2^{NORM_Q + n_g}")


def _kernel_workspace(graph: Graph, node: Node) -> int:
    """The kernel's scratch: 8T bytes (int32 products at byte offset 4T, spec 2.3.5; tpacker declares
    max(2T + 8, 4T), enough only when another op of the graph declares more)."""
    shapes = known_shapes(graph, node.inputs[1])
    return 8 * shapes[0][0] if shapes is not None and shapes[0] else 0


def _workspace(graph: Graph, node: Node) -> list[tuple[Any, str, bool]]:
    """The kernel reads whole rows and writes whole rows: a PSRAM operand is copied to share-memory whole."""
    return engine_operands(graph, node, whole=(0, "out"))


_BITS = {
    "data_bits": AttrSpec("int", default=8, choices=(8,)),
    "parameter_bits": AttrSpec("int", default=16, choices=(16,)),
    "o_bits": AttrSpec("int", default=8, choices=(8,)),
}


# -- thinker package (spec/thinker-package.md 3.5): gamma and beta are one DMA transfer; the kernel's 8T scratch --

def _thinker_layernorm_check(node: Node, graph: Graph) -> list[ThinkerProblem]:
    """The VENUS kernel normalizes dims[-3] * dims[-2] rows (dims[-3] over the last two): axes before those are
    ignored, so they must be 1."""
    x = graph.tensors[node.inputs[0]].shape
    lead = math.prod(x[:-3])
    if lead != 1:
        return [ThinkerProblem("csk60xx.thinker.layernorm_rows", "the runtime's LayerNormInt ignores the axes before "
                               "the last three (it would normalize the first batch item only)",
                               "leading axes 1", list(x), "normalize a [N*C, H, W] (rank 3) view: reshape first")]
    return []


_THINKER_LAYERNORM = ThinkerLowering("LayerNormInt", attrs=lambda n, g: struct.pack("<bbxxf", 1, 1, 1e-5), dma=True,
                                     workspace=lambda n, g: _kernel_workspace(g, n), check=_thinker_layernorm_check,
                                     max_rank=3)

OPS = (
    OpDef("LayerNormInt", "thinker", (3, 3), _infer, attrs={**_BITS, **PLATFORM},
          scales={"scale_x": ("in", 0), "scale_w": ("in", 1), "scale_o": ("out", 0)},
          rules=(bits_rule("csk60xx.layernorm.bits", "layernorm"), check_row, check_eps, check_dims),
          pack_rules=(check_rank, check_in_exponent, check_out_exponent,
                      dtype_rule("csk60xx.layernorm.dtype", "LayerNormInt", (("int8",), ("int16",), ("int32",)),
                                 ("int8",))),
          torch_ops=("builtin.LayerNorm",), view=_view, workspace=_workspace, kernel_workspace=_kernel_workspace,
          lowerings={"lnn": Lowering(26, 3, None, "layernorm.c"), "thinker": _THINKER_LAYERNORM}),
)
