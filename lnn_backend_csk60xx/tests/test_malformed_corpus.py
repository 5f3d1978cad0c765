"""A corpus of malformed CSK60xx-dialect files, each written to disk by the test: every one gets its
own clear ModelFileError (what and where on the first line, the file path, a hint), none crashes."""

from __future__ import annotations

import numpy as np
import onnx
from _helpers import make_model, snode, tnode

from lnn_backend_csk60xx.dialect import read_onnx
from lnn_core.errors import ModelFileError


def _conv(**overrides):
    attrs = dict(scale_x=4, scale_w=6, scale_o=3, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
                 dilations=[1, 1], group=1, data_bits=8, parameter_bits=8, o_bits=8)
    attrs.update(overrides)
    attrs = {k: v for k, v in attrs.items() if v is not None}
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", data_bits=8, scale_x=4),
             tnode("Conv2dInt", ["q", "w", "b"], ["c"], name="conv", **attrs),
             tnode("Dequant", ["c"], ["y"], name="deq", scale_o=3)]
    inits = {"w": np.ones((2, 3, 3, 3), np.int8), "b": np.zeros(2, np.int32)}
    return make_model(nodes, {"x": (1, 3, 5, 5)}, {"y": (1, 2, 5, 5)}, inits)


def _edit(fn):
    m = _conv()
    fn(m)
    return m


def _attr(m, node, name, **set_):
    for a in m.graph.node[node].attribute:
        if a.name == name:
            for k, v in set_.items():
                setattr(a, k, v)


def _cycle():
    nodes = [snode("Relu", ["b"], ["a"], name="r1"), snode("Relu", ["a"], ["b"], name="r2"),
             tnode("Quant", ["x"], ["q"], name="quant", scale_x=0)]
    return make_model(nodes, {"x": (1,)}, {"q": (1,)})


CORPUS = {
    "unknown_op": _edit(lambda m: setattr(m.graph.node[1], "op_type", "Conv3dInt")),
    "linger3_domain": _edit(lambda m: setattr(m.graph.node[1], "domain", "linger")),
    "missing_attribute": _conv(kernel_shape=None),
    "missing_scale": _conv(scale_o=None),
    "ill_typed_attribute": _edit(lambda m: _attr(m, 1, "group", type=onnx.AttributeProto.FLOAT, f=1.0)),
    "wrong_length": _conv(strides=[1, 1, 1]),
    "unsupported_value": _conv(o_bits=12),
    "non_power_of_two_scale": _edit(lambda m: _attr(m, 1, "scale_w", f=100.0)),
    "scale_conflict": _conv(scale_x=5),
    "dangling_input": _edit(lambda m: m.graph.node[1].input.__setitem__(0, "nowhere")),
    "cycle": _cycle(),
    "uninferable_shape": _edit(lambda m: m.graph.input[0].type.tensor_type.shape.dim[2].__setattr__("dim_param", "H")),
    "weight_shape_mismatch": _edit(lambda m: m.graph.initializer[0].CopyFrom(
        onnx.numpy_helper.from_array(np.ones((2, 4, 3, 3), np.int8), "w"))),
    "extra_input": _edit(lambda m: m.graph.node[1].input.append("b")),
    "declared_output_mismatch": _edit(lambda m: m.graph.output[0].type.tensor_type.shape.dim[3].__setattr__(
        "dim_value", 7)),
}


def test_every_malformed_file_gets_its_own_clear_error(tmp_path):
    errors: dict[str, ModelFileError] = {}
    for name, model in CORPUS.items():
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, path)
        try:
            read_onnx(path)
        except ModelFileError as exc:
            errors[name] = exc
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage" * 10)
    for name in ("junk", "missing"):
        try:
            read_onnx(tmp_path / f"{name}.onnx")
        except ModelFileError as exc:
            errors[name] = exc
    assert sorted(errors) == sorted([*CORPUS, "junk", "missing"]), "some malformed files were accepted"
    headlines = {name: e.headline for name, e in errors.items()}
    assert len(set(headlines.values())) == len(headlines) >= 12, headlines
    for name, e in errors.items():
        assert e.path is not None and e.path.endswith(f"{name}.onnx"), (name, e.path)
        assert e.hint, name
        assert str(e).splitlines()[-1].lstrip().startswith("hint:"), name
    named = [n for n, e in errors.items() if e.node is not None]
    assert len(named) >= 12, f"errors that name the node: {named}"
