"""Issue 12 #4, #5, #10: the packer and the loader share one set of limits (lnn_sim.h, read through cffi) and the packer
refuses first, naming the node and tensor; a plugin op's attribute JSON is bounded in size and nesting (no
RecursionError, at pack time or from a hostile model.bin); the loader counts each op's MACs and refuses a package whose
total exceeds a limit that Python and `lnn run` can set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _helpers import make_model, tnode
from _modelbin import INPUT, OUTPUT, ModelBin
from test_plugin_ops import neg_graph

import lnn_backend_csk60xx.plugin as backend_plugin
from lnn_backend_csk60xx._sim import lib
from lnn_backend_csk60xx.dialect import read_onnx
from lnn_backend_csk60xx.limits import SIM_LIMITS, parse_macs
from lnn_backend_csk60xx.packer import EXTERNAL_OP_CODE, pack
from lnn_backend_csk60xx.pipeline import pack_graph, pack_onnx
from lnn_backend_csk60xx.simulator import Simulator
from lnn_core.cli import main
from lnn_core.errors import ConfigError, HardwareLimitError, ModelFileError
from lnn_core.testing import isolated_host


def _load_error(blob: bytes, **kw) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        Simulator(blob, **kw)
    return info.value


# -- #5: one set of limits, the packer refuses first ---------------------------------------------------------------

def _quant_model(n: int):
    return make_model([tnode("Quant", ["x"], ["q"], name="quant", scale_x=n),
                       tnode("Dequant", ["q"], ["y"], name="deq", scale_o=n)], {"x": (1, 4)}, {"y": (1, 4)})


def _quant_bin(n: int) -> bytes:
    t = ModelBin()
    x = t.tensor("x", "float32", (1, 4), flags=INPUT)
    q = t.tensor("q", "int8", (1, 4), n)
    y = t.tensor("y", "float32", (1, 4), flags=OUTPUT)
    t.op(lib.LNN_SIM_OP_QUANT, "quant", [x], [q])
    t.op(lib.LNN_SIM_OP_DEQUANT, "deq", [q], [y])
    return t.build([x], [y])


def test_a_scale_of_2_pow_100_does_not_pack():
    """`lnn pack` wrote it (exit 0) and `lnn run` then said 'exponent 100 outside +-64 ... re-run lnn pack'."""
    for check in (True, False):
        with pytest.raises(ModelFileError) as info:
            pack_onnx(_quant_model(100), check=check)
        err = info.value
        assert (err.node, err.tensor, err.limit, err.actual) == ("quant", "q", SIM_LIMITS.max_exponent, 100)
        assert str(err).startswith("node 'quant' (Quant), tensor 'q': exponent 100 (scale 2**100), beyond what the "
                                   "simulator loads")
        assert "hint:" in str(err)


def test_the_packer_and_the_loader_draw_the_exponent_line_at_the_same_place():
    edge = SIM_LIMITS.max_exponent
    assert edge == lib.LNN_SIM_MAX_EXPONENT == 64
    blob = pack_onnx(_quant_model(edge))  # packs and loads
    x = np.array([[0.0, 2.0 ** -64, -(2.0 ** -60), 1.0]], np.float32)
    assert np.array_equal(Simulator(blob).run([x])[0], np.array([[0.0, 2.0 ** -64, -(2.0 ** -60), 127 * 2.0 ** -64]],
                                                                 np.float32))
    Simulator(_quant_bin(edge))
    for n in (edge + 1, -edge - 1):
        with pytest.raises(ModelFileError) as info:
            pack_onnx(_quant_model(n), check=False)
        assert info.value.actual == n and info.value.tensor == "q"
        assert _load_error(_quant_bin(n)).status == lib.LNN_SIM_E_TENSOR


def test_an_op_the_loader_refuses_is_refused_at_pack_time_naming_the_node():
    """What only an op's own C check knows (here iqAdd's left shift, n_o - n_x <= 32) is refused when the packer loads
    what it wrote; the chip rule (n_o <= min(n_x, n_y)) refuses it first when rules run."""
    model = make_model([tnode("Quant", ["x"], ["q"], name="quant", scale_x=-20),
                        tnode("iqAdd", ["q", "q"], ["s"], name="add", scale_x=-20, scale_y=-20, scale_o=20),
                        tnode("Dequant", ["s"], ["y"], name="deq", scale_o=20)], {"x": (1, 4)}, {"y": (1, 4)})
    with pytest.raises(HardwareLimitError):
        pack_onnx(model)
    with pytest.raises(ModelFileError) as info:
        pack_onnx(model, check=False)
    err = info.value
    assert err.node == "add" and err.status == lib.LNN_SIM_E_ATTR
    assert str(err).startswith("node 'add' (iqAdd) cannot be packed: the simulator's loader refuses the package")
    assert f"by more than {lib.LNN_SIM_MAX_LEFT_SHIFT}" in str(err)


def test_pack_without_validation_writes_what_the_loader_refuses():
    res = pack_graph(read_onnx(_quant_model(3)))
    res.plan.placements["y"].offset = res.plan.placements["q"].offset  # dequant over its own input
    with pytest.raises(ModelFileError) as info:
        pack(res.graph, res.plan)
    assert info.value.node == "deq" and info.value.status == lib.LNN_SIM_E_SCHEDULE
    assert _load_error(pack(res.graph, res.plan, validate=False)).status == lib.LNN_SIM_E_SCHEDULE


def test_the_limits_are_read_from_the_header():
    header = (Path(__file__).resolve().parents[1] / "csrc" / "include" / "lnn_sim.h").read_text()
    for field, macro in (("max_exponent", "LNN_SIM_MAX_EXPONENT"), ("max_left_shift", "LNN_SIM_MAX_LEFT_SHIFT"),
                         ("max_rank", "LNN_SIM_MAX_RANK"), ("max_op_inputs", "LNN_SIM_MAX_OP_INPUTS"),
                         ("max_op_outputs", "LNN_SIM_MAX_OP_OUTPUTS"), ("max_graph_io", "LNN_SIM_MAX_GRAPH_IO"),
                         ("max_attr_json_depth", "LNN_SIM_MAX_ATTR_JSON_DEPTH")):
        line = next(ln for ln in header.splitlines() if ln.startswith(f"#define {macro} "))
        assert getattr(SIM_LIMITS, field) == int(line.split()[2]), macro


# -- #4: a plugin op's attribute JSON is bounded ----------------------------------------------------------------------

def _nested(depth: int):
    v = 0
    for _ in range(depth):
        v = [v]
    return v


def test_deeply_nested_plugin_attributes_do_not_pack(ops):
    limit = SIM_LIMITS.max_attr_json_depth
    for depth in (limit, 200, 100_000):  # the attribute dict is one level more
        g = neg_graph()
        g.nodes[1].attrs["table"] = _nested(depth)
        with pytest.raises(ModelFileError) as info:
            pack_graph(g, ops=ops)
        err = info.value
        assert (err.node, err.limit) == ("neg", limit) and err.actual > limit
        assert str(err).startswith("node 'neg' (TestNeg) has attributes nested deeper than model.bin holds")
    g = neg_graph()
    g.nodes[1].attrs["table"] = _nested(limit - 1)
    blob = pack_graph(g, ops=ops).blob
    sim = Simulator(blob, kernels=ops.kernels)
    assert sim._externals[1].attrs["table"] == _nested(limit - 1)


def test_oversized_plugin_attributes_do_not_pack(ops):
    g = neg_graph()
    g.nodes[1].attrs["text"] = "x" * SIM_LIMITS.max_attr_json_bytes
    with pytest.raises(ModelFileError) as info:
        pack_graph(g, ops=ops)
    assert info.value.node == "neg" and info.value.limit == SIM_LIMITS.max_attr_json_bytes
    assert "too large for model.bin" in str(info.value)


def _external_bin(attrs_json: str) -> bytes:
    t = ModelBin()
    x = t.tensor("x", "int8", (1, 4), 0, flags=INPUT)
    y = t.tensor("y", "int8", (1, 4), 0, flags=OUTPUT)
    t.op(EXTERNAL_OP_CODE, "neg", [x], [y], ["TestNeg", attrs_json])
    return t.build([x], [y])


def test_a_hostile_model_bin_with_100000_deep_attributes_is_refused(host, ops, tmp_path, capsys):
    """`lnn run` ended in a RecursionError traceback; the loader now refuses the nesting before Python parses it."""
    blob = _external_bin('{"a":' + "[" * 100_000 + "]" * 100_000 + "}")
    err = _load_error(blob, kernels=ops.kernels)
    assert err.status == lib.LNN_SIM_E_ATTR
    assert f"op 'neg': attribute JSON nests arrays/objects deeper than {SIM_LIMITS.max_attr_json_depth}" in str(err)
    path = tmp_path / "deep.bin"
    path.write_bytes(blob)
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.int8))
    capsys.readouterr()
    code = main(["run", str(path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")], host=host)
    out = capsys.readouterr()
    assert code == 2 and "Traceback" not in out.err and "deeper than 32 levels" in out.err
    assert _load_error(_external_bin('{"a":"' + "x" * SIM_LIMITS.max_attr_json_bytes + '"}')).status == \
        lib.LNN_SIM_E_ATTR


def test_the_loader_counts_nesting_as_json_does(ops):
    limit = SIM_LIMITS.max_attr_json_depth
    ok = json.dumps({"bias": 1, "t": _nested(limit - 1), "s": "[[[[{{{{\\\"" * 40})
    sim = Simulator(_external_bin(ok), kernels=ops.kernels)  # brackets inside strings do not count
    assert sim._externals[0].attrs == json.loads(ok)
    (y,) = sim.run([np.array([[1, 2, -3, 127]], np.int8)])
    assert y.tolist() == [[0, -1, 4, -126]]
    deep = json.dumps({"t": _nested(limit)})
    assert _load_error(_external_bin(deep)).status == lib.LNN_SIM_E_ATTR
    # a string that ends in an escape: the scan stops at its end, and Python refuses it as not JSON
    assert "not JSON" in str(_load_error(_external_bin('{"a":"\\'), kernels=ops.kernels))


# -- #10: unbounded work -----------------------------------------------------------------------------------------------

def _pool_bin(k: int = 256, side: int = 4096) -> bytes:
    """448 bytes: a max pool whose 256 x 256 window slides over a padded 4096 x 4096 image (1.1 T window cells)."""
    t = ModelBin()
    x = t.tensor("x", "int8", (1, 1, side, side), 0, flags=INPUT)
    y = t.tensor("y", "int8", (1, 1, side, side), 0, flags=OUTPUT)
    p0 = (k - 1) // 2
    t.op(lib.LNN_SIM_OP_MAXPOOL2D, "pool", [x], [y], [k, k, 1, 1, p0, p0, k - 1 - p0, k - 1 - p0, 0, 1, 1])
    return t.build([x], [y])


def _conv_bin() -> bytes:
    """A 128 x 128 kernel over 4096 padded 64 x 64 images: 16 KB of weights, 275 G MACs."""
    t = ModelBin()
    x = t.tensor("x", "int8", (4096, 1, 64, 64), 0, flags=INPUT)
    w = t.tensor("w", "int8", (1, 1, 128, 128), 0, data=np.ones((1, 1, 128, 128), np.int8))
    y = t.tensor("y", "int8", (4096, 1, 64, 64), 0, flags=OUTPUT)
    t.op(lib.LNN_SIM_OP_CONV2D, "conv", [x, w], [y], [128, 128, 1, 1, 63, 63, 64, 64, 1, 1, 1])
    return t.build([x], [y])


def test_a_small_model_bin_with_huge_geometry_is_refused():
    side = 4096 * 4096
    for blob, name, macs in ((_pool_bin(), "pool", side * 256 * 256 + 2 * side),
                             (_conv_bin(), "conv", side * 128 * 128 + 2 * side + 128 * 128)):
        assert len(blob) < 20_000
        err = _load_error(blob, path="huge.bin")
        assert err.status == lib.LNN_SIM_E_WORK
        assert (err.limit, err.actual, err.node, err.path) == (SIM_LIMITS.default_max_macs, macs, name, "huge.bin")
        assert str(err).startswith(f"packed model 'huge.bin' needs more work than the simulator's limit of "
                                   f"{SIM_LIMITS.default_max_macs} MACs")
        assert "--max-macs" in err.hint
        sim = Simulator(blob, max_macs=0)  # no limit: it loads (and is not run here)
        assert sim.macs == macs and sim.op_macs == {name: macs}
        assert _load_error(blob, max_macs=macs - 1).status == lib.LNN_SIM_E_WORK
        assert Simulator(blob, max_macs=macs).macs == macs


def test_the_mac_count_of_a_packed_model():
    """Conv: outputs x C_in/g x kh x kw; linear: outputs x K; pools: outputs x window; every op: + elements read and
    written."""
    from test_sim_schedule import _model

    sim = Simulator(pack_graph(read_onnx(_model()), fuse_relu=False).blob)
    conv_a = 4 * 64 * 2 * 9 + (128 + 72 + 256)
    conv_b = 4 * 64 * 2 * 1 + (128 + 8 + 256)
    assert sim.op_macs["conva"] == conv_a and sim.op_macs["convb"] == conv_b
    assert sim.op_macs["pool"] == 128 * 4 + 512 + 128
    assert sim.op_macs["fc"] == 5 * 128 + 128 + 640 + 5
    assert sim.op_macs["add"] == 3 * 128
    assert sim.macs == sum(sim.op_macs.values()) < SIM_LIMITS.default_max_macs


def test_the_mac_limit_is_checked():
    for bad in (-1, 1.5, True, "10", 2 ** 64):
        with pytest.raises(ConfigError) as info:
            Simulator(_quant_bin(3), max_macs=bad)
        assert info.value.option == "max_macs"
    assert parse_macs("40G") == 40 * 10 ** 9 == SIM_LIMITS.default_max_macs
    assert (parse_macs("0"), parse_macs("500M"), parse_macs("1234")) == (0, 5 * 10 ** 8, 1234)
    for bad in ("-1", "1.5G", "10X", "", "99999999999T"):
        with pytest.raises(ConfigError):
            parse_macs(bad)


def test_lnn_run_takes_a_mac_limit(tmp_path, capsys):
    host = isolated_host([backend_plugin])
    model = tmp_path / "q.bin"
    model.write_bytes(pack_onnx(_quant_model(3)))
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    macs = Simulator(model.read_bytes()).macs
    run = ["run", str(model), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]
    capsys.readouterr()
    assert main([*run, "--max-macs", str(macs - 1)], host=host) == 2
    err = capsys.readouterr().err
    assert "needs more work than the simulator's limit of" in err and "Traceback" not in err
    assert main([*run, "--max-macs", str(macs)], host=host) == 0
    assert main([*run, "--max-macs", "lots"], host=host) == 2
    assert "option --max-macs has an invalid MAC count 'lots'" in capsys.readouterr().err
    huge = tmp_path / "huge.bin"
    huge.write_bytes(_pool_bin())
    np.save(tmp_path / "big.npy", np.zeros((1, 1, 4096, 4096), np.int8))
    assert main(["run", str(huge), str(tmp_path / "big.npy"), "-o", str(tmp_path / "z.npy")], host=host) == 2
    assert "heaviest op: pool" in capsys.readouterr().err


def test_lnn_check_judges_the_loader_limits_too(tmp_path, capsys):
    """`lnn check` said "fits: yes" for a model that `lnn pack` refuses (exponent 100): it now reports the package
    limit as a violation at the node, and exits 1."""
    import onnx

    from lnn_backend_csk60xx.check import check_graph
    from lnn_backend_csk60xx.dialect import read_onnx
    from lnn_core.cli import main

    report = check_graph(read_onnx(_quant_model(100)))
    (v,) = [v for v in report.violations if v.rule_id == "csk60xx.package.lnn"]
    assert (v.op_name, v.limit, v.actual) == ("quant", SIM_LIMITS.max_exponent, 100)
    assert not report.ok and not report.fits and report.memory["fits"] is False
    assert check_graph(read_onnx(_quant_model(SIM_LIMITS.max_exponent))).ok  # at the limit: fits
    src = tmp_path / "q.onnx"
    onnx.save(_quant_model(100), src)
    assert main(["check", str(src)]) == 1
    out = capsys.readouterr().out
    assert "csk60xx.package.lnn" in out and "fits: NO" in out
