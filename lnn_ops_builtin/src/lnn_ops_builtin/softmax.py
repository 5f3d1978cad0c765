"""Softmax and log-softmax over the last dimension (spec/int8-seq-ops.md 2.4, 2.5): ``F.softmax``,
``torch.softmax``, ``x.softmax``, ``nn.Softmax`` and the same four for ``log_softmax``.

On the chip (``SoftmaxInt`` / ``LogSoftmaxInt``) each row of int8 values at exponent ``n_x`` is widened to Q25
(``x25 = SAT_32(x * 2^(25 - n_x))``) and goes through the HiFi routine ``vec_softmax32x32`` (Q25 in, Q15 out):

    y15 = softmax_q15(x25)                                   (:func:`softmax_q15`)
    softmax:      y = SAT_8(SHR(y15, 15 - n_o))                                    n_o <= 15
    log-softmax:  l = s <= 0 ? -2^31 : min(0, R(ln(y15 / 2^15) * 2^25))             (vec_logn_32x32, Q25)
                  y = SAT_8(SHR(l, 25 - n_o))                                      n_o <= 25

The HiFi core is a closed binary: :func:`softmax_q15` is the reference model the spec states (max subtraction, a
log2-domain Q23 exponent with a 5-term polynomial, a saturating sum, a normalized reciprocal with two Newton
steps; spec int8-ops.md 3.23), and the log is the correctly rounded natural log of the Q15 probability at Q25. Both
are NOT bit-verified against the vendor's binaries (``lnn rules`` marks the ops).

The QAT modules compute exactly those integers: in training the forward value is the chip's probability (or its
log) and the gradient is the float function's at the float input (straight-through, as linger), followed by the
output quantizer (capped at 15 / 25); in eval the output is exactly the chip's integers times ``2**-n_o``.

For attention modules: :func:`softmax_int` / :func:`log_softmax_int` are the functional forms (input already on
its grid, input exponent and output quantizer given by the caller).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lnn_core.errors import LnnError
from lnn_core.ops import OpFamily
from lnn_core.quant.functional import (
    cannot_saturate,
    fake_quant_parts,
    qrange,
    requant,
    ste_gradient,
    tensor_bounds,
)
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.quantizers import ActQuantizer
from lnn_core.quant.rewrite import BuildContext, Built

__all__ = ["QSoftmax", "FAMILIES", "WRITERS", "softmax_q15", "log_q25", "softmax_int", "ROW_MAX",
           "SOFTMAX_OUT_MAX", "LOG_OUT_MAX", "IN_EXPONENT_MAX"]

#: the longest row the chip's softmax takes (tpacker asserts it for every platform, spec 2.4.3)
ROW_MAX = 2048
#: the output exponent's upper bounds: the right shifts 15 - n_o and 25 - n_o are unsigned
SOFTMAX_OUT_MAX = 15
LOG_OUT_MAX = 25
#: the input exponent's bounds: x is widened to Q25 by a left shift of 25 - n_x
IN_EXPONENT_MAX = 25
IN_EXPONENT_MIN = 0

_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
#: ``log2(e) / 4`` in Q31: turns a natural-log Q25 difference into a log2-domain Q23 value
_LOG2E_Q31 = 774541002
#: Horner coefficients (Q23) of ``2^f`` on ``f`` in [-1, 0)
_POLY = (57364, 446161, 2008107, 5813551, 8388575)
#: the reciprocal's seed ``0xBB5000 - X`` (X the normalized sum in [0.5, 1), Q23; the seed is Q22)
_SEED = 0xBB5000


def _rshift_round(v: torch.Tensor, s: int) -> torch.Tensor:
    """``floor(v / 2^s + 0.5)`` for int64 ``v`` and ``s >= 1``."""
    return (v + (1 << (s - 1))) >> s


@torch.no_grad()
def exp_q23(d: torch.Tensor) -> torch.Tensor:
    """The core's exponential terms: int64 ``d = x25 - max(row)`` (``INT32_MIN <= d <= 0``) in, int64 ``2^(d·log2 e)``
    in Q23 out (the 5-term polynomial on the log2-domain fraction, shifted by its integer part)."""
    t = _rshift_round(d * _LOG2E_Q31, 31).clamp_(_INT32_MIN, _INT32_MAX)  # log2-domain Q23, <= 0
    e_exp = (t >> 23) + 1  # <= 1
    f = (t & 0x7FFFFF) - 0x800000  # the Q23 fraction in [-1, 0)
    y = torch.full_like(f, _POLY[0])
    for p in _POLY[1:]:
        y = _rshift_round(y * f, 23) + p
    return torch.where(e_exp >= 0, y << e_exp.clamp(min=0), y >> (-e_exp).clamp(max=62))  # y > 0: trunc = floor


def _reciprocal(s: np.ndarray) -> np.ndarray:
    """The core's per-row reciprocal: int64 row sums ``s`` (a numpy array, saturated at ``INT32_MAX``, ``>= 1``) in,
    the int64 factor ``r`` with ``y15 = (r * e + 2^30) >> 31`` out (normalized from a seed, two Newton steps,
    shifted back). One value per row: plain integer numpy, a few microseconds, instead of some thirty tensor
    operations."""
    _, e = np.frexp(s.astype(np.float64))  # exact below 2^53: e - 1 is the leading bit of s
    n = (30 - (e.astype(np.int64) - 1)) - 8  # nsa - 8
    x_n = np.where(n < 0, s >> np.maximum(-n, 0), np.minimum(s << np.maximum(n, 0), _INT32_MAX))
    n = n + 1
    r = _SEED - x_n
    for _ in range(2):
        err = 2 * (0x400000 - ((x_n * r + (1 << 22)) >> 23))
        r = r + ((r * err + (1 << 22)) >> 23)
    return np.where(n < 0, r >> np.maximum(-n, 0), np.clip(r << np.maximum(n, 0), _INT32_MIN, _INT32_MAX))


def _row_reciprocal(s: torch.Tensor) -> torch.Tensor:
    """:func:`_reciprocal` of a tensor of row sums (integers, any dtype and device), as an int64 tensor there."""
    return torch.from_numpy(_reciprocal(s.to("cpu", torch.int64).numpy())).to(s.device)


@torch.no_grad()
def normalize_q15(e: torch.Tensor) -> torch.Tensor:
    """The core's normalization: int64 exponential terms (:func:`exp_q23`, rows last) in, int64 Q15 probabilities
    out (a saturating row sum, its normalized reciprocal from a seed and two Newton steps, the product)."""
    s = e.sum(dim=-1, keepdim=True).clamp_(max=_INT32_MAX)  # the saturating sum of non-negative terms
    y = torch.mul(_row_reciprocal(s), e).add_(1 << 30).bitwise_right_shift_(31)  # _rshift_round(r * e, 31), in place
    return y.clamp_(_INT32_MIN, _INT32_MAX)


@torch.no_grad()
def softmax_q15(x25: torch.Tensor) -> torch.Tensor:
    """The chip's softmax core (the stated model of HiFi ``vec_softmax32x32``): int64 Q25 rows (last dim) in,
    int64 Q15 probabilities out. The reference every faster form is tested against."""
    x25 = x25.to(torch.int64)
    m = x25.amax(dim=-1, keepdim=True)
    return normalize_q15(exp_q23((x25 - m).clamp_(min=_INT32_MIN)))


@functools.cache
def _exp_table(n_x: int, device: torch.device) -> torch.Tensor:
    """:func:`exp_q23` of every int8 pair at input exponent ``n_x`` (float64 integers below ``2^24``). For ``n_x >= 1``
    an element's Q25 value is ``q * 2^(25 - n_x)`` unsaturated, and its difference to the row maximum saturates (at
    ``n_x = 1`` only) as a function of ``m - q`` alone: 256 entries, entry ``m - q``. At ``n_x = 0`` the widening
    itself saturates: 65,536 entries, entry ``(m + 128) * 256 + (q + 128)`` (``q > m`` never occurs and holds the term
    of ``q = m``). A pure function's cache: one table per exponent and device."""
    if n_x >= 1:
        d = (-(torch.arange(256, dtype=torch.int64) << (IN_EXPONENT_MAX - n_x))).clamp_(_INT32_MIN, 0)
    else:
        x25 = (torch.arange(-128, 128, dtype=torch.int64) << IN_EXPONENT_MAX).clamp_(_INT32_MIN, _INT32_MAX)
        d = (x25[None, :] - x25[:, None]).clamp_(_INT32_MIN, 0)  # row: the maximum m, column: the element q
    return exp_q23(d).reshape(-1).to(device=device, dtype=torch.float64)


