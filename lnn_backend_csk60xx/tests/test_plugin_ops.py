"""Plugin ops: a test-local plugin's TestNeg goes IR -> ONNX -> read -> pack -> run (through the C executor's
callback into Python) with the right result; the loader validates external ops; failures are clear."""

from __future__ import annotations

import struct
import types
import zlib

import _neg_plugin
import numpy as np
import onnx
import pytest
from _helpers import ir_graph, quantize

import lnn_backend_csk60xx.plugin as backend_plugin
from lnn_backend_csk60xx._sim import lib
from lnn_backend_csk60xx.dialect import read_onnx, write_onnx
from lnn_backend_csk60xx.ops import OpDef, OpSet
from lnn_backend_csk60xx.packer import EXTERNAL_OP_CODE, HEADER_BYTES, describe
from lnn_backend_csk60xx.pipeline import pack_graph
from lnn_backend_csk60xx.simulator import KernelCall, Simulator
from lnn_core import hookimpl
from lnn_core.cli import build_parser
from lnn_core.errors import ModelFileError, RegistryError, SimulatorError
from lnn_core.graph import Node
from lnn_core.testing import isolated_host


def neg_graph(bias: int = 3):
    """x -> Quant(4) -> TestNeg -> Relu -> Conv2dInt 1x1 -> Dequant: the plugin op between chip ops."""
    g = ir_graph("neg")
    g.add_tensor("x", "float32", (1, 4, 5, 5))
    g.inputs = ["x"]
    g.add_node(Node("quant", "Quant", ["x"], ["q"], {}, "thinker"))
    g.add_tensor("q", "int8", None, 4)
    g.add_node(Node("neg", "TestNeg", ["q"], ["n"], {"bias": bias}, _neg_plugin.DOMAIN))
    g.add_tensor("n", "int8", None, 4)
    g.add_node(Node("relu", "Relu", ["n"], ["r"], {}, ""))
    g.add_tensor("r", "int8", None, 4)
    g.add_initializer("w", np.eye(4, dtype=np.int8).reshape(4, 4, 1, 1) * 64, 6)
    g.add_node(Node("conv", "Conv2dInt", ["r", "w"], ["c"], {"kernel_shape": [1, 1]}, "thinker"))
    g.add_tensor("c", "int8", None, 4)
    g.add_node(Node("deq", "Dequant", ["c"], ["y"], {}, "thinker"))
    g.add_tensor("y", "float32", (1, 4, 5, 5))
    g.outputs = ["y"]
    return g


def expected(x: np.ndarray, bias: int) -> np.ndarray:
    neg = np.clip(-quantize(x, 4).astype(np.int32) + bias, -128, 127)
    return np.maximum(neg, 0).astype(np.int8)  # Relu; the conv multiplies by 64 / 2^6 = 1 exactly


def test_plugin_op_end_to_end(ops):
    assert {t for t in ops if ops.is_plugin(t)} == {"TestNeg"} and set(ops.kernels) == {"TestNeg"}
    model = write_onnx(neg_graph(), ops=ops)
    onnx.checker.check_model(model)
    node = next(n for n in model.graph.node if n.op_type == "TestNeg")
    assert node.domain == _neg_plugin.DOMAIN and any(o.domain == _neg_plugin.DOMAIN for o in model.opset_import)
    graph = read_onnx(onnx.load_from_string(model.SerializeToString()), ops=ops)
    assert graph.node("neg").attrs == {"bias": 3} and graph.tensors["n"].exponent == 4
    res = pack_graph(graph, ops=ops)
    assert [n.op_type for n in res.graph.nodes] == ["Quant", "TestNeg", "Relu", "Conv2dInt", "Dequant"]
    sim = Simulator(res.blob, kernels=ops.kernels)
    assert sim.external_ops == {"neg": "TestNeg"} and sim.missing_kernels == []
    x = (np.random.default_rng(0).standard_normal((1, 4, 5, 5)) * 9).astype(np.float32)
    (y,), dump = sim.run([x], dump=True)
    assert np.array_equal(dump["n"], np.clip(-quantize(x, 4).astype(np.int32) + 3, -128, 127).astype(np.int8))
    assert np.array_equal(dump["c"], expected(x, 3))
    (y2,) = sim.run([x])  # the full C loop calls back too
    assert np.array_equal(y, y2) and np.array_equal(y, expected(x, 3).astype(np.float32) / 16)
    (yi,) = sim.run([quantize(x, 4)], integer=True)
    assert np.array_equal(yi, expected(x, 3))


