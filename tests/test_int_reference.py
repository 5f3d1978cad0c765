"""Per-op numpy int64 references (spec/int8-ops.md 1.2, 1.3, 3.1, 3.8, 3.10-3.18) against the eval forward of the
quantized modules, and the integer primitives of ``lnn_core.quant.functional`` against Python integers.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from torch import nn

import lnn_core as lnn
from lnn_core.quant import functional as qf
from lnn_core.quant.quantizers import fake_quant_bias

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Fn(nn.Module):
    """``forward(x0) = fn(self, x0)``: a model made of one op on a float input (which gets a QuantStub)."""

    def __init__(self, fn, **modules: nn.Module) -> None:
        super().__init__()
        self._fn = fn
        for k, v in modules.items():
            setattr(self, k, v)

    def forward(self, x0):
        return self._fn(self, x0)


class Fn2(Fn):
    def forward(self, x0, x1):
        return self._fn(self, x0, x1)


class Fn3(Fn):
    def forward(self, x0, x1, x2):
        return self._fn(self, x0, x1, x2)


def _prepared(host, fn, n_inputs: int = 1, **modules: nn.Module) -> nn.Module:
    m = {1: Fn, 2: Fn2, 3: Fn3}[n_inputs](fn, **modules)
    return lnn.init(m, host=host).eval()


def _stubs(m, n_inputs: int):
    return [m.get_submodule(f"q_input_x{i}").out_q for i in range(n_inputs)]


def _op(m, path: str):
    return m.get_submodule(path)


def _ints(draw, shape, lo=-128, hi=127):
    return np.array(draw(st.lists(st.integers(lo, hi), min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                    dtype=np.int64).reshape(shape)


def _float(q: np.ndarray, n: int) -> torch.Tensor:
    return torch.from_numpy(q.astype(np.float32) / np.float32(2.0**n))


# -- add / sub -------------------------------------------------------------------------------------------------

@SETTINGS
@given(data=st.data(), n_x=st.integers(0, 9), n_y=st.integers(0, 9), n_req=st.integers(0, 12),
       sign=st.sampled_from([1, -1]))
def test_add_sub_rescale_each_operand(host, ref, data, n_x, n_y, n_req, sign):
    fn = (lambda m, a, b: a + b) if sign > 0 else (lambda m, a, b: a - b)
    m = _prepared(host, fn, 2)
    op = _op(m, "q_add" if sign > 0 else "q_sub")
    sx, sy = _stubs(m, 2)
    ref.set_exponent(sx, n_x)
    ref.set_exponent(sy, n_y)
    ref.set_exponent(op.out_q, n_req)
    qx, qy = _ints(data.draw, (2, 5)), _ints(data.draw, (2, 5))
    y = m(_float(qx, n_x), _float(qy, n_y))
    n_o = min(n_req, n_x, n_y)  # n_o <= min(n_x, n_y)
    assert op.out_q.current() == n_o
    expected = ref.sat(ref.shr(qx, n_x - n_o) + sign * ref.shr(qy, n_y - n_o))
    np.testing.assert_array_equal(ref.to_int(y, n_o), expected)


def test_add_rounds_each_operand_separately(host, ref):
    """x = 1, y = 1 at n = 1 into n_o = 0: SHR(1, 1) + SHR(1, 1) = 2, not SHR(2, 1) = 1; and -1 + -1 -> 0."""
    m = _prepared(host, lambda m, a, b: a + b, 2)
    for q in _stubs(m, 2):
        ref.set_exponent(q, 1)
    ref.set_exponent(m.q_add.out_q, 0)
    y = m(torch.tensor([0.5, -0.5, 63.5, -64.0]), torch.tensor([0.5, -0.5, 63.5, -64.0]))
    np.testing.assert_array_equal(ref.to_int(y, 0), [2, 0, 127, -128])


# -- mul ---------------------------------------------------------------------------------------------------------

@SETTINGS
@given(data=st.data(), n_x=st.integers(0, 8), n_y=st.integers(0, 8), n_req=st.integers(0, 20))
def test_mul(host, ref, data, n_x, n_y, n_req):
    m = _prepared(host, lambda m, a, b: a * b, 2)
    sx, sy = _stubs(m, 2)
    ref.set_exponent(sx, n_x)
    ref.set_exponent(sy, n_y)
    ref.set_exponent(m.q_mul.out_q, n_req)
    qx, qy = _ints(data.draw, (3, 4)), _ints(data.draw, (3, 4))
    y = m(_float(qx, n_x), _float(qy, n_y))
    n_o = min(n_req, n_x + n_y)
    assert m.q_mul.out_q.current() == n_o
    np.testing.assert_array_equal(ref.to_int(y, n_o), ref.rq(qx * qy, n_x + n_y - n_o))


@pytest.mark.parametrize("const", [0.3, -1.7, 5.0, 0.0078125, -100.0])
def test_mul_by_python_number(host, ref, const):
    """The number becomes an int8 constant at its floor-rule exponent: ``c_q = SAT(R(c * 2**n_c))``."""
    m = _prepared(host, lambda m, a: a * const, 1)
    (sx,) = _stubs(m, 1)
    n_x = 5
    ref.set_exponent(sx, n_x)
    n_c = ref.floor_rule([const])
    c_q = int(ref.sat(ref.round_half_up_int(const * 2.0**n_c)))
    n_o = min(4, n_x + n_c)
    ref.set_exponent(m.q_mul.out_q, n_o)
    qx = np.arange(-128, 128, dtype=np.int64).reshape(16, 16)
    y = m(_float(qx, n_x))
    np.testing.assert_array_equal(ref.to_int(y, n_o), ref.rq(qx * c_q, n_x + n_c - n_o))


# -- cat ---------------------------------------------------------------------------------------------------------

@SETTINGS
@given(data=st.data(), exps=st.lists(st.integers(0, 9), min_size=2, max_size=3), n_req=st.integers(0, 12))
def test_cat_rescales_each_input(host, ref, data, exps, n_req):
    k = len(exps)
    fn = (lambda m, a, b: torch.cat([a, b], 1)) if k == 2 else (lambda m, a, b, c: torch.cat([a, b, c], 1))
    m = _prepared(host, fn, k)
    for q, n in zip(_stubs(m, k), exps):
        ref.set_exponent(q, n)
    ref.set_exponent(m.q_cat.out_q, n_req)
    qs = [_ints(data.draw, (2, i + 1, 3)) for i in range(k)]
    y = m(*[_float(q, n) for q, n in zip(qs, exps)])
    n_o = n_req  # not capped by the inputs: up-scaling saturates
    assert m.q_cat.out_q.current() == n_o
    expected = np.concatenate([ref.rescale(q, n, n_o) for q, n in zip(qs, exps)], axis=1)
    np.testing.assert_array_equal(ref.to_int(y, n_o), expected)


def test_cat_upscaling_saturates(host, ref):
    m = _prepared(host, lambda m, a, b: torch.cat([a, b], 0), 2)
    sa, sb = _stubs(m, 2)
    ref.set_exponent(sa, 2)
    ref.set_exponent(sb, 6)
    ref.set_exponent(m.q_cat.out_q, 4)
    qa = np.array([-128, -33, -32, 31, 32, 127])
    qb = np.array([-128, -3, -2, -1, 1, 2, 3, 127])
    y = m(_float(qa, 2), _float(qb, 6))
    np.testing.assert_array_equal(ref.to_int(y, 4), [-128, -128, -128, 124, 127, 127,
                                                      -32, -1, 0, 0, 0, 1, 1, 32])


# -- average pooling ---------------------------------------------------------------------------------------------

def _avg_ref(ref, q: np.ndarray, kernel, stride, padding) -> np.ndarray:
    c = q.shape[1]
    ones = np.ones((c, 1) + tuple(kernel), dtype=np.int64)
    s = ref.conv_ref(q, ones, None, stride, padding, (1,) * len(kernel), c)
    area = int(np.prod(kernel))
    return ref.sat(np.floor_divide(2 * s + area, 2 * area))


@SETTINGS
@given(data=st.data(), kh=st.integers(1, 3), kw=st.integers(1, 3), n_x=st.integers(0, 8), module=st.booleans())
def test_avgpool2d(host, ref, data, kh, kw, n_x, module):
    sh = data.draw(st.integers(1, kh))
    sw = data.draw(st.integers(1, kw))
    ph = data.draw(st.integers(0, kh // 2))
    pw = data.draw(st.integers(0, kw // 2))
    if module:
        m = _prepared(host, lambda m, a: m.pool(a), 1, pool=nn.AvgPool2d((kh, kw), (sh, sw), (ph, pw)))
    else:
        m = _prepared(host, lambda m, a: F.avg_pool2d(a, (kh, kw), (sh, sw), (ph, pw)), 1)
    (sx,) = _stubs(m, 1)
    ref.set_exponent(sx, n_x)
    q = _ints(data.draw, (1, 2, 5, 5))
    y = m(_float(q, n_x))
    np.testing.assert_array_equal(ref.to_int(y, n_x), _avg_ref(ref, q, (kh, kw), (sh, sw), (ph, pw)))


def test_avgpool_ties_round_up(host, ref):
    """Window 2x3 (A = 6, not a power of two): sums of +-3 and +-9 are ties and go toward +inf."""
    m = _prepared(host, lambda m, a: F.avg_pool2d(a, (2, 3)), 1)
    (sx,) = _stubs(m, 1)
    ref.set_exponent(sx, 3)
    q = np.zeros((1, 1, 2, 12), dtype=np.int64)
    q[0, 0, 0, 0:3] = [1, 1, 1]  # s = 3 -> 0.5 -> 1
    q[0, 0, 0, 3:6] = [-1, -1, -1]  # s = -3 -> -0.5 -> 0
    q[0, 0, :, 6:9] = [[-2, -2, -2], [-1, -1, -1]]  # s = -9 -> -1.5 -> -1
    q[0, 0, :, 9:12] = [[127, 127, 127], [127, 127, -128]]  # s = 507 -> 84.5 -> 85
    y = m(_float(q, 3))
    np.testing.assert_array_equal(ref.to_int(y, 3), [[[[1, 0, -1, 85]]]])


@pytest.mark.parametrize("shape", [(2, 3), (3, 3), (2, 2), (1, 5)])
def test_global_avgpool(host, ref, shape):
    m = _prepared(host, lambda m, a: m.pool(a), 1, pool=nn.AdaptiveAvgPool2d(1))
    (sx,) = _stubs(m, 1)
    ref.set_exponent(sx, 4)
    rng = np.random.default_rng(sum(shape))
    q = rng.integers(-128, 128, size=(3, 4) + shape)
    q[0, 0] = 0
    q[0, 0].flat[0] = int(np.prod(shape)) // 2 if np.prod(shape) % 2 == 0 else 0  # a tie where the area is even
    q[2] = 127
    y = m(_float(q, 4))
    np.testing.assert_array_equal(ref.to_int(y, 4), _avg_ref(ref, q, shape, (1, 1), (0, 0)))


def test_avgpool1d(host, ref):
    m = _prepared(host, lambda m, a: F.avg_pool1d(a, 3, 2, 1), 1)
    (sx,) = _stubs(m, 1)
    ref.set_exponent(sx, 2)
    q = np.random.default_rng(3).integers(-128, 128, size=(2, 3, 11))
    y = m(_float(q, 2))
    np.testing.assert_array_equal(ref.to_int(y, 2), _avg_ref(ref, q, (3,), (2,), (1,)))


# -- standalone BatchNorm --------------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**16), n_x=st.integers(0, 7), shift=st.integers(0, 10), affine=st.booleans())
def test_standalone_batchnorm(host, ref, seed, n_x, shift, affine):
    gen = torch.Generator().manual_seed(seed)
    c = 4
    bn = nn.BatchNorm2d(c, affine=affine)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen))
        bn.running_var.copy_(torch.rand(c, generator=gen) * 3 + 0.05)
        if affine:
            bn.weight.copy_(torch.randn(c, generator=gen))
            bn.bias.copy_(torch.randn(c, generator=gen))
    m = _prepared(host, lambda m, a: m.bn(a), 1, bn=bn)
    (sx,) = _stubs(m, 1)
    ref.set_exponent(sx, n_x)
    qbn = m.bn
    # alpha = gamma / sqrt(var + eps) and beta = bias - mean * alpha, as the module computes them (float32)
    alpha = torch.rsqrt(bn.running_var + bn.eps)
    beta = -bn.running_mean * alpha
    if affine:
        alpha = bn.weight.detach() * torch.rsqrt(bn.running_var + bn.eps)
        beta = bn.bias.detach() - bn.running_mean * alpha
    n_w = ref.floor_rule(alpha.numpy())
    a_i = ref.round_half_up_int(alpha.double().numpy() * 2.0**n_w)
    b_i = ref.sat(ref.round_half_up_int(beta.double().numpy() * 2.0 ** (n_x + n_w)), 32)
    n_o = max(0, min(23, n_x + n_w - shift))
    ref.set_exponent(qbn.out_q, n_o)
    q = np.random.default_rng(seed).integers(-128, 128, size=(2, c, 3, 3))
    y = m(_float(q, n_x))
    ip = qbn.integer_params()
    assert (ip["n_x"], ip["n_w"], ip["n_o"]) == (n_x, n_w, n_o)
    np.testing.assert_array_equal(ip["weight"].numpy(), a_i)
    np.testing.assert_array_equal(ip["bias"].numpy(), b_i)
    acc = q * a_i.reshape(1, -1, 1, 1) + b_i.reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(ref.to_int(y, n_o), ref.rq(acc, n_x + n_w - n_o))


# -- ReLU6 / clamp / maxpool / relu -----------------------------------------------------------------------------

CLIPS = {
    "nn.ReLU6": ((0.0, 6.0), lambda m, a: m.act(a)),
    "F.relu6": ((0.0, 6.0), lambda m, a: F.relu6(a)),
    "clamp": ((-1.3, 2.7), lambda m, a: torch.clamp(a, -1.3, 2.7)),
    "clamp-ties": ((-0.3125, 0.1875), lambda m, a: a.clamp(-0.3125, 0.1875)),
    "clamp-min": ((-0.3, None), lambda m, a: torch.clamp(a, min=-0.3)),
    "clamp-max": ((None, 0.7), lambda m, a: torch.clamp(a, max=0.7)),
    "hardtanh": ((-1.0, 1.0), lambda m, a: F.hardtanh(a)),
}


@pytest.mark.parametrize("name", list(CLIPS))
@pytest.mark.parametrize("n_x", [0, 3, 4, 5, 7])
def test_clip_integer_bounds(host, ref, name, n_x):
    (lo, hi), fn = CLIPS[name]
    m = _prepared(host, fn, 1, act=nn.ReLU6())
    (sx,) = _stubs(m, 1)
    ref.set_exponent(sx, n_x)
    q = np.arange(-128, 128, dtype=np.int64)
    y = m(_float(q, n_x))
    lo_q = -128 if lo is None else int(ref.sat(math.floor(Fraction(lo) * 2**n_x + Fraction(1, 2))))
    hi_q = 127 if hi is None else int(ref.sat(math.floor(Fraction(hi) * 2**n_x + Fraction(1, 2))))
    if name in ("nn.ReLU6", "F.relu6"):
        assert hi_q == min(6 * 2**n_x, 127)
    np.testing.assert_array_equal(ref.to_int(y, n_x), np.clip(q, lo_q, hi_q))


def _max_ref(q: np.ndarray, k: int, s: int, p: int) -> np.ndarray:
    n, c, h, w = q.shape
    qp = np.full((n, c, h + 2 * p, w + 2 * p), -(10**6), dtype=np.int64)
    qp[:, :, p:p + h, p:p + w] = q
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.full((n, c, oh, ow), -(10**6), dtype=np.int64)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, qp[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s])
    return out


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_maxpool_and_relu_pass_the_scale_through(host, ref, k, s, p):
    """MaxPool and ReLU keep the input exponent; padded cells never win; the result is exact."""
    m = _prepared(host, lambda m, a: F.relu(m.pool(m.conv(a))), 1, pool=nn.MaxPool2d(k, s, p),
                  conv=nn.Conv2d(2, 3, 1))
    (sx,) = _stubs(m, 1)
    ref.set_exponent(sx, 4)
    ref.set_exponent(m.conv.out_q, 3)
    x = torch.randn(2, 2, 6, 6) - 2.0  # mostly negative: padding must not win
    conv_out = []
    handle = m.conv.register_forward_hook(lambda mod, i, o: conv_out.append(o))
    y = m(x)
    handle.remove()
    q = ref.to_int(conv_out[0], 3)
    np.testing.assert_array_equal(ref.to_int(y, 3), np.maximum(_max_ref(q, k, s, p), 0))


# -- QuantStub (the chip's Quant op, float32) ------------------------------------------------------------------

def _stub(host, n: int):
    m = _prepared(host, lambda m, a: m.fc(a), 1, fc=nn.Linear(4, 2))
    stub = m.q_input_x0
    stub.out_q.running.fill_(128.0 / 2.0**n)
    return stub


@SETTINGS
@given(n=st.integers(0, 12), xs=st.lists(st.floats(-300.0, 300.0, width=32), min_size=1, max_size=64))
def test_quant_stub_float32(host, ref, n, xs):
    stub = _stub(host, n)
    x = torch.tensor(xs, dtype=torch.float32) * 2.0**-n
    y = stub(x)
    assert y.dtype == torch.float32
    assert stub.out_q.current() == n
    np.testing.assert_array_equal(ref.to_int(y, n), ref.quant_f32(x.numpy(), n))


@pytest.mark.parametrize("n", [0, 3, 7])
def test_quant_stub_edges(host, ref, n):
    just_below_half = float(np.nextafter(np.float32(0.5), np.float32(0)))  # 0.5 - 2**-25
    v = torch.tensor([2.5, -2.5, 0.5, -0.5, -1.5, 126.5, 127.5, 130.0, -128.5, -129.0, -1000.0, 0.0,
                      just_below_half], dtype=torch.float32)
    stub = _stub(host, n)
    y = stub(v * 2.0**-n)
    # ties go toward +inf; saturation at [-128, 127]; floorf(v + 0.5f) in float32 rounds 0.5 - 2**-25 up to 1
    expected = [3, -2, 1, 0, -1, 127, 127, 127, -128, -128, -128, 0, 1]
    np.testing.assert_array_equal(ref.to_int(y, n), expected)
    np.testing.assert_array_equal(ref.quant_f32(v.numpy() * np.float32(2.0**-n), n), expected)


# -- lnn_core.quant.functional primitives -----------------------------------------------------------------------

def _py_shr(v: int, s: int) -> int:
    if s > 0:
        return math.floor(Fraction(v, 2**s) + Fraction(1, 2))
    return v * 2 ** (-s)


def _py_sat(v: int, bits: int) -> int:
    return max(-(2 ** (bits - 1)), min(2 ** (bits - 1) - 1, v))


values = st.lists(st.one_of(st.integers(-(2**40), 2**40), st.integers(-300, 300)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(vs=values, s=st.integers(-8, 24))
@example(vs=[-5, -3, -1, 1, 3, 5, -6, 6], s=1)
@example(vs=[-(2**23) * 3, -(2**23), 2**23, 3 * 2**23, -(2**24) + 1], s=24)
def test_shr_matches_python_integers(vs, s):
    expected = [_py_shr(v, s) for v in vs]
    got_i = qf.shr(torch.tensor(vs, dtype=torch.int64), s)
    got_f = qf.shr(torch.tensor(vs, dtype=torch.float64), s)
    assert got_i.dtype == torch.int64
    assert got_i.tolist() == expected
    assert got_f.dtype == torch.float64
    assert got_f.tolist() == [float(e) for e in expected]


@settings(max_examples=150, deadline=None)
@given(vs=values, s=st.integers(-8, 24), bits=st.sampled_from([8, 16, 32]))
def test_requant_matches_python_integers(vs, s, bits):
    expected = [_py_sat(_py_shr(v, s), bits) for v in vs]
    assert qf.requant(torch.tensor(vs, dtype=torch.int64), s, bits).tolist() == expected
    assert qf.requant(torch.tensor(vs, dtype=torch.float64), s, bits).tolist() == [float(e) for e in expected]


def test_shr_ties_go_toward_plus_infinity():
    v = torch.tensor([-3, -1, 1, 3, -12, 12], dtype=torch.int64)  # s = 1: -1.5 -1 ... ; s = 3: -1.5, 1.5
    assert qf.shr(v, 1).tolist() == [-1, 0, 1, 2, -6, 6]
    assert qf.shr(v, 3).tolist() == [0, 0, 0, 0, -1, 2]
    assert qf.shr(v.double(), 1).tolist() == [-1, 0, 1, 2, -6, 6]


def test_round_half_up():
    v = torch.tensor([-2.5, 2.5, -0.5, 0.5, -1.5, 1.5, -2.4999, 2.4999], dtype=torch.float64)
    assert qf.round_half_up(v).tolist() == [-2, 3, 0, 1, -1, 2, -2, 2]
    assert qf.round_half_up(torch.tensor(-2.5)).item() == -2


def test_qrange_and_saturate():
    assert qf.qrange(8) == (-128, 127)
    assert qf.qrange(16) == (-32768, 32767)
    assert qf.saturate(torch.tensor([-129.0, 128.0, 5.0]), 8).tolist() == [-128, 127, 5]


@settings(max_examples=100, deadline=None)
@given(xs=st.lists(st.floats(-200.0, 200.0, width=32, allow_subnormal=False), min_size=1, max_size=32),
       n=st.integers(0, 12), bits=st.sampled_from([8, 16]))
@example(xs=[2.5, -2.5, 0.5, -0.5, 127.5, -128.5, -129.0], n=0, bits=8)
def test_fake_quant_forward_equals_quantize(xs, n, bits):
    x = torch.tensor(xs, dtype=torch.float32) * 2.0**-n
    y = qf.fake_quant(x, n, bits)
    assert y.dtype == torch.float32
    assert torch.equal(y.double(), qf.quantize(x, n, bits) / 2.0**n)


@pytest.mark.parametrize("n", [0, 5])
def test_fake_quant_below_half_activation_form_and_exact_form(n):
    """``x * 2**n = 0.5 - 2**-25``: exact R gives 0; adding 0.5 in float32 rounds to 1.0 first.

    The activation form rounds as the chip's Quant op does (float32, the eval-mode input quantizer);
    the exact form (weights, biases) gives the integers of ``quantize``, as the export does.
    """
    x = torch.tensor([float(np.nextafter(np.float32(0.5), np.float32(0)))], dtype=torch.float32) * 2.0**-n
    assert qf.quantize(x, n, 8).item() == 0
    assert torch.equal(qf.fake_quant(x, n, 8, exact=True).double(), qf.quantize(x, n, 8) / 2.0**n)
    chip_quant = torch.floor(x * 2.0**n + 0.5).clamp(-128, 127) / 2.0**n  # float32 all the way
    assert torch.equal(qf.fake_quant(x, n, 8), chip_quant)
    assert qf.fake_quant(x, n, 8).item() == 1.0 / 2.0**n


@pytest.mark.parametrize("v", [2**23 + 1, -(2**23) - 1, 2**23 + 3, 12345679])
def test_fake_quant_exact_form_equals_quantize_wide(v):
    """The 32-bit form (conv bias in training) agrees with the exact quantizer (conv bias in eval)."""
    x = torch.tensor([float(v)], dtype=torch.float32) * 2.0**-20
    assert float(x[0]) * 2.0**20 == v  # exactly representable
    assert torch.equal(qf.fake_quant(x, 20, 32, exact=True).double(), qf.quantize(x, 20, 32) / 2.0**20)
    assert torch.equal(fake_quant_bias(x, 20, 32).double(), qf.quantize(x, 20, 32) / 2.0**20)
    assert qf.quantize(x, 20, 32).item() == v


@settings(max_examples=200, deadline=None)
@given(xs=st.lists(st.floats(-2.0**26, 2.0**26, width=32), min_size=1, max_size=32),
       n=st.integers(-8, 12), bits=st.sampled_from([8, 16, 32]), grad=st.booleans())
def test_fake_quant_exact_form_equals_quantize_everywhere(xs, n, bits, grad):
    """Every float32 value, every width: the exact form gives the integers of ``quantize``.

    Except one case float32 cannot hold: a 32-bit value that saturates becomes ``+-2**31`` (the float32
    neighbour of ``2**31 - 1``) in training where eval and the chip use ``2**31 - 1``; such a bias is
    off by more than ``2**31`` steps from its float value either way.
    """
    if bits == 32:
        xs = [v for v in xs if abs(v * 2.0**n) < 2.0**31]
        assume(xs)
    x = torch.tensor(xs, dtype=torch.float32).requires_grad_(grad)
    y = qf.fake_quant(x, n, bits, exact=True)
    assert torch.equal(y.detach().double() * 2.0**n, qf.quantize(x, n, bits))


@settings(max_examples=100, deadline=None)
@given(xs=st.lists(st.floats(-3.0, 3.0, width=32), min_size=1, max_size=32), n=st.integers(4, 8))
@example(xs=[127.5 / 64, 127.49 / 64, -128.5 / 64, -128.51 / 64, 0.0], n=6)
def test_fake_quant_gradient_is_clipping_mask(xs, n):
    x = torch.tensor(xs, dtype=torch.float32, requires_grad=True)
    g = torch.arange(1, len(xs) + 1, dtype=torch.float32)
    qf.fake_quant(x, n, 8).backward(g)
    r = np.floor(np.asarray(xs, dtype=np.float64) * 2.0**n + 0.5)
    mask = (r >= -128) & (r <= 127)
    np.testing.assert_array_equal(x.grad.numpy(), np.where(mask, g.numpy(), 0.0))


def test_ste_round_forward_and_gradient():
    x = torch.tensor([-2.5, -0.5, 0.5, 1.49], requires_grad=True)
    y = qf.ste_round(x)
    assert y.tolist() == [-2, 0, 1, 1]
    y.sum().backward()
    assert x.grad.tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("m,n", [(127.0, 0), (127.5, -1), (1.0, 6), (0.5, 7), (0.01, 13), (1000.0, -3), (63.5, 1)])
def test_weight_exponent_floor_rule(m, n):
    w = torch.tensor([m, -m / 3])
    assert qf.weight_exponent(w, 8, -8, 30) == n
    assert m * 2.0**n <= 127 < m * 2.0 ** (n + 1)


@settings(max_examples=100, deadline=None)
@given(xs=st.lists(st.tuples(st.floats(-4.0, 4.0, width=32), st.floats(-4.0, 4.0, width=32)), min_size=1,
                   max_size=32),
       n=st.integers(0, 8), sign=st.sampled_from([1, -1]), clip=st.sampled_from([None, (0, 100), (-20, 127)]))
def test_fake_quant_sum_equals_the_two_rounded_operands_summed(xs, n, sign, clip):
    """The fused training form of iqAdd/iqSub: same values and same gradients as rounding each operand
    (``ste_round``), summing exactly and clamping once."""
    lo, hi = clip or qf.qrange(8)
    x = torch.tensor([a for a, _ in xs], dtype=torch.float32, requires_grad=True)
    y = torch.tensor([b for _, b in xs], dtype=torch.float32, requires_grad=True)
    s = 2.0**n
    ref = (qf.ste_round(x * s) + sign * qf.ste_round(y * s)).clamp(lo, hi) / s
    got = qf.fake_quant_sum(x, y, n, sign, lo, hi, 8)
    assert torch.equal(got, ref)
    g = torch.arange(1, len(xs) + 1, dtype=torch.float32)
    gx_ref, gy_ref = torch.autograd.grad(ref, (x, y), g)
    gx, gy = torch.autograd.grad(got, (x, y), g)
    assert torch.equal(gx, gx_ref) and torch.equal(gy, gy_ref)
