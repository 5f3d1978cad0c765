"""Packed sequences (issue 10): ``pack_padded_sequence`` -> ``nn.GRU`` / ``nn.LSTM`` -> ``pad_packed_sequence``,
called any way, traced as one node each; each sequence runs for its own length (the chip's lengths input: the
state stays where the sequence ended, the rows past it are zeros), training and eval compute the chip's integers,
the export writes the lengths as the GRUInt / LSTMInt lengths input (a graph input) and ``lnn.verify`` is
bit-exact tensor by tensor; what cannot be done is a clear error naming the module or node."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lnn_core as lnn
from lnn_core.errors import ExportError, LnnError, UnsupportedOpError
from lnn_core.exporter import to_ir
from lnn_core.quant.packed import pack_padded, pad_packed
from lnn_core.quant.rewrite import trace_lowered


def _helpers(spelling: str):
    import torch.nn.utils.rnn as rnn_utils
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    return {"full": (torch.nn.utils.rnn.pack_padded_sequence, torch.nn.utils.rnn.pad_packed_sequence),
            "nn": (nn.utils.rnn.pack_padded_sequence, nn.utils.rnn.pad_packed_sequence),
            "alias": (rnn_utils.pack_padded_sequence, rnn_utils.pad_packed_sequence),
            "from": (pack_padded_sequence, pad_packed_sequence)}[spelling]


class Tagger(nn.Module):
    """What a user writes: padded batch + lengths -> Linear -> pack -> RNN (initial state optional) -> pad ->
    Linear on every step."""

    def __init__(self, kind: str = "LSTM", *, state: bool = True, spelling: str = "full", batch_first: bool = True,
                 enforce_sorted: bool = False, total: bool = True, hidden: int = 8, **kwargs) -> None:
        super().__init__()
        self.kind, self.state, self.spelling, self.batch_first = kind, state, spelling, batch_first
        self.enforce_sorted, self.total = enforce_sorted, total
        self.fc = nn.Linear(5, 6)
        self.rnn = getattr(nn, kind)(6, hidden, batch_first=kwargs.pop("rnn_batch_first", True), **kwargs)
        self.head = nn.Linear(hidden * (2 if kwargs.get("bidirectional") else 1), 3)

    def forward(self, x, lengths, h0, c0):
        pack, pad = _helpers(self.spelling)
        feats = torch.tanh(self.fc(x))
        if not self.batch_first:
            feats = feats.transpose(0, 1)
        hx = ((h0, c0) if self.kind == "LSTM" else h0) if self.state else None
        packed = pack(feats, lengths.cpu(), batch_first=self.batch_first, enforce_sorted=self.enforce_sorted)
        y, _ = self.rnn(packed, hx)
        if self.total:
            y, _ = pad(y, batch_first=True, total_length=x.size(1))
        else:
            y = pad(y, batch_first=True)[0]
        return self.head(y)


def _nodes(m: Tagger) -> int:
    return m.rnn.num_layers * (2 if m.rnn.bidirectional else 1)


def _args(m: Tagger, lengths, t: int = 9, scale: float = 0.3):
    b = len(lengths)
    return (torch.randn(b, t, 5), torch.tensor(lengths), torch.randn(_nodes(m), b, m.rnn.hidden_size) * scale,
            torch.randn(_nodes(m), b, m.rnn.hidden_size))


def _qat(model: Tagger, host, steps: int = 3) -> nn.Module:
    m = lnn.init(model, host=host)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    m.train()
    for _ in range(steps):
        loss = m(*_args(model, [9, 3, 6, 1])).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


# -- tracing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["any_order", "sorted"])
@pytest.mark.parametrize("spelling", ["full", "nn", "alias", "from"])
def test_every_spelling_traces_to_one_node_each_and_computes_what_torch_does(spelling, enforce_sorted, host):
    """Full name, nn.utils.rnn, an alias module, a from-import: one pack_padded and one pad_packed
    node, and the traced float graph computes the float model's outputs."""
    model = Tagger(spelling=spelling, enforce_sorted=enforce_sorted).eval()
    root, graph, _ = trace_lowered(model, host.ops)
    targets = [n.target for n in graph.nodes if n.op == "call_function"]
    assert targets.count(pack_padded) == 1 and targets.count(pad_packed) == 1
    gm = torch.fx.GraphModule(root, graph)
    args = _args(model, [9, 6, 3, 1] if enforce_sorted else [3, 9, 1, 6])
    with torch.no_grad():
        torch.testing.assert_close(gm(*args), model(*args), rtol=0, atol=0)


