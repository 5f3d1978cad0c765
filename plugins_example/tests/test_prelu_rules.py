"""The CSK60xx rules this package contributes for example.PReLU (one test per rule, Vela style)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import lnn_core as lnn
from lnn_core.rules import OpView
from lnn_core.rules_doc import rules_markdown
from lnn_ops_example.rules import LIMITS, RULES


class Head(nn.Module):
    def __init__(self, num_parameters: int, features: int) -> None:
        super().__init__()
        self.head = nn.Sequential(OrderedDict(act=nn.PReLU(num_parameters), fc=nn.Linear(features, 4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class ConvPReLU(nn.Module):
    def __init__(self, num_parameters: int, bn: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else None
        self.act = nn.PReLU(num_parameters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.bn is not None:
            y = self.bn(y)
        return self.act(y)


def test_rule_slopes_refuses_more_than_the_limit_naming_the_module(host):
    with pytest.raises(lnn.HardwareLimitError) as info:
        lnn.init(Head(2048, 2048), host=host)
    err = info.value
    assert (err.rule_id, err.op_name, err.target) == ("csk60xx.prelu.slopes", "head.act", "csk60xx")
    assert (err.actual, err.limit) == ("2048 slopes", "at most 1024 slopes")
    assert [(v.rule_id, v.op_name, v.op_type) for v in err.violations] == [
        ("csk60xx.prelu.slopes", "head.act", "example.PReLU")]


def test_rule_slopes_accepts_the_limit(host):
    q = lnn.init(Head(1024, 1024), host=host)
    assert q.lnn.report.ok
    assert q.lnn.ops["head.act"] == "example.PReLU"


@pytest.mark.parametrize("bn", [False, True], ids=["after-conv", "after-folded-bn"])
def test_rule_slopes_refuses_a_count_other_than_one_or_the_channels(host, bn):
    with pytest.raises(lnn.HardwareLimitError) as info:
        lnn.init(ConvPReLU(4, bn=bn), host=host)
    err = info.value
    assert (err.rule_id, err.op_name) == ("csk60xx.prelu.slopes", "act")
    assert (err.actual, err.limit) == ("4 slopes for 8 input channels", "1 or 8 slopes")


@pytest.mark.parametrize("num_parameters", [1, 8])
def test_rule_slopes_accepts_one_or_per_channel(host, num_parameters):
    assert lnn.init(ConvPReLU(num_parameters, bn=True), host=host).lnn.report.ok


def test_rule_bits_refuses_a_16_bit_input(host):
    config = lnn.QuantConfig(by_path={"conv": lnn.LayerConfig(act_bits=16)})
    with pytest.raises(lnn.HardwareLimitError) as info:
        lnn.init(ConvPReLU(8), config=config, host=host)
    ours = [v for v in info.value.violations if v.op_name == "act"]
    assert [(v.rule_id, v.actual, v.limit) for v in ours] == [("csk60xx.prelu.bits", "16-bit input", "8-bit input")]


def test_rules_apply_to_example_prelu_on_csk60xx_only(host):
    assert sorted(r.id for r in host.rules_for("example.PReLU", "csk60xx")) == [
        "csk60xx.prelu.bits", "csk60xx.prelu.slopes"]
    assert host.rules_for("example.PReLU", "another-chip") == []
    assert not any(r.id.startswith("csk60xx.prelu.") for r in host.rules_for("builtin.Conv2d", "csk60xx"))


def test_rule_text_takes_the_plugin_table_and_the_target_overrides_it(host):
    slopes = next(r for r in RULES if r.id == "csk60xx.prelu.slopes")
    assert "at most 1024 slopes" in slopes.describe(host.targets["csk60xx"].limits)
    assert "at most 512 slopes" in slopes.describe({"prelu.slopes_max": 512})
    found = slopes.run(OpView("p", "example.PReLU", {"num_parameters": 600}), {"prelu.slopes_max": 512}, "csk60xx")
    assert [(v.limit, v.rule) for v in found] == [("at most 512 slopes", slopes.describe({"prelu.slopes_max": 512}))]
    assert slopes.run(OpView("p", "example.PReLU", {"num_parameters": 600}), {}, "csk60xx") == []
    doc = rules_markdown(host, "csk60xx")
    assert "| `csk60xx.prelu.slopes` | `example.PReLU`, `PReluInt` |" in doc and "at most 1024 slopes" in doc
    assert "PReLU input must be 8 bit" in doc
    with pytest.raises(TypeError):
        LIMITS["prelu.slopes_max"] = 1  # type: ignore[index]
