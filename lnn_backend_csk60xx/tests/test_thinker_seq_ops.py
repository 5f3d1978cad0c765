"""Thinker lowerings of the sequence ops (issue 14): SoftmaxInt, LogSoftmaxInt, BmmInt, an iqPad that stays
unfolded, GRUInt. Each package is decoded and run by lnn's simulator and must equal ``lnn run`` of model.bin on
random dialect-level models; the records carry the runtime's contract (attribute struct, inputs, workspace, no DMA
where the kernel takes none). The same models ran in the vendor's x86 ``test_thinker``
(benchmarks/thinker_crosscheck.py ``--seq``; SoftmaxInt / LogSoftmaxInt excepted: the vendor's HiFi library is not
public)."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import make_model, snode, tnode
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from lnn_backend_csk60xx.check import check_graph
from lnn_backend_csk60xx.dialect import read_onnx
from lnn_backend_csk60xx.pipeline import pack_graph
from lnn_backend_csk60xx.simulator import Simulator
from lnn_backend_csk60xx.thinker.package import decode

# -- dialect-level models (also read by benchmarks/thinker_crosscheck.py --seq) ---------------------------------------


def _deq(t: str, n: int, out: str | None = None):
    return tnode("Dequant", [t], [out or f"{t}_f"], scale_o=n)


def softmax_model(shape: tuple[int, ...], n_x: int, n_o: int, *, log: bool = False, dim: int = -1):
    """Quant -> SoftmaxInt / LogSoftmaxInt -> Dequant."""
    op = "LogSoftmaxInt" if log else "SoftmaxInt"
    nodes = [tnode("Quant", ["x"], ["xq"], data_bits=8, scale_x=n_x),
             tnode(op, ["xq"], ["y"], name="sm", dim=dim, data_bits=8, o_bits=8, scale_x=n_x, scale_o=n_o),
             _deq("y", n_o, "out")]
    return make_model(nodes, {"x": shape}, {"out": shape})


def bmm_model(xs: tuple[int, ...], ys: tuple[int, ...], n_x: int, n_y: int, n_o: int, *, seed: int = 0,
              const: bool = False):
    """Quant(x), Quant(y) (or y an int8 constant) -> BmmInt -> Dequant."""
    nodes = [tnode("Quant", ["x"], ["xq"], data_bits=8, scale_x=n_x)]
    inputs, inits = {"x": xs}, {}
    if const:
        inits["yq"] = np.random.default_rng(seed).integers(-128, 128, ys).astype(np.int8)
    else:
        nodes.append(tnode("Quant", ["y"], ["yq"], data_bits=8, scale_x=n_y))
        inputs["y"] = ys
    nodes += [tnode("BmmInt", ["xq", "yq"], ["z"], name="bmm", data_bits=8, o_bits=8, scale_x=n_x, scale_y=n_y,
                    scale_o=n_o), _deq("z", n_o, "out")]
    return make_model(nodes, inputs, {"out": xs[:-1] + ys[-1:]}, inits)


def attention_model(t: int, d: int, *, seed: int = 0, softmax: bool = False):
    """One head of attention on x [1, T, D]: q, k, v linear layers, BmmInt(q, k^T) (a Transpose in between), an
    optional SoftmaxInt, BmmInt(., v), a linear out."""
    rng = np.random.default_rng(seed)
    n = 4
    inits = {}
    nodes = [tnode("Quant", ["x"], ["xq"], data_bits=8, scale_x=n)]
    for p in ("q", "k", "v", "o"):
        inits[f"w{p}"] = rng.integers(-64, 64, (d, d)).astype(np.int8)
        inits[f"b{p}"] = rng.integers(-512, 512, d).astype(np.int32)
    for p in ("q", "k", "v"):
        nodes.append(tnode("LinearInt", ["xq", f"w{p}", f"b{p}"], [p], name=f"lin_{p}", scale_x=n, scale_w=7,
                           scale_o=n, data_bits=8, parameter_bits=8, o_bits=8))
    nodes.append(snode("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]))
    nodes.append(tnode("BmmInt", ["q", "kt"], ["s"], name="qk", data_bits=8, o_bits=8, scale_x=n, scale_y=n,
                       scale_o=3))
    a = "s"
    if softmax:
        nodes.append(tnode("SoftmaxInt", ["s"], ["p"], name="sm", dim=-1, data_bits=8, o_bits=8, scale_x=3,
                           scale_o=7))
        a = "p"
    nodes.append(tnode("BmmInt", [a, "v"], ["c"], name="av", data_bits=8, o_bits=8, scale_x=7 if softmax else 3,
                       scale_y=n, scale_o=n))
    nodes += [tnode("LinearInt", ["c", "wo", "bo"], ["o"], name="lin_o", scale_x=n, scale_w=7, scale_o=n,
                    data_bits=8, parameter_bits=8, o_bits=8), _deq("o", n, "out")]
    return make_model(nodes, {"x": (1, t, d)}, {"out": (1, t, d)}, inits)


def pad_model(shape: tuple[int, ...], pads: tuple[int, int, int, int], *, conv: bool = True, seed: int = 0):
    """Quant -> iqPad (top, left, bottom, right) -> [3x3 conv, pad 1] -> Dequant: pads beyond the conv's kernel
    stay an iqPad record."""
    top, left, bottom, right = pads
    inits = {"pads": np.array([0, 0, top, left, 0, 0, bottom, right], np.int64), "zero": np.zeros(1, np.int8)}
    nodes = [tnode("Quant", ["x"], ["xq"], data_bits=8, scale_x=4),
             helper.make_node("iqPad", ["xq", "pads", "zero"], ["xp"], name="pad", domain="thinker", mode="constant")]
    last = "xp"
    if conv:
        c = shape[1]
        rng = np.random.default_rng(seed)
        inits["w"] = rng.integers(-128, 128, (4, c, 3, 3)).astype(np.int8)
        inits["b"] = rng.integers(-1000, 1000, 4).astype(np.int32)
        nodes.append(tnode("Conv2dInt", ["xp", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                           strides=[1, 1], dilations=[1, 1], group=1, scale_x=4, scale_w=7, scale_o=3, data_bits=8,
                           parameter_bits=8, o_bits=8))
        last = "y"
    nodes.append(_deq(last, 3 if conv else 4, "out"))
    return make_model(nodes, {"x": shape}, {"out": None}, inits)


def _roundtrip(model, inputs: list[np.ndarray]):
    """Pack both ways; the package decoded and run by lnn's simulator must equal model.bin. Returns the package."""
    graph = read_onnx(model)
    report = check_graph(graph, package_format="thinker")
    assert report.ok, report.table()
    blob = pack_graph(graph, package_format="thinker").blob
    got, want = Simulator(blob).run(inputs), Simulator(pack_graph(graph).blob).run(inputs)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    return decode(blob)


