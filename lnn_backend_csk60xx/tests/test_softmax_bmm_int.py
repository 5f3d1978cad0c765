"""SoftmaxInt, LogSoftmaxInt and BmmInt: the C kernels against a pure-Python reference written from the spec's
pseudo-code (spec/int8-seq-ops.md 2.4.4, 2.5.4, 2.9.4; int8-ops.md 3.23 for the model of the HiFi softmax, which is
NOT bit-verified against the vendor) on random shapes (hypothesis), saturation, ties and the overflow bounds; the
linger 1.1.1 file forms; the loader's contract; the "not bit-verified" mark.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import make_model, quantize, tnode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lnn_backend_csk60xx.dialect import read_onnx, write_onnx
from lnn_backend_csk60xx.ops import builtin_ops
from lnn_backend_csk60xx.pipeline import pack_graph, pack_onnx
from lnn_backend_csk60xx.simulator import Simulator
from lnn_core.errors import HardwareLimitError, ModelFileError, SimulatorError
from lnn_core.graph import Graph, Node

# -- the reference, one Python integer at a time --------------------------------------------------------------------

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
POLY = (57364, 446161, 2008107, 5813551, 8388575)


def sat32(v: int) -> int:
    return max(I32_MIN, min(I32_MAX, v))


def rnd(v: int, s: int) -> int:
    """R(v / 2^s) = floor(v / 2^s + 0.5), exactly."""
    return math.floor(v / (1 << s) + 0.5) if abs(v) < 2 ** 52 else (v + (1 << (s - 1))) >> s


def shr(v: int, s: int) -> int:
    return v if s == 0 else (v + (1 << (s - 1))) >> s


def nsa(v: int) -> int:
    """Redundant sign bits of a positive int32: left shifts until bit 30 is set."""
    return 30 - (v.bit_length() - 1)


def softmax_row(x25: list[int]) -> list[int]:
    """int8-ops.md 3.23: the Q25 row's Q15 probabilities."""
    m = max(x25)
    e = []
    for v in x25:
        t = sat32(rnd(sat32(v - m) * 774541002, 31))  # log2-domain Q23
        ex = (t >> 23) + 1
        f = (t & 0x7FFFFF) - 0x800000
        y = POLY[0]
        for p in POLY[1:]:
            y = rnd(y * f, 23) + p
        e.append(math.trunc(y * 2.0 ** ex))
    s = 0
    for v in e:
        s = sat32(s + v)
    k = nsa(s) - 8
    xn = s >> -k if k < 0 else sat32(s << k)
    k += 1
    r = 0xBB5000 - xn
    for _ in range(2):
        c = 2 * (0x400000 - rnd(xn * r, 23))
        r = r + rnd(r * c, 23)
    r = r >> -k if k < 0 else sat32(r << k)
    return [sat32(rnd(r * v, 31)) for v in e]


def log_q25(s: int) -> int:
    return I32_MIN if s <= 0 else min(0, math.floor(math.log(s / 32768.0) * 33554432.0 + 0.5))


def reference(x: np.ndarray, n_x: int, n_o: int, log: bool = False) -> np.ndarray:
    rows = x.reshape(-1, x.shape[-1]).astype(np.int64)
    out = []
    for row in rows:
        y15 = softmax_row([sat32(int(v) << (25 - n_x)) for v in row])
        vals = [shr(log_q25(v), 25 - n_o) for v in y15] if log else [shr(v, 15 - n_o) for v in y15]
        out.append([max(-128, min(127, v)) for v in vals])
    return np.array(out, np.int8).reshape(x.shape)


def bmm_reference(x: np.ndarray, y: np.ndarray, shift: int) -> np.ndarray:
    acc = np.matmul(x.astype(np.int64), y.astype(np.int64))
    return np.clip(acc if shift == 0 else (acc + (1 << (shift - 1))) >> shift, -128, 127).astype(np.int8)


# -- graphs ------------------------------------------------------------------------------------------------------------


def _graph(shape, n_x, n_o, op_type="SoftmaxInt", dim=-1) -> Graph:
    g = Graph(name="sm")
    g.add_tensor("x", "int8", tuple(shape), n_x)
    g.inputs = ["x"]
    g.add_node(Node("sm", op_type, ["x"], ["y"], {"dim": dim}, "thinker"))
    g.add_tensor("y", "int8", None, n_o)
    g.outputs = ["y"]
    return g


def _run(x, n_x, n_o, log=False):
    (y,) = Simulator(pack_graph(_graph(x.shape, n_x, n_o, "LogSoftmaxInt" if log else "SoftmaxInt")).blob).run([x])
    return y


