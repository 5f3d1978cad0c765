"""CSK60xx rules for ``example.PReLU``, contributed by this package through ``lnn_op_rules``.

The backend's target file (``targets/csk60xx.toml``) knows nothing of PReLU, so this package keeps
its numbers in a small table, :data:`LIMITS`, with keys in the target file's ``section.key`` style.
Each rule carries that table (:class:`RuleWithLimits`): its check and its text read the target's
limits first and fall back to the table, so ``lnn rules --markdown`` shows the real numbers, and a
target file that one day states ``prelu.slopes_max`` overrides this package's value.

The rules judge the op twice: as ``example.PReLU`` when ``lnn.init`` builds the model (the module's
``op_attrs``), and as the IR op ``PReluInt`` when ``lnn pack``/``lnn check`` read an exported file (the
backend's op view: the slope count and the channels come from the shapes of the op's inputs).
"""

from __future__ import annotations

import math
from collections import ChainMap
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from lnn_core.rules import Finding, OpView, Rule, Violation, rule

from . import IR_OP, OP_ID

__all__ = ["TARGET_ID", "LIMITS", "RULES", "RuleWithLimits", "with_limits", "rules_for"]

TARGET_ID = "csk60xx"
OPS = (OP_ID, IR_OP)

LIMITS: Mapping[str, Any] = MappingProxyType({
    "prelu.slopes_max": 1024,  # slopes one PReLU may carry (one per channel, or one shared)
    "prelu.data_bits": 8,  # width of the input (and so of the output, which is the same tensor width)
})


@attrs.frozen
class RuleWithLimits(Rule):
    """A :class:`~lnn_core.rules.Rule` that brings default limits for keys its target may lack.

    :param defaults: ``"section.key" -> value``; the target's own limits take precedence.
    """

    defaults: Mapping[str, Any] = attrs.field(factory=dict)

    def limits(self, target_limits: Mapping[str, Any]) -> Mapping[str, Any]:
        """The limits this rule judges with: the target's, then this rule's defaults."""
        return ChainMap(dict(target_limits), dict(self.defaults))

    def describe(self, limits: Mapping[str, Any]) -> str:
        return super().describe(self.limits(limits))

    def run(self, op: OpView, limits: Mapping[str, Any], target: str) -> list[Violation]:
        return super().run(op, self.limits(limits), target)


def with_limits(r: Rule, defaults: Mapping[str, Any]) -> RuleWithLimits:
    """``r`` (made with :func:`lnn_core.rules.rule`) carrying ``defaults`` for its limit keys."""
    return RuleWithLimits(r.id, r.ops, r.text, r.check, r.limit_keys, r.severity, defaults=defaults)


def _slopes_and_channels(op: OpView) -> tuple[int | None, int | None]:
    """``(slopes, channels)`` of the op: its attributes (model side), else its input shapes (IR side)."""
    slopes, channels = op.attrs.get("num_parameters"), op.attrs.get("channels")
    shapes = op.attrs.get("input_shapes") or ()
    if slopes is None and len(shapes) > 1 and shapes[1] is not None:
        slopes = math.prod(shapes[1])
    if channels is None and shapes and shapes[0] is not None:
        channels = shapes[0][1] if len(shapes[0]) >= 2 else 1
    return slopes, channels


@rule("csk60xx.prelu.slopes", ops=OPS, smax="prelu.slopes_max")
def check_slopes(op: OpView, limits: Mapping[str, Any]) -> list[Finding]:
    """PReLU must have 1 slope or one slope per input channel (axis 1), and at most {smax} slopes."""
    slopes, channels = _slopes_and_channels(op)
    smax = limits["prelu.slopes_max"]
    found = []
    if slopes is not None and slopes > smax:
        found.append(Finding(actual=f"{slopes} slopes", limit=f"at most {smax} slopes",
                             hint=f"share one slope (nn.PReLU(num_parameters=1)), or reduce the channels to at "
                                  f"most {smax} before the PReLU"))
    if slopes is not None and channels is not None and slopes not in (1, channels):
        found.append(Finding(actual=f"{slopes} slopes for {channels} input channels",
                             limit=f"1 or {channels} slopes",
                             hint=f"construct it as nn.PReLU(num_parameters={channels}) or with num_parameters=1"))
    return found


@rule("csk60xx.prelu.bits", ops=OPS, bits="prelu.data_bits")
def check_bits(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """PReLU input must be {bits} bit (the output keeps the input's width and exponent)."""
    bits, allowed = op.attrs.get("data_bits"), limits["prelu.data_bits"]
    if bits is not None and bits != allowed:
        return Finding(actual=f"{bits}-bit input", limit=f"{allowed}-bit input",
                       hint=f"set act_bits={allowed} for the layer that produces the PReLU's input "
                            "(QuantConfig.by_path)")
    return None


RULES: tuple[RuleWithLimits, ...] = (with_limits(check_slopes, LIMITS), with_limits(check_bits, LIMITS))


def rules_for(op_type: str, target: str) -> list[Rule] | None:
    """The rules of this package for ``(op_type, target)``; None when it has none."""
    if target != TARGET_ID:
        return None
    return [r for r in RULES if r.applies_to(op_type)] or None