def _record(pkg, op_type: str):
    (rec,) = [op for op in pkg.ops if op.type == op_type]
    return rec


# -- SoftmaxInt / LogSoftmaxInt --------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=3), st.integers(1, 40), st.integers(0, 6),
       st.booleans(), st.integers(0, 2**31))
def test_softmax_packages_run_like_model_bin(lead, row, n_x, log, seed):
    shape = (*lead, row)
    n_o = 4 if log else 7
    dim = -1 if seed % 2 or log else len(shape) - 1
    pkg = _roundtrip(softmax_model(shape, n_x, n_o, log=log, dim=dim),
                     [np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 3])
    rec = _record(pkg, "LogSoftmaxInt" if log else "SoftmaxInt")
    assert rec.attrs[:1] == int(dim).to_bytes(1, "little", signed=True)
    (ws,) = rec.temps  # the kernels dereference the workspace: the row-by-row path needs 8R bytes
    assert pkg.tensors[ws].nbytes == 8 * row and not pkg.dma


def test_attention_block_with_softmax_runs_like_model_bin():
    """q k^T, softmax, times v, between linear layers (the vendor x86 build cannot run the softmax)."""
    x = np.random.default_rng(2).standard_normal((1, 6, 16)).astype(np.float32)
    pkg = _roundtrip(attention_model(6, 16, softmax=True), [x])
    assert [op.type for op in pkg.ops].count("BmmInt") == 2 and len(pkg.dma) == 4


# -- BmmInt ---------------------------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([(), (1,), (3,)]), st.integers(1, 12), st.integers(1, 20), st.integers(1, 12),
       st.integers(2, 5), st.integers(2, 5), st.booleans(), st.integers(0, 2**31))
def test_bmm_packages_run_like_model_bin(batch, m, k, n, n_x, n_y, const, seed):
    xs, ys = (*batch, m, k), (*batch, k, n)
    n_o = n_x + n_y - 3
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(xs).astype(np.float32)]
    if not const:
        inputs.append(rng.standard_normal(ys).astype(np.float32))
    pkg = _roundtrip(bmm_model(xs, ys, n_x, n_y, n_o, seed=seed, const=const), inputs)
    rec = _record(pkg, "BmmInt")
    assert rec.attrs == b"" and not pkg.dma
    if const:  # the constant stays in the PSRAM blob: the kernel copies it to share-memory through the workspace
        (ws,) = rec.temps
        assert pkg.tensors[rec.inputs[1]].constant and pkg.tensors[ws].nbytes == k * n
    else:
        assert rec.temps == []


def test_attention_without_softmax_runs_like_model_bin():
    x = np.random.default_rng(1).standard_normal((1, 8, 16)).astype(np.float32)
    pkg = _roundtrip(attention_model(8, 16), [x])
    assert [op.type for op in pkg.ops].count("BmmInt") == 2


# -- iqPad -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,pads,conv", [((1, 3, 5, 6), (3, 0, 2, 4), True), ((1, 2, 4, 4), (1, 2, 0, 1), False),
                                             ((1, 5, 3, 7), (0, 4, 4, 0), True)])
def test_an_unfolded_pad_runs_like_model_bin(shape, pads, conv):
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    pkg = _roundtrip(pad_model(shape, pads, conv=conv), [x])
    rec = _record(pkg, "iqPad")
    top, left, bottom, right = pads
    assert rec.attrs[:1] == b"\0" and len(rec.inputs) == 3
    assert pkg.tensors[rec.inputs[1]].data.tolist() == [0, 0, top, left, 0, 0, bottom, right]
    assert pkg.tensors[rec.inputs[2]].data.tolist() == [0]
    (ws,) = rec.temps  # the kernel transposes x to channels-last in its workspace
    assert pkg.tensors[ws].nbytes == int(np.prod(shape))


def test_a_pad_within_the_kernel_is_still_folded():
    pkg = _roundtrip(pad_model((1, 3, 5, 6), (1, 1, 0, 0)),
                     [np.random.default_rng(4).standard_normal((1, 3, 5, 6)).astype(np.float32)])
    assert "iqPad" not in {op.type for op in pkg.ops}
