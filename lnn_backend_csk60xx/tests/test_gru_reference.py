"""The numpy reference of GRUInt (spec/int8-seq-ops.md 2.2.4): its invariants, and its agreement with a float GRU."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lnn_backend_csk60xx.ops.gru import gru_int, sig8, tanh8

ALL16 = np.arange(-32768, 32768, dtype=np.int64)


@st.composite
def gru_case(draw, small: bool = False):
    """A random GRU: T, D, H, int8 tensors, int32 biases and exponents in the contract's range."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    t, d, h = draw(st.integers(1, 6)), draw(st.integers(1, 9)), draw(st.integers(1, 7))
    hi = 64 if small else 128
    n_o = draw(st.integers(4, 14))
    n_i, n_iw = draw(st.integers(0, 8)), draw(st.integers(3, 9))
    n_hw = draw(st.integers(max(3, 11 - n_o), 10))
    n_i = max(n_i, 11 - n_iw)
    bmax = draw(st.sampled_from([0, 1 << 8, 1 << 14, 1 << 20]))
    return dict(x=rng.integers(-hi, hi, (t, d)), w_ih=rng.integers(-hi, hi, (3 * h, d)),
                w_hh=rng.integers(-hi, hi, (3 * h, h)), b_ih=rng.integers(-bmax, bmax + 1, 3 * h),
                b_hh=rng.integers(-bmax, bmax + 1, 3 * h), n_i=n_i, n_iw=n_iw, n_hw=n_hw, n_o=n_o)


def test_activations_over_every_int16():
    s, th = sig8(ALL16), tanh8(ALL16)
    assert s.min() == 0 and s.max() == 127 and th.min() == -128 and th.max() == 127
    assert np.all(np.diff(s) >= 0) and np.all(np.diff(th) >= 0)
    assert sig8(np.array([0]))[0] == 64 and tanh8(np.array([0]))[0] == 0
    assert sig8(np.array([2048]))[0] == 94  # sigmoid(1) = 0.731 in Q7


@settings(max_examples=60, deadline=None)
@given(gru_case())
def test_output_is_the_last_state_and_causal(case):
    y, h_n = gru_int(**case)
    assert y.dtype == np.int8 and y.shape == (case["x"].shape[0], case["w_hh"].shape[1])
    assert np.array_equal(y[-1], h_n)
    cut = max(1, case["x"].shape[0] // 2)
    y2, _ = gru_int(**{**case, "x": case["x"][:cut]})
    assert np.array_equal(y[:cut], y2)  # step t reads x[:t+1] only


@settings(max_examples=40, deadline=None)
@given(gru_case())
def test_zero_input_and_bias_keep_the_zero_state(case):
    h3 = case["w_ih"].shape[0]
    y, h_n = gru_int(**{**case, "x": np.zeros_like(case["x"]), "b_ih": np.zeros(h3, np.int64),
                        "b_hh": np.zeros(h3, np.int64)})
    assert not y.any() and not h_n.any()


@pytest.mark.parametrize("n_o", [4, 7, 8, 10, 14])
@pytest.mark.parametrize("sign", [1, -1])
def test_saturated_gates_saturate_the_state(n_o, sign):
    """z = sig8(-32768) = 0 and n = tanh8(+-32768): h = SAT_8(SHR(128 * n, 14 - n_o)) at every step."""
    h = 3
    big = 1 << 30
    b_ih = np.array([0] * h + [-big] * h + [sign * big] * h)
    x = np.ones((4, 2), np.int64)
    y, _ = gru_int(x, np.zeros((3 * h, 2)), np.zeros((3 * h, h)), b_ih, np.zeros(3 * h), n_i=6, n_iw=6, n_hw=8,
                   n_o=n_o)
    n, s = (127 if sign > 0 else -128), 14 - n_o
    want = np.clip((128 * n + (1 << s >> 1)) >> s, -128, 127)
    assert np.all(y == want)
    if n_o >= 7:  # the int8 state itself saturates
        assert want == (127 if sign > 0 else -128)


@settings(max_examples=60, deadline=None)
@given(gru_case(small=True), st.sampled_from(["x", "w_ih", "w_hh"]))
def test_q11_alignment_is_exact_for_any_right_shift(case, which):
    """Doubling an operand and raising its exponent by one (one more right shift in the Q11 alignment) changes no
    output: SHR(2v, s + 1) = SHR(v, s)."""
    y, h_n = gru_int(**case)
    exp = {"x": "n_i", "w_ih": "n_iw", "w_hh": "n_hw"}[which]
    bias = "b_hh" if which == "w_hh" else "b_ih"
    y2, h_n2 = gru_int(**{**case, which: 2 * case[which], bias: 2 * case[bias], exp: case[exp] + 1})
    assert np.array_equal(y, y2) and np.array_equal(h_n, h_n2)


@pytest.mark.parametrize("kw,msg", [(dict(n_i=2, n_iw=8), "n_i \\+ n_iw - 11 = -1"),
                                    (dict(n_o=8, n_hw=2), "n_o \\+ n_hw - 11 = -1"),
                                    (dict(n_o=15, n_hw=8), "14 - n_o = -1")])
def test_left_shifts_are_outside_the_contract(kw, msg):
    """The chip does no scaling at all for a negative Luna shift (spec 1.1): the reference refuses it."""
    args = {**dict(n_i=4, n_iw=7, n_hw=7, n_o=8), **kw}
    with pytest.raises(ValueError, match=msg):
        gru_int(np.zeros((1, 2)), np.zeros((6, 2)), np.zeros((6, 2)), np.zeros(6), np.zeros(6), **args)


def _float_gru(x, w_ih, w_hh, b_ih, b_hh, h_max):
    hid = w_hh.shape[1]
    h = np.zeros(hid)
    out = []
    for xt in x:
        gi, gh = w_ih @ xt + b_ih, w_hh @ h + b_hh
        r = 1 / (1 + np.exp(-(gi[:hid] + gh[:hid])))
        z = 1 / (1 + np.exp(-(gi[hid:2 * hid] + gh[hid:2 * hid])))
        n = np.tanh(gi[2 * hid:] + r * gh[2 * hid:])
        h = np.clip((1 - z) * n + z * h, -h_max - 2**-8, h_max)
        out.append(h)
    return np.array(out)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_close_to_a_float_gru_at_n_o_8(seed):
    """At n_o = 8 (the chip's hidden feedback reads Q8) the integers follow torch's GRU equations with the state
    clipped to the int8 range at that exponent (|h| < 0.5)."""
    rng = np.random.default_rng(seed)
    t, d, h = 5, 6, 4
    n_i, n_iw, n_hw, n_o = 5, 7, 7, 8
    x = rng.integers(-64, 64, (t, d))
    w_ih, w_hh = rng.integers(-40, 40, (3 * h, d)), rng.integers(-40, 40, (3 * h, h))
    b_ih = rng.integers(-(1 << 10), 1 << 10, 3 * h)
    b_hh = rng.integers(-(1 << 10), 1 << 10, 3 * h)
    y, _ = gru_int(x, w_ih, w_hh, b_ih, b_hh, n_i=n_i, n_iw=n_iw, n_hw=n_hw, n_o=n_o)
    ref = _float_gru(x / 2**n_i, w_ih / 2**n_iw, w_hh / 2**n_hw, b_ih / 2**(n_i + n_iw), b_hh / 2**(n_o + n_hw),
                     127 / 2**n_o)
    err = np.abs(y / 2**n_o - ref)
    assert err.max() < 0.08, err.max()
