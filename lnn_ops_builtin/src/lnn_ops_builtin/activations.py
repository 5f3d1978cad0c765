"""ReLU (exact on the integer grid: a passthrough) and the clipping family ReLU6 / Hardtanh /
clamp (spec 3.12-3.13)::

    relu:  y = max(q, 0)
    clip:  y = min(max(q, lo_q), hi_q),  lo_q = SAT_8(R(lo * 2**n_x)), hi_q = SAT_8(R(hi * 2**n_x))

Both keep the input exponent. An op whose every consumer is a ReLU (or ReLU6) observes only its
positive range ("ahead-relu", spec 6.4).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lnn_core.ops import OpFamily
from lnn_core.quant.functional import qrange
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.rewrite import BuildContext, Built

__all__ = ["QClip", "FAMILIES"]


class QClip(QModule):
    """``clamp(x, lo, hi)`` with the bounds quantized at the input exponent."""

    def __init__(self, op_id: str, lo: float | None, hi: float | None, *, recipe: Any, act_bits: int,
                 stage: str) -> None:
        super().__init__(recipe, act_bits=act_bits, stage=stage, clamps=())
        self.op_id = op_id  # type: ignore[misc]
        self.lo, self.hi = lo, hi

    @property
    def drops_negative(self) -> bool:
        """No negative output: a producer feeding only this op observes its positive range."""
        return self.lo is not None and self.lo >= 0

    def int_bounds(self, n: int) -> tuple[int, int]:
        qlo, qhi = qrange(self.act_bits)
        lo = qlo if self.lo is None else max(qlo, min(qhi, math.floor(self.lo * 2.0**n + 0.5)))
        hi = qhi if self.hi is None else max(qlo, min(qhi, math.floor(self.hi * 2.0**n + 0.5)))
        return lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantizing:
            return torch.clamp(x, self.lo, self.hi)
        n = self.in_exponent(0)
        lo, hi = self.int_bounds(n)
        return torch.clamp(x, lo * 2.0**-n, hi * 2.0**-n)

    def op_attrs(self) -> dict[str, Any]:
        return {**super().op_attrs(), "min": self.lo, "max": self.hi}


def _num(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    raise TypeError


def _clamp_sig(input, min=None, max=None):  # noqa: A002
    """Signature of torch.clamp."""


def _hardtanh_sig(input, min_val=-1.0, max_val=1.0, inplace=False):  # noqa: A002
    """Signature of F.hardtanh."""


def _relu6_sig(input, inplace=False):  # noqa: A002
    """Signature of F.relu6."""


def _build_clip(op_id: str):
    def build(ctx: BuildContext) -> Built | None:
        kw = dict(recipe=ctx.recipe, act_bits=ctx.layer.act_bits, stage=ctx.stage)
        m = ctx.module
        try:
            if m is not None:
                lo, hi = (0.0, 6.0) if isinstance(m, nn.ReLU6) else (float(m.min_val), float(m.max_val))
                src = ctx.node.args[0]
            elif ctx.node.target is F.relu6:
                lo, hi, src = 0.0, 6.0, ctx.bind(_relu6_sig)["input"]
            elif ctx.node.target is F.hardtanh:
                a = ctx.bind(_hardtanh_sig)
                lo, hi, src = _num(a["min_val"]), _num(a["max_val"]), a["input"]
            else:
                a = ctx.bind(_clamp_sig)
                lo, hi, src = _num(a["min"]), _num(a["max"]), a["input"]
        except TypeError:
            return None  # tensor-valued bounds have no fixed integer form
        return Built(QClip(op_id, lo, hi, **kw), [src])

    return build


FAMILIES = [
    OpFamily(id="builtin.ReLU", kind="passthrough", modules=(nn.ReLU,), functions=(F.relu, torch.relu, F.relu_,
             torch.relu_), methods=("relu", "relu_"), relu=True, description="max(x, 0), exact on int8"),
    OpFamily(id="builtin.ReLU6", kind="stateless", modules=(nn.ReLU6,), functions=(F.relu6,),
             build=_build_clip("builtin.ReLU6"), relu=True, description="clip to [0, 6] at the input scale"),
    OpFamily(id="builtin.Clip", kind="stateless", modules=(nn.Hardtanh,),
             functions=(torch.clamp, torch.clip, F.hardtanh), methods=("clamp", "clip", "clamp_", "clip_"),
             build=_build_clip("builtin.Clip"), description="clamp with number bounds at the input scale"),
]


# -- IR ----------------------------------------------------------------------------------------------


def write_relu(ctx: Any) -> str:
    n = ctx.exponent(0)
    info = ctx.info(0)
    y = ctx.tensor(n, info.dtype)
    ctx.add("Relu", ctx.inputs[:1], [y], domain="")
    return y


def write_clip(ctx: Any) -> str:
    """Clip with int8 scalar bounds quantized at the input exponent (the linger 1 ReLU6 form)."""
    m: QClip = ctx.module
    lo, hi = m.int_bounds(ctx.exponent(0))
    return ctx.clip(ctx.inputs[0], lo, hi, suffix="")


WRITERS = {"builtin.ReLU": write_relu, "builtin.ReLU6": write_clip, "builtin.Clip": write_clip}
