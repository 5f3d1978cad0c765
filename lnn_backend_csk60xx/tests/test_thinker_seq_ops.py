"""Thinker lowerings of the sequence ops (issue 14): SoftmaxInt, LogSoftmaxInt, BmmInt, an iqPad that stays
unfolded, GRUInt. Each package is decoded and run by lnn's simulator and must equal ``lnn run`` of model.bin on
random dialect-level models; the records carry the runtime's contract (attribute struct, inputs, workspace, no DMA
where the kernel takes none). The same models ran in the vendor's x86 ``test_thinker``
(benchmarks/thinker_crosscheck.py ``--seq``; SoftmaxInt / LogSoftmaxInt excepted: the vendor's HiFi library is not
public)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from _helpers import make_model, snode, tnode
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from lnn_backend_csk60xx.check import check_graph
from lnn_backend_csk60xx.dialect import read_onnx
from lnn_backend_csk60xx.pipeline import pack_graph
from lnn_backend_csk60xx.simulator import Simulator
from lnn_backend_csk60xx.thinker.package import decode
from lnn_core.errors import ModelFileError

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


def _rnn_front(gates: int, t: int, d: int, h: int, seed: int, batch_first: int, n_i: int, linears: bool,
               lengths: int | None, state: bool):
    """What the GRU and LSTM builders share: random weights of ``gates`` blocks, the Quant (and LinearInt) before
    the recurrent node, its lengths input; returns ``(weights, linear attrs, nodes, extra inputs, graph inputs)``."""
    rng = np.random.default_rng(seed)
    w = dict(w_ih=rng.integers(-128, 128, (gates * h, d)).astype(np.int8),
             w_hh=rng.integers(-128, 128, (gates * h, h)).astype(np.int8),
             b_ih=rng.integers(-(1 << 14), 1 << 14, gates * h).astype(np.int32),
             b_hh=rng.integers(-(1 << 14), 1 << 14, gates * h).astype(np.int32))
    lin = dict(scale_w=7, data_bits=8, parameter_bits=8, o_bits=8)
    nodes = [tnode("Quant", ["x"], ["x0" if linears else "q"], name="quant", scale_x=n_i, data_bits=8)]
    if linears:
        w.update(w0=rng.integers(-64, 64, (d, d)).astype(np.int8), b0=rng.integers(-500, 500, d).astype(np.int32),
                 w1=rng.integers(-64, 64, (h, h)).astype(np.int8), b1=rng.integers(-500, 500, h).astype(np.int32))
        nodes.append(tnode("LinearInt", ["x0", "w0", "b0"], ["q"], name="lin0", scale_x=n_i, scale_o=n_i, **lin))
    if state and lengths is None:
        lengths = t
    extra = [] if lengths is None else ["len"]
    if lengths is not None:
        w["len"] = np.array([lengths], np.int64)
    inputs = {"x": (1, t, d) if batch_first else (t, 1, d)}
    return w, lin, nodes, extra, inputs


def gru_model(t: int, d: int, h: int, *, seed: int = 0, batch_first: int = 1, n_i: int = 5, n_iw: int = 7,
              n_hw: int = 7, go_forward: int = 1, h_out: bool = True, linears: bool = False,
              lengths: int | None = None, state: bool = False):
    """Quant -> GRUInt -> Dequant (y) [and Dequant (h_n)], as linger 1.1.1 writes a GRU; n_o = n_h = 8.
    ``linears``: a LinearInt before the GRU and one after it (DMA'd weight ops around it); ``lengths``: a constant
    [L]; ``state``: an int8 h0 graph input (with lengths [T])."""
    w, lin, nodes, extra, inputs = _rnn_front(3, t, d, h, seed, batch_first, n_i, linears, lengths, state)
    if state:
        extra.append("h0")
        inputs["h0"] = (1, 1, h)
    nodes += [tnode("GRUInt", ["q", *extra, "w_ih", "w_hh", "b_ih", "b_hh"], ["g", "hq"], name="gru", input_size=d,
                    hidden_size=h, num_layers=1, batch_first=batch_first, dropout=0.0, go_forward=go_forward,
                    scale_i=n_i, scale_h=8, scale_iw=n_iw, scale_hw=n_hw, scale_o=8, data_bits=8,
                    parameter_bits=8, o_bits=8)]
    if linears:
        nodes.append(tnode("LinearInt", ["g", "w1", "b1"], ["g1"], name="lin1", scale_x=8, scale_o=6, **lin))
    nodes.append(_deq("g1", 6, "y") if linears else _deq("g", 8, "y"))
    outputs = {"y": (1, t, h) if batch_first else (t, 1, h)}
    if h_out:
        nodes.append(_deq("hq", 8, "h_n"))
        outputs["h_n"] = (1, 1, h)
    model = make_model(nodes, inputs, outputs, w)
    for vi in model.graph.input:
        if vi.name == "h0":
            vi.type.tensor_type.elem_type = TensorProto.INT8
    return model


def lstm_model(t: int, d: int, h: int, *, seed: int = 0, batch_first: int = 1, n_i: int = 5, n_iw: int = 7,
               n_hw: int = 7, n_o: int = 7, go_forward: int = 1, lengths: int | None = None, state: bool = False,
               linears: bool = False):
    """Quant -> LSTMInt -> Dequant (y), inputs in linger's order; ``lengths``: a constant [L]; ``state``: h0 (int8)
    and c0 (int16) raw graph inputs and h_n / c_n raw outputs (lengths [T] then, as linger writes it);
    ``linears``: a LinearInt before the LSTM and one after it."""
    w, lin, nodes, extra, inputs = _rnn_front(4, t, d, h, seed, batch_first, n_i, linears, lengths, state)
    if state:
        extra += ["h0", "c0"]
        inputs.update(h0=(1, 1, h), c0=(1, 1, h))
    nodes.append(tnode("LSTMInt", ["q", *extra, "w_ih", "w_hh", "b_ih", "b_hh"], ["l", "hq", "cq"], name="lstm",
                       input_size=d, hidden_size=h, num_layers=1, batch_first=batch_first, dropout=0.0,
                       go_forward=go_forward, scale_i=n_i, scale_h=n_o, scale_iw=n_iw, scale_hw=n_hw, scale_o=n_o,
                       data_bits=8, parameter_bits=8, o_bits=8))
    if linears:
        nodes.append(tnode("LinearInt", ["l", "w1", "b1"], ["l1"], name="lin1", scale_x=n_o, scale_o=6, **lin))
    nodes.append(_deq("l1", 6, "y") if linears else _deq("l", n_o, "y"))
    outputs = {"y": (1, t, h) if batch_first else (t, 1, h)}
    if state:
        outputs.update(hq=(1, 1, h), cq=(1, 1, h))
    model = make_model(nodes, inputs, outputs, w)
    for vi in (*model.graph.input, *model.graph.output):
        if vi.name in ("h0", "hq"):
            vi.type.tensor_type.elem_type = TensorProto.INT8
        if vi.name in ("c0", "cq"):
            vi.type.tensor_type.elem_type = TensorProto.INT16
    return model


def birnn_model(kind: str, t: int, d: int, h: int, *, seed: int = 0, batch_first: int = 1):
    """A bidirectional GRU or LSTM as lnn writes one: a forward and a reverse node on the same x, their y
    concatenated on the last dim (iqCat), then Dequant."""
    rng = np.random.default_rng(seed)
    g = 3 if kind == "GRUInt" else 4
    n_o = 8 if kind == "GRUInt" else 7
    inits, nodes = {}, [tnode("Quant", ["x"], ["q"], name="quant", scale_x=5, data_bits=8)]
    for sfx, fwd in (("f", 1), ("r", 0)):
        inits.update({f"w_ih_{sfx}": rng.integers(-128, 128, (g * h, d)).astype(np.int8),
                      f"w_hh_{sfx}": rng.integers(-128, 128, (g * h, h)).astype(np.int8),
                      f"b_ih_{sfx}": rng.integers(-(1 << 14), 1 << 14, g * h).astype(np.int32),
                      f"b_hh_{sfx}": rng.integers(-(1 << 14), 1 << 14, g * h).astype(np.int32)})
        outs = [f"y_{sfx}", f"h_{sfx}"] + ([f"c_{sfx}"] if kind == "LSTMInt" else [])
        nodes.append(tnode(kind, ["q", f"w_ih_{sfx}", f"w_hh_{sfx}", f"b_ih_{sfx}", f"b_hh_{sfx}"], outs,
                           name=f"rnn_{sfx}", input_size=d, hidden_size=h, num_layers=1, batch_first=batch_first,
                           dropout=0.0, go_forward=fwd, scale_i=5, scale_h=n_o, scale_iw=7, scale_hw=7, scale_o=n_o,
                           data_bits=8, parameter_bits=8, o_bits=8))
    nodes += [tnode("iqCat", ["y_f", "y_r"], ["cat"], name="cat", dim=2, scale_x_0=n_o, scale_x_1=n_o, scale_o=n_o),
              _deq("cat", n_o, "y")]
    return make_model(nodes, {"x": (1, t, d) if batch_first else (t, 1, d)},
                      {"y": (1, t, 2 * h) if batch_first else (t, 1, 2 * h)}, inits)


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


def test_a_pad_of_an_int16_tensor_is_refused_with_its_node():
    """The runtime's iqPad copies one byte per element."""
    nodes = [tnode("Quant", ["x"], ["xq"], data_bits=8, scale_x=4),
             tnode("Requant", ["xq"], ["r"], name="rq", scale_x=4, scale_o=12, data_bits=8, o_bits=16),
             helper.make_node("iqPad", ["r", "pads"], ["p"], name="pad", domain="thinker", mode="constant"),
             tnode("iqSigmoid", ["p"], ["o"], name="act", scale_x=12, scale_o=7, castor_mode="luna"),
             _deq("o", 7, "out")]
    model = make_model(nodes, {"x": (1, 2, 3, 3)}, {"out": None},
                       {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)})
    report = check_graph(read_onnx(model), package_format="thinker")
    v = [v for v in report.violations if v.rule_id == "csk60xx.thinker.pad_dtype"]
    assert v and v[0].op_name == "pad" and v[0].actual == "int16" and v[0].limit == "int8"


