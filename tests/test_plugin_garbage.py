"""Issue 12 item 7 across packages: a third-party plugin returning garbage beside the real backend is skipped by
name, and lnn.check, lnn pack and lnn check go on with the plugins that work."""

from __future__ import annotations

import types

import pytest
import torch

import lnn_backend_csk60xx.plugin as backend_plugin
import lnn_core as lnn
import lnn_ops_builtin.plugin as ops_plugin
from lnn_backend_csk60xx.demo import build_model
from lnn_backend_csk60xx.ops import OpSet
from lnn_core.cli import main
from lnn_core.errors import RegistryError
from lnn_core.plugins import PluginLoadWarning
from lnn_core.testing import isolated_host


def _bad(name: str, hook: str, fn) -> types.ModuleType:
    mod = types.ModuleType(name)
    fn.__name__ = hook
    setattr(mod, hook, lnn.hookimpl(fn))
    return mod


def _host(*bad: types.ModuleType):
    return isolated_host([ops_plugin, backend_plugin, *bad], on_error="warn")


def _skipped(host, name: str, hook: str) -> None:
    [err] = [e for e in host.failed if e.plugin == name]
    assert err.hook == hook and f"LNN_DISABLE_PLUGINS={name}" in err.hint
    assert not host.pm.has_plugin(name)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    host = isolated_host([ops_plugin, backend_plugin])
    model = lnn.init(build_model(), host=host)
    x = torch.rand(4, 1, 8, 8)
    model.train()
    model(x)
    path = tmp_path_factory.mktemp("garbage") / "demo.onnx"
    lnn.export(model.eval(), x[:1], path, host=host)
    return path


@pytest.mark.parametrize("garbage", [42, ["not a rule"]], ids=["int", "list-of-str"])
def test_op_rules_garbage_beside_the_backend_leaves_lnn_check_working(garbage):
    host = _host(_bad("junk_rules", "lnn_op_rules", lambda op_type, target: garbage))
    with pytest.warns(PluginLoadWarning, match="plugin 'junk_rules' returned"):
        report = lnn.check(build_model(), torch.rand(2, 1, 8, 8), host=host)
    assert report.ok, report.table()
    assert report.checked > 0  # the backend's rules ran
    _skipped(host, "junk_rules", "lnn_op_rules")


@pytest.mark.parametrize("command", ["pack", "check"])
def test_op_rules_garbage_leaves_lnn_pack_and_check_working(command, onnx_file, tmp_path, capsys):
    host = _host(_bad("junk_rules", "lnn_op_rules", lambda op_type, target: 42))
    args = [command, str(onnx_file)] + (["-o", str(tmp_path / "model.bin")] if command == "pack" else [])
    with pytest.warns(PluginLoadWarning, match="plugin 'junk_rules' returned int from lnn_op_rules"):
        assert main(args, host=host) == 0, capsys.readouterr()
    _skipped(host, "junk_rules", "lnn_op_rules")


def test_check_graph_returning_a_string_is_skipped_for_the_backend_report():
    host = _host(_bad("junk_check", "lnn_check_graph", lambda graph, target: "looks fine to me"))
    with pytest.warns(PluginLoadWarning, match="plugin 'junk_check' returned str from lnn_check_graph"):
        report = lnn.check(build_model(), torch.rand(2, 1, 8, 8), host=host)
    assert report.memory.get("fits") is True  # the backend's memory plan, not the string
    _skipped(host, "junk_check", "lnn_check_graph")


def test_a_target_op_that_is_not_an_op_def_skips_its_plugin_whatever_the_order(onnx_file, tmp_path):
    def register(registry):
        registry.add("csk60xx", types.SimpleNamespace(op_type="Odd"))

    for first in (True, False):  # registered before or after the backend that declares OpDef
        odd = _bad("odd_ops", "lnn_register_target_ops", register)
        plugins = [odd, ops_plugin, backend_plugin] if first else [ops_plugin, backend_plugin, odd]
        host = isolated_host(plugins, on_error="warn")
        with pytest.warns(PluginLoadWarning, match="registers SimpleNamespace as the csk60xx op 'Odd', not a OpDef"):
            ops = OpSet.from_host(host)
        assert "Odd" not in ops and "Conv2dInt" in ops
        _skipped(host, "odd_ops", "lnn_register_target_ops")
        assert main(["pack", str(onnx_file), "-o", str(tmp_path / "m.bin")], host=host) == 0
    with pytest.raises(RegistryError, match="not a OpDef"):  # on_error="raise": the registry's error as it is
        OpSet.from_host(isolated_host([_bad("odd_ops", "lnn_register_target_ops", register), backend_plugin]))


def test_a_raising_configure_hook_beside_the_backend_leaves_every_command(onnx_file, capsys):
    def configure(host):
        raise KeyError("settings")

    with pytest.warns(PluginLoadWarning, match="plugin 'bad_conf' failed in lnn_configure"):
        host = _host(_bad("bad_conf", "lnn_configure", configure))
    assert main(["plugins"], host=host) == 1
    assert "FAILED TO LOAD" in capsys.readouterr().out
    assert main(["check", str(onnx_file)], host=host) == 0


def test_a_command_that_fails_inside_is_one_message_naming_its_plugin(capsys):
    """A defect in a plugin command's code ends in one message (exit 2) naming the command and the plugin, with
    the traceback only under -v, never a bare Python traceback."""
    import types

    from lnn_core import hookimpl
    from lnn_core.cli import main
    from lnn_core.testing import isolated_host

    plugin = types.ModuleType("boom_plugin")

    def run(args, host):
        raise ZeroDivisionError("inside the command")

    @hookimpl
    def lnn_register_commands(registry):
        registry.add("boom", "a command with a defect", lambda p: None, run)

    plugin.lnn_register_commands = lnn_register_commands
    host = isolated_host([plugin])
    assert main(["boom"], host=host) == 2
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("lnn boom: internal error in plugin 'boom_plugin'")
    assert "ZeroDivisionError: inside the command" in err and "LNN_DISABLE_PLUGINS=boom_plugin" in err
    assert "Traceback" not in err
    assert main(["-v", "boom"], host=host) == 2
    assert "Traceback" in capsys.readouterr().err
