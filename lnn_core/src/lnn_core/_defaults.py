"""The core's own hook implementations: registered in every host like any other plugin."""

from __future__ import annotations

from typing import Any

import pluggy

from .quant.recipes import DEFAULT_RECIPES

hookimpl = pluggy.HookimplMarker("lnn")


@hookimpl
def lnn_register_recipes(registry: Any) -> None:
    for recipe in DEFAULT_RECIPES:
        registry.add(recipe)


@hookimpl
def lnn_register_commands(registry: Any) -> None:
    from . import _commands

    _commands.register(registry)