# -- the QAT module ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("kwargs", [{}, dict(bidirectional=True), dict(num_layers=2, bidirectional=True)],
                         ids=["uni", "bi", "2-layer-bi"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_first"])
def test_each_sequence_computes_what_it_computes_alone(kind, kwargs, batch_first, host):
    """Eval and training: sequence b of a packed batch gives the integers (and h_n) of that sequence run alone,
    trimmed to its length; its rows past the length are zeros; the training gradient of the batch is the sum of
    the sequences' gradients (an idle step passes the state and its gradient on)."""
    m = _qat(Tagger(kind, batch_first=batch_first, **kwargs), host, steps=2)
    rnn = m.rnn
    assert rnn.packed == {"batch_first": batch_first, "enforce_sorted": False}
    lengths = torch.tensor([4, 9, 1, 6])
    x = torch.randn(4, 9, 6) * 0.7
    h0 = torch.randn(_nodes(m), 4, 8) * 0.3
    hx = (h0, torch.randn_like(h0)) if kind == "LSTM" else h0

    def run(xb, hb, lens=None):
        xb = xb if batch_first else xb.transpose(0, 1)
        out = rnn(xb, *(hb if isinstance(hb, tuple) else (hb,)), *(() if lens is None else (lens,)))
        y = out[0] if batch_first else out[0].transpose(0, 1)
        return y, out[1]

    def state(h, b):
        return tuple(s[:, b:b + 1] for s in h) if isinstance(h, tuple) else h[:, b:b + 1]

    with torch.no_grad():
        y, h_n = run(x, hx, lengths)
        for b, n in enumerate(lengths.tolist()):
            y_b, h_b = run(x[b:b + 1, :n], state(hx, b))
            torch.testing.assert_close(y[b:b + 1, :n], y_b, rtol=0, atol=0)
            assert not y[b, n:].any()
            for got, want in zip(h_n if isinstance(h_n, tuple) else (h_n,), h_b if isinstance(h_b, tuple) else (h_b,)):
                torch.testing.assert_close(got[:, b:b + 1], want, rtol=0, atol=0)
    rnn.train()
    weights = [p for p in rnn.parameters() if p.requires_grad]
    xg = x.clone().requires_grad_(True)
    y, _ = run(xg, hx, lengths)
    got = torch.autograd.grad((y * torch.linspace(-1, 1, y.shape[-1])).sum(), [xg, *weights])
    want = [torch.zeros_like(g) for g in got]
    for b, n in enumerate(lengths.tolist()):
        xb = x[b:b + 1, :n].clone().requires_grad_(True)
        y_b, _ = run(xb, state(hx, b))
        grads = torch.autograd.grad((y_b * torch.linspace(-1, 1, y_b.shape[-1])).sum(), [xb, *weights])
        want[0][b:b + 1, :n] += grads[0]
        for w_, g in zip(want[1:], grads[1:]):
            w_ += g
    for g, w_ in zip(got, want, strict=True):
        torch.testing.assert_close(g, w_, rtol=1e-5, atol=1e-6)
    rnn.eval()


# -- export and verify -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("spelling", ["full", "alias", "from"])
def test_acceptance_rnn_with_initial_state_and_packed_lengths_verifies_bit_exact(kind, spelling, host):
    """Issue 10's acceptance: an LSTM (and a GRU) with an initial state on packed variable lengths, after QAT:
    every tensor identical on the C simulator for short, medium and full lengths; the lengths are the node's
    lengths input, read from the graph's integer input."""
    m = _qat(Tagger(kind, spelling=spelling), host)
    for length in (1, 5, 9):
        args = _args(Tagger(kind), [length])
        report = lnn.verify(m, args, host=host)
        assert report.ok, report.table()
        assert all(t.mismatches == 0 for t in report.tensors) and len(report.tensors) >= 6
    graph = to_ir(m, args, host=host)
    (node,) = [n for n in graph.nodes if n.op_type == f"{kind}Int"]
    assert node.inputs[5] == graph.inputs[1] and graph.tensors[node.inputs[5]].dtype == "int64"
    assert graph.tensors[node.inputs[6]].exponent == m.rnn.state_exponent


@pytest.mark.parametrize("state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_a_stacked_bidirectional_rnn_on_packed_sequences_verifies_bit_exact(kind, state, host):
    """2 layers, both directions, time-first packing, with or without an initial state: every node reads the
    lengths (the reverse node starts at each sequence's last step) and its own piece of the state, every tensor
    identical on the simulator."""
    m = _qat(Tagger(kind, state=state, batch_first=False, num_layers=2, bidirectional=True, rnn_batch_first=False),
             host)
    args = _args(Tagger(kind, num_layers=2, bidirectional=True), [6])
    report = lnn.verify(m, args, host=host)
    assert report.ok, report.table()
    graph = to_ir(m, args, host=host)
    nodes = [n for n in graph.nodes if n.op_type == f"{kind}Int"]
    assert len(nodes) == 4 and all(n.inputs[5] == graph.inputs[1] for n in nodes)
    assert all(len(n.inputs) == (5 + 1 + (2 if kind == "LSTM" else 1) * state) for n in nodes)
    assert [n.attrs["batch_first"] for n in nodes] == [0] * 4
    assert any(n.op_type == "Transpose" for n in graph.nodes)  # time-first y, padded batch-first


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_qdq_writes_the_lengths_as_sequence_lens_and_onnxruntime_agrees_closely(kind, host):
    """QDQ: the standard ONNX LSTM / GRU with sequence_lens and the dequantized initial state; onnxruntime gives the
    eval outputs within a few output steps, and the rows past the length are the head's bias on zeros there too."""
    import onnxruntime as ort

    m = _qat(Tagger(kind), host)
    args = _args(Tagger(kind), [5])
    proto = lnn.export(m, args, dialect="qdq", host=host)
    (rnn,) = [n for n in proto.graph.node if n.op_type == kind]
    assert len(rnn.input) == (7 if kind == "LSTM" else 6) and all(rnn.input[4:])
    sess = ort.InferenceSession(proto.SerializeToString())
    (got,) = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})
    with torch.no_grad():
        want = m(*args).numpy()
    assert np.abs(got - want).max() <= 0.1
    np.testing.assert_array_equal(got[:, 5:], want[:, 5:])


