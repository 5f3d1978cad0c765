"""The hook implementations of lnn-ops-example (entry point ``lnn:example``). Only @hookimpl here.

Each hook imports the modules it uses (``prelu`` imports torch): loading the plugin costs nothing.
"""

from __future__ import annotations

from typing import Any

from lnn_core import hookimpl


@hookimpl
def lnn_register_ops(registry: Any) -> None:
    from . import prelu

    registry.add(prelu.FAMILY)


@hookimpl
def lnn_op_rules(op_type: str, target: str) -> list[Any] | None:
    from . import rules

    return rules.rules_for(op_type, target)


@hookimpl
def lnn_register_exporters(registry: Any) -> None:
    from . import prelu

    registry.add_node_writer("ir", prelu.OP_ID, prelu.write_ir)
    registry.add_node_writer("qdq", prelu.IR_OP, prelu.lower_qdq)


@hookimpl
def lnn_register_target_ops(registry: Any) -> None:
    from . import csk60xx

    if csk60xx.backend_installed():
        registry.add(csk60xx.TARGET, csk60xx.op_def())
