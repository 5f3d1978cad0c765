"""One op, one place: each built-in IR op type is named by at most two Python files of the backend (its
family module and at most one other, a rewrite that is about that op), and its C implementation lives in
the one family file its ``Lowering`` names, registered in ``csrc/registry.c``.

Measured as a reader would search: the op type as a whole word anywhere in a source file, prose included."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lnn_backend_csk60xx
from lnn_backend_csk60xx._sim import lib
from lnn_backend_csk60xx.ops import FAMILIES, builtin_ops

SRC = Path(lnn_backend_csk60xx.__file__).resolve().parent
CSRC = Path(__file__).resolve().parents[1] / "csrc"
OPS = {op.op_type: (family, op) for family in FAMILIES for op in family.OPS}


def _sources() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in sorted(SRC.rglob("*.py"))}


@pytest.mark.parametrize("op_type", sorted(OPS))
def test_a_builtin_op_is_named_by_its_family_module_and_at_most_one_other_file(op_type):
    family, _ = OPS[op_type]
    word = re.compile(rf"\b{re.escape(op_type)}\b")
    naming = sorted(str(p.relative_to(SRC)) for p, text in _sources().items() if word.search(text))
    assert f"ops/{family.__name__.rsplit('.', 1)[1]}.py" in naming
    assert len(naming) <= 2, f"{op_type} is named by {naming}"


@pytest.mark.skipif(not (CSRC / "registry.c").exists(), reason="the C sources are not next to the tests")
@pytest.mark.parametrize("op_type", sorted(OPS))
def test_a_builtin_op_runs_the_c_kernel_of_its_family_file(op_type):
    _, op = OPS[op_type]
    low = op.lowerings["lnn"]
    table = (CSRC / "registry.c").read_text()
    symbols = {int(getattr(lib, code)): sym for code, sym in re.findall(r"\{(LNN_SIM_OP_\w+), &(lnn_op_\w+)\}", table)}
    symbol = symbols[low.code]
    family_file = CSRC / "ops" / low.c_file
    assert re.search(rf"const lnn_op_kernel {symbol}\b", family_file.read_text()), (symbol, family_file)
    others = [p.name for p in (CSRC / "ops").glob("*.c") if p != family_file
              and re.search(rf"const lnn_op_kernel {symbol}\b", p.read_text())]
    assert others == []


def test_the_family_index_registers_every_family_op_once():
    assert [op.op_type for op in builtin_ops()] == [t for family in FAMILIES for t in (o.op_type for o in family.OPS)]
    assert len(OPS) == len(builtin_ops())
