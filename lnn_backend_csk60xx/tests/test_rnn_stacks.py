"""Bidirectional and stacked recurrent layers at pack time (issue 10 item 3): one node per layer and direction
(go_forward 1 / 0) on the same input, their y concatenated on the last dim (iqCat, spec 2.1.3), layers chained;
with packed lengths and per-node initial state. Packed and run, every node's y equals the references."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import make_model, quantize, tnode
from onnx import TensorProto

from lnn_backend_csk60xx.check import check_graph
from lnn_backend_csk60xx.dialect import read_onnx
from lnn_backend_csk60xx.ops.gru import gru_int
from lnn_backend_csk60xx.ops.lstm import lstm_int
from lnn_backend_csk60xx.pipeline import pack_onnx
from lnn_backend_csk60xx.simulator import Simulator

T, D, H = 9, 5, 4


def _stack(op, layers, *, batch_first=1, length=None, state=False, seed=0):
    """Quant -> layers x (forward, reverse) op nodes -> iqCat per layer -> Dequant; returns the model, the weights
    per node and the exponents. GRU at n_o = 8, LSTM at 7; each node its own h0 (c0) graph input when ``state``."""
    gates, n_o = (3, 8) if op == "GRUInt" else (4, 7)
    rng = np.random.default_rng(seed)
    nodes = [tnode("Quant", ["x"], ["q0"], name="quant", scale_x=5, data_bits=8)]
    inits, weights, inputs = {}, {}, {"x": (1, T, D) if batch_first else (T, 1, D)}
    state_types = {}
    src, d = "q0", D
    for layer in range(layers):
        ys = []
        for rev in (0, 1):
            name = f"{op[:3].lower()}{layer}{'r' if rev else 'f'}"
            w = dict(w_ih=rng.integers(-128, 128, (gates * H, d)).astype(np.int8),
                     w_hh=rng.integers(-128, 128, (gates * H, H)).astype(np.int8),
                     b_ih=rng.integers(-4096, 4096, gates * H).astype(np.int32),
                     b_hh=rng.integers(-4096, 4096, gates * H).astype(np.int32))
            weights[name] = w
            inits.update({f"{name}_{k}": v for k, v in w.items()})
            extra = []
            if length is not None or state:
                extra.append("len")
            if state:
                extra.append(f"{name}_h0")
                inputs[f"{name}_h0"] = (1, 1, H)
                state_types[f"{name}_h0"] = TensorProto.INT8
                if op == "LSTMInt":
                    extra.append(f"{name}_c0")
                    inputs[f"{name}_c0"] = (1, 1, H)
                    state_types[f"{name}_c0"] = TensorProto.INT16
            outs = [f"{name}_y", f"{name}_h"] + ([f"{name}_c"] if op == "LSTMInt" else [])
            nodes.append(tnode(op, [src, *extra, *(f"{name}_{k}" for k in ("w_ih", "w_hh", "b_ih", "b_hh"))], outs,
                               name=name, input_size=d, hidden_size=H, num_layers=1, batch_first=batch_first,
                               dropout=0.0, go_forward=1 - rev, scale_i=5 if layer == 0 else n_o, scale_h=n_o,
                               scale_iw=7, scale_hw=7, scale_o=n_o, data_bits=8, parameter_bits=8, o_bits=8))
            ys.append(f"{name}_y")
        nodes.append(tnode("iqCat", ys, [f"cat{layer}"], name=f"cat{layer}", dim=2, scale_x_0=n_o, scale_x_1=n_o,
                           scale_o=n_o))
        src, d = f"cat{layer}", 2 * H
    nodes.append(tnode("Dequant", [src], ["y"], name="deq", scale_o=n_o))
    if length is not None or state:
        inits["len"] = np.array([T if length is None else length], np.int64)
    model = make_model(nodes, inputs, {"y": (1, T, 2 * H) if batch_first else (T, 1, 2 * H)}, inits)
    for vi in model.graph.input:
        if vi.name in state_types:
            vi.type.tensor_type.elem_type = state_types[vi.name]
    return model, weights, n_o


def _reference(op, layers, weights, x, n_o, *, length=None, h0=None, c0=None):
    q = quantize(x, 5).reshape(T, D).astype(np.int64)
    n_in = 5
    for layer in range(layers):
        ys = []
        for rev in (0, 1):
            name = f"{op[:3].lower()}{layer}{'r' if rev else 'f'}"
            kw = dict(n_i=n_in, n_iw=7, n_hw=7, n_o=n_o, length=length, reverse=bool(rev),
                      h0=None if h0 is None else h0[name])
            if op == "LSTMInt":
                y, _, _ = lstm_int(q, **weights[name], **kw, c0=None if c0 is None else c0[name])
            else:
                y, _ = gru_int(q, **weights[name], **kw)
            ys.append(y)
        q, n_in = np.concatenate(ys, 1).astype(np.int64), n_o
    return q


@pytest.mark.parametrize("op", ["LSTMInt", "GRUInt"])
@pytest.mark.parametrize("batch_first", [0, 1])
def test_two_layer_bidirectional_stack(op, batch_first):
    model, weights, n_o = _stack(op, 2, batch_first=batch_first)
    x = np.random.default_rng(1).standard_normal((1, T, D) if batch_first else (T, 1, D)).astype(np.float32)
    (y,) = Simulator(pack_onnx(model)).run([x])
    want = _reference(op, 2, weights, x, n_o)
    np.testing.assert_array_equal(y.reshape(T, 2 * H), want / 2.0 ** n_o)


@pytest.mark.parametrize("op", ["LSTMInt", "GRUInt"])
def test_stack_with_lengths_and_initial_state(op):
    """Packed variable lengths (5 of 9 steps) and an initial state per node: the reverse node starts at step 4."""
    model, weights, n_o = _stack(op, 2, length=5, state=True)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, T, D)).astype(np.float32)
    sim = Simulator(pack_onnx(model))
    feeds, h0, c0 = [x], {}, {}
    for spec in sim.inputs[1:]:
        v = rng.integers(-128 if spec.dtype == np.int8 else -30000, 128 if spec.dtype == np.int8 else 30000,
                         spec.shape).astype(spec.dtype)
        feeds.append(v)
        (h0 if spec.name.endswith("h0") else c0)[spec.name[:-3]] = v.reshape(H)
    (y,) = sim.run(feeds)
    want = _reference(op, 2, weights, x, n_o, length=5, h0=h0, c0=c0 or None)
    np.testing.assert_array_equal(y.reshape(T, 2 * H), want / 2.0 ** n_o)
    assert not want[5:].any()


def test_a_bidirectional_gru_packs_with_the_vendor_warning():
    report = check_graph(read_onnx(_stack("GRUInt", 1)[0]))
    assert report.ok
    assert [(v.op_name, v.rule_id) for v in report.violations] == [("gru0r", "csk60xx.gru.direction")]
