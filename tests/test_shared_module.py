"""A module called more than once (shared weights): each call site is its own quantized op with its own
activation quantizers, all of them on the module's one set of parameters; the chip runs one op per call on the
same constants, stored once."""

from __future__ import annotations

import warnings

import torch
from torch import nn

import lnn_core as lnn
from lnn_core.exporter import to_ir


class Twice(nn.Module):
    """The same conv twice (with a ReLU between) and the same Linear on two branches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        y = torch.relu(self.conv(y))
        a = self.fc(y.flatten(1))
        b = self.fc(x.flatten(1))
        return self.head(torch.relu(a + b))


def _trained(stage_1: bool = False) -> nn.Module:
    torch.manual_seed(3)
    float_model = Twice()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "has no quantized form" for the second call
        model = lnn.init(float_model)
    if stage_1:
        c = lnn.constrain(Twice())
        model.load_state_dict(c.state_dict(), strict=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    model.train()
    for _ in range(4):
        loss = model(torch.randn(16, 4, 6, 6)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_each_call_is_its_own_op_on_the_same_parameters():
    model = _trained()
    assert model.lnn.shared == {"conv_call1": "conv", "fc_call1": "fc"}
    assert model.conv.weight is model.conv_call1.weight and model.fc.bias is model.fc_call1.bias
    assert model.conv.out_q is not model.conv_call1.out_q  # each call site observes its own output range
    n_float = sum(p.numel() for p in Twice().parameters())
    assert sum(p.numel() for p in model.parameters()) == n_float  # parameters() holds each shared tensor once


def test_the_stage_1_checkpoint_loads_strictly_into_stage_2():
    model = _trained(stage_1=True)
    assert "conv_call1.out_q.running" in model.state_dict()


def test_verify_is_bit_exact_and_the_constants_are_stored_once():
    model = _trained()
    x = torch.randn(2, 4, 6, 6)
    report = lnn.verify(model, x)
    assert report.ok, report.table()
    graph = to_ir(model, x)
    convs = [n for n in graph.nodes if n.op_type == "Conv2dInt"]
    fcs = [n for n in graph.nodes if n.op_type == "LinearInt"]
    assert len(convs) == 2 and convs[0].inputs[1] == convs[1].inputs[1] == "conv.weight"
    assert len({n.inputs[1] for n in fcs}) == 2  # fc (shared, once) and head
    assert sum(1 for n in fcs if n.inputs[1] == "fc.weight") == 2
    # the biases scale with each call's own input exponent: one bias per call site
    assert convs[0].inputs[2] != convs[1].inputs[2]
    assert not [t for t in graph.initializers if t.startswith(("conv_call1.weight", "fc_call1.weight"))]


def test_a_config_for_the_module_applies_to_every_call():
    """A layer config names the module: every call of it follows it (here: both calls stay float)."""
    config = lnn.QuantConfig(by_path={"fc": lnn.LayerConfig(float=True)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lnn.init(Twice(), config=config)
    assert "fc" not in model.lnn.ops and "fc_call1" not in model.lnn.ops and "conv_call1" in model.lnn.ops
    assert sum(1 for n in model.graph.nodes if n.op == "call_module" and n.target == "fc") == 2