# -- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lengths", "what", "actual"), [([10, 3], "lengths", [10, 3]),
                                                         ([3, 2, 1], "lengths shape", [3]),
                                                         ([0, 3], "lengths", [0, 3])])
def test_lengths_that_do_not_fit_the_batch_are_a_clear_error_naming_the_module(lengths, what, actual, host):
    m = lnn.init(Tagger("LSTM", state=False), host=host)
    x = torch.randn(2, 9, 5)
    with pytest.raises(LnnError) as exc:
        m(x, torch.tensor(lengths), None, None)
    e = exc.value
    assert e.module == "rnn" and e.option == what and e.actual == actual and e.hint
    assert "'rnn'" in str(e).splitlines()[0]


def test_unsorted_lengths_with_enforce_sorted_are_refused_as_torch_refuses_them(host):
    m = lnn.init(Tagger("GRU", state=False, enforce_sorted=True), host=host)
    with pytest.raises(LnnError) as exc:
        m(torch.randn(3, 9, 5), torch.tensor([3, 9, 1]), None, None)
    assert exc.value.option == "lengths order" and "enforce_sorted" in exc.value.hint


class PackedIntoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 4)
        self.rnn = nn.GRU(5, 4, batch_first=True)

    def forward(self, x, lengths):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        y, _ = self.rnn(packed)
        return self.fc(packed.data).sum() + torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=True)[0].sum()


