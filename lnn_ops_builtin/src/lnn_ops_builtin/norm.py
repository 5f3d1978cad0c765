"""BatchNorm1d/2d: standalone (``BatchNorm2dInt``) or folded into the preceding conv/linear.

Standalone integer semantics (spec 3.8)::

    alpha = gamma / sqrt(running_var + eps)          one per-tensor exponent n_w (floor rule)
    beta' = beta - running_mean * alpha              b_q = SAT_32(R(beta' * 2**(n_x + n_w)))
    y_q   = RQ_8(x_q * alpha_q[c] + b_q[c], n_x + n_w - n_o)

Stage 1 trains the BatchNorm as usual (batch statistics, running statistics updated); stage 2
uses the running statistics, frozen, exactly as the chip will.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lnn_core.errors import ConfigError
from lnn_core.ops import OpFamily
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.quantizers import ActQuantizer, param_exponent
from lnn_core.quant.rewrite import BuildContext, Built

__all__ = ["QBatchNorm", "QFoldedBatchNorm", "FAMILIES", "train_batch_norm"]

_STATE = ("running_mean", "running_var", "num_batches_tracked")


def _adopt(dst: nn.Module, bn: nn.Module) -> None:
    """Register ``bn``'s parameters and buffers on ``dst`` under the same names (same objects)."""
    for name in ("weight", "bias"):
        p = getattr(bn, name, None)
        if p is not None:
            setattr(dst, name, p)
        else:
            dst.register_parameter(name, None)
    for name in _STATE:
        dst.register_buffer(name, getattr(bn, name, None))
    dst.eps = bn.eps
    dst.momentum = bn.momentum
    dst.num_features = bn.num_features
    dst.track_running_stats = bn.track_running_stats


