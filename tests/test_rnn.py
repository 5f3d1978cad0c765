"""nn.GRU and nn.LSTM end to end (spec/int8-seq-ops.md 2.1, 2.2, 6.2): the module becomes the QAT module with the
same parameters; training and eval compute the chip's integers with the fixed scales the export writes (eval equals
the backend's numpy reference of GRUInt bit for bit); the gradient is the float RNN's; the export writes GRUInt /
LSTMInt as the backend reads them and ``lnn.verify`` is bit-exact tensor by tensor on the acceptance models; what
the chip cannot run is refused at ``lnn.init`` by the backend's rules, all at once, naming the module.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lnn_core as lnn
from lnn_backend_csk60xx.check import check_graph
from lnn_backend_csk60xx.ops.gru import gru_int
from lnn_core.errors import LnnError, ModelFileError
from lnn_core.exporter import to_ir
from lnn_ops_builtin.rnn import QRNN


class CRNN(nn.Module):
    """Issue 10's acceptance CRNN: 49 x 40 features, 2 conv + BN + ReLU, a GRU of 64 units, a Linear to 12 on every
    step (``batch_first`` either way)."""

    def __init__(self, hidden: int = 64, channels: int = 16, batch_first: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.gru = nn.GRU(channels * 20, hidden, batch_first=batch_first)
        self.fc = nn.Linear(hidden, 12)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))  # [B, C, 25, 20]
        x = x.permute(0, 2, 1, 3).flatten(2)  # [B, 25, C * 20]
        if not self.batch_first:
            x = x.transpose(0, 1)
        y, _ = self.gru(x)
        if not self.batch_first:
            y = y.transpose(0, 1)
        return self.fc(y)


class Tagger(nn.Module):
    """Linear -> RNN -> Linear on every step; the RNN is built from ``kwargs``."""

    def __init__(self, kind: str = "GRU", d: int = 6, hidden: int = 8, out: int = 3, **kwargs) -> None:
        super().__init__()
        self.fc = nn.Linear(5, d)
        self.rnn = getattr(nn, kind)(d, hidden, **kwargs)
        dirs = 2 if kwargs.get("bidirectional") else 1
        self.head = nn.Linear(hidden * dirs, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(torch.tanh(self.fc(x)))
        return self.head(y)


def _qat(model: nn.Module, shape, host, steps: int = 3, lr: float = 0.05) -> nn.Module:
    m = lnn.init(model, host=host)
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    m.train()
    for _ in range(steps):
        loss = m(torch.randn(*shape)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def _rnn_input(m: nn.Module, x: torch.Tensor, name: str = "rnn") -> torch.Tensor:
    """The (quantized) tensor the RNN module reads in the eval forward of ``m`` on ``x``."""
    seen = {}
    handle = m.get_submodule(name).register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        m(x)
    handle.remove()
    return seen["x"]


# -- the QAT module --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_the_rnn_becomes_the_qat_module_with_the_float_state_dict_keys(kind, host):
    float_model = Tagger(kind, batch_first=True)
    m = lnn.init(float_model, host=host)
    assert isinstance(m.rnn, QRNN) and m.rnn.kind == kind and m.lnn.ops["rnn"] == f"builtin.{kind}"
    float_keys = {k for k in float_model.state_dict() if k.startswith("rnn.")}
    assert float_keys == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0"}
    assert float_keys <= set(m.state_dict())
    assert m.rnn.weight_ih_l0 is not float_model.rnn.weight_ih_l0  # lnn.init works on a copy
    torch.testing.assert_close(m.rnn.weight_ih_l0, float_model.rnn.weight_ih_l0)


@settings(max_examples=12, deadline=None)
@given(d=st.integers(1, 9), hid=st.integers(1, 12), t=st.integers(1, 9), batch=st.integers(1, 3),
       batch_first=st.booleans(), wscale=st.sampled_from([0.2, 1.0, 3.0]), seed=st.integers(0, 2**16))
def test_gru_eval_integers_equal_the_backend_reference(d, hid, t, batch, batch_first, wscale, seed, host):
    """Every sequence of a batch, in either layout, is the backend's numpy ``gru_int`` (the C kernel's reference)
    on the exported integers, bit for bit."""
    torch.manual_seed(seed)
    m = lnn.init(Tagger("GRU", d=d, hidden=hid, batch_first=batch_first), host=host)
    with torch.no_grad():
        for p in m.rnn.parameters():
            p.mul_(wscale)
    m.train()
    m(torch.randn(batch, t, 5) if batch_first else torch.randn(t, batch, 5))  # observers see data once
    m.eval()
    x = torch.randn(batch, t, 5) if batch_first else torch.randn(t, batch, 5)
    xq = _rnn_input(m, x)
    with torch.no_grad():
        y, h_n = m.rnn(xq)
    (p,) = m.rnn.integer_params()
    if p["n_i"] + p["n_iw"] < 11:  # outside the chip's contract: refused at export, not compared
        return
    xi = torch.floor(xq.double() * 2.0 ** p["n_i"] + 0.5).numpy().astype(np.int64)
    yi = (y.double() * 2.0**8).numpy()
    for b in range(batch):
        seq = xi[b] if batch_first else xi[:, b]
        want_y, want_h = gru_int(seq, p["w_ih"].numpy(), p["w_hh"].numpy(), p["b_ih"].numpy(), p["b_hh"].numpy(),
                                 n_i=p["n_i"], n_iw=p["n_iw"], n_hw=p["n_hw"], n_o=p["n_o"])
        np.testing.assert_array_equal(yi[b] if batch_first else yi[:, b], want_y)
        np.testing.assert_array_equal(h_n[0, b].double().numpy() * 2.0**8, want_h)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_training_computes_the_eval_integers(kind, host):
    """The fixed exponents make training's forward the chip's integers too: the same outputs in train and eval."""
    m = lnn.init(Tagger(kind, batch_first=True), host=host)
    m.train()
    m(torch.randn(4, 7, 5))
    x = _rnn_input(m.eval(), torch.randn(3, 7, 5))
    with torch.no_grad():
        y_eval, _ = m.rnn(x)
        m.train()
        y_train, _ = m.rnn(x)
    torch.testing.assert_close(y_train, y_eval, rtol=0, atol=0)
    n = m.rnn.state_exponent
    assert torch.equal(torch.floor(y_train * 2.0**n), y_train * 2.0**n)


@pytest.mark.parametrize("kind,kwargs", [("GRU", {}), ("LSTM", {}), ("LSTM", {"num_layers": 2}),
                                         ("LSTM", {"bidirectional": True}), ("GRU", {"num_layers": 2})])
def test_the_gradient_is_the_float_rnns_at_the_quantized_point(kind, kwargs, host):
    """Back-propagation through time in one autograd node: every parameter's gradient points where the float RNN's
    does (same weights, same input), and the input gets one."""
    torch.manual_seed(3)
    float_rnn = getattr(nn, kind)(6, 10, batch_first=True, **kwargs)
    m = lnn.init(Tagger(kind, d=6, hidden=10, batch_first=True, **kwargs), host=host)
    m.rnn.load_state_dict(float_rnn.state_dict(), strict=False)
    m.train()
    x = _rnn_input(m, torch.randn(4, 12, 5)).detach().requires_grad_(True)
    target = torch.randn(4, 12, 10 * (2 if kwargs.get("bidirectional") else 1))
    m.train()
    y, _ = m.rnn(x)
    F.mse_loss(y, target).backward()
    x2 = x.detach().clone().requires_grad_(True)
    y2, _ = float_rnn(x2)
    F.mse_loss(y2, target).backward()
    for name, p in float_rnn.named_parameters():
        g_q, g_f = getattr(m.rnn, name).grad.flatten(), p.grad.flatten()
        assert F.cosine_similarity(g_q, g_f, dim=0) > 0.9, name
    assert F.cosine_similarity(x.grad.flatten(), x2.grad.flatten(), dim=0) > 0.9


# -- export and verify -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_first"])
def test_acceptance_crnn_verifies_bit_exact(batch_first, host):
    """Issue 10's CRNN (49 x 40, 2 conv + BN + ReLU, GRU 64, Linear 12) after QAT: every tensor identical on the C
    simulator, and the GRU is one GRUInt node with the chip's exponents."""
    m = _qat(CRNN(batch_first=batch_first), (4, 1, 49, 40), host, steps=2)
    x = torch.randn(1, 1, 49, 40)
    report = lnn.verify(m, x, host=host)
    assert report.ok, report.table()
    assert all(t.mismatches == 0 for t in report.tensors) and len(report.tensors) >= 6
    graph = to_ir(m, x, host=host)
    (node,) = [n for n in graph.nodes if n.op_type == "GRUInt"]
    assert node.attrs["batch_first"] == int(batch_first) and node.attrs["go_forward"] == 1
    y, h_n = (graph.tensors[t] for t in node.outputs)
    assert (y.exponent, h_n.exponent, y.dtype) == (8, 8, "int8")
    assert y.shape == ((1, 25, 64) if batch_first else (25, 1, 64))
    n_i, n_iw, n_hw = (graph.tensors[t].exponent for t in node.inputs[:3])
    assert n_i + n_iw >= 11 and 8 + n_hw >= 11
    assert graph.tensors[node.inputs[3]].exponent == n_i + n_iw and graph.tensors[node.inputs[4]].exponent == 8 + n_hw