def _bmm_graph(xs, ys, n_x, n_y, n_o) -> Graph:
    g = Graph(name="bmm")
    g.add_tensor("x", "int8", tuple(xs), n_x)
    g.add_tensor("w", "int8", tuple(ys), n_y)
    g.inputs = ["x", "w"]
    g.add_node(Node("bmm", "BmmInt", ["x", "w"], ["z"], {}, "thinker"))
    g.add_tensor("z", "int8", None, n_o)
    g.outputs = ["z"]
    return g


def _run_bmm(x, y, n_x, n_y, n_o):
    (z,) = Simulator(pack_graph(_bmm_graph(x.shape, y.shape, n_x, n_y, n_o)).blob).run([x, y])
    return z


# -- the reference itself ----------------------------------------------------------------------------------------------


def test_reference_approximates_softmax():
    """The model is a softmax to within a few Q15 steps (2 LSB per the vendor header for two elements); the
    polynomial gives 2^f within 2^-17 on [-1, 0) (30 Q23 steps at f = -1)."""
    rng = np.random.default_rng(0)
    for n_x in (2, 4, 6):
        x = rng.integers(-128, 128, (6, 40))
        y15 = np.array([softmax_row([int(v) << (25 - n_x) for v in row]) for row in x])
        xf = x / 2.0 ** n_x
        p = np.exp(xf - xf.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        assert np.max(np.abs(y15 / 32768.0 - p)) < 4 / 32768
    for f in range(-(1 << 23), 0, 4099):
        y = POLY[0]
        for p in POLY[1:]:
            y = rnd(y * f, 23) + p
        assert abs(y / 2.0 ** 23 - 2.0 ** (f / 2.0 ** 23)) < 2 ** -17


def test_the_torch_side_computes_the_reference():
    """lnn_ops_builtin.softmax.softmax_q15 (what QAT trains with) equals the scalar reference, row by row."""
    torch = pytest.importorskip("torch")
    from lnn_ops_builtin.softmax import chip_int

    rng = np.random.default_rng(1)
    for n_x in (0, 3, 7, 12, 25):
        x = rng.integers(-128, 128, (5, 33))
        x[0] = 127
        x[1, :3] = -128
        got = chip_int(torch.from_numpy(x), n_x, False).numpy()
        want = np.array([softmax_row([sat32(int(v) << (25 - n_x)) for v in row]) for row in x])
        np.testing.assert_array_equal(got, want)
        got = chip_int(torch.from_numpy(x), n_x, True).numpy()
        np.testing.assert_array_equal(got, np.vectorize(log_q25)(want))


# -- the kernels -------------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_kernels_on_random_shapes(data):
    lead = tuple(data.draw(st.lists(st.integers(1, 3), min_size=0, max_size=2), label="lead"))
    row = data.draw(st.sampled_from([1, 2, 3, 7, 16, 33, 100]), label="row")
    n_x = data.draw(st.integers(0, 25), label="n_x")
    log = data.draw(st.booleans(), label="log")
    n_o = data.draw(st.integers(-2, 25 if log else 15), label="n_o")
    amp = data.draw(st.sampled_from([1, 2, 8, 128]), label="amp")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    x = np.random.default_rng(seed).integers(-amp, amp, (*lead, row)).astype(np.int8)
    np.testing.assert_array_equal(_run(x, n_x, n_o, log), reference(x, n_x, n_o, log))


def test_saturation_ties_and_extremes():
    """Ties (equal logits: every probability equal, the maximum repeated), one-hot rows, the int8 extremes, Q25
    saturation (n_x = 0: x * 2^25 beyond int32), a single-element row (p = 1: y15 may reach 2^15, the int8 output
    saturates at fine scales), and outputs that round half up at n_o = 0."""
    rows = [np.full(8, 5), np.full(8, -128), np.full(8, 127), np.array([127, 127, -128, -128, 0, 0, 1, -1]),
            np.array([-128] * 7 + [127]), np.arange(8) * 36 - 128, np.array([0, 0, 0, 0, 0, 0, 0, 1])]
    x = np.stack(rows).astype(np.int8)[None]
    for n_x in (0, 1, 4, 7, 25):
        for n_o, log in ((0, False), (7, False), (15, False), (-3, False), (0, True), (4, True), (25, True)):
            np.testing.assert_array_equal(_run(x, n_x, n_o, log), reference(x, n_x, n_o, log))
    one = np.array([[[37]]], np.int8)
    assert _run(one, 4, 15)[0, 0, 0] == 127 and _run(one, 4, 7)[0, 0, 0] == 127
    assert _run(one, 4, 6)[0, 0, 0] == 64 and _run(one, 4, 10, log=True)[0, 0, 0] == 0


def test_the_row_bound_2048_and_the_saturating_sum():
    """Rows of 2048 equal values: the sum of the exponentials (2048 * 2^23 = 2^34) saturates at 2^31 - 1, which
    the model keeps (every probability 2^-11 becomes ~2^-8 of it); 2049 is refused by the loader and the rule."""
    x = np.stack([np.full(2048, 9), np.where(np.arange(2048) % 3, 100, -128),
                  np.random.default_rng(2).integers(-128, 128, 2048)]).astype(np.int8)[None]
    for log in (False, True):
        np.testing.assert_array_equal(_run(x, 3, 12 if not log else 3, log), reference(x, 3, 12 if not log else 3, log))
    e_max = softmax_row([0, 0])[0]
    assert e_max == softmax_row([5 << 25, 5 << 25])[0]
    g = _graph((1, 2049), 3, 7)
    with pytest.raises((ModelFileError, SimulatorError), match="op 'sm': row length 2049 is outside 1..2048"):
        Simulator(pack_graph(g, check=False).blob)
    with pytest.raises(HardwareLimitError, match="softmax.row"):
        pack_graph(g)


def test_loader_refuses_exponents_outside_the_contract():
    for n_x, n_o, op_type, match in ((26, 7, "SoftmaxInt", "input exponent 26 is outside 0..25"),
                                     (-1, 7, "SoftmaxInt", "input exponent -1 is outside 0..25"),
                                     (4, 16, "SoftmaxInt", "output exponent 16 is above 15"),
                                     (4, 26, "LogSoftmaxInt", "output exponent 26 is above 25")):
        with pytest.raises((ModelFileError, SimulatorError), match=match):
            Simulator(pack_graph(_graph((1, 8), n_x, n_o, op_type), check=False).blob)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_bmm_kernel_on_random_shapes(data):
    rank = data.draw(st.sampled_from([2, 3]), label="rank")
    b = data.draw(st.integers(1, 3), label="batch")
    m, k, n = (data.draw(st.integers(1, 40), label=a) for a in "mkn")
    n_x, n_y = data.draw(st.integers(0, 10), label="n_x"), data.draw(st.integers(0, 10), label="n_y")
    n_o = data.draw(st.integers(n_x + n_y - 20, n_x + n_y), label="n_o")
    amp = data.draw(st.sampled_from([1, 4, 128]), label="amp")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="seed"))
    lead = (b,) if rank == 3 else ()
    x = rng.integers(-amp, amp, (*lead, m, k)).astype(np.int8)
    y = rng.integers(-amp, amp, (*lead, k, n)).astype(np.int8)
    np.testing.assert_array_equal(_run_bmm(x, y, n_x, n_y, n_o), bmm_reference(x, y, n_x + n_y - n_o))


