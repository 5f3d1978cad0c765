"""An independent numpy/int64 reference of the PReLU integer semantics (module docstring of
``lnn_ops_example.prelu``), written with exact rational arithmetic instead of lnn's helpers."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def floor_rule_exponent(a: np.ndarray, bits: int, lo: int, hi: int) -> int:
    """Largest ``n`` with ``max|a| * 2**n <= 2**(bits-1) - 1``, clamped to ``[lo, hi]``; ``hi`` for all-zero."""
    m = Fraction(float(np.max(np.abs(a.astype(np.float64))))) if a.size else Fraction(0)
    if m == 0:
        return hi
    top = (1 << (bits - 1)) - 1
    n = 0
    while m * Fraction(2) ** n > top:
        n -= 1
    while m * Fraction(2) ** (n + 1) <= top:
        n += 1
    return max(lo, min(hi, n))


def quantize_slopes(a: np.ndarray, bits: int, lo: int, hi: int) -> tuple[np.ndarray, int]:
    """``(a_q, n_a)``: half-up rounding of ``a * 2**n_a`` in exact arithmetic, saturated to ``bits``."""
    n = floor_rule_exponent(a, bits, lo, hi)
    qlo, qhi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = [max(qlo, min(qhi, math.floor(Fraction(float(v)) * Fraction(2) ** n + Fraction(1, 2)))) for v in a.ravel()]
    return np.asarray(q, dtype=np.int64).reshape(a.shape), n


def shr(v: np.ndarray, s: int) -> np.ndarray:
    """Half-up arithmetic shift right on int64 (``s <= 0`` shifts left)."""
    if s > 0:
        return (v + (1 << (s - 1))) >> s
    return v << (-s)


def prelu_int(x_q: np.ndarray, a_q: np.ndarray, n_a: int, bits: int = 8) -> np.ndarray:
    """``y_q = x_q`` where ``x_q >= 0``, else ``SAT_bits(SHR(x_q * a_q[c], n_a))`` (channel axis 1)."""
    x_q = x_q.astype(np.int64)
    a = a_q.reshape(()) if a_q.size == 1 else a_q.reshape((1, a_q.size) + (1,) * (x_q.ndim - 2))
    neg = np.clip(shr(x_q * a, n_a), -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return np.where(x_q >= 0, x_q, neg)
