"""The C simulator against a numpy reference of spec/int8-ops.md, op by op, through dialect -> pack -> run.

The simulator is more general than the chip (dilation, stride 4 with kernel 3, int16/int32 Dequant ...):
these tests pack with ``check=False`` so that the hardware rules do not stop them; the rules have their
own tests (test_check.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import conv2d_ref, make_model, quantize, sat, shr, snode, tnode

from lnn_backend_csk60xx._sim import lib
from lnn_backend_csk60xx.packer import DTYPE_CODES, EXTERNAL_OP_CODE, OP_CODES
from lnn_backend_csk60xx.pipeline import pack_onnx
from lnn_backend_csk60xx.simulator import Simulator
from lnn_core.errors import ModelFileError, SimulatorError

RNG = np.random.default_rng(1234)


def _run(nodes, inputs: dict[str, tuple[int, ...]], out: str, inits=None, out_exp=None):
    """Quantize float inputs at exponent 4 (nodes get 'q_<name>'), run, return (dump, floats fed)."""
    feeds = {k: (RNG.standard_normal(v) * 6).astype(np.float32) for k, v in inputs.items()}
    quants = [tnode("Quant", [k], [f"q_{k}"], name=f"quant_{k}", scale_x=4) for k in inputs]
    deq = tnode("Dequant", [out], ["y"], name="deq", scale_o=out_exp)
    model = make_model(quants + nodes + [deq], inputs, {"y": None}, inits)
    sim = Simulator(pack_onnx(model, check=False))
    _, dump = sim.run([feeds[k] for k in inputs], dump=True)
    qs = {k: quantize(v, 4) for k, v in feeds.items()}
    for k in inputs:
        np.testing.assert_array_equal(dump[f"q_{k}"], qs[k])
    np.testing.assert_array_equal(dump["y"], dump[out].astype(np.float32) * np.float32(2.0 ** -out_exp))
    return dump, qs


def test_op_codes_match_header():
    for name, code in OP_CODES.items():
        const = {"Conv2dInt": "CONV2D", "Conv1dInt": "CONV1D", "ConvTranspose2dInt": "DECONV2D",
                 "LinearInt": "LINEAR", "BatchNorm2dInt": "BATCHNORM2D", "AvgPool2dInt": "AVGPOOL2D",
                 "MaxPool": "MAXPOOL2D", "iqAdd": "ADD", "iqSub": "SUB", "iqMul": "MUL", "iqCat": "CAT",
                 "iqSigmoid": "SIGMOID", "iqTanh": "TANH", "LayerNormInt": "LAYERNORM", "SoftmaxInt": "SOFTMAX",
                 "LogSoftmaxInt": "LOGSOFTMAX", "BmmInt": "BMM", "GRUInt": "GRU", "LSTMInt": "LSTM",
                 "iqPad": "PAD"}.get(name, name)
        assert getattr(lib, f"LNN_SIM_OP_{const.upper()}") == code
    assert lib.LNN_SIM_OP_EXTERNAL == EXTERNAL_OP_CODE
    codes = [*OP_CODES.values(), EXTERNAL_OP_CODE]  # plugin ops share EXTERNAL; code 0 is unused
    assert len(codes) == len(set(codes)) and 0 not in codes
    assert lib.LNN_SIM_NUM_OP_TYPES == max(codes) + 1  # codes may leave gaps (reserved for ops to come)
    for name, code in DTYPE_CODES.items():
        assert getattr(lib, f"LNN_SIM_DT_{name.upper()}") == code


def test_quant_rounds_half_up_and_saturates():
    x = np.array([[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 1000.0, -1000.0, np.nan, 0.49999997]], np.float32)
    model = make_model([tnode("Quant", ["x"], ["q"], name="quant", scale_x=0),
                        tnode("Dequant", ["q"], ["y"], name="deq", scale_o=0)], {"x": (1, 10)}, {"y": (1, 10)})
    (y,), dump = Simulator(pack_onnx(model, check=False)).run([x], dump=True)
    # the last value: 0.49999997f + 0.5f rounds to 1.0f in float32, as in thinker's floorf(2^n*x + 0.5f)
    np.testing.assert_array_equal(dump["q"], [[-2, -1, 0, 1, 2, 3, 127, -128, 0, 1]])
    assert y.dtype == np.float32


@pytest.mark.parametrize("stride,pads,dil,group,bias,o_bits", [
    ([1, 1], [1, 1, 1, 1], [1, 1], 1, True, 8),
    ([2, 2], [1, 0, 2, 1], [1, 1], 1, False, 8),
    ([1, 2], [0, 0, 0, 0], [2, 1], 2, True, 16),
    ([1, 1], [1, 1, 1, 1], [1, 1], 8, False, 8),   # depthwise
    ([4, 4], [2, 2, 2, 2], [1, 1], 1, True, 32),
])
def test_conv2d(stride, pads, dil, group, bias, o_bits):
    cin, m = 8, 8 if group == 8 else 6
    w = RNG.integers(-128, 128, (m, cin // group, 3, 3), dtype=np.int8)
    b = RNG.integers(-5000, 5000, m, dtype=np.int32)
    inits = {"w": w, **({"b": b} if bias else {})}
    node = tnode("Conv2dInt", ["q_x", "w", *(["b"] if bias else [])], ["c"], name="conv", scale_x=4, scale_w=7,
                 scale_o=2, kernel_shape=[3, 3], strides=stride, pads=pads, dilations=dil, group=group, o_bits=o_bits)
    dump, q = _run([node], {"x": (2, cin, 9, 11)}, "c", inits, out_exp=2)
    ref = conv2d_ref(q["x"], w, b if bias else None, stride, pads, dil, group, 4 + 7 - 2, o_bits)
    np.testing.assert_array_equal(dump["c"], ref)


def test_conv2d_long_reduction_chunks_int32():
    # K = 1024 * 9 * 9 > 2^16 products: the int32 accumulator is flushed into int64 in chunks
    cin = 1024
    w = np.full((2, cin, 9, 9), -128, np.int8)
    node = tnode("Conv2dInt", ["q_x", "w"], ["c"], name="conv", scale_x=0, scale_w=0, scale_o=0,
                 kernel_shape=[9, 9], o_bits=32)
    model = make_model([tnode("Quant", ["x"], ["q_x"], name="quant", scale_x=0), node,
                        tnode("Dequant", ["c"], ["y"], name="deq", scale_o=0)], {"x": (1, cin, 9, 9)}, {"y": None},
                       {"w": w})
    sim = Simulator(pack_onnx(model, check=False))
    for v in (-128, 127):
        _, dump = sim.run([np.full((1, cin, 9, 9), float(v), np.float32)], dump=True)
        assert dump["c"].dtype == np.int32 and int(dump["c"].reshape(-1)[0]) == v * -128 * cin * 81


def test_conv1d():
    w = RNG.integers(-128, 128, (5, 4, 3), dtype=np.int8)
    b = RNG.integers(-900, 900, 5, dtype=np.int32)
    node = tnode("Conv1dInt", ["q_x", "w", "b"], ["c"], name="conv1d", scale_x=4, scale_w=6, scale_o=3,
                 kernel_shape=[3], strides=[2], pads=[1, 1], dilations=[1], group=1)
    dump, q = _run([node], {"x": (1, 4, 13)}, "c", {"w": w, "b": b}, out_exp=3)
    ref = conv2d_ref(q["x"][:, :, None, :], w[:, :, None, :], b, [1, 2], [0, 1, 0, 1], [1, 1], 1, 7)
    np.testing.assert_array_equal(dump["c"], ref[:, :, 0, :])


@pytest.mark.parametrize("stride,pads,out_pad,group", [([2, 2], [1, 1, 1, 1], [1, 1], 1), ([1, 2], [0, 1, 0, 1],
                                                                                          [0, 0], 2)])
def test_deconv2d(stride, pads, out_pad, group):
    cin, mg, k = 4, 3, 3
    w = RNG.integers(-128, 128, (cin, mg, k, k), dtype=np.int8)
    b = RNG.integers(-900, 900, mg * group, dtype=np.int32)
    node = tnode("ConvTranspose2dInt", ["q_x", "w", "b"], ["c"], name="deconv", scale_x=4, scale_w=7, scale_o=4,
                 kernel_shape=[k, k], strides=stride, pads=pads, output_padding=out_pad, group=group)
    dump, q = _run([node], {"x": (1, cin, 5, 6)}, "c", {"w": w, "b": b}, out_exp=4)
    x = q["x"].astype(np.int64)
    h, wd = x.shape[2:]
    full = np.zeros((1, mg * group, (h - 1) * stride[0] + k + out_pad[0], (wd - 1) * stride[1] + k + out_pad[1]),
                    np.int64)
    cg = cin // group
    for c in range(cin):
        g = c // cg
        for o in range(mg):
            for i in range(h):
                for j in range(wd):
                    full[0, g * mg + o, i * stride[0]:i * stride[0] + k, j * stride[1]:j * stride[1] + k] += \
                        x[0, c, i, j] * w[c, o].astype(np.int64)
    ho, wo = dump["c"].shape[2:]
    acc = full[:, :, pads[0]:pads[0] + ho, pads[1]:pads[1] + wo] + b[None, :, None, None]
    np.testing.assert_array_equal(dump["c"], sat(shr(acc, 7)))


def test_linear_batchnorm_relu_clip():
    w = RNG.integers(-128, 128, (7, 12), dtype=np.int8)
    b = RNG.integers(-3000, 3000, 7, dtype=np.int32)
    a = RNG.integers(-128, 128, 3, dtype=np.int8)
    bb = RNG.integers(-3000, 3000, 3, dtype=np.int32)
    nodes = [tnode("LinearInt", ["q_x", "w", "b"], ["l"], name="fc", scale_x=4, scale_w=7, scale_o=3),
             tnode("BatchNorm2dInt", ["q_z", "a", "bb"], ["bn"], name="bn", scale_x=4, scale_w=6, scale_o=5),
             snode("Relu", ["bn"], ["r"], name="relu"),
             snode("Clip", ["l", "lo", "hi"], ["cl"], name="clip")]
    inits = {"w": w, "b": b, "a": a, "bb": bb, "lo": np.array(0, np.int8), "hi": np.array(48, np.int8)}
    feeds = {"x": (2, 3, 12), "z": (1, 3, 4, 5)}
    dump, q = _run(nodes, feeds, "cl", inits, out_exp=3)
    lin = sat(shr(q["x"].astype(np.int64) @ w.T.astype(np.int64) + b, 4 + 7 - 3))
    np.testing.assert_array_equal(dump["l"], lin)
    np.testing.assert_array_equal(dump["cl"], np.clip(lin, 0, 48))
    bn = sat(shr(q["z"].astype(np.int64) * a[None, :, None, None] + bb[None, :, None, None], 4 + 6 - 5))
    np.testing.assert_array_equal(dump["bn"], bn)
    np.testing.assert_array_equal(dump["r"], np.maximum(bn, 0))


@pytest.mark.parametrize("k,s,p,n_o", [(4, 4, 0, 4), (3, 2, 1, 4), (3, 1, 1, 5), (2, 2, 0, 3)])
def test_avgpool(k, s, p, n_o):
    node = tnode("AvgPool2dInt", ["q_x"], ["a"], name="avg", scale_x=4, scale_o=n_o, kernel_shape=[k, k],
                 strides=[s, s], pads=[p, p, p, p])
    dump, q = _run([node], {"x": (1, 3, 8, 8)}, "a", out_exp=n_o)
    x = np.pad(q["x"].astype(np.int64), ((0, 0), (0, 0), (p, p), (p, p)))
    ho = (x.shape[2] - k) // s + 1
    sums = np.array([[x[:, :, i * s:i * s + k, j * s:j * s + k].sum(axis=(2, 3)) for j in range(ho)]
                     for i in range(ho)]).transpose(2, 3, 0, 1)
    from fractions import Fraction
    ref = np.vectorize(lambda v: int((Fraction(int(v)) * Fraction(2) ** (n_o - 4) / (k * k) + Fraction(1, 2))
                                     // 1))(sums)
    np.testing.assert_array_equal(dump["a"], sat(ref))


@pytest.mark.parametrize("ceil", [0, 1])
def test_maxpool(ceil):
    node = snode("MaxPool", ["q_x"], ["m"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                 ceil_mode=ceil)
    dump, q = _run([node], {"x": (1, 2, 8, 9)}, "m", out_exp=4)
    x = np.pad(q["x"].astype(np.int64), ((0, 0), (0, 0), (1, 3), (1, 3)), constant_values=-1000)
    ho, wo = dump["m"].shape[2:]
    ref = np.array([[x[:, :, i * 2:i * 2 + 3, j * 2:j * 2 + 3].max(axis=(2, 3)) for j in range(wo)]
                    for i in range(ho)]).transpose(2, 3, 0, 1)
    np.testing.assert_array_equal(dump["m"], ref)


def test_add_sub_mul_cat_requant():
    nodes = [tnode("iqAdd", ["q_x", "q_z"], ["add"], name="add", scale_x=4, scale_y=4, scale_o=2),
             tnode("iqSub", ["q_x", "q_z"], ["sub"], name="sub", scale_x=4, scale_y=4, scale_o=3),
             tnode("iqMul", ["q_x", "q_z"], ["mul"], name="mul", scale_x=4, scale_y=4, scale_o=3),
             tnode("iqMul", ["q_x", "q_c"], ["mulc"], name="mulc", scale_x=4, scale_y=4, scale_o=4),
             tnode("iqCat", ["add", "sub", "mulc"], ["cat"], name="cat", scale_x_0=2, scale_x_1=3, scale_x_2=4,
                   scale_o=3, dim=1),
             tnode("Requant", ["cat"], ["rq"], name="rq", scale_x=3, scale_o=11, data_bits=8, o_bits=16)]
    dump, q = _run(nodes, {"x": (2, 3, 4, 5), "z": (2, 3, 4, 5), "c": (2, 3, 1, 1)}, "rq", out_exp=11)
    x, y, c = (q[k].astype(np.int64) for k in "xzc")
    add = sat(shr(x, 2) + shr(y, 2))
    sub = sat(shr(x, 1) - shr(y, 1))
    np.testing.assert_array_equal(dump["add"], add)
    np.testing.assert_array_equal(dump["sub"], sub)
    np.testing.assert_array_equal(dump["mul"], sat(shr(x * y, 5)))
    mulc = sat(shr(x * c, 4))
    np.testing.assert_array_equal(dump["mulc"], mulc)
    cat = np.concatenate([sat(shr(add, -1)), sub, sat(shr(mulc, 1))], axis=1)
    np.testing.assert_array_equal(dump["cat"], cat)
    np.testing.assert_array_equal(dump["rq"], sat(shr(cat, -8), 16))


def test_shape_ops():
    nodes = [snode("Transpose", ["q_x"], ["t"], name="transpose", perm=[0, 2, 3, 1]),
             snode("Flatten", ["t"], ["f"], name="flatten", axis=2),
             snode("Unsqueeze", ["f"], ["u"], name="unsqueeze", axes=[0]),
             snode("Squeeze", ["u"], ["s"], name="squeeze", axes=[0]),
             snode("Reshape", ["s", "shape"], ["r"], name="reshape")]
    dump, q = _run(nodes, {"x": (2, 3, 4, 5)}, "r", {"shape": np.array([0, -1], np.int64)}, out_exp=4)
    t = q["x"].transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(dump["t"], t)
    np.testing.assert_array_equal(dump["f"], t.reshape(8, 15))
    np.testing.assert_array_equal(dump["u"], t.reshape(1, 8, 15))
    np.testing.assert_array_equal(dump["r"], t.reshape(8, 15))


def test_input_validation():
    model = make_model([tnode("Quant", ["x"], ["q"], name="quant", scale_x=0),
                        tnode("Dequant", ["q"], ["y"], name="deq", scale_o=0)], {"x": (1, 4)}, {"y": (1, 4)})
    sim = Simulator(pack_onnx(model, check=False))
    assert sim.inputs[0].shape == (1, 4) and sim.inputs[0].dtype == np.float32
    with pytest.raises(SimulatorError) as info:
        sim.run([])
    assert info.value.status == lib.LNN_SIM_E_INPUT
    with pytest.raises(SimulatorError):
        sim.run([np.zeros((1, 5), np.float32)])
    with pytest.raises(SimulatorError):
        sim.run([np.zeros((1, 4), np.float64)])
    (y,) = sim.run([np.ones((1, 4), np.float32)])
    np.testing.assert_array_equal(y, np.ones((1, 4), np.float32))


def test_slice_any_axes_and_steps():
    inits = {"s": np.array([1, 0, -5], np.int64), "e": np.array([3, 100, 6], np.int64),
             "a": np.array([1, 2, 3], np.int64), "st": np.array([1, 2, 2], np.int64)}
    nodes = [snode("Slice", ["q_x", "s", "e", "a", "st"], ["sl"], name="slice")]
    dump, qs = _run(nodes, {"x": (2, 4, 5, 6)}, "sl", inits, out_exp=4)
    assert np.array_equal(dump["sl"], qs["x"][:, 1:3, 0:100:2, -5:6:2])


def test_fused_relu_attribute_and_wide_cat():
    w = RNG.integers(-128, 128, (4, 3, 3, 3), dtype=np.int8)
    nodes = [tnode("Conv2dInt", ["q_x", "w"], ["c"], name="conv", scale_x=4, scale_w=7, scale_o=9,
                   kernel_shape=[3, 3], pads=[1, 1, 1, 1], o_bits=16, act_type=1),
             tnode("iqCat", ["c", "c"], ["k"], name="cat", scale_x_0=9, scale_x_1=9, scale_o=9, dim=1)]
    dump, qs = _run(nodes, {"x": (1, 3, 5, 5)}, "k", {"w": w}, out_exp=9)
    ref = conv2d_ref(qs["x"], w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, 4 + 7 - 9, bits=16)
    assert dump["c"].dtype == np.int16 and np.array_equal(dump["c"], np.maximum(ref, 0))
    assert np.array_equal(dump["k"], np.concatenate([dump["c"], dump["c"]], axis=1))


def test_loader_refuses_an_unknown_activation():
    import struct
    import zlib

    from lnn_backend_csk60xx.packer import HEADER_BYTES, describe

    w = RNG.integers(-128, 128, (2, 2, 1, 1), dtype=np.int8)
    model = make_model([tnode("Quant", ["x"], ["q"], name="quant", scale_x=4),
                        tnode("Conv2dInt", ["q", "w"], ["c"], name="conv", scale_x=4, scale_w=7, scale_o=4,
                              kernel_shape=[1, 1], act_type=1),
                        tnode("Dequant", ["c"], ["y"], name="deq", scale_o=4)], {"x": (1, 2, 2, 2)}, {"y": None},
                       {"w": w})
    blob = bytearray(pack_onnx(model))
    ops = describe(bytes(blob))["sections"]["ops"]
    rec = ops["offset"] + 96  # the conv: its 12th attribute is the activation
    assert struct.unpack_from("<I", blob, rec + 20)[0] == 12 and struct.unpack_from("<i", blob, rec + 24 + 44)[0] == 1
    struct.pack_into("<i", blob, rec + 24 + 44, 2)
    struct.pack_into("<I", blob, 20, zlib.crc32(bytes(blob[HEADER_BYTES:])))
    with pytest.raises(ModelFileError) as info:
        Simulator(bytes(blob))
    assert info.value.status == lib.LNN_SIM_E_ATTR and "activation 2" in str(info.value)


def test_window_matrix_reuse_only_for_the_same_tensor():
    """Consecutive convs on the same tensor reuse the im2col matrix; a same-shaped other tensor must not."""
    w1, w2, w3 = (RNG.integers(-128, 128, (8, 8, 3, 3), dtype=np.int8) for _ in range(3))
    geo = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [tnode("Conv2dInt", ["q_x", "w1"], ["a"], name="a", scale_x=4, scale_w=7, scale_o=4, **geo),
             tnode("Conv2dInt", ["q_x", "w2"], ["b"], name="b", scale_x=4, scale_w=7, scale_o=4, **geo),
             tnode("Conv2dInt", ["a", "w3"], ["c"], name="c", scale_x=4, scale_w=7, scale_o=4, **geo),
             tnode("iqAdd", ["b", "c"], ["s"], name="s", scale_x=4, scale_y=4, scale_o=3)]
    inits = {"w1": w1, "w2": w2, "w3": w3}
    model = make_model([tnode("Quant", ["x"], ["q_x"], name="quant", scale_x=4), *nodes,
                        tnode("Dequant", ["s"], ["y"], name="deq", scale_o=3)], {"x": (1, 8, 6, 6)}, {"y": None}, inits)
    sim = Simulator(pack_onnx(model))
    for seed in range(3):  # new inputs each run: nothing may survive from the previous run
        x = (np.random.default_rng(seed).standard_normal((1, 8, 6, 6)) * 6).astype(np.float32)
        (y,), dump = sim.run([x], dump=True)
        q = quantize(x, 4)
        a = conv2d_ref(q, w1, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, 7)
        b = conv2d_ref(q, w2, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, 7)
        c = conv2d_ref(a, w3, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, 7)
        assert np.array_equal(dump["a"], a) and np.array_equal(dump["b"], b) and np.array_equal(dump["c"], c)
        assert np.array_equal(sim.run([x])[0], y)
