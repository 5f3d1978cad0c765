"""Pack-time rules (one test per rule, Vela style) and check_graph: every violation collected, memory fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _helpers import ir_graph

import lnn_backend_csk60xx.plugin as backend_plugin
from lnn_backend_csk60xx.check import check_graph, op_view
from lnn_backend_csk60xx.inference import infer_shapes
from lnn_backend_csk60xx.rules import PACK_RULES, rules_for
from lnn_core.graph import Node
from lnn_core.testing import isolated_host

RNG = np.random.default_rng(5)


def build(inputs, nodes, inits=None, outputs=None, name="g"):
    """inputs: {name: shape} (float32); nodes: (name, op, inputs, output, exponent, attrs);
    inits: {name: (array, exponent)}."""
    g = ir_graph(name)
    for k, shape in inputs.items():
        g.add_tensor(k, "float32", shape)
        g.inputs.append(k)
    for k, (arr, exp) in (inits or {}).items():
        g.add_initializer(k, arr, exp)
    for node_name, op, ins, out, exp, attrs in nodes:
        domain = "" if op in ("Relu", "Clip", "MaxPool", "Reshape", "Transpose", "Slice") else "thinker"
        g.add_node(Node(node_name, op, list(ins), [out], dict(attrs), domain))
        g.add_tensor(out, "int8", None, exp)
    g.outputs = outputs or [nodes[-1][3]]
    return g


def w8(*shape):
    return RNG.integers(-128, 128, shape, dtype=np.int8)


def conv(name, x, out, w, n_o=3, **attrs):
    a = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}
    a.update(attrs)
    return (name, "Conv2dInt", [x, w], out, n_o, a)


def quant(shape, n=4):
    return {"x": shape}, ("quant", "Quant", ["x"], "q", n, {})


def errors(graph, **kwargs):
    return [(v.op_name, v.rule_id) for v in check_graph(graph, **kwargs).errors]


def test_every_pack_rule_has_an_id_text_and_ir_ops():
    for r in PACK_RULES:
        assert r.id.startswith("csk60xx.") and r.id.count(".") == 2 and r.text and r.ops
        assert not any(op.startswith("builtin.") for op in r.ops)


def test_rule_conv_input_bytes():
    ins, q = quant((1, 512, 4, 64))
    g = build(ins, [q, conv("c", "q", "y", "w")], {"w": (w8(2, 512, 3, 3), 7)})
    (v,) = check_graph(g).errors
    assert (v.op_name, v.rule_id) == ("c", "csk60xx.conv.input_bytes")
    assert v.limit == "65536 bytes per slice of rows" and v.actual.startswith("98304 bytes") and v.hint


def test_rule_conv_group_weight_bytes():
    ins, q = quant((1, 512, 2, 2))
    g = build(ins, [q, conv("c", "q", "y", "w", group=2)], {"w": (w8(512, 256, 3, 3), 7)})
    assert errors(g) == [("c", "csk60xx.conv.group_weight_bytes")]


def test_rule_deconv_weight_and_input_bytes():
    ins, q = quant((1, 64, 40, 40))
    d = ("d", "ConvTranspose2dInt", ["q", "w"], "y", 3,
         {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2], "output_padding": [1, 1]})
    g = build(ins, [q, d], {"w": (w8(64, 64, 3, 3), 7)})
    assert sorted(errors(g)) == [("d", "csk60xx.deconv.input_bytes"), ("d", "csk60xx.deconv.weight_bytes")]


def test_rule_linear_weight_bytes():
    ins, q = quant((1, 9000))
    g = build(ins, [q, ("fc", "LinearInt", ["q", "w"], "y", 3, {})], {"w": (w8(7, 9000), 7)})
    by_rule = {v.rule_id: v for v in check_graph(g).errors}  # the in_features rule has the same bound
    assert set(by_rule) == {"csk60xx.linear.weight_bytes", "csk60xx.linear.in_features"}
    assert "no equal split" in by_rule["csk60xx.linear.weight_bytes"].actual


def test_rule_linear_input_bytes():
    ins, q = quant((2, 40, 2048))  # two leading rows blocks: the rows cannot be sliced as one axis
    g = build(ins, [q, ("fc", "LinearInt", ["q", "w"], "y", 3, {})], {"w": (w8(8, 2048), 7)})
    assert errors(g) == [("fc", "csk60xx.linear.input_bytes")]


def test_rule_pool_input_bytes():
    ins, q = quant((1, 2048, 4, 64))
    g = build(ins, [q, ("p", "MaxPool", ["q"], "y", 4, {"kernel_shape": [2, 2], "strides": [2, 2]})])
    assert errors(g) == [("p", "csk60xx.pool.input_bytes")]


@pytest.mark.parametrize("op,n_o,rule_id", [("Conv2dInt", 12, "csk60xx.conv.out_exponent"),
                                            ("LinearInt", 12, "csk60xx.linear.out_exponent")])
def test_rule_out_exponent(op, n_o, rule_id):
    if op == "Conv2dInt":
        ins, q = quant((1, 4, 4, 4))
        g = build(ins, [q, conv("o", "q", "y", "w", n_o=n_o)], {"w": (w8(4, 4, 3, 3), 7)})
    else:
        ins, q = quant((1, 16))
        g = build(ins, [q, ("o", "LinearInt", ["q", "w"], "y", n_o, {})], {"w": (w8(4, 16), 7)})
    (v,) = check_graph(g).errors
    assert (v.op_name, v.rule_id) == ("o", rule_id) and v.limit == "n_o <= 11" and "n_o 12" in v.actual


def test_rule_mul_out_exponent_and_broadcast():
    ins, q = quant((1, 4, 2, 2))
    g = build({"x": (1, 4, 2, 2), "z": (1, 1, 2, 2)},
              [q, ("qz", "Quant", ["z"], "qz", 3, {}), ("m", "iqMul", ["q", "qz"], "y", 8, {})])
    assert sorted(errors(g)) == [("m", "csk60xx.mul.broadcast"), ("m", "csk60xx.mul.out_exponent")]
    ok = build({"x": (1, 4, 2, 2), "z": (1, 4, 1, 1)},
               [q, ("qz", "Quant", ["z"], "qz", 3, {}), ("m", "iqMul", ["q", "qz"], "y", 5, {})])
    assert errors(ok) == []


def test_rule_add_out_exponent_and_equal_shapes():
    ins, q = quant((1, 4, 2, 2))
    g = build({"x": (1, 4, 2, 2), "z": (1, 4, 1, 1)},
              [q, ("qz", "Quant", ["z"], "qz", 3, {}), ("a", "iqAdd", ["q", "qz"], "y", 4, {})])
    assert sorted(errors(g)) == [("a", "csk60xx.add.equal_shapes"), ("a", "csk60xx.add.out_exponent")]


def test_rule_avgpool_out_exponent():
    ins, q = quant((1, 4, 4, 4))
    g = build(ins, [q, ("p", "AvgPool2dInt", ["q"], "y", 5, {"kernel_shape": [2, 2], "strides": [2, 2]})])
    (v,) = check_graph(g).errors
    assert v.rule_id == "csk60xx.avgpool.out_exponent" and v.limit == "n_o = n_x"


def test_rule_quant_exponent():
    ins, q = quant((1, 4), n=-1)
    assert errors(build(ins, [q])) == [("quant", "csk60xx.quant.exponent")]


def test_rule_cat_inputs_and_dtype():
    ins, q = quant((1, 4))
    g = build(ins, [q, ("c", "iqCat", ["q"], "y", 4, {"dim": 1})])
    assert errors(g) == [("c", "csk60xx.cat.inputs")]


def test_rule_slice_single_axis():
    ins, q = quant((1, 4, 6, 6))
    inits = {"s": (np.array([0, 1], np.int64), None), "e": (np.array([2, 5], np.int64), None),
             "a": (np.array([1, 2], np.int64), None)}
    g = build(ins, [q, ("sl", "Slice", ["q", "s", "e", "a"], "y", 4, {})], inits)
    (v,) = check_graph(g).errors
    assert v.rule_id == "csk60xx.slice.single_axis" and v.actual == "axes [1, 2], steps []"


def test_rule_transpose_rank():
    ins, q = quant((1, 4, 6, 6))
    g = build(ins, [q, ("t", "Transpose", ["q"], "y", 4, {"perm": [1, 0, 2, 3]})])
    assert errors(g) == [("t", "csk60xx.transpose.rank")]


def test_rule_dequant_dtype():
    ins, q = quant((1, 4))
    g = build(ins, [q, ("r", "Requant", ["q"], "r16", 12, {"o_bits": 16}), ("d", "Dequant", ["r16"], "y", None, {})])
    g.tensors["y"].dtype = "float32"
    (v,) = check_graph(g).errors
    assert (v.op_name, v.rule_id, v.actual) == ("d", "csk60xx.dequant.dtype", "input 0 int16")


def test_rule_op_supported_and_shape():
    ins, q = quant((1, 4))
    g = build(ins, [q, ("f", "FancyOp", ["q"], "y", 4, {})])
    report = check_graph(g)
    assert [(v.op_name, v.rule_id) for v in report.errors] == [("f", "csk60xx.graph.op_supported")]
    assert not report.fits and "unknown" in report.memory["reason"]
    g2 = build({"x": (1, 4), "z": (1, 3)}, [q, ("qz", "Quant", ["z"], "qz", 4, {}),
                                             ("a", "iqAdd", ["q", "qz"], "y", 4, {})])
    report = check_graph(g2)
    assert [v.rule_id for v in report.errors] == ["csk60xx.graph.shape", "csk60xx.add.equal_shapes"]
    assert "cannot be broadcast" in report.errors[0].actual and report.errors[0].op_name == "a"


def test_check_collects_every_violation_with_its_facts():
    ins, q = quant((1, 64, 40, 40), n=-2)
    g = build(ins, [q, conv("c1", "q", "a", "w1", n_o=20, kernel_shape=[7, 7], pads=[3, 3, 3, 3]),
                    conv("c2", "a", "b", "w2", n_o=2, dilations=[2, 2], pads=[2, 2, 2, 2])],
              {"w1": (w8(64, 64, 7, 7), 7), "w2": (w8(8, 64, 3, 3), 7)})
    report = check_graph(g)
    got = sorted((v.op_name, v.rule_id) for v in report.errors)
    assert got == [("c1", "csk60xx.conv.kernel_size"), ("c1", "csk60xx.conv.out_exponent"),
                   ("c1", "csk60xx.conv.weight_and_input"), ("c2", "csk60xx.conv.dilation"),
                   ("quant", "csk60xx.quant.exponent")]
    for v in report.errors:
        assert v.limit is not None and v.actual is not None and v.hint and v.rule and v.target == "csk60xx"
    text = report.table()
    assert "csk60xx.conv.weight_and_input" in text and "fits: NO" in text
    data = json.loads(report.to_json())
    assert data["ok"] is False and len(data["violations"]) == len(report.violations)


def test_memory_violation_when_psram_overflows():
    ins, q = quant((1, 64, 32, 32))
    g = build(ins, [q, ("r", "Relu", ["q"], "y", 4, {})])
    report = check_graph(g, share_mem=150000, psram=50000)  # the 256 KB float input must move
    assert not report.fits and not report.ok
    (v,) = report.errors
    assert v.rule_id == "csk60xx.memory.psram_bytes" and v.limit == 50000 and v.actual > 50000
    fine = check_graph(g)
    assert fine.ok and fine.memory["share_mem_bytes"] <= fine.memory["share_mem_limit"] and fine.memory["fits"]


def test_op_view_derives_what_the_op_rules_read():
    ins, q = quant((1, 16, 8, 8))
    g = infer_shapes(build(ins, [q, conv("c", "q", "y", "w", group=16)], {"w": (w8(16, 1, 3, 3), 7)}))
    v = op_view(g, g.node("c"))
    assert v.attrs["in_channels"] == 16 and v.attrs["out_channels"] == 16 and v.attrs["data_bits"] == 8
    assert v.attrs["input_shapes"][1] == (16, 1, 3, 3) and v.attrs["output_exponents"] == (3,)
    assert {r.id for r in rules_for("Conv2dInt")} >= {"csk60xx.conv.kernel_size", "csk60xx.conv.weight_bytes"}


def test_check_graph_hook_for_the_core():
    host = isolated_host([backend_plugin])
    ins, q = quant((1, 4, 4, 4))
    g = build(ins, [q, conv("c", "q", "y", "w", kernel_shape=[7, 7], pads=[3, 3, 3, 3])], {"w": (w8(4, 4, 7, 7), 7)})
    report = host.hook.lnn_check_graph(graph=g, target="csk60xx", options={"share_mem": 300000}, host=host)
    assert not report.ok and report.violations[0].rule_id == "csk60xx.conv.kernel_size"
    assert report.memory["share_mem_limit"] == 300000
    assert host.hook.lnn_check_graph(graph=g, target="other", options={}, host=host) is None
