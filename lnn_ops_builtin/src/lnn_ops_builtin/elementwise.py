"""Elementwise and joining ops: add, sub, mul, cat (spec 3.14-3.18).

Integer semantics::

    add:  y = SAT_8(SHR(x, n_x - n_o) + SHR(y, n_y - n_o))      n_o <= min(n_x, n_y)
    sub:  y = SAT_8(SHR(x, n_x - n_o) - SHR(y, n_y - n_o))      n_o <= min(n_x, n_y)
    mul:  y = RQ_8(x * y, n_x + n_y - n_o)                      n_o <= n_x + n_y
    cat:  y = concat(rescale(x_i, n_i -> n_o))                  up-scaling saturates

Each operand of add/sub is rounded separately, then added with one saturation: the training
forward does exactly the same on the fake-quant grid, so eval equals training numerics.
A python-number operand of mul is quantized once as an int8 constant (floor rule exponent).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx as fx

from lnn_core.ops import OpFamily
from lnn_core.quant import kernels
from lnn_core.quant.functional import fake_quant, fake_quant_sum
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.quantizers import ActQuantizer
from lnn_core.quant.rewrite import BuildContext, Built

__all__ = ["QAdd", "QMul", "QCat", "FAMILIES"]


class _Binary(QModule):
    def __init__(self, op_id: str, *, recipe: Any, act_bits: int, stage: str) -> None:
        super().__init__(recipe, act_bits=act_bits, stage=stage, clamps=("act",))
        self.op_id = op_id  # type: ignore[misc]
        self.out_q = ActQuantizer(act_bits, recipe, cap=getattr(self, "output_cap", None))


class QAdd(_Binary):
    """``x + y`` / ``x - y`` on two quantized tensors of the same shape."""

    def __init__(self, op_id: str, *, sign: int = 1, **kw: Any) -> None:
        super().__init__(op_id, **kw)
        self.sign = sign

    def output_cap(self, exponent_of: Any) -> int:
        """``min(n_x, n_y)``: the cap source of ``out_q``."""
        return min(exponent_of(self.input_quantizers[0]), exponent_of(self.input_quantizers[1]))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.quantizing:
            return self.out_q(self.constrain_act(x + y if self.sign > 0 else x - y))
        cap = min(self.in_exponent(0), self.in_exponent(1))
        bounds = None
        if self.training and self.out_q.observe:  # the float sum only feeds the observer: no autograd node
            if kernels.usable_pair(x, y):  # its bounds without forming it
                bounds = kernels.sum_bounds(x, y, self.sign)
                n = self.out_q.observe_bounds(bounds, cap)
            else:
                with torch.no_grad():
                    n = self.out_q.update(x + y if self.sign > 0 else x - y, cap)
        else:
            n = self.out_q.eval_exponent(cap)
        lo, hi = self.out_bounds(n)
        s = 2.0**n
        if self.training:  # R(x * s) +- R(y * s), clamped, in one autograd node (same values and gradients)
            return fake_quant_sum(x, y, n, self.sign, lo, hi, self.act_bits, bounds)
        with torch.no_grad():
            qx = torch.floor(x.double() * s + 0.5)
            qy = torch.floor(y.double() * s + 0.5)
            q = (qx + qy if self.sign > 0 else qx - qy).clamp(lo, hi)
            return (q / s).float()

    def op_attrs(self) -> dict[str, Any]:
        return {**super().op_attrs(), "n_inputs": 2}


class QMul(_Binary):
    """``x * y`` on quantized tensors, or ``x * c`` with a python number ``c``."""

    def __init__(self, op_id: str, *, const: float | None = None, **kw: Any) -> None:
        super().__init__(op_id, **kw)
        self.const = const
        if const is not None:
            c = abs(float(const))
            n = math.floor(math.log2(127.0 / c)) if c > 0 else 7
            while c * 2.0**n > 127:
                n -= 1
            self.const_exponent = n
            self.const_q = max(-128, min(127, math.floor(float(const) * 2.0**n + 0.5)))

    def output_cap(self, exponent_of: Any) -> int:
        """``n_x + n_y`` (``n_y`` of the constant for ``x * c``): the cap source of ``out_q``."""
        n_y = self.const_exponent if self.const is not None else exponent_of(self.input_quantizers[1])
        return exponent_of(self.input_quantizers[0]) + n_y

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.const is not None:
            n_y, y_val = self.const_exponent, self.const_q / 2.0**self.const_exponent
        else:
            n_y, y_val = None, y
        if not self.quantizing:
            return self.out_q(self.constrain_act(x * (self.const if self.const is not None else y)))
        n_x = self.in_exponent(0)
        n_y = n_y if n_y is not None else self.in_exponent(1)
        z = x * y_val
        cap = n_x + n_y
        if self.training:
            return self.finish_train(z, cap)
        with torch.no_grad():
            acc = (x.double() * 2.0**n_x) * (y_val.double() * 2.0**n_y if isinstance(y_val, torch.Tensor)
                                             else float(self.const_q))
            return self.finish_exact(acc, n_x + n_y, cap)

    def op_attrs(self) -> dict[str, Any]:
        return {**super().op_attrs(), "scalar": self.const is not None}


class QCat(_Binary):
    """``torch.cat`` of quantized tensors: each input rescaled to the output exponent."""

    def __init__(self, op_id: str, *, dim: int, **kw: Any) -> None:
        super().__init__(op_id, **kw)
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        z = torch.cat(xs, self.dim)
        if not self.quantizing:
            return self.out_q(self.constrain_act(z))
        n = self.out_exponent(z.detach())
        lo, hi = self.out_bounds(n)
        if self.training:
            return fake_quant(z, n, self.act_bits).clamp(lo / 2.0**n, hi / 2.0**n)
        with torch.no_grad():
            q = torch.floor(z.double() * 2.0**n + 0.5).clamp(lo, hi)
            return (q / 2.0**n).float()

    def op_attrs(self) -> dict[str, Any]:
        return {**super().op_attrs(), "axis": self.dim, "n_inputs": len(self._inputs)}


def _tensor_operands(ctx: BuildContext) -> tuple[list[Any], list[Any]]:
    a = list(ctx.node.args[:2])
    if "other" in ctx.node.kwargs:
        a.append(ctx.node.kwargs["other"])
    nodes = [v for v in a if isinstance(v, fx.Node)]
    consts = [v for v in a if not isinstance(v, fx.Node)]
    return nodes, consts


def _build_add(op_id: str, sign: int):
    def build(ctx: BuildContext) -> Built | None:
        if ctx.node.kwargs.get("alpha", 1) != 1:
            return None
        nodes, consts = _tensor_operands(ctx)
        if len(nodes) != 2 or consts:
            return None  # tensor +- number: no exact chip form (spec 3.14 scalar note)
        return Built(QAdd(op_id, sign=sign, recipe=ctx.recipe, act_bits=ctx.layer.act_bits, stage=ctx.stage),
                     nodes)

    return build


def _build_mul(ctx: BuildContext) -> Built | None:
    nodes, consts = _tensor_operands(ctx)
    kw = dict(recipe=ctx.recipe, act_bits=ctx.layer.act_bits, stage=ctx.stage)
    if len(nodes) == 2:
        return Built(QMul("builtin.Mul", **kw), nodes)
    if len(nodes) == 1 and len(consts) == 1 and isinstance(consts[0], (int, float)) and not isinstance(consts[0], bool):
        return Built(QMul("builtin.Mul", const=float(consts[0]), **kw), nodes)
    return None


def _cat_sig(tensors, dim=0, *, out=None):
    """Signature of torch.cat."""


def _build_cat(ctx: BuildContext) -> Built | None:
    a = ctx.bind(_cat_sig)
    xs = list(a["tensors"])
    if a.get("out") is not None or not all(isinstance(x, fx.Node) for x in xs) or not isinstance(a["dim"], int):
        return None
    return Built(QCat("builtin.Cat", dim=a["dim"], recipe=ctx.recipe, act_bits=ctx.layer.act_bits, stage=ctx.stage),
                 xs)


FAMILIES = [
    OpFamily(id="builtin.Add", kind="compute", functions=(operator.add, operator.iadd, torch.add),
             methods=("add", "add_", "__add__", "__radd__"), build=_build_add("builtin.Add", 1),
             description="elementwise sum of two quantized tensors of equal shape (iqAdd)"),
    OpFamily(id="builtin.Sub", kind="compute", functions=(operator.sub, operator.isub, torch.sub),
             methods=("sub", "sub_", "__sub__"), build=_build_add("builtin.Sub", -1),
             description="elementwise difference of two quantized tensors of equal shape (iqSub)"),
    OpFamily(id="builtin.Mul", kind="compute", functions=(operator.mul, operator.imul, torch.mul),
             methods=("mul", "mul_", "__mul__", "__rmul__"), build=_build_mul,
             description="elementwise product (iqMul); a python number becomes an int8 constant"),
    OpFamily(id="builtin.Cat", kind="compute", functions=(torch.cat, torch.concat), methods=(),
             build=_build_cat, description="concatenation along one axis with per-input rescaling (iqCat)"),
]


# -- IR ----------------------------------------------------------------------------------------------


def _finish(ctx: Any, m: QModule, y: str, n_o: int) -> str:
    clip = m.act_clip_int(n_o)
    return ctx.clip(y, *clip) if clip is not None else y


def write_add(ctx: Any) -> str:
    """iqAdd / iqSub: scales from the tensors' exponents."""
    m: QAdd = ctx.module
    n_o = m.out_q.eval_exponent(min(ctx.exponent(0), ctx.exponent(1)))
    y = ctx.tensor(n_o)
    ctx.add("iqAdd" if m.sign > 0 else "iqSub", ctx.inputs[:2], [y])
    return _finish(ctx, m, y, n_o)