@pytest.mark.parametrize("threads", [1, 3])
def test_a_batch_with_a_plugin_op_runs_its_kernel_on_every_row(ops, threads):
    """a plugin kernel is Python: run_batch runs such a model on one thread, whatever threads says, and a kernel
    that raises on one row names that row"""
    blob = pack_graph(neg_graph(), ops=ops).blob
    x = (np.random.default_rng(1).standard_normal((5, 4, 5, 5)) * 9).astype(np.float32)
    (y,) = Simulator(blob, kernels=ops.kernels).run_batch([x], threads=threads)
    for r in range(5):
        np.testing.assert_array_equal(y[r:r + 1], expected(x[r:r + 1], 3).astype(np.float32) / 16)
    seen = []

    def picky(call: KernelCall) -> np.ndarray:
        seen.append(call.inputs[0].copy())
        if len(seen) == 3:
            raise ValueError("row three is odd")
        return ops.kernels["TestNeg"](call)

    with pytest.raises(SimulatorError) as info:
        Simulator(blob, kernels={"TestNeg": picky}).run_batch([x], threads=threads)
    assert info.value.row == 2 and "ValueError: row three is odd" in str(info.value) and len(seen) == 3


def test_the_kernel_receives_a_kernel_call(ops):
    seen: list[KernelCall] = []

    def spy(call):
        seen.append(call)
        return ops.kernels["TestNeg"](call)

    sim = Simulator(pack_graph(neg_graph(bias=-2), ops=ops).blob, kernels={"TestNeg": spy})
    sim.run([np.zeros((1, 4, 5, 5), np.float32)])
    (call,) = seen
    assert call.op_name == "neg" and call.op_type == "TestNeg" and call.attrs == {"bias": -2}
    assert call.inputs[0].dtype == np.int8 and not call.inputs[0].flags.writeable
    assert call.input_specs[0].exponent == 4 and call.output.shape == (1, 4, 5, 5) and call.output.region == "share_mem"


def test_without_the_plugin_the_op_is_refused(ops):
    model = write_onnx(neg_graph(), ops=ops)
    with pytest.raises(ModelFileError) as info:
        read_onnx(model)
    assert info.value.node == "neg" and "TestNeg" in str(info.value)
    blob = pack_graph(neg_graph(), ops=ops).blob
    sim = Simulator(blob)  # loads: the file is valid; running needs the kernel
    assert sim.missing_kernels == ["TestNeg"]
    with pytest.raises(SimulatorError) as info:
        sim.run([np.zeros((1, 4, 5, 5), np.float32)])
    assert info.value.status == lib.LNN_SIM_E_EXTERNAL and "no simulator kernel" in str(info.value)


def test_kernel_failures_are_simulator_errors(ops):
    blob = pack_graph(neg_graph(), ops=ops).blob
    x = np.zeros((1, 4, 5, 5), np.float32)

    def boom(call):
        raise ZeroDivisionError("inside the kernel")

    with pytest.raises(SimulatorError) as info:
        Simulator(blob, kernels={"TestNeg": boom}).run([x])
    assert isinstance(info.value.__cause__, ZeroDivisionError) and "inside the kernel" in str(info.value)
    with pytest.raises(SimulatorError) as info:
        Simulator(blob, kernels={"TestNeg": lambda call: np.zeros((1, 4, 5, 5), np.int16)}).run([x], dump=True)
    assert "returned the wrong tensor" in str(info.value) and info.value.op_name == "neg"
    # after a failure the simulator still works
    sim = Simulator(blob, kernels=ops.kernels)
    with pytest.raises(SimulatorError):
        sim.kernels["TestNeg"] = boom
        sim.run([x])
    sim.kernels["TestNeg"] = ops.kernels["TestNeg"]
    assert np.array_equal(sim.run([x])[0], expected(x, 3).astype(np.float32) / 16)


def _refix(blob: bytearray) -> bytes:
    struct.pack_into("<I", blob, 16, len(blob) - HEADER_BYTES)
    struct.pack_into("<I", blob, 20, zlib.crc32(bytes(blob[HEADER_BYTES:])))
    return bytes(blob)


def test_loader_validates_external_ops(ops):
    blob = pack_graph(neg_graph(), ops=ops).blob
    sec = describe(blob)["sections"]
    rec = next(sec["ops"]["offset"] + 96 * i for i in range(sec["ops"]["count"])
               if struct.unpack_from("<i", blob, sec["ops"]["offset"] + 96 * i)[0] == EXTERNAL_OP_CODE)
    cases = [(24, sec["strings"]["size"] + 5, lib.LNN_SIM_E_ATTR),   # op type string outside the strings
             (28, 0x7FFFFFFF, lib.LNN_SIM_E_ATTR),                   # attributes string outside the strings
             (20, 3, lib.LNN_SIM_E_ATTR),                            # attribute count
             (8, 0, lib.LNN_SIM_E_OP),                               # no input
             (8, 65, lib.LNN_SIM_E_OP),                              # too many inputs
             (16, 1 << 20, lib.LNN_SIM_E_OP)]                        # io entries past the table
    for field, value, status in cases:
        bad = bytearray(blob)
        struct.pack_into("<I", bad, rec + field, value)
        with pytest.raises(ModelFileError) as info:
            Simulator(_refix(bad), kernels=ops.kernels)
        assert info.value.status == status, (field, value)
    io = sec["ioidx"]
    first = struct.unpack_from("<I", blob, rec + 16)[0]
    bad = bytearray(blob)
    struct.pack_into("<i", bad, io["offset"] + 4 * first, -1)  # an omitted input
    with pytest.raises(ModelFileError) as info:
        Simulator(_refix(bad), kernels=ops.kernels)
    assert info.value.status == lib.LNN_SIM_E_OP
    # attributes that are not JSON: the Python side refuses the file
    strings = sec["strings"]
    text_ref = struct.unpack_from("<I", blob, rec + 28)[0]
    bad = bytearray(blob)
    bad[strings["offset"] + text_ref] = ord("[")
    with pytest.raises(ModelFileError) as info:
        Simulator(_refix(bad), kernels=ops.kernels)
    assert "not JSON" in str(info.value) and info.value.node == "neg"


