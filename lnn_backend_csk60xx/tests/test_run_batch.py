"""``Simulator.run_batch``: N rows in, N rows out, each bit-identical to ``Simulator.run`` on that row alone, on any
number of threads (C threads, each its own copy of the arenas), float or integer boundary, several graph inputs, more
threads than rows, and a failing row named (the first in row order) whichever thread ran it."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import make_model, snode, tnode
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gather import gather_model

from lnn_backend_csk60xx._sim import lib
from lnn_backend_csk60xx.pipeline import pack_onnx
from lnn_backend_csk60xx.simulator import Simulator
from lnn_core.errors import ConfigError, SimulatorError

RNG = np.random.default_rng(7)


def _two_input_model(batch: int = 1) -> bytes:
    """conv(x) + y with a linear head: two graph inputs, two graph outputs"""
    nodes = [tnode("Quant", ["x"], ["qx"], name="qx", scale_x=4), tnode("Quant", ["y"], ["qy"], name="qy", scale_x=3),
             tnode("Conv2dInt", ["qx", "w", "b"], ["c"], name="conv", scale_x=4, scale_w=7, scale_o=3,
                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             tnode("iqAdd", ["c", "qy"], ["s"], name="add", scale_x=3, scale_y=3, scale_o=2),
             snode("Flatten", ["s"], ["f"], name="flat"),
             tnode("LinearInt", ["f", "wl"], ["l"], name="fc", scale_x=2, scale_w=7, scale_o=1),
             tnode("Dequant", ["s"], ["out_s"], name="ds", scale_o=2),
             tnode("Dequant", ["l"], ["out_l"], name="dl", scale_o=1)]
    inits = {"w": RNG.integers(-128, 128, (8, 3, 3, 3), dtype=np.int8),
             "b": RNG.integers(-900, 900, 8, dtype=np.int32),
             "wl": RNG.integers(-128, 128, (5, 8 * 5 * 5), dtype=np.int8)}
    model = make_model(nodes, {"x": (batch, 3, 5, 5), "y": (batch, 8, 5, 5)}, {"out_s": None, "out_l": None}, inits)
    return pack_onnx(model, check=False)


BLOB = _two_input_model()
BLOB2 = _two_input_model(batch=2)


def _rows(n: int, batch: int = 1) -> list[np.ndarray]:
    return [(RNG.standard_normal((n * batch, 3, 5, 5)) * 4).astype(np.float32),
            (RNG.standard_normal((n * batch, 8, 5, 5)) * 4).astype(np.float32)]


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 9), threads=st.integers(1, 4), batch=st.sampled_from([1, 2]))
def test_every_row_is_the_single_run(n, threads, batch):
    sim = Simulator(BLOB2 if batch == 2 else BLOB)
    xs = _rows(n, batch)
    outs = sim.run_batch(xs, threads=threads)
    assert [o.shape for o in outs] == [(n * batch, 8, 5, 5), (n * batch, 5)]
    for r in range(n):
        single = sim.run([a[r * batch:(r + 1) * batch] for a in xs])
        for o, s in zip(outs, single):
            np.testing.assert_array_equal(o[r * batch:(r + 1) * batch], s)


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_integer_rows_are_the_single_integer_runs(threads):
    sim = Simulator(BLOB)
    xs = _rows(6)
    ints = [np.concatenate([sim.run([x[r:r + 1], y[r:r + 1]], dump=True)[1][name] for r in range(6)])
            for x, y in [xs] for name in ("qx", "qy")]
    outs = sim.run_batch(ints, threads=threads, integer=True)
    for r in range(6):
        single = sim.run([a[r:r + 1] for a in ints], integer=True)
        for o, s in zip(outs, single):
            np.testing.assert_array_equal(o[r:r + 1], s)
    assert outs[0].dtype == np.int8 and outs[0].shape == (6, 8, 5, 5)


def test_workers_are_kept_and_grown_across_calls():
    """the C workers are made on first use and kept; later calls with fewer or more threads reuse and add to them"""
    sim = Simulator(BLOB)
    xs = _rows(7)
    singles = [sim.run([a[r:r + 1] for a in xs]) for r in range(7)]
    for threads in (3, 2, 5, 1, 3):
        outs = sim.run_batch(xs, threads=threads)
        for r, single in enumerate(singles):
            for o, s in zip(outs, single):
                np.testing.assert_array_equal(o[r:r + 1], s)


@pytest.mark.parametrize("rows, threads", [(1, 1), (1, 8), (3, 8), (2, 2), (5, 64)])
def test_more_threads_than_rows(rows, threads):
    sim = Simulator(BLOB)
    xs = _rows(rows)
    outs = sim.run_batch(xs, threads=threads)
    for r in range(rows):
        for o, s in zip(outs, sim.run([a[r:r + 1] for a in xs])):
            np.testing.assert_array_equal(o[r:r + 1], s)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("rows, bad_rows", [(8, [0]), (8, [5]), (8, [7]), (8, [2, 6]), (8, [6, 1]),
                                            (300, [299]), (300, [250, 17]), (300, [120, 121, 3])])
def test_a_failing_row_is_named_the_first_in_row_order(threads, rows, bad_rows):
    """an index outside the embedding table fails its row in C; whichever thread runs it (the threads take chunks of
    rows in turn: 300 rows make several chunks per thread), the error names the first failing row, the op and the
    C reason"""
    table = np.arange(40, dtype=np.int8).reshape(10, 4)
    sim = Simulator(pack_onnx(gather_model(table, (1, 3))), path="m.bin")
    tokens = RNG.integers(0, 10, (rows, 3))
    for r in bad_rows:
        tokens[r, 1] = 10 + r
    with pytest.raises(SimulatorError) as info:
        sim.run_batch([tokens], threads=threads)
    err, first = info.value, min(bad_rows)
    assert err.row == first and err.op_name == "emb" and err.status == lib.LNN_SIM_E_INPUT
    assert str(err).startswith(f"row {first} of the batch failed on the model 'm.bin'")
    assert f"index {10 + first} at position 1 of 'tokens'" in str(err) and "hint:" in str(err)
    good = np.delete(tokens, bad_rows, axis=0)  # the simulator is fine afterwards
    (y,) = sim.run_batch([good], threads=threads)
    np.testing.assert_array_equal(y, table[good].astype(np.float32) / 2 ** 5)


def test_zero_rows_give_empty_outputs():
    outs = Simulator(BLOB).run_batch([np.zeros((0, 3, 5, 5), np.float32), np.zeros((0, 8, 5, 5), np.float32)],
                                     threads=2)
    assert [o.shape for o in outs] == [(0, 8, 5, 5), (0, 5)]


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_threads_must_be_a_positive_integer(threads):
    with pytest.raises(ConfigError) as exc:
        Simulator(BLOB).run_batch(_rows(2), threads=threads)
    assert exc.value.option == "threads" and "hint:" in str(exc.value)


@pytest.mark.parametrize("inputs, words", [
    (lambda: _rows(2)[:1], "takes 2 inputs, got 1"),
    (lambda: [_rows(2)[0], _rows(3)[1]], "different row counts"),
    (lambda: [_rows(2)[0].astype(np.float64), _rows(2)[1]], "does not match"),
    (lambda: [_rows(2)[0][:, :2], _rows(2)[1]], "does not match"),
])
def test_bad_batches_are_refused_before_running(inputs, words):
    with pytest.raises(SimulatorError) as exc:
        Simulator(BLOB).run_batch(inputs(), threads=2)
    assert words in str(exc.value) and "hint:" in str(exc.value)


def test_an_odd_row_count_for_a_batch_2_model_is_refused():
    with pytest.raises(SimulatorError) as exc:
        Simulator(BLOB2).run_batch(_rows(3), threads=1)  # 3 rows of (1, ...) are 1.5 rows of (2, ...)
    assert "N * 2" in str(exc.value)