def test_a_packed_sequence_read_by_anything_but_an_rnn_is_a_clear_error(host):
    with pytest.raises(UnsupportedOpError) as exc:
        lnn.init(PackedIntoLinear(), host=host)
    e = exc.value
    assert "pack_padded_sequence" in str(e).splitlines()[0] and e.op == "pack_padded_sequence"
    assert "lnn.disable_quant" in e.hint and e.node


def test_a_packed_sequence_into_an_rnn_kept_float_names_the_module(host):
    model = Tagger("GRU", state=False)
    lnn.disable_quant(model.rnn)
    with pytest.raises(UnsupportedOpError) as exc:
        lnn.init(model, host=host)
    assert "'rnn' (GRU, kept float)" in str(exc.value) and exc.value.reader.startswith("module 'rnn'")


def test_padding_value_other_than_zero_is_refused(host):
    class Pad(Tagger):
        def forward(self, x, lengths, h0, c0):
            packed = nn.utils.rnn.pack_padded_sequence(self.fc(x), lengths, batch_first=True, enforce_sorted=False)
            return nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True, padding_value=-1.0)[0]

    with pytest.raises(LnnError) as exc:
        lnn.init(Pad("GRU"), host=host)
    assert exc.value.actual == -1.0 and exc.value.limit == 0


def test_padding_to_the_longest_length_exports_only_when_it_is_the_padded_length(host):
    """Without total_length torch pads to max(lengths), which the exported graph cannot follow at run time: with
    example lengths shorter than T the export names the node and asks for total_length; with lengths = T it
    exports and verifies."""
    m = _qat(Tagger("GRU", state=False, total=False), host, steps=1)
    short = _args(Tagger("GRU"), [4])
    with pytest.raises(ExportError) as exc:
        to_ir(m, short, host=host)
    assert "total_length=9" in exc.value.hint and exc.value.node
    report = lnn.verify(m, _args(Tagger("GRU"), [9]), host=host)
    assert report.ok, report.table()


def test_the_thinker_package_refuses_lengths_given_at_run_time(host):
    """The vendor runtime leaves the rows past lengths[0] unwritten: the thinker package takes only a constant
    lengths = [T] and names the node."""
    from lnn_backend_csk60xx.check import check_graph

    m = _qat(Tagger("LSTM"), host, steps=1)
    graph = to_ir(m, _args(Tagger("LSTM"), [5]), host=host)
    report = check_graph(graph, package_format="thinker")
    assert not report.ok and "csk60xx.thinker.lstm_lengths" in str(report)


def test_the_simulator_refuses_lengths_beyond_the_sequence_naming_the_op(host):
    """The exported lengths are read at run time: a length longer than the padded input stops the run with the op
    named (the torch side refuses it before, see above)."""
    from lnn_backend_csk60xx.pipeline import pack_onnx
    from lnn_backend_csk60xx.simulator import Simulator
    from lnn_core.errors import SimulatorError

    m = _qat(Tagger("GRU", state=False), host, steps=1)
    x, lengths, h0, c0 = _args(Tagger("GRU"), [5])
    proto = lnn.export(m, (x, lengths, h0, c0), host=host)
    sim = Simulator(pack_onnx(proto))
    sim.run([x.numpy(), np.array([9], np.int64), np.zeros((1, 1, 8), np.float32), np.zeros((1, 1, 8), np.float32)])
    with pytest.raises(SimulatorError, match=r"lengths\[0\] = 10 is outside 0..9"):
        sim.run([x.numpy(), np.array([10], np.int64), np.zeros((1, 1, 8), np.float32),
                 np.zeros((1, 1, 8), np.float32)])


class ConstantLengths(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(5, 4, batch_first=True)

    def forward(self, x):
        packed = nn.utils.rnn.pack_padded_sequence(x, [3, 2], batch_first=True)
        return nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True)[0]


