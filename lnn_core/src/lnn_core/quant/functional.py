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

import functools
import math
from typing import Any

import torch

from . import kernels
from .observers import floor_exponent

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
    "exponent_for_absmax",
    "tensor_bounds",
    "absmax",
    "exact_grid",
    "cannot_saturate",
    "fake_quant_parts",
    "fake_quant_parts_torch",
    "fake_quant_parts_into",
    "tensor_bounds_torch",
    "ste_gradient",
    "fake_quant_sum",
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


@functools.cache  # a pure function of two hashable values, asked on every fake-quant
def exact_grid(dtype: torch.dtype, bits: int) -> bool:
    """Whether ``dtype`` holds every integer of ``[lo - 1, hi + 1]`` exactly (``(lo, hi) = qrange(bits)``), with
    margin: true for float32 up to 23 bits, float64 up to 52 bits, float16 up to 10 bits; false for bfloat16
    at 8 bits and for 32-bit biases in float32.
    """
    return (1 << (bits - 1)) + 1 <= 1.0 / torch.finfo(dtype).eps  # 1 / eps = 2**(digits - 1)


def cannot_saturate(bounds: tuple[float, float] | None, n: int, bits: int) -> bool:
    """Whether no element of a tensor whose ``(min, max)`` is ``bounds`` saturates in ``SAT_b(R(x * 2**n))``.

    The test is ``lo <= min * 2**n`` and ``max * 2**n <= hi - 1`` (exact: python floats hold these products
    of float32/float16 values by a power of two exactly; NaN answers False). Then every ``x * 2**n + 0.5``
    lies in ``[lo + 0.5, hi - 0.5]``; rounding it to the tensor's dtype is monotone and ``lo``, ``hi`` are
    integers, so its floor lies in ``[lo, hi]`` as the dtype holds them: the clamp is the identity and the
    clipping mask all true, in every dtype. Sufficient, not necessary: the slow path computes the same.
    """
    if bounds is None:
        return False
    lo, hi = qrange(bits)
    s = 2.0**n
    return lo <= bounds[0] * s and bounds[1] * s <= hi - 1


def fake_quant_parts(x: torch.Tensor, n: int, bits: int, bounds: tuple[float, float] | None,
                     exact: bool = False) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    """The forward of every fake-quant autograd function: ``(out, clip, saved)``.

    ``out = SAT_b(R(x * 2**n)) / 2**n`` in ``x.dtype``; ``clip`` and ``saved`` are what
    :func:`ste_gradient` needs (keep ``saved`` with ``ctx.save_for_backward``). Call it with autograd
    off (inside ``Function.forward``). ``bounds`` are ``(min, max)`` of ``x``, found here when None and
    ``x`` is on the CPU (on a GPU that would cost a host sync). Three paths compute the same function:

    - nothing saturates (:func:`cannot_saturate`, the common case; always for weights, whose floor-rule
      exponent never clips): ``R`` and the rescale only, and an identity gradient (the mask is all true);
    - the dtype holds the integers exactly (:func:`exact_grid`): ``R``, ``SAT``, rescale; the unclamped
      integers ``q`` are kept, and the backward zeroes the gradient outside ``lo <= q <= hi`` in one fused
      kernel (hardtanh's backward with the thresholds ``lo - 1`` and ``hi + 1``: ``q`` holds integers);
    - otherwise (bfloat16, 32-bit biases in float32): an explicit boolean mask compared in ``x.dtype``.

    ``R`` comes in two forms. The default, for activations, is ``floor(x * 2**n + 0.5)`` in ``x.dtype``: one
    pass (``rsub`` with ``alpha = -2**n``; scaling by a power of two is exact, so a fused multiply-add gives
    the same bits as the product rounded first and 0.5 added after). It is the arithmetic of the chip's
    Quant op and of :class:`~lnn_core.quant.quantizers.ActQuantizer` in eval, and it differs from the
    exact ``R`` only where adding 0.5 rounds in ``x.dtype`` (``x * 2**n`` within half an ulp below a tie,
    e.g. ``0.5 - 2**-25`` in float32, or an odd integer above ``2**23``). ``exact=True``, for weights and
    biases (small tensors), adds the 0.5 in float64, which holds ``x * 2**n + 0.5`` exactly for every
    float32 ``x`` (or rounds it without moving its floor, for ``|x * 2**n| < 2**-29``): the integers of
    :func:`quantize`, so training uses exactly the parameters that eval, the export and the chip use.
    """
    if bounds is None and x.device.type == "cpu":  # on CPU the mask kernels cost more than finding the bounds
        bounds = tensor_bounds(x)
    parts = fake_quant_parts_into(x, None, n, bits, bounds, exact)  # the same values in one C pass, where it can
    return parts if parts is not None else fake_quant_parts_torch(x, n, bits, bounds, exact)


