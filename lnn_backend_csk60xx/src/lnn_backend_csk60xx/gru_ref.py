"""GRUInt's integer semantics on the Venus chip (spec/int8-seq-ops.md 2.2.4), in numpy: the reference the C kernel
(``csrc/ops/gru.c``) and the tests are held to. Torch-free.

One sequence (batch 1), forward, zero initial state (the chip reads neither h0 nor lengths)::

    h = 0                                                        int8 [H], exponent n_o
    for t in 0..T-1:
       gi = SAT_32(SHR(SAT_32(SAT_32(x_t . W_ih^T) + b_ih), n_i + n_iw - 11))     Q11, int32 [3H]
       gh = SAT_32(SHR(SAT_32(SAT_32(h . W_hh^T) + b_hh), n_o + n_hw - 11))
       r  = sig8(SAT_16(gi_r + gh_r));   z = sig8(SAT_16(gi_z + gh_z))             Q7
       rn = SAT_32(SHR(r * gh_n, 7))                                              Q11
       n  = tanh8(SAT_16(gi_n + rn))                                              Q7
       h7 = SAT_8(SHR(h, 1))                     (the kernel treats h as Q8 whatever n_o is)
       h  = SAT_8(SHR(SAT_16(z * h7) + SAT_16((128 - z) * n), 14 - n_o))
       y_t = h

``sig8`` / ``tanh8`` are the 16-segment PWL functions of spec 1.3 (Q11 in) taken to Q7:
``SAT_8(SHR(SAT_16(pwl15(t)), 8))``. Gate blocks are in PyTorch order r, z, n; ``b_ih`` has exponent
``n_i + n_iw``, ``b_hh`` exponent ``n_o + n_hw``.

The chip's Luna routines do no scaling at all for a negative shift (spec 1.1); the contract here is the right-shift
range only: ``n_i + n_iw >= 11``, ``n_o + n_hw >= 11`` and ``n_o <= 14``, anything else raises ``ValueError``
(the backend's pack rules reject such a GRU before it gets here). ``n_o = 8`` is the only output exponent at which
the chip's hidden feedback is scaled right (spec 2.2.4); the arithmetic above is what the chip does for any
``n_o`` in range.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Q_GATE", "gru_int", "sig8", "tanh8"]

#: the gates' fixed-point format (the activations read Q11)
Q_GATE = 11

# spec 1.3: segment upper bounds, slopes, shifts, offsets of luna_sigmoid / luna_tanh
_SIG_B = np.array([971, 1699, 2347, 2974, 3614, 4291, 5026, 5861, 6831, 7864, 8987, 10375, 11594, 13168, 14730,
                   32768], np.int64)
_SIG_K = np.array([32316, 29471, 25891, 22068, 18225, 29057, 22206, 16113, 10881, 27353, 16611, 9242, 4618, 20670,
                   8610, 693], np.int64)
_SIG_SH = np.array([13, 13, 13, 13, 13, 14, 14, 14, 14, 16, 16, 16, 16, 19, 19, 19], np.int64)
_SIG_C0 = np.array([16384, 16721, 17464, 18559, 19954, 21585, 23380, 25249, 27121, 28807, 30096, 31107, 31839, 32199,
                    32502, 32724], np.int64)
_SIG_C1 = np.array([16384, 16047, 15304, 14209, 12814, 11183, 9388, 7519, 5647, 3961, 2672, 1661, 929, 569, 266, 44],
                   np.int64)
_TANH_B = np.array([512, 888, 1226, 1558, 1899, 2264, 2670, 3146, 3734, 4297, 4761, 5466, 6151, 7193, 8093, 32768],
                   np.int64)
_TANH_K = np.array([32266, 29154, 25374, 21309, 17272, 26886, 19904, 13765, 8599, 19497, 12047, 7324, 3373, 26820,
                    5531, 337], np.int64)
_TANH_SH = np.array([11, 11, 11, 11, 11, 12, 12, 12, 12, 14, 14, 14, 14, 18, 18, 18], np.int64)
_TANH_C = np.array([0, 778, 2417, 4851, 7922, 11474, 15334, 19335, 23303, 26699, 28653, 30026, 31344, 31981, 32565,
                    32725], np.int64)


def _sat(v: np.ndarray, bits: int) -> np.ndarray:
    hi = (1 << (bits - 1)) - 1
    return np.clip(v, -hi - 1, hi)


def _shr(v: np.ndarray, s: int) -> np.ndarray:
    """``SHR(v, s)``, round half up, for ``s >= 0`` on int64."""
    if s == 0:
        return v
    return (v + (np.int64(1) << np.int64(s - 1))) >> np.int64(s)


def sig8(t: np.ndarray) -> np.ndarray:
    """``luna_sigmoid_int8``: int16 Q11 in, int8 Q7 (0..127) out."""
    t = np.asarray(t, np.int64)
    s = np.searchsorted(_SIG_B, np.abs(t), side="left")
    y15 = (_SIG_K[s] * t >> _SIG_SH[s]) + np.where(t >= 0, _SIG_C0[s], _SIG_C1[s])
    return _sat(_shr(_sat(y15, 16), 8), 8)


def tanh8(t: np.ndarray) -> np.ndarray:
    """``luna_tanh_int8``: int16 Q11 in, int8 Q7 out (not exactly odd)."""
    t = np.asarray(t, np.int64)
    a = np.where(t == -32768, 32767, np.abs(t))
    s = np.searchsorted(_TANH_B, a, side="left")
    k, sh, c = _TANH_K[s], _TANH_SH[s], _TANH_C[s]
    y15 = np.where(t >= 0, (k * a >> sh) + c, (-k * a >> sh) - c)
    return _sat(_shr(_sat(y15, 16), 8), 8)


def _check(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"GRUInt: {name} = {value} is outside {lo}..{hi} (the chip's Luna shifts only go right)")


def gru_int(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray, *, n_i: int,
            n_iw: int, n_hw: int, n_o: int) -> tuple[np.ndarray, np.ndarray]:
    """The chip's GRUInt on one sequence: ``x`` int8 ``[T, D]``, ``w_ih`` int8 ``[3H, D]``, ``w_hh`` int8 ``[3H, H]``,
    ``b_ih`` / ``b_hh`` int32 ``[3H]``; exponents of x, w_ih, w_hh and of the output (= hidden state). Returns
    ``(y int8 [T, H], h_n int8 [H])``."""
    x = np.asarray(x, np.int64)
    w_ih, w_hh = np.asarray(w_ih, np.int64), np.asarray(w_hh, np.int64)
    b_ih, b_hh = np.asarray(b_ih, np.int64), np.asarray(b_hh, np.int64)
    if x.ndim != 2 or w_ih.ndim != 2 or w_hh.ndim != 2 or w_ih.shape[1] != x.shape[1]:
        raise ValueError(f"GRUInt: x {x.shape} and w_ih {w_ih.shape} must be [T, D] and [3H, D]")
    h3 = w_ih.shape[0]
    if h3 % 3 or w_hh.shape != (h3, h3 // 3) or b_ih.shape != (h3,) or b_hh.shape != (h3,):
        raise ValueError(f"GRUInt: w_ih {w_ih.shape}, w_hh {w_hh.shape}, b_ih {b_ih.shape}, b_hh {b_hh.shape} do not "
                         "fit [3H, D], [3H, H], [3H], [3H]")
    _check("n_i + n_iw - 11", n_i + n_iw - Q_GATE, 0, 62)
    _check("n_o + n_hw - 11", n_o + n_hw - Q_GATE, 0, 62)
    _check("14 - n_o", 14 - n_o, 0, 62)
    hid = h3 // 3
    s_i, s_h, s_o = n_i + n_iw - Q_GATE, n_o + n_hw - Q_GATE, 14 - n_o
    h = np.zeros(hid, np.int64)
    y = np.zeros((x.shape[0], hid), np.int8)
    for t in range(x.shape[0]):
        gi = _sat(_shr(_sat(_sat(w_ih @ x[t], 32) + b_ih, 32), s_i), 32)
        gh = _sat(_shr(_sat(_sat(w_hh @ h, 32) + b_hh, 32), s_h), 32)
        r = sig8(_sat(gi[:hid] + gh[:hid], 16))
        z = sig8(_sat(gi[hid:2 * hid] + gh[hid:2 * hid], 16))
        rn = _sat(_shr(r * gh[2 * hid:], 7), 32)
        n = tanh8(_sat(gi[2 * hid:] + rn, 16))
        h7 = _sat(_shr(h, 1), 8)
        h = _sat(_shr(_sat(z * h7, 16) + _sat((128 - z) * n, 16), s_o), 8)
        y[t] = h
    return y, h.astype(np.int8)
