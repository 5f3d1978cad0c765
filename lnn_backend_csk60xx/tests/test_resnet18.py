"""Acceptance: the linger-exported ResNet-18 reproduces the vendor simulator's outputs bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import LINGER_DEMO

from lnn_backend_csk60xx.dialect import read_onnx
from lnn_backend_csk60xx.pipeline import pack_graph, pack_onnx
from lnn_backend_csk60xx.simulator import Simulator

MODEL = LINGER_DEMO / "resnet18-12-regular.onnx"
pytestmark = pytest.mark.skipif(not LINGER_DEMO.is_dir(),
                                reason=f"shared data folder {LINGER_DEMO} is absent (expected at <clone>/../shared)")


def test_resnet18_bit_exact():
    blob = pack_onnx(MODEL)
    assert blob == pack_onnx(MODEL)  # deterministic
    sim = Simulator(blob, path=str(MODEL))
    inputs = np.load(LINGER_DEMO / "resnet18_inputs.npy")
    expected = np.load(LINGER_DEMO / "resnet18_outputs.npy")
    assert inputs.shape == (4, 3, 32, 32) and expected.shape == (4, 100)
    for row in range(4):
        (out,) = sim.run([inputs[row:row + 1]])
        assert out.dtype == np.float32
        assert np.array_equal(out, expected[row:row + 1]), f"row {row} differs"


def test_resnet18_plan_and_dump():
    res = pack_graph(read_onnx(MODEL))
    share = res.plan.regions["share_mem"]
    # the vendor's packer plans 331,440 bytes; ours counts the weight prefetch buffers too
    assert share.peak <= 331440 and res.plan.spilled == []
    assert share.peak >= share.lower_bound >= share.activation_lower_bound == 196608
    assert share.prefetch_total > 0 and any(s.kind == "prefetch" for s in res.plan.scratch.values())
    assert len(res.passes.fused) == 9 and len(res.passes.splits) == 11  # Relus after iqAdd stay
    sim = Simulator(res.blob)
    x = np.load(LINGER_DEMO / "resnet18_inputs.npy")[:1]
    (out,), dump = sim.run([x], dump=True)
    assert set(dump) == {"input"} | {n.outputs[0] for n in res.graph.nodes}
    assert dump["321"].dtype == np.int8 and dump["321"].shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(dump["output"], out)
    # the logits are Dequant(int8 at 2^4)
    np.testing.assert_array_equal(out, dump["Dequant_output_386"].astype(np.float32) / np.float32(16))


def test_resnet18_runs_with_psram_spill():
    # 200,000 bytes: the three 64 KB operands of each first-stage iqAdd (192 KB) stay, long-lived ones move
    res = pack_graph(read_onnx(MODEL), share_mem=200000)
    assert res.plan.spilled and res.plan.regions["share_mem"].peak <= 200000
    assert res.plan.regions["share_mem"].workspace_total > 0  # PSRAM operands pass through workspaces
    inputs = np.load(LINGER_DEMO / "resnet18_inputs.npy")
    expected = np.load(LINGER_DEMO / "resnet18_outputs.npy")
    (out,) = Simulator(res.blob).run([inputs[:1]])
    assert np.array_equal(out, expected[:1])


def test_resnet18_unfused_and_unsplit_is_identical():
    """The passes change no result: the graph as written gives the same bits."""
    inputs = np.load(LINGER_DEMO / "resnet18_inputs.npy")[:2]
    graph = read_onnx(MODEL)
    plain = Simulator(pack_graph(graph, fuse_relu=False, split=False, check=False, scratch=False).blob)
    passed = Simulator(pack_graph(graph).blob)
    for row in range(2):
        assert np.array_equal(plain.run([inputs[row:row + 1]])[0], passed.run([inputs[row:row + 1]])[0])
