"""lnn.verify on models written with in-place ops: the training side's tensors are captured before a later
in-place op overwrites them, so every spelling is bit-exact, and a real difference is still reported."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lnn_backend_csk60xx.plugin as backend_plugin
import lnn_core as lnn
import lnn_ops_builtin.plugin as ops_plugin
from lnn_core.testing import isolated_host


class _Net(nn.Module):
    """conv -> in-place activation (spelled ``act``) -> conv + skip (``x += y`` when ``iadd``) -> linear."""

    def __init__(self, act: str) -> None:
        super().__init__()
        self.act = act
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.relu6 = nn.ReLU6(inplace=True)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        y = self.conv1(x)
        if self.act == "module":
            y = self.relu(y)
        elif self.act == "functional":
            y = F.relu(y, inplace=True)
        elif self.act == "method":
            y = y.relu_()
        elif self.act == "relu_fn":
            y = F.relu_(y)
        elif self.act == "relu6":
            y = self.relu6(y)
        elif self.act == "relu6_fn":
            y = F.relu6(y, inplace=True)
        elif self.act == "hardtanh":
            y = F.hardtanh(y, 0.0, 6.0, inplace=True)
        z = self.conv2(y)
        if self.act == "iadd":
            z += y
        else:
            z = z + y
        return self.fc(z.flatten(1))


SPELLINGS = ["module", "functional", "method", "relu_fn", "relu6", "relu6_fn", "hardtanh", "iadd"]


def _calibrated(host, act: str):
    torch.manual_seed(0)
    m = lnn.init(_Net(act), host=host)
    x = torch.randn(8, 1, 6, 6)
    lnn.calibrate(m, [x[:4], x[4:]])
    return m.eval(), x


@pytest.mark.parametrize("act", SPELLINGS)
def test_in_place_spellings_verify_bit_exact(host, act):
    m, x = _calibrated(host, act)
    report = lnn.verify(m, x[:2], host=host)
    assert report.ok, report.table()
    assert report.outputs_equal and len(report.tensors) >= 5
    # the pre-activation conv output really has negative integers on both sides (what the in-place op overwrote)
    conv1 = [t for t in report.tensors if t.name.startswith("conv1")]
    assert conv1 and all(t.equal for t in conv1)


def test_in_place_leaves_a_real_difference_reported():
    liar = types.ModuleType("liar")

    @lnn.hookimpl(tryfirst=True)
    def lnn_simulate(model, inputs, target, options, host):
        outputs, tensors = backend_plugin.lnn_simulate(model, inputs, target, options, host)
        name = next(n for n in tensors if n.startswith("conv1"))
        bad = tensors[name].copy()
        bad.flat[3] = int(bad.flat[3]) + 1 if bad.flat[3] < 127 else 126
        tensors[name] = bad
        return outputs, tensors

    liar.lnn_simulate = lnn_simulate
    host = isolated_host([ops_plugin, backend_plugin, liar])
    m, x = _calibrated(host, "module")
    report = lnn.verify(m, x[:1], host=host)
    assert not report.ok
    bad = report.first_mismatch
    assert bad.name.startswith("conv1") and bad.mismatches == 1 and abs(bad.expected - bad.actual) == 1


def test_the_pre_activation_tensor_holds_negative_values(host):
    """The spellings test would prove nothing if the overwritten conv output had no negative values: it has."""
    from lnn_core.verifier import _Capture

    m, x = _calibrated(host, "module")
    cap = _Capture(m)
    with torch.no_grad():
        cap.run(x[:2])
    conv_out = [v for k, v in cap.values.items() if k.startswith("conv1")]
    assert conv_out and float(conv_out[0].min()) < 0.0
