"""Graph passes: Relu fusion and the splits of ops that exceed the engine buffers, all bit-exact."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import conv2d_ref, ir_conv_graph, ir_graph, quantize, sat, shr

from lnn_backend_csk60xx.check import check_graph
from lnn_backend_csk60xx.inference import infer_shapes
from lnn_backend_csk60xx.pipeline import pack_graph
from lnn_backend_csk60xx.rewrites import fuse_relu, run_rewrites
from lnn_backend_csk60xx.simulator import Simulator
from lnn_backend_csk60xx.target import load_target
from lnn_core.errors import HardwareLimitError
from lnn_core.graph import Node

RNG = np.random.default_rng(99)
LIMITS = load_target().limits


def _run_both(graph, x, **kwargs):
    """Outputs and dumps of the graph packed with and without the passes."""
    plain = pack_graph(graph, fuse_relu=False, split=False, check=False, scratch=False)
    passed = pack_graph(graph, **kwargs)
    a, da = Simulator(plain.blob).run([x], dump=True)
    b, db = Simulator(passed.blob).run([x], dump=True)
    return plain, passed, a, b, da, db


def test_relu_fusion_is_exact_and_drops_the_conv_tensor():
    w = RNG.integers(-128, 128, (8, 4, 3, 3), dtype=np.int8)
    b = RNG.integers(-3000, 3000, 8, dtype=np.int32)
    g = ir_conv_graph((1, 4, 8, 8), w, b, relu=True)
    x = (RNG.standard_normal((1, 4, 8, 8)) * 4).astype(np.float32)
    plain, passed, a, b_out, da, db = _run_both(g, x)
    assert [f.relu for f in passed.passes.fused] == ["relu"]
    assert [n.op_type for n in passed.graph.nodes] == ["Quant", "Conv2dInt", "Dequant"]
    conv = passed.graph.node("conv")
    assert conv.attrs["act_type"] == 1 and conv.outputs == ["r"] and "c" not in passed.graph.tensors
    assert np.array_equal(a[0], b_out[0]) and np.array_equal(da["r"], db["r"]) and "c" not in db
    assert db["r"].min() >= 0 and da["c"].min() < 0  # the fused ReLU clamps the requantized integers
    ref = conv2d_ref(quantize(x, 4), w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, 4 + 7 - 3)
    assert np.array_equal(db["r"], np.maximum(ref, 0))


def test_relu_not_fused_when_the_conv_output_is_read_twice_or_is_an_output():
    w = RNG.integers(-128, 128, (4, 4, 1, 1), dtype=np.int8)
    g = ir_conv_graph((1, 4, 4, 4), w, relu=True, pads=(0, 0, 0, 0))
    g.add_node(Node("add", "iqAdd", ["c", "r"], ["s"], {}, "thinker"))
    g.add_tensor("s", "int8", None, 2)
    g.outputs = ["y", "s"]
    infer_shapes(g)
    assert fuse_relu(g) == []
    g2 = ir_conv_graph((1, 4, 4, 4), w, relu=True, pads=(0, 0, 0, 0))
    g2.outputs = ["y", "c"]
    infer_shapes(g2)
    assert fuse_relu(g2) == []


def test_clip_is_never_fused():
    w = RNG.integers(-128, 128, (4, 4, 1, 1), dtype=np.int8)
    g = ir_conv_graph((1, 4, 4, 4), w, pads=(0, 0, 0, 0))
    deq = g.nodes.pop()
    g.add_initializer("lo", np.array(0, np.int8))
    g.add_initializer("hi", np.array(48, np.int8))
    g.add_node(Node("clip", "Clip", ["c", "lo", "hi"], ["k"], {}, ""))
    deq.inputs = ["k"]
    g.add_node(deq)
    infer_shapes(g)
    assert fuse_relu(g) == [] and [n.op_type for n in g.nodes] == ["Quant", "Conv2dInt", "Clip", "Dequant"]


@pytest.mark.parametrize("c_in,c_out,k,bias,relu", [
    (64, 64, 3, True, False),    # 36864 B > 32 KB: chunks of 56 -> [56, 8]
    (40, 90, 3, False, True),    # A8(40)=40: 32768 // 360 = 91 -> 90 -> one chunk... plus relu
    (128, 100, 3, True, True),   # 32768 // 1152 = 28 -> [28, 28, 28, 16]
    (256, 130, 1, True, False),  # 32768 // 256 = 128 -> [128, 2]
])
def test_conv_out_channel_split_is_bit_exact(c_in, c_out, k, bias, relu):
    w = RNG.integers(-128, 128, (c_out, c_in, k, k), dtype=np.int8)
    b = RNG.integers(-20000, 20000, c_out, dtype=np.int32) if bias else None
    p = k // 2
    g = ir_conv_graph((1, c_in, 6, 6), w, b, pads=(p, p, p, p), n_x=4, n_w=9, n_o=2, relu=relu)
    x = (RNG.standard_normal((1, c_in, 6, 6)) * 6).astype(np.float32)
    plain, passed, a, b_out, da, db = _run_both(g, x)
    weight = -(-c_in // 8) * 8 * k * k * (-(-c_out // 2) * 2)
    out = "r" if relu else "c"
    if weight <= 32768:
        assert passed.passes.splits == []
    else:
        (rec,) = passed.passes.splits
        chunk = (32768 // (-(-c_in // 8) * 8 * k * k)) // 2 * 2
        assert rec.axis == "out_channels" and rec.parts[0] == chunk and sum(rec.parts) == c_out
        assert all(s % 2 == 0 for s in rec.parts[:-1])
        # every piece fits the weight buffer
        assert all(-(-c_in // 8) * 8 * k * k * (-(-s // 2) * 2) <= 32768 for s in rec.parts)
        assert sum(1 for n in passed.graph.nodes if n.op_type == "Conv2dInt") == len(rec.parts)
        cat = next(n for n in passed.graph.nodes if n.op_type == "iqCat")
        assert cat.outputs == [out] and cat.attrs["dim"] == 1
    assert np.array_equal(a[0], b_out[0]) and np.array_equal(da[out], db[out])
    ref = conv2d_ref(quantize(x, 4), w, b, [1, 1], [p, p, p, p], [1, 1], 1, 4 + 9 - 2)
    assert np.array_equal(db[out], np.maximum(ref, 0) if relu else ref)


def test_split_pieces_are_placed_inside_the_joined_tensor():
    w = RNG.integers(-128, 128, (64, 64, 3, 3), dtype=np.int8)
    g = ir_conv_graph((1, 64, 16, 16), w, pads=(1, 1, 1, 1))
    res = pack_graph(g)
    pl = res.plan.placements
    pieces = [t for t in pl if t.startswith("c/part")]
    assert len(pieces) == 2
    assert all(pl[t].alias_of == "c" for t in pieces)
    assert pl["c/part0"].offset == pl["c"].offset and pl["c/part1"].offset == pl["c"].offset + 56 * 256
    buffers = {p.name: size for p, size in res.plan.buffers("share_mem")}
    assert buffers["c"] == pl["c"].size and not set(pieces) & set(buffers)  # the join costs no memory


def test_more_pieces_than_one_join_takes_are_joined_by_a_tree():
    """512 -> 512 3x3 (ResNet-18's widest conv) is cut into 86 pieces: the simulator loads at most
    MAX_JOIN_INPUTS inputs per op, so the pieces are joined in groups, then the groups; the result is the
    unsplit conv's, and the groups live inside the final tensor (no extra memory)."""
    from lnn_backend_csk60xx import simulator
    from lnn_backend_csk60xx.rewrites import MAX_JOIN_INPUTS

    assert MAX_JOIN_INPUTS == simulator.lib.LNN_SIM_MAX_OP_INPUTS
    w = RNG.integers(-128, 128, (512, 512, 3, 3), dtype=np.int8)
    g = ir_conv_graph((1, 512, 2, 2), w, pads=(1, 1, 1, 1))
    x = (RNG.standard_normal((1, 512, 2, 2)) * 6).astype(np.float32)
    plain, passed, a, b_out, da, db = _run_both(g, x)
    (rec,) = passed.passes.splits
    assert len(rec.parts) == 86
    cats = [n for n in passed.graph.nodes if n.op_type == "iqCat"]
    assert [len(n.inputs) for n in cats] == [64, 22, 2] and cats[-1].outputs == ["c"]
    assert cats[-1].inputs == [cats[0].outputs[0], cats[1].outputs[0]]
    assert np.array_equal(a[0], b_out[0]) and np.array_equal(da["c"], db["c"])
    pl = passed.plan.placements
    groups = [n.outputs[0] for n in cats[:2]]
    assert [pl[t].alias_of for t in groups] == ["c", "c"]
    assert [pl[t].offset - pl["c"].offset for t in groups] == [0, 64 * 6 * 2 * 2]
    # a piece lives inside the joined tensor where its byte offset is 64-aligned (every 8th: 8 * 24 B)
    assert [k for k in range(86) if pl[f"c/part{k}"].alias_of == "c"] == list(range(0, 86, 8))
    assert pl["c/part8"].offset == pl["c"].offset + 8 * 24


@pytest.mark.parametrize("stride,pads,k", [((1, 1), (1, 1, 1, 1), 3), ((2, 2), (1, 1, 1, 1), 3),
                                           ((1, 1), (2, 2, 2, 2), 5), ((2, 1), (0, 1, 0, 1), 3)])
def test_conv_row_split_is_bit_exact(stride, pads, k):
    c_in, h, wd = 16, 90, 64  # A8(16) * 90 * A(64) > 64 KB
    w = RNG.integers(-128, 128, (8, c_in, k, k), dtype=np.int8)
    b = RNG.integers(-5000, 5000, 8, dtype=np.int32)
    g = ir_conv_graph((1, c_in, h, wd), w, b, stride=stride, pads=pads, n_x=3, n_w=8, n_o=3)
    x = (RNG.standard_normal((1, c_in, h, wd)) * 8).astype(np.float32)
    plain, passed, a, b_out, da, db = _run_both(g, x)
    (rec,) = passed.passes.splits
    assert rec.axis == "rows" and len(set(rec.parts)) == 1 and sum(rec.parts) == da["c"].shape[2]
    slices = [n for n in passed.graph.nodes if n.op_type == "Slice"]
    assert len(slices) == len(rec.parts)
    for n in slices:  # every slice of input rows fits the 64 KB input buffer
        assert 16 * passed.graph.tensors[n.outputs[0]].shape[2] * (-(-wd // (8 * stride[1])) * 8 * stride[1]) <= 65536
    assert np.array_equal(da["c"], db["c"]) and np.array_equal(a[0], b_out[0])
    ref = conv2d_ref(quantize(x, 3), w, b, list(stride), list(pads), [1, 1], 1, 3 + 8 - 3)
    assert np.array_equal(db["c"], ref)


def _linear_graph(m_shape, k, n, *, n_x=4, n_w=8, n_o=3):
    g = ir_graph()
    g.add_tensor("x", "float32", (*m_shape, k))
    g.inputs = ["x"]
    w = RNG.integers(-128, 128, (n, k), dtype=np.int8)
    b = RNG.integers(-9000, 9000, n, dtype=np.int32)
    g.add_initializer("w", w, n_w)
    g.add_initializer("b", b, n_x + n_w)
    g.add_node(Node("quant", "Quant", ["x"], ["q"], {}, "thinker"))
    g.add_tensor("q", "int8", None, n_x)
    g.add_node(Node("fc", "LinearInt", ["q", "w", "b"], ["l"], {}, "thinker"))
    g.add_tensor("l", "int8", None, n_o)
    g.add_node(Node("deq", "Dequant", ["l"], ["y"], {}, "thinker"))
    g.outputs = ["y"]
    return g, w, b


@pytest.mark.parametrize("m_shape,k,n,axes", [
    ((1,), 512, 100, ["out_features"]),             # 512 * 100 = 51200 > 32 KB -> 2 x 50
    ((1, 40), 2048, 12, ["in_rows"]),               # A4(40) * 2048 > 64 KB -> rows
    ((1, 24), 4096, 36, ["in_rows", "out_features"]),  # both: rows first, then every row piece by features
])
def test_linear_splits_are_bit_exact(m_shape, k, n, axes):
    g, w, b = _linear_graph(m_shape, k, n)
    x = (RNG.standard_normal((*m_shape, k)) * 4).astype(np.float32)
    plain, passed, a, b_out, da, db = _run_both(g, x)
    assert sorted({s.axis for s in passed.passes.splits}) == sorted(axes)
    for node in passed.graph.nodes:
        if node.op_type == "LinearInt":
            wk = passed.graph.tensors[node.inputs[1]].shape
            xk = passed.graph.tensors[node.inputs[0]].shape
            assert -(-wk[1] // 8) * 8 * -(-wk[0] // 4) * 4 <= 32768
            assert -(-int(np.prod(xk[:-1])) // 4) * 4 * -(-k // 8) * 8 <= 65536
    assert np.array_equal(a[0], b_out[0]) and np.array_equal(da["l"], db["l"])
    acc = quantize(x, 4).astype(np.int64) @ w.astype(np.int64).T + b
    assert np.array_equal(db["l"], sat(shr(acc, 4 + 8 - 3)))


def test_what_cannot_be_split_is_a_violation():
    # weight > 32 KB and input > 64 KB at once
    w = RNG.integers(-128, 128, (64, 64, 3, 3), dtype=np.int8)
    g = ir_conv_graph((1, 64, 40, 40), w)
    report = check_graph(g)
    assert [(v.op_name, v.rule_id) for v in report.errors] == [("conv", "csk60xx.conv.weight_and_input")]
    assert report.splits == [] and not report.ok
    with pytest.raises(HardwareLimitError) as info:
        pack_graph(g)
    assert info.value.rule_id == "csk60xx.conv.weight_and_input"
    # depthwise weight above 32 KB: A16(C) * kh * kw
    wd = RNG.integers(-128, 128, (4096, 1, 3, 3), dtype=np.int8)
    report = check_graph(ir_conv_graph((1, 4096, 2, 2), wd, group=4096))
    assert [v.rule_id for v in report.errors] == ["csk60xx.conv.depthwise_weight_bytes"]
    assert report.errors[0].actual.startswith("36864 bytes")
    # two output channels alone exceed 32 KB
    w2 = RNG.integers(-128, 128, (4, 2048, 3, 3), dtype=np.int8)
    report = check_graph(ir_conv_graph((1, 2048, 1, 3), w2, pads=(1, 1, 1, 1)))
    assert [v.rule_id for v in report.errors] == ["csk60xx.conv.weight_bytes"]


def test_run_passes_is_deterministic_and_reported():
    w = RNG.integers(-128, 128, (64, 64, 3, 3), dtype=np.int8)
    g1 = infer_shapes(ir_conv_graph((1, 64, 8, 8), w, relu=True))
    g2 = infer_shapes(ir_conv_graph((1, 64, 8, 8), w, relu=True))
    r1, r2 = run_rewrites(g1, LIMITS), run_rewrites(g2, LIMITS)
    assert g1 == g2 and r1.to_dict() == r2.to_dict()
    d = r1.to_dict()
    assert d["fused_relu"] == [{"conv": "conv", "relu": "relu"}]
    assert d["splits"][0]["node"] == "conv" and d["splits"][0]["parts"] == [56, 8]
    assert "32768" in d["splits"][0]["reason"]
    pieces = [n for n in g1.nodes if n.op_type == "Conv2dInt"]
    assert all(n.attrs["act_type"] == 1 for n in pieces)  # each piece carries the fused ReLU