def train_batch_norm(x: torch.Tensor, bn: nn.Module, training: bool) -> torch.Tensor:
    """``F.batch_norm`` with ``bn``'s parameters and nn.BatchNorm's bookkeeping: in training the
    batch counter advances and ``momentum=None`` means a cumulative average."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    use_batch = training and bn.track_running_stats
    if use_batch and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, use_batch, momentum, bn.eps)


def _needs_running_stats(bn: nn.Module, path: str) -> None:
    if getattr(bn, "running_var", None) is None:
        raise ConfigError(
            f"BatchNorm {path!r} has track_running_stats=False, so it has no fixed integer form",
            {"rule": "the chip applies a fixed per-channel scale and offset (running statistics)"},
            "construct the BatchNorm with track_running_stats=True", option="track_running_stats",
            value=False, valid=True)


class QFoldedBatchNorm(nn.Module):
    """A BatchNorm folded into the op before it: keeps its parameters at its path; identity forward."""

    op_id = "builtin.BatchNorm.folded"

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        _adopt(self, bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _alpha_beta(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    inv = torch.rsqrt(m.running_var + m.eps)
    alpha = m.weight * inv if m.weight is not None else inv
    beta = -m.running_mean * alpha
    if m.bias is not None:
        beta = beta + m.bias
    return alpha, beta


class QBatchNorm(QModule):
    """Standalone quantized BatchNorm (channel axis 1, any rank >= 2)."""

    op_id = "builtin.BatchNorm"

    def __init__(self, bn: nn.Module, *, op_id: str, recipe: Any, act_bits: int, weight_bits: int,
                 stage: str) -> None:
        super().__init__(recipe, act_bits=act_bits, weight_bits=weight_bits, stage=stage, clamps=("act",))
        self.op_id = op_id  # type: ignore[misc]
        _adopt(self, bn)
        self.has_weight = True
        self.out_q = ActQuantizer(act_bits, recipe, cap=self.output_cap)

    @torch.no_grad()
    def output_cap(self, exponent_of: Any) -> int:
        """``n_x + n_w`` from the current state: the cap source of ``out_q`` (what consumers read in eval)."""
        alpha, _ = _alpha_beta(self)
        return exponent_of(self.input_quantizers[0]) + param_exponent(alpha, self.weight_bits, self.recipe)

    def _shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (1, -1) + (1,) * (x.dim() - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantizing:
            y = train_batch_norm(x, self, self.training)
            return self.out_q(self.constrain_act(y))
        alpha, beta = _alpha_beta(self)
        n_x = self.in_exponent(0)
        if self.training:
            ((a_q, b_q, n_w),) = self.fake_quant_pairs([(alpha, beta)], [n_x])
            y = x * a_q.reshape(self._shape(x)) + b_q.reshape(self._shape(x))
            return self.finish_train(y, cap=n_x + n_w)
        with torch.no_grad():
            ((a_i, b_i, n_w),) = self.quantize_pairs([(alpha, beta)], [n_x])
            acc = (x.double() * 2.0**n_x) * a_i.reshape(self._shape(x)) + b_i.reshape(self._shape(x))
            return self.finish_exact(acc, n_x + n_w, cap=n_x + n_w)

    def integer_params(self) -> dict[str, Any]:
        alpha, beta = _alpha_beta(self)
        n_x = self.in_exponent(0)
        ((a_i, b_i, n_w),) = self.quantize_pairs([(alpha.detach(), beta.detach())], [n_x])
        return {"weight": a_i.to(torch.int64), "n_w": n_w, "bias": b_i.to(torch.int64), "n_x": n_x,
                "n_o": self.out_q.eval_exponent(cap=n_x + n_w)}

    def op_attrs(self) -> dict[str, Any]:
        attrs = super().op_attrs()
        attrs["num_features"] = self.num_features
        return attrs


def _build(op_id: str):
    def build(ctx: BuildContext) -> Built:
        bn = ctx.module
        _needs_running_stats(bn, ctx.path)
        if ctx.folded_into is not None:
            return Built(QFoldedBatchNorm(bn), [ctx.node.args[0]])
        return Built(QBatchNorm(bn, op_id=op_id, recipe=ctx.recipe, act_bits=ctx.layer.act_bits,
                                weight_bits=ctx.layer.weight_bits, stage=ctx.stage), [ctx.node.args[0]])

    return build


FAMILIES = [
    OpFamily(id="builtin.BatchNorm1d", kind="compute", modules=(nn.BatchNorm1d,), build=_build("builtin.BatchNorm1d"),
             foldable=True, description="batch norm over (N, C) or (N, C, L); folded into a preceding Conv1d"),
    OpFamily(id="builtin.BatchNorm2d", kind="compute", modules=(nn.BatchNorm2d,), build=_build("builtin.BatchNorm2d"),
             foldable=True, description="batch norm over (N, C, H, W); folded into a preceding Conv2d"),
]


def write_ir(ctx: Any) -> str:
    """BatchNorm2dInt ``[x, alpha int8 [C], beta int32 [C]]``; 2-D/3-D inputs are lifted to 4-D."""
    import numpy as np

    m: QBatchNorm = ctx.module
    p = m.integer_params()
    n_x, n_w, n_o = p["n_x"], p["n_w"], p["n_o"]
    x = ctx.inputs[0]
    shape = ctx.shape(0)
    rank = len(shape) if shape is not None else 4
    axes = [2, 3] if rank == 2 else [3] if rank == 3 else []
    if axes:
        lifted = None if shape is None else tuple(shape) + (1,) * len(axes)
        x4 = ctx.tensor(n_x, "int8", lifted, suffix=".unsqueeze")
        ctx.add("Unsqueeze", [x], [x4], {"axes": axes}, domain="", suffix=".unsqueeze")
        x = x4
    w = ctx.initializer("weight", p["weight"].numpy().astype(np.int8), n_w)
    b = ctx.initializer("bias", p["bias"].numpy().astype(np.int32), n_x + n_w)
    out4 = None if ctx.out_shape is None else tuple(ctx.out_shape) + (1,) * len(axes)
    y = ctx.tensor(n_o, "int8", out4, suffix=".out" if axes else "")
    ctx.add("BatchNorm2dInt", [x, w, b], [y], {"data_bits": 8, "parameter_bits": m.weight_bits, "o_bits": 8})
    if axes:
        y2 = ctx.tensor(n_o, "int8")
        ctx.add("Squeeze", [y], [y2], {"axes": axes}, domain="", suffix=".squeeze")
        y = y2
    clip = m.act_clip_int(n_o)
    return ctx.clip(y, *clip) if clip is not None else y


WRITERS = {"builtin.BatchNorm1d": write_ir, "builtin.BatchNorm2d": write_ir}