def _index_in_place(v: torch.Tensor) -> torch.Tensor:
    """The integers ``0 <= v < 2^23`` of a float32 (float64) tensor as an int32 (int64) tensor sharing its buffer:
    ``v + 2^23`` (``2^52``) is exact and its bit pattern is that of the float ``2^23`` (``2^52``) plus ``v`` in the
    low mantissa bits, so subtracting the pattern of ``2^23`` (``2^52``) as an integer leaves ``v`` (IEEE 754)."""
    if v.dtype == torch.float32:
        return v.add_(2.0**23).view(torch.int32).sub_(0x4B000000)
    return v.add_(2.0**52).view(torch.int64).sub_(0x4330000000000000)


@torch.no_grad()
def softmax_q15_f64(q: torch.Tensor, n_x: int, *, inplace: bool = False) -> torch.Tensor:
    """:func:`softmax_q15` of int8 integers ``q`` held in a float tensor (rows last) at exponent ``n_x``, widened to
    Q25 as the kernel does; float64 integers out. The same integers by fewer and smaller passes:

    - each exponential term is read from a table (:func:`_exp_table`; 256 entries indexed by ``m - q``, small enough
      to stay in the cache, or the 65,536 (element, row maximum) pairs at ``n_x = 0``) with an int32 index: one
      gather instead of about thirty elementwise int64 passes;
    - the row sums (below ``2048 * 2^24``) accumulate in float64, exact; the per-row reciprocal runs in numpy
      (:func:`_reciprocal`); the final ``(r * e + 2^30) >> 31`` runs in place in the terms' buffer as a product by
      ``r 2^-31``, a sum and a floor, each exact: a term is at most ``2^23 + 60`` (``2^0`` in Q23; the row
      maximum's own term), so a row sum is at least that and ``r`` (Newton steps toward ``2^45 / x_n``, ``x_n``
      the sum normalized to ``[2^22, 2^23)``, shifted right) stays below ``2^24``; ``r * e + 2^30`` is an integer
      below ``2^48``, held exactly. The result (at most ``2^16``) needs no saturation.

    One full-size float64 buffer (the terms, then the result) and two of half its size, or none with
    ``inplace=True``: the table index is then formed in ``q``'s own buffer (a float32/float64 tensor the caller
    gives up; its contents are undefined after the call, the buffer may be reused): on a CPU every fresh large buffer
    costs its page faults, which cost more than the arithmetic here.
    """
    m = q.amax(dim=-1, keepdim=True)
    if inplace and q.dtype in (torch.float32, torch.float64):  # the index in q's own buffer
        idx = _index_in_place(q.neg_().add_(m) if n_x >= 1 else q.add_(m.mul(256).add_(128 * 256 + 128)))
    elif n_x >= 1:
        idx = torch.sub(m, q).to(torch.int32)  # m - q
    else:
        idx = torch.add(q, m.mul(256).add_(128 * 256 + 128)).to(torch.int32)  # (m + 128) * 256 + (q + 128)
    e = _exp_table(n_x, q.device).index_select(0, idx.reshape(-1)).view(idx.shape)  # faster than take on CPU
    s = np.minimum(e.sum(dim=-1, keepdim=True).to("cpu", torch.int64).numpy(), _INT32_MAX)
    r = np.ldexp(_reciprocal(s).astype(np.float64), -31)  # exact: a power of two
    return e.mul_(torch.from_numpy(r).to(e.device)).add_(0.5).floor_()


