"""The built-in op families, registered through the ``lnn`` entry point ``builtin``."""

from __future__ import annotations

from typing import Any

from lnn_core import hookimpl

from . import activations, conv, elementwise, norm, pool, shape


@hookimpl
def lnn_register_ops(registry: Any) -> None:
    for module in (conv, norm, elementwise, pool, activations, shape):
        for family in module.FAMILIES:
            registry.add(family)
