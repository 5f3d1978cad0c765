"""Long short-term memory: ``LSTMInt`` (spec/int8-seq-ops.md 2.1), one layer, one direction, batch 1.

Integer semantics (C kernel ``csrc/ops/lstm.c``; the numpy reference :func:`lstm_int` below). The state is ``h``
int8 at the output exponent ``n_o`` and the cell ``c`` int16 Q7, from ``h0`` / ``c0`` or zeros. For ``t`` in
``0 .. L-1`` (``go_forward = 1``) or ``L-1 .. 0`` (``go_forward = 0``), ``L`` = ``lengths[0]`` or ``T``::

    gi = Q11(SAT_32(SAT_32(x_t . W_ih^T) + b_ih), n_i + n_iw)          gates i, f, g, o (PyTorch order)
    gh = Q11(SAT_32(SAT_32(h . W_hh^T) + b_hh), n_o + n_hw)
        Q11(v, q) = SAT_32(v * 2^(11 - q)) for q < 11, SAT_32(SHR(v, q - 11)) otherwise (both signs)
    G = SAT_16(gi + gh);  i, f, o = sig8(G_i, G_f, G_o);  g = tanh8(G_g)          Q7
    p = f * c + i * g                                                            Q14, int32
    c = SAT_16(SHR(p, 7));  h = SAT_8(SHR(o * tanh8(SAT_16(SHR(p, 3))), 14 - n_o));  y_t = h

``y`` rows ``t >= L`` are zeros (``pad_packed_sequence``'s padding); ``h_n`` / ``c_n`` are the state after the
last processed step. sig8 / tanh8 are spec 1.3's (``ops/gru.py``).

IR node (what the torch side writes; the backend's reader gives the same)::

    LSTMInt(x, w_ih, w_hh, b_ih, b_hh[, lengths[, h0, c0]]) -> (y, h_n, c_n)

=========  ==========================================  ========================================================
input      dtype, shape                                exponent
=========  ==========================================  ========================================================
x          int8 ``[T, 1, D]`` (``batch_first=0``) or   ``n_i`` (``scale_i``)
           ``[1, T, D]`` (``batch_first=1``)
w_ih       int8 ``[4H, D]`` constant, gates i f g o    ``n_iw`` (``scale_iw``); the floor rule on the final
                                                        weights (spec 6.2), no clipping
w_hh       int8 ``[4H, H]`` constant                   ``n_hw`` (``scale_hw``)
b_ih       int32 ``[4H]`` constant                     ``n_i + n_iw``
b_hh       int32 ``[4H]`` constant                     ``n_o + n_hw``
lengths    int64 or int32 ``[1]`` (optional)           none: integers (narrowed to int32 at pack; only element
                                                        0 is read, ``0 <= L <= T``)
h0         int8 ``[1, 1, H]`` (optional, with c0)      ``n_o`` (quantized at ``scale_o``)
c0         int16 ``[1, 1, H]`` (optional, with h0)     7 (quantized to 16 bits at scale 128)
=========  ==========================================  ========================================================

Outputs: ``y`` int8 ``[T, 1, H]`` / ``[1, T, H]`` at ``n_o`` (``scale_o``); ``h_n`` int8 ``[1, 1, H]`` at ``n_o``
(``scale_h``, which must equal ``scale_o``: the kernel keeps the state at ``n_o``); ``c_n`` int16 ``[1, 1, H]`` at
7 (no scale attribute). Inputs come in this order or with no optional one; initial state without lengths is
written with a constant ``lengths = [T]`` (as linger does). Attributes: ``input_size`` D, ``hidden_size`` H,
``num_layers`` 1, ``batch_first``, ``dropout`` 0.0, ``go_forward`` (1 forward, 0 reverse), ``data_bits`` /
``parameter_bits`` / ``o_bits`` 8. Bidirectional: two nodes (``go_forward`` 1 and 0) on the same x, each with
its own h0/c0 halves, and the concatenation of ``y_fwd, y_rev`` on the last dim (spec 2.1.3's scales).
Stacked layers: one node per layer, chained.

Dialect file (linger 1.1.1, spec 2.1.3, with the fixes of 6.2 / 6.10): ``thinker::LSTMInt`` with the inputs in
linger's order ``x[, lengths[, h0, c0]], w_ih, w_hh, b_ih, b_hh`` (5, 6 or 8 inputs; the reader reorders them to
the IR's, the writer back), the attributes above plus ``scale_*`` and ``platform_quant``. linger declares h_n and
c_n float32; the chip keeps int8 / int16 state in them, and so does the IR. linger's float32 h0/c0 (which the
vendor runtime copies as raw bytes, misreading them) are refused with the fix: quantize them as above.

Limits (spec 2.1.5, 6.2; ``[lstm]`` of the target): batch 1, ``n_o <= 14`` (the last shift is unsigned), a
Q11 alignment left shift of at most 30, ``scale_h = scale_o``; the kernel's scratch is 40H bytes (tpacker
declares 32H).

Thinker package (spec/thinker-package.md 3.5, 4.4, 6): an ``LSTMInt`` record in the runtime's order
``x[, lengths[, h0, c0]], W_ih^T, W_hh^T, b_ih, b_hh -> y, h_n, c_n`` with LstmIntAttrs {direction (0 forward,
1 reverse), H, D, layout = batch_first, quant_type 4}, a 40H-byte workspace and a DMA buffer. One DMA transfer
carries the four weight constants; the VENUS wrapper slices them out of its buffer back to back, without the
16-byte padding the blob puts after each constant, so each transposed weight [K, 4H] is stored with zero rows up
to a 16-byte multiple (rows the kernel never reads, since it takes K from the attributes). Lengths and an initial
state are read in place, outside the transfer. Refused for the package: lengths other than a constant ``[T]`` (the
runtime leaves the rows of y at and after lengths[0] unwritten, lnn writes zeros).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, rule

from ..thinker.lowering import LAYOUT_NCHW, LAYOUT_NCWH, QUANT_LUNA, DecodedOp, Problem, ThinkerLowering
from ._rules import at, dtype_rule, seq
from .base import PLATFORM, InferContext, Lowering, OpDef, Params, ReadContext, engine_operands, known_shapes
from .gru import GATE_Q, RECURRENT_ATTRS, RECURRENT_SCALES, _sat, _shr, infer_recurrent, sig8, tanh8, view_recurrent

__all__ = ["OPS", "lstm_int", "CELL_Q"]

#: the cell's fixed-point format: c is int16 Q7
CELL_Q = 7


def _q11(v: np.ndarray, q: int) -> np.ndarray:
    """The kernel's Q11 alignment of a gate sum at exponent ``q`` (both directions)."""
    if q < GATE_Q:
        return _sat(v << np.int64(GATE_Q - q), 32)
    return _sat(_shr(v, q - GATE_Q), 32)


