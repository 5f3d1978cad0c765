"""The C loader proves the schedule before anything runs (issue 12): every op input is a graph input, a constant, or
written by an earlier op and not overwritten since (by the planned offsets); graph outputs are written and kept;
iqAdd/iqSub left shifts are bounded so that the int64 sum is exact; the LNN_SIM_DEBUG build lets UBSan see signed
overflow. Schedule, placement and exponent edits with a valid CRC are fuzzed: an image the loader accepts after a
schedule or placement edit computes exactly what the original computes."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _helpers import make_model, snode, tnode
from _modelbin import INPUT, OUTPUT, ModelBin

from lnn_backend_csk60xx._sim import lib
from lnn_backend_csk60xx.dialect import read_onnx
from lnn_backend_csk60xx.pipeline import pack_graph
from lnn_backend_csk60xx.simulator import Simulator
from lnn_core.errors import ModelFileError

X_SHAPE = (1, 2, 8, 8)


def _model():
    """quant -> conva, convb -> iqCat (in place) -> relu -> pool -> iqAdd -> reshape (alias) -> linear -> dequant."""
    rng = np.random.default_rng(12)
    nodes = [tnode("Quant", ["x"], ["q"], name="quant", scale_x=4),
             tnode("Conv2dInt", ["q", "wa"], ["a"], name="conva", scale_x=4, scale_w=7, scale_o=3, kernel_shape=[3, 3],
                   pads=[1, 1, 1, 1]),
             tnode("Conv2dInt", ["q", "wb"], ["b"], name="convb", scale_x=4, scale_w=7, scale_o=3, kernel_shape=[1, 1]),
             tnode("iqCat", ["a", "b"], ["c"], name="cat", scale_x_0=3, scale_x_1=3, scale_o=3, dim=1),
             snode("Relu", ["c"], ["r"], name="relu"),
             snode("MaxPool", ["r"], ["m"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             tnode("iqAdd", ["m", "m"], ["s"], name="add", scale_x=3, scale_y=3, scale_o=2),
             snode("Reshape", ["s", "shape"], ["f"], name="flat"),
             tnode("LinearInt", ["f", "fw"], ["l"], name="fc", scale_x=2, scale_w=7, scale_o=3),
             tnode("Dequant", ["l"], ["y"], name="deq", scale_o=3)]
    inits = {"wa": rng.integers(-128, 128, (4, 2, 3, 3), dtype=np.int8),
             "wb": rng.integers(-128, 128, (4, 2, 1, 1), dtype=np.int8), "shape": np.array([1, -1], np.int64),
             "fw": rng.integers(-128, 128, (5, 128), dtype=np.int8)}
    return make_model(nodes, {"x": X_SHAPE}, {"y": (1, 5)}, inits)


@pytest.fixture(scope="module")
def packed():
    blob = pack_graph(read_onnx(_model()), fuse_relu=False).blob
    x = (np.random.default_rng(5).standard_normal(X_SHAPE) * 6).astype(np.float32)
    return blob, x, Simulator(blob).run([x])[0]


def _index(m: ModelBin, name: str) -> int:
    return next(i for i, t in enumerate(m.tensors) if t[0] == name)


def _op(m: ModelBin, name: str) -> int:
    return next(i for i, op in enumerate(m.ops) if op[1] == name)


def _move(m: ModelBin, tensor: str, offset: int) -> None:
    i = _index(m, tensor)
    m.tensors[i] = (*m.tensors[i][:6], offset, m.tensors[i][7])


def _load_error(blob: bytes) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        Simulator(blob)
    return info.value


def test_the_packed_plan_shares_bytes_only_where_the_ops_allow_it(packed):
    blob, x, y = packed
    m = ModelBin.read(blob)
    offset = {t[0]: t[6] for t in m.tensors}
    assert offset["f"] == offset["s"]  # the reshape aliases its input
    assert offset["a"] == offset["c"] and offset["b"] == offset["c"] + 256  # the conv outputs live inside the join
    assert np.array_equal(Simulator(m.build()).run([x])[0], y)


def test_reordered_ops_are_refused(packed):
    m = ModelBin.read(packed[0])
    m.ops[0], m.ops[1] = m.ops[1], m.ops[0]
    err = _load_error(m.build())
    assert err.status == lib.LNN_SIM_E_SCHEDULE
    assert "op 'conva' (step 0) reads 'q', which op 'quant' writes only later (step 1)" in str(err)


def test_independent_ops_may_swap(packed):
    blob, x, y = packed
    m = ModelBin.read(blob)
    a, b = _op(m, "conva"), _op(m, "convb")
    m.ops[a], m.ops[b] = m.ops[b], m.ops[a]
    assert np.array_equal(Simulator(m.build()).run([x])[0], y)


def test_a_dropped_op_is_refused(packed):
    m = ModelBin.read(packed[0])
    del m.ops[_op(m, "convb")]
    err = _load_error(m.build())
    assert err.status == lib.LNN_SIM_E_SCHEDULE
    assert "op 'cat' (step 2) reads 'b', which no op writes and which is not a graph input" in str(err)


def test_an_op_writing_its_own_input_is_refused(packed):
    m = ModelBin.read(packed[0])
    k = _op(m, "relu")
    code, name, ins, _, attrs = m.ops[k]
    m.ops[k] = (code, name, ins, list(ins), attrs)
    err = _load_error(m.build())
    assert err.status == lib.LNN_SIM_E_SCHEDULE and "op 'relu' (step 4) writes 'c', which op 'cat' (step 3)" in str(err)
    t = ModelBin()  # where nothing else writes the input, the op is named as writing its own input
    a = t.tensor("a", "int8", (4,), 0, flags=OUTPUT)
    t.op(lib.LNN_SIM_OP_RELU, "relu", [a], [a])
    err = _load_error(t.build([], [a]))
    assert err.status == lib.LNN_SIM_E_SCHEDULE and "op 'relu' (step 0) writes its own input 'a'" in str(err)


def test_an_input_overwritten_before_it_is_read_is_refused(packed):
    m = ModelBin.read(packed[0])
    offset = {t[0]: t[6] for t in m.tensors}
    _move(m, "b", offset["a"])  # convb writes over a, which the join reads next
    err = _load_error(m.build())
    assert err.status == lib.LNN_SIM_E_SCHEDULE
    assert (f"op 'cat' (step 3) reads 'a' (256 bytes at offset {offset['a']} of share-memory), which op 'convb' "
            "(step 2) overwrote after op 'conva' (step 1) wrote it") in str(err)


def test_an_output_over_its_own_input_is_refused(packed):
    m = ModelBin.read(packed[0])
    _move(m, "r", {t[0]: t[6] for t in m.tensors}["c"] + 64)  # relu would write over the rest of c
    err = _load_error(m.build())
    assert err.status == lib.LNN_SIM_E_SCHEDULE
    assert "op 'relu' (step 4): output 'r'" in str(err) and "with its input 'c'" in str(err)


def test_graph_outputs_must_be_written_and_kept():
    t = ModelBin()
    x = t.tensor("x", "int8", (4,), 0, flags=INPUT)
    y0 = t.tensor("y0", "float32", (4,), flags=OUTPUT)
    y1 = t.tensor("y1", "float32", (4,), flags=OUTPUT, offset=t.tensors[y0][6])
    t.op(lib.LNN_SIM_OP_DEQUANT, "deq0", [x], [y0])
    t.op(lib.LNN_SIM_OP_DEQUANT, "deq1", [x], [y1])
    err = _load_error(t.build([x], [y0, y1]))
    assert err.status == lib.LNN_SIM_E_SCHEDULE
    assert "graph output 'y0' is overwritten by op 'deq1' (step 1) after op 'deq0' (step 0) wrote it" in str(err)
    t = ModelBin()
    x = t.tensor("x", "int8", (4,), 0, flags=INPUT)
    y = t.tensor("y", "float32", (4,), flags=OUTPUT)
    z = t.tensor("z", "float32", (4,))
    t.op(lib.LNN_SIM_OP_DEQUANT, "deq", [x], [z])
    err = _load_error(t.build([x], [y]))
    assert err.status == lib.LNN_SIM_E_SCHEDULE and "graph output 'y' is written by no op" in str(err)


def _mutate(blob: bytes, kind: str, rng: np.random.Generator) -> bytes:
    m = ModelBin.read(blob)
    acts = [i for i, t in enumerate(m.tensors) if t[3] != 0]
    if kind == "reorder":
        i, j = sorted(int(v) for v in rng.choice(len(m.ops), 2, replace=False))
        m.ops[i], m.ops[j] = m.ops[j], m.ops[i]
    elif kind == "drop":
        del m.ops[int(rng.integers(len(m.ops)))]
    elif kind == "self-write":
        k = int(rng.integers(len(m.ops)))
        code, name, ins, outs, attrs = m.ops[k]
        m.ops[k] = (code, name, ins, [ins[int(rng.integers(len(ins)))]] + outs[1:], attrs)
    elif kind == "offset":
        i = acts[int(rng.integers(len(acts)))]
        arena = next(size for region, size, _ in m.plan if region == m.tensors[i][3])
        m.tensors[i] = (*m.tensors[i][:6], 64 * int(rng.integers(0, max(1, (arena - m.tensors[i][7]) // 64 + 1))),
                        m.tensors[i][7])
    else:  # exponent
        i = acts[int(rng.integers(len(acts)))]
        if m.tensors[i][1] != 1:  # integer tensors only
            m.tensors[i] = (*m.tensors[i][:5], int(rng.integers(-64, 65)), *m.tensors[i][6:])
    return m.build()


def test_fuzz_schedule_placement_and_exponent_edits(packed):
    """1000 edits with a valid CRC: reordered, dropped and self-writing ops, moved tensors, changed exponents. An image
    that still loads after a schedule or placement edit computes exactly the original output, twice (the proof
    guarantees that every read sees what its one writer wrote); exponent edits load or are refused, never crash."""
    blob, x, y = packed
    rng = np.random.default_rng(1212)
    kinds = ["reorder", "drop", "self-write", "offset", "exponent"]
    seen = {k: {"loaded": 0, "refused": 0} for k in kinds}
    for i in range(1000):
        kind = kinds[i % len(kinds)]
        data = _mutate(blob, kind, rng)
        try:
            sim = Simulator(data)
        except ModelFileError:
            seen[kind]["refused"] += 1
            continue
        seen[kind]["loaded"] += 1
        first, second = sim.run([x])[0], sim.run([x])[0]
        assert np.array_equal(first, second), kind
        if kind != "exponent":
            assert np.array_equal(first, y), (kind, i)
    assert all(seen[k]["refused"] > 50 for k in kinds), seen
    assert seen["offset"]["loaded"] > 50 and seen["exponent"]["loaded"] > 50, seen


def _add_model(op: int, n_x: int, n_y: int, n_o: int) -> bytes:
    t = ModelBin()
    a = t.tensor("a", "int8", (4,), n_x, flags=INPUT)
    b = t.tensor("b", "int8", (4,), n_y, flags=INPUT)
    o = t.tensor("o", "int8", (4,), n_o, flags=OUTPUT)
    t.op(op, "add", [a, b], [o])
    return t.build([a, b], [o])


def test_iqadd_left_shifts_are_bounded_and_exact():
    """Issue 12 #2: n_o - n_x = 128 saturated both operands to +-(2^63 - 1) and overflowed their int64 sum."""
    err = _load_error(_add_model(lib.LNN_SIM_OP_ADD, -64, -64, 64))
    assert err.status == lib.LNN_SIM_E_ATTR
    assert "op 'add': output exponent 64 exceeds the operands' (-64, -64) by more than 32" in str(err)
    bound = lib.LNN_SIM_MAX_LEFT_SHIFT
    assert _load_error(_add_model(lib.LNN_SIM_OP_SUB, 0, 0, bound + 1)).status == lib.LNN_SIM_E_ATTR
    a = np.array([1, 127, -128, 5], np.int8)
    b = np.array([-1, -128, 127, -5], np.int8)
    for op, want in ((lib.LNN_SIM_OP_ADD, [0, -128, -128, 0]), (lib.LNN_SIM_OP_SUB, [127, 127, -128, 127])):
        (out,) = Simulator(_add_model(op, 0, 0, bound)).run([a, b])  # (a +/- b) * 2^32, exact, then saturated
        assert out.tolist() == want, op
    (out,) = Simulator(_add_model(lib.LNN_SIM_OP_ADD, 0, bound + 8, bound)).run([a, b])
    assert out.tolist() == [127, 127, -128, 127]  # a * 2^32 + SHR(b, 8), and SHR(b, 8) = 0 for every int8 b


