"""lnn.verify (every tensor, training side against the simulator), lnn.check and their commands."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lnn_backend_csk60xx.plugin as backend_plugin
import lnn_core as lnn
import lnn_ops_builtin.plugin as ops_plugin
from lnn_backend_csk60xx.demo import build_model
from lnn_core.cli import main
from lnn_core.testing import isolated_host
from lnn_core.verifier import VerifyError


def _qat(host, steps=4):
    torch.manual_seed(0)
    m = lnn.init(build_model(), host=host)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    m.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return m.eval(), x


def test_verify_compares_every_quantized_tensor(host):
    m, x = _qat(host)
    report = lnn.verify(m, x[:3], host=host)
    assert report.ok, report.table()
    names = {t.name for t in report.tensors}
    # every quantized op of the model contributed its output tensor
    assert len(report.tensors) >= len(m.lnn.ops) and "q_input_x" in names and report.outputs_equal
    assert json.loads(report.to_json())["ok"] is True


def test_verify_reports_the_first_differing_tensor():
    class Liar(types.ModuleType):
        pass

    liar = Liar("liar")

    @lnn.hookimpl(tryfirst=True)
    def lnn_simulate(model, inputs, target, options, host):
        outputs, tensors = backend_plugin.lnn_simulate(model, inputs, target, options, host)
        name = next(n for n in tensors if n.startswith("conv1"))
        bad = tensors[name].copy()
        bad.flat[5] = np.clip(int(bad.flat[5]) + 1, -128, 127) if bad.flat[5] < 127 else 126
        tensors[name] = bad
        return outputs, tensors

    liar.lnn_simulate = lnn_simulate
    host = isolated_host([ops_plugin, backend_plugin, liar])
    m, x = _qat(host, steps=1)
    report = lnn.verify(m, x[:1], host=host)
    assert not report.ok
    bad = report.first_mismatch
    assert bad.name.startswith("conv1") and bad.mismatches == 1
    assert abs(bad.expected - bad.actual) == 1
    assert "first differing tensor" in report.table()
    with pytest.raises(VerifyError) as exc:
        report.raise_if_mismatch()
    assert exc.value.tensor == bad.name


class _Bad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 7, padding=3)  # kernel 7: a violation
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return F.gelu(self.b(torch.relu(self.a(x))))  # gelu: unsupported


def test_check_collects_rules_and_unsupported_ops_without_raising(host):
    report = lnn.check(_Bad(), torch.rand(1, 1, 8, 8), host=host)  # records, does not warn
    assert not report.ok
    assert [(v.op_name, v.rule_id) for v in report.violations if v.severity == "error"][0] == (
        "a", "csk60xx.conv.kernel_size")
    assert any("F.gelu" in p for p in report.problems)
    good = lnn.check(build_model(), torch.rand(1, 1, 8, 8), host=host)
    assert good.ok, good.table()


def test_export_and_verify_commands(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    data = tmp_path / "samples.npy"
    np.save(data, np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32))
    assert main(["export", "lnn_backend_csk60xx.demo:build_model", "--input-shape", "1,1,8,8", "-o", str(out),
                 "--calibrate", str(data)]) == 0
    assert out.stat().st_size > 1000
    capsys.readouterr()
    assert main(["verify", "lnn_backend_csk60xx.demo:build_model", "--input-shape", "1,1,8,8", "--json",
                 "--calibrate", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert main(["export", "no_such_module:f", "--input-shape", "1,1,8,8", "-o", str(out)]) == 2
    assert "cannot be imported" in capsys.readouterr().err