@torch.no_grad()
def softmax_q15_int8(q: torch.Tensor, n_x: int) -> torch.Tensor:
    """:func:`softmax_q15` of int8 integers ``q`` (int64, rows last) at exponent ``n_x`` (:func:`softmax_q15_f64`)."""
    return softmax_q15_f64(q.double(), n_x).to(torch.int64)


def log_q25_scalar(s: int) -> int:
    """``vec_logn_32x32`` as modelled: the natural log of the Q15 value ``s`` at Q25, clamped to ``[-2^31, 0]``
    (``-2^31`` for ``s <= 0``)."""
    if s <= 0:
        return _INT32_MIN
    return min(0, math.floor(math.log(s / 32768.0) * 33554432.0 + 0.5))


@functools.cache
def _log_table(size: int = 1 << 16) -> torch.Tensor:
    """:func:`log_q25_scalar` of ``0 .. size - 1`` (int64); a pure function's cache."""
    return torch.tensor([log_q25_scalar(s) for s in range(size)], dtype=torch.int64)


@torch.no_grad()
def log_q25(y15: torch.Tensor) -> torch.Tensor:
    """:func:`log_q25_scalar` of every element of an int64 tensor of Q15 probabilities."""
    table = _log_table()
    big = y15 >= table.numel()
    out = table.to(y15.device)[y15.clamp(0, table.numel() - 1)]
    return torch.where(big, torch.zeros_like(out), out)


