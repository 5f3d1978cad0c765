"""Gated recurrent unit: ``GRUInt`` (spec/int8-seq-ops.md 2.2), one layer, one direction, batch 1.

Integer semantics (C kernel ``csrc/ops/gru.c``; the numpy reference :func:`gru_int` below), per step from
``h = h0`` or zeros (int8 at the output exponent ``n_o``), for ``t`` in ``0 .. L-1`` (``go_forward = 1``) or
``L-1 .. 0`` (``go_forward = 0``), ``L`` = ``lengths[0]`` or ``T``; rows of ``y`` at and after ``L`` are zeros::

    gi = SAT_32(SHR(SAT_32(SAT_32(x_t . W_ih^T) + b_ih), n_i + n_iw - 11))        Q11, gates r, z, n
    gh = SAT_32(SHR(SAT_32(SAT_32(h . W_hh^T) + b_hh), n_o + n_hw - 11))
    r  = sig8(SAT_16(gi_r + gh_r));  z = sig8(SAT_16(gi_z + gh_z))                  Q7
    n  = tanh8(SAT_16(gi_n + SAT_32(SHR(r * gh_n, 7))))                             Q7
    h  = SAT_8(SHR(SAT_16(z * SAT_8(SHR(h, 1))) + SAT_16((128 - z) * n), 14 - n_o));  y_t = h

IR node (what the torch side writes; the backend's reader gives the same)::

    GRUInt(x, w_ih, w_hh, b_ih, b_hh[, lengths[, h0]]) -> (y, h_n)

x int8 ``[T, 1, D]`` (``batch_first=0``) / ``[1, T, D]`` at ``n_i`` (``scale_i``); w_ih int8 ``[3H, D]`` at
``n_iw`` (``scale_iw``), w_hh int8 ``[3H, H]`` at ``n_hw`` (``scale_hw``), constants, gates r, z, n; b_ih int32
``[3H]`` at ``n_i + n_iw``, b_hh at ``n_o + n_hw``; lengths int64 or int32 ``[1]`` (integers, no scale; narrowed
to int32 at pack, ``0 <= L <= T``); h0 int8 ``[1, 1, H]`` at ``n_o`` (a raw state: an int8 graph input, or
quantized at ``scale_o``). h0 without lengths is written with a constant ``lengths = [T]``. Outputs y int8
``[T, 1, H]`` / ``[1, T, H]`` at ``n_o`` (``scale_o``) and h_n int8 ``[1, 1, H]`` at ``n_o`` (``scale_h``). Attributes
``input_size``, ``hidden_size``, ``num_layers`` 1, ``batch_first``, ``dropout`` 0, ``go_forward`` (1 / 0),
``data_bits`` / ``parameter_bits`` / ``o_bits`` 8. Bidirectional: a forward and a reverse node on the same x and
their y concatenated on the last dim; stacked layers: chained nodes.

Dialect (linger 1.1.1, spec 2.2.3): ``thinker::GRUInt`` with the inputs in linger's order ``x[, lengths[, h0]],
w_ih, w_hh, b_ih, b_hh`` (the reader reorders them to the IR's, the writer back), the attributes above, the
``scale_*`` and ``platform_quant``. linger declares ``h_n`` float32; the chip keeps the int8 state in it, so the
IR gives it int8 ``[1, B, H]`` at ``scale_h``. linger names the lengths / h0 variants ``GRUInt_Is8_Is64`` and
``GRUInt_Is8_Is64_If32`` (no vendor toolchain packs them), the latter with a float h0: the reader reads both as
``GRUInt`` (and refuses the float h0 with the fix); lnn writes ``GRUInt`` with an int8 h0.

Limits (spec 2.2.5, 6.2; ``[gru]`` of the target): batch 1 (the chip addresses x batch-major whatever
``batch_first`` says), ``n_i + n_iw >= 11`` and ``n_o + n_hw >= 11`` (the Q11 alignment only shifts right),
``n_o = 8`` (the kernel reads the state as Q8: any other exponent mis-scales the feedback) and ``scale_h =
scale_o``. What the vendor runtime does instead of lnn's simulator is a warning rule each: it runs a
``go_forward = 0`` node forward, and reads neither h0 (starts from zeros) nor lengths (runs all T steps). ``y`` is
declared ``[T, 1, H]`` / ``[1, T, H]`` (tpacker 3.0.4's ``[1, B, H]`` is a bug, spec 2.1.3). The kernel's scratch
is 24H bytes (gi and gh as int32).

Thinker package (spec/thinker-package.md 3.5, 6; int8-seq-ops.md 2.2.5): a ``GRUInt`` record (x, W_ih^T [D, 3H],
W_hh^T [H, 3H], b_ih, b_hh -> y, h_n) with GRUIntAttrs {direction (0 forward, 1 reverse: the VENUS kernel runs
``t = T-1 .. 0`` for 1, which tpacker never writes), H, D, layout = batch_first, quant_type 0}. The kernel reads
its weights in place from the blob (no DMA transfer, no DMA buffer: it never calls getWeightData) and keeps the
int8 state in h_n. Its VENUS wrapper runs the kernel only when a workspace is listed and then reads four more temps
as (unused) weight descriptors, so the record lists the 24H-byte workspace five times: every id it reads is a real
tensor. Refused for the package: an initial state and lengths other than a constant ``[T]`` (the runtime reads
neither), and a matmul block over the NPU's 32 KB (the kernel's fixed split in four, which nothing checks on the
chip).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, rule

from ..thinker.lowering import DecodedOp, Problem, ThinkerLowering, relayout_linear, restore_linear
from ._rules import at, dtype_rule, seq
from .base import PLATFORM, AttrSpec, InferContext, Lowering, OpDef, Params, ReadContext, engine_operands, known_shapes

__all__ = ["OPS", "GATE_Q", "gru_int", "sig8", "tanh8"]

#: the gates' fixed-point format: the Q11 alignment shifts x . W_ih and h . W_hh to it
GATE_Q = 11


# -- the reference: the chip's integers in numpy (the C kernel and the tests are held to it) -----------------------

# spec 1.3: segment upper bounds, slopes, shifts, offsets of luna_sigmoid / luna_tanh
_SIG_B = np.array([971, 1699, 2347, 2974, 3614, 4291, 5026, 5861, 6831, 7864, 8987, 10375, 11594, 13168, 14730,
                   32768], np.int64)
_SIG_K = np.array([32316, 29471, 25891, 22068, 18225, 29057, 22206, 16113, 10881, 27353, 16611, 9242, 4618, 20670,
                   8610, 693], np.int64)
_SIG_SH = np.array([13, 13, 13, 13, 13, 14, 14, 14, 14, 16, 16, 16, 16, 19, 19, 19], np.int64)
_SIG_C0 = np.array([16384, 16721, 17464, 18559, 19954, 21585, 23380, 25249, 27121, 28807, 30096, 31107, 31839, 32199,
                    32502, 32724], np.int64)
_SIG_C1 = np.array([16384, 16047, 15304, 14209, 12814, 11183, 9388, 7519, 5647, 3961, 2672, 1661, 929, 569, 266, 44],
                   np.int64)
_TANH_B = np.array([512, 888, 1226, 1558, 1899, 2264, 2670, 3146, 3734, 4297, 4761, 5466, 6151, 7193, 8093, 32768],
                   np.int64)
_TANH_K = np.array([32266, 29154, 25374, 21309, 17272, 26886, 19904, 13765, 8599, 19497, 12047, 7324, 3373, 26820,
                    5531, 337], np.int64)
_TANH_SH = np.array([11, 11, 11, 11, 11, 12, 12, 12, 12, 14, 14, 14, 14, 18, 18, 18], np.int64)
_TANH_C = np.array([0, 778, 2417, 4851, 7922, 11474, 15334, 19335, 23303, 26699, 28653, 30026, 31344, 31981, 32565,
                    32725], np.int64)


def _sat(v: np.ndarray, bits: int) -> np.ndarray:
    hi = (1 << (bits - 1)) - 1
    return np.clip(v, -hi - 1, hi)


def _shr(v: np.ndarray, s: int) -> np.ndarray:
    """``SHR(v, s)``, round half up, for ``s >= 0`` on int64."""
    if s == 0:
        return v
    return (v + (np.int64(1) << np.int64(s - 1))) >> np.int64(s)


def sig8(t: np.ndarray) -> np.ndarray:
    """``luna_sigmoid_int8``: int16 Q11 in, int8 Q7 (0..127) out."""
    t = np.asarray(t, np.int64)
    s = np.searchsorted(_SIG_B, np.abs(t), side="left")
    y15 = (_SIG_K[s] * t >> _SIG_SH[s]) + np.where(t >= 0, _SIG_C0[s], _SIG_C1[s])
    return _sat(_shr(_sat(y15, 16), 8), 8)


def tanh8(t: np.ndarray) -> np.ndarray:
    """``luna_tanh_int8``: int16 Q11 in, int8 Q7 out (not exactly odd)."""
    t = np.asarray(t, np.int64)
    a = np.where(t == -32768, 32767, np.abs(t))
    s = np.searchsorted(_TANH_B, a, side="left")
    k, sh, c = _TANH_K[s], _TANH_SH[s], _TANH_C[s]
    y15 = np.where(t >= 0, (k * a >> sh) + c, (-k * a >> sh) - c)
    return _sat(_shr(_sat(y15, 16), 8), 8)


def _check(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"GRUInt: {name} = {value} is outside {lo}..{hi} (the chip's Luna shifts only go right)")


def gru_int(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray, *, n_i: int,
            n_iw: int, n_hw: int, n_o: int, h0: np.ndarray | None = None, length: int | None = None,
            reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The chip's GRUInt on one sequence: ``x`` int8 ``[T, D]``, ``w_ih`` int8 ``[3H, D]``, ``w_hh`` int8 ``[3H, H]``,
    ``b_ih`` / ``b_hh`` int32 ``[3H]``; exponents of x, w_ih, w_hh and of the output (= hidden state). Returns
    ``(y int8 [T, H], h_n int8 [H])``. Batch 1; from ``h0`` (int8 ``[H]`` at ``n_o``; None: zeros), the first
    ``length`` steps (None: T; later rows of y are zeros), backwards with ``reverse`` -- lnn's extensions: the
    vendor kernel reads neither h0 nor lengths and always runs forward. The chip's Luna routines do no scaling for a
    negative shift (spec 1.1): ``n_i + n_iw < 11``,
    ``n_o + n_hw < 11`` or ``n_o > 14`` raise ``ValueError`` (the pack rules reject such a GRU first). The arithmetic
    is the chip's for any ``n_o`` in range, though only ``n_o = 8`` scales the hidden feedback right."""
    x = np.asarray(x, np.int64)
    w_ih, w_hh = np.asarray(w_ih, np.int64), np.asarray(w_hh, np.int64)
    b_ih, b_hh = np.asarray(b_ih, np.int64), np.asarray(b_hh, np.int64)
    if x.ndim != 2 or w_ih.ndim != 2 or w_hh.ndim != 2 or w_ih.shape[1] != x.shape[1]:
        raise ValueError(f"GRUInt: x {x.shape} and w_ih {w_ih.shape} must be [T, D] and [3H, D]")
    h3 = w_ih.shape[0]
    if h3 % 3 or w_hh.shape != (h3, h3 // 3) or b_ih.shape != (h3,) or b_hh.shape != (h3,):
        raise ValueError(f"GRUInt: w_ih {w_ih.shape}, w_hh {w_hh.shape}, b_ih {b_ih.shape}, b_hh {b_hh.shape} do not "
                         "fit [3H, D], [3H, H], [3H], [3H]")
    _check("n_i + n_iw - 11", n_i + n_iw - GATE_Q, 0, 62)
    _check("n_o + n_hw - 11", n_o + n_hw - GATE_Q, 0, 62)
    _check("14 - n_o", 14 - n_o, 0, 62)
    hid = h3 // 3
    s_i, s_h, s_o = n_i + n_iw - GATE_Q, n_o + n_hw - GATE_Q, 14 - n_o
    steps = x.shape[0]
    length = steps if length is None else int(length)
    if not 0 <= length <= steps:
        raise ValueError(f"GRUInt: length {length} is outside 0..{steps}")
    h = np.zeros(hid, np.int64) if h0 is None else np.asarray(h0, np.int64).reshape(hid)
    y = np.zeros((steps, hid), np.int8)
    for t in (range(length - 1, -1, -1) if reverse else range(length)):
        gi = _sat(_shr(_sat(_sat(w_ih @ x[t], 32) + b_ih, 32), s_i), 32)
        gh = _sat(_shr(_sat(_sat(w_hh @ h, 32) + b_hh, 32), s_h), 32)
        r = sig8(_sat(gi[:hid] + gh[:hid], 16))
        z = sig8(_sat(gi[hid:2 * hid] + gh[hid:2 * hid], 16))
        rn = _sat(_shr(r * gh[2 * hid:], 7), 32)
        n = tanh8(_sat(gi[2 * hid:] + rn, 16))
        h7 = _sat(_shr(h, 1), 8)
        h = _sat(_shr(_sat(z * h7, 16) + _sat((128 - z) * n, 16), s_o), 8)
        y[t] = h
    return y, h.astype(np.int8)


# -- the IR op -----------------------------------------------------------------------------------------------------


#: IR input positions of the optional inputs
LENGTHS, H0 = 5, 6


def _read(ctx: ReadContext) -> None:
    """linger's order ``x[, lengths[, h0]], w_ih, w_hh, b_ih, b_hh`` -> the IR's (optional inputs last)."""
    ins = ctx.inputs
    if not 5 <= len(ins) <= 7:
        raise ctx.fail(f"has {len(ins)} inputs", {"rule": "GRUInt takes x[, lengths[, h0]], w_ih, w_hh, b_ih, b_hh",
                                                  "inputs": list(ins)}, "re-export the model")
    extra = len(ins) - 5
    ins[:] = [ins[0], *ins[1 + extra:], *ins[1:1 + extra]]


def _write(inputs: list[str]) -> list[str]:
    """The IR's input order -> linger's."""
    return [inputs[0], *inputs[5:], *inputs[1:5]]


def infer_recurrent(c: InferContext, op: str, gates: tuple[str, ...],
                    states: tuple[tuple[int, str, str, str, str], ...], vendor: str) -> tuple[int, int, int, bool]:
    """The checks GRUInt and LSTMInt share: x int8 rank 3, ``len(gates)`` gate blocks in w_ih ``[G H, D]``, w_hh
    ``[G H, H]``, int32 biases ``[G H]``, the size attributes, lengths ``[B]`` and each state input ``(index,
    role, dtype, what it holds, how to give it)`` an integer ``[1, B, H]`` (never float: ``vendor`` says what
    the vendor's tools do with one). Returns ``(B, T, H, batch_first)``."""
    x, wi, wh, bi, bh = (c.info(i) for i in range(5))
    c.dtype(x, ["int8"], "input")
    c.rank(x, [3], "input")
    for info, role in ((wi, "w_ih"), (wh, "w_hh")):
        c.dtype(info, ["int8"], role)
        c.rank(info, [2], role)
    for info, role in ((bi, "b_ih"), (bh, "b_hh")):
        c.dtype(info, ["int32"], role)
    h = wh.shape[1]
    bf = bool(int(c.attr("batch_first", 0)))
    b, t, d = (x.shape[0], x.shape[1], x.shape[2]) if bf else (x.shape[1], x.shape[0], x.shape[2])
    g = len(gates)
    if wi.shape != (g * h, d) or wh.shape != (g * h, h) or bi.shape != (g * h,) or bh.shape != (g * h,):
        raise c.fail("weights do not fit the input and hidden sizes",
                     {"rule": f"{op} w_ih [{g}H, D], w_hh [{g}H, H], b_ih and b_hh [{g}H] (gates {', '.join(gates)})",
                      "input": x.shape, "w_ih": wi.shape, "w_hh": wh.shape, "b_ih": bi.shape, "b_hh": bh.shape})
    for key, want in (("input_size", d), ("hidden_size", h)):
        got = c.attr(key)
        if got is not None and int(got) != want:
            raise c.fail(f"{key}={got} does not match the weights ({want})", {"rule": f"{op} {key} = {want}"})
    if len(c.node.inputs) > LENGTHS:
        ln = c.info(LENGTHS)
        c.dtype(ln, ["int64", "int32"], "lengths")
        if ln.shape != (b,):
            raise c.fail(f"lengths has shape {ln.shape}", {"rule": f"{op} lengths [B] = [{b}]"})
    for k, role, dt, holds, how in states:
        if len(c.node.inputs) <= k:
            continue
        info = c.info(k)
        if info.dtype in ("float32", "float64"):
            raise c.fail(f"{role} {info.name!r} is {info.dtype}",
                         {"rule": f"{op} {role} is the raw state: {dt} {holds}", "vendor": vendor},
                         f"give {role} as an {'integer' if len(states) > 1 else dt} tensor ({how}), or re-export "
                         "with lnn")
        c.dtype(info, [dt], role)
        if info.shape != (1, b, h):
            raise c.fail(f"{role} has shape {info.shape}", {"rule": f"{op} {role} [1, B, H] = [1, {b}, {h}]"})
    return b, t, h, bf


def _infer(c: InferContext) -> list[TensorInfo]:
    """y int8 ``[T, B, H]`` (``batch_first=0``) or ``[B, T, H]``, h_n int8 ``[1, B, H]``; both take the file's
    scales (``scale_o``, ``scale_h``). lengths ``[B]`` integers, h0 int8 ``[1, B, H]``."""
    b, t, h, bf = infer_recurrent(
        c, "GRUInt", ("r", "z", "n"), ((H0, "h0", "int8", "at the output exponent n_o", "quantized at scale_o"),),
        "linger writes a float h0 (GRUInt_Is8_Is64_If32), which no vendor toolchain packs")
    y = (b, t, h) if bf else (t, b, h)
    return [c.out("int8", y, None), c.out("int8", (1, b, h), None, index=1)]


def view_recurrent(graph: Graph, node: Node, attrs: dict[str, Any]) -> None:
    """What the rules of GRUInt / LSTMInt read besides the attributes: the batch, and which optional inputs
    (lengths, initial state) the node has."""
    shapes = known_shapes(graph, node.inputs[0])
    if shapes is not None and len(shapes[0]) == 3:
        attrs["batch"] = shapes[0][0 if node.attrs.get("batch_first", 0) else 1]
    attrs["lengths"] = len(node.inputs) > LENGTHS
    attrs["state_in"] = len(node.inputs) > H0


@rule("csk60xx.gru.batch", ops=(), bmax="gru.batch_max")
def check_batch(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """GRUInt runs a batch of at most {bmax} sequence (the kernel addresses x batch-major whatever batch_first
    says, and keeps one state)."""
    b, bmax = op.attrs.get("batch"), limits["gru.batch_max"]
    if b is None or b <= bmax:
        return None
    return Finding(actual=f"batch {b}", limit=f"batch <= {bmax}",
                   hint="run the sequences one at a time (export with a batch-1 example input)")


@rule("csk60xx.gru.direction", ops=(), severity="warning", fwd="gru.go_forward")
def check_direction(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """GRUInt with go_forward outside {fwd} (a bidirectional GRU's reverse node): lnn runs it in reverse; the
    vendor packer (tpacker 3.0.4) does not serialize the direction, so its package runs the node forward (lnn's
    thinker package writes it, and the vendor runtime then runs it in reverse)."""
    g, allowed = op.attrs.get("go_forward", 1), tuple(limits["gru.go_forward"])
    if g in allowed:
        return None
    return Finding(actual=f"go_forward {g}", limit=f"the vendor runtime runs go_forward in {allowed} only",
                   hint="for the vendor packer use a unidirectional GRU (bidirectional=False), or pack with lnn "
                        "(lnn pack --format thinker writes the direction); lnn's simulator runs the reverse node as "
                        "PyTorch does")


@rule("csk60xx.gru.vendor_state", ops=(), severity="warning")
def check_vendor_state(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """GRUInt with lengths or h0: lnn runs the first lengths[0] steps from h0; the vendor runtime reads neither (it
    starts from zeros and runs all T steps), and its packer knows no GRUInt with more than 5 inputs."""
    given = [k for k in ("lengths", "state_in") if op.attrs.get(k)]
    if not given:
        return None
    return Finding(actual=" and ".join("h0 given" if k == "state_in" else "lengths given" for k in given),
                   limit="the vendor runtime: zero initial state, all T steps",
                   hint="for the vendor runtime run whole sequences from a zero state (no h0, no packed lengths)")


def _alignment_rule(rule_id: str, which: str, a: tuple[str, int], b: tuple[str, int], names: str) -> Any:
    def check(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
        na = at(seq(op, f"{a[0]}_exponents"), a[1])
        nb = at(seq(op, f"{b[0]}_exponents"), b[1])
        q = limits["gru.gate_q"]
        if na is None or nb is None or na + nb >= q:
            return None
        return Finding(actual=f"{names} = {na} + {nb} = {na + nb}", limit=f"{names} >= {q}",
                       hint=f"give {which} a finer scale (a larger exponent): the chip brings the product to Q{q} "
                            "with a right shift only, and does no scaling at all for a left one")

    check.__doc__ = f"GRUInt {names} must be at least {{q}}: the Q11 alignment of {which} only shifts right."
    return rule(rule_id, ops=(), q="gru.gate_q")(check)


check_in_alignment = _alignment_rule("csk60xx.gru.in_alignment", "the input or w_ih", ("input", 0), ("input", 1),
                                     "n_i + n_iw")
check_hidden_alignment = _alignment_rule("csk60xx.gru.hidden_alignment", "w_hh", ("output", 0), ("input", 2),
                                         "n_o + n_hw")


@rule("csk60xx.gru.out_exponent", ops=(), eout="gru.out_exponent")
def check_out_exponent(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """GRUInt output (and state: h_n, h0) exponent must be {eout}: the kernel reads the state as Q8, so any other
    exponent mis-scales the hidden feedback."""
    outs, want = seq(op, "output_exponents"), limits["gru.out_exponent"]
    h0 = at(seq(op, "input_exponents"), H0) if op.attrs.get("state_in") else None
    found = [n for n in (at(outs, 0), at(outs, 1), h0) if n is not None and n != want]
    if not found:
        return None
    return Finding(actual=f"n_o {at(outs, 0)}, n_h {at(outs, 1)}" + (f", h0 {h0}" if h0 is not None else ""),
                   limit=f"n_o = n_h = {want}" + (" = h0" if h0 is not None else ""),
                   hint=f"write scale_o = scale_h = {2.0 ** want:g} (|h| < 0.5): the chip's state is Q{want}")


_DTYPE = dtype_rule("csk60xx.gru.dtype", "GRUInt", (("int8",), ("int8",), ("int8",), ("int32",), ("int32",)),
                    ("int8",))


def _kernel_workspace(graph: Graph, node: Node) -> int:
    """The kernel's scratch: gi and gh, 3H int32 each (24H bytes, spec 2.2.5 measured; tpacker declares 36H)."""
    shapes = known_shapes(graph, node.inputs[2])
    return 24 * shapes[0][1] if shapes is not None and len(shapes[0]) == 2 else 0


def _workspace(graph: Graph, node: Node) -> list[tuple[Any, str, bool]]:
    return engine_operands(graph, node, whole=(0, "out"))


def _attrs(node: Node, graph: Graph) -> list[int]:
    """The op record's attribute: 1 for a reverse node (go_forward = 0)."""
    return [0 if int(node.attrs.get("go_forward", 1)) else 1]


# -- thinker package --------------------------------------------------------------------------------------------------

#: the matmuls' fixed split (``gru_luna_inner``) and the NPU's right-matrix buffer
_THINKER_SPLIT, _NPU_RIGHT_BYTES = 4, 32768


def _thinker_attrs(node: Node, graph: Graph) -> bytes:
    d, h = graph.tensors[node.inputs[1]].shape[1], graph.tensors[node.inputs[2]].shape[1]
    direction = 0 if int(node.attrs.get("go_forward", 1)) else 1
    return struct.pack("<HHHBB", direction, h, d, int(node.attrs.get("batch_first", 0)), 0)


def _thinker_check(node: Node, graph: Graph) -> list[Problem]:
    out = []
    x = graph.tensors[node.inputs[0]].shape
    steps = x[1] if int(node.attrs.get("batch_first", 0)) else x[0]
    if len(node.inputs) > H0:
        out.append(Problem("csk60xx.thinker.gru_state", "the runtime's GRUInt reads no initial state (it starts from "
                           "zeros)", "no h0", "h0", "run the GRU from a zero state (pack for lnn's simulator to carry "
                           "a state: lnn run --state-in)"))
    if len(node.inputs) > LENGTHS:
        lengths = graph.initializers.get(node.inputs[LENGTHS])
        value = None if lengths is None else int(np.asarray(lengths).reshape(-1)[0])
        if value != steps:
            out.append(Problem("csk60xx.thinker.gru_lengths", "the runtime's GRUInt reads no lengths (it runs all T "
                               "steps)", f"a constant [{steps}]", "computed" if lengths is None else f"[{value}]",
                               "run the GRU over the whole sequence (trim the input instead of passing lengths)"))
    h3 = graph.tensors[node.inputs[1]].shape[0]
    block = -(-h3 // _THINKER_SPLIT)
    for idx, role in ((1, "w_ih"), (2, "w_hh")):
        k = graph.tensors[node.inputs[idx]].shape[1]
        size = -(-k // 8) * 8 * (-(-block // 4) * 4)
        if size > _NPU_RIGHT_BYTES:
            out.append(Problem("csk60xx.thinker.gru_split", f"a quarter of {role} (the kernel splits each matmul in "
                               "four, whatever the size) exceeds the NPU's 32 KB right-matrix buffer",
                               _NPU_RIGHT_BYTES, size, "use a smaller hidden or input size"))
    return out


def _thinker_read(d: DecodedOp) -> tuple[dict[str, Any], dict[int, Any]]:
    direction, h, size, layout, _ = struct.unpack_from("<HHHBB", d.attrs)
    attrs = {"input_size": size, "hidden_size": h, "batch_first": layout, "go_forward": 1 - direction,
             "num_layers": 1}
    return attrs, {1: restore_linear(d.inputs[1].data), 2: restore_linear(d.inputs[2].data)}


_THINKER_GRU = ThinkerLowering("GRUInt", attrs=_thinker_attrs, relayout={1: relayout_linear, 2: relayout_linear},
                               workspace=lambda n, g: _kernel_workspace(g, n), check=_thinker_check,
                               read=_thinker_read, workspace_repeats=4)


#: the attributes and scales of linger's GRUInt and LSTMInt nodes (one layer, one direction each)
RECURRENT_ATTRS = {
    "input_size": AttrSpec("int", minimum=1),
    "hidden_size": AttrSpec("int", minimum=1),
    "num_layers": AttrSpec("int", default=1, choices=(1,)),
    "batch_first": AttrSpec("int", default=0, choices=(0, 1)),
    "dropout": AttrSpec("float", default=0.0, choices=(0.0,)),
    "go_forward": AttrSpec("int", default=1, choices=(0, 1)),
    "data_bits": AttrSpec("int", default=8, choices=(8,)),
    "parameter_bits": AttrSpec("int", default=8, choices=(8,)),
    "o_bits": AttrSpec("int", default=8, choices=(8,)),
}
RECURRENT_SCALES = {"scale_i": ("in", 0), "scale_iw": ("in", 1), "scale_hw": ("in", 2), "scale_o": ("out", 0),
                    "scale_h": ("out", 1)}

OPS = (
    OpDef("GRUInt", "thinker", (5, 7), _infer, outputs=2, attrs={**RECURRENT_ATTRS, **PLATFORM},
          scales=dict(RECURRENT_SCALES),
          params=(Params(1, 3), Params(2, 4, x=("out", 0))), index_inputs=(LENGTHS,),
          input_exponents={H0: "scale_o"}, file_op_types=("GRUInt_Is8_Is64", "GRUInt_Is8_Is64_If32"), read=_read,
          write=_write, rules=(check_direction,), torch_ops=("builtin.GRU",),
          pack_rules=(check_batch, check_vendor_state, check_in_alignment, check_hidden_alignment, check_out_exponent,
                      _DTYPE),
          view=view_recurrent, workspace=_workspace, kernel_workspace=_kernel_workspace,
          lowerings={"lnn": Lowering(32, None, _attrs, "gru.c"), "thinker": _THINKER_GRU}),
)
