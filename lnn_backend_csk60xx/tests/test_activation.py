"""iqSigmoid / iqTanh: the C kernels against a numpy reference written from spec/int8-seq-ops.md 1.3 and 2.6.4,
on all 65536 int16 inputs at every input exponent lnn exports (11..31); the linger 1.1.1 file form; the rules.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import make_model, quantize, tnode

from lnn_backend_csk60xx.check import check_graph
from lnn_backend_csk60xx.dialect import read_onnx, write_onnx
from lnn_backend_csk60xx.pipeline import pack_graph, pack_onnx
from lnn_backend_csk60xx.simulator import Simulator
from lnn_core.errors import HardwareLimitError, ModelFileError, SimulatorError
from lnn_core.graph import Graph, Node

# spec 1.3: segment upper bounds B[s+1], slopes K, shifts, offsets (sigmoid: C0 for t >= 0, C1 below)
SIG_B = [971, 1699, 2347, 2974, 3614, 4291, 5026, 5861, 6831, 7864, 8987, 10375, 11594, 13168, 14730, 32768]
SIG_K = [32316, 29471, 25891, 22068, 18225, 29057, 22206, 16113, 10881, 27353, 16611, 9242, 4618, 20670, 8610, 693]
SIG_SH = [13] * 5 + [14] * 4 + [16] * 4 + [19] * 3
SIG_C0 = [16384, 16721, 17464, 18559, 19954, 21585, 23380, 25249, 27121, 28807, 30096, 31107, 31839, 32199, 32502,
          32724]
SIG_C1 = [16384, 16047, 15304, 14209, 12814, 11183, 9388, 7519, 5647, 3961, 2672, 1661, 929, 569, 266, 44]
TANH_B = [512, 888, 1226, 1558, 1899, 2264, 2670, 3146, 3734, 4297, 4761, 5466, 6151, 7193, 8093, 32768]
TANH_K = [32266, 29154, 25374, 21309, 17272, 26886, 19904, 13765, 8599, 19497, 12047, 7324, 3373, 26820, 5531, 337]
TANH_SH = [11] * 5 + [12] * 4 + [14] * 4 + [18] * 3
TANH_C = [0, 778, 2417, 4851, 7922, 11474, 15334, 19335, 23303, 26699, 28653, 30026, 31344, 31981, 32565, 32725]

ALL16 = np.arange(-32768, 32768, dtype=np.int64)
EXPONENTS = range(11, 32)  # int8 exponents 3..23 after the x256 Requant


def _segment(bounds: list[int], a: np.ndarray) -> np.ndarray:
    """The smallest s with a <= B[s+1]."""
    return np.searchsorted(np.array(bounds), a, side="left")


def sig15(t: np.ndarray) -> np.ndarray:
    s = _segment(SIG_B, np.abs(t))
    k, sh = np.array(SIG_K)[s], np.array(SIG_SH)[s]
    return np.floor_divide(k * t, np.int64(1) << sh) + np.where(t >= 0, np.array(SIG_C0)[s], np.array(SIG_C1)[s])


def tanh15(t: np.ndarray) -> np.ndarray:
    a = np.where(t == -32768, 32767, np.abs(t))
    s = _segment(TANH_B, a)
    k, sh, c = np.array(TANH_K)[s], np.array(TANH_SH)[s], np.array(TANH_C)[s]
    return np.where(t >= 0, np.floor_divide(k * a, np.int64(1) << sh) + c,
                    np.floor_divide(-k * a, np.int64(1) << sh) - c)


def shr(v: np.ndarray, s: int) -> np.ndarray:
    return v if s == 0 else (v + (np.int64(1) << np.int64(s - 1))) >> np.int64(s)


def reference(op: str, x16: np.ndarray, n_x: int) -> np.ndarray:
    """spec 2.6.4: Q11 by a right shift (saturated to int16), the PWL, SAT_16, then Q15 -> Q7 with SAT_8."""
    t = np.clip(shr(x16.astype(np.int64), n_x - 11), -32768, 32767)
    y15 = np.clip(sig15(t) if op == "iqSigmoid" else tanh15(t), -32768, 32767)
    return np.clip(shr(y15, 8), -128, 127).astype(np.int8)


def _graph(op: str, n_x: int, shape: tuple[int, ...], n_o: int = 7, dtype: str = "int16") -> Graph:
    g = Graph(name="act")
    g.add_tensor("x", dtype, shape, n_x)
    g.inputs = ["x"]
    g.add_node(Node("act", op, ["x"], ["y"], {}, "thinker"))
    g.add_tensor("y", "int8", None, n_o)
    g.outputs = ["y"]
    return g


def test_reference_is_sane():
    """The reference's own anchors: sigmoid(0) = 0.5 (Q15 16384), monotone, tanh(0) = 0, saturation at the ends."""
    assert sig15(np.array([0]))[0] == 16384 and tanh15(np.array([0]))[0] == 0
    s = sig15(ALL16)
    assert np.all(np.diff(s) >= 0) and s[0] >= 0 and s[-1] <= 32767
    t = tanh15(ALL16)
    assert np.all(np.diff(t) >= 0) and t[-1] == 32725 + (337 * 32767 >> 18)
    # int8 outputs near the float functions (the PWL is accurate to about 1 LSB of Q7)
    x = ALL16[::97]
    for op, f in (("iqSigmoid", lambda v: 1 / (1 + np.exp(-v))), ("iqTanh", np.tanh)):
        y = reference(op, x, 11).astype(np.float64) / 128
        assert np.max(np.abs(y - f(x / 2048.0))) < 1.6 / 128


