"""The chip's sigmoid and tanh on integers (spec/int8-seq-ops.md 1.3, 2.6.4), in numpy. Torch-free: the QAT
module (:mod:`.sigmoid`) and the QDQ writer (:mod:`.onnx_qdq`) both read their tables from here.

The chain from an int8 tensor at exponent ``n`` (the Requant is chosen so that the kernel's rules hold)::

    n < 3:        Requant int8 -> int8 at 3, q8' = SAT_8(q8 << (3 - n)), then as n = 3
    3 <= n <= 11: Requant int8 -> int16 at 11, q16 = q8 << (11 - n)     (exact: |q16| <= 2**14)
    n > 11:       Requant int8 -> int16 x256 at n + 8 (linger's form; the kernel shifts right to Q11)
    t  = SAT_16(SHR(q16, n16 - 11))                                    Q11
    y8 = SAT_8(SHR(SAT_16(pwl15(t)), 8))                               Q7: the output exponent is 7

The kernels read Q11 and only shift right, so the int16 exponent must be at least 11 (int8 exponent >= 3).
Saturating at exponent 3 clips the input to [-16, 15.875], where both functions are already at their int8
limits (the Q11 int16 input cannot hold more than +-16 either). Landing on exactly 11 where an exact Requant
can (n <= 11) gives the integers of linger's x256 form (``SHR(q8 << 8, n - 3)`` is exact there) without what
the kernels do for another exponent: iqSigmoid's extra workspace of 2 bytes per element, iqTanh's in-place
rescale of its input (spec 2.6.3, 2.6.4, 6.9).
"""

from __future__ import annotations

import numpy as np

__all__ = ["KINDS", "OUT_EXPONENT", "Q_IN", "requant_plan", "activation_int16", "int8_table", "int16_table"]

KINDS = ("sigmoid", "tanh")
#: the int8 output's exponent (Q7), whatever the input
OUT_EXPONENT = 7
#: the PWL's input format (Q11)
Q_IN = 11

# spec 1.3: segment upper bounds B[s+1], slopes K, shifts, offsets
_SIG = dict(
    b=[971, 1699, 2347, 2974, 3614, 4291, 5026, 5861, 6831, 7864, 8987, 10375, 11594, 13168, 14730, 32768],
    k=[32316, 29471, 25891, 22068, 18225, 29057, 22206, 16113, 10881, 27353, 16611, 9242, 4618, 20670, 8610, 693],
    sh=[13, 13, 13, 13, 13, 14, 14, 14, 14, 16, 16, 16, 16, 19, 19, 19],
    c0=[16384, 16721, 17464, 18559, 19954, 21585, 23380, 25249, 27121, 28807, 30096, 31107, 31839, 32199, 32502,
        32724],
    c1=[16384, 16047, 15304, 14209, 12814, 11183, 9388, 7519, 5647, 3961, 2672, 1661, 929, 569, 266, 44])
_TANH = dict(
    b=[512, 888, 1226, 1558, 1899, 2264, 2670, 3146, 3734, 4297, 4761, 5466, 6151, 7193, 8093, 32768],
    k=[32266, 29154, 25374, 21309, 17272, 26886, 19904, 13765, 8599, 19497, 12047, 7324, 3373, 26820, 5531, 337],
    sh=[11, 11, 11, 11, 11, 12, 12, 12, 12, 14, 14, 14, 14, 18, 18, 18],
    c=[0, 778, 2417, 4851, 7922, 11474, 15334, 19335, 23303, 26699, 28653, 30026, 31344, 31981, 32565, 32725])


def _shr(v: np.ndarray, s: int) -> np.ndarray:
    """``SHR(v, s)`` for ``s >= 0`` on int64 (half up)."""
    if s == 0:
        return v
    if s >= 63:
        return np.zeros_like(v)
    return (v + (np.int64(1) << np.int64(s - 1))) >> np.int64(s)


def _pwl15(kind: str, t: np.ndarray) -> np.ndarray:
    if kind == "sigmoid":
        s = np.searchsorted(np.array(_SIG["b"]), np.abs(t), side="left")
        prod = np.array(_SIG["k"], np.int64)[s] * t >> np.array(_SIG["sh"], np.int64)[s]
        return prod + np.where(t >= 0, np.array(_SIG["c0"])[s], np.array(_SIG["c1"])[s])
    a = np.where(t == -32768, 32767, np.abs(t))
    s = np.searchsorted(np.array(_TANH["b"]), a, side="left")
    k, sh, c = (np.array(_TANH[key], np.int64)[s] for key in ("k", "sh", "c"))
    return np.where(t >= 0, (k * a >> sh) + c, (-k * a >> sh) - c)


def activation_int16(kind: str, q16: np.ndarray, n16: int) -> np.ndarray:
    """iqSigmoid / iqTanh on int16 integers at exponent ``n16 >= 11``: the int8 outputs at exponent 7."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if n16 < Q_IN:
        raise ValueError(f"the int16 input exponent must be at least {Q_IN}, not {n16}")
    t = np.clip(_shr(np.asarray(q16, np.int64), n16 - Q_IN), -32768, 32767)
    y15 = np.clip(_pwl15(kind, t), -32768, 32767)
    return np.clip(_shr(y15, 8), -128, 127).astype(np.int8)


def requant_plan(n8: int) -> list[tuple[int, int]]:
    """The Requant steps from an int8 tensor at exponent ``n8``: ``[(o_bits, exponent), ...]``, ending in int16
    (at exponent 11 unless ``n8 > 11``). Every step keeps or raises the exponent: an exact left shift."""
    lowest = Q_IN - 8
    if n8 > Q_IN:
        return [(16, n8 + 8)]
    if n8 >= lowest:
        return [(16, Q_IN)]
    return [(8, lowest), (16, Q_IN)]


def int8_table(kind: str, n8: int) -> np.ndarray:
    """The int8 output for each int8 input ``-128..127`` at exponent ``n8`` (the whole chain, Requants included)."""
    q = np.arange(-128, 128, dtype=np.int64)
    n = n8
    for bits, n_out in requant_plan(n8):
        hi = (1 << (bits - 1)) - 1
        q = np.clip(q << np.int64(n_out - n), -hi - 1, hi)  # the chip's Requant widens or raises: n_out >= n
        n = n_out
    return activation_int16(kind, q, n)


def int16_table(kind: str, n16: int) -> np.ndarray:
    """The int8 output for each int16 input ``-32768..32767`` at exponent ``n16`` (the QDQ form's Gather table)."""
    return activation_int16(kind, np.arange(-32768, 32768, dtype=np.int64), n16)
