"""lnn.calibrate, the refusal to export/verify a model whose activation quantizers never saw data, and the
``--calibrate`` / ``--allow-uncalibrated`` options of the commands that build a model from a factory."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lnn_core as lnn
from lnn_backend_csk60xx.demo import build_model
from lnn_core.calibration import uncalibrated_modules
from lnn_core.cli import main

FACTORY = "lnn_backend_csk60xx.demo:build_model"
README = Path(__file__).resolve().parents[1] / "README.md"


class _BnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)  # after a Conv2d: folded; the standalone kind is covered by build_model
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        y = torch.sigmoid(self.bn2(self.conv2(y)))
        return self.fc(y.flatten(1))


def test_readme_example_runs():
    text = README.read_text()
    block = re.search(r"<!-- calibrate-example.*?-->\n```python\n(.*?)```", text, re.S)
    assert block, "the README's calibration example is missing"
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(block.group(1), str(README), "exec"), scope)
    model = scope["model"]
    assert not uncalibrated_modules(model) and scope["report"].ok


def test_export_of_an_uncalibrated_model_is_an_error_naming_the_modules(host):
    model = lnn.init(build_model(), host=host)
    x = torch.rand(2, 1, 8, 8)
    missing = uncalibrated_modules(model)
    assert missing and all(isinstance(p, str) and p for p in missing)
    with pytest.raises(lnn.UncalibratedError) as exc:
        lnn.export(model, x, host=host)
    err = exc.value
    assert isinstance(err, lnn.ExportError)
    assert err.modules == missing and err.rule_id == "calibrated" and err.limit == 1 and err.actual == 0
    first = str(err).splitlines()[0]
    assert first.startswith("export:") and missing[0] in first and "never saw data" in first
    assert "lnn.calibrate" in err.hint and "--calibrate" in err.hint
    with pytest.raises(lnn.UncalibratedError) as exc:
        lnn.verify(model, x, host=host)
    assert str(exc.value).startswith("verify:")


def test_allow_uncalibrated_warns_loudly_and_exports(host):
    model = lnn.init(build_model(), host=host)
    with pytest.warns(lnn.UncalibratedWarning, match="never saw data"):
        proto = lnn.export(model, torch.rand(1, 1, 8, 8), host=host, allow_uncalibrated=True)
    assert proto.graph.node


def test_calibrate_fills_observers_and_changes_nothing_else(host):
    torch.manual_seed(1)
    float_model = _BnNet()
    with torch.no_grad():  # trained-looking BatchNorm statistics
        for bn in (float_model.bn, float_model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    model = lnn.init(float_model, host=host).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 1, 8, 8)
    assert lnn.calibrate(model, x.split(16)) is model
    assert not model.training and not uncalibrated_modules(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.rsplit(".", 1)[-1] in ("running", "num_batches", "exponent") for k in changed)
    assert all(int(after[k]) == 4 for k in after if k.endswith(".num_batches") and k in changed)
    assert not any("bn" in k.split(".")[0] and "running_" in k for k in changed)  # BatchNorm statistics kept
    lnn.calibrate(model.train(), [(x[:8],)])  # tuples are forward() arguments; the mode is restored
    assert model.training and all(int(v) == 5 for k, v in model.state_dict().items()
                                   if k.endswith(".num_batches") and k in changed)


def test_calibrated_int8_model_follows_the_float_model(host):
    """The issue's symptom: an lnn.init model used without data computes garbage; calibrated, it tracks float."""
    torch.manual_seed(2)
    float_model = build_model().eval()
    x = torch.rand(128, 1, 8, 8)
    with torch.no_grad():
        ref = float_model(x)
    model = lnn.init(build_model(), host=host)
    model.load_state_dict(float_model.state_dict(), strict=False)
    with torch.no_grad():
        raw = model.eval()(x)
    lnn.calibrate(model, x.split(32))
    with torch.no_grad():
        cal = model.eval()(x)
    cos = F.cosine_similarity(cal.flatten(), ref.flatten(), dim=0)
    assert float(cos) > 0.95
    assert float(F.cosine_similarity(raw.flatten(), ref.flatten(), dim=0).nan_to_num()) < float(cos)
    assert lnn.verify(model, x[:2], host=host).ok


