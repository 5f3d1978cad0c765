"""What the ONNX reader used to accept silently or report at the wrong place (issue 12 items 8 and 9): each is
an error naming the right file, node or option, through read_onnx and through ``lnn check``/``lnn pack``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _helpers import make_model, snode, tnode
from onnx import helper

from lnn_backend_csk60xx.dialect import read_onnx
from lnn_core.cli import main
from lnn_core.errors import ConfigError, ModelFileError

RNG = np.random.default_rng(3)


def _conv(pad=1, symbolic=False, **conv_attrs):
    """quant -> 'stem' conv -> flatten -> 'fc' linear -> dequant, for a 1x2x6x6 input."""
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=4),
             tnode("Conv2dInt", ["q", "w", "b"], ["c"], name="stem", scale_x=4, scale_w=7, scale_o=3,
                   kernel_shape=[3, 3], pads=[pad] * 4, **conv_attrs),
             snode("Flatten", ["c"], ["f"], name="flat", axis=1),
             tnode("LinearInt", ["f", "fw", "fb"], ["o"], name="fc", scale_x=3, scale_w=7, scale_o=2),
             tnode("Dequant", ["o"], ["y"], name="deq", scale_o=2)]
    inits = {"w": RNG.integers(-128, 128, (4, 2, 3, 3), dtype=np.int8),
             "b": RNG.integers(-500, 500, 4, dtype=np.int32),
             "fw": RNG.integers(-128, 128, (3, 4 * 6 * 6), dtype=np.int8),
             "fb": RNG.integers(-500, 500, 3, dtype=np.int32)}
    model = make_model(nodes, {"x": (1, 2, 6, 6)}, {"y": (1, 3)}, inits)
    if symbolic:
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    return model


def _err(source, exc=ModelFileError, **kw):
    with pytest.raises(exc) as info:
        read_onnx(source, **kw)
    return info.value


def _cli(tmp_path, model, capsys, *args, command="check"):
    path = tmp_path / "m.onnx"
    if isinstance(model, bytes):
        path.write_bytes(model)
    elif model is not None:
        onnx.save(model, path)
    argv = [command, str(path), *args] + (["-o", str(tmp_path / "m.bin")] if command == "pack" else [])
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# -- item 8: --input-shape ---------------------------------------------------------------------------------------

def test_an_input_shape_naming_no_input(tmp_path, capsys):
    e = _err(_conv(symbolic=True), ConfigError, input_shapes={"image": (1, 2, 6, 6)})
    assert e.option == "--input-shape" and e.value == "image" and e.valid == ["x"]
    assert "'image', which is no graph input" in e.headline and "x ('N', 2, 6, 6)" in str(e)
    for command in ("check", "pack"):
        code, _, err = _cli(tmp_path, _conv(symbolic=True), capsys, "--input-shape", "image=1,2,6,6",
                            command=command)
        assert code == 2 and err.startswith("ConfigError: the model in ") and "no graph input" in err


def test_an_input_shape_may_fix_symbolic_axes_only(tmp_path, capsys):
    g = read_onnx(_conv(symbolic=True), input_shapes={"x": (1, 2, 6, 6)})
    assert g.tensors["x"].shape == (1, 2, 6, 6)
    assert read_onnx(_conv(), input_shapes={"x": (1, 2, 6, 6)}).tensors["x"].shape == (1, 2, 6, 6)  # the same
    for shape, file in (((1, 2, 7, 7), "1x2x6x6"), ((1, 2, 6), "1x2x6x6")):
        e = _err(_conv(), ConfigError, input_shapes={"x": shape})
        assert "contradicts the shape of graph input 'x'" in e.headline and e.valid == file
    e = _err(_conv(symbolic=True), ConfigError, input_shapes={"x": (2, 3, 6, 6)})
    assert e.valid == "Nx2x6x6" and e.value == "x=2,3,6,6"
    code, _, err = _cli(tmp_path, _conv(), capsys, "--input-shape", "x=1,2,8,8")
    assert code == 2 and "input shape x=1,2,8,8 contradicts" in err and "file:  1x2x6x6" in err


# -- item 8: versions, empty graphs, attributes -----------------------------------------------------------------

@pytest.mark.parametrize("field, value, text", [
    ("ir_version", 99, "has ONNX IR version 99"),
    ("ir_version", 0, "has ONNX IR version 0"),
    ("opset", 99, "imports the standard ONNX opset 99"),
    ("thinker", 99, "imports the 'thinker' opset 99"),
])
def test_unknown_versions(field, value, text, tmp_path, capsys):
    m = _conv()
    if field == "ir_version":
        m.ir_version = value
    else:
        domain = "" if field == "opset" else "thinker"
        next(o for o in m.opset_import if o.domain == domain).version = value
    e = _err(m)
    assert text in e.headline and e.node is None
    code, _, err = _cli(tmp_path, m, capsys)
    assert code == 2 and text in err.splitlines()[0]


def test_a_graph_with_no_nodes(tmp_path, capsys):
    g = helper.make_graph([], "empty", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 12)])
    assert "its graph has no nodes" in _err(m).headline
    code, _, err = _cli(tmp_path, m, capsys, command="pack")
    assert code == 2 and "no nodes" in err and not (tmp_path / "m.bin").exists()


def test_unknown_attributes_are_errors():
    e = _err(_conv(colour="blue"))
    assert e.node == "stem" and "attribute 'colour' is not an attribute of Conv2dInt" in e.headline
    assert "kernel_shape" in e.details["known"] and "scale_w" in e.details["known"]


def test_auto_pad_on_a_conv():
    stem = next(n for n in read_onnx(_conv(auto_pad="NOTSET")).nodes if n.name == "stem")
    assert stem.attrs == next(n for n in read_onnx(_conv()).nodes if n.name == "stem").attrs  # the pads hold
    for mode in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        e = _err(_conv(auto_pad=mode))
        assert e.node == "stem" and f"auto_pad={mode!r} is not supported" in e.headline and "pads" in e.hint


# -- item 9: the right place -------------------------------------------------------------------------------------

@pytest.mark.parametrize("pad", [4, 1000, 10**8])
def test_absurd_pads_are_reported_at_their_node(pad, tmp_path, capsys):
    e = _err(_conv(pad=pad))
    assert e.node == "stem" and f"pads {[pad] * 4} reach beyond its kernel 3x3" in e.headline
    assert "node 'fc'" in e.details["then"] and e.details["output"] == f"1x4x{4 + 2 * pad}x{4 + 2 * pad}"
    code, _, err = _cli(tmp_path, _conv(pad=pad), capsys, command="pack")
    assert code == 2 and err.startswith("ModelFileError: node 'stem' (Conv2dInt)")


def test_a_shape_error_without_absurd_pads_stays_where_it_is():
    m = _conv()
    m.graph.initializer[2].CopyFrom(onnx.numpy_helper.from_array(np.zeros((3, 100), np.int8), "fw"))
    e = _err(m)
    assert e.node == "fc" and "weight does not match" in e.headline


def test_a_cycle_lists_only_its_nodes():
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=4),
             tnode("iqAdd", ["q", "d"], ["a"], name="add", scale_x=4, scale_y=4, scale_o=4),
             snode("Relu", ["a"], ["b"], name="relu"),
             snode("Relu", ["b"], ["d"], name="back"),
             snode("Relu", ["b"], ["t1"], name="after1"), snode("Relu", ["t1"], ["t2"], name="after2"),
             snode("Relu", ["t2"], ["t3"], name="after3"),
             tnode("Dequant", ["t3"], ["y"], name="deq", scale_o=4)]
    e = _err(make_model(nodes, {"x": (1, 4)}, {"y": (1, 4)}))
    assert sorted(e.cycle) == ["add", "back", "relu"] and e.node in e.cycle
    assert "after" not in str(e) and "deq" not in str(e)
    text = e.details["cycle"]
    start = e.cycle[0]
    assert text.startswith(repr(start)) and text.endswith(repr(start)) and text.count("->") == 3


def test_an_empty_file(tmp_path, capsys):
    code, _, err = _cli(tmp_path, b"", capsys)
    assert code == 2 and err.startswith(f"ModelFileError: cannot read ONNX file '{tmp_path / 'm.onnx'}': the file "
                                        "is empty")
    assert "graph outputs" not in err
    e = _err(tmp_path / "m.onnx")
    assert e.path == str(tmp_path / "m.onnx")


def test_a_protobuf_without_a_graph(tmp_path):
    (tmp_path / "m.onnx").write_bytes(onnx.ModelProto(ir_version=7).SerializeToString())
    assert "is not an ONNX model: it has no graph" in _err(tmp_path / "m.onnx").headline


def test_missing_external_data(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(_conv(), str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.data",
              size_threshold=0)
    assert read_onnx(path) == read_onnx(_conv_same_weights(path))  # the data beside it: read as usual
    (tmp_path / "m.data").rename(tmp_path / "elsewhere.data")
    e = _err(path)
    assert "keeps its data in the external file 'm.data', which is missing" in e.headline
    assert "not a valid ONNX protobuf" not in str(e) and e.details["looked in"] == str(tmp_path)
    code = main(["check", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "external file 'm.data'" in err
    (tmp_path / "m.data").write_bytes(b"\0" * 10)  # too short for the offsets the file names
    e = _err(path)  # onnx >= 1.15 refuses the short file; onnx 1.14 reads it and the tensor cannot be decoded
    assert "external data cannot be read" in e.headline or "initializer 'w' cannot be decoded" in e.headline


def _conv_same_weights(path):
    return onnx.load(str(path))  # onnx's own loader, with the external data
