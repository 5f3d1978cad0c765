"""The structure-aware fuzz of benchmarks/fuzz_modelbin.py, small and in process (the 20,000-case campaign under
ASan/UBSan is that script with --asan; backend README, "Validation"). Every mutation class runs: raw corruptions,
structural fields, schedule edits (reorder, move, drop, duplicate, self-write, rewire), placement, exponent edits with
a valid CRC, op attributes, geometry and a plugin op's attribute JSON."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_modelbin.py"


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("_fuzz_modelbin_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_small_structure_aware_fuzz_finds_nothing(fuzz):
    seeds = fuzz.seeds()
    canons = [fuzz.canonical(s["blob"]) for s in seeds]
    seen: dict[str, Counter] = {}
    findings = []
    for i in range(900):
        s = i % len(seeds)
        kind, outcome, finding = fuzz.run_case(seeds[s], i, 4242, canons[s])
        seen.setdefault(kind, Counter())[outcome] += 1
        if finding:
            findings.append((i, seeds[s]["name"], kind, outcome, finding))
    assert findings == []
    assert set(seen) == set(fuzz.KINDS), seen
    for kind in fuzz.KINDS:  # every class reaches the loader's refusals
        assert seen[kind]["refused"] > 0, (kind, seen[kind])
    for kind in ("offset", "field", "rewire", "reorder"):  # and some edits load and compute the original exactly
        assert seen[kind]["same"] > 0, (kind, seen[kind])
    for kind in ("exponent", "json"):  # and some load as other valid models, which run deterministically
        assert seen[kind]["changed"] > 0, (kind, seen[kind])


def test_the_verdict_tells_a_neutral_edit_from_a_semantic_one(fuzz):
    from _modelbin import ModelBin

    seed = fuzz.seeds()[0]
    canon = fuzz.canonical(seed["blob"])
    m = ModelBin.read(seed["blob"])
    a, b = (next(i for i, op in enumerate(m.ops) if op[1] == n) for n in ("conva", "convb"))
    m.ops[a], m.ops[b] = m.ops[b], m.ops[a]  # independent ops swapped: the same computation
    assert fuzz.canonical(m.build()) == canon
    t = m.tensors[1]
    m.tensors[1] = (*t[:5], t[5] + 1, *t[6:])  # one exponent changed: another model
    assert fuzz.canonical(m.build()) != canon