def fake_quant_parts_into(x: torch.Tensor, out: torch.Tensor | None, n: int, bits: int,
                          bounds: tuple[float, float] | None,
                          exact: bool = False) -> tuple[torch.Tensor, Any, torch.Tensor | None] | None:
    """:func:`fake_quant_parts` by the C kernel (:mod:`~lnn_core.quant.kernels`), the result written into ``out``
    (``x`` itself for an in-place fake-quant; None: a fresh tensor); None where the kernel does not take the case (a
    tensor it does not take, or a boolean mask needed), which the caller then computes otherwise. ``bounds`` are
    ``x``'s ``(min, max)``."""
    if not kernels.usable(x):
        return None
    free = cannot_saturate(bounds, n, bits)
    if not (free or exact_grid(x.dtype, bits)):
        return None
    lo, hi = qrange(bits)
    out = torch.empty_like(x) if out is None else out
    q = None if free else torch.empty_like(x)
    kernels.round_into(x, out, q, n, lo, hi, not free, exact)
    return (out, None, None) if free else (out, (lo - 1.0, hi + 1.0), q)


def fake_quant_parts_torch(x: torch.Tensor, n: int, bits: int, bounds: tuple[float, float] | None,
                           exact: bool = False) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    """:func:`fake_quant_parts` in torch operations only: the reference the C kernels equal, and the path of every
    tensor they do not take (GPU, other dtypes, large tensors, no compiled kernels)."""
    if bounds is None and x.device.type == "cpu":
        bounds = tensor_bounds_torch(x)
    scale = 2.0**n
    if exact:  # float64 holds every float32 x * 2**n + 0.5 exactly: the exact R, back in x's dtype below
        q = torch.rsub(x.double(), 0.5, alpha=-scale).floor_().to(x.dtype)
    else:
        q = torch.rsub(x, 0.5, alpha=-scale).floor_()
    if cannot_saturate(bounds, n, bits):
        return q.mul_(1.0 / scale), None, None
    lo, hi = qrange(bits)
    out = q.clamp(lo, hi).mul_(1.0 / scale)
    if exact_grid(x.dtype, bits):
        return out, (lo - 1.0, hi + 1.0), q
    return out, "mask", (q >= lo) & (q <= hi)


def ste_gradient(grad: torch.Tensor, clip: Any, saved: torch.Tensor | None) -> torch.Tensor:
    """Straight-through gradient of :func:`fake_quant_parts`: ``grad`` where ``lo <= q <= hi``, else 0.

    ``clip`` is None (nothing saturated: the gradient passes), ``"mask"`` (``saved`` is the boolean mask)
    or the open interval ``(lo - 1, hi + 1)`` that the integers ``saved`` must lie in. One difference from
    a boolean mask, on inputs that are NaN only: hardtanh's backward passes their gradient on in its scalar loop (and
    zeroes it in its vector loop; the C kernel of :func:`~lnn_core.quant.kernels.ste_into` passes it everywhere).
    """
    if clip is None:
        return grad
    if clip == "mask":
        return grad * saved
    t_lo, t_hi = clip
    return torch.ops.aten.hardtanh_backward(grad, saved, t_lo, t_hi)


class _FakeQuant(torch.autograd.Function):
    """``SAT_b(R(x * 2**n)) / 2**n`` with the straight-through estimator: the gradient passes where
    the value was not saturated and is zero where it was (the usual clipping mask)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, n: int, bits: int,  # type: ignore[override]
                bounds: tuple[float, float] | None, exact: bool) -> torch.Tensor:
        out, ctx.clip, saved = fake_quant_parts(x, n, bits, bounds, exact)
        ctx.save_for_backward(saved)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (saved,) = ctx.saved_tensors
        return ste_gradient(grad, ctx.clip, saved), None, None, None, None


def fake_quant(x: torch.Tensor, n: int, bits: int, bounds: tuple[float, float] | None = None,
               exact: bool = False) -> torch.Tensor:
    """Training form of :func:`quantize`: returns ``q / 2**n`` as ``x.dtype``, STE gradient.

    :param bounds: ``(min, max)`` of ``x`` when the caller already has them (an observer does). They only
        choose among equivalent code paths: the result does not depend on them.
    :param exact: round exactly half-up (the integers of :func:`quantize`) rather than in ``x.dtype`` as the
        chip's Quant op does; see :func:`fake_quant_parts`. Weights and biases use it.
    """
    if x.requires_grad and torch.is_grad_enabled():
        return _FakeQuant.apply(x, n, bits, bounds, exact)
    return fake_quant_parts(x, n, bits, bounds, exact)[0]  # no gradient to carry: no autograd node needed


class _FakeQuantSum(torch.autograd.Function):
    """Training form of iqAdd/iqSub, see :func:`fake_quant_sum`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, n: int, sign: int, lo: int, hi: int,  # type: ignore[override]
                bits: int, bounds: tuple[float, float] | None) -> torch.Tensor:
        ctx.sign = sign
        scale = 2.0**n
        if kernels.usable_pair(x, y) and exact_grid(x.dtype, bits):
            # one C pass; each rounded operand is within 0.5 of its value, so the sum of the two within 1 of the float
            # sum's (whose own rounding is far below 0.5 at these magnitudes): no saturation possible, no mask kept
            free = bounds is not None and lo <= bounds[0] * scale - 1.5 and bounds[1] * scale + 1.5 <= hi
            out = torch.empty_like(x)
            t = None if free else torch.empty_like(x)
            kernels.sum_round_into(x, y, out, t, n, sign, lo, hi)
            ctx.clip = None if free else (lo - 1.0, hi + 1.0)
            ctx.save_for_backward(t)
            return out
        t = torch.rsub(x, 0.5, alpha=-scale).floor_()  # R(x * 2**n), as in fake_quant_parts
        qy = torch.rsub(y, 0.5, alpha=-scale).floor_()
        t = t.add_(qy) if sign > 0 else t.sub_(qy)
        out = t.clamp(lo, hi).mul_(1.0 / scale)
        if exact_grid(x.dtype, bits):
            ctx.clip = (lo - 1.0, hi + 1.0)
            ctx.save_for_backward(t)
        else:
            ctx.clip = "mask"
            ctx.save_for_backward((t >= lo) & (t <= hi))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (saved,) = ctx.saved_tensors
        g = ste_gradient(grad, ctx.clip, saved)
        return g, (g if ctx.sign > 0 else -g), None, None, None, None, None, None


