"""Fixtures for the core's own tests: they never depend on which plugins happen to be installed."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install a throw-away distribution with an ``lnn`` entry point on sys.path.

    Returns ``make(name, version, entry_point_name, target, module_source=None)``.
    """

    def make(dist: str, version: str, ep_name: str, target: str, module_source: str | None = None) -> Path:
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[lnn]\n{ep_name} = {target}\n")
        if module_source is not None:
            mod = target.split(":")[0]
            (tmp_path / f"{mod}.py").write_text(textwrap.dedent(module_source))
        return info

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for name in list(sys.modules):
        if name.startswith("lnn_test_plugin"):
            del sys.modules[name]
