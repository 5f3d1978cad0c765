"""Streaming a recurrent model (issue 10 item 7): Simulator.stream carries the state from call to call, and a
sequence fed in chunks of 1, 7 and 25 frames gives the integers of the whole sequence at once (GRUInt with a float
state through quantize / dequantize ops, LSTMInt with the raw int8 h and int16 Q7 c as graph inputs and outputs);
lnn run --state-in / --state-out does the same from files."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import make_model, quantize, tnode
from onnx import TensorProto

from lnn_backend_csk60xx.ops.gru import gru_int
from lnn_backend_csk60xx.ops.lstm import lstm_int
from lnn_backend_csk60xx.pipeline import pack_onnx
from lnn_backend_csk60xx.simulator import Simulator
from lnn_core.errors import SimulatorError

D, H, TOTAL = 5, 6, 175


def _weights(gates, seed):
    rng = np.random.default_rng(seed)
    return dict(w_ih=rng.integers(-128, 128, (gates * H, D)).astype(np.int8),
                w_hh=rng.integers(-128, 128, (gates * H, H)).astype(np.int8),
                b_ih=rng.integers(-(1 << 12), 1 << 12, gates * H).astype(np.int32),
                b_hh=rng.integers(-(1 << 12), 1 << 12, gates * H).astype(np.int32))


ATTRS = dict(input_size=D, hidden_size=H, num_layers=1, batch_first=1, dropout=0.0, go_forward=1, data_bits=8,
             parameter_bits=8, o_bits=8)


def gru_model(t):
    """x, h0 (float) -> Quant -> GRUInt(lengths [t], h0) -> Dequant -> y, h_n."""
    w = _weights(3, 1)
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=5, data_bits=8),
             tnode("Quant", ["h0"], ["h0q"], name="quant_h", scale_x=8, data_bits=8),
             tnode("GRUInt", ["q", "len", "h0q", "w_ih", "w_hh", "b_ih", "b_hh"], ["g", "hq"], name="gru",
                   scale_i=5, scale_h=8, scale_iw=7, scale_hw=7, scale_o=8, **ATTRS),
             tnode("Dequant", ["g"], ["y"], name="deq", scale_o=8),
             tnode("Dequant", ["hq"], ["h_n"], name="deq_h", scale_o=8)]
    return make_model(nodes, {"x": (1, t, D), "h0": (1, 1, H)}, {"y": (1, t, H), "h_n": (1, 1, H)},
                      {**w, "len": np.array([t], np.int64)}), w


def lstm_model(t):
    """x (float) -> Quant -> LSTMInt(lengths [t], h0 int8, c0 int16) -> Dequant -> y; h_n, c_n raw outputs."""
    w = _weights(4, 2)
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=5, data_bits=8),
             tnode("LSTMInt", ["q", "len", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"], ["l", "hq", "cq"],
                   name="lstm", scale_i=5, scale_h=7, scale_iw=7, scale_hw=7, scale_o=7, **ATTRS),
             tnode("Dequant", ["l"], ["y"], name="deq", scale_o=7)]
    model = make_model(nodes, {"x": (1, t, D), "h0": (1, 1, H), "c0": (1, 1, H)},
                       {"y": (1, t, H), "hq": (1, 1, H), "cq": (1, 1, H)}, {**w, "len": np.array([t], np.int64)})
    for vi in (*model.graph.input, *model.graph.output):
        if vi.name in ("h0", "hq"):
            vi.type.tensor_type.elem_type = TensorProto.INT8
        if vi.name in ("c0", "cq"):
            vi.type.tensor_type.elem_type = TensorProto.INT16
    return model, w


def _x():
    return np.random.default_rng(7).standard_normal((1, TOTAL, D)).astype(np.float32)


@pytest.mark.parametrize("build", [gru_model, lstm_model], ids=["gru", "lstm"])
def test_chunks_of_1_7_25_frames_equal_the_whole_sequence(build):
    x = _x()
    whole = Simulator(pack_onnx(build(TOTAL)[0])).stream()
    (y_all, *_) = whole.run([x])
    for chunk in (1, 7, 25):
        stream = Simulator(pack_onnx(build(chunk)[0])).stream()
        assert [s.name for s in stream.inputs] == ["x"]
        ys = [stream.run([x[:, s:s + chunk]])[0] for s in range(0, TOTAL, chunk)]
        np.testing.assert_array_equal(np.concatenate(ys, 1), y_all)
        for k in whole.state:
            np.testing.assert_array_equal(stream.state[k], whole.state[k])


def test_the_stream_equals_the_reference_and_its_state_restores():
    x = _x()
    model, w = lstm_model(25)
    sim = Simulator(pack_onnx(model))
    assert sim.state_pairs == {"h0": "hq", "c0": "cq"}
    stream = sim.stream()
    assert stream.state["h0"].dtype == np.int8 and stream.state["c0"].dtype == np.int16
    y1 = stream.run([x[:, :25]])[0]
    saved = dict(stream.state)
    y2 = stream.run([x[:, 25:50]])[0]
    want, _, _ = lstm_int(quantize(x[0, :50], 5), **w, n_i=5, n_iw=7, n_hw=7, n_o=7)
    np.testing.assert_array_equal(np.concatenate([y1, y2], 1)[0], want / 128)
    again = sim.stream(state=saved)
    np.testing.assert_array_equal(again.run([x[:, 25:50]])[0], y2)
    stream.reset()
    np.testing.assert_array_equal(stream.run([x[:, :25]])[0], y1)


def test_gru_stream_equals_the_reference():
    x = _x()
    model, w = gru_model(7)
    sim = Simulator(pack_onnx(model))
    assert sim.state_pairs == {"h0": "h_n"}
    stream = sim.stream()
    ys = [stream.run([x[:, s:s + 7]])[0] for s in range(0, 21, 7)]
    want, h = gru_int(quantize(x[0, :21], 5), **w, n_i=5, n_iw=7, n_hw=7, n_o=8)
    np.testing.assert_array_equal(np.concatenate(ys, 1)[0], want / 256)
    np.testing.assert_array_equal(stream.state["h0"].reshape(H), h / 256)


def test_a_model_without_state_and_a_foreign_state_are_refused():
    from test_gru_int import _model
    sim = Simulator(pack_onnx(_model(3, 2, 2)[0]))
    assert sim.state_pairs == {}
    with pytest.raises(SimulatorError, match="no recurrent state") as e:
        sim.stream()
    assert e.value.hint
    with pytest.raises(SimulatorError, match="does not name its state inputs"):
        Simulator(pack_onnx(gru_model(3)[0])).stream(state={"h": np.zeros((1, 1, H), np.float32)})
    stream = Simulator(pack_onnx(lstm_model(3)[0])).stream()
    stream.state["c0"] = np.zeros((1, H), np.int16)  # the shape is [1, 1, H]
    with pytest.raises(SimulatorError, match="state input 'c0' .* does not match") as e:
        stream.run([np.zeros((1, 3, D), np.float32)])
    assert e.value.expected == "int16" and e.value.hint
    with pytest.raises(SimulatorError, match=r"takes 1 inputs \(the state is carried\), got 2"):
        stream.run([np.zeros((1, 3, D), np.float32)] * 2)


def test_lengths_beyond_the_sequence_stop_the_run_naming_the_op():
    model, _ = gru_model(4)
    for init in model.graph.initializer:
        if init.name == "len":
            init.int64_data[:] = []
            init.raw_data = np.array([5], np.int64).tobytes()
    with pytest.raises(SimulatorError, match="op 'gru' \\(GRUInt\\): lengths\\[0\\] = 5 is outside 0..4"):
        Simulator(pack_onnx(model)).run([np.zeros((1, 4, D), np.float32), np.zeros((1, 1, H), np.float32)])


def test_lnn_run_carries_the_state_through_files(tmp_path, capsys):
    """lnn run --state-out then --state-in, chunk after chunk, equals the stream (and the whole sequence)."""
    import onnx

    from lnn_core.cli import main
    x = _x()
    onnx.save(lstm_model(7)[0], tmp_path / "m.onnx")
    assert main(["pack", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.bin")]) == 0
    stream = Simulator((tmp_path / "m.bin").read_bytes()).stream()
    state = tmp_path / "s.npz"
    for k in range(3):
        np.save(tmp_path / "x.npy", x[:, 7 * k:7 * k + 7])
        args = ["run", str(tmp_path / "m.bin"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"), "-o",
                str(tmp_path / "h.npy"), "-o", str(tmp_path / "c.npy"), "--state-out", str(state)]
        assert main(args + (["--state-in", str(state)] if k else [])) == 0
        want = stream.run([x[:, 7 * k:7 * k + 7]])
        np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want[0])
        with np.load(state) as saved:
            assert sorted(saved.files) == ["c0", "h0"]
            np.testing.assert_array_equal(saved["c0"], stream.state["c0"])
    capsys.readouterr()
    assert main(["run", str(tmp_path / "m.bin"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"),
                 "--state-in", str(tmp_path / "missing.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
