"""The backend's op registry from the outside: a throw-away op family and a throw-away package format,
each defined inside this file and registered through the public hook alone (no backend file edited),
go through `lnn pack`, `lnn run` and `lnn check` like the built-in ones."""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import pytest
from _helpers import ir_graph, quantize, sat, shr

import lnn_backend_csk60xx.plugin as backend_plugin
from lnn_backend_csk60xx.dialect import write_onnx
from lnn_backend_csk60xx.formats import PackageFormat
from lnn_backend_csk60xx.inference import infer_shapes
from lnn_backend_csk60xx.ops import AttrSpec, OpDef, OpSet, Params, engine_operands
from lnn_backend_csk60xx.ops._rules import buffer_rule
from lnn_backend_csk60xx.planner import plan_memory
from lnn_backend_csk60xx.sizes import FitPlan, Problem, align
from lnn_core import hookimpl
from lnn_core.cli import main
from lnn_core.graph import Node
from lnn_core.testing import isolated_host

# -- a throw-away op family: per-channel scale, y = RQ_8(x * w[c] + b[c], n_x + n_w - n_o) ---------------

MAX_CHANNELS = 8


def _infer(c: Any) -> list[Any]:
    x, w, b = c.info(0), c.info(1), c.info(2)
    c.dtype(x, ["int8"], "input")
    c.rank(x, [4], "input")
    c.dtype(w, ["int8"], "weight")
    c.dtype(b, ["int32"], "bias")
    if w.shape != (x.shape[1],) or b.shape != (x.shape[1],):
        raise c.fail("weight/bias do not match the channels", {"x": x.shape, "w": w.shape, "b": b.shape})
    return [c.out("int8", x.shape, None)]


def _fit(op_type: str, attrs: Mapping[str, Any], ins: Any, outs: Any, limits: Mapping[str, Any]) -> FitPlan:
    channels = ins[0][1]
    problems = () if channels <= MAX_CHANNELS else (
        Problem("test.scale.channels", f"<= {MAX_CHANNELS} channels", f"{channels} channels", "use fewer channels"),)
    return FitPlan(None, (), problems, {"channels": channels})


def _kernel(call: Any) -> np.ndarray:
    x, w, b = (a.astype(np.int64) for a in call.inputs)
    shift = call.input_specs[0].exponent + call.input_specs[1].exponent - call.output.exponent
    acc = x * w.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)
    return sat(shr(acc, shift)).astype(np.int8)


SCALE = OpDef(
    "TestScale", "lnn.test", (3, 3), _infer,
    attrs={"mode": AttrSpec("str", default="plain", choices=("plain",))},
    scales={"scale_x": ("in", 0), "scale_w": ("in", 1), "scale_o": ("out", 0)}, params=(Params(1, 2),),
    pack_rules=(buffer_rule("test.scale.channels", _fit, "TestScale handles at most {n} channels."),),
    fit=_fit, prefetch_bytes=lambda graph, node: align(graph.tensors[node.inputs[0]].shape[1], 16),
    workspace=engine_operands, kernel=_kernel)


def _scale_plugin() -> types.ModuleType:
    plugin = types.ModuleType("scale_plugin")

    @hookimpl
    def lnn_register_target_ops(registry: Any) -> None:
        registry.add("csk60xx", SCALE)

    plugin.lnn_register_target_ops = lnn_register_target_ops
    return plugin


