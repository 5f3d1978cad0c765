"""Integer primitives of the power-of-two arithmetic and their straight-through fake-quant forms.

Notation (spec/int8-ops.md section 1.2): a tensor with exponent ``n`` stores ``q = R(x * 2**n)``
and means ``x = q / 2**n``.

- ``R(v) = floor(v + 0.5)``: half-up rounding; ties go toward +inf (``R(-2.5) = -2``).
- ``SHR(v, s)``: ``s > 0``: ``floor(v / 2**s + 0.5)``; ``s = 0``: ``v``; ``s < 0``: ``v * 2**-s``.
- ``SAT_b(v)``: clamp to ``[-2**(b-1), 2**(b-1) - 1]``.
- ``RQ_b(acc, s) = SAT_b(SHR(acc, s))``: the one requantizer of every accumulating op.

The exact functions work on float64 tensors holding integers (exact below 2**53, far above any
int8 accumulator) or on int64 tensors. The ``fake_*`` functions are their training forms on
float tensors, with straight-through gradients.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "qrange",
    "round_half_up",
    "shr",
    "saturate",
    "requant",
    "quantize",
    "fake_quant",
    "ste_round",
    "weight_exponent",
]


def qrange(bits: int) -> tuple[int, int]:
    """``(lo, hi)`` of a signed ``bits``-bit integer."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def round_half_up(v: torch.Tensor) -> torch.Tensor:
    """``R(v) = floor(v + 0.5)``."""
    return torch.floor(v + 0.5)


def shr(v: torch.Tensor, s: int) -> torch.Tensor:
    """``SHR(v, s)`` on an integer-valued float64 tensor or an int64 tensor."""
    if s == 0:
        return v
    if v.dtype in (torch.int64, torch.int32):
        if s > 0:
            return (v + (1 << (s - 1))) >> s  # arithmetic shift = floor division by 2**s
        return v << (-s)
    if s > 0:
        return torch.floor(v * (2.0 ** -s) + 0.5)
    return v * (2.0 ** -s)


def saturate(v: torch.Tensor, bits: int) -> torch.Tensor:
    lo, hi = qrange(bits)
    return v.clamp(lo, hi)


def requant(acc: torch.Tensor, s: int, bits: int) -> torch.Tensor:
    """``RQ_b(acc, s) = SAT_b(SHR(acc, s))``."""
    return saturate(shr(acc, s), bits)


def quantize(x: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """``SAT_b(R(x * 2**n))`` computed in float64 (exact for float32 ``x``); returns float64 integers."""
    return saturate(round_half_up(x.detach().double() * (2.0 ** n)), bits)


class _FakeQuant(torch.autograd.Function):
    """``SAT_b(R(x * 2**n)) / 2**n`` with the straight-through estimator: the gradient passes where
    the value was not saturated and is zero where it was (the usual clipping mask)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, lo: float, hi: float) -> torch.Tensor:  # type: ignore[override]
        q = torch.mul(x, scale).add_(0.5).floor_()
        mask = (q >= lo) & (q <= hi)
        ctx.save_for_backward(mask)
        return q.clamp_(lo, hi).mul_(1.0 / scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None


def fake_quant(x: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """Training form of :func:`quantize`: returns ``q / 2**n`` as ``x.dtype``, STE gradient."""
    lo, hi = qrange(bits)
    return _FakeQuant.apply(x, 2.0 ** n, float(lo), float(hi))


class _SteRound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.floor(v + 0.5)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad


def ste_round(v: torch.Tensor) -> torch.Tensor:
    """``R(v)`` forward, identity gradient."""
    return _SteRound.apply(v)


def weight_exponent(w: torch.Tensor, bits: int, lo: int, hi: int) -> int:
    """The floor rule for weights: ``n = floor(log2((2**(b-1) - 1) / max|w|))``, clamped to [lo, hi].

    The largest weight is never clipped. An all-zero tensor gets ``hi``.
    """
    m = float(w.detach().abs().max()) if w.numel() else 0.0
    if not m > 0.0 or not math.isfinite(m):
        return hi
    top = (1 << (bits - 1)) - 1
    n = math.floor(math.log2(top / m))
    while m * 2.0**n > top:  # guard the log2 against rounding at exact powers of two
        n -= 1
    while m * 2.0 ** (n + 1) <= top:
        n += 1
    return max(lo, min(hi, n))
