"""GRUInt: the linger 1.1.1 file form reads, packs and runs bit-exact with the numpy reference (ops/gru.py gru_int); the
output shapes; the rules; the kernel's workspace."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import make_model, quantize, tnode
from hypothesis import given, settings
from hypothesis import strategies as st

from lnn_backend_csk60xx.check import check_graph
from lnn_backend_csk60xx.dialect import read_onnx, write_onnx
from lnn_backend_csk60xx.ops.gru import gru_int
from lnn_backend_csk60xx.pipeline import pack_graph, pack_onnx
from lnn_backend_csk60xx.simulator import Simulator
from lnn_core.errors import ModelFileError


def _model(t, d, h, *, seed=0, batch_first=1, n_i=5, n_iw=7, n_hw=7, n_o=8, n_h=None, batch=1, go_forward=1):
    """Quant -> GRUInt -> Dequant (y) and Dequant (h_n), as linger 1.1.1 writes a GRU (bias=True)."""
    rng = np.random.default_rng(seed)
    w = dict(w_ih=rng.integers(-128, 128, (3 * h, d)).astype(np.int8),
             w_hh=rng.integers(-128, 128, (3 * h, h)).astype(np.int8),
             b_ih=rng.integers(-(1 << 14), 1 << 14, 3 * h).astype(np.int32),
             b_hh=rng.integers(-(1 << 14), 1 << 14, 3 * h).astype(np.int32))
    n_h = n_o if n_h is None else n_h
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=n_i, data_bits=8),
             tnode("GRUInt", ["q", "w_ih", "w_hh", "b_ih", "b_hh"], ["g", "hq"], name="gru", input_size=d,
                   hidden_size=h, num_layers=1, batch_first=batch_first, dropout=0.0, go_forward=go_forward,
                   scale_i=n_i, scale_h=n_h, scale_iw=n_iw, scale_hw=n_hw, scale_o=n_o, data_bits=8,
                   parameter_bits=8, o_bits=8),
             tnode("Dequant", ["g"], ["y"], name="deq", scale_o=n_o),
             tnode("Dequant", ["hq"], ["h_n"], name="deq_h", scale_o=n_h)]
    xs = (batch, t, d) if batch_first else (t, batch, d)
    ys = (batch, t, h) if batch_first else (t, batch, h)
    return make_model(nodes, {"x": xs}, {"y": ys, "h_n": (1, batch, h)}, w), w


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 10), st.integers(1, 12), st.integers(1, 10), st.integers(0, 1), st.integers(0, 2**31),
       st.integers(4, 9), st.integers(3, 10))
def test_packs_and_runs_bit_exact(t, d, h, batch_first, seed, n_i, n_hw):
    n_iw = max(3, 11 - n_i)
    model, w = _model(t, d, h, seed=seed, batch_first=batch_first, n_i=n_i, n_iw=n_iw, n_hw=n_hw)
    x = np.random.default_rng(seed + 1).standard_normal((1, t, d) if batch_first else (t, 1, d)).astype(np.float32)
    (y, h_n), dump = Simulator(pack_onnx(model)).run([x], dump=True)
    q = quantize(x, n_i).reshape(t, d)
    want_y, want_h = gru_int(q, **w, n_i=n_i, n_iw=n_iw, n_hw=n_hw, n_o=8)
    assert dump["g"].shape == ((1, t, h) if batch_first else (t, 1, h)) and dump["hq"].shape == (1, 1, h)
    np.testing.assert_array_equal(dump["g"].reshape(t, h), want_y)
    np.testing.assert_array_equal(dump["hq"].reshape(h), want_h)
    np.testing.assert_array_equal(y.reshape(t, h), want_y.astype(np.float32) / 256)
    np.testing.assert_array_equal(h_n.reshape(h), want_h.astype(np.float32) / 256)


def test_linger_attributes_round_trip():
    model, _ = _model(4, 3, 2)
    graph = read_onnx(model)
    assert graph.tensors["b_ih"].exponent == 12 and graph.tensors["b_hh"].exponent == 15
    assert graph.tensors["hq"].dtype == "int8" and graph.tensors["hq"].exponent == 8
    node = next(n for n in write_onnx(graph).graph.node if n.op_type == "GRUInt")
    attrs = {a.name: (a.f if a.type == a.FLOAT else a.i if a.type == a.INT else a.s.decode()) for a in node.attribute}
    assert node.domain == "thinker" and list(node.input) == ["q", "w_ih", "w_hh", "b_ih", "b_hh"]
    assert attrs == {"scale_i": 32.0, "scale_iw": 128.0, "scale_hw": 128.0, "scale_o": 256.0, "scale_h": 256.0,
                     "input_size": 3, "hidden_size": 2, "num_layers": 1, "batch_first": 1, "dropout": 0.0,
                     "go_forward": 1, "data_bits": 8, "parameter_bits": 8, "o_bits": 8, "platform_quant": "luna_quant"}


def _violations(model) -> dict[str, object]:
    return {v.rule_id: v for v in check_graph(read_onnx(model)).violations if v.severity == "error"}


@pytest.mark.parametrize("kw,rule_id,actual,limit", [
    (dict(batch=2), "csk60xx.gru.batch", "batch 2", "batch <= 1"),
    (dict(batch=2, batch_first=0), "csk60xx.gru.batch", "batch 2", "batch <= 1"),
    (dict(n_i=3, n_iw=7), "csk60xx.gru.in_alignment", "n_i + n_iw = 3 + 7 = 10", "n_i + n_iw >= 11"),
    (dict(n_hw=2), "csk60xx.gru.hidden_alignment", "n_o + n_hw = 8 + 2 = 10", "n_o + n_hw >= 11"),
    (dict(n_o=7, n_hw=7), "csk60xx.gru.out_exponent", "n_o 7, n_h 7", "n_o = n_h = 8"),
    (dict(n_h=9), "csk60xx.gru.out_exponent", "n_o 8, n_h 9", "n_o = n_h = 8"),
])
def test_rules_name_the_node_limit_and_actual(kw, rule_id, actual, limit):
    model, _ = _model(3, 2, 2, **kw)
    v = _violations(model)
    assert set(v) == {rule_id}
    assert v[rule_id].op_name == "gru" and v[rule_id].actual == actual and v[rule_id].limit == limit
    assert v[rule_id].hint


def test_at_the_limits_the_graph_is_clean():
    for kw in (dict(n_i=4, n_iw=7), dict(n_hw=3), dict(batch_first=0)):
        assert _violations(_model(3, 2, 2, **kw)[0]) == {}


def test_kernel_workspace_is_24h():
    from lnn_backend_csk60xx.ops.gru import OPS
    model, _ = _model(3, 5, 6)
    graph = read_onnx(model)
    node = next(n for n in graph.nodes if n.op_type == "GRUInt")
    assert OPS[0].kernel_workspace(graph, node) == 24 * 6


@pytest.mark.parametrize("kw,what", [(dict(n_i=3, n_iw=7), "n_i 3 \\+ n_iw 7"), (dict(n_hw=2), "n_hw 2"),
                                     (dict(n_o=15, n_hw=7), "n_o 15")])
def test_the_loader_refuses_left_shifts_packed_without_checks(kw, what):
    """Packed with check=False, a GRU outside the right-shift contract is refused by the simulator's loader (which
    the packer runs on every package), naming the node and the exponents."""
    model, _ = _model(3, 2, 2, **kw)
    with pytest.raises(ModelFileError, match=f"op 'gru': exponents .*{what}"):
        pack_graph(read_onnx(model), check=False)


def test_linger_form_with_an_unread_float32_h_n():
    """linger declares h_n float32 and a model usually leaves it unread: the reader gives it int8 at scale_h, the
    packer keeps the kernel's state buffer, and y still equals the reference."""
    from onnx import TensorProto, helper
    model, w = _model(5, 3, 4, seed=3)
    del model.graph.node[3]
    del model.graph.output[1]
    model.graph.value_info.append(helper.make_tensor_value_info("hq", TensorProto.FLOAT, [1, 1, 4]))
    assert read_onnx(model).tensors["hq"].dtype == "int8"
    x = np.random.default_rng(4).standard_normal((1, 5, 3)).astype(np.float32)
    (y,) = Simulator(pack_onnx(model)).run([x])
    want, _ = gru_int(quantize(x, 5).reshape(5, 3), **w, n_i=5, n_iw=7, n_hw=7, n_o=8)
    np.testing.assert_array_equal(y.reshape(5, 4), want.astype(np.float32) / 256)


