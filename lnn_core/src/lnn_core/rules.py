"""Hardware rules, violations and the report that collects ALL of them before anything is raised.

A rule is a small function whose docstring is the rule text, formatted with the real limits
(Vela's habit), registered with the :func:`rule` decorator::

    @rule("csk60xx.conv.kernel_size", ops=("builtin.Conv2d", "Conv2dInt"), max_kernel="conv.kernel_max")
    def check_kernel_size(op, limits):
        \"\"\"Kernel size per axis must be 1..{max_kernel}.\"\"\"
        k = max(op.attrs["kernel_shape"])
        if k > limits["conv.kernel_max"]:
            return Finding(actual=f"kernel {k}", limit=limits["conv.kernel_max"], hint="...")

A check returns None (ok), a :class:`Finding`, or a list of findings. Rules judge an
:class:`OpView`: a name, an op type and attributes in the chip dialect's vocabulary, so the same
rule judges a PyTorch module before training and an ONNX node at pack time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from .errors import HardwareLimitError

__all__ = ["OpView", "Finding", "Rule", "Violation", "RuleReport", "rule"]


@attrs.frozen
class OpView:
    """What a rule sees of an op.

    :param name: module path (``backbone.block3.conv``) or node name.
    :param op_type: op id (``builtin.Conv2d``) or IR op type (``Conv2dInt``).
    :param attrs: attributes (``kernel_shape``, ``strides``, ``pads``, ``dilations``, ``group``,
        ``in_channels``, ``out_channels``, ``data_bits``, ``parameter_bits``, ``o_bits``, shapes).
    """

    name: str
    op_type: str
    attrs: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Finding:
    actual: Any
    limit: Any
    hint: str
    detail: str | None = None


@attrs.frozen
class Rule:
    """A rule: id, the op types it applies to, its text, the limits it reads, and its check."""

    id: str
    ops: tuple[str, ...]
    text: str
    check: Callable[[OpView, Mapping[str, Any]], Any]
    limit_keys: Mapping[str, str] = attrs.field(factory=dict)
    severity: str = "error"

    def describe(self, limits: Mapping[str, Any]) -> str:
        """The rule text with the real limits filled in."""
        values = {name: limits.get(key, f"<{key}>") for name, key in self.limit_keys.items()}
        try:
            return self.text.format(**values)
        except (KeyError, IndexError, ValueError):
            return self.text

    def applies_to(self, op_type: str) -> bool:
        return op_type in self.ops

    def run(self, op: OpView, limits: Mapping[str, Any], target: str) -> list[Violation]:
        result = self.check(op, limits)
        if result is None:
            return []
        findings = result if isinstance(result, list) else [result]
        return [
            Violation(op_name=op.name, op_type=op.op_type, rule_id=self.id, rule=self.describe(limits),
                      limit=f.limit, actual=f.actual, hint=f.hint, detail=f.detail, target=target,
                      severity=self.severity)
            for f in findings
        ]


def rule(rule_id: str, *, ops: Iterable[str], severity: str = "error",
         **limit_keys: str) -> Callable[[Callable[..., Any]], Rule]:
    """Decorator turning ``check(op, limits)`` into a :class:`Rule`; its docstring is the rule text.

    :param limit_keys: ``placeholder=limit key`` pairs; the placeholders are formatted into the text.
    """

    def wrap(fn: Callable[..., Any]) -> Rule:
        text = " ".join((fn.__doc__ or rule_id).split())
        return Rule(rule_id, tuple(ops), text, fn, dict(limit_keys), severity)

    return wrap


@attrs.frozen
class Violation:
    op_name: str
    op_type: str
    rule_id: str
    rule: str
    limit: Any
    actual: Any
    hint: str
    target: str
    detail: str | None = None
    severity: str = "error"

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class RuleReport:
    """Every violation found in one model or graph."""

    target: str
    violations: list[Violation] = attrs.field(factory=list)
    checked: int = 0

    @property
    def errors(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def extend(self, violations: Iterable[Violation]) -> None:
        self.violations.extend(violations)

    def check_ops(self, ops: Iterable[OpView], rules_for: Callable[[str], list[Rule]],
                  limits: Mapping[str, Any]) -> RuleReport:
        """Run every applicable rule over every op and keep all findings."""
        cache: dict[str, list[Rule]] = {}
        for op in ops:
            if op.op_type not in cache:
                cache[op.op_type] = [r for r in rules_for(op.op_type) if r.applies_to(op.op_type)]
            self.checked += 1
            for r in cache[op.op_type]:
                self.extend(r.run(op, limits, self.target))
        return self

    def table(self) -> str:
        """A plain-text table, one row per violation."""
        if not self.violations:
            return f"no violations ({self.checked} ops checked for target {self.target})"
        rows = [("op", "rule", "limit", "actual", "hint")]
        rows += [(v.op_name, v.rule_id, str(v.limit), str(v.actual), v.hint) for v in self.violations]
        widths = [min(max(len(r[i]) for r in rows), 48) for i in range(4)]
        lines = []
        for i, r in enumerate(rows):
            cells = [r[j][:widths[j]].ljust(widths[j]) for j in range(4)] + [r[4]]
            lines.append("  ".join(cells).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  ----")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"target": self.target, "checked": self.checked, "ok": self.ok,
                           "violations": [v.to_dict() for v in self.violations]}, indent=2, default=str)

    def raise_if_errors(self, what: str = "model") -> None:
        errs = self.errors
        if not errs:
            return
        first = errs[0]
        details: dict[str, Any] = {
            "rule": f"{first.rule_id}: {first.rule}",
            "limit": first.limit,
            "actual": first.actual,
        }
        if len(errs) > 1:
            lines = [f"{v.op_name} ({v.op_type}): {v.rule_id}: limit {v.limit}, actual {v.actual}; "
                     f"hint: {v.hint}" for v in errs]
            details["all"] = f"{len(errs)} violations\n" + "\n".join(lines)
        raise HardwareLimitError(
            f"op {first.op_name!r} ({first.op_type}) does not fit target {self.target}"
            + (f"; {len(errs)} violations in this {what}" if len(errs) > 1 else ""),
            details, first.hint, violations=errs, target=self.target, op_name=first.op_name,
            rule_id=first.rule_id, limit=first.limit, actual=first.actual)
