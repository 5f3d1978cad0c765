"""Sigmoid and tanh (spec/int8-seq-ops.md 2.6, 2.7): ``torch.sigmoid``, ``F.sigmoid``, ``nn.Sigmoid``,
``x.sigmoid()`` (also ``torch.special.expit`` and the in-place forms), and the same for tanh.

On the chip an int8 tensor goes int8 -> Requant -> int16 -> iqSigmoid / iqTanh -> int8 at exponent 7
(:mod:`.pwl` has the integers). The input-exponent rule of the kernels (int16 exponent >= 11, i.e. int8
exponent >= 3) is met by the choice of the Requant, never by refusing the model: an int8 input at exponent
``3 <= n <= 11`` is widened to int16 at exactly 11 (the kernels then neither shift nor need a workspace),
``n > 11`` x256 to ``n + 8`` (linger's form); below 3 it is first requantized to int8 at exponent 3 (saturating
at +-16, where both functions are already at their int8 limits), then widened to 11.

The whole chain is a function of the int8 input and its exponent: 256 values. The QAT module computes it as
that table, in training and eval alike, so training sees exactly the chip's integers and eval returns them
(``q / 2**7``). The gradient is the float function's at the float input (straight-through, as linger). The
output quantizer has the fixed exponent 7 (:class:`~lnn_core.quant.observers.FixedExponent`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lnn_core.errors import LnnError
from lnn_core.ops import OpFamily
from lnn_core.quant.observers import FixedExponent
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.quantizers import ActQuantizer
from lnn_core.quant.rewrite import BuildContext, Built

from .pwl import OUT_EXPONENT, int8_table, requant_plan

__all__ = ["QActivation", "FAMILIES", "WRITERS"]

_FLOAT = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}


class _TableLookup(torch.autograd.Function):
    """``table[q8 + 128]`` forward; the float function's derivative at ``x`` backward (STE)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, q8: torch.Tensor, table: torch.Tensor, kind: str) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.kind = kind
        return table[q8]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        f = _FLOAT[ctx.kind](x)
        d = f * (1.0 - f) if ctx.kind == "sigmoid" else 1.0 - f * f
        return grad * d, None, None, None


class QActivation(QModule):
    """``sigmoid(x)`` / ``tanh(x)`` on an int8 input: the chip's Requant + iqSigmoid / iqTanh, int8 out at ``2**-7``."""

    def __init__(self, op_id: str, kind: str, *, recipe: Any, stage: str) -> None:
        super().__init__(recipe, act_bits=8, stage=stage, clamps=())
        self.op_id = op_id  # type: ignore[misc]
        self.kind = kind
        self.out_q = ActQuantizer(8, recipe, observer=FixedExponent(OUT_EXPONENT))
        self._tables: dict[tuple[int, torch.device], torch.Tensor] = {}  # a cache of pure functions, not state

    def extra_repr(self) -> str:
        return f"kind={self.kind}"

    def table(self, n8: int, device: torch.device) -> torch.Tensor:
        """The outputs ``q / 2**7`` (float32) for the int8 inputs ``-128..127`` at exponent ``n8``."""
        key = (n8, device)
        if key not in self._tables:
            t = torch.from_numpy(int8_table(self.kind, n8).astype(np.float32) / 2.0**OUT_EXPONENT)
            self._tables[key] = t.to(device)
        return self._tables[key]

    def _check_input(self) -> int:
        if self.in_bits(0) != 8:
            raise LnnError(
                f"{self.op_id} ({self.kind}): the input has {self.in_bits(0)} bits",
                {"rule": "the chip's sigmoid/tanh read an int8 tensor through a Requant to int16",
                 "limit": "8-bit input", "actual": f"{self.in_bits(0)}-bit input"},
                "give the layer that feeds this op act_bits=8 (QuantConfig.by_path)",
                limit=8, actual=self.in_bits(0))
        return self.in_exponent(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantizing:
            return self.out_q(_FLOAT[self.kind](x))
        n8 = self._check_input()
        if self.training and self.out_q.observe:
            self.out_exponent(x.detach())  # FixedExponent: records 2**7 for this step's consumers
        table = self.table(n8, x.device)
        with torch.no_grad():
            idx = torch.floor(x.detach().float() * 2.0**n8 + 0.5).clamp_(-128, 127).to(torch.long).add_(128)
        if self.training and x.requires_grad and torch.is_grad_enabled():
            return _TableLookup.apply(x, idx, table, self.kind).to(x.dtype)
        return table[idx].to(x.dtype)

    def op_attrs(self) -> dict[str, Any]:
        return {**super().op_attrs(), "kind": self.kind}


def _build(op_id: str, kind: str):
    def build(ctx: BuildContext) -> Built | None:
        node = ctx.node
        if "out" in node.kwargs:
            return None
        src = node.args[0] if node.args else node.kwargs.get("input")
        if src is None:
            return None
        return Built(QActivation(op_id, kind, recipe=ctx.recipe, stage=ctx.stage), [src])

    return build


FAMILIES = [
    OpFamily(id="builtin.Sigmoid", kind="compute", modules=(nn.Sigmoid,),
             functions=(torch.sigmoid, F.sigmoid, torch.special.expit, torch.sigmoid_),
             methods=("sigmoid", "sigmoid_"), build=_build("builtin.Sigmoid", "sigmoid"),
             description="sigmoid: Requant int8 -> int16, iqSigmoid (16-segment PWL), int8 out at 2^-7"),
    OpFamily(id="builtin.Tanh", kind="compute", modules=(nn.Tanh,), functions=(torch.tanh, F.tanh, torch.tanh_),
             methods=("tanh", "tanh_"), build=_build("builtin.Tanh", "tanh"),
             description="tanh: Requant int8 -> int16, iqTanh (16-segment PWL), int8 out at 2^-7"),
]


# -- IR ----------------------------------------------------------------------------------------------


def write_activation(ctx: Any) -> str:
    """``Requant`` to int16 (one, or two when the int8 exponent is below 3; :func:`.pwl.requant_plan`), then
    ``iqSigmoid`` / ``iqTanh`` writing int8 at exponent 7 (the node form of linger 1.1.1, spec 2.6.3)."""
    m: QActivation = ctx.module
    x, n = ctx.inputs[0], ctx.exponent(0)
    shape = ctx.shape(0)
    for bits, n_out in requant_plan(n):
        y = ctx.tensor(n_out, f"int{bits}", shape, suffix=f".requant{bits}")
        ctx.add("Requant", [x], [y], {"data_bits": 8, "o_bits": bits}, suffix=f".requant{bits}")
        x, n = y, n_out
    out = ctx.tensor(m.out_q.eval_exponent(), "int8")
    ctx.add("iqSigmoid" if m.kind == "sigmoid" else "iqTanh", [x], [out])
    return out


WRITERS = {"builtin.Sigmoid": write_activation, "builtin.Tanh": write_activation}
