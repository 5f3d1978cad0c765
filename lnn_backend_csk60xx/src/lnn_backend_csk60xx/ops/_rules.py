"""Rule building blocks shared by the op families: attribute readers and the rule factories used by
several families (bit widths, engine buffers, output exponents, dtypes).

A rule built here applies to no op type by itself (``ops=()``): the op families list it in their
:class:`~.base.OpDef` (``rules``/``pack_rules``), and the rules index (:mod:`..rules`) binds it to the
op types (and the torch op ids) of every family that lists it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lnn_core.rules import Finding, OpView, Rule, rule

__all__ = ["ints", "fmt", "seq", "at", "bits_rule", "buffer_rule", "exponent_rule", "dtype_rule", "INT"]

INT = ("int8", "int16", "int32")


def ints(op: OpView, key: str) -> list[int]:
    """An int or ints attribute as a list (empty when absent)."""
    v = op.attrs.get(key)
    if v is None:
        return []
    return [int(i) for i in (v if isinstance(v, Sequence) else [v])]


def fmt(values: Sequence[Any]) -> str:
    return "x".join(str(v) for v in values)


def seq(op: OpView, key: str) -> tuple[Any, ...]:
    """One of the per-tensor tuples :func:`~..check.op_view` adds (``input_shapes``, ``output_exponents``, ...)."""
    return tuple(op.attrs.get(key) or ())


def at(values: Sequence[Any], i: int) -> Any:
    return values[i] if i < len(values) else None


def bits_rule(rule_id: str, section: str) -> Rule:
    """Input, weight and output bit widths against ``[section]`` ``data_bits``/``weight_bits``/``out_bits``."""
    @rule(rule_id, ops=(), data=f"{section}.data_bits")
    def check(op: OpView, limits: Mapping[str, Any]) -> list[Finding]:
        """Input data must be {data} bit; weights and outputs must use the widths the engine supports."""
        found = []
        for key, lim_key, what in (("data_bits", "data_bits", "input"), ("parameter_bits", "weight_bits", "weight"),
                                   ("o_bits", "out_bits", "output")):
            v, allowed = op.attrs.get(key), limits.get(f"{section}.{lim_key}")
            if v is not None and allowed is not None and v not in tuple(allowed):
                found.append(Finding(actual=f"{v}-bit {what}", limit=f"{what} bits in {tuple(allowed)}",
                                     hint=f"set {'weight_bits' if what == 'weight' else 'act_bits'}="
                                          f"{tuple(allowed)[0]} for this layer (QuantConfig.by_path)"))
        return found

    return check


def buffer_rule(rule_id: str, fit: Callable[..., Any], text: str, **limit_keys: str) -> Rule:
    """A rule that fires for the problems of ``rule_id`` that the family's ``fit`` reports (the split pass
    uses the same ``fit``, so the rule fires exactly when the pass cannot make the op fit)."""
    def check(op: OpView, limits: Mapping[str, Any]) -> list[Finding] | None:
        ins, outs = seq(op, "input_shapes"), seq(op, "output_shapes")
        if not ins or ins[0] is None or not outs or outs[0] is None:
            return None
        plan = fit(op.op_type, op.attrs, ins, outs, limits)
        if plan is None:
            return None
        found = [Finding(actual=p.actual, limit=p.limit, hint=p.hint) for p in plan.problems if p.rule_id == rule_id]
        return found or None

    check.__doc__ = text
    return rule(rule_id, ops=(), **limit_keys)(check)


def exponent_rule(rule_id: str, text: str, second: str) -> Rule:
    """``n_o <= n_x + n_(input 1)``: the requantizing shift of a product op is unsigned on the chip."""
    def check(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
        ins, outs = seq(op, "input_exponents"), seq(op, "output_exponents")
        n_x, n_w, n_o = at(ins, 0), at(ins, 1), at(outs, 0)
        if n_x is None or n_w is None or n_o is None or n_o <= n_x + n_w:
            return None
        return Finding(actual=f"n_o {n_o} > n_x {n_x} + {second} {n_w}", limit=f"n_o <= {n_x + n_w}",
                       hint=f"choose an output scale of at most 2^{n_x + n_w} (the requantizing shift "
                            f"n_x + {second} - n_o is unsigned on the chip)")

    check.__doc__ = text
    return rule(rule_id, ops=())(check)


def dtype_rule(rule_id: str, what: str, ins_allowed: tuple[tuple[str, ...] | None, ...],
               out_allowed: tuple[str, ...] | None) -> Rule:
    """Allowed dtypes per input position (None: judged by a bits rule) and of the output (spec section 4)."""
    def check(op: OpView, limits: Mapping[str, Any]) -> list[Finding] | None:
        dtypes, out = seq(op, "input_dtypes"), seq(op, "output_dtypes")
        found = []
        for i, allowed in enumerate(ins_allowed):
            d = at(dtypes, i)
            if allowed is not None and d is not None and d not in allowed:
                found.append(Finding(actual=f"input {i} {d}", limit=f"input {i} in {allowed}",
                                     hint=f"{op.op_type} on the chip takes {' or '.join(allowed)} at input {i}"))
        d = at(out, 0)
        if out_allowed is not None and d is not None and d not in out_allowed:
            found.append(Finding(actual=f"output {d}", limit=f"output in {out_allowed}",
                                 hint=f"{op.op_type} on the chip writes {' or '.join(out_allowed)}"))
        return found or None

    check.__doc__ = (f"{what} dtypes (spec section 4): inputs "
                     + ", ".join("as the bits rule" if a is None else "/".join(a) for a in ins_allowed)
                     + f"; output {'as the bits rule' if out_allowed is None else '/'.join(out_allowed)}.")
    return rule(rule_id, ops=())(check)