def scale_graph(channels: int, *, seed: int = 0) -> tuple[Any, np.ndarray, np.ndarray]:
    """x -> Quant(5) -> TestScale(w: 2^6, b) -> Relu -> Dequant."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, channels).astype(np.int8)
    b = rng.integers(-3000, 3000, channels).astype(np.int32)
    g = ir_graph("scale")
    g.add_tensor("x", "float32", (1, channels, 3, 4))
    g.inputs = ["x"]
    g.add_node(Node("quant", "Quant", ["x"], ["q"]))
    g.add_tensor("q", "int8", None, 5)
    g.add_initializer("w", w, 6)
    g.add_initializer("b", b, 11)
    g.add_node(Node("scale", "TestScale", ["q", "w", "b"], ["s"], {"mode": "plain"}, "lnn.test"))
    g.add_tensor("s", "int8", None, 4)
    g.add_node(Node("relu", "Relu", ["s"], ["r"]))
    g.add_tensor("r", "int8", None, 4)
    g.add_node(Node("deq", "Dequant", ["r"], ["y"]))
    g.add_tensor("y", "float32", (1, channels, 3, 4))
    g.outputs = ["y"]
    return g, w, b


@pytest.fixture(scope="module")
def host():
    return isolated_host([backend_plugin, _scale_plugin()])


def test_a_throw_away_op_family_packs_runs_and_matches_its_reference(host, tmp_path, capsys):
    ops = OpSet.from_host(host)
    assert ops.is_plugin("TestScale") and not ops.is_plugin("Conv2dInt")
    graph, w, b = scale_graph(6)
    src = tmp_path / "scale.onnx"
    onnx.save(write_onnx(graph, ops=ops), src)
    assert main(["pack", str(src), "-o", str(tmp_path / "scale.bin"), "--json"], host=host) == 0
    summary = json.loads(capsys.readouterr().out)
    share = summary["memory"]["share_mem"]
    assert share["prefetch_total"] == align(align(6, 16), 16) + 6 * 4  # the op's packed size, then its bias
    assert share["scratch"] == ["prefetch:scale"]  # and no workspace: nothing lives in PSRAM

    x = (np.random.default_rng(1).standard_normal((1, 6, 3, 4)) * 3).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    dump = tmp_path / "dump"
    assert main(["run", str(tmp_path / "scale.bin"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"),
                 "--dump", str(dump)], host=host) == 0
    q = quantize(x, 5).astype(np.int64)
    s = sat(shr(q * w.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1), 5 + 6 - 4))
    r = np.maximum(s, 0)
    assert np.array_equal(np.load(dump / "q.npy"), q)  # every tensor, as the reference computes it
    assert np.array_equal(np.load(dump / "s.npy"), s)
    assert np.array_equal(np.load(dump / "r.npy"), r)
    assert np.array_equal(np.load(tmp_path / "y.npy"), r.astype(np.float32) / 16)


def test_the_throw_away_family_rule_is_reported_by_lnn_check(host, tmp_path, capsys):
    ops = OpSet.from_host(host)
    assert [r.id for r in ops.rules_for("TestScale")] == ["test.scale.channels"]
    graph, _, _ = scale_graph(MAX_CHANNELS + 4)
    src = tmp_path / "wide.onnx"
    onnx.save(write_onnx(graph, ops=ops), src)
    assert main(["check", str(src), "--json"], host=host) == 1
    report = json.loads(capsys.readouterr().out)
    (v,) = [v for v in report["violations"] if v["rule_id"] == "test.scale.channels"]
    assert v["op_name"] == "scale" and v["actual"] == "12 channels" and v["limit"] == f"<= {MAX_CHANNELS} channels"
    assert main(["pack", str(src), "-o", str(tmp_path / "wide.bin")], host=host) == 1
    assert "test.scale.channels" in capsys.readouterr().out


# -- a throw-away package format ----------------------------------------------------------------------


def _write_listing(graph: Any, plan: Any, ops: OpSet) -> bytes:
    listing = {"ops": [[n.name, n.op_type] for n in graph.nodes],
               "tensors": {name: [p.region, p.offset] for name, p in plan.placements.items()}}
    return json.dumps(listing, sort_keys=True).encode()


LISTING = PackageFormat("listing", "a JSON listing of ops and placements (test only)", ".json",
                        supports=lambda op: not op.op_type.startswith("Conv"),
                        plan=plan_memory,
                        write=_write_listing)


@pytest.fixture(scope="module")
def format_host():
    plugin = types.ModuleType("listing_plugin")

    @hookimpl
    def lnn_register_target_ops(registry: Any) -> None:
        registry.add_format("csk60xx", LISTING)

    plugin.lnn_register_target_ops = lnn_register_target_ops
    return isolated_host([backend_plugin, _scale_plugin(), plugin])


def test_lnn_pack_format_chooses_a_registered_package_format(format_host, tmp_path, capsys):
    ops = OpSet.from_host(format_host)
    assert set(ops.formats) == {"lnn", "thinker", "thinker-share", "listing"}  # the backend registers three
    graph, _, _ = scale_graph(4)
    src = tmp_path / "scale.onnx"
    onnx.save(write_onnx(graph, ops=ops), src)
    assert main(["pack", str(src), "-o", str(tmp_path / "scale.json"), "--format", "listing"], host=format_host) == 0
    listing = json.loads((tmp_path / "scale.json").read_text())
    assert [op for _, op in listing["ops"]] == ["Quant", "TestScale", "Relu", "Dequant"]
    assert listing["tensors"]["x"][0] == "share_mem"
    capsys.readouterr()
    assert main(["pack", str(src), "-o", str(tmp_path / "scale.bin")], host=format_host) == 0  # default: model.bin
    assert (tmp_path / "scale.bin").read_bytes()[:8] == b"LNNMODEL"


def test_an_unknown_format_and_an_op_the_format_cannot_hold_are_clear_errors(format_host, tmp_path, capsys):
    from _helpers import ir_conv_graph

    ops = OpSet.from_host(format_host)
    graph, _, _ = scale_graph(4)
    src = tmp_path / "scale.onnx"
    onnx.save(write_onnx(graph, ops=ops), src)
    assert main(["pack", str(src), "-o", str(tmp_path / "x.bin"), "--format", "nope"], host=format_host) == 2
    err = capsys.readouterr().err
    assert "package format 'nope' is not known" in err and "listing, lnn" in err
    conv = tmp_path / "conv.onnx"
    conv_graph = infer_shapes(ir_conv_graph((1, 4, 6, 6), np.ones((4, 4, 3, 3), np.int8)))
    onnx.save(write_onnx(conv_graph, ops=ops), conv)
    assert main(["pack", str(conv), "-o", str(tmp_path / "c.json"), "--format", "listing"], host=format_host) == 2
    err = capsys.readouterr().err
    assert "cannot be packed into the 'listing' package format" in err and "Conv2dInt" in err
