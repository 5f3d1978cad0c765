"""``lnn rules`` prints plain text, ``lnn rules --markdown`` Markdown (issue 11 item 9): the same rows in each."""

from __future__ import annotations

import types

import lnn_core
from lnn_core.cli import main
from lnn_core.ops import OpFamily
from lnn_core.rules import rule
from lnn_core.targets import Target
from lnn_core.testing import isolated_host


@rule("t.width", ops=("x.Op",), max_width="x.width")
def _width(op, limits):
    """Width | height must be at most {max_width}."""


def _plugin() -> types.ModuleType:
    mod = types.ModuleType("doc_plugin")

    @lnn_core.hookimpl
    def lnn_register_targets(registry):
        registry.add(Target("t", "Test | chip", "pow2-sym-halfup", {"x.width": 7}))

    @lnn_core.hookimpl
    def lnn_register_ops(registry):
        registry.add(OpFamily(id="x.Op", kind="passthrough", methods=("x_op",), description="a|b op"))

    @lnn_core.hookimpl
    def lnn_op_rules(op_type, target):
        return [_width] if op_type == "x.Op" and target == "t" else None

    mod.lnn_register_targets, mod.lnn_register_ops, mod.lnn_op_rules = (
        lnn_register_targets, lnn_register_ops, lnn_op_rules)
    return mod


def test_markdown_is_markdown_and_plain_is_not(capsys):
    host = isolated_host([_plugin()])
    assert main(["rules", "--markdown"], host=host) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Supported operators and hardware rules\n")
    assert "| `x.Op` | passthrough | `Tensor.x_op()` | a\\|b op |" in md
    assert "## Target `t`: Test \\| chip" in md
    assert "| `t.width` | `x.Op` | Width \\| height must be at most 7. |" in md
    for line in md.splitlines():  # every table row has as many cells as its header
        if line.startswith("|"):
            assert line.replace("\\|", "").count("|") in (4, 5), line
    assert main(["rules"], host=host) == 0
    text = capsys.readouterr().out
    assert text != md and "#" not in text and "|---" not in text
    assert "  x.Op  (passthrough) a|b op\n      replaces Tensor.x_op()\n" in text
    assert "target t: Test | chip (1 rules)\n  t.width  [x.Op]\n      Width | height must be at most 7.\n" in text


def test_an_unknown_target_is_an_error_listing_the_known_ones(capsys):
    assert main(["rules", "--target", "tt", "--markdown"], host=isolated_host([_plugin()])) == 2
    err = capsys.readouterr().err
    assert err.startswith("RegistryError: unknown target 'tt'") and "registered: t" in err


def test_markdown_names_each_function_spelling_once_with_its_module(capsys):
    import operator

    import torch

    mod = types.ModuleType("spell_plugin")

    @lnn_core.hookimpl
    def lnn_register_ops(registry):
        registry.add(OpFamily(id="x.Add", kind="passthrough", functions=(operator.add, torch.add, torch.add),
                              modules=(torch.nn.Identity,)))

    mod.lnn_register_ops = lnn_register_ops
    assert main(["rules", "--markdown"], host=isolated_host([mod])) == 0
    assert "| `x.Add` | passthrough | `nn.Identity`, `operator.add`, `torch.add` |" in capsys.readouterr().out