def test_acceptance_two_layer_bidirectional_lstm_tagger_verifies_bit_exact(host):
    """Issue 10's tagger: a 2-layer bidirectional LSTM (batch_first) between two Linears, after QAT: four LSTMInt
    nodes (go_forward 1 and 0 per layer), an iqCat per layer, every tensor identical on the C simulator."""
    m = _qat(Tagger("LSTM", d=12, hidden=16, out=5, batch_first=True, bidirectional=True, num_layers=2),
             (4, 11, 5), host)
    x = torch.randn(1, 11, 5)
    report = lnn.verify(m, x, host=host)
    assert report.ok, report.table()
    graph = to_ir(m, x, host=host)
    nodes = [n for n in graph.nodes if n.op_type == "LSTMInt"]
    assert [n.attrs["go_forward"] for n in nodes] == [1, 0, 1, 0]
    assert [n.attrs["input_size"] for n in nodes] == [12, 12, 32, 32]
    assert sum(n.op_type == "iqCat" and n.attrs["dim"] == 2 for n in graph.nodes) == 2
    for n in nodes:
        y, h_n, c_n = (graph.tensors[t] for t in n.outputs)
        assert (y.exponent, h_n.exponent, c_n.exponent, c_n.dtype) == (7, 7, 7, "int16")
    # the model drops the final state: the joins of h_n / c_n (an int16 iqCat the chip cannot run) are not
    # written, and the graph passes every CSK60xx rule, as `lnn pack` would judge it
    assert not [n.name for n in graph.nodes if n.op_type == "iqCat" and n.attrs["dim"] == 0]
    report = check_graph(graph)
    assert report.ok, report