def _check(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"LSTMInt: {name} = {value} is outside {lo}..{hi} (outside the chip's shift contract)")


def lstm_int(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray, *, n_i: int,
             n_iw: int, n_hw: int, n_o: int, h0: np.ndarray | None = None, c0: np.ndarray | None = None,
             length: int | None = None, reverse: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chip's LSTMInt on one sequence: ``x`` int8 ``[T, D]``, ``w_ih`` int8 ``[4H, D]``, ``w_hh`` int8
    ``[4H, H]``, ``b_ih`` / ``b_hh`` int32 ``[4H]``; exponents of x, w_ih, w_hh and of the output (= hidden
    state). ``h0`` int8 ``[H]`` at ``n_o`` and ``c0`` int16 ``[H]`` Q7 (None: zeros), ``length`` the steps run
    (None: T), ``reverse`` runs ``L-1 .. 0``. Returns ``(y int8 [T, H], h_n int8 [H], c_n int16 [H])``; rows of
    ``y`` at or after ``length`` are zeros. Exponents outside the chip's shift contract (``n_o > 14``, an
    alignment left shift over 30) raise ``ValueError``."""
    x = np.asarray(x, np.int64)
    w_ih, w_hh = np.asarray(w_ih, np.int64), np.asarray(w_hh, np.int64)
    b_ih, b_hh = np.asarray(b_ih, np.int64), np.asarray(b_hh, np.int64)
    if x.ndim != 2 or w_ih.ndim != 2 or w_hh.ndim != 2 or w_ih.shape[1] != x.shape[1]:
        raise ValueError(f"LSTMInt: x {x.shape} and w_ih {w_ih.shape} must be [T, D] and [4H, D]")
    h4 = w_ih.shape[0]
    if h4 % 4 or w_hh.shape != (h4, h4 // 4) or b_ih.shape != (h4,) or b_hh.shape != (h4,):
        raise ValueError(f"LSTMInt: w_ih {w_ih.shape}, w_hh {w_hh.shape}, b_ih {b_ih.shape}, b_hh {b_hh.shape} do not "
                         "fit [4H, D], [4H, H], [4H], [4H]")
    hid, steps = h4 // 4, x.shape[0]
    _check("11 - (n_i + n_iw)", GATE_Q - n_i - n_iw, -62, 30)
    _check("11 - (n_o + n_hw)", GATE_Q - n_o - n_hw, -62, 30)
    _check("14 - n_o", 14 - n_o, 0, 62)
    length = steps if length is None else int(length)
    _check("length", length, 0, steps)
    h = np.zeros(hid, np.int64) if h0 is None else np.asarray(h0, np.int64).reshape(hid)
    c = np.zeros(hid, np.int64) if c0 is None else np.asarray(c0, np.int64).reshape(hid)
    y = np.zeros((steps, hid), np.int8)
    for t in (range(length - 1, -1, -1) if reverse else range(length)):
        gi = _q11(_sat(_sat(w_ih @ x[t], 32) + b_ih, 32), n_i + n_iw)
        gh = _q11(_sat(_sat(w_hh @ h, 32) + b_hh, 32), n_o + n_hw)
        g = _sat(gi + gh, 16)
        i, f, gg, o = sig8(g[:hid]), sig8(g[hid:2 * hid]), tanh8(g[2 * hid:3 * hid]), sig8(g[3 * hid:])
        p = f * c + i * gg
        c = _sat(_shr(p, CELL_Q), 16)
        h = _sat(_shr(o * tanh8(_sat(_shr(p, 3), 16)), 14 - n_o), 8)
        y[t] = h
    return y, h.astype(np.int8), c.astype(np.int16)


# -- the IR op -----------------------------------------------------------------------------------------------------

#: IR input positions of the optional inputs
LENGTHS, H0, C0 = 5, 6, 7


def _read(ctx: ReadContext) -> None:
    """linger's order ``x[, lengths[, h0, c0]], w_ih, w_hh, b_ih, b_hh`` -> the IR's (optional inputs last)."""
    ins = ctx.inputs
    extra = {5: 0, 6: 1, 8: 3}.get(len(ins))
    if extra is None:
        raise ctx.fail(f"has {len(ins)} inputs",
                       {"rule": "LSTMInt takes x[, lengths[, h0, c0]], w_ih, w_hh, b_ih, b_hh: 5, 6 or 8 inputs "
                                "(h0/c0 come with lengths, as linger writes them)", "inputs": list(ins)},
                       "re-export the model; give h0/c0 a constant lengths input [T] when the sequence is whole")
    ins[:] = [ins[0], *ins[1 + extra:], *ins[1:1 + extra]]


def _write(inputs: list[str]) -> list[str]:
    """The IR's input order -> linger's."""
    extra = len(inputs) - 5
    return [inputs[0], *inputs[5:], *inputs[1:5]] if extra else list(inputs)


def _infer(c: InferContext) -> list[TensorInfo]:
    """y int8 ``[T, B, H]`` (``batch_first=0``) or ``[B, T, H]`` at scale_o, h_n int8 ``[1, B, H]`` at scale_h,
    c_n int16 ``[1, B, H]`` at 7."""
    n = len(c.node.inputs)
    if n not in (5, 6, 8):
        raise c.fail(f"has {n} inputs", {"rule": "LSTMInt(x, w_ih, w_hh, b_ih, b_hh[, lengths[, h0, c0]])"})
    b, t, h, bf = infer_recurrent(
        c, "LSTMInt", ("i", "f", "g", "o"),
        ((H0, "h0", "int8", "at the output exponent n_o", "quantized at scale_o"),
         (C0, "c0", "int16", "Q7", "quantized to 16 bits at scale 128")),
        "thinker copies a float h0/c0 as raw bytes and misreads it")
    y = (b, t, h) if bf else (t, b, h)
    return [c.out("int8", y, None), c.out("int8", (1, b, h), None, index=1),
            c.out("int16", (1, b, h), CELL_Q, index=2)]


@rule("csk60xx.lstm.batch", ops=(), bmax="lstm.batch_max")
def check_batch(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """LSTMInt runs a batch of at most {bmax} sequence (the kernel's time stride is input_size whatever the
    batch, and it keeps one state)."""
    b, bmax = op.attrs.get("batch"), limits["lstm.batch_max"]
    if b is None or b <= bmax:
        return None
    return Finding(actual=f"batch {b}", limit=f"batch <= {bmax}",
                   hint="run the sequences one at a time (export with a batch-1 example input)")


def _alignment_rule(rule_id: str, which: str, a: tuple[str, int], b: tuple[str, int], names: str) -> Any:
    def check(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
        na = at(seq(op, f"{a[0]}_exponents"), a[1])
        nb = at(seq(op, f"{b[0]}_exponents"), b[1])
        q, left = limits["lstm.gate_q"], limits["lstm.gate_shift_left_max"]
        if na is None or nb is None or na + nb >= q - left:
            return None
        return Finding(actual=f"{names} = {na} + {nb} = {na + nb}", limit=f"{names} >= {q - left}",
                       hint=f"give {which} a finer scale (a larger exponent): the chip brings the product to Q{q} "
                            f"with a left shift of at most {left} bits")

    check.__doc__ = (f"LSTMInt {names} must be at least {{q}} - {{left}}: the Q11 alignment of {which} shifts left "
                     "by a 32-bit scalar.")
    return rule(rule_id, ops=(), q="lstm.gate_q", left="lstm.gate_shift_left_max")(check)


check_in_alignment = _alignment_rule("csk60xx.lstm.in_alignment", "the input or w_ih", ("input", 0), ("input", 1),
                                     "n_i + n_iw")
check_hidden_alignment = _alignment_rule("csk60xx.lstm.hidden_alignment", "w_hh", ("output", 0), ("input", 2),
                                         "n_o + n_hw")


@rule("csk60xx.lstm.out_exponent", ops=(), emax="lstm.out_exponent_max")
def check_out_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """LSTMInt output exponent n_o must be at most {emax}: h = o * tanh(c) (Q14) is brought to n_o by an unsigned
    right shift of 14 - n_o (a negative shift does no scaling on the chip)."""
    n_o, emax = at(seq(op, "output_exponents"), 0), limits["lstm.out_exponent_max"]
    if n_o is None or n_o <= emax:
        return None
    return Finding(actual=f"n_o {n_o}", limit=f"n_o <= {emax}",
                   hint=f"give the LSTM output a coarser scale (scale_o <= {2.0 ** emax:g}; |h| < 1 needs n_o = 7)")


@rule("csk60xx.lstm.state_exponent", ops=())
def check_state_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """LSTMInt keeps its hidden state at the output exponent: h_n's and h0's exponents (scale_h) must equal
    n_o, c0's must be 7 (int16 Q7)."""
    ins, outs = seq(op, "input_exponents"), seq(op, "output_exponents")
    n_o, n_h = at(outs, 0), at(outs, 1)
    if n_o is None:
        return None
    bad = [f"h_n {n_h}"] if n_h is not None and n_h != n_o else []
    if op.attrs.get("state_in"):
        h0, c0 = at(ins, H0), at(ins, C0)
        bad += [f"h0 {h0}"] if h0 is not None and h0 != n_o else []
        bad += [f"c0 {c0}"] if c0 is not None and c0 != CELL_Q else []
    if not bad:
        return None
    return Finding(actual=f"n_o {n_o}, " + ", ".join(bad), limit=f"h_n = h0 = n_o, c0 = {CELL_Q}",
                   hint="write scale_h = scale_o, quantize h0 at scale_o and c0 as int16 at scale 128")


