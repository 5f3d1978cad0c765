"""The C GRUInt kernel (csrc/ops/gru.c) against the numpy reference (ops/gru.py gru_int), bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lnn_backend_csk60xx._sim import ffi, lib
from lnn_backend_csk60xx.ops.gru import gru_int
from lnn_backend_csk60xx.simulator import ISA_PATHS, available_isas

#: the dot products' paths this CPU runs (the model's path picks one; every one must equal the reference)
ISAS = [ISA_PATHS.index(name) for name in available_isas()]


def run_kernel(x, w_ih, w_hh, b_ih, b_hh, *, n_i, n_iw, n_hw, n_o, h0=None, length=None, reverse=False, isa=0):
    t, d = x.shape
    h = w_hh.shape[1]
    bufs = [np.ascontiguousarray(a, dt) for a, dt in ((x, np.int8), (w_ih, np.int8), (w_hh, np.int8),
                                                        (b_ih, np.int32), (b_hh, np.int32))]
    h0 = None if h0 is None else np.ascontiguousarray(h0, np.int8)
    y, h_n, scratch = np.full((t, h), 99, np.int8), np.zeros(h, np.int8), np.zeros(6 * h, np.int64)
    acc = np.zeros(3 * h, np.int32)
    ptr = [ffi.from_buffer(a) for a in (*bufs, y, h_n, scratch, acc)]
    st_ = lib.lnn_sim_gru_s8(n_i, n_iw, n_hw, n_o, t, t if length is None else length, int(reverse), d, h,
                             ffi.cast("int8_t *", ptr[0]), ffi.cast("int8_t *", ptr[1]), ffi.cast("int8_t *", ptr[2]),
                             ffi.cast("int32_t *", ptr[3]), ffi.cast("int32_t *", ptr[4]),
                             ffi.NULL if h0 is None else ffi.cast("int8_t *", ffi.from_buffer(h0)),
                             ffi.cast("int8_t *", ptr[5]), ffi.cast("int8_t *", ptr[6]), isa,
                             ffi.cast("int64_t *", ptr[7]), ffi.cast("int32_t *", ptr[8]))
    return st_, y, h_n


@st.composite
def case(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    t, d, h = draw(st.integers(1, 12)), draw(st.integers(1, 20)), draw(st.integers(1, 16))
    n_o = draw(st.integers(0, 14))
    n_iw = draw(st.integers(0, 12))
    n_i = draw(st.integers(max(-4, 11 - n_iw), 16))
    n_hw = draw(st.integers(max(-4, 11 - n_o), 16))
    bmax = draw(st.sampled_from([0, 1 << 6, 1 << 12, 1 << 18, 1 << 24, (1 << 31) - 1]))
    return dict(x=rng.integers(-128, 128, (t, d)), w_ih=rng.integers(-128, 128, (3 * h, d)),
                w_hh=rng.integers(-128, 128, (3 * h, h)), b_ih=rng.integers(-bmax - 1, bmax + 1, 3 * h),
                b_hh=rng.integers(-bmax - 1, bmax + 1, 3 * h), n_i=n_i, n_iw=n_iw, n_hw=n_hw, n_o=n_o,
                h0=rng.integers(-128, 128, h) if draw(st.booleans()) else None,
                length=draw(st.integers(0, t)) if draw(st.booleans()) else None, reverse=draw(st.booleans()))


@settings(max_examples=150, deadline=None)
@given(case(), st.sampled_from(ISAS))
def test_kernel_equals_the_reference(c, isa):
    """Random sizes, full int8 ranges, biases up to int32 (gate sums saturate int16), every alignment shift from
    0 (Q11 exactly) up, every output exponent 0..14, initial state, lengths, both directions."""
    st_, y, h_n = run_kernel(**c, isa=isa)
    assert st_ == lib.LNN_SIM_OK
    want_y, want_h = gru_int(**c)
    assert np.array_equal(y, want_y) and np.array_equal(h_n, want_h)


@pytest.mark.parametrize("kw", [dict(n_i=3, n_iw=7), dict(n_o=8, n_hw=2), dict(n_o=15, n_hw=8)])
def test_kernel_refuses_left_shifts(kw):
    args = {**dict(n_i=4, n_iw=7, n_hw=7, n_o=8), **kw}
    z = np.zeros
    st_, _, _ = run_kernel(z((2, 3)), z((6, 3)), z((6, 2)), z(6), z(6), **args)
    assert st_ == lib.LNN_SIM_E_ATTR


def test_reference_state_lengths_and_direction():
    """The state carries a sequence on (two halves = the whole); lengths stop early and zero the rest; reverse
    equals forward on the reversed sequence."""
    rng = np.random.default_rng(3)
    w = dict(w_ih=rng.integers(-128, 128, (9, 4)), w_hh=rng.integers(-128, 128, (9, 3)),
             b_ih=rng.integers(-999, 999, 9), b_hh=rng.integers(-999, 999, 9), n_i=5, n_iw=7, n_hw=7, n_o=8)
    x = rng.integers(-128, 128, (9, 4))
    y, _ = gru_int(x, **w)
    y5, h5 = gru_int(x[:5], **w)
    assert np.array_equal(y[:5], y5) and np.array_equal(y[5:], gru_int(x[5:], **w, h0=h5)[0])
    yr, hr = gru_int(x, **w, reverse=True)
    yf, hf = gru_int(x[::-1], **w)
    assert np.array_equal(yr, yf[::-1]) and np.array_equal(hr, hf)
    yl, hl = gru_int(x, **w, length=4)
    assert np.array_equal(yl[:4], y[:4]) and not yl[4:].any() and np.array_equal(hl, y[3])
