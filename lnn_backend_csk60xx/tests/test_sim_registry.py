"""The C simulator's op registry and plural outputs: an op code without a registration is refused at load, the
output count of every record is checked against its registration, and an external (plugin) op with several
outputs runs, each output checked and written at its planned offset."""

from __future__ import annotations

import dataclasses
import re
import struct
import types
from pathlib import Path

import numpy as np
import pytest
from _helpers import ir_graph, make_model, quantize, tnode
from _modelbin import INPUT, OUTPUT, ModelBin, refix

import lnn_backend_csk60xx.plugin as backend_plugin
from lnn_backend_csk60xx._sim import lib
from lnn_backend_csk60xx.ops import OpDef, OpSet
from lnn_backend_csk60xx.packer import describe
from lnn_backend_csk60xx.pipeline import pack_graph, pack_onnx
from lnn_backend_csk60xx.simulator import KernelCall, Simulator
from lnn_core import hookimpl
from lnn_core.errors import ModelFileError, SimulatorError
from lnn_core.graph import Node
from lnn_core.testing import isolated_host


def _packed_conv() -> bytes:
    rng = np.random.default_rng(3)
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=4),
             tnode("Conv2dInt", ["q", "w"], ["c"], name="conv", scale_x=4, scale_w=7, scale_o=3, kernel_shape=[3, 3]),
             tnode("Dequant", ["c"], ["y"], name="deq", scale_o=3)]
    return pack_onnx(make_model(nodes, {"x": (1, 2, 5, 5)}, {"y": (1, 3, 3, 3)},
                                {"w": rng.integers(-128, 128, (3, 2, 3, 3), dtype=np.int8)}))


@pytest.mark.parametrize("code", [0, -1, lib.LNN_SIM_NUM_OP_TYPES, 99, 0x7FFFFFFF])
def test_an_unknown_op_code_is_refused_at_load(code):
    blob = _packed_conv()
    ops = describe(blob)["sections"]["ops"]
    rec = ops["offset"] + 96 * 1  # the conv
    assert struct.unpack_from("<i", blob, rec)[0] == lib.LNN_SIM_OP_CONV2D
    Simulator(blob)  # the file itself is valid
    bad = bytearray(blob)
    struct.pack_into("<i", bad, rec, code)
    with pytest.raises(ModelFileError) as info:
        Simulator(refix(bad), path="m.bin")
    assert info.value.status == lib.LNN_SIM_E_OP and info.value.path == "m.bin"
    assert f"op 'conv': unknown op type {code}" in str(info.value)


def test_a_reshape_code_on_a_conv_record_is_not_run_as_a_reshape():
    """Every code has its own prepare: a conv record relabelled Reshape fails Reshape's checks, not silently runs."""
    blob = _packed_conv()
    rec = describe(blob)["sections"]["ops"]["offset"] + 96
    bad = bytearray(blob)
    struct.pack_into("<i", bad, rec, lib.LNN_SIM_OP_RESHAPE)
    with pytest.raises(ModelFileError) as info:
        Simulator(refix(bad))
    assert info.value.status == lib.LNN_SIM_E_OP and "op 'conv': needs exactly one input" in str(info.value)


def split_model(n_out: int = 2, code: int = lib.LNN_SIM_OP_EXTERNAL, same: bool = False) -> tuple[bytes, list[str]]:
    """x [1, 8] -> Quant(4) -> op 'split' with n_out outputs (int8, exponent 4; out_k gets len k + 1 of q, wrapping)
    -> one Dequant per output. Returns the image and the output tensor names."""
    t = ModelBin()
    x = t.tensor("x", "float32", (1, 8), flags=INPUT)
    q = t.tensor("q", "int8", (1, 8), 4)
    outs = [t.tensor(f"s{k}", "int8", (1, k + 1), 4) for k in range(n_out)]
    if same:
        outs[1] = outs[0]
    ys = [t.tensor(f"y{k}", "float32", (1, k + 1), flags=OUTPUT) for k in range(n_out)]
    t.op(lib.LNN_SIM_OP_QUANT, "quant", [x], [q])
    t.op(code, "split", [q], outs, ["TestSplit", '{"sign": -1}'])
    for k in range(n_out):
        t.op(lib.LNN_SIM_OP_DEQUANT, f"deq{k}", [outs[k]], [ys[k]])
    return t.build([x], ys), [f"s{k}" for k in range(n_out)]


