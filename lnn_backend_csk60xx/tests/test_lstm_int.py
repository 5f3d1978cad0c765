"""LSTMInt: the linger 1.1.1 file form reads, packs and runs bit-exact with the numpy reference (ops/lstm.py lstm_int);
input order in the file and in the IR; output shapes; the rules; the kernel's workspace."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import make_model, quantize, tnode
from hypothesis import given, settings
from hypothesis import strategies as st

from lnn_backend_csk60xx.check import check_graph
from lnn_backend_csk60xx.dialect import read_onnx, write_onnx
from lnn_backend_csk60xx.ops.lstm import lstm_int
from lnn_backend_csk60xx.pipeline import pack_onnx
from lnn_backend_csk60xx.simulator import Simulator
from lnn_core.errors import ModelFileError


def _weights(d, h, seed):
    rng = np.random.default_rng(seed)
    return dict(w_ih=rng.integers(-128, 128, (4 * h, d)).astype(np.int8),
                w_hh=rng.integers(-128, 128, (4 * h, h)).astype(np.int8),
                b_ih=rng.integers(-(1 << 14), 1 << 14, 4 * h).astype(np.int32),
                b_hh=rng.integers(-(1 << 14), 1 << 14, 4 * h).astype(np.int32))


def _model(t, d, h, *, seed=0, batch_first=1, n_i=5, n_iw=7, n_hw=7, n_o=7, n_h=None, batch=1, go_forward=1,
           lengths=None, bidirectional=False):
    """Quant -> LSTMInt -> Dequant (y), as linger 1.1.1 writes an LSTM (bias=True), inputs in linger's order; with
    ``bidirectional`` a reverse node too and the two y concatenated on the last dim (iqCat)."""
    w = _weights(d, h, seed)
    n_h = n_o if n_h is None else n_h
    extra = ["len"] if lengths is not None else []
    attrs = dict(input_size=d, hidden_size=h, num_layers=1, batch_first=batch_first, dropout=0.0, scale_i=n_i,
                 scale_h=n_h, scale_iw=n_iw, scale_hw=n_hw, scale_o=n_o, data_bits=8, parameter_bits=8, o_bits=8)
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=n_i, data_bits=8),
             tnode("LSTMInt", ["q", *extra, "w_ih", "w_hh", "b_ih", "b_hh"], ["l", "hq", "cq"], name="lstm",
                   go_forward=go_forward, **attrs)]
    inits = dict(w)
    ys = (batch, t, h) if batch_first else (t, batch, h)
    if bidirectional:
        wr = _weights(d, h, seed + 7)
        inits.update({f"{k}_r": v for k, v in wr.items()})
        nodes.append(tnode("LSTMInt", ["q", *extra, "w_ih_r", "w_hh_r", "b_ih_r", "b_hh_r"], ["lr", "hr", "cr"],
                           name="lstm_r", go_forward=0, **attrs))
        nodes.append(tnode("iqCat", ["l", "lr"], ["cat"], name="cat", dim=2, scale_x_0=n_o, scale_x_1=n_o,
                           scale_o=n_o))
        nodes.append(tnode("Dequant", ["cat"], ["y"], name="deq", scale_o=n_o))
        ys = (*ys[:2], 2 * h)
    else:
        nodes.append(tnode("Dequant", ["l"], ["y"], name="deq", scale_o=n_o))
    if lengths is not None:
        inits["len"] = np.array([lengths], np.int64)
    xs = (batch, t, d) if batch_first else (t, batch, d)
    return make_model(nodes, {"x": xs}, {"y": ys}, inits), w


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 10), st.integers(1, 12), st.integers(1, 10), st.integers(0, 1), st.integers(0, 2**31),
       st.integers(0, 9), st.integers(3, 10), st.integers(0, 14), st.booleans())
def test_packs_and_runs_bit_exact(t, d, h, batch_first, seed, n_i, n_hw, n_o, reverse):
    model, w = _model(t, d, h, seed=seed, batch_first=batch_first, n_i=n_i, n_hw=n_hw, n_o=n_o,
                      go_forward=0 if reverse else 1)
    x = np.random.default_rng(seed + 1).standard_normal((1, t, d) if batch_first else (t, 1, d)).astype(np.float32)
    (y,), dump = Simulator(pack_onnx(model)).run([x], dump=True)
    want_y, want_h, want_c = lstm_int(quantize(x, n_i).reshape(t, d), **w, n_i=n_i, n_iw=7, n_hw=n_hw, n_o=n_o,
                                      reverse=reverse)
    assert dump["l"].shape == ((1, t, h) if batch_first else (t, 1, h)) and dump["hq"].shape == (1, 1, h)
    assert dump["cq"].dtype == np.int16 and dump["cq"].shape == (1, 1, h)
    np.testing.assert_array_equal(dump["l"].reshape(t, h), want_y)
    np.testing.assert_array_equal(dump["hq"].reshape(h), want_h)
    np.testing.assert_array_equal(dump["cq"].reshape(h), want_c)
    np.testing.assert_array_equal(y.reshape(t, h), want_y.astype(np.float32) / 2.0 ** n_o)


@pytest.mark.parametrize("length", [0, 3, 6])
@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_run_the_first_steps_and_zero_the_rest(length, reverse):
    model, w = _model(6, 4, 3, seed=5, lengths=length, go_forward=0 if reverse else 1)
    graph = read_onnx(model)
    node = next(n for n in graph.nodes if n.op_type == "LSTMInt")
    assert node.inputs == ["q", "w_ih", "w_hh", "b_ih", "b_hh", "len"]  # the IR puts lengths last
    assert list(next(n for n in write_onnx(graph).graph.node if n.op_type == "LSTMInt").input)[:2] == ["q", "len"]
    x = np.random.default_rng(2).standard_normal((1, 6, 4)).astype(np.float32)
    (y,), dump = Simulator(pack_onnx(model)).run([x], dump=True)
    want_y, want_h, _ = lstm_int(quantize(x, 5).reshape(6, 4), **w, n_i=5, n_iw=7, n_hw=7, n_o=7, length=length,
                                 reverse=reverse)
    np.testing.assert_array_equal(dump["l"].reshape(6, 3), want_y)
    np.testing.assert_array_equal(dump["hq"].reshape(3), want_h)
    assert not want_y[length:].any()


def test_bidirectional_is_two_nodes_and_a_concatenation():
    """linger's bidirectional form: a forward and a reverse node on the same x, y concatenated on the last dim."""
    model, w = _model(5, 3, 4, seed=9, bidirectional=True)
    x = np.random.default_rng(3).standard_normal((1, 5, 3)).astype(np.float32)
    (y,) = Simulator(pack_onnx(model)).run([x])
    q = quantize(x, 5).reshape(5, 3)
    wr = _weights(3, 4, 16)
    yf, _, _ = lstm_int(q, **w, n_i=5, n_iw=7, n_hw=7, n_o=7)
    yr, _, _ = lstm_int(q, **wr, n_i=5, n_iw=7, n_hw=7, n_o=7, reverse=True)
    np.testing.assert_array_equal(y.reshape(5, 8), np.concatenate([yf, yr], 1).astype(np.float32) / 128)


