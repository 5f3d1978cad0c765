"""The hook implementations of lnn-ops-example (entry point ``lnn:example``). Only @hookimpl here."""

from __future__ import annotations

from typing import Any

from lnn_core import hookimpl

from . import csk60xx, prelu, rules


@hookimpl
def lnn_register_ops(registry: Any) -> None:
    registry.add(prelu.FAMILY)


@hookimpl
def lnn_op_rules(op_type: str, target: str) -> list[Any] | None:
    return rules.rules_for(op_type, target)


@hookimpl
def lnn_register_exporters(registry: Any) -> None:
    registry.add_node_writer("ir", prelu.OP_ID, prelu.write_ir)
    registry.add_node_writer("qdq", prelu.IR_OP, prelu.lower_qdq)
    if csk60xx.backend_installed():
        registry.add_node_writer(csk60xx.DIALECT, csk60xx.OP_TYPE, csk60xx.schema())


@hookimpl
def lnn_register_sim_kernels(registry: Any) -> None:
    registry.add(csk60xx.OP_TYPE, csk60xx.kernel)
