"""The C LSTMInt kernel (csrc/ops/lstm.c) against the numpy reference (ops/lstm.py lstm_int), bit for bit, and the
reference's own invariants (spec int8-seq-ops 2.1.4)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lnn_backend_csk60xx._sim import ffi, lib
from lnn_backend_csk60xx.ops.gru import sig8, tanh8
from lnn_backend_csk60xx.ops.lstm import lstm_int
from lnn_backend_csk60xx.simulator import ISA_PATHS, available_isas

#: the dot products' paths this CPU runs (the model's path picks one; every one must equal the reference)
ISAS = [ISA_PATHS.index(name) for name in available_isas()]


def run_kernel(x, w_ih, w_hh, b_ih, b_hh, *, n_i, n_iw, n_hw, n_o, h0=None, c0=None, length=None, reverse=False,
               isa=0):
    t, d = x.shape
    h = w_hh.shape[1]
    bufs = [np.ascontiguousarray(a, dt) for a, dt in ((x, np.int8), (w_ih, np.int8), (w_hh, np.int8),
                                                        (b_ih, np.int32), (b_hh, np.int32))]
    h0 = None if h0 is None else np.ascontiguousarray(h0, np.int8)
    c0 = None if c0 is None else np.ascontiguousarray(c0, np.int16)
    y, h_n, c_n = np.full((t, h), 99, np.int8), np.zeros(h, np.int8), np.zeros(h, np.int16)
    scratch, acc = np.zeros(8 * h, np.int64), np.zeros(4 * h, np.int32)
    p = [ffi.from_buffer(a) for a in (*bufs, y, h_n, c_n, scratch, acc)]
    st_ = lib.lnn_sim_lstm_s8(n_i, n_iw, n_hw, n_o, t, t if length is None else length, int(reverse), d, h,
                              ffi.cast("int8_t *", p[0]), ffi.cast("int8_t *", p[1]), ffi.cast("int8_t *", p[2]),
                              ffi.cast("int32_t *", p[3]), ffi.cast("int32_t *", p[4]),
                              ffi.NULL if h0 is None else ffi.cast("int8_t *", ffi.from_buffer(h0)),
                              ffi.NULL if c0 is None else ffi.cast("int16_t *", ffi.from_buffer(c0)),
                              ffi.cast("int8_t *", p[5]), ffi.cast("int8_t *", p[6]), ffi.cast("int16_t *", p[7]),
                              isa, ffi.cast("int64_t *", p[8]), ffi.cast("int32_t *", p[9]))
    return st_, y, h_n, c_n


@st.composite
def case(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    t, d, h = draw(st.integers(1, 12)), draw(st.integers(1, 20)), draw(st.integers(1, 16))
    n_o = draw(st.integers(-2, 14))
    n_iw = draw(st.integers(-2, 12))
    # both signs of the Q11 alignment, down to the 30-bit left-shift limit
    n_i = draw(st.integers(max(-12, -19 - n_iw), 16))
    n_hw = draw(st.integers(max(-12, -19 - n_o), 16))
    bmax = draw(st.sampled_from([0, 1 << 6, 1 << 12, 1 << 18, 1 << 24, (1 << 31) - 1]))
    state = draw(st.booleans())
    return dict(x=rng.integers(-128, 128, (t, d)), w_ih=rng.integers(-128, 128, (4 * h, d)),
                w_hh=rng.integers(-128, 128, (4 * h, h)), b_ih=rng.integers(-bmax - 1, bmax + 1, 4 * h),
                b_hh=rng.integers(-bmax - 1, bmax + 1, 4 * h), n_i=n_i, n_iw=n_iw, n_hw=n_hw, n_o=n_o,
                h0=rng.integers(-128, 128, h) if state else None,
                c0=rng.integers(-32768, 32768, h) if state else None,
                length=draw(st.integers(0, t)) if draw(st.booleans()) else None, reverse=draw(st.booleans()))


@settings(max_examples=200, deadline=None)
@given(case(), st.sampled_from(ISAS))
def test_kernel_equals_the_reference(c, isa):
    """Random sizes, full int8 ranges, biases up to int32 (gate sums saturate int16, the cell saturates), left and
    right Q11 alignment, output exponents -2..14, initial state, lengths, both directions."""
    st_, y, h_n, c_n = run_kernel(**c, isa=isa)
    assert st_ == lib.LNN_SIM_OK
    want_y, want_h, want_c = lstm_int(**c)
    assert np.array_equal(y, want_y) and np.array_equal(h_n, want_h) and np.array_equal(c_n, want_c)


def test_the_cell_feeds_tanh_through_an_int16_saturation():
    """Gates open (i = f = o = 127/128, g = 127/128): the Q7 cell settles near 127 * 127 = 16129 (f < 1, so it
    never leaves int16), while tanh reads SAT_16(SHR(p, 3)), saturated at the first step from an extreme cell;
    the kernel and the reference agree on every step, from zero and from extreme initial cells."""
    w_ih, w_hh, b = np.zeros((4, 1)), np.zeros((4, 1)), np.full(4, 30000)
    x = np.zeros((400, 1))
    for c0 in (None, np.array([32767]), np.array([-32768])):
        h0 = None if c0 is None else np.array([-128])
        st_, y, h_n, c_n = run_kernel(x, w_ih, w_hh, b, np.zeros(4), n_i=0, n_iw=11, n_hw=0, n_o=7, h0=h0, c0=c0)
        want = lstm_int(x, w_ih, w_hh, b, np.zeros(4), n_i=0, n_iw=11, n_hw=0, n_o=7, h0=h0, c0=c0)
        assert st_ == lib.LNN_SIM_OK and np.array_equal(y, want[0]) and np.array_equal(c_n, want[2])
        assert 13000 < c_n[0] < 17500  # 400 steps with f = 127/128: most of the way to 127 * 127
        if c0 is not None:  # |SHR(p, 3)| > 2^18: tanh reads +-32767 / -32768, so |h| = 127 * 127 / 128
            assert abs(int(y[0, 0])) in (126, 127) and np.sign(y[0, 0]) == np.sign(c0[0])


def test_alignment_both_directions_is_exact():
    """gi = 3 at q = 9 is 12 in Q11 (left shift 2); at q = 13 it is SHR(3, 2) = 1 (half up)."""
    from lnn_backend_csk60xx.ops.lstm import _q11
    assert _q11(np.array([3], np.int64), 9)[0] == 12 and _q11(np.array([3], np.int64), 13)[0] == 1
    assert _q11(np.array([-(1 << 30)], np.int64), 9)[0] == -(1 << 31)  # saturates int32


def test_reference_is_causal_and_reverse_reads_backwards():
    rng = np.random.default_rng(0)
    w = dict(w_ih=rng.integers(-128, 128, (12, 4)), w_hh=rng.integers(-128, 128, (12, 3)),
             b_ih=rng.integers(-999, 999, 12), b_hh=rng.integers(-999, 999, 12), n_i=5, n_iw=7, n_hw=7, n_o=7)
    x = rng.integers(-128, 128, (9, 4))
    y, _, _ = lstm_int(x, **w)
    y5, h5, c5 = lstm_int(x[:5], **w)
    assert np.array_equal(y[:5], y5)
    y2, _, _ = lstm_int(x[5:], **w, h0=h5, c0=c5)  # the state carries the sequence on
    assert np.array_equal(y[5:], y2)
    yr, hr, _ = lstm_int(x, **w, reverse=True)
    yf, hf, _ = lstm_int(x[::-1], **w)
    assert np.array_equal(yr, yf[::-1]) and np.array_equal(hr, hf)
    yl, hl, _ = lstm_int(x, **w, length=4)
    assert np.array_equal(yl[:4], y[:4]) and not yl[4:].any() and np.array_equal(hl, y[3])


def test_reference_follows_a_float_lstm():
    """With fine scales, the integers track a float LSTM cell (sigmoid/tanh PWL error ~1/128)."""
    rng = np.random.default_rng(1)
    d, h, t = 6, 5, 20
    wi, wh = rng.uniform(-0.5, 0.5, (4 * h, d)), rng.uniform(-0.5, 0.5, (4 * h, h))
    x = rng.uniform(-1, 1, (t, d))
    n_i, n_w, n_o = 6, 7, 7
    q = lambda v, n: np.clip(np.floor(v * 2.0 ** n + 0.5), -128, 127)
    y, _, _ = lstm_int(q(x, n_i), q(wi, n_w), q(wh, n_w), np.zeros(4 * h), np.zeros(4 * h), n_i=n_i, n_iw=n_w,
                       n_hw=n_w, n_o=n_o)
    sg = lambda v: 1 / (1 + np.exp(-v))
    hf, cf, ys = np.zeros(h), np.zeros(h), []
    for s in range(t):
        g = wi @ x[s] + wh @ hf
        i, f, gg, o = sg(g[:h]), sg(g[h:2 * h]), np.tanh(g[2 * h:3 * h]), sg(g[3 * h:])
        cf = f * cf + i * gg
        hf = o * np.tanh(cf)
        ys.append(hf)
    assert np.abs(y / 2.0 ** n_o - np.array(ys)).max() < 0.08


def test_activations_are_the_shared_tables():
    """sig8/tanh8 come from ops/gru.py (one copy of spec 1.3's tables): spot values."""
    assert sig8(np.array([0]))[0] == 64 and tanh8(np.array([0]))[0] == 0 and sig8(np.array([32767]))[0] == 127


@pytest.mark.parametrize("kw", [dict(n_o=15, n_hw=8), dict(n_i=-20, n_iw=0), dict(n_o=0, n_hw=-20)])
def test_kernel_refuses_outside_the_shift_contract(kw):
    args = {**dict(n_i=4, n_iw=7, n_hw=7, n_o=7), **kw}
    z = np.zeros
    st_, _, _, _ = run_kernel(z((2, 3)), z((8, 3)), z((8, 2)), z(8), z(8), **args)
    assert st_ == lib.LNN_SIM_E_ATTR
    with pytest.raises(ValueError, match="outside"):
        lstm_int(z((2, 3)), z((8, 3)), z((8, 2)), z(8), z(8), **args)
