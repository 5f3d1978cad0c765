"""Error message shape and the rule report that collects every violation."""

from __future__ import annotations

import pytest

from lnn_core.errors import HardwareLimitError, LnnError, format_message
from lnn_core.rules import Finding, OpView, RuleReport, rule


def test_message_shape_headline_details_hint():
    err = LnnError("op 'a' failed on target t", {"rule": "r: text", "actual": 3, "skipped": None}, "do x",
                   rule_id="r")
    lines = str(err).splitlines()
    assert lines[0] == "op 'a' failed on target t"
    assert lines[1].split() == ["rule:", "r:", "text"] and lines[2].split() == ["actual:", "3"]
    assert lines[-1].strip() == "hint:   do x"
    assert err.rule_id == "r" and err.args == (str(err),)
    assert format_message("x") == "x"


@rule("t.kernel", ops=("op.Conv",), kmax="k.max")
def _check_kernel(op, limits):
    """Kernel must be at most {kmax}."""
    k = op.attrs["k"]
    if k > limits["k.max"]:
        return Finding(actual=f"kernel {k}", limit=limits["k.max"], hint="use a smaller kernel")
    return None


def test_rule_text_comes_from_the_docstring_with_real_limits():
    assert _check_kernel.describe({"k.max": 5}) == "Kernel must be at most 5."


def test_report_collects_all_violations_then_raises_once():
    ops = [OpView(f"layer{i}", "op.Conv", {"k": k}) for i, k in enumerate([3, 7, 9, 11])]
    report = RuleReport("t").check_ops(ops, lambda _: [_check_kernel], {"k.max": 5})
    assert [v.op_name for v in report.violations] == ["layer1", "layer2", "layer3"]
    assert report.checked == 4 and not report.ok
    with pytest.raises(HardwareLimitError) as exc:
        report.raise_if_errors()
    e = exc.value
    assert len(e.violations) == 3 and e.op_name == "layer1" and e.rule_id == "t.kernel"
    assert e.limit == 5 and e.actual == "kernel 7" and "3 violations" in str(e).splitlines()[0]
    assert '"rule_id": "t.kernel"' in report.to_json()
    assert "layer3" in report.table()
