"""``lnn pack --format thinker``: the spec's worked example byte for byte, the decoder, and packages run by lnn's
simulator (decoded into lnn's IR) equal to model.bin on the linger ResNet-18 and small graphs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from _helpers import LINGER_DEMO, make_model, snode, tnode
from hypothesis import given, settings
from hypothesis import strategies as st

from lnn_backend_csk60xx.check import check_graph
from lnn_backend_csk60xx.dialect import read_onnx
from lnn_backend_csk60xx.ops.opset import OpSet
from lnn_backend_csk60xx.pipeline import pack_graph
from lnn_backend_csk60xx.simulator import Simulator
from lnn_backend_csk60xx.thinker.build import build_package
from lnn_backend_csk60xx.thinker.graph import package_to_graph
from lnn_backend_csk60xx.thinker.lowering import relayout_conv, relayout_deconv, restore_conv, restore_deconv
from lnn_backend_csk60xx.thinker.package import crc24, decode, serialize
from lnn_core.errors import ModelFileError

# spec/thinker-package.md section 8
W8 = np.array([[[[-20, -17, -17], [19, -11, -1], [1, 16, 3]], [[-14, 4, 4], [-8, -19, 18], [19, 3, 4]],
                [[-3, 17, 5], [-7, -12, -11], [0, -4, -15]], [[-5, -20, -2], [15, 4, 9], [-1, -1, -6]]],
               [[[19, 12, -19], [-11, 12, 11], [-10, 3, 15]], [[-9, 8, 14], [-20, -20, 16], [-15, 18, -3]],
                [[-5, -16, 11], [-19, -19, 19], [15, 18, -9]], [[-2, 7, -20], [-6, 15, -8], [0, -9, -16]]]],
              dtype=np.int8)


def _tiny():
    return make_model(
        [tnode("Quant", ["x"], ["xq"], data_bits=8, scale_x=4),
         tnode("Conv2dInt", ["xq", "w", "b"], ["yq"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
               dilations=[1, 1], group=1, scale_x=4, scale_w=6, scale_o=3, data_bits=8, parameter_bits=8, o_bits=8),
         tnode("Dequant", ["yq"], ["y"], scale_o=3)],
        {"x": (1, 4, 4, 4)}, {"y": (1, 2, 4, 4)}, {"w": W8, "b": np.array([100, -50], np.int32)})


def test_worked_example_byte_for_byte():
    """The spec's 1584-byte package, with tpacker's arena plan forced (ours places the buffers differently)."""
    res = pack_graph(read_onnx(_tiny()), package_format="thinker")
    plan = res.plan
    for name, offset in {"x": 0, "xq": 416, "yq": 480, "y": 0}.items():
        plan.placements[name].offset = offset
    plan.scratch["dma_buffer1"].offset = 256
    blob = serialize(build_package(res.graph, plan, OpSet.builtin_only()))
    assert len(blob) == 1584
    assert struct.unpack_from("<I", blob, 16)[0] == 0x009A2349 == crc24(blob[80:])
    assert struct.unpack_from("<10I", blob, 20) == (0x50, 0x80, 0, 0x250, 0x330, 0, 0x430, 0x430, 0x370, 0x610)
    assert blob[0x390:0x3A0] == bytes.fromhex("ecf2fdfb0000000013f7fbfe00000000")
    assert blob[0x2D0:0x2EA] == bytes.fromhex("0101000003000300000001010101000001010000010000000400")
    assert blob[0x620:0x62A] == bytes.fromhex("01000200010006 00a000".replace(" ", ""))
    # our own plan: the same records, other offsets, still sound
    pkg = decode(res.blob)
    assert [op.type for op in pkg.ops] == ["Quant", "Conv2dInt", "Dequant"] and pkg.arenas[2] <= 512


def test_crc_matches_the_reference_values():
    assert crc24(b"") == 0
    assert crc24(bytes([0x80])) == 0xC60001  # the reflected table's entry 0x80 (spec 1.3)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from([(1, 1), (3, 3), (1, 5), (5, 2)]), st.booleans(),
       st.integers(0, 2 ** 31 - 1))
def test_weight_relayouts_invert(o, i, k, depthwise, seed):
    rng = np.random.default_rng(seed)
    from lnn_core.graph import Node

    if depthwise and o > 1:  # group = C_out > 1
        w = rng.integers(-128, 128, (o, 1, *k), dtype=np.int8)
        node = Node("c", "Conv2dInt", [], [], {"group": o})
        stored, layout = relayout_conv(w, node, None)
        assert layout == 5 and stored.shape == ((o + 15) // 16, *k, 16)
        assert np.array_equal(restore_conv(stored, o, o, k, o), w)
    else:
        w = rng.integers(-128, 128, (o, i, *k), dtype=np.int8)
        stored, layout = relayout_conv(w, Node("c", "Conv2dInt", [], [], {}), None)
        assert layout == 3 and stored.shape == ((o + 1) // 2, k[0] * k[1], (i + 7) // 8, 2, 8)
        assert np.array_equal(restore_conv(stored, o, i, k, 1), w)
        wt = rng.integers(-128, 128, (i, o, *k), dtype=np.int8)
        st6, _ = relayout_deconv(wt, None, None)
        assert st6.shape == ((o + 1) // 2, *k, (i + 7) // 8, 2, 8)
        assert np.array_equal(restore_deconv(st6, i, o), wt)
        # element rule of spec 6: [o2][k][ib][ol][il] = W[2*o2+ol, 8*ib+il, k div kw, k mod kw]
        assert stored[0, 0, 0, 0, 0] == w[0, 0, 0, 0]


def test_decoded_package_runs_like_model_bin():
    graph = read_onnx(_tiny())
    pkg = pack_graph(graph, package_format="thinker").blob
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 4)).astype(np.float32)
    (a,), (b,) = Simulator(pkg).run([x]), Simulator(pack_graph(graph).blob).run([x])
    assert np.array_equal(a, b)
    g = package_to_graph(decode(pkg))
    assert np.array_equal(g.initializers["w"], W8) and [n.op_type for n in g.nodes] == ["Quant", "Conv2dInt",
                                                                                          "Dequant"]


def test_decoder_refuses_malformed_packages():
    blob = bytearray(pack_graph(read_onnx(_tiny()), package_format="thinker").blob)
    with pytest.raises(ModelFileError, match="CRC-24"):
        decode(bytes(blob[:-16]) + b"\1" * 16)
    with pytest.raises(ModelFileError, match="header says"):
        decode(bytes(blob[:200]))
    blob[60] = 1
    with pytest.raises(ModelFileError, match="not VENUS"):
        decode(bytes(blob))
    with pytest.raises(ModelFileError, match="label"):
        decode(b"LNNMODEL" + bytes(100))


def test_iqsub_is_refused_with_its_hint():
    m = make_model([tnode("Quant", ["x"], ["xq"], data_bits=8, scale_x=4),
                    tnode("Quant", ["y"], ["yq"], data_bits=8, scale_x=4),
                    tnode("iqSub", ["xq", "yq"], ["z"], scale_x=4, scale_y=4, scale_o=4),
                    tnode("Dequant", ["z"], ["o"], scale_o=4)], {"x": (1, 8), "y": (1, 8)}, {"o": (1, 8)})
    report = check_graph(read_onnx(m), package_format="thinker")
    assert not report.ok
    v = [v for v in report.violations if v.rule_id == "csk60xx.thinker.sub"]
    assert v and v[0].op_name == "iqSub_z" and "negate" in v[0].hint
    with pytest.raises(ModelFileError, match="iqSub"):
        pack_graph(read_onnx(m), package_format="thinker")


@pytest.mark.skipif(not LINGER_DEMO.is_dir(), reason="shared data folder is absent")
def test_resnet18_package_decoded_equals_the_vendor_outputs():
    model = LINGER_DEMO / "resnet18-12-regular.onnx"
    res = pack_graph(read_onnx(model), package_format="thinker")
    assert res.plan.regions["share_mem"].peak <= 331440  # the vendor packer's plan
    pkg = decode(res.blob)
    assert len(pkg.dma) == sum(op.type in ("Conv2dInt", "LinearInt") for op in pkg.ops)
    assert all(pkg.tensors[d.dst].nbytes >= d.size for d in pkg.dma)
    sim = Simulator(res.blob)
    inputs, expected = np.load(LINGER_DEMO / "resnet18_inputs.npy"), np.load(LINGER_DEMO / "resnet18_outputs.npy")
    for row in range(2):
        assert np.array_equal(sim.run([inputs[row:row + 1]])[0], expected[row:row + 1])
    json.dumps(pkg.to_dict())


def _q(name: str, shape: tuple[int, ...], n: int = 4):
    return tnode("Quant", [name], [f"{name}q"], data_bits=8, scale_x=n)


def _problems(nodes, inputs, outputs, inits=None) -> dict[str, str]:
    graph = read_onnx(make_model(nodes, inputs, outputs, inits))
    report = check_graph(graph, package_format="thinker")
    return {v.rule_id: v.op_name for v in report.violations if v.rule_id.startswith("csk60xx.thinker.")}


def test_every_broken_contract_is_listed_with_its_node():
    """One graph, three contracts broken at once: each is reported with its node, none stops the others; what the
    thinker rewrites can mend (pads that reach the kernel, a layer norm over a batch) is not reported."""
    nodes = [_q("x", (2, 4, 4, 4)), _q("y", (1, 2, 4, 4)), _q("z", (2, 2, 4, 6)),
             tnode("ConvTranspose2dInt", ["yq", "wd"], ["d"], kernel_shape=[3, 3], pads=[3, 3, 3, 3], strides=[2, 2],
                   scale_x=4, scale_w=6, scale_o=4),
             tnode("iqAdd", ["xq", "yc"], ["a"], scale_x=4, scale_y=4, scale_o=4),
             tnode("iqMul", ["xq", "mc"], ["m"], scale_x=4, scale_y=4, scale_o=4),
             tnode("iqSub", ["xq", "xq"], ["s"], scale_x=4, scale_y=4, scale_o=4),
             tnode("LayerNormInt", ["zq", "g", "b"], ["l"], scale_x=4, scale_w=8, scale_o=4),
             *[tnode("Dequant", [t], [f"{t}o"], scale_o=4) for t in ("d", "a", "m", "s", "l")]]
    inits = {"wd": np.ones((2, 4, 3, 3), np.int8), "yc": np.ones((1, 4, 1, 1), np.int8),
             "mc": np.ones((2, 4, 1, 1), np.int8), "g": np.ones(6, np.int16), "b": np.zeros(6, np.int32)}
    found = _problems(nodes, {"x": (2, 4, 4, 4), "y": (1, 2, 4, 4), "z": (2, 2, 4, 6)},
                      {f"{t}o": None for t in ("d", "a", "m", "s", "l")}, inits)
    assert found == {"csk60xx.thinker.add_shapes": "iqAdd_a", "csk60xx.thinker.mul_shapes": "iqMul_m",
                     "csk60xx.thinker.sub": "iqSub_s"}


def test_iqmul_by_a_scalar_constant_is_written_with_rank_0_second():
    nodes = [_q("x", (1, 3, 4, 4)), tnode("iqMul", ["xq", "s"], ["m"], scale_x=4, scale_y=5, scale_o=6),
             tnode("Dequant", ["m"], ["o"], scale_o=6)]
    graph = read_onnx(make_model(nodes, {"x": (1, 3, 4, 4)}, {"o": None}, {"s": np.array([37], np.int8)}))
    res = pack_graph(graph, package_format="thinker")
    pkg = decode(res.blob)
    (mul,) = [op for op in pkg.ops if op.type == "iqMul"]
    assert pkg.tensors[mul.inputs[1]].shape == () and pkg.tensors[mul.inputs[1]].scale == 5.0
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)
    assert np.array_equal(Simulator(res.blob).run([x])[0], Simulator(pack_graph(graph).blob).run([x])[0])


def test_slice_is_written_as_one_axis_and_refused_on_the_batch_axis():
    starts, ends, axes = (np.array([v], np.int64) for v in (1, 3, 2))
    nodes = [_q("x", (1, 2, 4, 4)), snode("Slice", ["xq", "s", "e", "a"], ["y"]),
             tnode("Dequant", ["y"], ["o"], scale_o=4)]
    inits = {"s": starts, "e": ends, "a": axes}
    graph = read_onnx(make_model(nodes, {"x": (1, 2, 4, 4)}, {"o": None}, inits))
    pkg = decode(pack_graph(graph, package_format="thinker").blob)
    (sl,) = [op for op in pkg.ops if op.type == "Slice"]
    assert [int(pkg.tensors[i].data[0]) for i in sl.inputs[1:]] == [1, 3, 2, 1] and not sl.temps
    inits["a"] = np.array([0], np.int64)
    inits["e"] = np.array([1], np.int64)
    inits["s"] = np.array([0], np.int64)
    batched = read_onnx(make_model(nodes, {"x": (2, 2, 4, 4)}, {"o": None}, inits))
    report = check_graph(batched, package_format="thinker")
    assert any(v.rule_id == "csk60xx.thinker.slice_axis0" for v in report.violations)


def test_cli_pack_inspect_run_and_check(tmp_path, capsys):
    from lnn_core.cli import main

    src = tmp_path / "tiny.onnx"
    import onnx

    onnx.save(_tiny(), src)
    pkg = tmp_path / "tiny.pkg"
    assert main(["pack", str(src), "--format", "thinker", "-o", str(pkg)]) == 0
    out = capsys.readouterr().out
    assert "thinker package: constants 160 bytes in psram, 1 DMA transfers" in out
    assert main(["inspect", str(pkg), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [op["type"] for op in info["ops"]] == ["Quant", "Conv2dInt", "Dequant"] and len(info["dma"]) == 1
    assert main(["inspect", str(pkg)]) == 0
    text = capsys.readouterr().out
    assert "Conv2dInt" in text and "dma_buffer1" in text and "CRC-24" in text
    x = np.random.default_rng(3).standard_normal((1, 4, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(pkg), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    (ref,) = Simulator(pack_graph(read_onnx(src)).blob).run([x])
    assert np.array_equal(np.load(tmp_path / "y.npy"), ref)
    assert main(["check", str(src), "--format", "thinker"]) == 0
    capsys.readouterr()
    (tmp_path / "bad.pkg").write_bytes(pkg.read_bytes()[:300])
    assert main(["inspect", str(tmp_path / "bad.pkg")]) == 2
    assert "malformed" in capsys.readouterr().err


VENDOR = Path(__file__).parent / "data" / "thinker"


def test_the_vendor_packer_wrote_the_worked_example_byte_for_byte_as_we_do():
    vendor = (VENDOR / "tiny_keep.pkg").read_bytes()
    res = pack_graph(read_onnx(VENDOR / "tiny.onnx"), package_format="thinker")
    plan = res.plan
    for name, offset in {"x": 0, "xq": 416, "yq": 480, "y": 0}.items():  # tpacker's arena plan
        plan.placements[name].offset = offset
    plan.scratch["dma_buffer1"].offset = 256
    assert serialize(build_package(res.graph, plan, OpSet.builtin_only())) == vendor


@pytest.mark.parametrize("name, params", [("tiny_keep", "psram"), ("digits", "psram"), ("deconv", "share")])
def test_vendor_packages_decode_and_run_like_lnn(name, params):
    blob = (VENDOR / f"{name}.pkg").read_bytes()
    pkg = decode(blob)
    assert (pkg.param_type == 2) == (params == "share") and (not pkg.dma) == (params == "share")
    src = VENDOR / ("tiny.onnx" if name == "tiny_keep" else f"{name}.onnx")
    ref = Simulator(pack_graph(read_onnx(src)).blob)
    sim = Simulator(blob)
    rng = np.random.default_rng(5)
    for _ in range(4):
        x = rng.standard_normal(ref.inputs[0].shape).astype(np.float32)
        assert np.array_equal(sim.run([x])[0], ref.run([x])[0])
