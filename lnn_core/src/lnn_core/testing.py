"""Helpers for plugin authors' tests: hosts that load exactly the plugins named."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .plugins import PluginHost

__all__ = ["isolated_host"]


def isolated_host(plugins: Iterable[Any] = (), *, on_error: str = "raise") -> PluginHost:
    """A host that ignores installed entry points and registers ``plugins`` (modules) only."""
    return PluginHost(autoload=False, plugins=plugins, on_error=on_error)
