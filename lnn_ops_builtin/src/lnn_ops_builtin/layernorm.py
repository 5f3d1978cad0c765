"""LayerNorm over the last dimension (or the last two): ``nn.LayerNorm``, ``F.layer_norm``; affine or not
(spec/int8-seq-ops.md 2.3).

On the chip (``LayerNormInt``, spec 2.3.4) each row of ``T`` int8 values at exponent ``n_x`` is normalized with
integer sums and a 768-entry rsqrt table to ``u`` (int16, Q10), then ``y = SAT_8(SHR(u * gamma + beta,
10 + n_g - n_o))`` with gamma int16 at ``n_g`` (the floor rule at 16 bits, whatever the layer's weight_bits) and
beta int32 at ``10 + n_g``. A LayerNorm without affine parameters uses gamma = 1, beta = 0; the chip's eps is
fixed at 1e-5 (a rule asks for it).

An input finer than the kernel's largest exponent (15) is requantized to 15 first (a ``Requant``), so the limit
is met by the export, not by refusing the model; an input coarser than 2^0 (|x| beyond 127) is a pack-time error.

The QAT module computes exactly that: in training ``u`` is the chip's integer (:func:`normalize_int`) on the
fake-quantized input, gamma and beta are fake-quantized (straight-through), the output is fake-quantized with
the cap ``n_o <= 10 + n_g``; the gradient is the float LayerNorm's at the same input and parameters. In eval the
output is exactly the chip's integers times ``2**-n_o``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from lnn_core.errors import LnnError
from lnn_core.ops import OpFamily
from lnn_core.quant import kernels
from lnn_core.quant.functional import ste_gradient
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.quantizers import (
    ActQuantizer,
    fake_quant_weight_bias,
    param_exponent,
    quantize_bias,
    quantize_weight,
)
from lnn_core.quant.rewrite import BuildContext, Built

__all__ = ["QLayerNorm", "FAMILIES", "WRITERS", "normalize_int", "normalize_f64", "int_input", "NORM_Q", "GAMMA_BITS"]

#: the normalized value's format (Q10); beta sits at exponent ``NORM_Q + n_g``
NORM_Q = 10
#: gamma's width on the chip (linger forces parameter_bits = 16)
GAMMA_BITS = 16
#: the chip's eps, fixed in the kernel
CHIP_EPS = 1e-5
#: the kernel's largest input exponent (it forms ``1 << 2 n_x`` as a C int, spec 2.3.5): a finer int8 input is
#: first requantized to it (``SAT_8(SHR(q, n_x - 15))``); the normalization does not depend on the input's scale
KERNEL_IN_EXPONENT_MAX = 15


def _rsqrt_table() -> np.ndarray:
    """``min(32767, floor(2^14 / sqrt(t / 1024)))`` for ``t = 256..1023`` as integers: ``isqrt(2^38 // t)``."""
    return np.array([min(32767, math.isqrt((1 << 38) // t)) for t in range(256, 1024)], dtype=np.int64)


_RSQRT = _rsqrt_table()

try:  # the training kernel (csrc/layernorm.c), built with the package where a C compiler is found
    from ._kernels import ffi as _ffi
    from ._kernels import lib as _lib
except ImportError:
    _ffi = _lib = None
_RSQRT_I32 = np.ascontiguousarray(_RSQRT, dtype=np.int32)


def _q_eps(n_x: int, t: int) -> int:
    """``floor(f32(f32(f32(1e-5f * 2^(2 n_x)) * T) * T) + 0.5)``: the chip's eps term, in float32 steps."""
    f = np.float32(np.float32(CHIP_EPS) * np.float32(2.0 ** (2 * n_x)))
    f = np.float32(f * np.float32(t))
    f = np.float32(f * np.float32(t))
    return math.floor(float(f) + 0.5)


def _wrap32(v: np.ndarray) -> np.ndarray:
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def row_factors(s1: np.ndarray, s2: np.ndarray, n_x: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's per-row integer steps: from the row sums ``S1 = sum q`` and ``S2 = sum q^2`` (int64 arrays, one
    value per row), ``D = T S2 - S1^2 + eps`` (int32 wrap-around, as the C kernel computes it; ``D < 0`` only above
    the row rule), the rsqrt table entry ``r`` of ``D`` normalized to ``[256, 1023]`` and the shift ``sh``; int64
    arrays ``(r, sh)`` with ``u = SAT_16((num * r + 2^(sh-1)) >> sh)``, ``num = T q - S1``. One value per row: plain
    integer numpy (a few microseconds per step) instead of some forty tensor operations."""
    d = np.maximum(_wrap32(t * s2) - _wrap32(s1 * s1) + _q_eps(n_x, t), 0)
    _, e = np.frexp(np.maximum(d, 1).astype(np.float64))  # exact below 2^53: e - 1 is the leading bit of D
    k = (e.astype(np.int64) - 1) >> 1
    norm = np.where(2 * k >= 8, d >> np.maximum(2 * k - 8, 0), d << np.maximum(8 - 2 * k, 0)).clip(256, 1023)
    zero = d == 0
    return np.where(zero, _RSQRT[0], _RSQRT[norm - 256]), np.where(zero, 4, k + 5)


@torch.no_grad()
def normalize_f64(q: torch.Tensor, n_x: int, t: int) -> torch.Tensor:
    """The chip's normalized value ``u`` (Q10) of int8 integers ``q`` held in a float32 or float64 tensor (rows of
    ``t`` last), as float64 integers.

    The row sums are exact in either dtype (``|S1| <= 128 t``, ``S2 <= 2^14 t``: float32 for rows up to 1024, wider
    rows are summed in float64); the kernel's per-row integer steps run in numpy on one value per row
    (:func:`row_factors`; a tensor on another device makes one round trip); the per-element part
    ``SAT_16((num * r + 2^(sh-1)) >> sh)`` with ``num = T q - S1`` runs as ``floor(q * (T r 2^-sh) + (0.5 -
    S1 r 2^-sh))`` in float64, exact: ``|num| < 2^17``, ``r < 2^15``, so every term is an integer below ``2^33``
    times ``2^-sh`` and each step holds it without rounding (products by powers of two, one multiply-add, a
    floor; in place in the result, the one full-size buffer: on a CPU each fresh large buffer costs its page
    faults, and a mixed-dtype multiply-add would make a second one)."""
    shape = q.shape
    rows = q.reshape(-1, t)
    if rows.dtype != torch.float64 and (rows.dtype != torch.float32 or t > 1024):
        rows = rows.double()
    sums = torch.stack((rows.sum(dim=1), torch.linalg.vecdot(rows, rows))).to("cpu", torch.int64).numpy()
    r, sh = row_factors(sums[0], sums[1], n_x, t)
    scale = np.ldexp(r.astype(np.float64), -sh)  # r * 2^-sh, exact
    if t * 256 >= 1 << 31:  # T q or T q - S1 could leave int32: the kernel's saturations, in int64
        num = (t * rows.to(torch.int64)).clamp(-(1 << 31), (1 << 31) - 1)
        num = (num - torch.from_numpy(sums[0]).to(q.device)[:, None]).clamp_(-(1 << 31), (1 << 31) - 1).double()
        u = torch.addcmul(torch.full((num.shape[0], 1), 0.5, dtype=torch.float64, device=q.device), num,
                          torch.from_numpy(scale).to(q.device)[:, None])
    else:  # |T q - S1| <= 256 T < 2^31: the saturations are the identity
        ac = np.stack((scale * t, 0.5 - sums[0] * scale), axis=1)  # exact: integers below 2^33 times 2^-sh
        ac = torch.from_numpy(ac).to(q.device)
        u = rows.to(torch.float64, copy=True).mul_(ac[:, :1]).add_(ac[:, 1:])  # one float64 buffer, each step exact
    return u.floor_().clamp_(-32768, 32767).reshape(shape)


@torch.no_grad()
def normalize_int(q: torch.Tensor, n_x: int, t: int) -> torch.Tensor:
    """The chip's normalized value ``u`` (int64 tensor, Q10) of int8 integers ``q`` (int64, rows of ``t`` last)."""
    return normalize_f64(q.double(), n_x, t).to(torch.int64)


class _ChipLayerNorm(torch.autograd.Function):
    """The chip's LayerNorm value forward (``u * gamma_q + beta_q``), the float LayerNorm's gradient backward (to the
    input, gamma_q and beta_q), in one autograd node: the same values and gradients as ``ref + (chip - ref).detach()``
    with ``ref = F.layer_norm(x, shape, gamma_q, beta_q, eps)``, without its two passes and three nodes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g_q: torch.Tensor, b_q: torch.Tensor, u: torch.Tensor,  # type: ignore[override]
                shape: tuple[int, ...], eps: float) -> torch.Tensor:
        _save_layer_norm(ctx, x, g_q, b_q, shape, eps)
        return _chip_value(u, g_q, b_q, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _layer_norm_backward(ctx, grad) + (None, None, None)


def _save_layer_norm(ctx: Any, x: torch.Tensor, g_q: torch.Tensor, b_q: torch.Tensor, shape: tuple[int, ...],
                     eps: float) -> None:
    """What the float LayerNorm's backward needs (its statistics from ``native_layer_norm``), kept on ``ctx``."""
    g, b = g_q.reshape(shape), b_q.reshape(shape)
    _, mean, rstd = torch.native_layer_norm(x, shape, g, b, eps)
    ctx.shape = shape
    ctx.save_for_backward(x, mean, rstd, g, b)


def _layer_norm_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """The float LayerNorm's gradients to the input, gamma_q and beta_q (``native_layer_norm_backward`` on what the
    forward saved)."""
    x, mean, rstd, g, b = ctx.saved_tensors
    need = ctx.needs_input_grad
    dx, dg, db = torch.ops.aten.native_layer_norm_backward(grad, x, ctx.shape, mean, rstd, g, b,
                                                           [need[0], need[1], need[2]])
    return dx, None if dg is None else dg.reshape(-1), None if db is None else db.reshape(-1)


class _ChipLayerNormQuant(torch.autograd.Function):
    """:class:`_ChipLayerNorm` and the observing output quantizer in one autograd node: the same values, observer
    updates and gradients as ``out_q(_ChipLayerNorm.apply(x, g_q, b_q, u, shape, eps), cap)``, with one node and
    fewer full-size buffers.

    The chip's value ``u * gamma_q * 2^-10 + beta_q`` is formed in place in ``u``'s float64 buffer (owned by the
    caller; exact, as in :func:`_chip_value`) and rounded once to ``x.dtype`` into ``spent`` (the caller's finished
    int8-input buffer, given up: no full-size output of the node's own); the quantizer observes that tensor's
    ``(min, max)`` and, for float32/float64 and an exponent ``n_o >= 0``, fake-quantizes it in place:
    ``floor(y * 2^n_o + 0.5)`` as a product by a power of two (exact) and one rounded sum, the same bits as the
    fused ``rsub`` of :func:`~lnn_core.quant.functional.fake_quant_parts`, which any other case calls. The
    backward is the quantizer's clipping mask, then the float LayerNorm's backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g_q: torch.Tensor, b_q: torch.Tensor, u: torch.Tensor,  # type: ignore[override]
                spent: torch.Tensor, shape: tuple[int, ...], eps: float, out_q: ActQuantizer, cap: int) -> torch.Tensor:
        _save_layer_norm(ctx, x, g_q, b_q, shape, eps)
        acc = u.view(-1, g_q.numel()).mul_(g_q.detach().double() * 2.0**-NORM_Q).add_(b_q.detach().double())
        acc = acc.view(x.shape)
        y = spent.copy_(acc) if spent.dtype == x.dtype and spent.shape == x.shape else acc.to(x.dtype)
        out, ctx.clip, ctx.saved = out_q.observe_fake_quant_(y, cap)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = ste_gradient(grad, ctx.clip, ctx.saved)
        return _layer_norm_backward(ctx, grad) + (None, None, None, None, None, None)


def int_input(x: torch.Tensor, n_x: int, training: bool) -> tuple[torch.Tensor, int]:
    """The kernel's int8 input (float integers) and its exponent: ``x`` at ``n_x``, requantized to 15 when ``n_x`` is
    above. Eval rounds in float64; training as training's fake-quant does, in ``x``'s width (float32 for narrower
    floats): ``x`` lies on the grid (its producer's output), where both give the same integers, and the float32
    tensor is half the size."""
    if training:
        xd = x.detach() if x.dtype in (torch.float32, torch.float64) else x.detach().float()
    else:
        xd = x.detach().double()
    q = torch.rsub(xd, 0.5, alpha=-(2.0**n_x)).floor_().clamp_(-128, 127)
    s = n_x - KERNEL_IN_EXPONENT_MAX
    if s > 0:  # SAT_8(SHR(q, s)): floor(q 2^-s + 0.5), exact in float32 (at most 17 significant bits)
        q = torch.rsub(q, 0.5, alpha=-(2.0**-s)).floor_().clamp_(-128, 127)
    return q, min(n_x, KERNEL_IN_EXPONENT_MAX)


def kernel_takes(x: torch.Tensor, g_q: torch.Tensor, b_q: torch.Tensor) -> bool:
    """Whether the C kernel (``lnn_ln_chip_f32``) computes this training forward: built, the fake-quant kernels not
    switched off (``LNN_QAT_KERNELS``, :mod:`lnn_core.quant.kernels`), float32 CPU contiguous tensors, a row of at
    most 1024 values."""
    return (_lib is not None and kernels.usable(x) and kernels.usable(g_q) and kernels.usable(b_q)
            and g_q.numel() <= _lib.LNN_LN_MAX_ROW and x.numel() % g_q.numel() == 0)


class _ChipLayerNormKernel(torch.autograd.Function):
    """:class:`_ChipLayerNormQuant` with the chip's value computed by the C kernel from ``x`` in one pass per row (the
    int8 input, the row sums and factors, ``u`` and ``u * gamma_q * 2^-10 + beta_q``): the same values, observer
    updates and gradients, without the torch/numpy steps of :meth:`QLayerNorm._int_input` and
    :func:`normalize_f64` (tests/test_layernorm_kernel.py compares every bit)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g_q: torch.Tensor, b_q: torch.Tensor, n_x: int,  # type: ignore[override]
                shape: tuple[int, ...], eps: float, out_q: ActQuantizer, cap: int) -> torch.Tensor:
        y, bounds = chip_layer_norm_kernel(x, g_q, b_q, n_x)
        if y is None:  # an infinity or NaN in x: the torch/numpy path (the same code the kernel replaces)
            q, n_k = int_input(x, n_x, True)
            return _ChipLayerNormQuant.forward(ctx, x, g_q, b_q, normalize_f64(q, n_k, g_q.numel()), q, shape, eps,
                                               out_q, cap)
        _save_layer_norm(ctx, x, g_q, b_q, shape, eps)
        out, ctx.clip, ctx.saved = out_q.observe_fake_quant_(y, cap, bounds)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = ste_gradient(grad, ctx.clip, ctx.saved)
        return _layer_norm_backward(ctx, grad) + (None, None, None, None, None)


def chip_layer_norm_kernel(x: torch.Tensor, g_q: torch.Tensor, b_q: torch.Tensor, n_x: int,
                           isa: str | None = None) -> tuple[torch.Tensor | None, tuple[float, float]]:
    """``(y, (min, max) of y)``: the chip's LayerNorm value of ``x`` (rows of ``g_q.numel()`` last, input exponent
    ``n_x >= 0``) as training computes it, by the C kernel (:func:`kernel_takes` must hold); ``(None, ...)`` when
    ``x`` holds an infinity or NaN. ``isa``: ``"portable"`` or ``"avx2"`` to force one (tests); by default
    :data:`lnn_core.quant.kernels.ISA`'s."""
    t = g_q.numel()
    n_k = min(n_x, KERNEL_IN_EXPONENT_MAX)
    y = torch.empty_like(x)
    out = _ffi.new("float[2]")
    ptr = kernels.pointer
    code = 1 if (isa or kernels.ISA) == "avx2" else 0
    status = _lib.lnn_ln_chip_f32(ptr(x), x.numel() // t, t, 2.0**n_x, 2.0 ** (n_k - n_x), n_x > n_k,
                                  _q_eps(n_k, t), _ffi.cast("int32_t *", _RSQRT_I32.ctypes.data), ptr(g_q.detach()),
                                  ptr(b_q.detach()), ptr(y), out, code)
    return (y if status == 0 else None), (out[0], out[1])


def _chip_value(u: torch.Tensor, g_q: torch.Tensor, b_q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``u * 2^-10 * gamma_q + beta_q`` in float64 (the product exact, one rounding in the sum), then ``x.dtype``."""
    t = g_q.numel()
    flat = u.reshape(-1, t)
    g = g_q.detach().double() * 2.0**-NORM_Q
    return torch.addcmul(b_q.detach().double(), flat, g).reshape(x.shape).to(x.dtype)


class QLayerNorm(QModule):
    """LayerNorm over the last ``len(normalized_shape)`` dims (1 or 2): the chip's ``LayerNormInt``."""

    op_id = "builtin.LayerNorm"

    def __init__(self, normalized_shape: tuple[int, ...], eps: float, *, weight: nn.Parameter | None,
                 bias: nn.Parameter | None, has_weight: bool, has_bias: bool, recipe: Any, act_bits: int,
                 stage: str, refs: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
                 path: str = "") -> None:
        super().__init__(recipe, act_bits=act_bits, weight_bits=GAMMA_BITS, stage=stage, clamps=("act",))
        self.normalized_shape = tuple(int(d) for d in normalized_shape)
        self.eps = float(eps)
        self.own_params = weight is not None or bias is not None or not (has_weight or has_bias)
        self.has_weight_arg, self.has_bias_arg = has_weight, has_bias
        # F.layer_norm's gamma/beta (the owner's tensors), for reads outside forward (the output cap); a plain
        # tuple: no state_dict keys, the owner keeps them
        self._refs = refs
        if self.own_params:
            self.weight = weight
            self.bias = bias
        self.path = path
        self.has_weight = True  # op_attrs: parameter_bits (gamma exists on the chip even without affine)
        self.out_q = ActQuantizer(act_bits, recipe, cap=self.output_cap)

    @property
    def row(self) -> int:
        return math.prod(self.normalized_shape)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps:g}"

    def _params(self, params: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma and beta as 1-D tensors of the row (ones / zeros where the LayerNorm has none)."""
        if self.own_params:
            w, b = getattr(self, "weight", None), getattr(self, "bias", None)
        else:
            given = list(params) if params else [r for r in self._refs if r is not None]
            it = iter(given)
            w = next(it, None) if self.has_weight_arg else None
            b = next(it, None) if self.has_bias_arg else None
        ref = w if w is not None else b
        dev = ref.device if ref is not None else None
        g = w.reshape(-1) if w is not None else torch.ones(self.row, device=dev)
        be = b.reshape(-1) if b is not None else torch.zeros(self.row, device=dev)
        return g, be

    @torch.no_grad()
    def output_cap(self, exponent_of: Any = None, *params: torch.Tensor) -> int:
        """``10 + n_g``: the output exponent's upper bound (the chip's shift is unsigned)."""
        g, _ = self._params(params)
        return NORM_Q + param_exponent(g.detach(), GAMMA_BITS, self.recipe)

    def _int_input(self, x: torch.Tensor, n_x: int) -> tuple[torch.Tensor, int]:
        """The kernel's int8 input and its exponent (:func:`int_input`, in training's or eval's arithmetic)."""
        return int_input(x, n_x, self.training)

    def _checked_in_exponent(self) -> int:
        """The input's exponent, refused below 0: the kernel scales by ``1 << 2 n_x`` (a C int), so an input of
        ``|x| >= 128`` has no integer form (an exponent above 15 is requantized instead, see :meth:`_int_input`).
        Found at the first quantized forward, in training too, rather than at export after the training."""
        n_x = self.in_exponent(0)
        if n_x < 0:
            raise LnnError(
                f"LayerNorm {self.path!r}: input exponent {n_x}",
                {"rule": "csk60xx.layernorm.in_exponent: the kernel forms 1 << 2 n_x as a C int (n_x >= 0)",
                 "limit": "n_x >= 0", "actual": f"n_x {n_x}"},
                "keep the LayerNorm's input within |x| < 128 (exponent >= 0): e.g. the stage-1 activation clamp "
                "(lnn.constrain), or scale the producer's output down",
                rule="csk60xx.layernorm.in_exponent", limit=0, actual=n_x, node=self.path)
        return n_x

    def forward(self, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        g, b = self._params(params)
        if not self.quantizing:
            y = F.layer_norm(x, self.normalized_shape, g.reshape(self.normalized_shape),
                             b.reshape(self.normalized_shape), self.eps)
            return self.out_q(self.constrain_act(y))
        t = self.row
        n_x = self._checked_in_exponent()
        if self.training:
            g_q, b_q, n_g = fake_quant_weight_bias(g, b, NORM_Q, GAMMA_BITS, self.recipe)
            fused = self.fuses_output(x, g_q, b_q)
            if fused and kernel_takes(x, g_q, b_q):
                return _ChipLayerNormKernel.apply(x, g_q, b_q, n_x, self.normalized_shape, self.eps, self.out_q,
                                                  NORM_Q + n_g)
            q, n_k = self._int_input(x, n_x)
            u = normalize_f64(q, n_k, t)
            if fused:
                return _ChipLayerNormQuant.apply(x, g_q, b_q, u, q, self.normalized_shape, self.eps, self.out_q,
                                                 NORM_Q + n_g)
            if torch.is_grad_enabled() and (x.requires_grad or g_q.requires_grad or b_q.requires_grad):
                y = _ChipLayerNorm.apply(x, g_q, b_q, u, self.normalized_shape, self.eps)
            else:
                y = _chip_value(u, g_q, b_q, x)
            return self.finish_train(y, cap=NORM_Q + n_g)
        q, n_k = self._int_input(x, n_x)
        u = normalize_f64(q, n_k, t)
        with torch.no_grad():
            g_i, n_g = quantize_weight(g, GAMMA_BITS, self.recipe)
            b_i = quantize_bias(b, NORM_Q + n_g, self.recipe.bias_bits)
            acc = torch.addcmul(b_i, u.reshape(-1, t), g_i).reshape(x.shape)
            return self.finish_exact(acc, NORM_Q + n_g, cap=NORM_Q + n_g)

    def integer_params(self, *params: torch.Tensor) -> dict[str, Any]:
        g, b = self._params(params)
        g_i, n_g = quantize_weight(g.detach(), GAMMA_BITS, self.recipe)
        b_i = quantize_bias(b.detach(), NORM_Q + n_g, self.recipe.bias_bits)
        n_x = self.in_exponent(0)
        return {"gamma": g_i.to(torch.int64), "n_g": n_g, "beta": b_i.to(torch.int64), "n_x": n_x,
                "n_k": min(n_x, KERNEL_IN_EXPONENT_MAX), "n_o": self.out_q.eval_exponent(cap=NORM_Q + n_g)}

    def op_attrs(self) -> dict[str, Any]:
        attrs = super().op_attrs()
        attrs.update(parameter_bits=GAMMA_BITS, row_length=self.row, eps=self.eps,
                     normalized_dims=len(self.normalized_shape))
        return attrs


def _layer_norm_sig(input, normalized_shape, weight=None, bias=None, eps=1e-5):  # noqa: A002
    """Signature of F.layer_norm."""


def _shape(s: Any) -> tuple[int, ...]:
    return (int(s),) if isinstance(s, int) else tuple(int(d) for d in s)


def _check_dims(path: str, shape: tuple[int, ...]) -> None:
    if not shape:
        raise LnnError(f"LayerNorm {path!r}: normalized_shape is empty",
                       {"rule": "LayerNorm normalizes the last dimension (or the last two)", "actual": "()"},
                       "give normalized_shape the size of the last dimension", limit="1 or 2 dims", actual=0)



def _build(ctx: BuildContext) -> Built | None:
    common = dict(recipe=ctx.recipe, act_bits=ctx.layer.act_bits, stage=ctx.stage, path=ctx.path)
    m = ctx.module
    if m is not None:
        shape = _shape(m.normalized_shape)
        _check_dims(ctx.path, shape)
        w = m.weight if m.elementwise_affine else None
        b = getattr(m, "bias", None) if m.elementwise_affine else None
        q = QLayerNorm(shape, m.eps, weight=w, bias=b, has_weight=w is not None, has_bias=b is not None, **common)
        return Built(q, [ctx.node.args[0]])
    a = ctx.bind(_layer_norm_sig)
    if not isinstance(a["normalized_shape"], (int, list, tuple)) or any(
            isinstance(v, fx.Node) for v in ([a["normalized_shape"]] if isinstance(a["normalized_shape"], int)
                                             else a["normalized_shape"])):
        return None
    shape = _shape(a["normalized_shape"])
    _check_dims(ctx.path, shape)
    params = [p for p in (a["weight"], a["bias"]) if p is not None]
    if any(not isinstance(p, fx.Node) for p in params):
        return None
    refs = tuple(ctx.param_tensor(p) if p is not None else None for p in (a["weight"], a["bias"]))
    q = QLayerNorm(shape, float(a["eps"]), weight=None, bias=None, has_weight=a["weight"] is not None,
                   has_bias=a["bias"] is not None, refs=refs, **common)
    return Built(q, [a["input"]], params)


FAMILIES = [
    OpFamily(id="builtin.LayerNorm", kind="compute", modules=(nn.LayerNorm,), functions=(F.layer_norm,),
             build=_build, description="layer norm over the last dimension (or two): LayerNormInt, int16 gamma, "
                                       "int32 beta, T 4..362"),
]


# -- IR ----------------------------------------------------------------------------------------------


def write_layernorm(ctx: Any) -> str:
    """``LayerNormInt [x, gamma int16 [T], beta int32 [T]]`` (spec 2.3.3); inputs of rank < 3 are unsqueezed to
    rank 3 in front (the kernel reads rows from the last three dimensions)."""
    m: QLayerNorm = ctx.module
    p = m.integer_params(*ctx.params)
    n_x, n_g, n_o = p["n_x"], p["n_g"], p["n_o"]
    x = ctx.inputs[0]
    shape = ctx.shape(0)
    if p["n_k"] != n_x:  # a finer input than the kernel takes: requantized first (exactly as the module does)
        xr = ctx.tensor(p["n_k"], "int8", shape, suffix=".requant")
        ctx.add("Requant", [x], [xr], {"data_bits": 8, "o_bits": 8}, suffix=".requant")
        x, n_x = xr, p["n_k"]
    lift = 3 - len(shape) if shape is not None and len(shape) < 3 else 0
    if lift:
        axes = list(range(lift))
        x3 = ctx.tensor(n_x, "int8", (1,) * lift + tuple(shape), suffix=".unsqueeze")
        ctx.add("Unsqueeze", [x], [x3], {"axes": axes}, domain="", suffix=".unsqueeze")
        x = x3
    g = ctx.initializer("gamma", p["gamma"].numpy().astype(np.int16).reshape(-1), n_g)
    b = ctx.initializer("beta", p["beta"].numpy().astype(np.int32).reshape(-1), NORM_Q + n_g)
    out3 = None if ctx.out_shape is None else (1,) * lift + tuple(ctx.out_shape)
    y = ctx.tensor(n_o, "int8", out3, suffix=".out" if lift else "")
    ctx.add("LayerNormInt", [x, g, b], [y], {"data_bits": 8, "parameter_bits": GAMMA_BITS, "o_bits": 8})
    if lift:
        y2 = ctx.tensor(n_o, "int8")
        ctx.add("Squeeze", [y], [y2], {"axes": list(range(lift))}, domain="", suffix=".squeeze")
        y = y2
    clip = m.act_clip_int(n_o)
    return ctx.clip(y, *clip) if clip is not None else y


WRITERS = {"builtin.LayerNorm": write_layernorm}