class StateLSTM(nn.Module):
    """An LSTM with an initial state (graph inputs ``h0``, ``c0``) between two Linears."""

    def __init__(self, kind: str = "LSTM") -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.rnn = getattr(nn, kind)(6, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x, h0, c0):
        y, _ = self.rnn(self.fc(x), (h0, c0) if isinstance(self.rnn, nn.LSTM) else h0 + 0 * c0)
        return self.head(y)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_an_rnn_with_an_initial_state_verifies_bit_exact(kind, host):
    """h0 (and c0) are graph inputs: quantized by their Quant, requantized to the state's formats (int8 at n_o,
    int16 Q7), written as the node's lengths = [T], h0, c0 inputs; every tensor identical on the simulator."""
    lstm = kind == "LSTM"
    m = lnn.init(StateLSTM(kind), host=host)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    m.train()
    for _ in range(3):
        c0 = torch.randn(1, 4, 8) if lstm else torch.zeros(1, 4, 8)
        args = (torch.randn(4, 9, 5), torch.randn(1, 4, 8) * 0.3, c0)
        loss = m(*args).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    args = (torch.randn(1, 9, 5), torch.randn(1, 1, 8) * 0.3, torch.randn(1, 1, 8) if lstm else torch.zeros(1, 1, 8))
    report = lnn.verify(m, args, host=host)
    assert report.ok, report.table()
    graph = to_ir(m, args, host=host)
    (node,) = [n for n in graph.nodes if n.op_type == f"{kind}Int"]
    assert len(node.inputs) == (8 if lstm else 7)
    assert graph.initializers[node.inputs[5]].tolist() == [9]
    assert graph.tensors[node.inputs[6]].exponent == m.rnn.state_exponent
    if lstm:
        assert (graph.tensors[node.inputs[7]].exponent, graph.tensors[node.inputs[7]].dtype) == (7, "int16")