@torch.no_grad()
def chip_int(q: torch.Tensor, n_x: int, log: bool) -> torch.Tensor:
    """The kernel's result before the output shift: Q15 probabilities (softmax) or Q25 logs (log-softmax) of the
    int8 integers ``q`` (int64, rows last) at exponent ``n_x``."""
    y15 = softmax_q15_int8(q, n_x)
    return log_q25(y15) if log else y15


def _chip_acc(x: torch.Tensor, n_x: int, log: bool, training: bool) -> torch.Tensor:
    """:func:`chip_int` of ``x`` at ``n_x``: Q15 probabilities as float64 integers, or Q25 logs as int64.

    The input's integers are ``R(x * 2^n_x)`` saturated to int8; ``x`` lies on that grid (it is its producer's
    output), where every form of ``R`` agrees. Eval rounds in float64; training as training's fake-quant does, in
    float32 (float64 for a float64 model): three passes in the input's width instead of five in float64 and int64.
    """
    q = _train_int8(x, n_x) if training else torch.floor(x.detach().double() * 2.0**n_x + 0.5).clamp_(-128, 127)
    y15 = softmax_q15_f64(q, n_x, inplace=True)
    return log_q25(y15.to(torch.int64)) if log else y15


def _train_int8(x: torch.Tensor, n_x: int) -> torch.Tensor:
    """Training's int8 input: ``SAT_8(R(x * 2^n_x))`` rounded as training's fake-quant does, in float32 (float64 for
    a float64 model), a fresh tensor."""
    xd = x.detach() if x.dtype == torch.float64 else x.detach().float()
    return torch.rsub(xd, 0.5, alpha=-(2.0**n_x)).floor_().clamp_(-128, 127)


def _scaled(acc: torch.Tensor, acc_q: int, dtype: torch.dtype) -> torch.Tensor:
    """``acc * 2**-acc_q`` rounded once to ``dtype``. The Q15 probabilities (``acc_q`` 15, ``|acc| <= 2^16``) convert
    first and scale exactly after (the same rounding: scaling by a power of two commutes with it); the Q25 logs (up
    to ``2^31``, past float16's range) scale in float64 first."""
    if acc_q == SOFTMAX_OUT_MAX:
        return acc.to(dtype).mul_(2.0**-acc_q)
    return acc.double().mul_(2.0**-acc_q).to(dtype)


