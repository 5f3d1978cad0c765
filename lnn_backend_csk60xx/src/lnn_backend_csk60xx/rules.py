"""The index of the CSK60xx hardware rules. The rules themselves live with their op families (:mod:`.ops`):
each ``OpDef`` lists its ``rules`` (they judge the IR node and, through ``torch_ops``, the PyTorch modules
that export to it, at ``lnn.init``) and its ``pack_rules`` (IR only: shapes, dtypes, exponents after
inference). Rule texts are their docstrings with the real limits from ``targets/csk60xx.toml`` filled in.

:data:`RULES` and :data:`PACK_RULES` are the built-in rules, each bound to every op type it judges;
:func:`rules_for` answers for one op type. With plugins, ``OpSet.from_host(host).rules_for`` also knows
the rules of plugin ops.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lnn_core.rules import Finding, OpView, Rule, rule

from .ops.opset import OpSet

__all__ = ["RULES", "PACK_RULES", "rules_for", "check_op_supported"]


@rule("csk60xx.graph.op_supported", ops=())
def check_op_supported(op: OpView, limits: Mapping[str, Any]) -> Finding:
    """Every op must be a CSK60xx op or an op whose plugin is installed (schema and simulator kernel)."""
    return Finding(actual=f"op type {op.op_type!r}", limit="CSK60xx dialect ops and installed plugin ops",
                   hint="replace the op, or install the plugin that provides it (`lnn plugins` lists them)")


def _split() -> tuple[tuple[Rule, ...], tuple[Rule, ...]]:
    ops = OpSet.builtin_only()
    op_rule_ids = {r.id for op in ops.values() for r in op.rules}
    return (tuple(r for r in ops.rules if r.id in op_rule_ids),
            tuple(r for r in ops.rules if r.id not in op_rule_ids))


RULES, PACK_RULES = _split()


def rules_for(op_type: str) -> list[Rule]:
    """Every built-in CSK60xx rule for ``op_type``: op rules (module and IR names) and pack-time rules (IR names)."""
    return OpSet.builtin_only().rules_for(op_type)