class StackState(nn.Module):
    """A stacked and/or bidirectional RNN with the whole initial state ``[layers * dirs, B, H]`` as graph inputs."""

    def __init__(self, kind: str, **kwargs) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.rnn = getattr(nn, kind)(6, 8, batch_first=True, **kwargs)
        self.head = nn.Linear(8 * (2 if kwargs.get("bidirectional") else 1), 3)

    def forward(self, x, h0, c0):
        y, _ = self.rnn(self.fc(x), (h0, c0) if isinstance(self.rnn, nn.LSTM) else h0 + 0 * c0)
        return self.head(y)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("kwargs", [dict(num_layers=2, bidirectional=True), dict(num_layers=2),
                                    dict(bidirectional=True)], ids=["2-layer-bi", "2-layer", "bi"])
def test_a_stacked_or_bidirectional_rnn_with_an_initial_state_verifies_bit_exact(kind, kwargs, host):
    """h0 ``[L * dirs, B, H]`` (and c0) are requantized once and cut per node (a Slice on axis 0): node k reads
    ``h0[k]``, as torch does; every tensor identical on the simulator after QAT."""
    lstm = kind == "LSTM"
    nodes = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    m = lnn.init(StackState(kind, **kwargs), host=host)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    m.train()
    for _ in range(2):
        args = (torch.randn(3, 7, 5), torch.randn(nodes, 3, 8) * 0.3, torch.randn(nodes, 3, 8))
        loss = m(*args).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    args = (torch.randn(1, 7, 5), torch.randn(nodes, 1, 8) * 0.4, torch.randn(nodes, 1, 8))
    report = lnn.verify(m, args, host=host)
    assert report.ok, report.table()
    graph = to_ir(m, args, host=host)
    rnn_nodes = [n for n in graph.nodes if n.op_type == f"{kind}Int"]
    assert len(rnn_nodes) == nodes
    for k, node in enumerate(rnn_nodes):
        assert len(node.inputs) == (8 if lstm else 7)
        h0 = graph.tensors[node.inputs[6]]
        assert (h0.shape, h0.exponent) == ((1, 1, 8), m.rnn.state_exponent)
        (cut,) = [n for n in graph.nodes if n.outputs == [node.inputs[6]]]
        assert cut.op_type == "Slice" and graph.initializers[cut.inputs[1]].tolist() == [k]
    # the state matters: another h0 changes the output
    other = (args[0], -args[1], args[2])
    with torch.no_grad():
        assert not torch.equal(m(*args), m(*other))


def test_the_kws_demo_crnn_quantizes_and_verifies(host):
    from lnn_backend_csk60xx.kws.models import build_crnn

    m = _qat(build_crnn(), (4, 1, 49, 10), host, steps=2)
    assert isinstance(m.gru, QRNN)
    report = lnn.verify(m, torch.randn(1, 1, 49, 10), host=host)
    assert report.ok, report.table()


# -- rules and bad input ---------------------------------------------------------------------------------------


class WithState(nn.Module):
    def __init__(self, kind: str = "GRU", **kwargs) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.rnn = getattr(nn, kind)(6, 8, batch_first=True, **kwargs)

    def forward(self, x, h):
        y, _ = self.rnn(self.fc(x), h)
        return y


def test_what_the_vendor_runtime_runs_differently_is_a_warning_naming_the_node(host):
    """A bidirectional GRU and a GRU with an initial state run on lnn's simulator as in PyTorch (the exporter writes
    the reverse node and h0); ``lnn.check`` says what the vendor runtime would do instead (the reverse node runs
    forward, h0 is not read), as warnings."""
    report = lnn.check(Tagger("GRU", batch_first=True, bidirectional=True), (torch.randn(1, 7, 5),), host=host)
    found = {(v.op_name, v.rule_id, v.severity) for v in report.violations}
    assert found == {("rnn", "csk60xx.gru.direction", "warning"),  # the module at lnn.init, the node at pack
                     ("rnn.l0_reverse", "csk60xx.gru.direction", "warning")}, report.table()
    report = lnn.check(WithState("GRU"), (torch.randn(1, 7, 5), torch.zeros(1, 1, 8)), host=host)
    found = {(v.op_name, v.rule_id, v.severity) for v in report.violations}
    assert found == {("rnn", "csk60xx.gru.vendor_state", "warning")}, report.table()
    m = _qat(Tagger("GRU", batch_first=True, bidirectional=True), (4, 7, 5), host)
    assert lnn.verify(m, torch.randn(1, 7, 5), host=host).ok