class _ChipSoftmax(torch.autograd.Function):
    """The chip's values forward, the float function's gradient backward, in one autograd node.

    Same values and gradients as ``ref + (chip - ref).detach()`` with ``ref = F.softmax(x, -1)``: the forward is
    ``acc * 2**-acc_q`` in ``x.dtype`` (:func:`_scaled`) and ``ref`` is kept only for the backward (softmax's /
    log-softmax's own backward kernel on it): two passes and one node instead of five and four."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, acc: torch.Tensor, acc_q: int, log: bool) -> torch.Tensor:  # type: ignore[override]
        ref = torch._log_softmax(x, -1, False) if log else torch._softmax(x, -1, False)
        ctx.log = log
        ctx.save_for_backward(ref)
        return _scaled(acc, acc_q, x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (ref,) = ctx.saved_tensors
        back = torch.ops.aten._log_softmax_backward_data if ctx.log else torch.ops.aten._softmax_backward_data
        return back(grad, ref, -1, ref.dtype), None, None, None


class _ChipSoftmaxQuant(torch.autograd.Function):
    """:class:`_ChipSoftmax` and the observing output quantizer of a softmax in one autograd node: the same values,
    observer updates and gradients as ``out_q(_ChipSoftmax.apply(x, y15, 15, False), cap)``, with one node and
    fewer full-size buffers.

    The quantizer's work runs on the Q15 integers ``y15`` (float64, owned by the caller): their ``(min, max)``
    times ``2^-15`` are exactly the bounds of the probabilities ``y15 * 2^-15``, which the observer sees as it
    would; for an output exponent ``0 <= n_o <= 15`` the rounding ``floor(y15 * 2^(n_o - 15) + 0.5)`` is exact in
    float64, and so is the training fake-quant's float32 ``floor(p * 2^n_o + 0.5)`` (``p * 2^n_o + 0.5`` has at
    most 18 significant bits): the same integers. Any other exponent or dtype takes the quantizer's own
    :func:`~lnn_core.quant.functional.fake_quant_parts` on ``y15 * 2^-15``. The result is written into ``spent``
    (the caller's finished int8-input buffer, given up), so the node allocates no full-size output of its own. The
    backward is the quantizer's clipping mask, then softmax's own backward kernel."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y15: torch.Tensor, spent: torch.Tensor,  # type: ignore[override]
                out_q: ActQuantizer, cap: int) -> torch.Tensor:
        ref = torch._softmax(x, -1, False)
        ctx.save_for_backward(ref)
        ctx.sat = ctx.clip = None
        b = tensor_bounds(y15)
        bounds = None if b is None else (b[0] * 2.0**-SOFTMAX_OUT_MAX, b[1] * 2.0**-SOFTMAX_OUT_MAX)
        n = out_q.observe_bounds(bounds, cap)
        if 0 <= n <= SOFTMAX_OUT_MAX and x.dtype in (torch.float32, torch.float64):
            t = y15.mul_(2.0 ** (n - SOFTMAX_OUT_MAX)).add_(0.5).floor_()
            if not cannot_saturate(bounds, n, out_q.bits):
                hi = qrange(out_q.bits)[1]
                ctx.sat = t > hi  # t >= 0: only the top saturates
                t = t.clamp_(max=hi)
            out = spent.copy_(t) if spent.dtype == x.dtype and spent.shape == x.shape else t.to(x.dtype)
            return out.mul_(2.0**-n)
        out, ctx.clip, saved = fake_quant_parts(_scaled(y15, SOFTMAX_OUT_MAX, x.dtype), n, out_q.bits, bounds)
        ctx.saved = saved
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (ref,) = ctx.saved_tensors
        if ctx.sat is not None:
            grad = grad.masked_fill(ctx.sat, 0.0)
        elif ctx.clip is not None:
            grad = ste_gradient(grad, ctx.clip, ctx.saved)
        return torch.ops.aten._softmax_backward_data(grad, ref, -1, ref.dtype), None, None, None, None


