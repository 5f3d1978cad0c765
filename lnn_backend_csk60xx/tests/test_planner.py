"""Memory planner: greedy offsets without overlap, lower bound, aliasing, spilling to PSRAM, failure report."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import LINGER_DEMO, make_model, snode, tnode

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
        plan_memory(g, share_mem=20000, psram=50000, scratch=False)
    assert info.value.rule_id == "csk60xx.memory.psram_bytes" and info.value.limit == 50000


def test_config_defaults_come_from_target_file():
    cfg = MemoryConfig.from_target()
    assert (cfg.share_mem, cfg.psram, cfg.alignment) == (655360, 8388608, 64)
    assert MemoryConfig.from_target(share_mem=1024).share_mem == 1024


# -- scratch, prefetch, spilling a generated model, reports -----------------------------------------------


def _big_model():
    """A generated IR model needing ~735 KB of share-memory at its first step (602 KB float input + 147 KB int8)."""
    from _helpers import ir_conv_graph

    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (8, 3, 3, 3), dtype=np.int8)
    b = rng.integers(-2000, 2000, 8, dtype=np.int32)
    g = ir_conv_graph((1, 3, 224, 224), w, b, stride=(2, 2), n_x=5, n_w=8, n_o=4, relu=True, name="stem")
    deq = g.nodes.pop()
    from lnn_core.graph import Node

    g.add_node(Node("pool", "MaxPool", ["r"], ["m"], {"kernel_shape": [2, 2], "strides": [2, 2]}, ""))
    g.add_tensor("m", "int8", None, 4)
    deq.inputs = ["m"]
    g.add_node(deq)
    return g, w, b


def test_generated_700kb_model_spills_to_psram_and_the_report_names_it(tmp_path):
    from _helpers import conv2d_ref, quantize

    from lnn_backend_csk60xx.pipeline import pack_graph
    from lnn_backend_csk60xx.report import memory_dict, memory_table, write_reports
    from lnn_backend_csk60xx.simulator import Simulator

    g, w, b = _big_model()
    from lnn_backend_csk60xx.inference import infer_shapes

    unplanned = plan_memory(infer_shapes(g.copy()), share_mem=10 ** 9)
    assert 700 * 1024 <= unplanned.regions[REGION_SHARE].lower_bound <= 760 * 1024  # what it would need
    res = pack_graph(g)
    plan = res.plan
    assert plan.spilled == ["x"] and plan.placements["x"].region == REGION_PSRAM
    assert plan.regions[REGION_SHARE].peak <= 655360 and plan.regions[REGION_PSRAM].peak >= 602112
    assert [s.axis for s in res.passes.splits] == ["rows"]  # the 147 KB int8 input is cut along H too
    text = memory_table(plan, res.passes)
    assert "moved to PSRAM: x" in text and "split: stem" in text and "prefetch:stem/part0" in text
    data = memory_dict(plan, res.passes)
    assert data["spilled_to_psram"] == ["x"] and data["tensors"]["x"]["region"] == "psram"
    files = write_reports(plan, tmp_path / "rep", passes=res.passes, title="big")
    assert {"memory.json", "memory.txt"} <= {f.name for f in files}
    pytest.importorskip("matplotlib")
    png = tmp_path / "rep" / "memory.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    x = (np.random.default_rng(4).standard_normal((1, 3, 224, 224)) * 3).astype(np.float32)
    (_,), dump = Simulator(res.blob).run([x], dump=True)
    ref = np.maximum(conv2d_ref(quantize(x, 5), w, b, [2, 2], [1, 1, 1, 1], [1, 1], 1, 5 + 8 - 4), 0)
    assert np.array_equal(dump["r"], ref)


def test_prefetch_and_workspace_buffers_are_planned_and_shown_separately():
    from _helpers import ir_conv_graph

    from lnn_backend_csk60xx.inference import infer_shapes

    rng = np.random.default_rng(8)
    w = rng.integers(-128, 128, (32, 16, 3, 3), dtype=np.int8)
    b = rng.integers(-99, 99, 32, dtype=np.int32)
    g = infer_shapes(ir_conv_graph((1, 16, 16, 16), w, b))
    plan = plan_memory(g)
    (pre,) = [s for s in plan.scratch.values() if s.kind == "prefetch"]
    # A16(A8(16) * 3 * 3 * A2(32)) weights, then the int32 bias
    assert pre.op == "conv" and pre.size == 16 * 9 * 32 + 4 * 32 and (pre.first_use, pre.last_use) == (0, 1)
    share = plan.regions[REGION_SHARE]
    assert share.prefetch_total == pre.size and share.workspace_total == 0
    assert share.lower_bound >= share.activation_lower_bound
    live = plan.live_bytes(REGION_SHARE)
    assert live["prefetch"][:2] == [(pre.size + 63) // 64 * 64] * 2 and live["prefetch"][2] == 0
    bare = plan_memory(g, scratch=False)
    assert bare.scratch == {} and bare.regions[REGION_SHARE].peak <= share.peak
    # buffers never overlap while live, scratch included
    spans = [(p.offset, p.offset + p.size, p.first_use, p.last_use) for p in plan.placements.values()
             if p.alias_of is None]
    spans += [(s.offset, s.offset + s.size, s.first_use, s.last_use) for s in plan.scratch.values()]
    for i, a in enumerate(spans):
        for c in spans[i + 1:]:
            assert not (a[2] <= c[3] and c[2] <= a[3] and a[0] < c[1] and c[0] < a[1])


def test_spilled_operands_get_workspaces():
    g = _chain(3, shape=(1, 16, 64, 64))  # 64 KB int8 activations, a 256 KB float input
    plan = plan_memory(g, share_mem=200000)
    # the float input and output move: Quant and Dequant (CPU ops) read and write PSRAM directly
    assert sorted(plan.spilled) == ["x", "y"]
    assert [s for s in plan.scratch.values() if s.kind == "workspace"] == []


def test_share_memory_too_small_for_what_cannot_move():
    g = _chain(3)
    with pytest.raises(HardwareLimitError) as info:
        plan_memory(g, share_mem=20000)
    assert info.value.rule_id == "csk60xx.memory.share_mem_bytes" and info.value.limit == 20000
    assert info.value.actual > 20000 and "relu" in str(info.value)


@pytest.mark.skipif(not (LINGER_DEMO / "resnet18-12-regular.onnx").exists(), reason="shared data folder absent")
def test_the_spill_cost_counts_exactly_the_workspaces_the_plan_adds():
    """For every buffer and every step it is live at, the planner's estimate of the workspace that moving it to
    PSRAM adds equals the workspaces the plan then really holds at that step (in-place joins included)."""
    from lnn_backend_csk60xx import planner as P
    from lnn_backend_csk60xx.ops import OpSet
    from lnn_backend_csk60xx.rewrites import run_rewrites
    from lnn_backend_csk60xx.target import load_target

    ops = OpSet.builtin_only()
    g = read_onnx(LINGER_DEMO / "resnet18-12-regular.onnx")
    run_rewrites(g, load_target().limits, ops)  # splits: joins whose inputs live inside their output
    cfg = P.MemoryConfig.from_target()
    groups, _ = P._groups(g, cfg.alignment, ops)
    joins = [n for n in g.nodes if ops[n.op_type].join]
    assert joins, "the ResNet-18 has split convolutions joined in place"
    checked = 0
    for grp in groups:
        work = P._workspace_buffers(g, cfg, set(grp.members), ops)
        for step in sorted(grp.steps):
            planned = sum(w.size for w in work if w.first == step)
            assert P._workspace_cost(g, cfg, grp, step, ops) == planned, (grp.root, g.nodes[step].name)
            checked += 1
    assert checked > 100
