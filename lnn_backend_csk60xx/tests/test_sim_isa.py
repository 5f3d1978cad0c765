"""The simulator's instruction-set paths (portable C, AVX2, AVX-512 VNNI packed GEMM) compute the same integers.

``LNN_SIM_ISA`` picks the path when a model loads (``Simulator.isa`` says which ran). Each path this machine can run
is checked against the numpy reference of spec/int8-ops.md (``_helpers.conv2d_ref``) on generated convolutions
and linear layers (every geometry the simulator takes, channel counts around the 4/8/16 blocking, K not a multiple
of 4, saturating weights and inputs, requantization shifts of 0..2 bits where half-up ties happen, large biases,
int8/int16/int32 outputs) and on the longest reduction one int32 accumulator takes. The generated-model corpus
of ``tests/test_verify_random.py`` runs through every path too (its ``test_random_model_on_every_path``).
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import conv2d_ref, make_model, quantize, sat, shr, snode, tnode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lnn_backend_csk60xx.pipeline import pack_onnx
from lnn_backend_csk60xx.simulator import ISA_PATHS, Simulator, available_isas
from lnn_core.errors import ConfigError

PATHS = ISA_PATHS
AVAILABLE = available_isas()
_TINY = make_model([tnode("Quant", ["x"], ["q"], name="quant", scale_x=0),
                    tnode("Dequant", ["q"], ["y"], name="deq", scale_o=0)], {"x": (1, 4)}, {"y": (1, 4)})


@pytest.fixture(params=PATHS)
def isa(request, monkeypatch):
    if request.param not in AVAILABLE:
        pytest.skip(f"this CPU or build has no {request.param} path")
    monkeypatch.setenv("LNN_SIM_ISA", request.param)
    return request.param


def _extreme_ints(rng: np.random.Generator, shape: tuple[int, ...], corner: int) -> np.ndarray:
    """int8 values: uniform (0), mostly the extremes -128 / 127 (1), or all -128 (2)"""
    if corner == 2:
        return np.full(shape, -128, np.int8)
    v = rng.integers(-128, 128, shape).astype(np.int8)
    if corner == 1:
        v = np.where(rng.random(shape) < 0.8, np.where(rng.random(shape) < 0.5, -128, 127), v).astype(np.int8)
    return v


@st.composite
def _convs(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = [draw(st.integers(0, k - 1)) for k in (kh, kw, kh, kw)]
    group = draw(st.sampled_from([1, 1, 2, 3]))
    cin = group * draw(st.integers(1, 9))
    cout = group * draw(st.integers(1, 10))
    h = draw(st.integers(dh * (kh - 1) + 1 - pads[0] - pads[2], 13).filter(lambda v: v >= 1))
    w = draw(st.integers(dw * (kw - 1) + 1 - pads[1] - pads[3], 19).filter(lambda v: v >= 1))
    return dict(k=(kh, kw), s=[sh, sw], d=[dh, dw], pads=pads, group=group, cin=cin, cout=cout, h=h, w=w,
                batch=draw(st.integers(1, 2)), shift=draw(st.sampled_from([0, 1, 2, 5, 9])),
                bits=draw(st.sampled_from([8, 8, 16, 32])), bias=draw(st.sampled_from([None, "small", "large"])),
                relu=draw(st.booleans()), corner=draw(st.integers(0, 2)), seed=draw(st.integers(0, 2**31)))


def _run_int(nodes, x_shape, out, inits, x_exp=0):
    """Quantize integer-valued floats at exponent x_exp (exact), run, return the dump and the int8 input."""
    model = make_model([tnode("Quant", ["x"], ["q_x"], name="quant", scale_x=x_exp), *nodes,
                        tnode("Dequant", [out], ["y"], name="deq", scale_o=0)], {"x": x_shape}, {"y": None}, inits)
    return Simulator(pack_onnx(model, check=False))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c=_convs())
def test_conv_is_the_reference_on_every_path(isa, c):
    rng = np.random.default_rng(c["seed"])
    kh, kw = c["k"]
    w = _extreme_ints(rng, (c["cout"], c["cin"] // c["group"], kh, kw), c["corner"])
    x = _extreme_ints(rng, (c["batch"], c["cin"], c["h"], c["w"]), c["corner"] if c["corner"] != 2 else 1)
    b = None if c["bias"] is None else rng.integers(-(2**31) if c["bias"] == "large" else -3000,
                                                  2**31 - 1 if c["bias"] == "large" else 3000, c["cout"],
                                                  dtype=np.int64).astype(np.int32)
    # exponents: x 0, w = shift, output 0 -> the requantization shift is `shift`
    node = tnode("Conv2dInt", ["q_x", "w", *(["b"] if b is not None else [])], ["c"], name="conv", scale_x=0,
                 scale_w=c["shift"], scale_o=0, kernel_shape=[kh, kw], strides=c["s"], pads=c["pads"],
                 dilations=c["d"], group=c["group"], o_bits=c["bits"])
    nodes = [node, snode("Relu", ["c"], ["r"], name="relu")] if c["relu"] else [node]  # fused at pack time
    sim = _run_int(nodes, x.shape, "r" if c["relu"] else "c", {"w": w, **({"b": b} if b is not None else {})})
    assert sim.isa == isa
    _, dump = sim.run([x.astype(np.float32)], dump=True)
    ref = conv2d_ref(x, w, b, c["s"], c["pads"], c["d"], c["group"], c["shift"], c["bits"])
    np.testing.assert_array_equal(dump["r" if c["relu"] else "c"], np.maximum(ref, 0) if c["relu"] else ref)


@st.composite
def _depthwise(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = [draw(st.integers(0, k - 1)) for k in (kh, kw, kh, kw)]
    small = draw(st.booleans())  # small planes with 16+ channels run across channels (LNN_DWC_MAX_PLANE)
    h = draw(st.integers(dh * (kh - 1) + 1 - pads[0] - pads[2], 9 if small else 21).filter(lambda v: v >= 1))
    w = draw(st.integers(dw * (kw - 1) + 1 - pads[1] - pads[3], 9 if small else 23).filter(lambda v: v >= 1))
    cin = draw(st.sampled_from([16, 17, 32, 40]) if small else st.integers(1, 9))
    return dict(k=(kh, kw), s=[draw(st.integers(1, 3)), draw(st.integers(1, 3))], d=[dh, dw], pads=pads, h=h, w=w,
                cin=cin, mult=draw(st.sampled_from([1, 1, 2, 3])), batch=draw(st.integers(1, 2)),
                shift=draw(st.sampled_from([-2, 0, 1, 2, 5, 9, 31, 40])), bits=draw(st.sampled_from([8, 8, 8, 16, 32])),
                bias=draw(st.sampled_from([None, "small", "large"])), relu=draw(st.booleans()),
                corner=draw(st.integers(0, 2)), seed=draw(st.integers(0, 2**31)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c=_depthwise())
def test_depthwise_conv_is_the_reference_on_every_path(isa, c):
    """one input channel per group (the direct depthwise kernels: phase planes for every stride and dilation, or
    across 16+ channels for small output planes; the int32 requantization where the bias leaves room, the int64 one
    otherwise; the ReLU fused at pack time)"""
    rng = np.random.default_rng(c["seed"])
    kh, kw = c["k"]
    cout = c["cin"] * c["mult"]
    w = _extreme_ints(rng, (cout, 1, kh, kw), c["corner"])
    x = _extreme_ints(rng, (c["batch"], c["cin"], c["h"], c["w"]), c["corner"] if c["corner"] != 2 else 1)
    b = None if c["bias"] is None else rng.integers(-(2**31) if c["bias"] == "large" else -3000,
                                                  2**31 - 1 if c["bias"] == "large" else 3000, cout,
                                                  dtype=np.int64).astype(np.int32)
    node = tnode("Conv2dInt", ["q_x", "w", *(["b"] if b is not None else [])], ["c"], name="conv", scale_x=0,
                 scale_w=c["shift"], scale_o=0, kernel_shape=[kh, kw], strides=c["s"], pads=c["pads"],
                 dilations=c["d"], group=c["cin"], o_bits=c["bits"])
    nodes = [node, snode("Relu", ["c"], ["r"], name="relu")] if c["relu"] else [node]
    sim = _run_int(nodes, x.shape, "r" if c["relu"] else "c", {"w": w, **({"b": b} if b is not None else {})})
    assert sim.isa == isa
    (y,), dump = sim.run([x.astype(np.float32)], dump=True)
    ref = conv2d_ref(x, w, b, c["s"], c["pads"], c["d"], c["cin"], c["shift"], c["bits"])
    if c["relu"]:
        ref = np.maximum(ref, 0)
    np.testing.assert_array_equal(y, ref.astype(np.float32))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 5), k=st.integers(1, 70), n=st.integers(1, 40), shift=st.sampled_from([0, 1, 2, 7]),
       bits=st.sampled_from([8, 16, 32]), corner=st.integers(0, 2), bias=st.booleans(), seed=st.integers(0, 2**31))
def test_linear_is_the_reference_on_every_path(isa, rows, k, n, shift, bits, corner, bias, seed):
    rng = np.random.default_rng(seed)
    w = _extreme_ints(rng, (n, k), corner)
    x = _extreme_ints(rng, (rows, k), 1 if corner else 0)
    b = rng.integers(-(2**31), 2**31 - 1, n, dtype=np.int64).astype(np.int32) if bias else None
    node = tnode("LinearInt", ["q_x", "w", *(["b"] if bias else [])], ["c"], name="fc", scale_x=0, scale_w=shift,
                 scale_o=0, o_bits=bits)
    sim = _run_int([node], x.shape, "c", {"w": w, **({"b": b} if bias else {})})
    _, dump = sim.run([x.astype(np.float32)], dump=True)
    acc = x.astype(np.int64) @ w.astype(np.int64).T + (b.astype(np.int64) if bias else 0)
    np.testing.assert_array_equal(dump["c"], sat(shr(acc, shift), bits))


@pytest.mark.parametrize("xv, wv", [(-128, -128), (127, -128), (127, 127), (-128, 127)])
def test_the_longest_int32_reduction_is_exact_on_every_path(isa, xv, wv):
    """K = 4096 * 4 * 4 = 2^16 products of extremes: the largest sum one int32 accumulator takes (2^30); on the
    VNNI path the u8 sums (x + 128) * w wrap around 2^32 and the weight-sum correction brings them back."""
    cin, k = 4096, 4
    w = np.full((2, cin, k, k), wv, np.int8)
    node = tnode("Conv2dInt", ["q_x", "w"], ["c"], name="conv", scale_x=0, scale_w=0, scale_o=0, kernel_shape=[k, k],
                 o_bits=32)
    sim = _run_int([node], (1, cin, k, k), "c", {"w": w})
    _, dump = sim.run([np.full((1, cin, k, k), float(xv), np.float32)], dump=True)
    assert dump["c"].dtype == np.int32 and dump["c"].reshape(-1).tolist() == [xv * wv * cin * k * k] * 2


def test_paths_give_identical_bytes_on_one_model():
    """The same conv-pool-linear model on every available path: every tensor identical."""
    rng = np.random.default_rng(5)
    inits = {"w1": rng.integers(-128, 128, (12, 3, 3, 3), dtype=np.int8),
             "b1": rng.integers(-4000, 4000, 12, dtype=np.int32),
             "w2": rng.integers(-128, 128, (20, 12 * 7 * 7), dtype=np.int8)}
    nodes = [tnode("Conv2dInt", ["q_x", "w1", "b1"], ["c"], name="conv", scale_x=4, scale_w=7, scale_o=4,
                   kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             snode("Flatten", ["c"], ["f"], name="flat"),
             tnode("LinearInt", ["f", "w2"], ["o"], name="fc", scale_x=4, scale_w=7, scale_o=2)]
    model = make_model([tnode("Quant", ["x"], ["q_x"], name="quant", scale_x=4), *nodes,
                        tnode("Dequant", ["o"], ["y"], name="deq", scale_o=2)], {"x": (1, 3, 13, 13)}, {"y": None},
                       inits)
    blob = pack_onnx(model, check=False)
    x = (rng.standard_normal((1, 3, 13, 13)) * 4).astype(np.float32)
    dumps = {}
    mp = pytest.MonkeyPatch()
    for path in AVAILABLE:
        mp.setenv("LNN_SIM_ISA", path)
        sim = Simulator(blob)
        assert sim.isa == path
        dumps[path] = sim.run([x], dump=True)[1]
    mp.undo()
    first = dumps[AVAILABLE[0]]
    np.testing.assert_array_equal(first["q_x"], quantize(x, 4))
    for path, dump in dumps.items():
        for name, v in first.items():
            np.testing.assert_array_equal(dump[name], v, err_msg=f"{name} on {path}")


@pytest.mark.parametrize("value", ["avx1024", "AVX2", *(p for p in PATHS if p not in AVAILABLE)])
def test_an_unknown_or_missing_path_is_refused_with_the_variable_named(monkeypatch, value):
    blob = pack_onnx(_TINY, check=False)
    monkeypatch.setenv("LNN_SIM_ISA", value)
    for load in (lambda: Simulator(blob), lambda: pack_onnx(_TINY, check=False)):
        with pytest.raises(ConfigError) as exc:
            load()
        err = exc.value
        assert err.option == "LNN_SIM_ISA" and err.value == value and err.valid == AVAILABLE
        assert str(err).splitlines()[0].startswith(f"environment variable LNN_SIM_ISA={value!r}")
        assert "hint:" in str(err)


def test_the_default_is_the_best_path(monkeypatch):
    monkeypatch.delenv("LNN_SIM_ISA", raising=False)
    assert Simulator(pack_onnx(_TINY, check=False)).isa == AVAILABLE[-1]


_PAIRS = np.stack(np.meshgrid(np.arange(-128, 128), np.arange(-128, 128)), -1).reshape(1, 1, 256, 256, 2)


@pytest.mark.parametrize("sx, sy", [(0, 0), (1, 0), (2, 5), (1, 1), (9, 1), (16, 17), (17, 30), (40, 3),
                                    (-1, 2), (-7, -16), (-16, 0), (-17, 1), (0, -32), (-32, -32)])
def test_add_sub_and_mul_on_every_int8_pair(isa, sx, sy):
    """iqAdd / iqSub / iqMul on all 65,536 int8 pairs against the int64 reference, for right shifts (half-up ties),
    shifts past the operands' width and left shifts inside and outside the int32 form's range, on every path (the
    int32 form is compiled for each)."""
    o = 10
    qx, qy = (np.ascontiguousarray(_PAIRS[..., i]).astype(np.int8) for i in range(2))
    nodes = [tnode("Quant", ["x"], ["q_x"], name="qx", scale_x=o + sx),
             tnode("Quant", ["y"], ["q_y"], name="qy", scale_x=o + sy),
             tnode("iqAdd", ["q_x", "q_y"], ["add"], name="add", scale_x=o + sx, scale_y=o + sy, scale_o=o),
             tnode("iqSub", ["q_x", "q_y"], ["sub"], name="sub", scale_x=o + sx, scale_y=o + sy, scale_o=o),
             tnode("iqMul", ["q_x", "q_y"], ["mul"], name="mul", scale_x=o + sx, scale_y=o + sy, scale_o=2 * o + sy),
             tnode("Dequant", ["add"], ["ya"], name="da", scale_o=o),
             tnode("Dequant", ["sub"], ["ys"], name="ds", scale_o=o),
             tnode("Dequant", ["mul"], ["ym"], name="dm", scale_o=2 * o + sy)]
    model = make_model(nodes, {"x": qx.shape, "y": qy.shape}, {"ya": None, "ys": None, "ym": None})
    add, sub, mul = Simulator(pack_onnx(model, check=False)).run([qx, qy], integer=True)
    x, y = qx.astype(np.int64), qy.astype(np.int64)
    np.testing.assert_array_equal(add, sat(shr(x, sx) + shr(y, sy)))
    np.testing.assert_array_equal(sub, sat(shr(x, sx) - shr(y, sy)))
    np.testing.assert_array_equal(mul, sat(shr(x * y, sx)))
