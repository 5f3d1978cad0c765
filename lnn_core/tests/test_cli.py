"""The ``lnn`` command line of the core."""

from __future__ import annotations

import json

from lnn_core.cli import main


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
