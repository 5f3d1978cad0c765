"""Recurrent layers: ``nn.GRU`` and ``nn.LSTM`` (spec/int8-seq-ops.md 2.1, 2.2) as the chip's ``GRUInt`` /
``LSTMInt``, one node per layer and direction.

The chip runs an RNN with fixed exponents: the input ``x`` int8 at ``n_i`` (its producer's), the weights int8 at
``n_iw`` / ``n_hw`` (the floor rule on the final weights: never clipped, spec 6.2), the biases int32 at
``n_i + n_iw`` / ``n_o + n_hw``, and the hidden state, which is also the output, int8 at ``n_o``: 8 for the GRU
(its kernel reads the state as Q8, spec 2.2.4), 7 for the LSTM (``|h| < 1``: Q7 holds every value the kernel
can produce, ``o * tanh`` being a Q14 product of two Q7 gates). Both projections are aligned to Q11::

    gi = SAT_32(SHR(SAT_32(SAT_32(x_t . W_ih^T) + b_ih), n_i + n_iw - 11))
    gh = SAT_32(SHR(SAT_32(SAT_32(h . W_hh^T) + b_hh), n_o + n_hw - 11))

GRU (spec 2.2.4; gates r, z, n)::

    r, z = sig8(SAT_16(gi + gh));  n = tanh8(SAT_16(gi_n + SAT_32(SHR(r * gh_n, 7))))
    h = SAT_8(SHR(SAT_16(z * SAT_8(SHR(h, 1))) + SAT_16((128 - z) * n), 14 - n_o))

LSTM (spec 2.1.4; gates i, f, g, o; the cell int16 Q7 with saturation)::

    i, f, o = sig8(G), g = tanh8(G) with G = SAT_16(gi + gh);  p = f * c + i * g   (Q14)
    c = SAT_16(SHR(p, 7));  h = SAT_8(SHR(o * tanh8(SAT_16(SHR(p, 3))), 14 - n_o))

``sig8`` / ``tanh8`` are the chip's 16-segment functions (:mod:`.pwl`, read here as two 65536-entry tables of
the int16 Q11 input). The QAT module computes exactly these integers in training and in eval: linger trains
with a fresh scale at every step and exports other, fixed ones (spec 2.1.2), lnn trains with the scales it
exports. The input projection runs once over all time steps; the loop over time holds the hidden projection and
the gates only. The gradient is the float RNN's at the quantized point (the chip's gate values, inputs and
weights; straight-through through every rounding, zero where the state saturates), written out as
back-propagation through time in one autograd node per layer and direction.

``num_layers > 1`` is a stack of single-layer nodes (layer ``k + 1`` reads layer ``k``'s output at ``n_o``);
``bidirectional=True`` is two nodes per layer (``go_forward`` 1 and 0, the reverse one with its own weights,
both at the same exponents) joined by an ``iqCat`` on the feature axis, as linger writes it (spec 2.1.3). A
bidirectional GRU and a GRU with an initial state export and run in lnn's simulator; the backend's pack rules warn,
naming the node, what the vendor runtime would do instead (run the reverse node forward, not read h0). Outside the
chip's contract (a GRU with ``n_i + n_iw < 11`` or ``n_o + n_hw < 11``, where the chip's Luna shifts do no
scaling at all, spec 1.1) the module computes the exact left shift; the backend's pack rules refuse such a GRU at
export, naming the module.

Eval-mode streaming: ``qrnn(x, hx)`` takes the state (``h0`` ``[L * dirs, B, H]`` on the ``2**-n_o`` grid, for the
LSTM ``(h0, c0)`` with ``c0`` on the ``2**-7`` grid; None: zeros) and returns ``(y, h_n)`` / ``(y, (h_n, c_n))``;
feeding a sequence in chunks with the state carried gives the integers of the whole sequence at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from lnn_core.errors import ExportError, LnnError
from lnn_core.ops import OpFamily
from lnn_core.quant.observers import FixedExponent
from lnn_core.quant.packed import call_arguments, pack_padded, pad_packed
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.quantizers import ActQuantizer
from lnn_core.quant.rewrite import BuildContext, Built

from .pwl import activation_int16

__all__ = ["QRNN", "FAMILIES", "WRITERS", "GATE_Q", "STATE_EXPONENT", "CELL_EXPONENT"]

#: the gates' fixed-point format: both projections are aligned to Q11 before the activations
GATE_Q = 11
#: gate activations and their product format: Q7
_Q7 = 7

# the chip's sig8 / tanh8 on every int16 Q11 input (index t + 32768), from the one copy of the tables (.pwl)
_ALL_INT16 = np.arange(-32768, 32768, dtype=np.int64)
_SIG8 = torch.from_numpy(activation_int16("sigmoid", _ALL_INT16, GATE_Q).astype(np.int64))
_TANH8 = torch.from_numpy(activation_int16("tanh", _ALL_INT16, GATE_Q).astype(np.int64))


def _sat(v: torch.Tensor, bits: int) -> torch.Tensor:
    hi = (1 << (bits - 1)) - 1
    return v.clamp(-hi - 1, hi)


def _shr(v: torch.Tensor, s: int) -> torch.Tensor:
    """``SHR(v, s)`` half up on int64; ``s < 0`` is the exact left shift (outside the chip's contract)."""
    if s > 0:
        return (v + (1 << (s - 1))) >> s
    return v << -s if s < 0 else v


def _exact_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of int8-range integers (int64 tensors), exactly: in float32 while every partial sum stays below
    2^24 (K < 1024), else in float64."""
    dtype = torch.float32 if a.shape[-1] < 1024 else torch.float64
    return (a.to(dtype) @ b.to(dtype)).to(torch.int64)


def _align(acc: torch.Tensor, bias: torch.Tensor, s: int) -> torch.Tensor:
    """``SAT_32(SHR(SAT_32(SAT_32(acc) + b), s))``: a projection brought to Q11."""
    return _sat(_shr(_sat(_sat(acc, 32) + bias, 32), s), 32)




def _steps(kind: str, gi: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, h: torch.Tensor,
           c: torch.Tensor | None, *, s_h: int, n_o: int, reverse: bool = False, keep: bool = False,
           lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                         dict[str, torch.Tensor]]:
    """The chip's GRU or LSTM recurrence on integers (int64 tensors), batch first.

    :param gi: the aligned input projection, Q11, ``[B, T, G * H]`` (G = 3 gates r, z, n; 4 gates i, f, g, o).
    :param w_hh: ``W_hh`` int8 integers ``[G * H, H]``; ``b_hh`` int32 integers ``[G * H]``.
    :param h: the initial state ``[B, H]`` at ``n_o``; ``c``: the LSTM's initial cell, int16 Q7 (None for a GRU).
    :param s_h: ``n_o + n_hw - 11``.
    :param reverse: run from the last step to the first (the outputs stay at their time positions).
    :param keep: also return what the backward needs, each ``[B, T, H]``.
    :param lengths: ``[B]`` steps of each sequence (None: all T): sequence ``b`` runs steps ``0 .. L_b - 1``
        (backwards from ``L_b - 1`` with ``reverse``), as the chip's lengths input does for one sequence; its
        state stays as it is on the other steps and its ``y`` rows there are zeros.
    :return: ``(y [B, T, H], h_n [B, H], c_n [B, H] or None, saved)``.
    """
    t_len, hid = gi.shape[1], w_hh.shape[1]
    sig, tanh = _SIG8.to(gi.device), _TANH8.to(gi.device)
    w_t = w_hh.t().contiguous()
    s_o = 2 * _Q7 - n_o
    names = (("r", "z", "n", "ghn", "h", "ok") if kind == "GRU" else ("i", "f", "g", "o", "tau", "c", "h", "ok")) \
        + (("act",) if lengths is not None else ())
    ys: list[Any] = [None] * t_len
    saved: dict[str, list[Any]] = {k: [None] * t_len for k in names} if keep else {}
    for t in (range(t_len - 1, -1, -1) if reverse else range(t_len)):
        g_in = gi[:, t]
        gh = _align(_exact_matmul(h, w_t), b_hh, s_h)
        if kind == "GRU":
            rz = sig[_sat(g_in[:, :2 * hid] + gh[:, :2 * hid], 16) + 32768]
            r, z = rz[:, :hid], rz[:, hid:]
            ghn = gh[:, 2 * hid:]
            n = tanh[_sat(g_in[:, 2 * hid:] + _sat(_shr(r * ghn, _Q7), 32), 16) + 32768]
            pre = _shr(_sat(z * _sat(_shr(h, 1), 8), 16) + _sat((128 - z) * n, 16), s_o)
            step = {"r": r, "z": z, "n": n, "ghn": ghn, "h": h}
        else:
            idx = _sat(g_in + gh, 16) + 32768
            sg = sig[idx]
            i, f, o = sg[:, :hid], sg[:, hid:2 * hid], sg[:, 3 * hid:]
            g = tanh[idx[:, 2 * hid:3 * hid]]
            p = f * c + i * g
            tau = tanh[_sat(_shr(p, 3), 16) + 32768]
            pre = _shr(o * tau, s_o)
            step = {"i": i, "f": f, "g": g, "o": o, "tau": tau, "c": c, "h": h}
            c_new = _sat(_shr(p, _Q7), 16)
            c = c_new if lengths is None else torch.where((t < lengths)[:, None], c_new, c)
        act = None if lengths is None else (t < lengths)[:, None]
        if keep:
            step["ok"] = pre.abs() <= 127
            if act is not None:
                step["ok"] = step["ok"] & act
                step["act"] = act.expand_as(pre)
            for key in names:
                saved[key][t] = step[key]
        h_new = _sat(pre, 8)
        if act is None:
            h = ys[t] = h_new
        else:
            h = torch.where(act, h_new, h)
            ys[t] = torch.where(act, h_new, torch.zeros_like(h_new))
    out = {k: torch.stack(v, 1) for k, v in saved.items()}
    return torch.stack(ys, 1), h, c, out


def _to_int(v: torch.Tensor, n: int) -> torch.Tensor:
    return torch.floor(v.detach().double() * 2.0**n + 0.5).to(torch.int64)


class _RNNFunction(torch.autograd.Function):
    """One layer and direction of a GRU / LSTM: forward = the chip's integers, backward = the float RNN's gradient
    at the quantized point (back-propagation through time). Real-valued tensors in and out, batch first."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,  # type: ignore[override]
                b_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor | None, kind: str,
                exps: tuple[int, int, int, int], reverse: bool, lengths: torch.Tensor | None = None):
        n_i, n_iw, n_hw, n_o = exps
        xq, wi, wh = _to_int(x, n_i), _to_int(w_ih, n_iw), _to_int(w_hh, n_hw)
        bi, bh = _to_int(b_ih, n_i + n_iw), _to_int(b_hh, n_o + n_hw)
        hq = _to_int(h0, n_o).clamp_(-128, 127)
        cq = _to_int(c0, _Q7).clamp_(-32768, 32767) if c0 is not None else None
        gi = _align(_exact_matmul(xq, wi.t()), bi, n_i + n_iw - GATE_Q)
        keep = any(ctx.needs_input_grad[:7])
        y, h_n, c_n, saved = _steps(kind, gi, wh, bh, hq, cq, s_h=n_o + n_hw - GATE_Q, n_o=n_o, reverse=reverse,
                                    keep=keep, lengths=lengths)
        if keep:
            ctx.names = tuple(saved)
            ctx.save_for_backward(x, w_ih, w_hh, *(v.to(x.dtype) for v in saved.values()))
            ctx.kind, ctx.n_o, ctx.reverse = kind, n_o, reverse
        scale = 2.0**-n_o
        c_out = c_n.to(x.dtype) * 2.0**-_Q7 if c_n is not None else torch.zeros((), dtype=x.dtype, device=x.device)
        return y.to(x.dtype) * scale, h_n.to(x.dtype) * scale, c_out

    @staticmethod
    def backward(ctx, dy: torch.Tensor, dh_n: torch.Tensor, dc_n: torch.Tensor):  # type: ignore[override]
        x, w_ih, w_hh, *rest = ctx.saved_tensors
        sv = dict(zip(ctx.names, rest))
        q7 = 2.0**-_Q7
        hp = sv["h"] * 2.0**-ctx.n_o
        ok = sv["ok"]
        act = sv["act"] > 0 if "act" in sv else None  # packed: the steps each sequence runs
        t_len, hid = x.shape[1], w_hh.shape[1]
        gates = 3 if ctx.kind == "GRU" else 4
        dgi = torch.empty(dy.shape[0], t_len, gates * hid, dtype=dy.dtype, device=dy.device)
        dh = dh_n if dh_n is not None else torch.zeros_like(dy[:, 0])
        order = range(t_len) if ctx.reverse else range(t_len - 1, -1, -1)
        if ctx.kind == "GRU":
            r, z, n, ghn = sv["r"] * q7, sv["z"] * q7, sv["n"] * q7, sv["ghn"] * 2.0**-GATE_Q
            dgh = torch.empty_like(dgi)
            for t in order:
                g = (dy[:, t] + dh) * ok[:, t]
                zt, nt, rt = z[:, t], n[:, t], r[:, t]
                dan = g * (1.0 - zt) * (1.0 - nt * nt)
                dar = dan * ghn[:, t] * rt * (1.0 - rt)
                daz = g * (hp[:, t] - nt) * zt * (1.0 - zt)
                dgi[:, t] = torch.cat((dar, daz, dan), 1)
                dgh[:, t] = torch.cat((dar, daz, dan * rt), 1)
                dh_prev = g * zt + dgh[:, t] @ w_hh
                dh = dh_prev if act is None else torch.where(act[:, t], dh_prev, dh)  # idle: h passes on
            dc0 = None
        else:
            i, f, g_, o, tau, cp = (sv[k] * q7 for k in ("i", "f", "g", "o", "tau", "c"))
            dc = dc_n if (dc_n is not None and dc_n.dim() > 0) else torch.zeros_like(dy[:, 0])
            for t in order:
                gh_t = (dy[:, t] + dh) * ok[:, t]
                it, ft, gt, ot, taut = i[:, t], f[:, t], g_[:, t], o[:, t], tau[:, t]
                dct = dc + gh_t * ot * (1.0 - taut * taut)
                if act is not None:
                    dct = dct * act[:, t]
                dgi[:, t] = torch.cat((dct * gt * it * (1.0 - it), dct * cp[:, t] * ft * (1.0 - ft),
                                       dct * it * (1.0 - gt * gt), gh_t * taut * ot * (1.0 - ot)), 1)
                if act is None:
                    dc, dh = dct * ft, dgi[:, t] @ w_hh
                else:  # a step the sequence does not run passes h and c on
                    dc = torch.where(act[:, t], dct * ft, dc)
                    dh = torch.where(act[:, t], dgi[:, t] @ w_hh, dh)
            dgh, dc0 = dgi, dc
        flat_i, flat_h = dgi.reshape(-1, gates * hid), dgh.reshape(-1, gates * hid)
        dx = dgi @ w_ih
        dw_ih = flat_i.t() @ x.reshape(-1, x.shape[-1])
        dw_hh = flat_h.t() @ hp.reshape(-1, hid)
        return dx, dw_ih, dw_hh, flat_i.sum(0), flat_h.sum(0), dh, dc0, None, None, None, None