def test_linger_lengths_variant_reads_as_gru_with_lengths():
    """linger 1.1.1 writes a GRU on packed sequences as GRUInt_Is8_Is64(x, lengths int64 [B], weights, biases): read
    as GRUInt with lengths (written back as GRUInt), it runs the first lengths[0] steps; its h0 form
    (GRUInt_Is8_Is64_If32, float32 h0) is refused with the fix."""
    from onnx import TensorProto, helper
    model, w = _model(6, 3, 4, seed=5)
    gru = model.graph.node[1]
    gru.op_type = "GRUInt_Is8_Is64"
    gru.input.insert(1, "len")
    model.graph.initializer.append(helper.make_tensor("len", TensorProto.INT64, [1], [4]))
    graph = read_onnx(model)
    node = next(n for n in graph.nodes if n.name == "gru")
    assert node.op_type == "GRUInt" and node.inputs[-1] == "len"
    written = next(n for n in write_onnx(graph).graph.node if n.name == "gru")
    assert written.op_type == "GRUInt" and list(written.input)[:2] == ["q", "len"]
    x = np.random.default_rng(1).standard_normal((1, 6, 3)).astype(np.float32)
    (y, h_n) = Simulator(pack_onnx(model)).run([x])
    want_y, want_h = gru_int(quantize(x, 5).reshape(6, 3), **w, n_i=5, n_iw=7, n_hw=7, n_o=8, length=4)
    np.testing.assert_array_equal(y.reshape(6, 4), want_y.astype(np.float32) / 256)
    np.testing.assert_array_equal(h_n.reshape(4), want_h.astype(np.float32) / 256)
    gru.op_type = "GRUInt_Is8_Is64_If32"
    gru.input.insert(2, "h0")
    model.graph.input.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1, 4]))
    with pytest.raises(ModelFileError, match="node 'gru' \\(GRUInt\\).*h0 'h0' is float32") as e:
        read_onnx(model)
    assert "GRUInt_Is8_Is64_If32" in str(e.value.details) and "int8" in e.value.hint
