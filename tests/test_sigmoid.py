"""Sigmoid and tanh end to end (spec/int8-seq-ops.md 2.6, 2.7): every spelling becomes the QAT module, training and
eval compute the chip's integers, the export writes Requant -> iqSigmoid/iqTanh as linger 1.1.1 does (two Requants
when the int8 exponent is below 3), the C simulator agrees tensor by tensor (``lnn.verify``), and the QDQ form
(a 65536-entry Gather) agrees with eval exactly.

The integer chain is checked against the C kernels on every int8 input at every int8 exponent 0..23, through the
IR the exporter writes; the kernels themselves are checked on every int16 input in the backend's test_activation.py.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lnn_core as lnn
from lnn_backend_csk60xx.pipeline import pack_graph
from lnn_backend_csk60xx.simulator import Simulator
from lnn_core.errors import HardwareLimitError, LnnError
from lnn_core.graph import Graph, Node
from lnn_ops_builtin.pwl import activation_int16, int8_table, requant_plan
from lnn_ops_builtin.sigmoid import QActivation

SPELLINGS = {
    "torch.sigmoid": ("sigmoid", lambda m, y: torch.sigmoid(y)),
    "F.sigmoid": ("sigmoid", lambda m, y: F.sigmoid(y)),
    "nn.Sigmoid": ("sigmoid", lambda m, y: m.act(y)),
    "method-sigmoid": ("sigmoid", lambda m, y: y.sigmoid()),
    "torch.special.expit": ("sigmoid", lambda m, y: torch.special.expit(y)),
    "method-sigmoid_": ("sigmoid", lambda m, y: y.sigmoid_()),
    "torch.tanh": ("tanh", lambda m, y: torch.tanh(y)),
    "F.tanh": ("tanh", lambda m, y: F.tanh(y)),
    "nn.Tanh": ("tanh", lambda m, y: m.act(y)),
    "method-tanh": ("tanh", lambda m, y: y.tanh()),
    "torch.tanh_": ("tanh", lambda m, y: torch.tanh_(y)),
}


class One(nn.Module):
    """conv -> the spelling -> conv; ``scale`` stretches the conv's output (low exponents: the two-Requant path)."""

    def __init__(self, spelling: str, scale: float = 1.0) -> None:
        super().__init__()
        self.kind, self.call = SPELLINGS[spelling]
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.Sigmoid() if self.kind == "sigmoid" else nn.Tanh()
        self.b = nn.Conv2d(4, 2, 1)
        self.scale = scale

    def forward(self, x):
        y = self.a(x)
        return self.b(self.call(self, y * self.scale if self.scale != 1.0 else y))


def _qat(model: nn.Module, host, steps: int = 3, shape=(2, 3, 6, 6), scale: float = 1.0) -> nn.Module:
    m = lnn.init(model, host=host)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    for _ in range(steps):
        loss = m(torch.randn(shape) * scale).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def _act(m: nn.Module) -> QActivation:
    (act,) = [mod for mod in m.modules() if isinstance(mod, QActivation)]
    return act


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_every_spelling_is_the_qat_module_and_exact_on_the_simulator(spelling, host):
    m = _qat(One(spelling), host)
    act = _act(m)
    assert act.kind == SPELLINGS[spelling][0] and act.op_id == f"builtin.{act.kind.capitalize()}"
    assert not m.lnn.unsupported
    assert act.out_q.eval_exponent() == 7
    report = lnn.verify(m, torch.randn(2, 3, 6, 6), host=host)
    assert report.ok, report