def test_lengths_that_are_a_constant_of_the_model_are_a_clear_trace_error(host):
    from lnn_core.errors import TraceError

    with pytest.raises(TraceError) as exc:
        lnn.init(ConstantLengths(), host=host)
    assert "a constant of the model" in str(exc.value).splitlines()[0] and "forward()" in exc.value.hint


_PACKED_MODULE = """
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.rnn = nn.LSTM(6, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x, lengths):
        p = pack_padded_sequence(torch.relu(self.fc(x)), lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, _ = self.rnn(p)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.size(1))
        return self.head(y)
"""


def test_the_command_line_exports_verifies_and_runs_a_packed_model_given_its_lengths(tmp_path, monkeypatch, host,
                                                                                    capsys):
    """Random integer example inputs are token ids (0 ..): a lengths input gets its value from --input-fill, the
    packed model then exports, verifies and runs with lengths read at run time; without it, the module's error
    names the option."""
    from lnn_core.cli import main

    (tmp_path / "packedmods.py").write_text(_PACKED_MODULE)
    monkeypatch.chdir(tmp_path)
    np.save("cal_x.npy", np.random.default_rng(0).standard_normal((8, 9, 5)).astype(np.float32))
    np.save("cal_len.npy", np.full((8,), 9, np.int64))
    shapes = ["packedmods:Net", "--input-shape", "1,9,5", "--input-shape", "1", "--input-dtype", "lengths=int64"]
    cal = ["--calibrate", "cal_x.npy", "--calibrate", "cal_len.npy"]
    assert main(["export", *shapes, *cal, "-o", "p.onnx"], host=host) == 2
    err = capsys.readouterr().err
    assert "the packed sequence's lengths does not fit" in err and "--input-fill NAME=T" in err
    fill = ["--input-fill", "lengths=9"]
    assert main(["verify", *shapes, *fill, *cal], host=host) == 0
    assert "bit-exact" in capsys.readouterr().out
    assert main(["export", *shapes, *fill, *cal, "-o", "p.onnx"], host=host) == 0
    assert main(["pack", "p.onnx", "-o", "p.bin"], host=host) == 0
    x = np.random.default_rng(1).standard_normal((1, 9, 5)).astype(np.float32)
    np.save("x.npy", x)
    outs = {}
    for n in (9, 4):
        np.save("len.npy", np.array([n], np.int64))
        assert main(["run", "p.bin", "x.npy", "len.npy", "-o", f"out{n}.npy"], host=host) == 0
        outs[n] = np.load(f"out{n}.npy")
    # the first 4 steps do not depend on the length; past it the LSTM's rows are zeros, so the head's output
    # there is its bias alone, the same at every step
    np.testing.assert_array_equal(outs[9][:, :4], outs[4][:, :4])
    assert (outs[4][:, 4:] == outs[4][:, 4:5]).all() and not (outs[9][:, 4:] == outs[9][:, 4:5]).all()


@pytest.mark.parametrize("items, count, expected, headline", [
    (["lengths=49"], 2, [None, 49.0], None),
    (["0=1.5", "1=3"], 2, [1.5, 3.0], None),
    (["7"], 1, [7.0], None),
    (["7"], 2, None, "a bare value is ambiguous for a model of 2 inputs"),
    (["lengths=many"], 2, None, "'many' is not a number"),
    (["steps=3"], 2, None, "the model has no input 'steps'"),
])
def test_input_fill_values_are_parsed_per_input_or_a_clear_error(items, count, expected, headline):
    from lnn_core._model_args import parse_fills, random_inputs
    from lnn_core.errors import ConfigError

    if expected is None:
        with pytest.raises(ConfigError) as info:
            parse_fills(items, count, ["x", "lengths"])
        assert headline in str(info.value).splitlines()[0] and info.value.option == "--input-fill"
        return
    fills = parse_fills(items, count, ["x", "lengths"])
    assert fills == expected
    made = random_inputs(["2,3"] * count, ["float32"] * (count - 1) + ["int64"], fills=fills)
    for t, f in zip(made, fills):
        if f is not None:
            assert (t == (int(f) if t.dtype == torch.int64 else f)).all()
