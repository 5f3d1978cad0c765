"""CSK60xx op-level rules judged at lnn.init: every violation, all at once, with module paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lnn_core as lnn
from lnn_core.errors import HardwareLimitError


class ThreeViolations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.big = nn.Conv2d(8, 8, 7, padding=3)  # kernel 7 > 5
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, stride=3, padding=1))  # stride 3
        self.dil = nn.Conv2d(8, 8, 3, padding=2, dilation=2)  # dilation 2
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.big(x))
        x = self.block(x)
        x = self.dil(x)
        return self.fc(self.pool(x).flatten(1))


def test_three_violations_in_one_error(host):
    with pytest.raises(HardwareLimitError) as exc:
        lnn.init(ThreeViolations(), target="csk60xx", host=host)
    err = exc.value
    found = {(v.op_name, v.rule_id) for v in err.violations}
    assert found == {("big", "csk60xx.conv.kernel_size"), ("block.0", "csk60xx.conv.stride"),
                     ("dil", "csk60xx.conv.dilation")}
    assert err.target == "csk60xx"
    text = str(err)
    assert text.splitlines()[0] == "op 'big' (builtin.Conv2d) does not fit target csk60xx; 3 violations in this model"
    assert "block.0" in text and "dil" in text and text.splitlines()[-1].lstrip().startswith("hint:")
    big = next(v for v in err.violations if v.op_name == "big")
    assert big.actual == "kernel 7x7" and big.limit == "1..5 per axis"
    assert "Kernel size per axis must be 1..5" in big.rule


def test_rules_judge_functional_spellings_and_pools(host):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3, 3, 3))

        def forward(self, x):
            x = nn.functional.conv2d(x, self.w, stride=4, padding=5)  # pad 5 > 4 and > kernel
            return nn.functional.max_pool2d(x, 7, ceil_mode=True)  # kernel 7, ceil mode

    with pytest.raises(HardwareLimitError) as exc:
        lnn.init(Net(), host=host)
    ids = sorted(v.rule_id for v in exc.value.violations)
    assert ids == ["csk60xx.conv.kernel_ge_stride", "csk60xx.conv.pad", "csk60xx.pool.ceil_mode",
                   "csk60xx.pool.kernel_size"]


def test_bit_width_rule_and_warnings_do_not_raise(host):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(8, 8, 3, padding=1, groups=2)  # grouped: a warning only
            self.b = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.b(self.a(x))

    m = lnn.init(Net(), host=host)
    assert [v.rule_id for v in m.lnn.report.violations] == ["csk60xx.conv.groups"]
    cfg = lnn.QuantConfig(by_path={"a": lnn.LayerConfig(act_bits=16)})
    with pytest.raises(HardwareLimitError) as exc:
        lnn.init(Net(), config=cfg, host=host)
    v = exc.value.violations[0]
    assert (v.op_name, v.rule_id, v.actual) == ("b", "csk60xx.conv.bits", "16-bit input")
