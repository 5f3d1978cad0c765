"""model.bin: deterministic packing, header and sections, and a fuzz test of the C loader's validation."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from _helpers import make_model, snode, tnode

from lnn_backend_csk60xx._sim import lib
from lnn_backend_csk60xx.packer import HEADER_BYTES, MAGIC, describe
from lnn_backend_csk60xx.pipeline import pack_graph, pack_onnx
from lnn_backend_csk60xx.simulator import Simulator
from lnn_core.errors import ModelFileError


def _small_model():
    rng = np.random.default_rng(7)
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=4),
             tnode("Conv2dInt", ["q", "w", "b"], ["c"], name="conv", scale_x=4, scale_w=7, scale_o=3,
                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             snode("Relu", ["c"], ["r"], name="relu"),
             snode("MaxPool", ["r"], ["m"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             tnode("iqAdd", ["m", "m"], ["a"], name="add", scale_x=3, scale_y=3, scale_o=2),
             snode("Reshape", ["a", "shape"], ["f"], name="flat"),
             tnode("LinearInt", ["f", "fw", "fb"], ["l"], name="fc", scale_x=2, scale_w=7, scale_o=3),
             tnode("Dequant", ["l"], ["y"], name="deq", scale_o=3)]
    inits = {"w": rng.integers(-128, 128, (4, 2, 3, 3), dtype=np.int8),
             "b": rng.integers(-500, 500, 4, dtype=np.int32), "shape": np.array([1, -1], np.int64),
             "fw": rng.integers(-128, 128, (5, 16), dtype=np.int8), "fb": rng.integers(-500, 500, 5, dtype=np.int32)}
    return make_model(nodes, {"x": (1, 2, 4, 4)}, {"y": (1, 5)}, inits)


def test_deterministic_and_header():
    a, b = pack_onnx(_small_model()), pack_onnx(_small_model())
    assert a == b
    info = describe(a)
    assert info["magic"] == MAGIC and info["version"] == lib.LNN_SIM_FORMAT_VERSION
    assert info["header_size"] == HEADER_BYTES == lib.LNN_SIM_HEADER_BYTES
    assert info["target"] == lib.LNN_SIM_TARGET_CSK60XX
    assert info["payload_size"] == len(a) - HEADER_BYTES and info["crc32"] == zlib.crc32(a[HEADER_BYTES:])
    assert info["sections"]["weights"]["offset"] % 64 == 0
    assert info["sections"]["ops"]["count"] == 7  # the Relu is fused into the conv


def test_plan_is_honoured_by_the_simulator():
    """Tensors live at their planned offsets; a plan that puts the conv output over its live input is refused at
    load (the kernel would read bytes it has already written)."""
    from lnn_backend_csk60xx.dialect import read_onnx
    from lnn_backend_csk60xx.packer import pack
    res = pack_graph(read_onnx(_small_model()), fuse_relu=False)
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32) * 4
    (good,) = Simulator(res.blob).run([x])
    sim = Simulator(pack(res.graph, res.plan))
    assert np.array_equal(sim.run([x])[0], good)
    assert {t.name: (t.region, t.offset) for t in sim.tensors if t.region != "flash"} == {
        k: (p.region, p.offset) for k, p in res.plan.placements.items()}
    res.plan.placements["c"].offset = res.plan.placements["q"].offset
    with pytest.raises(ModelFileError) as info:  # the packer loads what it wrote and refuses it first
        pack(res.graph, res.plan)
    assert info.value.status == lib.LNN_SIM_E_SCHEDULE and info.value.node == "conv"
    with pytest.raises(ModelFileError) as info:
        Simulator(pack(res.graph, res.plan, validate=False))
    assert info.value.status == lib.LNN_SIM_E_SCHEDULE
    assert "op 'conv' (step 1): output 'c'" in str(info.value) and "its input 'q'" in str(info.value)


def _refix(blob: bytearray) -> bytes:
    struct.pack_into("<I", blob, 16, len(blob) - HEADER_BYTES)
    struct.pack_into("<I", blob, 20, zlib.crc32(bytes(blob[HEADER_BYTES:])))
    return bytes(blob)


def test_load_errors_are_model_file_errors():
    blob = pack_onnx(_small_model())
    with pytest.raises(ModelFileError) as info:
        Simulator(blob[:100], path="m.bin")
    assert info.value.status == lib.LNN_SIM_E_TRUNCATED and info.value.path == "m.bin"
    bad = bytearray(blob)
    bad[200] ^= 0xFF
    with pytest.raises(ModelFileError) as info:
        Simulator(bytes(bad))
    assert info.value.status == lib.LNN_SIM_E_CRC
    with pytest.raises(ModelFileError) as info:
        Simulator(b"NOTMODEL" + blob[8:])
    assert info.value.status == lib.LNN_SIM_E_MAGIC
    # a tensor record whose offset leaves its arena: structural check after a valid CRC
    sec = describe(blob)["sections"]["tensors"]
    bad = bytearray(blob)
    struct.pack_into("<I", bad, sec["offset"] + 12, 1 << 24)
    with pytest.raises(ModelFileError) as info:
        Simulator(_refix(bad))
    assert info.value.status == lib.LNN_SIM_E_PLAN


def test_fuzz_loader_never_crashes():
    """>= 2000 seeded mutations: every load succeeds or raises ModelFileError (C never reads out of bounds)."""
    blob = pack_onnx(_small_model())
    info = describe(blob)
    fields = []  # offsets of 32-bit structural fields: counts, offsets, sizes, indices, dims, attributes
    fields += [HEADER_BYTES + 16 * i + k for i in range(7) for k in (0, 4, 8, 12)]
    t = info["sections"]["tensors"]
    fields += [t["offset"] + 48 * i + k for i in range(t["count"]) for k in range(0, 44, 4)]
    o = info["sections"]["ops"]
    fields += [o["offset"] + 96 * i + k for i in range(o["count"]) for k in range(0, 96, 4)]
    io = info["sections"]["ioidx"]
    fields += list(range(io["offset"], io["offset"] + io["size"], 4))
    for name in ("plan", "graph"):
        s = info["sections"][name]
        fields += list(range(s["offset"], s["offset"] + s["size"], 4))
    specials = [0, 1, 2, 3, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE, 64, 1 << 20, 1 << 30]
    rng = np.random.default_rng(2024)
    x = np.zeros((1, 2, 4, 4), np.float32)
    outcomes = {"ok": 0, "error": 0}
    for i in range(2400):
        data = bytearray(blob)
        kind = i % 6
        if kind == 0:
            data = data[:int(rng.integers(0, len(data)))]
        elif kind == 1:
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(0, len(data)))
                data[pos] ^= 1 << int(rng.integers(0, 8))
        else:
            for _ in range(int(rng.integers(1, 3))):
                pos = fields[int(rng.integers(0, len(fields)))]
                if kind == 2:
                    value = specials[int(rng.integers(0, len(specials)))]
                elif kind == 3:
                    value = (struct.unpack_from("<I", data, pos)[0] + int(rng.integers(-3, 4))) & 0xFFFFFFFF
                elif kind == 4:
                    value = int(rng.integers(0, 1 << 32))
                else:
                    data[pos + int(rng.integers(0, 4))] ^= 1 << int(rng.integers(0, 8))
                    continue
                struct.pack_into("<I", data, pos, value)
            if rng.random() < 0.9:
                data = bytearray(_refix(data))
        try:
            sim = Simulator(bytes(data))
        except ModelFileError:
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        if sim.inputs and sim.inputs[0].shape == x.shape and sim.inputs[0].dtype == x.dtype and len(sim.inputs) == 1:
            sim.run([x])
    assert outcomes["error"] > 1000 and outcomes["ok"] > 0, outcomes
