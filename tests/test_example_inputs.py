"""``lnn.init(model, example_inputs=...)``: the limits that depend on shapes (a softmax row over 2048, softmax over
a non-last dim, BmmInt's right matrix) are reported at init with every other finding, the float model runs on the
examples without any state changing, and example inputs the model cannot take are one clear ConfigError."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import lnn_core as lnn
from lnn_core.errors import ConfigError, HardwareLimitError, LnnError


def seq(**layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


class Scores(nn.Module):
    """``softmax(a(x) @ b(y)^T) @ v(y)``: BmmInt's right matrices are ``b(y)^T`` ([8, T_y]) and ``v(y)`` ([T_y, 8])."""

    def __init__(self, heads: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.a, self.b, self.v = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(4, 8)

    def split(self, t: torch.Tensor) -> torch.Tensor:
        if self.heads == 1:
            return t
        return t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)  # [B, h, T, d]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(self.split(self.a(x)) @ self.split(self.b(y)).transpose(-1, -2), dim=-1)
        return p @ self.split(self.v(y))


def _found(exc: pytest.ExceptionInfo) -> dict[tuple[str, str], object]:
    return {(v.op_name, v.rule_id): v for v in exc.value.violations}


def test_shape_limits_are_reported_at_init_with_every_other_finding(host):
    model = seq(fc=nn.Linear(4, 2049), sm=nn.Softmax(-1), fc2=nn.Linear(2049, 6), sm2=nn.Softmax(dim=1),
                ln=nn.LayerNorm(6, eps=1e-3))
    with pytest.raises(HardwareLimitError) as exc:
        lnn.init(model, host=host, example_inputs=torch.randn(2, 3, 4))
    found = _found(exc)
    assert {("sm", "csk60xx.softmax.row"), ("sm2", "csk60xx.softmax.dim")} <= set(found)
    assert any(op == "ln" for op, _ in found)  # a rule that needs no shape (the chip's eps), in the same report
    row, dim = found[("sm", "csk60xx.softmax.row")], found[("sm2", "csk60xx.softmax.dim")]
    assert (row.actual, row.limit) == ("row of 2049", "row <= 2048") and "2048" in row.hint
    assert dim.actual == "dim=1 of a rank-3 input" and "transpose" in dim.hint


def test_without_example_inputs_the_shape_limits_wait_for_the_first_forward(host):
    m = lnn.init(seq(fc=nn.Linear(4, 2049), sm=nn.Softmax(-1)), host=host)
    with pytest.raises(LnnError) as exc:
        m(torch.randn(1, 4))
    assert exc.value.rule == "csk60xx.softmax.row"


def test_a_positive_dim_that_is_the_last_one_passes(host):
    lnn.init(seq(fc=nn.Linear(4, 8), sm=nn.Softmax(dim=2)), host=host, example_inputs=torch.randn(2, 3, 4))
    lnn.init(seq(fc=nn.Linear(4, 8), sm=nn.LogSoftmax(dim=1)), host=host, example_inputs=torch.randn(2, 4))
    with pytest.raises(HardwareLimitError) as exc:
        lnn.init(seq(fc=nn.Linear(4, 8), sm=nn.LogSoftmax(dim=1)), host=host, example_inputs=torch.randn(2, 3, 4))
    assert set(_found(exc)) == {("sm", "csk60xx.softmax.dim")}


def test_bmm_right_matrix_at_init_and_four_dim_operands_fold(host):
    x = torch.randn(1, 3, 4)
    with pytest.raises(HardwareLimitError) as exc:
        lnn.init(Scores(), host=host, example_inputs=(x, torch.randn(1, 8200, 4)))
    found = _found(exc)
    right = [v for (op, rule), v in found.items() if rule == "csk60xx.bmm.right_matrix"]
    assert ("q_softmax", "csk60xx.softmax.row") in found  # rows of 8200 too, in the same report
    assert sorted(v.actual for v in right) == ["right matrix (8, 8200): 65600 bytes",  # b(y)^T, then v(y)
                                               "right matrix (8200, 8): 65600 bytes"]
    assert all(v.limit == "<= 32768 bytes" and "split" in v.hint for v in right)
    lnn.init(Scores(), host=host, example_inputs=(x, torch.randn(1, 2048, 4)))  # 16 KB, rows of 2048: fits
    m = lnn.init(Scores(heads=2), host=host, example_inputs=(x, torch.randn(1, 5, 4)))  # 4-D, folded: no rank error
    assert m.lnn.input_shapes  # the shapes it judged are kept on the model
    assert any(len(s) == 4 for shapes in m.lnn.input_shapes.values() for s in shapes if s is not None)


def test_the_examples_change_nothing(host):
    torch.manual_seed(0)
    model = seq(conv=nn.Conv2d(1, 4, 3, padding=1), bn=nn.BatchNorm2d(4), relu=nn.ReLU(), drop=nn.Dropout(0.5))
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 1, 6, 6) * 5
    a = lnn.init(model, host=host, example_inputs=x)
    b = lnn.init(model, host=host)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the float model
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # the prepared model
    assert a.training and all(m.training for m in a.modules())
    torch.manual_seed(1)
    ya = a(x)
    torch.manual_seed(1)
    assert torch.equal(ya, b(x))


def test_examples_the_model_cannot_take_are_one_config_error(host):
    with pytest.raises(ConfigError) as exc:
        lnn.init(Scores(), host=host, example_inputs=torch.randn(1, 3, 4))
    e = exc.value
    assert str(e).splitlines()[0] == "lnn.init: model 'Scores' does not run on example_inputs of shape (1, 3, 4)"
    assert e.option == "example_inputs" and "parameter y" in str(e) and "Traceback" not in str(e)
    with pytest.raises(ConfigError) as exc:
        lnn.init(seq(fc=nn.Linear(4, 8)), host=host, example_inputs=torch.randn(2, 5))
    assert "mat1 and mat2" in str(exc.value) or "shape" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        lnn.init(seq(fc=nn.Linear(4, 8)), host=host, example_inputs=[(2, 4)])
    assert str(exc.value).splitlines()[0] == ("lnn.init: example_inputs for model 'Sequential' holds a tuple, "
                                               "not a tensor")