def test_a_checkpoint_remembers_calibration(host, tmp_path):
    x = torch.rand(32, 1, 8, 8)
    model = lnn.calibrate(lnn.init(build_model(), host=host), [x])
    torch.save(model.state_dict(), tmp_path / "cal.pt")
    torch.save(lnn.init(build_model(), host=host).state_dict(), tmp_path / "raw.pt")
    fresh = lnn.init(build_model(), host=host)
    fresh.load_state_dict(torch.load(tmp_path / "cal.pt"))
    lnn.export(fresh, x[:1], host=host)  # no error: the flag travelled with the state_dict
    stale = lnn.init(build_model(), host=host)
    stale.load_state_dict(torch.load(tmp_path / "raw.pt"))
    with pytest.raises(lnn.UncalibratedError):
        lnn.export(stale, x[:1], host=host)
    stage1 = lnn.constrain(build_model(), host=host)
    lnn.calibrate(stage1, [x])  # stage 1 observes too: its checkpoint starts stage 2 calibrated
    stage2 = lnn.init(build_model(), host=host)
    stage2.load_state_dict(stage1.state_dict())
    assert not uncalibrated_modules(stage2)


def test_calibrate_refuses_what_it_cannot_use(host):
    with pytest.raises(lnn.ConfigError) as exc:
        lnn.calibrate(build_model(), [torch.rand(1, 1, 8, 8)])
    assert exc.value.option == "model" and "lnn.init" in exc.value.hint
    model = lnn.init(build_model(), host=host)
    with pytest.raises(lnn.ConfigError) as exc:
        lnn.calibrate(model, [])
    assert exc.value.option == "batches"
    with pytest.raises(lnn.ConfigError) as exc:  # a wrong shape names the module, and changes nothing
        lnn.calibrate(model, [torch.rand(2, 3, 5, 5)])
    assert exc.value.option == "example_inputs"


def test_cli_refuses_uncalibrated_and_calibrates_from_npy(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    args = ["export", FACTORY, "--input-shape", "1,1,8,8", "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "never saw data" in err and "--calibrate" in err and not out.exists()
    data = tmp_path / "samples.npy"
    np.save(data, np.random.default_rng(0).random((70, 1, 8, 8), dtype=np.float32))
    assert main(args + ["--calibrate", str(data)]) == 0 and out.stat().st_size > 1000
    capsys.readouterr()
    assert main(["verify", FACTORY, "--input-shape", "1,1,8,8", "--calibrate", str(data)]) == 0
    assert "bit-exact" in capsys.readouterr().out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args + ["--allow-uncalibrated"]) == 0
    assert any(issubclass(w.category, lnn.UncalibratedWarning) for w in caught)


@pytest.mark.parametrize("shape, n_files, expect", [((5, 1, 8, 7), 1, "does not fit"), ((0, 1, 8, 8), 1,
                         "does not fit"), ((5, 1, 8, 8), 2, "--calibrate file(s) for 1 input")])
def test_cli_calibration_data_errors(tmp_path, capsys, shape, n_files, expect):
    data = tmp_path / "bad.npy"
    np.save(data, np.zeros(shape, dtype=np.float32))
    extra = ["--calibrate", str(data)] * n_files
    assert main(["export", FACTORY, "--input-shape", "1,1,8,8", "-o", str(tmp_path / "m.onnx")] + extra) == 2
    assert expect in capsys.readouterr().err
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    assert main(["export", FACTORY, "--input-shape", "1,1,8,8", "-o", str(tmp_path / "m.onnx"),
                 "--calibrate", str(tmp_path / "junk.npy")]) == 2
    assert "cannot read calibration data" in capsys.readouterr().err
