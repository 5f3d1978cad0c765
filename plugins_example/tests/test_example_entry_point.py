"""lnn-ops-example is an ordinary plugin: registered explicitly in tests, found through its entry point
when installed, and blocked like any other."""

from __future__ import annotations

import importlib.metadata as md
import warnings

import pytest
import torch.nn.functional as F
from torch import nn

import lnn_core as lnn
import lnn_ops_example
from lnn_core.quant.rewrite import UnsupportedOpWarning


def _installed(dist: str) -> bool:
    try:
        md.distribution(dist)
    except md.PackageNotFoundError:
        return False
    return True


needs_install = pytest.mark.skipif(
    not _installed("lnn-ops-example"),
    reason="distribution lnn-ops-example is not installed (pip install -e plugins_example)")


def test_explicit_registration_claims_every_prelu_spelling(host):
    fam = host.ops["example.PReLU"]
    assert fam.kind == "stateless"
    assert host.ops.by_module[nn.PReLU] is fam
    assert host.ops.by_function[F.prelu] is fam
    assert host.ops.by_method["prelu"] is fam
    assert "lnn_ops_example.plugin" in host.ops.source_of("example.PReLU")


def test_without_the_plugin_prelu_stays_a_float_island(host_without_example):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.PReLU(8))
    with pytest.warns(UnsupportedOpWarning, match="PReLU"):
        q = lnn.init(model, host=host_without_example)
    assert [op for _, op, _ in q.lnn.unsupported] == ["PReLU"]
    assert "example.PReLU" not in q.lnn.ops.values()


@needs_install
def test_entry_point_loads_the_installed_plugin(monkeypatch):
    monkeypatch.delenv("LNN_DISABLE_PLUGINS", raising=False)
    host = lnn.PluginHost(autoload=True, on_error="raise")
    info = next(i for i in host.plugin_infos() if i.name == "example")
    assert (info.dist, info.version) == ("lnn-ops-example", md.version("lnn-ops-example"))
    assert info.version == lnn_ops_example.__version__
    assert info.entry_point == "lnn:example = 'lnn_ops_example.plugin'"
    assert set(info.hooks) == {"lnn_register_ops", "lnn_op_rules", "lnn_register_exporters", "lnn_register_target_ops"}
    assert "example.PReLU" in host.ops
    assert "lnn-ops-example" in host.ops.source_of("example.PReLU")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedOpWarning)
        q = lnn.init(nn.Sequential(nn.Conv2d(3, 8, 3), nn.PReLU(8)), host=host)
    assert q.lnn.ops["1"] == "example.PReLU"


@needs_install
def test_entry_point_is_blocked_by_lnn_disable_plugins(monkeypatch):
    monkeypatch.setenv("LNN_DISABLE_PLUGINS", "example")
    host = lnn.PluginHost(autoload=True, on_error="raise")
    assert "example" not in {i.name for i in host.plugin_infos()}
    assert "example.PReLU" not in host.ops