def test_linger_attributes_round_trip():
    model, _ = _model(4, 3, 2)
    graph = read_onnx(model)
    assert graph.tensors["b_ih"].exponent == 12 and graph.tensors["b_hh"].exponent == 14
    assert graph.tensors["hq"].dtype == "int8" and graph.tensors["hq"].exponent == 7
    assert graph.tensors["cq"].dtype == "int16" and graph.tensors["cq"].exponent == 7
    node = next(n for n in write_onnx(graph).graph.node if n.op_type == "LSTMInt")
    attrs = {a.name: (a.f if a.type == a.FLOAT else a.i if a.type == a.INT else a.s.decode()) for a in node.attribute}
    assert node.domain == "thinker" and list(node.input) == ["q", "w_ih", "w_hh", "b_ih", "b_hh"]
    assert attrs == {"scale_i": 32.0, "scale_iw": 128.0, "scale_hw": 128.0, "scale_o": 128.0, "scale_h": 128.0,
                     "input_size": 3, "hidden_size": 2, "num_layers": 1, "batch_first": 1, "dropout": 0.0,
                     "go_forward": 1, "data_bits": 8, "parameter_bits": 8, "o_bits": 8, "platform_quant": "luna_quant"}


def test_linger_float_h0_is_refused_with_the_fix():
    """linger writes h0/c0 float32 (the vendor runtime copies them as raw bytes): refused, naming the node."""
    from onnx import TensorProto, helper
    model, _ = _model(3, 2, 2, lengths=3)
    lstm = model.graph.node[1]
    lstm.input[2:2] = ["h0", "c0"]
    model.graph.input.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 2]) for n in ("h0", "c0")])
    with pytest.raises(ModelFileError, match="node 'lstm' \\(LSTMInt\\).*h0 'h0' is float32") as e:
        read_onnx(model)
    assert "raw bytes" in str(e.value.details) and e.value.hint


