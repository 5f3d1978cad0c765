"""Bad inputs to the commands that take a PyTorch model (``lnn export/verify/check pkg:fn``) and to
``lnn.export/verify/check``: every one is an LnnError naming what and where (exit 2 on the command line, one
error and no traceback), never a traceback from deep inside torch (issue 12 item 6, issue 11 item 4)."""

from __future__ import annotations

import sys
import textwrap
import uuid

import numpy as np
import pytest
import torch

import lnn_core as lnn
from lnn_core._model_args import build_float, load_checkpoint
from lnn_core.cli import main
from lnn_core.errors import ConfigError, LnnError, ModelFileError

MODULE = textwrap.dedent("""
    from torch import nn

    def dscnn():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))

    def wider():
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 3))

    def raises():
        raise ValueError("no weights here")

    def not_a_module():
        return 42
""")


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A folder holding the user's model file (a module name no test has imported), as the current folder."""
    name = f"kws_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    yield tmp_path, name
    sys.modules.pop(name, None)


def _run(argv, host, capsys):
    code = main(argv, host=host)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, err
    return code, out, err


@pytest.mark.parametrize("command", ["export", "verify", "check"])
def test_factory_string_imports_from_the_current_folder(user_folder, command, host, capsys):
    tmp, name = user_folder
    before = list(sys.path)
    extra = ["-o", str(tmp / "m.onnx")] if command == "export" else []
    if command != "check":  # export and verify refuse a model whose activation scales never saw data
        np.save(tmp / "samples.npy", np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32))
        extra += ["--calibrate", str(tmp / "samples.npy")]
    code, out, err = _run([command, f"{name}:dscnn", "--input-shape", "1,1,8,8", *extra], host, capsys)
    assert code == 0, err
    assert sys.path == before  # the folder was on the path for the import only
    if command == "export":
        assert (tmp / "m.onnx").stat().st_size > 1000


def _checkpoints(tmp, name):
    torch.save(lnn.init(build_float(f"{name}:wider")).state_dict(), tmp / "wider.pt")
    good = lnn.calibrate(lnn.init(build_float(f"{name}:dscnn")), [torch.rand(4, 1, 8, 8)])  # as after training
    torch.save(good.state_dict(), tmp / "good.pt")
    torch.save(torch.zeros(3), tmp / "tensor.pt")
    torch.save([torch.zeros(3)], tmp / "list.pt")
    (tmp / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 8)
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "folder.pt").mkdir()


CHECKPOINT_CASES = [
    ("wider.pt", "does not fit model", "0.weight: checkpoint [8, 1, 3, 3], model [4, 1, 3, 3]"),
    ("tensor.pt", "holds a Tensor, not a state_dict", "save model.state_dict()"),
    ("list.pt", "holds a list, not a state_dict", "save model.state_dict()"),
    ("garbage.pt", "torch.load(weights_only=True) cannot read it", "UnpicklingError"),
    ("empty.pt", "the file is empty", "0 bytes"),
    ("missing.pt", "it does not exist", "torch.save"),
    ("folder.pt", "it is a folder", "torch.save"),
]


@pytest.mark.parametrize("command", ["export", "verify", "check"])
def test_bad_checkpoints_are_errors_naming_the_file(user_folder, command, host, capsys):
    tmp, name = user_folder
    _checkpoints(tmp, name)
    extra = ["-o", str(tmp / "m.onnx")] if command == "export" else []
    for file, headline, detail in CHECKPOINT_CASES:
        code, _, err = _run([command, f"{name}:dscnn", "--input-shape", "1,1,8,8", "--checkpoint", file, *extra],
                            host, capsys)
        assert code == 2, (file, err)
        first = err.splitlines()[0]
        assert first.startswith("ModelFileError: ") and f"'{file}'" in first and headline in first, (file, err)
        assert detail in err and "\n  hint:" in err, (file, err)
    assert not (tmp / "m.onnx").exists()
    code, _, err = _run([command, f"{name}:dscnn", "--input-shape", "1,1,8,8", "--checkpoint", "good.pt", *extra],
                        host, capsys)
    assert code == 0, err


def test_checkpoint_errors_carry_fields(user_folder):
    tmp, name = user_folder
    _checkpoints(tmp, name)
    model = lnn.init(build_float(f"{name}:dscnn"))
    with pytest.raises(ModelFileError) as info:
        load_checkpoint(model, "wider.pt", f"{name}:dscnn")
    assert info.value.path == "wider.pt" and info.value.shapes[0].startswith("0.weight:")
    assert not info.value.missing and not info.value.unexpected
    float_keys = {k: v for k, v in torch.load(tmp / "good.pt").items() if k in ("0.weight", "0.bias")}
    torch.save(float_keys, tmp / "partial.pt")
    with pytest.raises(ModelFileError) as info:
        load_checkpoint(model, "partial.pt", f"{name}:dscnn")
    assert "3.weight" in info.value.missing


@pytest.mark.parametrize("command", ["export", "verify", "check"])
@pytest.mark.parametrize("factory, headline, detail", [
    ("raises", "the factory raised ValueError", "no weights here"),
    ("not_a_module", "the factory returned int, not an nn.Module", "42"),
    ("nothing", "has no callable 'nothing'", "hint:"),
])
def test_factories_that_fail(user_folder, command, factory, headline, detail, host, capsys):
    tmp, name = user_folder
    extra = ["-o", str(tmp / "m.onnx")] if command == "export" else []
    code, _, err = _run([command, f"{name}:{factory}", "--input-shape", "1,1,8,8", *extra], host, capsys)
    assert code == 2
    assert err.startswith(f"ConfigError: model '{name}:{factory}': ") and headline in err.splitlines()[0], err
    assert detail in err
    if factory == "raises":
        assert f"{name}.py:" in err  # the line of the user's code that raised