def test_bmm_extremes_ties_and_the_right_matrix_bound():
    """Full-scale products saturate both ways; half-way accumulators round up (also negative ones); the largest
    right matrix that fits (K 64, N 512: 32 KB) runs, one column more is refused at pack time."""
    x = np.array([[[-128, -128], [127, 127], [1, 0], [-1, 0], [3, 0], [-3, 0]]], np.int8)
    y = np.array([[[-128, 1], [-128, 0]]], np.int8)
    np.testing.assert_array_equal(_run_bmm(x, y, 3, 3, 5), bmm_reference(x, y, 1))
    assert _run_bmm(x, y, 3, 3, 5)[0, :, 1].tolist() == [-64, 64, 1, 0, 2, -1]  # +-0.5, +-1.5 round half up
    rng = np.random.default_rng(4)
    xb, yb = rng.integers(-128, 128, (1, 3, 64)).astype(np.int8), rng.integers(-128, 128, (1, 64, 512)).astype(np.int8)
    np.testing.assert_array_equal(_run_bmm(xb, yb, 7, 7, 2), bmm_reference(xb, yb, 12))
    with pytest.raises(HardwareLimitError, match="bmm.right_matrix"):
        pack_graph(_bmm_graph((1, 3, 64), (1, 64, 513), 7, 7, 2))
    with pytest.raises((ModelFileError, SimulatorError), match="above n_x \\+ n_y"):
        Simulator(pack_graph(_bmm_graph((1, 3, 4), (1, 4, 2), 3, 3, 7), check=False).blob)


def test_bmm_operands_that_do_not_multiply_are_a_file_error():
    with pytest.raises((ModelFileError, HardwareLimitError), match="do not multiply"):
        pack_graph(_bmm_graph((1, 3, 4), (1, 5, 2), 3, 3, 4))


# -- linger 1.1.1 file forms -------------------------------------------------------------------------------------------


def _attrs(node) -> dict[str, object]:
    return {a.name: (a.f if a.type == a.FLOAT else a.i if a.type == a.INT else a.s.decode()) for a in node.attribute}


