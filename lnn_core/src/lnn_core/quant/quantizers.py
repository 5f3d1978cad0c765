"""Activation quantizer (observer + fake-quant) and the weight/bias quantization steps.

The observer and the fake-quant are switched independently (``observe`` / ``quant``), as in
torch.ao, but as plain attributes rather than buffers: they describe the stage (constrain or
QAT), not the trained state, so they never travel through a checkpoint.

State (all buffers, all in the state_dict, versioned through ``_version``):

- ``running``: the EMA statistic of the recipe's ``act_rule`` (float32);
- ``exponent``: the exponent used by the latest forward (int64); in eval it is recomputed from
  ``running`` (and the op's cap), so it is frozen as long as ``running`` is;
- ``num_batches``: training steps observed (int64).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from .functional import fake_quant, qrange, weight_exponent
from .recipes import Recipe

__all__ = ["ActQuantizer", "quantize_weight", "quantize_bias", "fake_quant_weight", "fake_quant_bias"]


def _r(v: float) -> int:
    return math.floor(v + 0.5)


def _dist_max(value: float) -> float:
    """Max over all ranks when running under torch.distributed (keeps every rank's state identical)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())
    return value


class ActQuantizer(nn.Module):
    """Per-tensor power-of-two activation quantizer.

    :param bits: integer width of the tensor.
    :param recipe: supplies the statistics rule, momentum and exponent bounds.
    :param positive: observe only the positive part (the op feeds a ReLU: "ahead-relu").
    """

    _version = 1

    def __init__(self, bits: int, recipe: Recipe, *, positive: bool = False) -> None:
        super().__init__()
        self.bits = int(bits)
        self.rule = recipe.act_rule
        self.momentum = float(recipe.momentum)
        self.exp_lo, self.exp_hi = recipe.act_exponent_range
        self.positive = positive
        self.observe = True
        self.quant = True
        self.register_buffer("running", torch.zeros((), dtype=torch.float32))
        self.register_buffer("exponent", torch.tensor(self.exp_hi, dtype=torch.int64))
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, rule={self.rule}, positive={self.positive}, "
                f"exponent={int(self.exponent)}, observe={self.observe}, quant={self.quant}")

    # -- exponent rules -----------------------------------------------------------------------
    def _clamp(self, n: int, cap: int | None) -> int:
        n = max(self.exp_lo, min(self.exp_hi, n))
        if cap is not None:
            n = min(n, cap)
        return n

    def _from_running(self, r: float) -> int:
        if not r > 0.0:
            return self.exp_hi
        top = (1 << (self.bits - 1)) if self.rule == "ema_max" else (1 << (self.bits - 1)) - 1
        return _r(math.log2(top / r))

    def _batch_stat(self, x: torch.Tensor) -> float:
        if x.numel() == 0:
            return 0.0
        lo, hi = torch.aminmax(x.detach())
        m = max(float(hi), 0.0) if self.positive else max(-float(lo), float(hi))
        return _dist_max(m)

    @torch.no_grad()
    def update(self, x: torch.Tensor, cap: int | None = None) -> int:
        """Observe one training batch and return the exponent this step uses."""
        m = self._batch_stat(x)
        first = int(self.num_batches) == 0
        if self.rule == "ema_max":
            r = m if first else (1.0 - self.momentum) * float(self.running) + self.momentum * m
            n = self._clamp(self._from_running(r), cap)
        else:  # ema_threshold: per-batch floor rule, EMA of the snapped threshold
            top = (1 << (self.bits - 1)) - 1
            nb = self._clamp(math.floor(math.log2(top / m)) if m > 0 else self.exp_hi, cap)
            r = (1.0 - self.momentum) * float(self.running) + self.momentum * (top / 2.0**nb)
            n = nb
        self.running.fill_(r)
        self.num_batches.add_(1)
        self.exponent.fill_(n)
        return n

    def eval_exponent(self, cap: int | None = None) -> int:
        """The frozen exponent: a function of ``running`` (and the op's cap) only."""
        n = self._clamp(self._from_running(float(self.running)), cap)
        if int(self.exponent) != n:
            self.exponent.fill_(n)
        return n

    def current(self) -> int:
        """The exponent of the tensor as last produced (what consumers read)."""
        return int(self.exponent)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cap: int | None = None) -> torch.Tensor:
        """Observe/fake-quantize in training; quantize exactly (float32 arithmetic, as the chip's
        Quant op) in eval."""
        if self.training:
            if self.observe:
                n = self.update(x, cap)
            else:
                n = self.eval_exponent(cap)
            return fake_quant(x, n, self.bits) if self.quant else x
        if not self.quant:
            return x
        n = self.eval_exponent(cap)
        lo, hi = qrange(self.bits)
        q = torch.floor(x.float() * (2.0**n) + 0.5).clamp_(lo, hi)
        return q.mul_(2.0**-n).to(x.dtype)


def quantize_weight(w: torch.Tensor, bits: int, recipe: Recipe) -> tuple[torch.Tensor, int]:
    """``(q, n)``: integer weights (float64 tensor) by the floor rule, and their exponent."""
    lo, hi = recipe.weight_exponent_range
    n = weight_exponent(w, bits, lo, hi)
    qlo, qhi = qrange(bits)
    return torch.floor(w.detach().double() * 2.0**n + 0.5).clamp_(qlo, qhi), n


def quantize_bias(b: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """``SAT_bits(R(b * 2**n))`` as a float64 tensor of integers."""
    qlo, qhi = qrange(bits)
    return torch.floor(b.detach().double() * 2.0**n + 0.5).clamp_(qlo, qhi)


def fake_quant_weight(w: torch.Tensor, bits: int, recipe: Recipe) -> tuple[torch.Tensor, int]:
    lo, hi = recipe.weight_exponent_range
    n = weight_exponent(w, bits, lo, hi)
    return fake_quant(w, n, bits), n


def fake_quant_bias(b: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    return fake_quant(b, n, bits)