def test_registration_errors():
    class Bad(types.ModuleType):
        pass

    clash = Bad("clash")

    @hookimpl
    def lnn_register_target_ops(registry):
        registry.add("csk60xx", OpDef("Conv2dInt", "x", (1, 1), _neg_plugin.infer_neg))

    clash.lnn_register_target_ops = lnn_register_target_ops
    with pytest.raises(RegistryError) as info:
        OpSet.from_host(isolated_host([backend_plugin, clash]))
    assert info.value.key == "csk60xx:Conv2dInt" and "registered twice" in str(info.value)
    assert {info.value.first, info.value.second} == {"'clash'", "'lnn_backend_csk60xx.plugin'"}
    wrong = Bad("wrong")

    @hookimpl
    def lnn_register_target_ops2(registry):
        odd = types.SimpleNamespace(op_type="Odd")
        registry.add("csk60xx", odd)

    wrong.lnn_register_target_ops = lnn_register_target_ops2
    with pytest.raises(RegistryError) as info:
        OpSet.from_host(isolated_host([backend_plugin, wrong]))
    assert info.value.key == "Odd" and "OpDef" in str(info.value)


def test_the_deprecated_kernel_hook_still_attaches_a_kernel():
    legacy = types.ModuleType("legacy")

    @hookimpl
    def lnn_register_target_ops(registry):
        from dataclasses import replace
        registry.add("csk60xx", replace(_neg_plugin.neg_op(), kernel=None))

    @hookimpl
    def lnn_register_sim_kernels(registry):
        registry.add("TestNeg", _neg_plugin.neg_kernel)

    legacy.lnn_register_target_ops = lnn_register_target_ops
    legacy.lnn_register_sim_kernels = lnn_register_sim_kernels
    with pytest.warns(DeprecationWarning, match="lnn_register_sim_kernels"):
        host = isolated_host([backend_plugin, legacy])
    ops = OpSet.from_host(host)
    assert ops.kernels == {"TestNeg": _neg_plugin.neg_kernel}
    x = (np.random.default_rng(3).standard_normal((1, 4, 5, 5)) * 9).astype(np.float32)
    (y,) = Simulator(pack_graph(neg_graph(), ops=ops).blob, kernels=ops.kernels).run([x])
    assert np.array_equal(y, expected(x, 3).astype(np.float32) / 16)


def test_pack_and_run_commands_with_the_plugin(host, ops, tmp_path, capsys):
    src = tmp_path / "neg.onnx"
    onnx.save(write_onnx(neg_graph(), ops=ops), src)
    parser = build_parser(host)
    args = parser.parse_args(["pack", str(src), "-o", str(tmp_path / "neg.bin")])
    assert args._run(args, host) == 0
    x = (np.random.default_rng(2).standard_normal((1, 4, 5, 5)) * 9).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    args = parser.parse_args(["run", str(tmp_path / "neg.bin"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")])
    assert args._run(args, host) == 0
    assert np.array_equal(np.load(tmp_path / "y.npy"), expected(x, 3).astype(np.float32) / 16)
    args = parser.parse_args(["check", str(src)])
    assert args._run(args, host) == 0
    assert "fits: yes" in capsys.readouterr().out


def test_fuzz_a_model_with_an_external_op(ops):
    """Mutated images with an external op load and run, or raise ModelFileError; never crash."""
    blob = pack_graph(neg_graph(), ops=ops).blob
    rng = np.random.default_rng(77)
    x = np.zeros((1, 4, 5, 5), np.float32)
    sec = describe(blob)["sections"]
    fields = [sec["ops"]["offset"] + 96 * i + k for i in range(sec["ops"]["count"]) for k in range(0, 96, 4)]
    fields += list(range(sec["ioidx"]["offset"], sec["ioidx"]["offset"] + sec["ioidx"]["size"], 4))
    outcomes = {"ok": 0, "error": 0}
    for _ in range(800):
        data = bytearray(blob)
        for _ in range(int(rng.integers(1, 3))):
            pos = fields[int(rng.integers(0, len(fields)))]
            value = int(rng.choice([0, 1, 2, 3, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF, int(rng.integers(0, 1 << 32))]))
            struct.pack_into("<I", data, pos, value)
        try:
            sim = Simulator(_refix(data), kernels=ops.kernels)
        except ModelFileError:
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        if [(s.shape, s.dtype) for s in sim.inputs] == [(x.shape, x.dtype)]:
            try:
                sim.run([x])
            except SimulatorError:
                pass
    assert outcomes["error"] > 300 and outcomes["ok"] > 0, outcomes
