"""PReLU support follows the installation of lnn-ops-example, and nothing else.

Runs in tox envs with and without the example plugin: the installed distributions (read from
``importlib.metadata``) decide which behaviour is expected, so it passes in both.
"""

from __future__ import annotations

import importlib.metadata as md
import warnings

import pytest
from torch import nn

import lnn_backend_csk60xx.plugin
import lnn_core as lnn
import lnn_ops_builtin.plugin
from lnn_core.quant.rewrite import UnsupportedOpWarning
from lnn_core.testing import isolated_host


def _installed(dist: str) -> bool:
    try:
        md.distribution(dist)
    except md.PackageNotFoundError:
        return False
    return True


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.PReLU(8))


def test_prelu_support_follows_the_installed_example_plugin(monkeypatch):
    monkeypatch.delenv("LNN_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("LNN_PLUGIN_AUTOLOAD", raising=False)
    host = lnn.PluginHost()
    if _installed("lnn-ops-example"):
        assert "example.PReLU" in host.ops
        assert any(i.name == "example" and i.dist == "lnn-ops-example" for i in host.plugin_infos())
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnsupportedOpWarning)
            q = lnn.init(_model(), host=host)
        assert q.lnn.ops["1"] == "example.PReLU"
        assert q.lnn.unsupported == []
    else:
        assert "example.PReLU" not in host.ops
        assert "example" not in {i.name for i in host.plugin_infos()}
        only_builtins = isolated_host([lnn_ops_builtin.plugin, lnn_backend_csk60xx.plugin])
        with pytest.warns(UnsupportedOpWarning, match="PReLU"):
            q = lnn.init(_model(), host=only_builtins)
        assert [op for _, op, _ in q.lnn.unsupported] == ["PReLU"]
        assert "example.PReLU" not in q.lnn.ops.values()
