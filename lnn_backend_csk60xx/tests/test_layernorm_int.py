"""LayerNormInt: the C kernel against a numpy reference written from spec/int8-seq-ops.md 2.3.4 on random shapes,
saturation, ties and the int32 overflow bound (T <= 362, spec 2.3.5 / 6.4); the linger 1.1.1 file form; the rules.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import make_model, quantize, tnode

from lnn_backend_csk60xx.check import check_graph
from lnn_backend_csk60xx.dialect import read_onnx, write_onnx
from lnn_backend_csk60xx.pipeline import pack_graph, pack_onnx
from lnn_backend_csk60xx.simulator import Simulator
from lnn_core.errors import HardwareLimitError, ModelFileError, SimulatorError
from lnn_core.graph import Graph, Node

# spec 2.3.4: TBL[i] = min(32767, floor(2^14 / sqrt((i + 256) / 1024))), i = 0..767 (float formula, as written)
TBL = np.array([min(32767, math.floor(2.0 ** 14 / math.sqrt((i + 256) / 1024))) for i in range(768)], np.int64)


def wrap32(v: np.ndarray) -> np.ndarray:
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def shr(v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """SHR with s > 0 (per element): floor(v / 2^s + 0.5)."""
    return (v + (np.int64(1) << (s - 1))) >> s


def q_eps(n_x: int, t: int) -> int:
    f = np.float32(np.float32(1e-5) * np.float32(1 << (2 * n_x)))
    f = np.float32(f * np.float32(t))
    f = np.float32(f * np.float32(t))
    return math.floor(float(f) + 0.5)


def reference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, n_x: int, n_g: int, n_o: int) -> np.ndarray:
    """spec 2.3.4, row by row over the last len(gamma) elements."""
    t = gamma.size
    rows = x.reshape(-1, t).astype(np.int64)
    s1 = rows.sum(axis=1)
    s2 = (rows * rows).sum(axis=1)
    d = wrap32(t * s2) - wrap32(s1 * s1) + q_eps(n_x, t)
    assert np.all(d >= 0) and np.all(d < 2 ** 48), "outside the kernel's defined range"
    msb = np.array([int(v).bit_length() - 1 for v in d])
    k = msb // 2
    norm = np.where(2 * k >= 8, d >> np.maximum(2 * k - 8, 0), d << np.maximum(8 - 2 * k, 0))
    r = np.where(d == 0, TBL[0], TBL[np.clip(norm, 256, 1023) - 256])
    sh = np.where(d == 0, 4, k + 5)
    num = np.clip(np.clip(t * rows, -2 ** 31, 2 ** 31 - 1) - s1[:, None], -2 ** 31, 2 ** 31 - 1)
    u = np.clip(shr(num * r[:, None], sh[:, None]), -32768, 32767)
    acc = u * gamma.astype(np.int64) + beta.astype(np.int64)
    s = 10 + n_g - n_o
    y = acc if s == 0 else shr(acc, np.int64(s))
    return np.clip(y, -128, 127).astype(np.int8).reshape(x.shape)


def _graph(shape, gamma, beta, n_x, n_g, n_o, *, beta_exp=None) -> Graph:
    g = Graph(name="ln")
    g.add_tensor("x", "int8", tuple(shape), n_x)
    g.inputs = ["x"]
    g.add_initializer("gamma", np.asarray(gamma, np.int16), n_g)
    g.add_initializer("beta", np.asarray(beta, np.int32), 10 + n_g if beta_exp is None else beta_exp)
    g.add_node(Node("ln", "LayerNormInt", ["x", "gamma", "beta"], ["y"], {}, "thinker"))
    g.add_tensor("y", "int8", None, n_o)
    g.outputs = ["y"]
    return g


def _run(x, gamma, beta, n_x, n_g, n_o):
    (y,) = Simulator(pack_graph(_graph(x.shape, gamma, beta, n_x, n_g, n_o)).blob).run([x])
    return y


def test_table_formula_equals_the_integer_form():
    """The kernel computes the table as isqrt(2^38 // t); the spec's float formula gives the same 768 values, and
    the anchors: 32767 at t = 256 (2^15 capped), 2^14 at t = 1024 / 1 (sqrt(1) = 1) would be i = 768 (out)."""
    assert TBL[0] == 32767 and TBL[1024 - 256 - 1] == math.floor(2 ** 14 / math.sqrt(1023 / 1024))
    assert all(TBL[i] == min(32767, math.isqrt((1 << 38) // (i + 256))) for i in range(768))
    assert np.all(np.diff(TBL) <= 0)


def test_reference_approximates_layer_norm():
    """u / 2^10 is (x - mean) / std to within a few Q10 steps; the reference is not vacuous."""
    rng = np.random.default_rng(1)
    x = rng.integers(-100, 100, (8, 64)).astype(np.int8)
    y = reference(x, np.full(64, 1 << 14, np.int16), np.zeros(64, np.int32), 4, 14, 5)  # y = u / 2^10 at n_o 5
    xf = x.astype(np.float64)
    ref = (xf - xf.mean(1, keepdims=True)) / np.sqrt(xf.var(1, keepdims=True) + 1e-5 * 256)
    assert np.max(np.abs(y / 32.0 - np.clip(ref, -4, 127 / 32))) <= 1.5 / 32


@pytest.mark.parametrize("seed", range(12))
def test_kernel_on_random_shapes(seed):
    rng = np.random.default_rng(seed)
    t = int(rng.choice([4, 5, 7, 16, 33, 64, 100, 255, 362]))
    lead = tuple(int(v) for v in rng.integers(1, 4, size=int(rng.integers(2, 4))))
    n_x, n_g = int(rng.integers(0, 16)), int(rng.integers(6, 15))
    n_o = int(rng.integers(n_g - 6, 10 + n_g + 1))
    amp = int(rng.choice([1, 3, 20, 128]))
    x = rng.integers(-amp, amp, (*lead, t)).astype(np.int8)
    gamma = rng.integers(-32768, 32768, t).astype(np.int16)
    beta = rng.integers(-(1 << 30), 1 << 30, t).astype(np.int32)
    y = _run(x, gamma, beta, n_x, n_g, n_o)
    np.testing.assert_array_equal(y, reference(x, gamma, beta, n_x, n_g, n_o))


def test_kernel_over_the_last_two_dimensions():
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, (2, 3, 4, 5)).astype(np.int8)
    gamma = rng.integers(-20000, 20000, 20).astype(np.int16)
    beta = rng.integers(-1000, 1000, 20).astype(np.int32)
    np.testing.assert_array_equal(_run(x, gamma, beta, 3, 13, 4), reference(x, gamma, beta, 3, 13, 4))


def test_saturation_ties_and_constant_rows():
    """Constant rows (D = q_eps only, u = 0), rows at the int8 extremes, the D = 0 branch (n_x = 0: q_eps = 0),
    output saturation both ways, and output shifts whose half-way points are hit (beta odd multiples of 2^(s-1))."""
    t = 8
    rows = [np.full(t, -128), np.full(t, 127), np.full(t, 0), np.array([-128, 127] * 4),
            np.array([-128] + [127] * 7), np.array([1, 0, 0, 0, 0, 0, 0, 0]), np.arange(t) - 4]
    x = np.stack(rows).astype(np.int8)[None]
    gamma = np.full(t, 32767, np.int16)
    for n_x in (0, 7, 15):
        for beta0, n_o in ((0, 0), (1 << 24, 8), (-(1 << 30), 3), (3 << 13, 10), (5 << 13, 10)):
            beta = np.full(t, beta0, np.int32)
            y = _run(x, gamma, beta, n_x, 14, n_o)
            np.testing.assert_array_equal(y, reference(x, gamma, beta, n_x, 14, n_o))
    # ties: u * gamma + beta exactly at k + 1/2 output steps rounds half up (SHR), also for negatives
    x = np.array([[[0, 0, 0, 0]]], np.int8)  # u = 0 -> acc = beta
    beta = np.array([1 << 13, -(1 << 13), 3 << 13, -(3 << 13)], np.int32)  # shift 14: +-0.5, +-1.5
    y = _run(x, np.ones(4, np.int16), beta, 4, 4, 0)
    np.testing.assert_array_equal(y[0, 0], [1, 0, 2, -1])
    # saturation of the output: a large gamma at a fine output scale
    x = np.array([[[-128, 127, 0, 5]]], np.int8)
    y = _run(x, np.full(4, 32767, np.int16), np.zeros(4, np.int32), 2, 14, 24)
    assert set(y[0, 0].tolist()) <= {-128, 127, 0} and y[0, 0, 0] == -128 and y[0, 0, 1] == 127


def test_the_int32_bound_is_met_at_362_and_refused_above():
    """T = 362 is the largest row whose T * sum(x^2) and (sum x)^2 stay below 2^31 for every int8 row (the
    full-scale -128 row and a half-and-half extreme row are exact there); T = 363 can wrap (negative D, an
    out-of-bounds table read on the chip), so the loader refuses it, and T = 3 (scratch aliasing)."""
    t = 362
    assert t * t * 128 * 128 < 2 ** 31 <= 363 * 363 * 128 * 128
    x = np.stack([np.full(t, -128), np.where(np.arange(t) % 2, 127, -128), np.where(np.arange(t) < 181, -128, 0),
                  np.where(np.arange(t) == 0, 127, -128)]).astype(np.int8)[None]
    rng = np.random.default_rng(3)
    gamma = rng.integers(-32768, 32768, t).astype(np.int16)
    beta = rng.integers(-(1 << 20), 1 << 20, t).astype(np.int32)
    np.testing.assert_array_equal(_run(x, gamma, beta, 7, 13, 6), reference(x, gamma, beta, 7, 13, 6))
    # a row that wraps at 364: the reference sees the negative D the chip would index with
    xw = np.where(np.arange(364) == 0, 127, -128).astype(np.int64)
    d = wrap32(364 * (xw * xw).sum()) - wrap32(xw.sum() ** 2)
    assert d < 0
    for bad in (363, 3):
        g = _graph((1, 2, bad), np.ones(bad), np.zeros(bad), 7, 13, 6)
        with pytest.raises((ModelFileError, SimulatorError), match=f"op 'ln': row length {bad} is outside 4..362"):
            Simulator(pack_graph(g, check=False).blob)


def test_loader_refuses_exponents_outside_the_contract():
    for n_x, n_o, beta_exp, match in ((16, 5, None, "input exponent 16 is outside 0..15"),
                                      (-1, 5, None, "input exponent -1 is outside 0..15"),
                                      (4, 25, None, "output exponent 25 is above 10 \\+ gamma's exponent \\(14\\)"),
                                      (4, 5, 14, "beta's scale 2\\*\\*14 is not 2\\*\\*\\(10 \\+ n_g\\) = 2\\*\\*24")):
        g = _graph((1, 2, 8), np.ones(8), np.zeros(8), n_x, 14, n_o, beta_exp=beta_exp)
        with pytest.raises((ModelFileError, SimulatorError, HardwareLimitError), match=match):
            Simulator(pack_graph(g, check=False).blob)


def test_linger_file_form_reads_packs_and_runs():
    """Quant -> LayerNormInt (gamma int16, beta int32 without a scale attribute) -> Dequant, as linger 1.1.1 writes
    it; beta gets 10 + n_g; the writer gives the same attributes back."""
    rng = np.random.default_rng(5)
    t = 24
    gamma = rng.integers(-30000, 30000, t).astype(np.int16)
    beta = rng.integers(-50000, 50000, t).astype(np.int32)
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=5, data_bits=8),
             tnode("LayerNormInt", ["q", "gamma", "beta"], ["l"], name="ln", scale_x=5, scale_w=13, scale_o=4,
                   data_bits=8, parameter_bits=16, o_bits=8),
             tnode("Dequant", ["l"], ["y"], name="deq", scale_o=4)]
    model = make_model(nodes, {"x": (1, 6, t)}, {"y": (1, 6, t)}, {"gamma": gamma, "beta": beta})
    graph = read_onnx(model)
    assert graph.tensors["beta"].exponent == 23 and graph.tensors["gamma"].exponent == 13
    node = next(n for n in write_onnx(graph).graph.node if n.op_type == "LayerNormInt")
    attrs = {a.name: (a.f if a.type == a.FLOAT else a.i if a.type == a.INT else a.s.decode()) for a in node.attribute}
    assert node.domain == "thinker" and list(node.input) == ["q", "gamma", "beta"]
    assert attrs == {"scale_x": 32.0, "scale_w": 8192.0, "scale_o": 16.0, "data_bits": 8, "parameter_bits": 16,
                     "o_bits": 8, "platform_quant": "luna_quant"}
    x = rng.standard_normal((1, 6, t)).astype(np.float32) * 2
    (y,), dump = Simulator(pack_onnx(model)).run([x], dump=True)
    q = quantize(x, 5)
    np.testing.assert_array_equal(dump["l"], reference(q, gamma, beta, 5, 13, 4))
    np.testing.assert_array_equal(y, reference(q, gamma, beta, 5, 13, 4).astype(np.float32) / 16)


def _violations(graph: Graph) -> dict[str, object]:
    return {v.rule_id: v for v in check_graph(graph).violations if v.severity == "error"}


def test_rules_name_the_node_limit_and_actual():
    ok = _graph((1, 2, 8), np.ones(8), np.zeros(8), 4, 14, 5)
    assert _violations(ok) == {}
    v = _violations(_graph((1, 2, 400), np.ones(400), np.zeros(400), 4, 14, 5))["csk60xx.layernorm.row"]
    assert v.op_name == "ln" and v.limit == "4 <= T <= 362" and v.actual == "row of 400" and "at most 362" in v.hint
    v = _violations(_graph((2, 3), np.ones(3), np.zeros(3), 4, 14, 5))
    assert v["csk60xx.layernorm.row"].actual == "row of 3" and v["csk60xx.layernorm.rank"].actual == "rank 2"
    v = _violations(_graph((1, 2, 8), np.ones(8), np.zeros(8), -2, 14, 5))["csk60xx.layernorm.in_exponent"]
    assert v.limit == "0 <= n_x <= 15" and v.actual == "n_x -2"
    v = _violations(_graph((1, 2, 8), np.ones(8), np.zeros(8), 4, 10, 21))["csk60xx.layernorm.out_exponent"]
    assert v.limit == "n_o <= 20" and v.actual == "n_o 21 > 10 + n_g 10"
    with pytest.raises(HardwareLimitError, match="layernorm.row"):
        pack_graph(_graph((1, 2, 400), np.ones(400), np.zeros(400), 4, 14, 5))


def test_gamma_that_matches_no_row_is_a_file_error():
    g = _graph((1, 4, 6), np.ones(5), np.zeros(5), 4, 14, 5)
    with pytest.raises((ModelFileError, HardwareLimitError), match="gamma/beta do not match the normalized row"):
        pack_graph(g)


def test_the_plan_holds_the_kernels_workspace_of_8t_bytes():
    """spec 2.3.5 / 6.9: the kernel writes int32 products at byte offset 4T, so it needs 8T bytes of share-memory
    (tpacker declares max(2T + 8, 4T)); the plan reserves exactly that for the op's step."""
    from lnn_backend_csk60xx.inference import infer_shapes
    from lnn_backend_csk60xx.planner import REGION_SHARE, plan_memory

    for t in (8, 300):
        g = _graph((1, 3, t), np.ones(t), np.zeros(t), 4, 14, 5)
        plan = plan_memory(infer_shapes(g))
        (ws,) = [s for s in plan.scratch.values() if s.op == "ln" and s.kind == "workspace"]
        assert ws.size == 8 * t and ws.region == REGION_SHARE and ws.first_use == ws.last_use == 0
        assert plan.regions[REGION_SHARE].workspace_total == 8 * t
