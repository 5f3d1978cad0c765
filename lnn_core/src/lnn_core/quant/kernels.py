"""The compiled fake-quantization kernels of the training step, and when they are used.

A QAT step runs a few dozen small tensor operations per quantized layer: the observer's ``(min, max)`` pass, the
rounding, the clamp, the rescale. On the small tensors of speech and keyword models each costs more in dispatch
than in arithmetic, so lnn_core ships them as C kernels (``csrc/fakequant.c``, built with cffi when the package is
installed) that do each job in one pass. They compute exactly what the torch operations of
:mod:`lnn_core.quant.functional` compute, bit for bit (tests/test_kernels.py checks both paths against each other);
the torch path is the reference and the fallback.

The kernels run on CPU float32 contiguous tensors of at most :data:`MAX_NUMEL` elements; anything else takes the
torch path. The kernels are single-threaded: on the ResNet-ish benchmark (4 MB activations in its first stage) a
limit of 2^22 elements made the QAT step 1.09-1.10 times the float step instead of 0.99-1.03 (2 threads, heap kept),
so the large tensors stay with torch's multi-threaded operations.

The environment variable ``LNN_QAT_KERNELS`` chooses, read once when this module is imported:

- ``auto`` (default): the C kernels where they apply, with AVX2 where the CPU has it;
- ``portable``: the C kernels, their portable C loops only;
- ``torch``: no C kernels (the reference path; also what an install without a C compiler gets).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["ISA", "MAX_NUMEL", "MODE", "bounds", "pointer", "round_into", "ste_into", "sum_bounds", "sum_round_into",
           "usable", "usable_pair", "available_isas"]

#: largest tensor the kernels take (elements); larger ones go to torch's threaded operations
MAX_NUMEL = 1 << 18
_MODES = ("auto", "portable", "torch")

MODE = os.environ.get("LNN_QAT_KERNELS", "auto").strip().lower() or "auto"
if MODE not in _MODES:
    raise ConfigError(
        f"environment variable LNN_QAT_KERNELS: {MODE!r} is not a kernel choice",
        {"rule": "LNN_QAT_KERNELS chooses the fake-quantization kernels of the training step",
         "actual": MODE, "limit": ", ".join(_MODES)},
        "unset it (auto), or set it to auto, portable or torch",
        option="LNN_QAT_KERNELS", value=MODE, valid=_MODES)

try:
    from ._kernels import ffi, lib
except ImportError:  # built without a C compiler, or a source checkout without the development build
    ffi = lib = None

#: the instruction set the kernels run with (``"avx2"`` or ``"portable"``), or None when they are not used
ISA: str | None = None
_isa = 0
if lib is not None and MODE != "torch":
    _isa = lib.lnn_q_isa_available() if MODE == "auto" else lib.LNN_Q_ISA_PORTABLE
    ISA = "avx2" if _isa == lib.LNN_Q_ISA_AVX2 else "portable"

_PLAIN = (torch.Tensor, torch.nn.Parameter)


_F32 = torch.float32
_ON = ISA is not None


def usable(x: torch.Tensor) -> bool:
    """Whether the kernels take ``x``: compiled and enabled, a plain (not subclassed) CPU float32 tensor, contiguous,
    1 to :data:`MAX_NUMEL` elements."""
    return (_ON and type(x) in _PLAIN and x.dtype is _F32 and x.is_cpu and 0 < x.numel() <= MAX_NUMEL
            and x.is_contiguous())


def usable_pair(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether the two-operand kernels (:func:`sum_bounds`, :func:`sum_round_into`) take ``x`` and ``y``: both
    :func:`usable`, one shape."""
    return usable(x) and usable(y) and x.shape == y.shape


_FLOAT_P = ffi.typeof("float *") if ffi is not None else None


def pointer(x: torch.Tensor | None):
    """The ``float *`` of a :func:`usable` tensor for a kernel call (NULL for None)."""
    return ffi.NULL if x is None else ffi.cast(_FLOAT_P, x.data_ptr())


def available_isas() -> tuple[str, ...]:
    """The instruction sets the compiled kernels can run here (``"portable"``, and ``"avx2"`` where the CPU has it),
    whatever :data:`MODE` chose; empty when they are not built."""
    if lib is None:
        return ()
    return ("portable", "avx2") if lib.lnn_q_isa_available() == lib.LNN_Q_ISA_AVX2 else ("portable",)


