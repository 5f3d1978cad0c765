"""The hook implementations of lnn-ops-example (entry point ``lnn:example``). Only @hookimpl here."""

from __future__ import annotations

from typing import Any

from lnn_core import hookimpl

from . import prelu, rules


@hookimpl
def lnn_register_ops(registry: Any) -> None:
    registry.add(prelu.FAMILY)


@hookimpl
def lnn_op_rules(op_type: str, target: str) -> list[Any] | None:
    return rules.rules_for(op_type, target)