@pytest.mark.parametrize("op", ["iqSigmoid", "iqTanh"])
def test_kernel_on_every_int16_input_at_every_exponent(op):
    x = ALL16.astype(np.int16)
    for n_x in EXPONENTS:
        (y,) = Simulator(pack_graph(_graph(op, n_x, x.shape)).blob).run([x])
        ref = reference(op, x, n_x)
        bad = np.flatnonzero(y != ref)
        assert bad.size == 0, f"{op} n_x={n_x}: {bad.size} mismatches, first at x={x[bad[0]]}: " \
                              f"{y[bad[0]]} != {ref[bad[0]]}"


@pytest.mark.parametrize("op", ["iqSigmoid", "iqTanh"])
def test_loader_refuses_what_the_kernel_cannot_do(op):
    """Below Q11 the chip feeds x unscaled (sigmoid) or unchanged (tanh); its output is Q7 whatever scale_o says:
    the simulator's loader refuses both rather than emulate them (spec 6.1), and a packer that validates with the
    loader refuses to write them."""
    with pytest.raises((ModelFileError, SimulatorError), match="op 'act': input exponent 10 is below 11"):
        Simulator(pack_graph(_graph(op, 10, (4,)), check=False).blob)
    with pytest.raises((ModelFileError, SimulatorError), match="op 'act': output exponent 8 is not 7"):
        Simulator(pack_graph(_graph(op, 11, (4,), n_o=8), check=False).blob)


@pytest.mark.parametrize("op", ["iqSigmoid", "iqTanh"])
def test_linger_file_form_reads_packs_and_runs(op):
    """Quant -> Requant (int8 -> int16, x256) -> iqSigmoid/iqTanh (scale_o 128) -> Dequant, as linger 1.1.1 writes
    it; the writer gives the same attributes back."""
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=4, data_bits=8),
             tnode("Requant", ["q"], ["r"], name="rq", scale_x=4, scale_o=12, data_bits=8, o_bits=16),
             tnode(op, ["r"], ["a"], name="act", scale_x=12, scale_o=7, castor_mode="luna"),
             tnode("Dequant", ["a"], ["y"], name="deq", scale_o=7)]
    model = make_model(nodes, {"x": (2, 3, 5)}, {"y": (2, 3, 5)})
    graph = read_onnx(model)
    assert graph.tensors["r"].dtype == "int16" and graph.tensors["a"].exponent == 7
    node = next(n for n in write_onnx(graph).graph.node if n.op_type == op)
    attrs = {a.name: (a.f if a.type == a.FLOAT else a.s.decode()) for a in node.attribute}
    assert node.domain == "thinker"
    assert attrs == {"scale_x": 4096.0, "scale_o": 128.0, "platform_quant": "luna_quant", "castor_mode": "luna"}
    x = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32) * 5
    (y,), dump = Simulator(pack_onnx(model)).run([x], dump=True)
    q16 = quantize(x, 4).astype(np.int64) * 256
    np.testing.assert_array_equal(dump["r"], q16)
    np.testing.assert_array_equal(dump["a"], reference(op, q16, 12))
    np.testing.assert_array_equal(y, reference(op, q16, 12).astype(np.float32) / 128)


def _violations(graph: Graph) -> dict[str, object]:
    return {v.rule_id: v for v in check_graph(graph).violations if v.severity == "error"}


@pytest.mark.parametrize("op", ["iqSigmoid", "iqTanh"])
def test_rules_name_the_node_limit_and_actual(op):
    found = _violations(_graph(op, 10, (4,)))
    v = found["csk60xx.activation.in_exponent"]
    assert v.op_name == "act" and v.limit == "n_x >= 11" and v.actual == "n_x 10" and "requantize" in v.hint
    found = _violations(_graph(op, 11, (4,), n_o=6))
    v = found["csk60xx.activation.out_exponent"]
    assert v.limit == "n_o = 7 (scale_o 128)" and v.actual == "n_o 6 (scale_o 64)" and "scale_o = 128" in v.hint
    found = _violations(_graph(op, 11, (4,), dtype="int8"))
    assert found["csk60xx.activation.dtype"].actual == "input 0 int8"
    assert _violations(_graph(op, 11, (4,))) == {}
    with pytest.raises(HardwareLimitError, match="activation.in_exponent"):
        pack_graph(_graph(op, 10, (4,)))