#: the exponent of the hidden state (and output) on the chip, by kind
STATE_EXPONENT = {"GRU": 8, "LSTM": 7}
#: the LSTM cell's format on the chip: int16 Q7
CELL_EXPONENT = _Q7


class QRNN(QModule):
    """``nn.GRU`` / ``nn.LSTM`` (``batch_first`` either way, any ``num_layers``, either direction) on the chip's
    integers: one ``GRUInt`` / ``LSTMInt`` per layer and direction. Returns what the float module returns:
    ``(y, h_n)`` or ``(y, (h_n, c_n))``; ``y`` and ``h_n`` at ``2**-n_o`` (:data:`STATE_EXPONENT`), ``c_n`` at
    ``2**-7`` (int16)."""

    def __init__(self, float_rnn: nn.RNNBase, *, recipe: Any, weight_bits: int, stage: str) -> None:
        super().__init__(recipe, act_bits=8, weight_bits=weight_bits, stage=stage, clamps=())
        self.kind = float_rnn.mode
        self.op_id = f"builtin.{self.kind}"  # type: ignore[misc]
        self._float = (float_rnn,)  # a plain tuple: the float module runs the constrain stage, adds no keys
        self.weight_names = tuple(float_rnn._flat_weights_names)
        for name in self.weight_names:  # the same parameters at the same names: same state_dict keys
            setattr(self, name, getattr(float_rnn, name))
        self.input_size, self.hidden_size = float_rnn.input_size, float_rnn.hidden_size
        self.num_layers, self.bidirectional = float_rnn.num_layers, bool(float_rnn.bidirectional)
        self.batch_first, self.bias = bool(float_rnn.batch_first), bool(float_rnn.bias)
        self.dropout, self.proj_size = float(float_rnn.dropout), int(getattr(float_rnn, "proj_size", 0))
        self.has_weight = True
        self.has_state_input = False  # set by the builder when the traced call passes hx
        #: set by the builder when the input is a packed sequence: ``{"batch_first": the packed tensor's layout,
        #: "enforce_sorted": ...}``; the module then reads ``(x, [h0, [c0]], lengths)`` and returns ``y`` padded
        #: with zero rows in ``x``'s layout
        self.packed: dict[str, bool] | None = None
        self.path = ""
        n_s = STATE_EXPONENT[self.kind]
        qs = [ActQuantizer(8, recipe, observer=FixedExponent(n_s)) for _ in range(2)]
        if self.kind == "LSTM":
            qs.append(ActQuantizer(16, recipe, observer=FixedExponent(CELL_EXPONENT)))
            self.out_tree = (0, (1, 2))
        self.out_qs = nn.ModuleList(qs)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_exponent(self) -> int:
        return STATE_EXPONENT[self.kind]

    def extra_repr(self) -> str:
        return (f"{self.kind}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, batch_first={self.batch_first}")

    def pairs(self, layer: int, direction: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        sfx = f"l{layer}" + ("_reverse" if direction else "")
        return [(getattr(self, f"weight_ih_{sfx}"), getattr(self, f"bias_ih_{sfx}")),
                (getattr(self, f"weight_hh_{sfx}"), getattr(self, f"bias_hh_{sfx}"))]

    def layer_exponents(self) -> list[int]:
        """The input exponent of each layer: the producer's for layer 0, ``n_o`` for the layers above."""
        return [self.in_exponent(0)] + [self.state_exponent] * (self.num_layers - 1)

    @property
    def layout_batch_first(self) -> bool:
        """The layout of ``x`` and ``y``: the packed tensor's for a packed input, else the module's."""
        return self.packed["batch_first"] if self.packed is not None else self.batch_first

    def forward(self, x: torch.Tensor, *args: Any) -> Any:
        lengths = None
        if self.packed is not None and args and isinstance(args[-1], torch.Tensor) \
                and not args[-1].is_floating_point():  # the traced graph passes the lengths last
            lengths, args = args[-1], args[:-1]
            lengths = self._check_lengths(x, lengths)
        hx, cx = (tuple(args) + (None, None))[:2]
        if cx is not None:  # the traced graph passes an LSTM's (h0, c0) as two inputs
            hx = (hx, cx)
        if not self.quantizing:
            y, state = self._float_forward(x, hx, lengths)
            if self.kind == "LSTM":
                return self.out_qs[0](y), (self.out_qs[1](state[0]), self.out_qs[2](state[1]))
            return self.out_qs[0](y), self.out_qs[1](state)
        n_o = self.state_exponent
        bf = self.layout_batch_first
        xb = x if bf else x.transpose(0, 1)
        steps = None if lengths is None else lengths.to(device=x.device, dtype=torch.int64)
        batch, hid = xb.shape[0], self.hidden_size
        h0, c0 = (hx if self.kind == "LSTM" else (hx, None)) if hx is not None else (None, None)
        zeros = torch.zeros(batch, hid, dtype=x.dtype, device=x.device)
        if self.training:
            for q in self.out_qs:  # the fixed exponents, recorded for this step's consumers
                q.observe_bounds(None)
        inp, hs, cs = xb, [], []
        for layer, n_in in enumerate(self.layer_exponents()):
            outs = []
            for d in range(self.directions):
                k = layer * self.directions + d
                (w_ih, b_ih, n_iw), (w_hh, b_hh, n_hw) = self._weights(layer, d, n_in)
                h_k = h0[k] if h0 is not None else zeros
                c_k = (c0[k] if c0 is not None else zeros) if self.kind == "LSTM" else None
                y, h_n, c_n = _RNNFunction.apply(inp, w_ih, w_hh, b_ih, b_hh, h_k, c_k, self.kind,
                                                 (n_in, n_iw, n_hw, n_o), bool(d), steps)
                outs.append(y)
                hs.append(h_n)
                cs.append(c_n)
            inp = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
        y = inp if bf else inp.transpose(0, 1)
        h_n = torch.stack(hs, 0)
        return (y, (h_n, torch.stack(cs, 0))) if self.kind == "LSTM" else (y, h_n)

    def _float_forward(self, x: torch.Tensor, hx: Any, lengths: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        """The float module (stage 1); a packed input is packed, run and padded back to ``x``'s length."""
        if lengths is None:
            return self._float[0](x, hx)
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        bf = self.layout_batch_first
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=bf, enforce_sorted=self.packed["enforce_sorted"])
        y, state = self._float[0](packed, hx)
        return pad_packed_sequence(y, batch_first=bf, total_length=x.shape[1 if bf else 0])[0], state

    def _check_lengths(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The lengths of a packed input as ``pack_padded_sequence`` accepts them: ``[B]``, each ``1 .. T``,
        decreasing when ``enforce_sorted``; else an error naming the module."""
        bf = self.layout_batch_first
        batch, t_len = (x.shape[0], x.shape[1]) if bf else (x.shape[1], x.shape[0])
        flat = lengths.detach().cpu().to(torch.int64)
        problem = None
        if tuple(flat.shape) != (batch,):
            problem = ("lengths shape", f"[{batch}] (one per sequence of the batch)", list(flat.shape))
        elif len(flat) and (int(flat.min()) < 1 or int(flat.max()) > t_len):
            problem = ("lengths", f"1 .. {t_len} (the padded length T)", flat.tolist())
        elif self.packed["enforce_sorted"] and len(flat) > 1 and bool((flat[1:] > flat[:-1]).any()):
            problem = ("lengths order", "decreasing (enforce_sorted=True)", flat.tolist())
        if problem is not None:
            what, limit, actual = problem
            raise LnnError(
                f"{self.kind} {self.path!r}: the packed sequence's {what} does not fit its padded input "
                f"{list(x.shape)}", {"rule": f"{what}: {limit}", "limit": limit, "actual": actual},
                "pass pack_padded_sequence one length per sequence, none longer than the padded tensor (or "
                "enforce_sorted=False for lengths in any order; lnn's command line: --input-fill NAME=T)",
                module=self.path, option=what, limit=limit, actual=actual)
        return flat

    def _weights(self, layer: int, d: int, n_in: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """Layer ``layer``, direction ``d``: ``(w_ih, b_ih, n_iw), (w_hh, b_hh, n_hw)`` as real values on their
        grids (fake-quantized with straight-through gradients in training)."""
        pairs, n_xs = self.pairs(layer, d), [n_in, self.state_exponent]
        if self.training:
            return self.fake_quant_pairs(pairs, n_xs)
        with torch.no_grad():
            return [(w * 2.0**-n_w, b * 2.0 ** -(n_x + n_w), n_w)
                    for (w, b, n_w), n_x in zip(self.quantize_pairs(pairs, n_xs), n_xs)]

    def integer_params(self) -> list[dict[str, Any]]:
        """Per layer and direction (layer-major): ``w_ih``, ``w_hh`` (int8), ``b_ih``, ``b_hh`` (int32) as int64
        tensors, the exponents ``n_i``, ``n_iw``, ``n_hw``, ``n_o``, and ``go_forward``."""
        out = []
        n_o = self.state_exponent
        for layer, n_in in enumerate(self.layer_exponents()):
            for d in range(self.directions):
                pairs = [(w.detach(), b.detach()) for w, b in self.pairs(layer, d)]
                with torch.no_grad():
                    (w_ih, b_ih, n_iw), (w_hh, b_hh, n_hw) = self.quantize_pairs(pairs, [n_in, n_o])
                out.append({"w_ih": w_ih.to(torch.int64), "b_ih": b_ih.to(torch.int64),
                            "w_hh": w_hh.to(torch.int64), "b_hh": b_hh.to(torch.int64), "n_i": n_in,
                            "n_iw": n_iw, "n_hw": n_hw, "n_o": n_o, "go_forward": 1 - d, "layer": layer})
        return out

    def op_attrs(self) -> dict[str, Any]:
        attrs = super().op_attrs()
        attrs.update(input_size=self.input_size, hidden_size=self.hidden_size, batch_first=int(self.batch_first),
                     num_layers=self.num_layers, bidirectional=int(self.bidirectional),
                     go_forward=0 if self.bidirectional else 1, state_in=int(self.has_state_input),
                     dropout=self.dropout, proj_size=self.proj_size, bias=int(self.bias))
        return attrs


def _build(ctx: BuildContext) -> Built | None:
    m = ctx.module
    if m is None:
        return None
    _check_module(ctx.path, m)
    args = list(ctx.node.args[1:]) + [v for k, v in ctx.node.kwargs.items() if k == "hx"]
    q = QRNN(m, recipe=ctx.recipe, weight_bits=ctx.layer.weight_bits, stage=ctx.stage)
    q.path = ctx.path
    state = [a for a in args if a is not None]
    q.has_state_input = bool(state)
    x, params = ctx.node.args[0], []
    if isinstance(x, fx.Node) and x.op == "call_function" and x.target is pack_padded:  # a packed sequence
        kw = call_arguments(x)
        q.packed = {"batch_first": bool(kw.get("batch_first", False)),
                    "enforce_sorted": bool(kw.get("enforce_sorted", True))}
        x, params = kw["input"], [_lengths_source(kw["lengths"])]
    inputs = [x]
    if state:
        hx = state[0]
        inputs += list(hx) if isinstance(hx, (tuple, list)) else [hx]
    return Built(q, inputs, params)


_LENGTHS_CASTS = frozenset({"cpu", "to", "long", "int", "detach", "contiguous"})


def _lengths_source(node: Any) -> Any:
    """The lengths tensor before the conversions users write for packing (``lengths.cpu()``, ``.long()``): the
    module reads integers on any device and type."""
    while isinstance(node, fx.Node) and node.op == "call_method" and node.target in _LENGTHS_CASTS:
        node = node.args[0]
    return node


def _check_module(path: str, m: nn.RNNBase) -> None:
    """What the QAT module does not compute, whatever the target (the chip's own limits are the backend's rules).

    ``dropout`` between stacked layers is refused rather than applied or skipped: applied, it would scale layer
    ``k``'s int8 output by ``1 / (1 - p)``, off the grid that layer ``k + 1`` reads on the chip; skipped, training
    would silently differ from what the float module asks for. Setting ``rnn.dropout = 0`` before ``lnn.init``
    keeps the float model's training unchanged and states the choice."""
    kind = m.mode
    problems = []
    if getattr(m, "proj_size", 0):
        problems.append(("proj_size", 0, m.proj_size, "the chip's LSTMInt has no projection: its state is the "
                         "hidden output (spec int8-seq-ops 2.1.1)", "drop proj_size and add an nn.Linear after the "
                         "LSTM"))
    if m.dropout and m.num_layers > 1:
        problems.append(("dropout", 0, m.dropout, "dropout between stacked layers would move a layer's int8 output "
                         "off the grid the next layer reads", f"set model.{path}.dropout = 0 before lnn.init (or "
                         f"stack single-layer {kind} modules)"))
    if problems:
        key, limit, actual, rule, hint = problems[0]
        raise LnnError(
            f"{kind} {path!r}: {key}={actual} is not supported",
            {"rule": rule, "limit": f"{key} {limit}", "actual": f"{key} {actual}",
             "also": "; ".join(f"{k}={a}" for k, _, a, _, _ in problems[1:]) or None},
            hint, module=path, option=key, limit=limit, actual=actual)


def _build_cell(ctx: BuildContext) -> Built | None:
    """``nn.GRUCell`` / ``nn.LSTMCell``: refused, naming the module (a cell stepped in a Python loop has no chip op;
    the whole-sequence module has)."""
    name = type(ctx.module).__name__ if ctx.module is not None else "RNN cell"
    whole = name[:-4]
    raise LnnError(
        f"{name} {ctx.path!r}: a recurrent cell is not supported",
        {"rule": f"the chip runs a whole sequence per op ({whole}Int); a cell stepped in a Python loop has no "
                 "quantized form", "limit": f"nn.{whole} over the sequence", "actual": f"nn.{name}"},
        f"replace the loop by nn.{whole}(input_size, hidden_size, batch_first=True) over the whole sequence (its "
        f"weight_ih_l0 / weight_hh_l0 / bias_ih_l0 / bias_hh_l0 are the cell's weight_ih / weight_hh / bias_ih / "
        f"bias_hh), or keep the cell float with lnn.disable_quant(model.{ctx.path})",
        module=ctx.path, limit=f"nn.{whole}", actual=f"nn.{name}")


class QPadPacked(QModule):
    """``pad_packed_sequence`` after a packed quantized RNN, whose ``y`` is padded already (zero rows past each
    sequence's length, in the packed tensor's layout): the layout ``batch_first`` asks for and ``total_length``
    rows (None: the longest length), zeros added or dropped, the integers unchanged. Returns ``(y, lengths)``,
    as torch does; ``y`` keeps the RNN's exponent."""

    op_id = "builtin.PadPacked"  # type: ignore[misc]
    out_tree = (0, 1)

    def __init__(self, recipe: Any, *, stage: str, layout_in: bool, batch_first: bool, total_given: bool,
                 path: str) -> None:
        super().__init__(recipe, stage=stage, clamps=())
        self.layout_in, self.batch_first, self.total_given, self.path = layout_in, batch_first, total_given, path

    @property
    def out_qs(self) -> tuple[Any, ...]:  # y on the RNN's grid; the lengths are integers
        return (self.input_quantizers[0] if self.input_quantizers else None, None)

    def forward(self, y: torch.Tensor, lengths: torch.Tensor, total_length: Any = None) -> Any:
        if self.layout_in != self.batch_first:
            y = y.transpose(0, 1)
        axis = 1 if self.batch_first else 0
        lengths = lengths.detach().cpu().to(torch.int64)
        longest = int(lengths.max()) if lengths.numel() else 0
        rows = longest if total_length is None else int(total_length)
        if rows < longest:
            raise LnnError(f"pad_packed_sequence {self.path!r}: total_length={rows} is shorter than the longest "
                           f"sequence ({longest})", {"rule": "total_length >= max(lengths)", "limit": longest,
                                                     "actual": rows},
                           "pass total_length = the padded length T", node=self.path, limit=longest, actual=rows)
        have = y.shape[axis]
        if rows < have:
            y = y.narrow(axis, 0, rows)
        elif rows > have:
            shape = list(y.shape)
            shape[axis] = rows - have
            y = torch.cat((y, y.new_zeros(shape)), axis)
        return y, lengths

    def op_attrs(self) -> dict[str, Any]:
        attrs = super().op_attrs()
        attrs.update(batch_first=int(self.batch_first), total_length=int(self.total_given))
        return attrs


def _build_pad(ctx: BuildContext) -> Built | None:
    """``pad_packed_sequence(rnn_out, ...)``: the output ``y`` of a packed quantized RNN, padded as asked."""
    kw = call_arguments(ctx.node)
    src = kw["sequence"]
    rnn_node = src.args[0] if (isinstance(src, fx.Node) and src.op == "call_function" and len(src.args) == 2
                               and src.args[1] == 0 and isinstance(src.args[0], fx.Node)) else None
    rnn = (ctx.node.graph.owning_module.get_submodule(str(rnn_node.target))
           if rnn_node is not None and rnn_node.op == "call_module" else None)
    if not isinstance(rnn, QRNN) or rnn.packed is None:
        raise LnnError(
            f"pad_packed_sequence {ctx.path!r}: its input is not the output of a quantized GRU / LSTM on a packed "
            "sequence", {"rule": "pad_packed_sequence reads output 0 of an nn.GRU / nn.LSTM that read "
                                 "pack_padded_sequence's result", "actual": str(src)},
            "pad the RNN's output (y, _ = rnn(packed); pad_packed_sequence(y, ...)), or keep the packing, the RNN "
            "and the padding in one submodule kept float with lnn.disable_quant(model.<submodule>)",
            node=ctx.path, actual=str(src))
    if float(kw.get("padding_value", 0.0) or 0.0) != 0.0:
        value = kw["padding_value"]
        raise LnnError(
            f"pad_packed_sequence {ctx.path!r}: padding_value={value} is not supported",
            {"rule": "the chip's GRUInt / LSTMInt write zeros past each sequence's length", "limit": 0,
             "actual": value}, "pad with 0 (the default) and mask the padded rows downstream",
            node=ctx.path, limit=0, actual=value)
    total = kw.get("total_length")
    q = QPadPacked(ctx.recipe, stage=ctx.stage, layout_in=rnn.layout_batch_first,
                   batch_first=bool(kw.get("batch_first", False)), total_given=total is not None, path=ctx.path)
    lengths = rnn_node.args[-1]
    return Built(q, [src], [lengths] + ([total] if total is not None else []))


FAMILIES = [
    OpFamily(id="builtin.PadPacked", kind="compute", functions=(pad_packed,), build=_build_pad,
             description="pad_packed_sequence after a packed GRU / LSTM: layout and total_length of y (zero rows "
                         "past each length), the lengths passed on"),
    OpFamily(id="builtin.RNNCell", kind="compute", modules=(nn.GRUCell, nn.LSTMCell), build=_build_cell,
             description="nn.GRUCell / nn.LSTMCell: refused with a clear error (use nn.GRU / nn.LSTM)"),
    OpFamily(id="builtin.GRU", kind="compute", modules=(nn.GRU,), build=_build,
             description="GRU: GRUInt per layer, the chip's fixed scales (state Q8), sig8/tanh8 gates"),
    OpFamily(id="builtin.LSTM", kind="compute", modules=(nn.LSTM,), build=_build,
             description="LSTM: LSTMInt per layer and direction (+ iqCat), state Q7, cell int16 Q7"),
]


# -- IR ----------------------------------------------------------------------------------------------


def write_rnn(ctx: Any) -> list[str]:
    """One ``GRUInt`` / ``LSTMInt`` per layer and direction, as ``lnn_backend_csk60xx/ops/gru.py`` (and
    ``lstm.py``) read them (spec 2.1.3, 2.2.3): ``(x, w_ih int8 [G H, D], w_hh int8 [G H, H], b_ih int32, b_hh
    int32) -> (y, h_n[, c_n])`` with ``input_size``, ``hidden_size``, ``batch_first``, ``go_forward``; ``y`` and
    ``h_n`` int8 at ``n_o``, ``c_n`` int16 Q7. A bidirectional layer's two outputs meet in an ``iqCat`` on the
    feature axis; ``h_n`` / ``c_n`` of several nodes in an ``iqCat`` on axis 0."""
    m: QRNN = ctx.module
    op_type = f"{m.kind}Int"
    x = ctx.inputs[0]
    y_shape = ctx.out_shapes[0]
    hn_shape = ctx.out_shapes[1] if m.kind == "GRU" else ctx.out_shapes[1]
    one_state = None if hn_shape is None else (1, *tuple(hn_shape)[1:])
    hs, cs = [], []
    layer_in = x
    params = m.integer_params()
    nodes = len(params)
    states = _state_inputs(ctx, m, nodes)
    for layer in range(m.num_layers):
        ys = []
        for d in range(m.directions):
            p = params[layer * m.directions + d]
            tag = f".l{layer}" + ("_reverse" if d else "")
            n_i, n_iw, n_hw, n_o = p["n_i"], p["n_iw"], p["n_hw"], p["n_o"]
            inputs = [layer_in,
                      ctx.initializer(f"w_ih{tag}", p["w_ih"].numpy().astype(np.int8), n_iw),
                      ctx.initializer(f"w_hh{tag}", p["w_hh"].numpy().astype(np.int8), n_hw),
                      ctx.initializer(f"b_ih{tag}", p["b_ih"].numpy().astype(np.int32), n_i + n_iw),
                      ctx.initializer(f"b_hh{tag}", p["b_hh"].numpy().astype(np.int32), n_o + n_hw)]
            inputs += states[layer * m.directions + d]
            single = nodes == 1
            d_shape = y_shape if (single or y_shape is None) else (*tuple(y_shape)[:-1], m.hidden_size)
            outs = [ctx.tensor(n_o, "int8", d_shape, suffix=f"{'' if single else tag}.y"),
                    ctx.tensor(n_o, "int8", one_state, suffix=f"{'' if single else tag}.h_n")]
            if m.kind == "LSTM":
                outs.append(ctx.tensor(CELL_EXPONENT, "int16", one_state, suffix=f"{'' if single else tag}.c_n"))
            ctx.add(op_type, inputs, outs, {"input_size": m.input_size if layer == 0 else m.hidden_size * m.directions,
                                            "hidden_size": m.hidden_size, "batch_first": int(m.layout_batch_first),
                                            "go_forward": p["go_forward"], "data_bits": 8,
                                            "parameter_bits": m.weight_bits, "o_bits": 8},
                    suffix="" if single else tag)
            ys.append(outs[0])
            hs.append(outs[1])
            if m.kind == "LSTM":
                cs.append(outs[2])
        if len(ys) == 1:
            layer_in = ys[0]
        else:
            layer_in = ctx.tensor(m.state_exponent, "int8", y_shape if layer == m.num_layers - 1 else None,
                                  suffix=f".l{layer}.cat")
            ctx.add("iqCat", ys, [layer_in], {"dim": 2}, suffix=f".l{layer}.cat")
    results = [layer_in]
    for states, n, dtype, shape_i in ((hs, m.state_exponent, "int8", 1), (cs, CELL_EXPONENT, "int16", 2)):
        if not states:
            continue
        if len(states) == 1:
            results.append(states[0])
            continue
        out = ctx.tensor(n, dtype, ctx.out_shapes[shape_i], suffix=f".{'h_n' if shape_i == 1 else 'c_n'}")
        ctx.add("iqCat", states, [out], {"dim": 0}, suffix=f".{'h_n' if shape_i == 1 else 'c_n'}")
        results.append(out)
    return results


def _state_inputs(ctx: Any, m: QRNN, nodes: int) -> list[list[str]]:
    """Per node (layer-major, forward before reverse): ``[lengths, h0(, c0)]`` for a node with an initial state (the
    IR's optional inputs), else ``[]``. ``lengths`` is the constant ``[T]``; ``h0`` int8 at ``n_o`` and ``c0`` int16
    Q7, each through one ``Requant`` from its Quant's exponent (the module rounds the state at those exponents the
    same way), then, for a stack or a bidirectional RNN, cut into one ``[1, B, H]`` piece per node by a ``Slice`` on
    axis 0 (node ``k`` reads ``h0[k]``, as the float module does)."""
    n_state = len(ctx.inputs) - 1 - (m.packed is not None)
    if m.packed is not None:  # the packed sequence's lengths: the graph's integer input
        lengths = ctx.inputs[-1]
        if ctx.graph.tensors[lengths].dtype not in ("int64", "int32"):
            raise ExportError(f"{m.kind} {ctx.path!r}: its lengths {lengths!r} are "
                              f"{ctx.graph.tensors[lengths].dtype} in the exported graph",
                              {"rule": "the lengths of a packed sequence are an integer input (int64 or int32)"},
                              "export with integer example lengths (torch.long); on the command line: "
                              "--input-dtype NAME=int64", node=ctx.path, dialect="ir")
    elif n_state == 0:
        return [[] for _ in range(nodes)]
    else:
        shape = ctx.shape(0)
        t_len = None if shape is None else shape[1 if m.batch_first else 0]
        if not isinstance(t_len, int):
            raise ExportError(f"{m.kind} {ctx.path!r}: the sequence length is not known at export",
                              {"rule": "an initial state is written with lengths = [T]"},
                              "export with a fixed-length example input", node=ctx.path, dialect="ir")
        lengths = ctx.initializer("lengths", np.array([t_len], np.int64))
    whole = []
    for k, (n, bits) in enumerate(((m.state_exponent, 8), (CELL_EXPONENT, 16))[:n_state]):
        src = ctx.inputs[1 + k]
        if ctx.exponent(1 + k) != n or bits != 8:
            dst = ctx.tensor(n, f"int{bits}", ctx.shape(1 + k), suffix=f".{('h0', 'c0')[k]}")
            ctx.add("Requant", [src], [dst], {"data_bits": 8, "o_bits": bits}, suffix=f".{('h0', 'c0')[k]}")
            src = dst
        whole.append(src)
    if nodes == 1:
        return [[lengths, *whole]]
    out = []
    for node in range(nodes):
        tag = f".l{node // m.directions}" + ("_reverse" if node % m.directions else "")
        cut = []
        for k, src in enumerate(whole):
            info = ctx.graph.tensors[src]
            piece_shape = None if info.shape is None else (1, *tuple(info.shape)[1:])
            name = ("h0", "c0")[k]
            piece = ctx.tensor(info.exponent, info.dtype, piece_shape, suffix=f"{tag}.{name}")
            bounds = [ctx.initializer(f"{name}{tag}.{what}", np.array([v], np.int64))
                      for what, v in (("starts", node), ("ends", node + 1), ("axes", 0))]
            ctx.add("Slice", [src, *bounds], [piece], domain="", suffix=f"{tag}.{name}")
            cut.append(piece)
        out.append([lengths, *cut])
    return out


def write_pad(ctx: Any) -> list[str]:
    """``pad_packed_sequence`` after a packed RNN: a ``Transpose`` when it asks for the other layout, a ``Slice``
    when it asks for fewer rows than the padded input has; the lengths are the graph's lengths input."""
    m: QPadPacked = ctx.module
    y, lengths = ctx.inputs[0], ctx.inputs[1]
    info = ctx.graph.tensors[y]
    shape = info.shape
    if m.layout_in != m.batch_first:
        shape = None if shape is None else (shape[1], shape[0], *shape[2:])
        moved = ctx.tensor(info.exponent, info.dtype, shape, suffix=".transpose")
        ctx.add("Transpose", [y], [moved], {"perm": [1, 0, 2]}, domain="", suffix=".transpose")
        y = moved
    axis = 1 if m.batch_first else 0
    want = ctx.out_shapes[0][axis] if ctx.out_shapes and ctx.out_shapes[0] is not None else None
    have = shape[axis] if shape is not None else None
    if isinstance(want, int) and isinstance(have, int) and want != have:
        if not m.total_given or want > have:
            raise ExportError(
                f"pad_packed_sequence {ctx.path!r}: {want} rows of a {have}-step sequence cannot be exported",
                {"rule": "the exported graph pads to the padded input's length T (without total_length torch "
                         "pads to the longest length, known only at run time)", "limit": f"{have} rows",
                 "actual": f"{want} rows"},
                f"pass total_length={have} to pad_packed_sequence (or export with the lengths equal to T)",
                node=ctx.path, dialect="ir")
        bounds = [ctx.initializer(what, np.array([v], np.int64)) for what, v in (("starts", 0), ("ends", want),
                                                                                 ("axes", axis))]
        cut = ctx.tensor(info.exponent, info.dtype, ctx.out_shapes[0], suffix=".slice")
        ctx.add("Slice", [y, *bounds], [cut], domain="", suffix=".slice")
        y = cut
    return [y, lengths]


WRITERS = {"builtin.GRU": write_rnn, "builtin.LSTM": write_rnn, "builtin.PadPacked": write_pad}
