"""Gather (the embedding lookup, spec/int8-seq-ops.md 2.8) in the backend, torch-free: the linger 1.1.1 node read,
packed and run by the C kernel against a numpy reference (``table[idx]``) on random tables and index shapes, int64
and int32 indices; an index outside the table, a float array for the token ids and ids beyond int32 refused with
the op / input named; the integer mode of the simulator; constant indices narrowed at pack time.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from lnn_backend_csk60xx._sim import lib
from lnn_backend_csk60xx.dialect import read_onnx, write_onnx
from lnn_backend_csk60xx.pipeline import pack_graph, pack_onnx
from lnn_backend_csk60xx.simulator import Simulator
from lnn_core.errors import ModelFileError, SimulatorError

_ONNX = {"int64": TensorProto.INT64, "int32": TensorProto.INT32}


def gather_model(table: np.ndarray, idx_shape: tuple[int, ...], *, n_w: int = 5, n_o: int | None = None,
                 idx_dtype: str = "int64", const_idx: np.ndarray | None = None) -> onnx.ModelProto:
    """``tokens -> thinker::Gather(table, tokens) -> Dequant -> y`` as linger 1.1.1 writes an EmbeddingInt (no
    axis, no platform_quant; scale_o = scale_w)."""
    n_o = n_w if n_o is None else n_o
    gather = helper.make_node("Gather", ["table", "tokens"], ["emb"], name="emb", domain="thinker",
                              scale_w=float(2.0 ** n_w), scale_o=float(2.0 ** n_o), parameter_bits=8, o_bits=8)
    deq = helper.make_node("Dequant", ["emb"], ["y"], name="deq", domain="thinker", scale_o=float(2.0 ** n_o))
    inits = [numpy_helper.from_array(table, "table")]
    inputs = []
    if const_idx is None:
        inputs.append(helper.make_tensor_value_info("tokens", _ONNX[idx_dtype], list(idx_shape)))
    else:
        inits.append(numpy_helper.from_array(const_idx, "tokens"))
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]))  # a graph needs an input
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(idx_shape) + [table.shape[1]])
    g = helper.make_graph([gather, deq], "gather", inputs, [out], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 12), helper.make_opsetid("thinker", 1)])


@settings(max_examples=40, deadline=None)
@given(v=st.integers(1, 300), e=st.integers(1, 40), idx_shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       n_w=st.integers(-3, 12), idx_dtype=st.sampled_from(["int64", "int32"]), seed=st.integers(0, 2**31 - 1))
def test_the_kernel_copies_table_rows(v, e, idx_shape, n_w, idx_dtype, seed):
    rng = np.random.default_rng(seed)
    table = rng.integers(-128, 128, (v, e), dtype=np.int8)
    idx = rng.integers(0, v, idx_shape).astype(idx_dtype)
    idx.flat[0] = v - 1  # the last row is reached
    sim = Simulator(pack_onnx(gather_model(table, tuple(idx_shape), n_w=n_w, idx_dtype=idx_dtype)))
    assert sim.inputs[0].dtype == np.int32 and sim.inputs[0].exponent == 0  # the kernel's width, narrowed once
    (y,), dump = sim.run([idx], dump=True)
    assert np.array_equal(dump["emb"], table[idx])
    assert np.array_equal(y, table[idx].astype(np.float32) * np.float32(2.0 ** -n_w))


def test_the_reader_keeps_the_linger_form_and_the_writer_writes_it_back():
    model = gather_model(np.ones((10, 4), np.int8), (2, 3), n_w=6)
    graph = read_onnx(model)
    (node, _) = graph.nodes
    assert (node.op_type, node.inputs, node.attrs) == ("Gather", ["table", "tokens"],
                                                       {"parameter_bits": 8, "o_bits": 8})
    assert graph.tensors["tokens"].dtype == "int64" and graph.tensors["tokens"].exponent is None
    assert graph.tensors["table"].exponent == 6 and graph.tensors["emb"].exponent == 6
    back = write_onnx(graph)
    gather = next(n for n in back.graph.node if n.op_type == "Gather")
    assert gather.domain == "thinker"
    assert {a.name: helper.get_attribute_value(a) for a in gather.attribute} == {
        "scale_w": 64.0, "scale_o": 64.0, "parameter_bits": 8, "o_bits": 8}
    assert back.graph.input[0].type.tensor_type.elem_type == TensorProto.INT64


def test_int32_token_ids_in_the_file_have_no_scale():
    graph = read_onnx(gather_model(np.ones((10, 4), np.int8), (1, 3), idx_dtype="int32"))
    assert graph.tensors["tokens"].dtype == "int32" and graph.tensors["tokens"].exponent is None


@pytest.mark.parametrize("bad", [10, -1, 2**31 - 1])
def test_an_index_outside_the_table_stops_the_run_naming_the_op(bad):
    sim = Simulator(pack_onnx(gather_model(np.ones((10, 4), np.int8), (1, 3))), path="m.bin")
    with pytest.raises(SimulatorError) as info:
        sim.run([np.array([[0, 9, bad]])])
    err = info.value
    assert err.status == lib.LNN_SIM_E_INPUT and err.op_name == "emb"
    assert f"index {bad} at position 2 of 'tokens' is outside 0..9" in str(err)
    with pytest.raises(SimulatorError) as info:  # the same with every tensor dumped (op by op)
        sim.run([np.array([[bad, 0, 0]])], dump=True)
    assert info.value.op_name == "emb" and "position 0" in str(info.value)


def test_token_ids_must_be_integers_that_fit_the_kernel():
    sim = Simulator(pack_onnx(gather_model(np.ones((10, 4), np.int8), (1, 3))), path="m.bin")
    with pytest.raises(SimulatorError) as info:
        sim.run([np.zeros((1, 3), np.float32)])
    err = info.value
    assert (err.input, err.expected, err.actual, err.status) == ("tokens", "int32", "float32", lib.LNN_SIM_E_INPUT)
    assert str(err).startswith("input 'tokens' of the model 'm.bin' takes integers (token ids), not float32")
    with pytest.raises(SimulatorError) as info:
        sim.run([np.array([[0, 1, 2**31]])])
    assert info.value.actual == (0, 2**31) and info.value.limit == (-(2**31), 2**31 - 1)
    for dtype in (np.int64, np.int32, np.int16, np.uint8):  # any integer array whose values fit
        (y,) = sim.run([np.array([[0, 1, 2]], dtype)])
        assert y.shape == (1, 3, 4)


def test_integer_mode_feeds_token_ids_as_they_are():
    table = np.arange(40, dtype=np.int8).reshape(10, 4)
    sim = Simulator(pack_onnx(gather_model(table, (1, 3), n_w=2)))
    assert [s.name for s in sim.int_inputs] == ["tokens"] and [s.name for s in sim.int_outputs] == ["emb"]
    (y,) = sim.run([np.array([[3, 0, 9]])], integer=True)
    assert np.array_equal(y, table[[[3, 0, 9]]])
    conv = Simulator(_packed_quant_model())  # an int8 tensor a quantize op writes takes exactly int8
    with pytest.raises(SimulatorError) as info:
        conv.run([np.zeros((1, 4), np.int64)], integer=True)
    assert (info.value.expected, info.value.actual) == ("int8", "int64")


def _packed_quant_model() -> bytes:
    q = helper.make_node("Quant", ["x"], ["q"], name="q", domain="thinker", scale_x=16.0, data_bits=8,
                         platform_quant="luna_quant")
    d = helper.make_node("Dequant", ["q"], ["y"], name="d", domain="thinker", scale_o=16.0)
    g = helper.make_graph([q, d], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return pack_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 12),
                                                         helper.make_opsetid("thinker", 1)]))


def test_constant_indices_are_narrowed_at_pack_time():
    table = np.arange(40, dtype=np.int8).reshape(10, 4)
    graph = read_onnx(gather_model(table, (2,), const_idx=np.array([7, 2], np.int64)))
    res = pack_graph(graph)
    assert res.passes.narrowed == ["tokens"] and res.graph.initializers["tokens"].dtype == np.int32
    sim = Simulator(res.blob)
    (y,) = sim.run([np.zeros(1, np.float32)])
    assert np.array_equal(y, table[[7, 2]].astype(np.float32) * np.float32(1 / 32))


def test_constant_indices_beyond_int32_are_refused():
    graph = read_onnx(gather_model(np.ones((10, 4), np.int8), (1,), const_idx=np.array([2**40], np.int64)))
    with pytest.raises(ModelFileError) as info:
        pack_graph(graph)
    assert info.value.node == "emb" and "do not fit int32" in str(info.value)