@pytest.mark.parametrize("layers", [1, 2])
def test_a_bidirectional_gru_verifies_with_the_vendor_warning(host, layers):
    """The reverse GRUInt node runs backwards in lnn's simulator, bit-exact with eval; lnn.init warns that the
    vendor runtime would run it forward."""
    m = _qat(Tagger("GRU", bidirectional=True, num_layers=layers, batch_first=True), (4, 12, 5), host)
    warned = [v for v in m.lnn.report.violations if v.rule_id == "csk60xx.gru.direction"]
    assert warned and warned[0].severity == "warning" and warned[0].op_name == "rnn"
    report = lnn.verify(m, torch.randn(1, 12, 5), host=host)
    assert report.ok, report.table()


@pytest.mark.parametrize("kind,kwargs,option,actual", [
    ("LSTM", {"proj_size": 4}, "proj_size", 4),
    ("LSTM", {"num_layers": 2, "dropout": 0.3}, "dropout", 0.3),
    ("GRU", {"num_layers": 3, "dropout": 0.1}, "dropout", 0.1),
])
def test_options_the_qat_module_does_not_compute_are_clear_errors(kind, kwargs, option, actual, host):
    with pytest.raises(LnnError) as exc:
        lnn.init(Tagger(kind, batch_first=True, **kwargs), host=host)
    e = exc.value
    assert (e.module, e.option, e.actual) == ("rnn", option, actual)
    assert str(e).splitlines()[0] == f"{kind} 'rnn': {option}={actual} is not supported"
    assert e.hint


def test_dropout_set_to_zero_before_init_is_accepted(host):
    model = Tagger("LSTM", batch_first=True, num_layers=2, dropout=0.3)
    model.rnn.dropout = 0.0
    m = lnn.init(model, host=host)
    assert isinstance(m.rnn, QRNN) and m.rnn.num_layers == 2


def test_a_gru_run_with_batch_2_names_the_node_and_the_rule(host):
    """Training takes any batch; the chip runs one sequence: ``lnn.check`` reports it, ``lnn.verify`` refuses it."""
    x = torch.randn(2, 7, 5)
    report = lnn.check(Tagger("GRU", batch_first=True), (x,), host=host)
    assert [(v.op_name, v.rule_id, v.actual) for v in report.violations] == [("rnn", "csk60xx.gru.batch", "batch 2")]
    m = _qat(Tagger("GRU", batch_first=True), (4, 7, 5), host)
    with pytest.raises(ModelFileError) as exc:
        lnn.verify(m, x, host=host)
    assert exc.value.node == "rnn" and "[1,T,D]" in str(exc.value)


def test_a_gru_outside_the_right_shift_contract_names_the_node_at_export(host):
    """Large input weights (n_iw 3): n_i + n_iw < 11 is reported by ``lnn.check`` with the rule, and the simulator's
    loader refuses the package naming the node."""
    m = lnn.init(Tagger("GRU", batch_first=True), host=host)
    with torch.no_grad():
        m.rnn.weight_ih_l0.mul_(40.0)
    m.train()
    m(torch.randn(4, 7, 5))
    m.eval()
    (p,) = m.rnn.integer_params()
    assert p["n_i"] + p["n_iw"] < 11
    report = lnn.check(m, (torch.randn(1, 7, 5),), host=host)
    v = next(v for v in report.violations if v.rule_id == "csk60xx.gru.in_alignment")
    assert v.op_name == "rnn" and v.actual == f"n_i + n_iw = {p['n_i']} + {p['n_iw']} = {p['n_i'] + p['n_iw']}"
    with pytest.raises(ModelFileError) as exc:
        lnn.verify(m, torch.randn(1, 7, 5), host=host)
    assert exc.value.node == "rnn"


class CellLoop(nn.Module):
    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.cell = cell(6, 8)

    def forward(self, x):
        h = None
        for t in range(4):
            h = self.cell(self.fc(x[:, t]), h)
        return h[0] if isinstance(h, tuple) else h