def test_a_pad_within_the_kernel_is_still_folded():
    pkg = _roundtrip(pad_model((1, 3, 5, 6), (1, 1, 0, 0)),
                     [np.random.default_rng(4).standard_normal((1, 3, 5, 6)).astype(np.float32)])
    assert "iqPad" not in {op.type for op in pkg.ops}


# -- GRUInt -----------------------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 8), st.integers(1, 24), st.integers(1, 20), st.integers(0, 1), st.booleans(), st.booleans(),
       st.integers(4, 8), st.integers(3, 9), st.integers(0, 2**31))
def test_gru_packages_run_like_model_bin(t, d, h, batch_first, h_out, reverse, n_i, n_hw, seed):
    model = gru_model(t, d, h, seed=seed, batch_first=batch_first, n_i=n_i, n_iw=max(3, 11 - n_i), n_hw=n_hw,
                      h_out=h_out, go_forward=0 if reverse else 1)
    x = np.random.default_rng(seed + 1).standard_normal((1, t, d) if batch_first else (t, 1, d)).astype(np.float32)
    pkg = _roundtrip(model, [x])
    rec = _record(pkg, "GRUInt")
    assert rec.attrs[:8] == struct.pack("<HHHBB", int(reverse), h, d, batch_first, 0)
    w_ih, w_hh, b_ih, b_hh = (pkg.tensors[i] for i in rec.inputs[1:])
    assert w_ih.shape == (d, 3 * h) and w_hh.shape == (h, 3 * h) and b_ih.shape == b_hh.shape == (3 * h,)
    # weights read in place: no DMA; the workspace (24H) listed five times, as the VENUS wrapper reads five temps
    assert not pkg.dma and len(set(rec.temps)) == 1 and len(rec.temps) == 5
    assert pkg.tensors[rec.temps[0]].nbytes == 24 * h
    h_n = pkg.tensors[rec.outputs[1]]
    assert h_n.dtype == "int8" and h_n.shape == (1, 1, h) and h_n.scale == 8.0