def test_seven_inputs_are_refused():
    model, _ = _model(3, 2, 2, lengths=3)
    model.graph.node[1].input.insert(2, "len")
    with pytest.raises(ModelFileError, match="has 7 inputs"):
        read_onnx(model)


def _violations(model, severity="error") -> dict[str, object]:
    return {v.rule_id: v for v in check_graph(read_onnx(model)).violations if v.severity == severity}


@pytest.mark.parametrize("kw,rule_id,actual,limit", [
    (dict(batch=2), "csk60xx.lstm.batch", "batch 2", "batch <= 1"),
    (dict(batch=2, batch_first=0), "csk60xx.lstm.batch", "batch 2", "batch <= 1"),
    (dict(n_i=0, n_iw=-20), "csk60xx.lstm.in_alignment", "n_i + n_iw = 0 + -20 = -20", "n_i + n_iw >= -19"),
    (dict(n_o=0, n_hw=-20), "csk60xx.lstm.hidden_alignment", "n_o + n_hw = 0 + -20 = -20", "n_o + n_hw >= -19"),
    (dict(n_o=15), "csk60xx.lstm.out_exponent", "n_o 15", "n_o <= 14"),
    (dict(n_h=8), "csk60xx.lstm.state_exponent", "n_o 7, h_n 8", "h_n = h0 = n_o, c0 = 7"),
])
def test_rules_name_the_node_limit_and_actual(kw, rule_id, actual, limit):
    model, _ = _model(3, 2, 2, **kw)
    v = _violations(model)
    assert set(v) == {rule_id}
    assert v[rule_id].op_name == "lstm" and v[rule_id].actual == actual and v[rule_id].limit == limit
    assert v[rule_id].hint


def test_lengths_warn_what_the_vendor_runtime_does():
    v = _violations(_model(3, 2, 2, lengths=2)[0], "warning")
    assert "csk60xx.lstm.vendor_lengths" in v and "unwritten" in v["csk60xx.lstm.vendor_lengths"].limit


def test_at_the_limits_the_graph_is_clean():
    for kw in (dict(n_i=0, n_iw=-19), dict(n_o=14, n_hw=-3), dict(batch_first=0), dict(n_o=0, n_hw=-19)):
        assert _violations(_model(3, 2, 2, **kw)[0]) == {}


def test_kernel_workspace_is_40h():
    from lnn_backend_csk60xx.ops.lstm import OPS
    graph = read_onnx(_model(3, 5, 6)[0])
    node = next(n for n in graph.nodes if n.op_type == "LSTMInt")
    assert OPS[0].kernel_workspace(graph, node) == 40 * 6