def test_training_computes_the_chip_integers_and_the_float_gradient(host):
    """Training and eval forwards give the same integers (the 256-entry table of the chain); the gradient is the
    float sigmoid's at the float input (straight-through)."""
    m = _qat(One("torch.sigmoid"), host)
    act = _act(m)
    n = act.in_exponent(0)
    q8 = torch.arange(-128, 128, dtype=torch.float32)
    x = (q8 / 2.0**n).requires_grad_(True)
    m.train()
    act.out_q.observe = False  # a frozen observer: training reads the eval exponent
    y_train = act(x)
    y_train.sum().backward()
    m.eval()
    y_eval = act(x.detach())
    expected = torch.from_numpy(int8_table("sigmoid", n).astype(np.float32)) / 128
    assert torch.equal(y_train.detach(), expected) and torch.equal(y_eval, expected)
    s = torch.sigmoid(x.detach())
    torch.testing.assert_close(x.grad, s * (1 - s))


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_the_chain_equals_the_c_kernels_on_every_int8_input_at_every_exponent(kind):
    """int8 x at n -> the Requant(s) of requant_plan(n) -> iqSigmoid/iqTanh, packed and simulated, for n = 0..23; the
    table equals linger's x256 form (int16 at n + 8) wherever the kernel accepts that (n >= 3)."""
    x = np.arange(-128, 128, dtype=np.int8)
    for n8 in range(24):
        g = Graph(name="chain")
        g.add_tensor("x", "int8", x.shape, n8)
        g.inputs = ["x"]
        src, n = "x", n8
        for k, (bits, n_out) in enumerate(requant_plan(n8)):
            assert n_out >= n
            g.add_node(Node(f"rq{k}", "Requant", [src], [f"r{k}"], {"data_bits": 8, "o_bits": bits}, "thinker"))
            g.add_tensor(f"r{k}", f"int{bits}", None, n_out)
            src, n = f"r{k}", n_out
        # int16 at exactly Q11 wherever an exact Requant reaches it (no kernel shift, workspace or in-place rescale)
        assert n == (11 if n8 <= 11 else n8 + 8) and g.tensors[src].dtype == "int16"
        g.add_node(Node("act", "iqSigmoid" if kind == "sigmoid" else "iqTanh", [src], ["y"], {}, "thinker"))
        g.add_tensor("y", "int8", None, 7)
        g.outputs = ["y"]
        (y,) = Simulator(pack_graph(g).blob).run([x])
        np.testing.assert_array_equal(y, int8_table(kind, n8), err_msg=f"{kind} at int8 exponent {n8}")
        if n8 >= 3:
            x256 = activation_int16(kind, x.astype(np.int64) * 256, n8 + 8)
            np.testing.assert_array_equal(y, x256, err_msg=f"{kind} x256 at int8 exponent {n8}")


def test_a_low_input_exponent_is_requantized_twice_not_refused(host):
    """An int8 exponent below 3 (|x| up to 64): Requant int8 -> int8 at 3 (saturating at +-16), then x256 to 11."""
    m = _qat(One("torch.tanh", scale=40.0), host, scale=1.0)
    act = _act(m)
    assert act.in_exponent(0) < 3
    proto = lnn.export(m, torch.randn(1, 3, 6, 6), host=host)
    chain = [(n.op_type, next((a.i for a in n.attribute if a.name == "o_bits"), None)) for n in proto.graph.node
             if n.op_type in ("Requant", "iqTanh")]
    assert chain == [("Requant", 8), ("Requant", 16), ("iqTanh", None)]
    tanh = next(n for n in proto.graph.node if n.op_type == "iqTanh")
    attrs = {a.name: a.f for a in tanh.attribute if a.type == a.FLOAT}
    assert attrs == {"scale_x": 2.0**11, "scale_o": 128.0}
    x = torch.randn(2, 3, 6, 6)
    report = lnn.verify(m, x, host=host)
    assert report.ok, report


