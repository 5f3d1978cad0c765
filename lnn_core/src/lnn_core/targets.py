"""Deployment targets: chips described as data. Torch-free.

A backend registers a :class:`Target` through ``lnn_register_targets``; its hardware limits are a
flat mapping read from a TOML file of the backend (``load_limits``), never constants in op code.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["Target", "load_limits"]


@attrs.frozen
class Target:
    """A deployment target.

    :param id: target id used on the command line and in rule ids (``csk60xx``).
    :param description: one line, e.g. ``ListenAI CSK60xx (VENUS NPU)``.
    :param recipe: name of the quantization recipe this target's arithmetic needs.
    :param limits: flat ``"section.key" -> value`` mapping of hardware limits.
    """

    id: str
    description: str
    recipe: str
    limits: Mapping[str, Any] = attrs.field(factory=dict)


def _flatten(prefix: str, table: Mapping[str, Any], out: dict[str, Any]) -> None:
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            _flatten(name, value, out)
        else:
            out[name] = tuple(value) if isinstance(value, list) else value


def load_limits(path: str | Path) -> dict[str, Any]:
    """Read a TOML limits file into a flat ``"section.key" -> value`` dict (lists become tuples)."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    out: dict[str, Any] = {}
    _flatten("", data, out)
    return out