def split_kernel(call: KernelCall) -> tuple[np.ndarray, ...]:
    q = call.inputs[0].astype(np.int32) * call.attrs["sign"]
    return tuple(np.clip(q[:, :spec.shape[1]], -128, 127).astype(spec.dtype) for spec in call.outputs)


def test_an_external_op_with_several_outputs_runs():
    blob, names = split_model(3)
    seen: list[KernelCall] = []

    def spy(call):
        seen.append(call)
        return split_kernel(call)

    sim = Simulator(blob, kernels={"TestSplit": spy})
    assert sim.external_ops == {"split": "TestSplit"} and len(sim.outputs) == 3
    x = np.array([[1.0, -2.0, 3.25, 0.5, 8.0, -8.0, 7.9, 100.0]], np.float32)
    q = np.clip(np.floor(x * 16 + 0.5), -128, 127)
    outputs, dump = sim.run([x], dump=True)
    for k, (y, name) in enumerate(zip(outputs, names)):
        expected = np.clip(-q[:, :k + 1], -128, 127)
        assert np.array_equal(dump[name], expected.astype(np.int8)), name
        assert np.array_equal(y, (expected / 16).astype(np.float32)), name
    (call,) = seen
    assert [s.name for s in call.outputs] == names and call.output == call.outputs[0]
    assert [s.shape for s in call.outputs] == [(1, 1), (1, 2), (1, 3)]
    assert len({s.offset for s in call.outputs}) == 3  # each at its own planned place
    # the whole C loop gives the same outputs, and a second run the same again
    for _ in range(2):
        assert all(np.array_equal(a, b) for a, b in zip(sim.run([x]), outputs))


def test_eight_outputs_load_and_nine_are_refused():
    blob, _ = split_model(lib.LNN_SIM_MAX_OP_OUTPUTS)
    sim = Simulator(blob, kernels={"TestSplit": split_kernel})
    assert len(sim.run([np.ones((1, 8), np.float32)])) == 8
    blob, _ = split_model(lib.LNN_SIM_MAX_OP_OUTPUTS + 1)
    with pytest.raises(ModelFileError) as info:
        Simulator(blob)
    assert info.value.status == lib.LNN_SIM_E_OP and "9 outputs" in str(info.value) and "limits 64, 8, 16" in str(
        info.value)


def test_output_counts_follow_the_registration():
    blob, _ = split_model(2, code=lib.LNN_SIM_OP_RELU)  # a built-in writes exactly one output
    with pytest.raises(ModelFileError) as info:
        Simulator(blob)
    assert info.value.status == lib.LNN_SIM_E_OP and "Relu writes 1 output(s), the record lists 2" in str(info.value)
    blob, _ = split_model(2, same=True)
    with pytest.raises(ModelFileError) as info:
        Simulator(blob)
    assert info.value.status == lib.LNN_SIM_E_OP and "outputs 0 and 1 are the same tensor 's0'" in str(info.value)
    spec = Simulator(split_model(2)[0]).tensors[2]
    with pytest.raises(ValueError, match="output must be outputs"):
        KernelCall("split", "TestSplit", {}, (), (), spec, (dataclasses.replace(spec, index=9),))


def test_a_kernel_must_return_one_array_per_output():
    blob, _ = split_model(2)
    x = np.zeros((1, 8), np.float32)
    cases = [(lambda call: np.zeros((1, 1), np.int8), "returned one array, but the op has 2 outputs"),
             (lambda call: [np.zeros((1, 1), np.int8)] * 3, "returned a list of 3 arrays, but the op has 2 outputs"),
             (lambda call: (np.zeros((1, 1), np.int8), np.zeros((1, 2), np.int16)),
              "returned the wrong tensor for output 1 ('s1')")]
    for kernel, text in cases:
        with pytest.raises(SimulatorError) as info:
            Simulator(blob, kernels={"TestSplit": kernel}).run([x])
        assert text in str(info.value) and info.value.op_name == "split" and info.value.status == lib.LNN_SIM_E_EXTERNAL
    # a bad second output writes nothing: the first output keeps what was there
    sim = Simulator(blob, kernels={"TestSplit": split_kernel})
    _, dump = sim.run([np.full((1, 8), 2.0, np.float32)], dump=True)
    sim.kernels["TestSplit"] = cases[2][0]
    with pytest.raises(SimulatorError):
        sim.run([x])
    s0 = sim.tensors[[t.name for t in sim.tensors].index("s0")]
    assert np.array_equal(sim._read(s0), dump["s0"])
    # one output: a tuple or list holding the one array is accepted, as is the bare array
    blob1, _ = split_model(1)
    for wrap in (tuple, list, lambda arrays: arrays[0]):
        sim = Simulator(blob1, kernels={"TestSplit": lambda call, wrap=wrap: wrap(split_kernel(call))})
        assert np.array_equal(sim.run([np.full((1, 8), 1.0, np.float32)])[0], [[-1.0]])