def softmax_int(x: torch.Tensor, n_x: int, out_q: ActQuantizer, *, log: bool = False, training: bool = False,
                observe: bool = True) -> torch.Tensor:
    """Functional QAT softmax (``log=True``: log-softmax) over the last dim of ``x``, a tensor already on the grid
    of exponent ``n_x`` (``0 <= n_x <= 25``): the chip's integers forward, the float function's gradient backward,
    then ``out_q`` (its exponent capped at 15 / 25). In eval (``training=False``) the result is exactly the chip's
    integers times ``2**-n_o``. An attention module calls this with its own output quantizer."""
    cap = LOG_OUT_MAX if log else SOFTMAX_OUT_MAX
    acc_q = LOG_OUT_MAX if log else SOFTMAX_OUT_MAX
    if training and not log and observe and x.requires_grad and torch.is_grad_enabled() and out_q.fusable:
        q = _train_int8(x, n_x)
        y15 = softmax_q15_f64(q, n_x, inplace=True)
        return _ChipSoftmaxQuant.apply(x, y15, q, out_q, cap)
    acc = _chip_acc(x, n_x, log, training)
    if training:
        if x.requires_grad and torch.is_grad_enabled():
            y = _ChipSoftmax.apply(x, acc, acc_q, log)
        else:
            y = _scaled(acc, acc_q, x.dtype)
        return out_q(y, cap) if observe else out_q(y.detach(), cap)
    n_o = out_q.eval_exponent(cap)
    return (requant(acc.double(), acc_q - n_o, 8) * 2.0**-n_o).float()


class QSoftmax(QModule):
    """Softmax / log-softmax over the last dimension: the chip's ``SoftmaxInt`` / ``LogSoftmaxInt``."""

    def __init__(self, op_id: str, *, log: bool, dim: int | None, recipe: Any, stage: str, path: str) -> None:
        super().__init__(recipe, act_bits=8, stage=stage, clamps=())
        self.op_id = op_id  # type: ignore[misc]
        self.log = log
        self.dim = dim
        self.path = path
        self.out_q = ActQuantizer(8, recipe, cap=self.output_cap)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, log={self.log}"

    def output_cap(self, exponent_of: Any = None) -> int:
        """15 (softmax) / 25 (log-softmax): the kernel's output shift is unsigned."""
        return LOG_OUT_MAX if self.log else SOFTMAX_OUT_MAX

    @property
    def kind(self) -> str:
        return "log_softmax" if self.log else "softmax"

    def _check(self, x: torch.Tensor) -> int:
        """The input's exponent, after the checks that need the input's shape (rank and row length)."""
        if self.dim is None or self.dim not in (-1, x.dim() - 1):
            raise _dim_error(self.path, self.kind, self.dim, x.dim())
        row = x.shape[-1] if x.dim() else 1
        if row > ROW_MAX:
            raise LnnError(
                f"{self.kind} {self.path!r}: a row of {row} elements",
                {"rule": "csk60xx.softmax.row: the chip's softmax takes rows of at most 2048 elements",
                 "limit": f"row <= {ROW_MAX}", "actual": f"row of {row}"},
                f"split the last dimension into rows of <= {ROW_MAX} (or reduce the sequence length)",
                rule="csk60xx.softmax.row", limit=ROW_MAX, actual=row, node=self.path)
        if self.in_bits(0) != 8:
            raise LnnError(
                f"{self.kind} {self.path!r}: the input has {self.in_bits(0)} bits",
                {"rule": "csk60xx.softmax.input_bits: the chip's softmax reads int8", "limit": "8-bit input",
                 "actual": f"{self.in_bits(0)}-bit input"},
                "give the layer that feeds this op act_bits=8 (QuantConfig.by_path)",
                rule="csk60xx.softmax.input_bits", limit=8, actual=self.in_bits(0), node=self.path)
        n_x = self.in_exponent(0)
        if not IN_EXPONENT_MIN <= n_x <= IN_EXPONENT_MAX:
            raise LnnError(
                f"{self.kind} {self.path!r}: input exponent {n_x}",
                {"rule": "csk60xx.softmax.in_exponent: the kernel widens x to Q25 by a left shift of 25 - n_x",
                 "limit": f"{IN_EXPONENT_MIN} <= n_x <= {IN_EXPONENT_MAX}", "actual": f"n_x {n_x}"},
                "scale the softmax input into |x| < 128 (e.g. divide the logits) so its exponent is >= 0",
                rule="csk60xx.softmax.in_exponent", limit=f"{IN_EXPONENT_MIN}..{IN_EXPONENT_MAX}", actual=n_x,
                node=self.path)
        return n_x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantizing:
            y = F.log_softmax(x, dim=self.dim) if self.log else F.softmax(x, dim=self.dim)
            return self.out_q(y, self.output_cap())
        n_x = self._check(x)
        return softmax_int(x, n_x, self.out_q, log=self.log, training=self.training, observe=self.out_q.observe)

    def op_attrs(self) -> dict[str, Any]:
        return {**super().op_attrs(), "dim": self.dim, "kind": self.kind}

    def shape_attrs(self, input_shapes: Any) -> dict[str, Any]:
        """The input's shape (the row rule) and ``dim`` as the node has it: -1 when the given dim is the last."""
        x = input_shapes[0] if input_shapes else None
        if x is None:
            return {}
        dim = self.dim
        if isinstance(dim, int) and dim in (-1, len(x) - 1):
            dim = -1
        return {"input_shapes": (tuple(x),), "dim": dim}