class Gated(nn.Module):
    """A gated conv net: ``tanh(a(x)) * sigmoid(b(x))`` (the WaveNet / GLU-style unit), then a 1x1 conv and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.b = nn.Conv2d(4, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 1)
        self.d = nn.Conv2d(8, 8, 3, padding=1)
        self.e = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        h = torch.tanh(self.a(x)) * torch.sigmoid(self.b(x))
        h = self.c(h)
        h = torch.tanh(self.d(h)) * torch.sigmoid(self.e(h)) + h
        return self.head(torch.flatten(h, 1))


def test_gated_conv_net_is_bit_exact_tensor_by_tensor_and_in_qdq(host, capsys):
    m = _qat(Gated(), host, steps=5, shape=(4, 4, 6, 6))
    x = torch.randn(3, 4, 6, 6)
    report = lnn.verify(m, x, host=host)
    assert report.ok, report
    compared = {t.name for t in report.tensors}
    assert sum(name.startswith(("q_tanh", "q_sigmoid")) for name in compared) == 4, compared
    # QDQ: Requant is a DQ/Q pair, iqSigmoid/iqTanh a Gather from the 65536-entry table: exact
    proto = lnn.export(m, x, dialect="qdq", host=host)
    assert sum(n.op_type == "Gather" for n in proto.graph.node) == 4
    sess = ort.InferenceSession(proto.SerializeToString())
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = m(x).numpy()
    agree = float(np.mean(y == expected))
    with capsys.disabled():
        print(f"\nQDQ agreement with eval, gated net with sigmoid/tanh: {agree:.2%} of outputs equal")
    np.testing.assert_array_equal(y, expected)


def test_a_16_bit_input_is_a_clear_error(host):
    """lnn.init names the module (rule csk60xx.activation.input_bits); a model prepared without the rules check
    stops at its first forward, naming the op."""
    cfg = lnn.QuantConfig(by_path={"a": lnn.LayerConfig(act_bits=16)})
    with pytest.raises(HardwareLimitError) as info:
        lnn.init(One("torch.sigmoid"), host=host, config=cfg)
    assert (info.value.rule_id, info.value.op_name, info.value.actual) == (
        "csk60xx.activation.input_bits", "q_sigmoid", "16-bit input")
    from lnn_core.quant.rewrite import prepare

    m = prepare(One("torch.sigmoid"), stage="quant", host=host, target="csk60xx", config=cfg, check_rules=False)
    with pytest.raises(LnnError, match="the input has 16 bits") as err:
        m(torch.randn(1, 3, 6, 6))
    assert err.value.limit == 8 and err.value.actual == 16 and "act_bits=8" in err.value.hint


class GatedLinearConv1d(nn.Module):
    """The GLU-style unit ``x * sigmoid(y)`` on 1-D convs (``x`` a plain conv output, not an activation), twice,
    then ``tanh(z) * sigmoid(w)`` and a head: issue 9's gated conv acceptance net in its speech (Conv1d) form."""

    def __init__(self) -> None:
        super().__init__()
        self.x1, self.g1 = nn.Conv1d(10, 16, 3, padding=1), nn.Conv1d(10, 16, 3, padding=1)
        self.x2, self.g2 = nn.Conv1d(16, 16, 3, padding=1), nn.Conv1d(16, 16, 3, padding=1)
        self.z, self.w = nn.Conv1d(16, 16, 1), nn.Conv1d(16, 16, 1)
        self.head = nn.Linear(16 * 20, 4)

    def forward(self, x):
        h = self.x1(x) * torch.sigmoid(self.g1(x))
        h = self.x2(h) * self.g2(h).sigmoid() + h
        h = torch.tanh(self.z(h)) * F.sigmoid(self.w(h))
        return self.head(h.flatten(1))


def test_glu_style_conv1d_net_is_bit_exact_tensor_by_tensor(host):
    m = _qat(GatedLinearConv1d(), host, steps=5, shape=(4, 10, 20))
    assert not m.lnn.unsupported
    report = lnn.verify(m, torch.randn(3, 10, 20), host=host)
    assert report.ok, report
    compared = {t.name for t in report.tensors}
    assert sum(name.startswith(("q_tanh", "q_sigmoid")) for name in compared) == 4, compared
    assert sum(name.startswith("q_mul") for name in compared) == 3, compared