def _isa_code(isa: str | None) -> int:
    """The kernels' code of ``isa`` (None: :data:`ISA`'s)."""
    if isa is None:
        return _isa
    if isa not in available_isas():
        raise ValueError(f"instruction set {isa!r} is not available here")
    return lib.LNN_Q_ISA_AVX2 if isa == "avx2" else lib.LNN_Q_ISA_PORTABLE


def bounds(x: torch.Tensor, isa: str | None = None) -> tuple[float, float]:
    """``(min, max)`` of a :func:`usable` tensor as python floats (both NaN when it holds a NaN). ``isa``: force
    ``"portable"`` or ``"avx2"`` (tests); by default :data:`ISA`."""
    out = ffi.new("float[2]")
    lib.lnn_q_bounds_f32(pointer(x), x.numel(), out, _isa_code(isa))
    return out[0], out[1]


def round_into(x: torch.Tensor, out: torch.Tensor, q: torch.Tensor | None, n: int, lo: int, hi: int,
               clamp: bool, exact: bool, isa: str | None = None) -> None:
    """``out = SAT(R(x * 2**n)) / 2**n`` for :func:`usable` ``x`` and ``out`` of its shape (``out`` may be ``x``).

    ``R`` is ``floor(v + 0.5)`` in float32, or in float64 when ``exact``; ``SAT`` to ``[lo, hi]`` only when
    ``clamp``, and then ``q`` (if given, float32 of ``x``'s shape) receives the unclamped integers. The same
    values as :func:`~lnn_core.quant.functional.fake_quant_parts`' torch path."""
    scale = 2.0**n
    lib.lnn_q_round_f32(pointer(x), pointer(out), pointer(q), x.numel(), scale, 1.0 / scale, lo, hi, clamp, exact,
                        _isa_code(isa))


def ste_into(grad: torch.Tensor, clip: Any, saved: torch.Tensor | None, channels: int, inner: int,
             sums: torch.Tensor | None, isa: str | None = None) -> torch.Tensor | None:
    """The straight-through gradient of :func:`~lnn_core.quant.functional.ste_gradient` (same values) for a
    :func:`usable` ``grad`` laid out ``[outer, channels, inner]``, with the per-channel sums of the result written to
    ``sums`` (float32, ``channels`` values; None: not wanted) in the same pass: a conv or linear layer's bias
    gradient. None when the kernel does not take the case (a boolean mask, too many channels): use the torch path.
    The sums add float32 partial sums of ``inner`` values in float64: equal to torch's ``sum`` up to rounding."""
    if (clip is not None and not isinstance(clip, tuple)) or channels > lib.LNN_Q_MAX_CHANNELS:
        return None
    if clip is None:
        out, q, lo, hi = grad, ffi.NULL, 0.0, 0.0  # nothing saturated: the gradient passes (written onto itself)
    else:
        out, q, (lo, hi) = torch.empty_like(grad), pointer(saved), clip
    lib.lnn_q_ste_f32(pointer(grad), q, pointer(out), grad.numel() // (channels * inner), channels, inner, lo, hi,
                      pointer(sums), _isa_code(isa))
    return out


def sum_bounds(x: torch.Tensor, y: torch.Tensor, sign: int) -> tuple[float, float]:
    """``(min, max)`` of the float32 ``x + y`` (``sign`` 1) or ``x - y`` (-1) for :func:`usable` tensors of one shape,
    without forming it: what an observer of iqAdd/iqSub's float sum reads."""
    out = ffi.new("float[2]")
    lib.lnn_q_sum_bounds_f32(pointer(x), pointer(y), x.numel(), sign, out, _isa)
    return out[0], out[1]


def sum_round_into(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor, t: torch.Tensor | None, n: int, sign: int,
                   lo: int, hi: int, isa: str | None = None) -> None:
    """iqAdd/iqSub's training value: ``out = SAT(R(x 2^n) + sign R(y 2^n)) 2^-n`` (each operand rounded in float32),
    ``t`` (if given) the unclamped sums; :func:`usable` tensors of one shape. The values of
    :func:`~lnn_core.quant.functional.fake_quant_sum`'s torch operations."""
    scale = 2.0**n
    lib.lnn_q_sum_round_f32(pointer(x), pointer(y), pointer(out), pointer(t), x.numel(), scale,
                            1.0 / scale, sign, lo, hi, _isa_code(isa))