def _dim_error(path: str, kind: str, dim: Any, rank: int | None) -> LnnError:
    where = f" of a rank-{rank} input" if rank is not None else ""
    return LnnError(
        f"{kind} {path!r}: dim={dim}{where} is not the last dimension",
        {"rule": "csk60xx.softmax.dim: the chip's softmax runs over the last dimension only",
         "limit": "dim=-1 (or the last index)", "actual": f"dim={dim}"},
        f"move the {kind} dimension last (x.transpose(d, -1)), apply {kind}(dim=-1), and transpose back",
        rule="csk60xx.softmax.dim", limit=-1, actual=dim, node=path)


def _sig(input, dim=None, _stacklevel=3, dtype=None):  # noqa: A002
    """Signature of F.softmax / torch.softmax / Tensor.softmax (dtype may come third)."""


def _build(op_id: str, log: bool):
    def build(ctx: BuildContext) -> Built | None:
        common = dict(recipe=ctx.recipe, stage=ctx.stage, path=ctx.path)
        if ctx.module is not None:
            dim, src = ctx.module.dim, ctx.node.args[0] if ctx.node.args else ctx.node.kwargs.get("input")
        else:
            if "out" in ctx.node.kwargs:
                return None
            try:
                a = ctx.bind(_sig)
            except TypeError:
                return None
            dim, src = a["dim"], a["input"]
            if a.get("dtype") is not None or not isinstance(a.get("_stacklevel", 3), int):
                return None
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool)):
            return None  # a computed dim: no chip form
        return Built(QSoftmax(op_id, log=log, dim=dim, **common), [src])

    return build


FAMILIES = [
    OpFamily(id="builtin.Softmax", kind="compute", modules=(nn.Softmax,), functions=(F.softmax, torch.softmax),
             methods=("softmax",), build=_build("builtin.Softmax", False),
             description="softmax over the last dim (rows <= 2048): SoftmaxInt, int8 in, Q25 -> HiFi softmax -> "
                         "int8 out (n_o <= 15)"),
    OpFamily(id="builtin.LogSoftmax", kind="compute", modules=(nn.LogSoftmax,),
             functions=(F.log_softmax, torch.log_softmax), methods=("log_softmax",),
             build=_build("builtin.LogSoftmax", True),
             description="log-softmax over the last dim (rows <= 2048): LogSoftmaxInt, int8 in, Q25 -> HiFi softmax "
                         "and log -> int8 out (n_o <= 25)"),
]


# -- IR ----------------------------------------------------------------------------------------------


def write_softmax(ctx: Any) -> str:
    """``SoftmaxInt`` / ``LogSoftmaxInt`` with ``dim = -1`` (linger 1.1.1's node form, spec 2.4.3, 2.5.3; the chip
    reads the last axis only when dim is -1)."""
    m: QSoftmax = ctx.module
    y = ctx.tensor(m.out_q.eval_exponent(m.output_cap()), "int8")
    ctx.add("LogSoftmaxInt" if m.log else "SoftmaxInt", [ctx.inputs[0]], [y],
            {"data_bits": 8, "o_bits": 8, "dim": -1})
    return y


WRITERS = {"builtin.Softmax": write_softmax, "builtin.LogSoftmax": write_softmax}