@pytest.mark.parametrize("cell", [nn.GRUCell, nn.LSTMCell])
def test_a_cell_in_a_python_loop_is_a_clear_error_naming_the_module(cell, host):
    with pytest.raises(LnnError) as exc:
        lnn.init(CellLoop(cell), host=host)
    e = exc.value
    assert e.module == "cell" and str(e).splitlines()[0].startswith(f"{cell.__name__} 'cell':")
    assert f"nn.{cell.__name__[:-4]}" in e.hint


# -- streaming in eval mode ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,kwargs", [("GRU", {}), ("LSTM", {"num_layers": 2})])
def test_streaming_in_chunks_with_the_state_carried_gives_the_whole_sequences_integers(kind, kwargs, host):
    """The eval-mode QAT module takes the state and returns it: a 50-frame sequence fed 1, 7 or 25 frames at a
    time, each call starting from the previous call's state, gives exactly the integers of one call on the whole
    sequence (outputs and final state)."""
    m = _qat(Tagger(kind, batch_first=True, **kwargs), (2, 20, 5), host, steps=1)
    x = _rnn_input(m, torch.randn(2, 50, 5))
    with torch.no_grad():
        y_all, state_all = m.rnn(x)
        for chunk in (1, 7, 25):
            state, ys = None, []
            for t in range(0, 50, chunk):
                y, state = m.rnn(x[:, t:t + chunk], state)
                ys.append(y)
            torch.testing.assert_close(torch.cat(ys, 1), y_all, rtol=0, atol=0)
            flat = (lambda s: list(s) if isinstance(s, tuple) else [s])
            for got, want in zip(flat(state), flat(state_all), strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
    n = m.rnn.state_exponent
    assert torch.equal(torch.floor(y_all * 2.0**n), y_all * 2.0**n)


# -- QDQ -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,kwargs", [("GRU", {"batch_first": True}), ("GRU", {"batch_first": False}),
                                         ("LSTM", {"batch_first": True, "bidirectional": True, "num_layers": 2})])
def test_qdq_writes_the_standard_onnx_rnn_and_onnxruntime_agrees_with_eval_closely(kind, kwargs, host):
    """The QDQ form holds ONNX GRU / LSTM nodes on dequantized weights; onnxruntime's outputs are within a few steps
    of eval's integers (the chip's gates are fixed-point functions, not exact sigmoid / tanh)."""
    import onnxruntime as ort

    m = _qat(Tagger(kind, **kwargs), (4, 9, 5) if kwargs["batch_first"] else (9, 4, 5), host)
    x = torch.randn(1, 9, 5) if kwargs["batch_first"] else torch.randn(9, 1, 5)
    proto = lnn.export(m, x, dialect="qdq", host=host)
    assert {kind} <= {n.op_type for n in proto.graph.node}
    sess = ort.InferenceSession(proto.SerializeToString())
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = m(x).numpy()
    n_out = int(np.round(-np.log2(np.min(np.abs(np.diff(np.unique(want.ravel()))))))) if want.size > 1 else 0
    assert np.abs(got - want).max() <= 8 * 2.0**-n_out + 0.05


# -- the backward, exactly -------------------------------------------------------------------------------------