def test_gru_between_linear_layers_keeps_the_dma_sequence():
    """A GRU between two DMA'd weight ops takes no transfer: the DMA list holds the linear layers only."""
    t, d, h = 5, 12, 16
    x = np.random.default_rng(3).standard_normal((1, t, d)).astype(np.float32)
    pkg = _roundtrip(gru_model(t, d, h, seed=3, linears=True), [x])
    assert [op.type for op in pkg.ops][:4] == ["Quant", "LinearInt", "GRUInt", "LinearInt"] and len(pkg.dma) == 2
    lin0, lin1 = (op for op in pkg.ops if op.type == "LinearInt")
    assert [d.dst for d in pkg.dma] == [lin0.temps[-1], lin1.temps[-1]]


def test_the_thinker_check_refuses_what_the_runtime_cannot_run():
    """An initial state and lengths other than [T] (the runtime's GRU reads neither) and a GRU whose quarter
    matmul blocks exceed the NPU's 32 KB (lnn's simulator runs it) are refused for the package, naming the node;
    pack refuses the last with the rule. Lengths = [T] is written (a GRU runs T steps anyway)."""
    _roundtrip(gru_model(4, 3, 2, lengths=4), [np.ones((1, 4, 3), np.float32)])
    for model, rule_id, actual in ((gru_model(4, 3, 2, state=True), "csk60xx.thinker.gru_state", "h0"),
                                   (gru_model(4, 3, 2, lengths=2), "csk60xx.thinker.gru_lengths", "[2]"),
                                   (gru_model(3, 8, 360), "csk60xx.thinker.gru_split", 360 * 272)):
        graph = read_onnx(model)
        report = check_graph(graph, package_format="thinker")
        v = [v for v in report.violations if v.rule_id == rule_id]
        assert not report.ok and v and v[0].op_name == "gru" and v[0].actual == actual and v[0].hint
    with pytest.raises(ModelFileError, match="node 'gru'") as exc:
        pack_graph(graph, package_format="thinker")
    assert exc.value.rule_id == "csk60xx.thinker.gru_split" and exc.value.limit == 32768
    assert exc.value.actual == 360 * 272  # w_hh: A8(360) * A4(ceil(1080 / 4)); w_ih (D = 8) fits