def test_each_op_is_implemented_in_exactly_one_family_file():
    """registry.c is the only file naming op codes; each registration (and so each op's prepare and run) is defined
    in one file of csrc/ops/, and neither the loader nor the executor switches on op types."""
    csrc = Path(__file__).resolve().parents[1] / "csrc"
    registry = (csrc / "registry.c").read_text()
    codes = re.findall(r"\{(LNN_SIM_OP_\w+), &(lnn_op_\w+)\}", registry)
    values = [getattr(lib, c) for c, _ in codes]
    assert len(values) == len(set(values)) and max(values) == lib.LNN_SIM_NUM_OP_TYPES - 1 and min(values) >= 1
    families = {p.name: p.read_text() for p in sorted((csrc / "ops").glob("*.c"))}
    for code, symbol in codes:
        defined = [name for name, text in families.items() if re.search(rf"const lnn_op_kernel {symbol} = ", text)]
        assert len(defined) == 1, (code, symbol, defined)
    for name in ("loader.c", "exec.c"):
        text = (csrc / name).read_text()
        assert not re.search(r"LNN_SIM_OP_(?!RECORD_BYTES)", text) and "switch (op->type)" not in text, name


def test_a_two_output_plugin_op_registered_through_the_public_registry_packs_and_runs():
    """End to end through the backend's public op registry: a test-local OpDef with two outputs and a Python kernel
    is packed as one external op with two outputs, and the simulator writes both where the plan put them."""
    def infer(c):
        x = c.info(0)
        c.dtype(x, ["int8"], "input")
        return [c.out("int8", x.shape, x.exponent, 0), c.out("int8", x.shape, x.exponent, 1)]

    def kernel(call):
        x = call.inputs[0].astype(np.int32)
        return np.maximum(x, 0).astype(np.int8), np.clip(-x, -128, 127).astype(np.int8)

    posneg = OpDef("TestPosNeg", "lnn.test", (1, 1), infer, outputs=2, scales={"scale_x": ("in", 0)}, kernel=kernel)
    plugin = types.ModuleType("posneg_plugin")

    @hookimpl
    def lnn_register_target_ops(registry):
        registry.add("csk60xx", posneg)

    plugin.lnn_register_target_ops = lnn_register_target_ops
    ops = OpSet.from_host(isolated_host([backend_plugin, plugin]))
    g = ir_graph("posneg")
    g.add_tensor("x", "float32", (1, 4, 3, 3))
    g.inputs = ["x"]
    g.add_node(Node("quant", "Quant", ["x"], ["q"]))
    g.add_tensor("q", "int8", None, 4)
    g.add_node(Node("pn", "TestPosNeg", ["q"], ["p", "n"], {}, "lnn.test"))
    for t, y in (("p", "yp"), ("n", "yn")):
        g.add_tensor(t, "int8", None, 4)
        g.add_node(Node(f"deq_{t}", "Dequant", [t], [y]))
        g.add_tensor(y, "float32", (1, 4, 3, 3))
    g.outputs = ["yp", "yn"]
    blob = pack_graph(g, ops=ops).blob
    sim = Simulator(blob, kernels=ops.kernels)
    pn = sim.op_names.index("pn")
    assert sim.op_types[pn] == lib.LNN_SIM_OP_EXTERNAL and [sim.tensors[t].name for t in sim._op_outputs[pn]] == [
        "p", "n"]
    x = (np.random.default_rng(0).standard_normal((1, 4, 3, 3)) * 5).astype(np.float32)
    q = quantize(x, 4).astype(np.int32)
    yp, yn = sim.run([x])
    assert np.array_equal(yp, np.maximum(q, 0) / 16) and np.array_equal(yn, np.clip(-q, -128, 127) / 16)
