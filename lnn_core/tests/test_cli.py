"""The ``lnn`` command line of the core."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys

import pytest

from lnn_core.cli import main
from lnn_core.plugins import PluginLoadWarning


def test_plugins_lists_the_core(capsys, monkeypatch):
    monkeypatch.setenv("LNN_PLUGIN_AUTOLOAD", "0")
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["name"] == "lnn-core" and "lnn_register_commands" in data[0]["hooks"]


def test_no_command_prints_help_and_exits_2(capsys, monkeypatch):
    monkeypatch.setenv("LNN_PLUGIN_AUTOLOAD", "0")
    assert main([]) == 2
    assert "plugins" in capsys.readouterr().out


def test_rules_markdown(capsys, monkeypatch):
    monkeypatch.setenv("LNN_PLUGIN_AUTOLOAD", "0")
    assert main(["rules", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("# Supported operators and hardware rules")


def _only_fake_plugins(monkeypatch, *keep: str) -> None:
    """Skip every installed ``lnn`` entry point except ``keep``: the output then depends on this test alone."""
    installed = {ep.name for ep in md.entry_points(group="lnn")}
    monkeypatch.delenv("LNN_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("LNN_DISABLE_PLUGINS", ",".join(sorted(installed - set(keep))))


def test_plugins_names_a_plugin_that_fails_to_import(fake_dist, monkeypatch, capsys):
    fake_dist("lnn-ops-broken", "0.4.1", "broken", "lnn_test_plugin_cli_broken", "import nope_not_a_module\n")
    _only_fake_plugins(monkeypatch, "broken")
    with pytest.warns(PluginLoadWarning):
        assert main(["plugins"]) == 1
    out = capsys.readouterr().out
    assert "broken       lnn-ops-broken 0.4.1  FAILED TO LOAD" in out
    assert "plugin 'broken' could not be loaded, so lnn runs without it" in out
    assert "lnn:broken = 'lnn_test_plugin_cli_broken'" in out and "ModuleNotFoundError" in out
    assert "hint:" in out and "LNN_DISABLE_PLUGINS=broken" in out


def test_plugins_all_runs_the_registration_hooks_the_plain_listing_skips(fake_dist, monkeypatch, capsys):
    fake_dist("lnn-ops-halfbroken", "2.0.0", "halfbroken", "lnn_test_plugin_cli_halfbroken", """
        from lnn_core import hookimpl

        @hookimpl
        def lnn_register_ops(registry):
            raise RuntimeError("boom")
    """)
    _only_fake_plugins(monkeypatch, "halfbroken")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "halfbroken   lnn-ops-halfbroken 2.0.0\n    hooks: lnn_register_ops" in out
    assert "op families: not loaded (they import torch; --all loads them)" in out
    with pytest.warns(PluginLoadWarning):
        assert main(["plugins", "--all"]) == 1
    out = capsys.readouterr().out
    assert "halfbroken   lnn-ops-halfbroken 2.0.0  FAILED TO LOAD" in out
    assert "plugin 'halfbroken' failed in lnn_register_ops, so it was skipped" in out
    assert "RuntimeError: boom" in out and "op families: 0;" in out


def test_two_plugins_registering_one_command_name_skip_the_later_one_naming_both(fake_dist, monkeypatch, capsys):
    source = """
        from lnn_core import hookimpl

        @hookimpl
        def lnn_register_commands(registry):
            registry.add("twice", "a command", lambda p: None, lambda args, host: 0)
    """
    fake_dist("lnn-cmd-a", "1.0", "cmd_a", "lnn_test_plugin_cmd_a", source)
    fake_dist("lnn-cmd-b", "1.0", "cmd_b", "lnn_test_plugin_cmd_b", source)
    _only_fake_plugins(monkeypatch, "cmd_a", "cmd_b")
    with pytest.warns(PluginLoadWarning, match="command 'twice' is registered twice"):
        assert main(["plugins"]) == 1  # lnn plugins still works: the later plugin is skipped and listed
    out = capsys.readouterr().out
    assert "cmd_a        lnn-cmd-a 1.0\n    hooks: lnn_register_commands" in out
    assert "cmd_b        lnn-cmd-b 1.0  FAILED TO LOAD" in out
    assert "plugin 'cmd_b' failed in lnn_register_commands, so it was skipped" in out
    assert "'cmd_a' (lnn-cmd-a 1.0)" in out and "LNN_DISABLE_PLUGINS=cmd_b" in out


def test_import_lnn_core_is_cheap_and_its_lazy_names_resolve():
    """``import lnn_core`` loads pluggy only; every public name is listed by dir() and resolves on first use."""
    code = ("import sys, lnn_core\n"
            "print(sorted(m for m in ('torch', 'numpy', 'onnx', 'lnn_core.plugins', 'lnn_core.errors')"
            " if m in sys.modules))\n"
            "print(sorted(set(lnn_core.__all__) - set(dir(lnn_core))))\n"
            "from lnn_core import PluginHost, RegistryError\n"
            "import lnn_core.plugins, lnn_core.errors\n"
            "print(PluginHost is lnn_core.plugins.PluginHost and RegistryError is lnn_core.errors.RegistryError)\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:4] == ["[]", "[]", "True", "False"]
    import lnn_core

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lnn_core.nope  # noqa: B018
    assert callable(lnn_core.init) and callable(lnn_core.export)  # the torch-side API (torch is installed here)