def write_mul(ctx: Any) -> str:
    """iqMul; a python-number operand is an int8 0-d initializer at its own exponent."""
    import numpy as np

    m: QMul = ctx.module
    if m.const is not None:
        n_y = m.const_exponent
        other = ctx.initializer("const", np.array(m.const_q, dtype=np.int8), n_y)
    else:
        n_y, other = ctx.exponent(1), ctx.inputs[1]
    n_o = m.out_q.eval_exponent(ctx.exponent(0) + n_y)
    y = ctx.tensor(n_o)
    ctx.add("iqMul", [ctx.inputs[0], other], [y])
    return _finish(ctx, m, y, n_o)


def write_cat(ctx: Any) -> str:
    """iqCat with per-input scales (from the inputs' exponents) and ``dim``."""
    m: QCat = ctx.module
    n_o = m.out_q.eval_exponent()
    y = ctx.tensor(n_o)
    shape = ctx.shape(0)
    dim = m.dim + len(shape) if (m.dim < 0 and shape is not None) else m.dim
    ctx.add("iqCat", ctx.inputs, [y], {"dim": dim})
    return _finish(ctx, m, y, n_o)


WRITERS = {"builtin.Add": write_add, "builtin.Sub": write_add, "builtin.Mul": write_mul, "builtin.Cat": write_cat}
