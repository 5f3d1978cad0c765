"""Reader and writer of the CSK60xx ONNX dialect: round trip, and one distinct ModelFileError per defect."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _helpers import LINGER_DEMO, make_model, snode, tnode

from lnn_backend_csk60xx.dialect import read_onnx, write_onnx
from lnn_core.errors import ExportError, ModelFileError
from lnn_core.graph import Graph, Node

RESNET = LINGER_DEMO / "resnet18-12-regular.onnx"
needs_demo = pytest.mark.skipif(not RESNET.exists(), reason=f"shared data folder absent: {RESNET}")


def _conv_model(**overrides):
    attrs = dict(scale_x=4, scale_w=6, scale_o=3, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
                 dilations=[1, 1], group=1, data_bits=8, parameter_bits=8, o_bits=8)
    attrs.update(overrides)
    attrs = {k: v for k, v in attrs.items() if v is not None}
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", data_bits=8, scale_x=4),
             tnode("Conv2dInt", ["q", "w", "b"], ["c"], name="conv", **attrs),
             tnode("Dequant", ["c"], ["y"], name="deq", scale_o=3)]
    inits = {"w": np.ones((2, 3, 3, 3), np.int8), "b": np.zeros(2, np.int32)}
    out = (1, 2, 5, 5) if overrides.get("strides", [1, 1]) == [1, 1] else None
    return make_model(nodes, {"x": (1, 3, 5, 5)}, {"y": out}, inits)


@needs_demo
def test_linger_resnet18_round_trip():
    g = read_onnx(RESNET)
    assert len(g.nodes) == 66 and g.inputs == ["input"] and g.outputs == ["output"]
    assert g.tensors["321"].exponent == 6 and g.tensors["321"].dtype == "int8"
    assert g.tensors["conv1.0.weight"].exponent == 7
    assert g.tensors["conv1.0.bias"].exponent == 13 and g.tensors["conv1.0.bias"].dtype == "int32"
    assert g.tensors["386"].shape == (1, 512)
    assert g.tensors["output"].shape == (1, 100) and g.tensors["output"].dtype == "float32"
    model = write_onnx(g)
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import} == {"": 12, "thinker": 1}
    conv = next(n for n in model.graph.node if n.op_type == "Conv2dInt")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    assert conv.domain == "thinker" and attrs["platform_quant"] == b"luna_quant" and attrs["scale_x"] == 64.0
    g2 = read_onnx(model)
    assert g == g2, g.diff(g2)


def test_small_round_trip_and_shapes():
    g = read_onnx(_conv_model(strides=[2, 2]))
    assert g.tensors["c"].shape == (1, 2, 3, 3) and g.tensors["c"].exponent == 3
    assert g.tensors["b"].exponent == 10
    assert read_onnx(write_onnx(g)) == g


def test_every_builtin_op_has_a_shape_rule_and_a_model_bin_lowering():
    from lnn_backend_csk60xx.ops import builtin_ops

    ops = builtin_ops()
    assert len({op.op_type for op in ops}) == len(ops) == 32
    for op in ops:
        assert callable(op.infer), op.op_type
        assert op.lowerings["lnn"].code > 0 and op.lowerings["lnn"].c_file.endswith(".c"), op.op_type


def _err(model, path=None) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        read_onnx(model)
    return info.value


def test_unknown_op():
    m = _conv_model()
    m.graph.node[1].op_type = "Conv3dInt"
    e = _err(m)
    assert e.node == "conv" and "unknown op" in e.headline


def test_linger3_domain_names_the_dialect():
    m = _conv_model()
    m.graph.node[1].domain = "linger"
    e = _err(m)
    assert e.node == "conv" and "linger 3" in e.hint


def test_missing_attribute():
    e = _err(_conv_model(kernel_shape=None))
    assert e.node == "conv" and "kernel_shape" in e.headline


def test_missing_scale():
    e = _err(_conv_model(scale_o=None))
    assert e.node == "conv" and "scale_o" in e.headline


def test_ill_typed_attribute():
    m = _conv_model()
    conv = m.graph.node[1]
    for a in conv.attribute:
        if a.name == "group":
            a.type = onnx.AttributeProto.FLOAT
            a.f = 1.0
    e = _err(m)
    assert e.node == "conv" and "wrong type" in e.headline


def test_wrong_length_and_value():
    assert "has 3 values" in _err(_conv_model(strides=[1, 1, 1])).headline
    assert "not supported" in _err(_conv_model(o_bits=12)).headline


def test_non_power_of_two_scale():
    m = _conv_model()
    for a in m.graph.node[1].attribute:
        if a.name == "scale_w":
            a.f = 100.0
    e = _err(m)
    assert e.node == "conv" and "power of two" in e.headline


def test_scale_conflict_with_producer():
    e = _err(_conv_model(scale_x=5))
    assert e.node == "conv" and "disagrees" in e.headline


def test_dangling_input():
    m = _conv_model()
    m.graph.node[1].input[0] = "nowhere"
    e = _err(m)
    assert e.node == "conv" and "nothing produces" in e.headline


def test_cycle():
    nodes = [snode("Relu", ["b"], ["a"], name="r1"), snode("Relu", ["a"], ["b"], name="r2"),
             tnode("Quant", ["x"], ["q"], name="quant", scale_x=0)]
    e = _err(make_model(nodes, {"x": (1,)}, {"q": (1,)}))
    assert e.node in ("r1", "r2") and "cycle" in e.headline


def test_shape_that_cannot_be_inferred():
    m = _conv_model()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    e = _err(m)
    assert e.node == "quant" and "cannot be inferred" in e.headline
    g = read_onnx(m, input_shapes={"x": (1, 3, 5, 5)})
    assert g.tensors["y"].shape == (1, 2, 5, 5)


def test_shape_mismatch_names_node():
    m = _conv_model()
    m.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.ones((2, 4, 3, 3), np.int8), "w"))
    e = _err(m)
    assert e.node == "conv" and "group" in e.headline


def test_wrong_input_count():
    m = _conv_model()
    m.graph.node[1].input.append("b")
    e = _err(m)
    assert e.node == "conv" and "inputs" in e.headline


def test_declared_output_mismatch():
    m = _conv_model()
    m.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 7
    e = _err(m)
    assert e.node is None and "declared" in e.headline


def test_bad_files(tmp_path):
    missing = tmp_path / "missing.onnx"
    e = _err(missing)
    assert e.path == str(missing)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 10)
    e = _err(junk)
    assert e.path == str(junk) and "not a valid ONNX" in e.headline
    good = tmp_path / "good.onnx"
    onnx.save(_conv_model(scale_x=5), good)
    e = _err(good)
    assert e.path == str(good) and e.node == "conv"


def test_constant_node_becomes_initializer():
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=2),
             snode("Constant", [], ["shape"], name="k",
                   value=onnx.numpy_helper.from_array(np.array([1, -1], np.int64))),
             snode("Reshape", ["q", "shape"], ["r"], name="reshape"),
             tnode("Dequant", ["r"], ["y"], name="deq", scale_o=2)]
    g = read_onnx(make_model(nodes, {"x": (1, 2, 3)}, {"y": (1, 6)}))
    assert "shape" in g.initializers and g.tensors["r"].shape == (1, 6) and g.tensors["r"].exponent == 2
    assert [n.op_type for n in g.nodes] == ["Quant", "Reshape", "Dequant"]


def test_writer_refuses_unknown_op():
    g = Graph()
    g.add_tensor("x", "int8", (1,), 0)
    g.inputs = ["x"]
    g.add_node(Node("weird", "Softplus", ["x"], ["y"]))
    g.add_tensor("y", "int8", (1,), 0)
    g.outputs = ["y"]
    with pytest.raises(ExportError) as info:
        write_onnx(g)
    assert info.value.node == "weird"
