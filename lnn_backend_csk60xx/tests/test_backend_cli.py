"""``lnn pack``, ``lnn run`` and ``lnn check`` through lnn_core.cli.main, on ONNX files built here and on the
linger file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from _helpers import LINGER_DEMO, make_model, quantize, snode, tnode

from lnn_backend_csk60xx.pipeline import pack_onnx
from lnn_backend_csk60xx.simulator import Simulator
from lnn_core.cli import main
from lnn_core.errors import ConfigError

RNG = np.random.default_rng(11)
RESNET = LINGER_DEMO / "resnet18-12-regular.onnx"


def small_model(kernel=3, symbolic=False):
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=4),
             tnode("Conv2dInt", ["q", "w", "b"], ["c"], name="conv", scale_x=4, scale_w=7, scale_o=3,
                   kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4),
             snode("Relu", ["c"], ["r"], name="relu"),
             tnode("iqAdd", ["r", "r"], ["a"], name="add", scale_x=3, scale_y=3, scale_o=2),
             tnode("Dequant", ["a"], ["y"], name="deq", scale_o=2)]
    inits = {"w": RNG.integers(-128, 128, (4, 2, kernel, kernel), dtype=np.int8),
             "b": RNG.integers(-500, 500, 4, dtype=np.int32)}
    model = make_model(nodes, {"x": (1, 2, 6, 6)}, {"y": (1, 4, 6, 6)}, inits)
    if symbolic:
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    return model


@pytest.fixture
def files(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(small_model(), src)
    x = (RNG.standard_normal((1, 2, 6, 6)) * 3).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return tmp_path, src, x


def test_pack_writes_model_and_reports(files, capsys):
    tmp, src, x = files
    out = tmp / "m.bin"
    assert main(["pack", str(src), "-o", str(out), "--report-dir", str(tmp / "rep")]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "share-memory:" in text and "fused 1 ReLU" in text
    assert out.read_bytes() == pack_onnx(small_model_from(src))
    assert (tmp / "rep" / "memory.txt").read_text().startswith("region")
    report = json.loads((tmp / "rep" / "memory.json").read_text())
    assert report["passes"]["fused_relu"] == [{"conv": "conv", "relu": "relu"}] and "live_bytes" in report
    pytest.importorskip("matplotlib")
    assert (tmp / "rep" / "memory.png").stat().st_size > 1000


def small_model_from(path):
    return onnx.load(path)


def test_pack_json_and_sizes(files, capsys):
    tmp, src, _ = files
    assert main(["pack", str(src), "-o", str(tmp / "m.bin"), "--json", "--share-mem", "64K", "--psram", "1M"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["bytes"] == (tmp / "m.bin").stat().st_size and data["memory"]["share_mem"]["limit"] == 65536
    assert data["memory"]["psram"]["limit"] == 1048576 and data["fused_relu"] == 1 and data["splits"] == []


def test_pack_refuses_violations_with_the_table(tmp_path, capsys):
    src = tmp_path / "bad.onnx"
    onnx.save(small_model(kernel=7), src)
    assert main(["pack", str(src), "-o", str(tmp_path / "bad.bin")]) == 1
    out, err = capsys.readouterr()
    assert "csk60xx.conv.kernel_size" in out and "conv" in out and "HardwareLimitError" in err
    assert not (tmp_path / "bad.bin").exists()
    assert main(["pack", str(src), "-o", str(tmp_path / "bad.bin"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["violations"][0]["rule_id"] == "csk60xx.conv.kernel_size"


def test_pack_refuses_a_plan_that_does_not_fit(files, capsys):
    tmp, src, _ = files
    assert main(["pack", str(src), "-o", str(tmp / "m.bin"), "--share-mem", "256", "--psram", "256"]) == 1
    assert "csk60xx.memory" in capsys.readouterr().err


def test_pack_input_shape_and_usage_errors(tmp_path, capsys):
    src = tmp_path / "sym.onnx"
    onnx.save(small_model(symbolic=True), src)
    assert main(["pack", str(src), "-o", str(tmp_path / "a.bin")]) == 2
    assert "cannot be inferred" in capsys.readouterr().err
    assert main(["pack", str(src), "-o", str(tmp_path / "a.bin"), "--input-shape", "x=1,2,6,6"]) == 0
    capsys.readouterr()
    assert main(["pack", str(src), "-o", str(tmp_path / "a.bin"), "--input-shape", "x=1,a"]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["pack", str(src), "-o", str(tmp_path / "a.bin"), "--share-mem", "lots"]) == 2
    assert "invalid size" in capsys.readouterr().err
    assert main(["pack", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "a.bin")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ModelFileError: cannot read ONNX file") and "hint:" in err


def test_run_float_int_raw_and_dump(files, capsys):
    tmp, src, x = files
    assert main(["pack", str(src), "-o", str(tmp / "m.bin")]) == 0
    sim = Simulator((tmp / "m.bin").read_bytes())
    (expected,), dump = sim.run([x], dump=True)
    assert main(["run", str(tmp / "m.bin"), str(tmp / "x.npy"), "-o", str(tmp / "y.npy"), "--dump",
                 str(tmp / "dump")]) == 0
    assert np.array_equal(np.load(tmp / "y.npy"), expected)
    index = json.loads((tmp / "dump" / "index.json").read_text())
    assert {v["tensor"] for v in index.values()} == set(dump)
    assert np.array_equal(np.load(tmp / "dump" / "a.npy"), dump["a"]) and index["a.npy"]["exponent"] == 2
    # raw little-endian .bin in, .bin out
    x.astype("<f4").tofile(tmp / "x.bin")
    assert main(["run", str(tmp / "m.bin"), str(tmp / "x.bin"), "-o", str(tmp / "y.bin")]) == 0
    assert np.array_equal(np.fromfile(tmp / "y.bin", "<f4").reshape(expected.shape), expected)
    # --int: the int8 tensor after Quant in, the integers before Dequant out
    np.save(tmp / "q.npy", quantize(x, 4))
    capsys.readouterr()
    assert main(["run", str(tmp / "m.bin"), str(tmp / "q.npy"), "-o", str(tmp / "a.npy"), "--int", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["outputs"][0]["tensor"] == "a" and data["outputs"][0]["dtype"] == "int8"
    assert np.array_equal(np.load(tmp / "a.npy"), dump["a"])


def test_run_input_errors(files, capsys):
    tmp, src, x = files
    assert main(["pack", str(src), "-o", str(tmp / "m.bin")]) == 0
    capsys.readouterr()
    cases = [
        ([str(tmp / "x.npy"), str(tmp / "x.npy")], "takes 1 inputs, got 2 files"),
        ([str(tmp / "wrong.npy")], "does not match"),
        ([str(tmp / "x64.npy")], "does not match"),
        ([str(tmp / "short.bin")], "needs 288"),
        ([str(tmp / "x.txt")], "neither .npy nor .bin"),
        ([str(tmp / "none.npy")], "does not exist"),
    ]
    np.save(tmp / "wrong.npy", np.zeros((1, 2, 5, 5), np.float32))
    np.save(tmp / "x64.npy", x.astype(np.float64))
    (tmp / "short.bin").write_bytes(b"\0" * 100)
    (tmp / "x.txt").write_text("1 2 3")
    for inputs, message in cases:
        assert main(["run", str(tmp / "m.bin"), *inputs, "-o", str(tmp / "y.npy")]) == 2, inputs
        err = capsys.readouterr().err
        assert message in err and "hint:" in err, (inputs, err)
    np.save(tmp / "x16.npy", quantize(x, 4).astype(np.int16))
    assert main(["run", str(tmp / "m.bin"), str(tmp / "x16.npy"), "-o", str(tmp / "y.npy"), "--int"]) == 2
    assert "integer input 'q'" in capsys.readouterr().err
    assert main(["run", str(tmp / "m.bin"), str(tmp / "x.npy"), "-o", str(tmp / "y.npy"), "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_run_int_states_and_applies_the_input_exponent(files, capsys):
    """--int with a float input quantizes it with the input's exponent exactly as the Quant op does (ties, NaN,
    saturation), and says which exponents the integers are at."""
    tmp, src, x = files
    assert main(["pack", str(src), "-o", str(tmp / "m.bin")]) == 0
    x = x.copy()
    x.reshape(-1)[:6] = [0.03125, -0.03125, 1000.0, -1000.0, np.nan, 0.09375]  # half-steps of 2^-4, extremes
    np.save(tmp / "x.npy", x)
    _, dump = Simulator((tmp / "m.bin").read_bytes()).run([x], dump=True)
    capsys.readouterr()
    assert main(["run", str(tmp / "m.bin"), str(tmp / "x.npy"), "-o", str(tmp / "a.npy"), "--int"]) == 0
    cap = capsys.readouterr()
    assert np.array_equal(np.load(tmp / "a.npy"), dump["a"])
    assert "input q: int8 at exponent 4 (value = integer * 2^-4)" in cap.out
    assert "wrote" in cap.out and "a int8 (1, 4, 6, 6) at exponent 2" in cap.out
    assert "quantized for 'q' at exponent 4" in cap.err


def test_run_a_batch_of_rows_on_threads(files, capsys):
    """N rows stacked along the first axis give N rows of output, each the single run's; .npy and raw .bin; --int."""
    tmp, src, _ = files
    assert main(["pack", str(src), "-o", str(tmp / "m.bin")]) == 0
    sim = Simulator((tmp / "m.bin").read_bytes())
    xs = (RNG.standard_normal((7, 2, 6, 6)) * 3).astype(np.float32)
    singles = [sim.run([xs[i:i + 1]], dump=True) for i in range(7)]
    np.save(tmp / "xs.npy", xs)
    xs.astype("<f4").tofile(tmp / "xs.bin")
    for threads in ("1", "3"):
        capsys.readouterr()
        assert main(["run", str(tmp / "m.bin"), str(tmp / "xs.npy"), "-o", str(tmp / "ys.npy"),
                     "--threads", threads]) == 0
        assert "(7, 4, 6, 6) (7 rows)" in capsys.readouterr().out
        assert np.array_equal(np.load(tmp / "ys.npy"), np.concatenate([s[0][0] for s in singles]))
        assert main(["run", str(tmp / "m.bin"), str(tmp / "xs.bin"), "-o", str(tmp / "ys.bin"),
                     "--threads", threads]) == 0
        assert np.array_equal(np.fromfile(tmp / "ys.bin", "<f4").reshape(7, 4, 6, 6), np.load(tmp / "ys.npy"))
        capsys.readouterr()
        assert main(["run", str(tmp / "m.bin"), str(tmp / "xs.npy"), "-o", str(tmp / "as.npy"), "--int",
                     "--threads", threads, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["rows"] == 7 and data["outputs"][0]["exponent"] == 2 and data["inputs"][0]["exponent"] == 4
        assert np.array_equal(np.load(tmp / "as.npy"), np.concatenate([s[1]["a"] for s in singles]))
    assert main(["run", str(tmp / "m.bin"), str(tmp / "xs.npy"), "-o", str(tmp / "ys.npy"), "--dump",
                 str(tmp / "d")]) == 2
    err = capsys.readouterr().err
    assert "--dump takes one row" in err and "(7, 2, 6, 6)" in err and "hint:" in err
    np.save(tmp / "odd.npy", xs[:, :1])
    assert main(["run", str(tmp / "m.bin"), str(tmp / "odd.npy"), "-o", str(tmp / "ys.npy")]) == 2
    assert "does not match" in capsys.readouterr().err


def test_run_refuses_a_smaller_share_memory_with_the_needed_figure(files, capsys):
    tmp, src, _ = files
    assert main(["pack", str(src), "-o", str(tmp / "m.bin")]) == 0
    need = Simulator((tmp / "m.bin").read_bytes()).region_sizes["share_mem"]
    capsys.readouterr()
    assert main(["run", str(tmp / "m.bin"), str(tmp / "x.npy"), "-o", str(tmp / "y.npy"), "--share-mem",
                 str(need - 64)]) == 2
    err = capsys.readouterr().err
    assert f"needs {need} bytes of share-memory" in err and "hint:" in err
    assert main(["run", str(tmp / "m.bin"), str(tmp / "x.npy"), "-o", str(tmp / "y.npy"), "--share-mem",
                 str(need)]) == 0


def test_run_damaged_model_file(files, capsys):
    tmp, src, _ = files
    assert main(["pack", str(src), "-o", str(tmp / "m.bin")]) == 0
    data = bytearray((tmp / "m.bin").read_bytes())
    data[100] ^= 0xFF
    (tmp / "bad.bin").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["run", str(tmp / "bad.bin"), str(tmp / "x.npy"), "-o", str(tmp / "y.npy")]) == 2
    assert "crc32" in capsys.readouterr().err


def test_check_command(files, tmp_path, capsys):
    tmp, src, _ = files
    assert main(["check", str(src)]) == 0
    out = capsys.readouterr().out
    assert "no violations" in out and "fits: yes" in out
    bad = tmp_path / "bad.onnx"
    onnx.save(small_model(kernel=7), bad)
    assert main(["check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "csk60xx.conv.kernel_size" in out and "fits: NO" in out
    assert main(["check", str(bad), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["violations"][0]["op_name"] == "conv"
    assert main(["check", str(src), "--share-mem", "256", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["memory"]["fits"] is False


@pytest.mark.parametrize("command", ["pack", "run", "check"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and "--json" in capsys.readouterr().out


@pytest.mark.skipif(not LINGER_DEMO.is_dir(), reason=f"shared data folder {LINGER_DEMO} is absent")
def test_linger_resnet18_through_the_commands(tmp_path, capsys):
    inputs = np.load(LINGER_DEMO / "resnet18_inputs.npy")
    expected = np.load(LINGER_DEMO / "resnet18_outputs.npy")
    np.save(tmp_path / "x.npy", inputs[2:3])
    assert main(["check", str(RESNET)]) == 0
    assert main(["pack", str(RESNET), "-o", str(tmp_path / "r.bin"), "--json"]) == 0
    capsys.readouterr()
    assert main(["run", str(tmp_path / "r.bin"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "y.npy"), expected[2:3])


def test_run_profile_times_every_op(files, capsys):
    """--profile N prints the slowest ops and the time per op kind; --json adds one entry per op in run order;
    a batch or --int is refused with the option named"""
    tmp, src, x = files
    assert main(["pack", str(src), "-o", str(tmp / "m.bin")]) == 0
    np.save(tmp / "x.npy", x)
    sim = Simulator((tmp / "m.bin").read_bytes())
    capsys.readouterr()
    assert main(["run", str(tmp / "m.bin"), str(tmp / "x.npy"), "-o", str(tmp / "y.npy"), "--profile", "3"]) == 0
    out = capsys.readouterr().out
    assert "us per run (mean of 3," in out and "by kind:" in out and "QUANT" in out
    assert all(name in out for name in sim.op_names)
    assert main(["run", str(tmp / "m.bin"), str(tmp / "x.npy"), "-o", str(tmp / "y.npy"), "--profile", "2",
                 "--json"]) == 0
    prof = json.loads(capsys.readouterr().out)["profile"]
    assert [p["op"] for p in prof] == sim.op_names and all(p["us"] >= 0 for p in prof)
    assert [p["macs"] for p in prof] == [sim.op_macs[n] for n in sim.op_names]
    np.save(tmp / "xs.npy", np.concatenate([x, x]))
    for extra in (["xs.npy", "--profile", "2"], ["x.npy", "--profile", "0"], ["x.npy", "--profile", "2", "--int"]):
        assert main(["run", str(tmp / "m.bin"), str(tmp / extra[0]), "-o", str(tmp / "y.npy"), *extra[1:]]) == 2
        err = capsys.readouterr().err
        assert "lnn run --profile" in err and "hint:" in err


def test_simulator_profile_runs_the_model():
    """Simulator.profile: one entry per op in run order with its kind and MACs; the run leaves the outputs a plain
    run gives; repeat must be a positive integer"""
    rng = np.random.default_rng(3)
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=4),
             tnode("Conv2dInt", ["q", "w"], ["c"], name="conv", scale_x=4, scale_w=7, scale_o=4, kernel_shape=[3, 3],
                   pads=[1, 1, 1, 1], group=3),
             tnode("Dequant", ["c"], ["y"], name="deq", scale_o=4)]
    sim = Simulator(pack_onnx(make_model(nodes, {"x": (1, 3, 6, 6)}, {"y": None},
                                         {"w": rng.integers(-128, 128, (3, 1, 3, 3), dtype=np.int8)}), check=False))
    x = (rng.standard_normal((1, 3, 6, 6)) * 3).astype(np.float32)
    prof = sim.profile([x], repeat=4)
    assert [(t.name, t.kind) for t in prof] == [("quant", "QUANT"), ("conv", "CONV2D"), ("deq", "DEQUANT")]
    assert [t.macs for t in prof] == [sim.op_macs[n] for n in sim.op_names] and all(t.us >= 0 for t in prof)
    profiled = sim._read(sim.outputs[0])  # what the profiled runs left in the output
    (y,) = Simulator(sim._blob).run([x])
    np.testing.assert_array_equal(profiled, y)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError) as info:
            sim.profile([x], repeat=bad)
        assert info.value.option == "repeat" and "hint:" in str(info.value)
