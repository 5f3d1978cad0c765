"""Independent numpy int64 references of the integer semantics (spec/int8-ops.md), written without
lnn's own helpers, for the arithmetic tests (the ``ref`` fixture hands out this module)."""

from __future__ import annotations

import numpy as np
import torch


def shr(v, s: int):
    """``SHR(v, s)`` on int64 arrays: ``floor(v / 2**s + 0.5)`` as ``floor((2v + 2**s) / 2**(s+1))``."""
    v = np.asarray(v, dtype=np.int64)
    if s > 0:
        return np.floor_divide(2 * v + (1 << s), 1 << (s + 1))
    if s < 0:
        return v * (1 << -s)
    return v.copy()


def sat(v, bits: int = 8):
    return np.clip(np.asarray(v, dtype=np.int64), -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def rq(acc, s: int, bits: int = 8):
    """``RQ_b(acc, s) = SAT_b(SHR(acc, s))``."""
    return sat(shr(acc, s), bits)


def rescale(q, n_in: int, n_out: int, bits: int = 8):
    """Spec 1.3: up-scaling multiplies and saturates, down-scaling is ``SAT(SHR(q, n_in - n_out))``."""
    return sat(shr(q, n_in - n_out), bits)


def quant_f32(x, n: int, bits: int = 8):
    """The chip's Quant op: ``SAT(floorf(x * 2**n + 0.5f))`` evaluated in float32."""
    v = np.asarray(x, dtype=np.float32) * np.float32(2.0**n) + np.float32(0.5)
    return sat(np.floor(v).astype(np.int64), bits)


def floor_rule(w) -> int:
    """The largest ``n`` with ``max|w| * 2**n <= 127`` (exact in float64 for float32 weights)."""
    m = float(np.abs(np.asarray(w, dtype=np.float64)).max())
    n = 0
    while m * 2.0**n > 127:
        n -= 1
    while m * 2.0 ** (n + 1) <= 127:
        n += 1
    return n


def round_half_up_int(v) -> np.ndarray:
    """``R(v)`` of float64 values as int64."""
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def conv_ref(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """Exact int64 convolution, 1-D (N, C, L) or 2-D (N, C, H, W), zero padding, groups; bias added per channel."""
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    one_d = x.ndim == 3
    if one_d:
        x, w = x[:, :, None, :], w[:, :, None, :]
        stride, padding, dilation = (1, stride[0]), (0, padding[0]), (1, dilation[0])
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    ph, pw = padding
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=np.int64)
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    oh = (h + 2 * ph - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * pw - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, m, oh, ow), dtype=np.int64)
    mg = m // groups
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * mg:(g + 1) * mg]
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dilation[0], j * dilation[1]
                win = xs[:, :, r0:r0 + stride[0] * (oh - 1) + 1:stride[0], c0:c0 + stride[1] * (ow - 1) + 1:stride[1]]
                out[:, g * mg:(g + 1) * mg] += np.einsum("nchw,mc->nmhw", win, ws[:, :, i, j])
    if b is not None:
        out += np.asarray(b, dtype=np.int64).reshape(1, -1, 1, 1)
    return out[:, :, 0, :] if one_d else out


def linear_ref(x, w, b=None):
    acc = np.asarray(x, dtype=np.int64) @ np.asarray(w, dtype=np.int64).T
    return acc + np.asarray(b, dtype=np.int64) if b is not None else acc


def to_int(t: torch.Tensor, n: int) -> np.ndarray:
    """``t * 2**n`` as int64, asserting it lies on the grid (an integer)."""
    v = t.detach().double().numpy() * 2.0**n
    r = np.round(v)
    assert np.array_equal(v, r), f"tensor is not on the 2**-{n} grid"
    return r.astype(np.int64)


def set_exponent(q, n: int) -> None:
    """Make an ActQuantizer's frozen (eval) exponent ``n`` (ema_max rule: ``R(log2(128 / running))``)."""
    q.running.fill_(128.0 / 2.0**n)
    q.num_batches.fill_(max(int(q.num_batches), 1))