@pytest.mark.parametrize("op_type,dim", [("SoftmaxInt", 2), ("SoftmaxInt", -1), ("LogSoftmaxInt", -1)])
def test_linger_softmax_form_reads_packs_and_runs(op_type, dim):
    """Quant -> SoftmaxInt / LogSoftmaxInt (dim as the user gave it) -> Dequant, as linger 1.1.1 writes it."""
    n_o = 7 if op_type == "SoftmaxInt" else 4
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=4, data_bits=8),
             tnode(op_type, ["q"], ["s"], name="sm", scale_x=4, scale_o=n_o, data_bits=8, o_bits=8, dim=dim),
             tnode("Dequant", ["s"], ["y"], name="deq", scale_o=n_o)]
    model = make_model(nodes, {"x": (1, 6, 20)}, {"y": (1, 6, 20)}, {})
    graph = read_onnx(model)
    node = next(n for n in write_onnx(graph).graph.node if n.op_type == op_type)
    assert node.domain == "thinker" and _attrs(node) == {
        "scale_x": 16.0, "scale_o": 128.0 if op_type == "SoftmaxInt" else 16.0, "data_bits": 8, "o_bits": 8,
        "dim": dim, "platform_quant": "luna_quant"}
    x = np.random.default_rng(5).standard_normal((1, 6, 20)).astype(np.float32) * 3
    (y,), dump = Simulator(pack_onnx(model)).run([x], dump=True)
    want = reference(quantize(x, 4), 4, n_o, op_type == "LogSoftmaxInt")
    np.testing.assert_array_equal(dump["s"], want)
    np.testing.assert_array_equal(y, want.astype(np.float32) / 2.0 ** n_o)


def test_linger_log_softmax_with_another_dim_is_refused():
    """The chip reads a LogSoftmaxInt dim other than -1 as axis 1: a 3-D linger file with dim=2 is refused."""
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=4, data_bits=8),
             tnode("LogSoftmaxInt", ["q"], ["s"], name="sm", scale_x=4, scale_o=4, data_bits=8, o_bits=8, dim=2),
             tnode("Dequant", ["s"], ["y"], name="deq", scale_o=4)]
    with pytest.raises(HardwareLimitError, match="softmax.dim") as err:
        pack_onnx(make_model(nodes, {"x": (1, 6, 20)}, {"y": (1, 6, 20)}, {}))
    assert err.value.op_name == "sm" and err.value.actual == "dim=2 of a rank-3 input"


def test_linger_bmm_form_reads_packs_and_runs():
    nodes = [tnode("Quant", ["a"], ["qa"], name="qa", scale_x=4, data_bits=8),
             tnode("Quant", ["b"], ["qb"], name="qb", scale_x=5, data_bits=8),
             tnode("BmmInt", ["qa", "qb"], ["z"], name="bmm", scale_x=4, scale_y=5, scale_o=3, data_bits=8, o_bits=8),
             tnode("Dequant", ["z"], ["y"], name="deq", scale_o=3)]
    model = make_model(nodes, {"a": (2, 5, 12), "b": (2, 12, 7)}, {"y": (2, 5, 7)}, {})
    node = next(n for n in write_onnx(read_onnx(model)).graph.node if n.op_type == "BmmInt")
    assert _attrs(node) == {"scale_x": 16.0, "scale_y": 32.0, "scale_o": 8.0, "data_bits": 8, "o_bits": 8,
                            "platform_quant": "luna_quant"}
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((2, 5, 12)).astype(np.float32), rng.standard_normal((2, 12, 7)).astype(np.float32)
    (y,), dump = Simulator(pack_onnx(model)).run([a, b], dump=True)
    np.testing.assert_array_equal(dump["z"], bmm_reference(quantize(a, 4), quantize(b, 5), 6))


# -- workspace and the mark --------------------------------------------------------------------------------------------


def test_the_plan_holds_the_kernels_workspace_of_8r_bytes():
    """spec 2.4.5 / 2.5.5 / 6.9: the row path keeps an int32 input row and an int32 output row, 8R bytes of
    share-memory (tpacker declares 2R); the plan reserves exactly that for the op's step."""
    from lnn_backend_csk60xx.inference import infer_shapes
    from lnn_backend_csk60xx.planner import REGION_SHARE, plan_memory

    for op_type in ("SoftmaxInt", "LogSoftmaxInt"):
        for r in (8, 300):
            plan = plan_memory(infer_shapes(_graph((3, r), 4, 7, op_type)))
            (ws,) = [s for s in plan.scratch.values() if s.op == "sm" and s.kind == "workspace"]
            assert ws.size == 8 * r and ws.region == REGION_SHARE
            assert plan.regions[REGION_SHARE].workspace_total == 8 * r


def test_softmax_ops_are_marked_not_bit_verified():
    ops = {op.op_type: op for op in builtin_ops()}
    assert not ops["SoftmaxInt"].bit_verified and not ops["LogSoftmaxInt"].bit_verified
    assert ops["BmmInt"].bit_verified and ops["LayerNormInt"].bit_verified
