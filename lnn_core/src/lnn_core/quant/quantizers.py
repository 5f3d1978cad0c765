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

from .functional import (
    absmax,
    exponent_for_absmax,
    fake_quant,
    fake_quant_parts,
    qrange,
    ste_gradient,
    tensor_bounds,
    weight_exponent,
)
from .recipes import Recipe

__all__ = ["ActQuantizer", "quantize_weight", "quantize_bias", "fake_quant_weight", "fake_quant_bias",
           "fake_quant_weight_bias"]


def _r(v: float) -> int:
    return math.floor(v + 0.5)


def _dist_max(value: float) -> float:
    """Max over all ranks when running under torch.distributed (keeps every rank's state identical).

    Every rank calls it once per observed tensor, in the same order, whatever its data (an empty batch
    contributes 0.0), so the collectives always match up.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":  # NCCL reduces GPU tensors only
            device = torch.device("cuda", torch.cuda.current_device())
        t = torch.tensor([value], dtype=torch.float64, device=device)
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

    def _batch_stat(self, bounds: tuple[float, float] | None) -> float:
        """The statistic of one batch, ``max|x|`` (``max(x, 0)`` when positive), max-reduced over ranks."""
        if bounds is None:
            m = 0.0
        else:
            lo, hi = bounds
            m = max(hi, 0.0) if self.positive else max(-lo, hi)
        return _dist_max(m)

    def observe_bounds(self, bounds: tuple[float, float] | None, cap: int | None = None) -> int:
        """Observe one training batch given its ``(min, max)`` (None when empty); return the exponent it uses."""
        m = self._batch_stat(bounds)
        seen = int(self.num_batches)
        first = seen == 0
        if self.rule == "ema_max":
            r = m if first else (1.0 - self.momentum) * float(self.running) + self.momentum * m
            n = self._clamp(self._from_running(r), cap)
        else:  # ema_threshold: per-batch floor rule, EMA of the snapped threshold
            top = (1 << (self.bits - 1)) - 1
            nb = self._clamp(math.floor(math.log2(top / m)) if m > 0 else self.exp_hi, cap)
            r = (1.0 - self.momentum) * float(self.running) + self.momentum * (top / 2.0**nb)
            n = nb
        self.running.fill_(r)
        self.num_batches.fill_(seen + 1)
        self.exponent.fill_(n)
        return n

    @torch.no_grad()
    def update(self, x: torch.Tensor, cap: int | None = None) -> int:
        """Observe one training batch and return the exponent this step uses."""
        return self.observe_bounds(tensor_bounds(x), cap)

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
            if not self.quant:
                if self.observe:
                    self.update(x, cap)
                return x
            if not self.observe:
                return fake_quant(x, self.eval_exponent(cap), self.bits)
            if x.requires_grad and torch.is_grad_enabled():
                return _ObservedFakeQuant.apply(x, self, cap)
            bounds = tensor_bounds(x)  # no gradient to carry (the model's input): no autograd node needed
            return fake_quant_parts(x, self.observe_bounds(bounds, cap), self.bits, bounds)[0]
        if not self.quant:
            return x
        n = self.eval_exponent(cap)
        lo, hi = qrange(self.bits)
        q = torch.floor(x.float() * (2.0**n) + 0.5).clamp_(lo, hi)
        return q.mul_(2.0**-n).to(x.dtype)


class _ObservedFakeQuant(torch.autograd.Function):
    """Observe + fake-quantize in one autograd node: the training step of an observing ActQuantizer.

    The forward runs with autograd off, so the statistics pass (one ``aminmax``) records nothing, and its
    ``(min, max)`` serve twice: for the running statistic, and to prove that nothing saturates (then the
    fake-quant skips the clamp and the gradient mask). Same result as ``update`` then ``fake_quant``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, quantizer: ActQuantizer, cap: int | None) -> torch.Tensor:  # type: ignore[override]
        bounds = tensor_bounds(x)
        n = quantizer.observe_bounds(bounds, cap)
        out, ctx.clip, saved = fake_quant_parts(x, n, quantizer.bits, bounds)
        ctx.save_for_backward(saved)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (saved,) = ctx.saved_tensors
        return ste_gradient(grad, ctx.clip, saved), None, None


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
    """``(w_q, n)``: fake-quantized weights (STE) at the floor-rule exponent ``n`` (:func:`fake_quant_weight_bias`
    without a bias)."""
    w_q, _, n = fake_quant_weight_bias(w, None, 0, bits, recipe)
    return w_q, n


class _FakeQuantWeightBias(torch.autograd.Function):
    """An op's weight and bias fake-quantized in one autograd node (one python round trip, not two).

    The forward runs with autograd off, so finding ``max|w|`` for the exponent records nothing; the
    exponent leaves as a plain ``int`` output (no gradient).
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, b: torch.Tensor | None, n_x: int, bits: int,  # type: ignore[override]
                recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        lo, hi = recipe.weight_exponent_range
        bounds = tensor_bounds(w)
        n_w = exponent_for_absmax(absmax(bounds), bits, lo, hi)
        w_q, w_clip, w_saved = fake_quant_parts(w, n_w, bits, bounds, exact=True)
        b_q, b_clip, b_saved = None, None, None
        if b is not None:
            b_q, b_clip, b_saved = fake_quant_parts(b, n_x + n_w, recipe.bias_bits, None, exact=True)
        ctx.clips = (w_clip, b_clip)
        ctx.save_for_backward(w_saved, b_saved)
        return w_q, b_q, n_w

    @staticmethod
    def backward(ctx, grad_w: torch.Tensor, grad_b: torch.Tensor | None, _grad_n: None):  # type: ignore[override]
        w_saved, b_saved = ctx.saved_tensors
        w_clip, b_clip = ctx.clips
        grad_b = None if grad_b is None else ste_gradient(grad_b, b_clip, b_saved)
        return ste_gradient(grad_w, w_clip, w_saved), grad_b, None, None, None


def fake_quant_weight_bias(w: torch.Tensor, b: torch.Tensor | None, n_x: int, bits: int,
                           recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``(w_q, b_q, n_w)``, the training form of :func:`quantize_weight` and :func:`quantize_bias`: the weight at
    its floor-rule exponent ``n_w``, the bias (if any) at ``n_x + n_w`` and the recipe's ``bias_bits``, both
    rounded exactly (the integers eval exports), straight-through gradients, in one autograd node."""
    return _FakeQuantWeightBias.apply(w, b, n_x, bits, recipe)


def fake_quant_bias(b: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """Training form of :func:`quantize_bias` (STE), the same integers as :func:`quantize_bias`."""
    return fake_quant(b, n, bits, exact=True)
