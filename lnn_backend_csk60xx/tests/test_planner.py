"""Memory planner: greedy offsets without overlap, lower bound, aliasing, spilling to PSRAM, failure report."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import make_model, snode, tnode

from lnn_backend_csk60xx.dialect import read_onnx
from lnn_backend_csk60xx.planner import REGION_PSRAM, REGION_SHARE, GreedyPlanner, MemoryConfig, plan_memory
from lnn_core.errors import HardwareLimitError


@pytest.mark.parametrize("seed", range(20))
def test_greedy_never_overlaps_and_respects_bounds(seed):
    rng = np.random.default_rng(seed)
    p = GreedyPlanner(64)
    for _ in range(40):
        a = int(rng.integers(0, 30))
        p.add_buffer(int(rng.integers(1, 5000)), a, a + int(rng.integers(0, 6)))
    assert p.overlaps() == []
    assert all(o % 64 == 0 for o in p.offsets)
    assert p.lower_bound() <= p.max_size + 63


def test_greedy_reuses_dead_buffers():
    p = GreedyPlanner(64)
    ids = [p.add_buffer(1000, i, i + 1) for i in range(10)]  # a chain: only neighbours are live together
    assert p.max_size <= 2 * 1024
    assert p.offset(ids[0]) != p.offset(ids[1])
    assert p.lower_bound() == 2 * 1024


def test_overlaps_detects_a_bad_plan():
    p = GreedyPlanner(64)
    p.add_buffer(100, 0, 1)
    p.add_buffer(100, 1, 2)
    assert len(p.offsets) == 2  # plan
    p._buffers[1].offset = p._buffers[0].offset
    assert p.overlaps() == [(0, 1)]


def _chain(n_relu: int, shape=(1, 16, 32, 32)):
    nodes = [tnode("Quant", ["x"], ["t0"], name="quant", scale_x=4)]
    for i in range(n_relu):
        nodes.append(snode("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"relu{i}"))
    nodes.append(snode("Reshape", [f"t{n_relu}", "shape"], ["flat"], name="reshape"))
    nodes.append(tnode("Dequant", ["flat"], ["y"], name="deq", scale_o=4))
    return read_onnx(make_model(nodes, {"x": shape}, {"y": None}, {"shape": np.array([1, -1], np.int64)}))


def test_plan_graph_alias_and_lifetimes():
    g = _chain(3)
    plan = plan_memory(g)
    pl = plan.placements
    assert pl["flat"].alias_of == "t3" and pl["flat"].offset == pl["t3"].offset
    assert pl["x"].first_use == 0 and pl["y"].last_use == len(g.nodes) - 1
    share = plan.regions[REGION_SHARE]
    assert share.limit == 655360 and plan.spilled == []
    # float input (64 KB) and one int8 activation (16 KB) plus the next are live at once
    assert share.peak == share.lower_bound
    d = plan.to_dict()
    assert d["tensors"]["t1"]["region"] == REGION_SHARE and d["regions"][REGION_SHARE]["peak"] == share.peak


def test_spill_to_psram_and_report():
    g = _chain(3)
    plan = plan_memory(g, share_mem=40000)
    assert plan.spilled  # the 64 KB float input cannot stay in share-memory
    assert plan.placements["x"].region == REGION_PSRAM
    assert plan.regions[REGION_SHARE].peak <= 40000
    for region in plan.regions.values():
        placed = [p for p in plan.placements.values() if p.region == region.name]
        assert all(p.offset + p.size <= region.size for p in placed)
    with pytest.raises(HardwareLimitError) as info:
        plan_memory(g, share_mem=20000, psram=50000)
    assert info.value.rule_id == "csk60xx.memory.psram_bytes" and info.value.limit == 50000


def test_config_defaults_come_from_target_file():
    cfg = MemoryConfig.from_target()
    assert (cfg.share_mem, cfg.psram, cfg.alignment) == (655360, 8388608, 64)
    assert MemoryConfig.from_target(share_mem=1024).share_mem == 1024