@pytest.mark.skipif(sys.platform == "win32" or shutil.which("gcc") is None
                    or importlib.util.find_spec("setuptools") is None, reason="needs gcc and setuptools")
def test_the_debug_build_lets_ubsan_see_signed_overflow(tmp_path, monkeypatch):
    """Issue 12 #3: Python's CFLAGS carry -fwrapv, under which UBSan cannot report signed overflow. A planted
    overflow built with the LNN_SIM_DEBUG=1 flags of _sim_build.py (through cffi, as the simulator is) is reported;
    the same source without -fno-wrapv is not, so the flag is what makes the difference."""
    from cffi import FFI

    import lnn_backend_csk60xx

    build = Path(lnn_backend_csk60xx.__file__).parent / "_sim_build.py"
    spec = importlib.util.spec_from_file_location("_lnn_sim_build_under_test", build)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("LNN_SIM_DEBUG", "1")
    compile_args, link_args = module._flags()
    assert "-fno-wrapv" in compile_args
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan):
        pytest.skip("gcc has no libasan")
    reports = {}
    for variant, args in (("debug", compile_args), ("wrapv", [a for a in compile_args if a != "-fno-wrapv"])):
        ffi = FFI()
        ffi.cdef("int lnn_planted(int x);")
        ffi.set_source(f"_planted_{variant}", "int lnn_planted(int x) { return x + 1; }",
                       extra_compile_args=args, extra_link_args=link_args)
        ffi.compile(tmpdir=str(tmp_path / variant), verbose=False)
        code = textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(tmp_path / variant)!r})
            from _planted_{variant} import lib
            print(lib.lnn_planted(2147483647))
        """)
        env = {**os.environ, "LD_PRELOAD": libasan, "ASAN_OPTIONS": "detect_leaks=0"}
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert run.returncode == 0, run.stderr
        reports[variant] = run.stderr
    assert "signed integer overflow" in reports["debug"], reports["debug"]
    assert "signed integer overflow" not in reports["wrapv"], reports["wrapv"]