# -- LSTMInt -----------------------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 8), st.integers(1, 24), st.integers(1, 20), st.integers(0, 1), st.booleans(), st.booleans(),
       st.integers(3, 9), st.integers(0, 2**31))
def test_lstm_packages_run_like_model_bin(t, d, h, batch_first, reverse, state, n_i, seed):
    model = lstm_model(t, d, h, seed=seed, batch_first=batch_first, n_i=n_i, go_forward=0 if reverse else 1,
                       state=state)
    rng = np.random.default_rng(seed + 1)
    feeds = [rng.standard_normal((1, t, d) if batch_first else (t, 1, d)).astype(np.float32)]
    if state:
        feeds += [rng.integers(-128, 128, (1, 1, h)).astype(np.int8),
                  rng.integers(-3000, 3000, (1, 1, h)).astype(np.int16)]
    pkg = _roundtrip(model, feeds)
    rec = _record(pkg, "LSTMInt")
    assert rec.attrs[:8] == struct.pack("<HHHBB", int(reverse), h, d, batch_first, 4)
    assert len(rec.inputs) == (8 if state else 5)
    w_ih, w_hh, b_ih, b_hh = (pkg.tensors[i] for i in rec.inputs[-4:])
    # transposed, zero rows up to a 16-byte multiple: the wrapper slices its DMA buffer without the blob's padding
    assert w_ih.shape[1] == w_hh.shape[1] == 4 * h and w_ih.nbytes % 16 == 0 and w_hh.nbytes % 16 == 0
    assert d <= w_ih.shape[0] < d + 4 and h <= w_hh.shape[0] < h + 4 and not w_ih.data[d:].any()
    (dma,) = pkg.dma
    assert dma.src == rec.inputs[-4] and dma.size == w_ih.nbytes + w_hh.nbytes + b_ih.nbytes + b_hh.nbytes
    ws, buf = rec.temps
    assert pkg.tensors[ws].nbytes == 40 * h and buf == dma.dst


def test_lstm_between_linear_layers_takes_its_transfer_in_order():
    t, d, h = 6, 10, 6  # 4H * D and 4H * H not multiples of 16: the weights get zero rows
    x = np.random.default_rng(3).standard_normal((1, t, d)).astype(np.float32)
    pkg = _roundtrip(lstm_model(t, d, h, seed=3, linears=True), [x])
    ops = [op for op in pkg.ops if op.type in ("LinearInt", "LSTMInt")]
    assert [op.type for op in ops] == ["LinearInt", "LSTMInt", "LinearInt"]
    assert [dma.dst for dma in pkg.dma] == [op.temps[-1] for op in ops]


def test_lstm_lengths_other_than_t_are_refused():
    """The runtime leaves y's rows at and after lengths[0] unwritten; lengths = [T] is written (and runs T steps)."""
    _roundtrip(lstm_model(5, 4, 3, lengths=5), [np.ones((1, 5, 4), np.float32)])
    report = check_graph(read_onnx(lstm_model(5, 4, 3, lengths=3)), package_format="thinker")
    v = [v for v in report.violations if v.rule_id == "csk60xx.thinker.lstm_lengths"]
    assert v and v[0].op_name == "lstm" and v[0].actual == "[3]" and v[0].limit == "a constant [5]"


@pytest.mark.parametrize("kind", ["GRUInt", "LSTMInt"])
@pytest.mark.parametrize("batch_first", [0, 1])
def test_bidirectional_layers_run_like_model_bin(kind, batch_first):
    """A forward and a reverse node (direction 0 and 1 in the records) and their concatenation."""
    t, d, h = 6, 5, 7
    x = np.random.default_rng(8).standard_normal((1, t, d) if batch_first else (t, 1, d)).astype(np.float32)
    pkg = _roundtrip(birnn_model(kind, t, d, h, batch_first=batch_first), [x])
    assert [int(op.attrs[0]) for op in pkg.ops if op.type == kind] == [0, 1] and "iqCat" in {op.type for op in pkg.ops}