def fake_quant_sum(x: torch.Tensor, y: torch.Tensor, n: int, sign: int, lo: int, hi: int, bits: int,
                   bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """Training form of iqAdd (``sign`` 1) and iqSub (``sign`` -1): ``clamp(R(x*2**n) +- R(y*2**n), lo, hi) / 2**n``.

    Each operand is rounded on its own, then summed exactly and saturated once, as the chip does.
    ``(lo, hi)`` are the integer output bounds (``qrange(bits)`` narrowed by an activation clip). The
    gradient is the clipping mask of the integer sum, to ``x`` and (with the sign) to ``y``.

    Same values and gradients as ``(ste_round(x * s) + ste_round(y * s)).clamp(lo, hi) / s``, with seven
    elementwise passes instead of nine and one fused backward kernel instead of seven (four boolean); one C pass
    where the kernels take the tensors (:mod:`~lnn_core.quant.kernels`). ``bounds``: ``(min, max)`` of the float
    ``x + sign y`` when the caller has them (its observer did): where they prove that nothing saturates, the node
    keeps no mask and its gradient passes unchanged (the same gradient).
    """
    return _FakeQuantSum.apply(x, y, n, sign, lo, hi, bits, bounds)


class _SteRound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.add(v, 0.5).floor_()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad


def ste_round(v: torch.Tensor) -> torch.Tensor:
    """``R(v)`` forward, identity gradient."""
    return _SteRound.apply(v)


def tensor_bounds(x: torch.Tensor) -> tuple[float, float] | None:
    """``(min, max)`` of ``x`` as python floats (one pass, no autograd); None for an empty tensor."""
    if kernels.usable(x):
        return kernels.bounds(x)
    return tensor_bounds_torch(x)


def tensor_bounds_torch(x: torch.Tensor) -> tuple[float, float] | None:
    """:func:`tensor_bounds` in torch operations only (the reference of the C kernel)."""
    if x.numel() == 0:
        return None
    mn, mx = torch.aminmax(x.detach())
    if x.device.type == "cpu":
        return mn.item(), mx.item()
    lo, hi = torch.stack((mn, mx)).tolist()  # one device-to-host copy
    return lo, hi


def exponent_for_absmax(m: float, bits: int, lo: int, hi: int) -> int:
    """The floor rule on a known ``m = max|w|`` (:func:`~.observers.floor_exponent`, the one implementation)."""
    return floor_exponent(m, bits, lo, hi)


def absmax(bounds: tuple[float, float] | None) -> float:
    """``max|x|`` from ``(min, max)`` (NaN when either is NaN, 0.0 for an empty tensor)."""
    if bounds is None:
        return 0.0
    mn, mx = bounds
    if math.isnan(mn) or math.isnan(mx):
        return math.nan
    return max(-mn, mx)


def weight_exponent(w: torch.Tensor, bits: int, lo: int, hi: int) -> int:
    """The floor rule for weights: ``n = floor(log2((2**(b-1) - 1) / max|w|))``, clamped to [lo, hi].

    The largest weight is never clipped. An all-zero tensor gets ``hi``.
    """
    return exponent_for_absmax(absmax(tensor_bounds(w)), bits, lo, hi)