def _ste(value: torch.Tensor, pre: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """``value`` forward; ``slope * d(pre)`` backward."""
    return value + (pre - pre.detach()) * slope


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("reverse", [False, True])
def test_the_bptt_node_is_the_gradient_of_the_float_recurrence_at_the_chips_values(kind, reverse):
    """One autograd node per layer and direction: its gradients equal autograd's through the float recurrence whose
    every gate, state and rounded product takes the chip's value (straight-through: the float function's slope at
    that value, zero where the state saturates)."""
    from lnn_ops_builtin.rnn import GATE_Q, _align, _exact_matmul, _RNNFunction, _steps, _to_int

    torch.manual_seed(4)
    g_n = 3 if kind == "GRU" else 4
    b, t_len, d, hid = 3, 6, 5, 4
    n_i, n_iw, n_hw, n_o = 5, 6, 6, 8 if kind == "GRU" else 7
    grid = lambda v, n: torch.round(v * 2.0**n) * 2.0**-n
    x = grid(torch.randn(b, t_len, d), n_i).double().requires_grad_(True)
    w_ih = grid(torch.randn(g_n * hid, d), n_iw).double().requires_grad_(True)
    w_hh = grid(torch.randn(g_n * hid, hid), n_hw).double().requires_grad_(True)
    b_ih = grid(torch.randn(g_n * hid), n_i + n_iw).double().requires_grad_(True)
    b_hh = grid(torch.randn(g_n * hid), n_o + n_hw).double().requires_grad_(True)
    h0 = grid(torch.randn(b, hid) * 0.3, n_o).double().requires_grad_(True)
    c0 = grid(torch.randn(b, hid), 7).double().requires_grad_(True) if kind == "LSTM" else None
    exps = (n_i, n_iw, n_hw, n_o)
    y, h_n, c_n = _RNNFunction.apply(x, w_ih, w_hh, b_ih, b_hh, h0, c0, kind, exps, reverse)
    dy, dh = torch.randn_like(y), torch.randn_like(h_n)
    loss = (y * dy).sum() + (h_n * dh).sum() + ((c_n * torch.ones_like(c_n)).sum() if kind == "LSTM" else 0)
    leaves = [x, w_ih, w_hh, b_ih, b_hh, h0] + ([c0] if kind == "LSTM" else [])
    got = torch.autograd.grad(loss, leaves)

    gi_int = _align(_exact_matmul(_to_int(x, n_i), _to_int(w_ih, n_iw).t()), _to_int(b_ih, n_i + n_iw), n_i + n_iw - 11)
    _, _, _, sv = _steps(kind, gi_int, _to_int(w_hh, n_hw), _to_int(b_hh, n_o + n_hw), _to_int(h0, n_o),
                         _to_int(c0, 7) if c0 is not None else None, s_h=n_o + n_hw - GATE_Q, n_o=n_o,
                         reverse=reverse, keep=True)
    q7 = 2.0**-7
    h, c = h0, c0
    ys: list = [None] * t_len
    for t in (range(t_len - 1, -1, -1) if reverse else range(t_len)):
        gi = x[:, t] @ w_ih.t() + b_ih
        gh = h @ w_hh.t() + b_hh
        if kind == "GRU":
            r_q, z_q, n_q = (sv[k][:, t].double() * q7 for k in ("r", "z", "n"))
            r = _ste(r_q, gi[:, :hid] + gh[:, :hid], r_q * (1 - r_q))
            z = _ste(z_q, gi[:, hid:2 * hid] + gh[:, hid:2 * hid], z_q * (1 - z_q))
            ghn = _ste(sv["ghn"][:, t].double() * 2.0**-GATE_Q, gh[:, 2 * hid:], torch.ones_like(z_q))
            n = _ste(n_q, gi[:, 2 * hid:] + r * ghn, 1 - n_q * n_q)
            h_f = (1 - z) * n + z * h
        else:
            i_q, f_q, g_q, o_q, tau_q = (sv[k][:, t].double() * q7 for k in ("i", "f", "g", "o", "tau"))
            a = gi + gh
            i = _ste(i_q, a[:, :hid], i_q * (1 - i_q))
            f = _ste(f_q, a[:, hid:2 * hid], f_q * (1 - f_q))
            g = _ste(g_q, a[:, 2 * hid:3 * hid], 1 - g_q * g_q)
            o = _ste(o_q, a[:, 3 * hid:], o_q * (1 - o_q))
            c_f = f * c + i * g
            tau = _ste(tau_q, c_f, 1 - tau_q * tau_q)
            c = _ste(torch.floor(c_f.detach() * 128 + 0.5).clamp(-32768, 32767) * q7, c_f, torch.ones_like(c_f))
            h_f = o * tau
        h_q = torch.floor(h_f.detach() * 2.0**n_o + 0.5).clamp(-128, 127) * 2.0**-n_o
        if kind == "GRU":  # the chip rounds h to Q7 before the update: the value is the kernel's own
            h_q = y[:, t].detach()
        h = _ste(h_q, h_f, sv["ok"][:, t].double())
        ys[t] = h
    y_ref = torch.stack(ys, 1)
    torch.testing.assert_close(y_ref.detach(), y.detach(), rtol=0, atol=0)
    loss_ref = (y_ref * dy).sum() + (h * dh).sum() + (c.sum() if kind == "LSTM" else 0)
    want = torch.autograd.grad(loss_ref, leaves)
    for a_, b_ in zip(got, want, strict=True):
        torch.testing.assert_close(a_, b_, rtol=1e-9, atol=1e-9)