@rule("csk60xx.lstm.vendor_lengths", ops=(), severity="warning")
def check_vendor_lengths(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """LSTMInt with lengths: lnn writes zeros to the rows of y at and after lengths[0]; the vendor runtime
    (thinker 3.0.4) leaves them unwritten (whatever the buffer held) and reads lengths[0] as int32."""
    if not op.attrs.get("lengths"):
        return None
    return Finding(actual="lengths given", limit="y rows >= lengths[0] are zeros in lnn, unwritten on the vendor "
                   "runtime", hint="read only the first lengths[0] rows of y (pad_packed_sequence does)")


_DTYPE = dtype_rule("csk60xx.lstm.dtype", "LSTMInt", (("int8",), ("int8",), ("int8",), ("int32",), ("int32",)),
                    ("int8",))


def _kernel_workspace(graph: Graph, node: Node) -> int:
    """The kernel's scratch: gi and gh (4H int32 each) and two int32 [H] products: 40H bytes (spec 2.1.5
    measured; tpacker declares 32H)."""
    shapes = known_shapes(graph, node.inputs[2])
    return 40 * shapes[0][1] if shapes is not None and len(shapes[0]) == 2 else 0


def _workspace(graph: Graph, node: Node) -> list[tuple[Any, str, bool]]:
    return engine_operands(graph, node, whole=(0, "out"))


def _attrs(node: Node, graph: Graph) -> list[int]:
    """The op record's attribute: 1 for a reverse node (go_forward = 0)."""
    return [0 if int(node.attrs.get("go_forward", 1)) else 1]


# -- thinker package --------------------------------------------------------------------------------------------------


def _thinker_rows(k: int, cols: int) -> int:
    """Rows a [K, cols] int8 weight is stored with so that its bytes are a multiple of 16 (the rows past K are
    zeros the kernel never reads): the VENUS wrapper finds each constant in the DMA buffer right after the one
    before it, while the blob pads every constant to 16 bytes."""
    rows = k
    while rows * cols % 16:
        rows += 1
    return rows


def _thinker_relayout(w: np.ndarray, node: Node, graph: Graph) -> tuple[np.ndarray, int]:
    """W_ih [4H, D] / W_hh [4H, H] -> [K', 4H] (transposed, zero rows to a 16-byte multiple); other constants at
    these record positions (lengths, an initial state) as they are."""
    if w.ndim != 2 or w.dtype != np.int8:
        return w, LAYOUT_NCHW
    t = np.zeros((_thinker_rows(w.shape[1], w.shape[0]), w.shape[0]), np.int8)
    t[:w.shape[1]] = w.T
    return t, LAYOUT_NCWH


def _thinker_inputs(node: Node, graph: Graph) -> list[str]:
    """The record's order: x[, lengths[, h0, c0]], w_ih, w_hh, b_ih, b_hh."""
    return [node.inputs[0], *node.inputs[LENGTHS:], *node.inputs[1:5]]


def _thinker_ir_order(n: int) -> list[int]:
    if n not in (5, 6, 8):
        raise ValueError(f"an LSTMInt record of {n} inputs (lnn reads 5, 6 or 8: initial state comes with lengths)")
    extra = n - 5
    return [0, *range(1 + extra, n), *range(1, 1 + extra)]


def _thinker_attrs(node: Node, graph: Graph) -> bytes:
    d, h = graph.tensors[node.inputs[1]].shape[1], graph.tensors[node.inputs[2]].shape[1]
    direction = 0 if int(node.attrs.get("go_forward", 1)) else 1
    return struct.pack("<HHHBB", direction, h, d, int(node.attrs.get("batch_first", 0)), QUANT_LUNA)


def _thinker_check(node: Node, graph: Graph) -> list[Problem]:
    out = []
    x = graph.tensors[node.inputs[0]].shape
    steps = x[1] if int(node.attrs.get("batch_first", 0)) else x[0]
    if len(node.inputs) > LENGTHS:
        lengths = graph.initializers.get(node.inputs[LENGTHS])
        value = None if lengths is None else int(np.asarray(lengths).reshape(-1)[0])
        if value != steps:
            out.append(Problem("csk60xx.thinker.lstm_lengths", "the runtime leaves the rows of y at and after "
                               "lengths[0] unwritten (lnn writes zeros), so only a constant lengths = [T] is "
                               "written", f"a constant [{steps}]", "computed" if lengths is None else f"[{value}]",
                               "run the LSTM over the whole sequence (trim the input instead of passing lengths)"))
    return out


def _thinker_read(d: DecodedOp) -> tuple[dict[str, Any], dict[int, Any]]:
    direction, h, size, layout, _ = struct.unpack_from("<HHHBB", d.attrs)
    attrs = {"input_size": size, "hidden_size": h, "batch_first": layout, "go_forward": 1 - direction,
             "num_layers": 1}
    w = len(d.inputs) - 4
    return attrs, {w: np.ascontiguousarray(d.inputs[w].data[:size].T),
                   w + 1: np.ascontiguousarray(d.inputs[w + 1].data[:h].T)}


_THINKER_LSTM = ThinkerLowering("LSTMInt", attrs=_thinker_attrs, inputs=_thinker_inputs,
                                relayout={k: _thinker_relayout for k in range(1, 8)}, dma=True, dma_last=4,
                                workspace=lambda n, g: _kernel_workspace(g, n), check=_thinker_check,
                                read=_thinker_read, ir_order=_thinker_ir_order)


OPS = (
    OpDef("LSTMInt", "thinker", (5, 8), _infer, outputs=3, attrs={**RECURRENT_ATTRS, **PLATFORM},
          scales=dict(RECURRENT_SCALES),
          params=(Params(1, 3), Params(2, 4, x=("out", 0))), index_inputs=(LENGTHS,),
          input_exponents={H0: "scale_o", C0: CELL_Q}, read=_read, write=_write,
          pack_rules=(check_batch, check_in_alignment, check_hidden_alignment, check_out_exponent,
                      check_state_exponent, check_vendor_lengths, _DTYPE),
          view=view_recurrent, workspace=_workspace, kernel_workspace=_kernel_workspace,
          lowerings={"lnn": Lowering(31, None, _attrs, "lstm.c"), "thinker": _THINKER_LSTM}),
)