def test_a_module_that_raises_on_import(tmp_path, monkeypatch, host, capsys):
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('half-written file')\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["check", f"{name}:f", "--input-shape", "1,1,8,8"], host, capsys)
    assert code == 2 and f"importing module '{name}' raised RuntimeError" in err and "half-written file" in err


@pytest.mark.parametrize("command", ["export", "verify", "check"])
@pytest.mark.parametrize("shapes, module, cause", [
    (["1,3,8,8"], "'0' (Conv2d)", "to have 1 channels"),
    (["1,1,9,9"], "'3' (Linear)", "cannot be multiplied"),
])
def test_wrong_input_shape_names_the_module(user_folder, command, shapes, module, cause, host, capsys):
    tmp, name = user_folder
    extra = ["-o", str(tmp / "m.onnx")] if command == "export" else []
    argv = [command, f"{name}:dscnn", *[a for s in shapes for a in ("--input-shape", s)], *extra]
    code, _, err = _run(argv, host, capsys)
    assert code == 2
    assert err.splitlines()[0] == f"ConfigError: module {module} cannot run on the example inputs", err
    assert cause in err and "--input-shape" in err.splitlines()[-1]


@pytest.mark.parametrize("command", ["export", "verify", "check"])
def test_too_many_input_shapes(user_folder, command, host, capsys):
    tmp, name = user_folder
    extra = ["-o", str(tmp / "m.onnx")] if command == "export" else []
    code, _, err = _run([command, f"{name}:dscnn", "--input-shape", "1,1,8,8", "--input-shape", "1,1,8,8", *extra],
                        host, capsys)
    assert code == 2 and "2 example input(s) for 1 forward() argument(s)" in err


class _TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.head(torch.flatten(torch.relu(self.stem(x)), 1))


@pytest.mark.parametrize("api", ["export", "verify", "check"])
def test_python_api_wrong_shape_is_an_lnn_error_with_the_module_path(api, host):
    model = lnn.calibrate(lnn.init(_TwoLayers(), host=host), [torch.rand(2, 1, 8, 8)])
    calls = {"export": lambda x: lnn.export(model, x, host=host), "verify": lambda x: lnn.verify(model, x, host=host),
             "check": lambda x: lnn.check(_TwoLayers(), x, host=host)}
    for x, path in ((torch.rand(1, 2, 8, 8), "stem"), (torch.rand(1, 1, 6, 6), "head")):
        with pytest.raises(ConfigError) as info:
            calls[api](x)
        err = info.value
        assert isinstance(err, LnnError) and not isinstance(err, RuntimeError)
        assert err.module == path and err.option == "example_inputs" and isinstance(err.cause, RuntimeError)
        assert str(err).startswith(f"module '{path}' (") and "While executing" not in str(err)
    with pytest.raises(ConfigError, match="2 example input"):
        calls[api]((torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)))
    assert lnn.verify(model, torch.rand(1, 1, 8, 8), host=host).ok


class _Chain(torch.nn.Module):
    """Three float ops in a row between two convs: one float island of three ops."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(1, 2, 3)
        self.b = torch.nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.b(torch.cos(torch.sin(torch.exp(self.a(x)))))


def test_strict_names_every_op_of_a_chain(host):
    from lnn_core.errors import ExportError, UnsupportedOpError

    with pytest.raises(UnsupportedOpError) as info:
        lnn.init(_Chain(), host=host, strict=True)
    assert [op for _, op, _ in info.value.ops] == ["torch.exp", "torch.sin", "torch.cos"]
    assert info.value.op == "torch.exp" and "3 op(s)" in info.value.headline
    with pytest.warns(UserWarning):
        model = lnn.init(_Chain(), host=host)
    assert [op for _, op, _ in model.lnn.unsupported] == ["torch.exp", "torch.sin", "torch.cos"]
    with pytest.raises(ExportError) as info:
        lnn.export(model, torch.rand(1, 1, 8, 8), host=host, strict=True)
    assert [name for name, _ in info.value.ops] == ["exp", "sin", "cos"]
    for op in ("torch.exp (node 'exp')", "torch.sin (node 'sin')", "torch.cos (node 'cos')"):
        assert op in str(info.value)
    report = lnn.check(_Chain(), torch.rand(1, 1, 8, 8), host=host)
    assert sum("unsupported op" in p for p in report.problems) == 3


@pytest.mark.parametrize("output, why", [
    ("nodir/m.onnx", "the folder '{tmp}/nodir' does not exist"),
    ("afile/m.onnx", "'{tmp}/afile' is a file, not a folder"),
    ("afolder", "it is a folder"),
])
def test_export_to_a_path_that_cannot_be_written(user_folder, output, why, host, capsys):
    tmp, name = user_folder
    (tmp / "afile").write_text("x")
    (tmp / "afolder").mkdir()
    code, _, err = _run(["export", f"{name}:dscnn", "--input-shape", "1,1,8,8", "-o", str(tmp / output)], host,
                        capsys)
    assert code == 2 and err.startswith(f"ConfigError: export: cannot write '{tmp / output}': "
                                        f"{why.format(tmp=tmp)}"), err
    with pytest.raises(ConfigError) as info:
        lnn.export(lnn.init(build_float(f"{name}:dscnn"), host=host), torch.rand(1, 1, 8, 8), tmp / output,
                   host=host)
    assert info.value.option == "path" and info.value.value == str(tmp / output)
