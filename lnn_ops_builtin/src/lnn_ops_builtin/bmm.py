"""Matrix products of two activations (spec/int8-seq-ops.md 2.9): ``torch.matmul``, ``@``, ``torch.bmm``,
``x.matmul(y)``, ``x.bmm(y)``.

On the chip (``BmmInt``, thinker ``mat_mul_q7_int8`` per batch)::

    z_b = SAT_8(SHR(x_b @ y_b, n_x + n_y - n_o))          x [B, M, K], y [B, K, N] int8; n_o <= n_x + n_y

The kernel takes ranks 2 and 3 (equal); 4-D operands with equal leading dims (attention's [B, heads, T, d]) are
folded to 3-D by the export (Reshape, which moves no data) and unfolded after. Broadcast batch dims, a 1-D operand
and parameters as operands have no chip form (the op stays unsupported and is reported as such). The right matrix
must fit the NPU buffer: ``ALIGN8(K) * ALIGN4(N) <= 32768`` bytes (tpacker asserts it).

The QAT module computes exactly that: training fake-quantizes the float product with the output quantizer (capped
at ``n_x + n_y``); eval computes the exact integer product (float64, exact below 2^53) and requantizes it half up.
For attention modules: :func:`bmm_int` is the functional form with the caller's own output quantizer.
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from lnn_core.errors import LnnError
from lnn_core.ops import OpFamily
from lnn_core.quant.functional import (
    requant,
    ste_gradient,
)
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.quantizers import ActQuantizer
from lnn_core.quant.rewrite import BuildContext, Built

__all__ = ["QBmm", "FAMILIES", "WRITERS", "bmm_int", "RIGHT_BYTES_MAX", "right_bytes"]

#: the right matrix's buffer on the NPU (tpacker: ``ALIGN8(K) * ALIGN4(N) <= 32768``)
RIGHT_BYTES_MAX = 32768


def _align(v: int, a: int) -> int:
    return (v + a - 1) // a * a


def right_bytes(k: int, n: int) -> int:
    """The right matrix's aligned int8 size ``ALIGN8(K) * ALIGN4(N)``."""
    return _align(k, 8) * _align(n, 4)


def bmm_int(x: torch.Tensor, y: torch.Tensor, n_x: int, n_y: int, out_q: ActQuantizer, *,
            training: bool = False) -> torch.Tensor:
    """Functional QAT ``x @ y`` of two tensors already on the grids of ``n_x`` and ``n_y``: training fake-quantizes
    the float product with ``out_q`` (cap ``n_x + n_y``), eval returns exactly the chip's integers times
    ``2**-n_o``. An attention module calls this with its own output quantizer."""
    cap = n_x + n_y
    if training:
        return out_q(torch.matmul(x, y), cap)
    with torch.no_grad():
        qx = torch.floor(x.double() * 2.0**n_x + 0.5)
        qy = torch.floor(y.double() * 2.0**n_y + 0.5)
        n_o = out_q.eval_exponent(cap)
        return (requant(torch.matmul(qx, qy), cap - n_o, 8) * 2.0**-n_o).float()


class _MatmulQuant(torch.autograd.Function):
    """``out_q(torch.matmul(x, y), cap)`` of an observing training step in one autograd node: the product with
    autograd off, the observer's step on its ``(min, max)``, and for float32/float64 and an exponent ``n_o >= 0`` the
    fake-quant in place in the product's buffer (``floor(z * 2^n_o + 0.5)``: the product by a power of two exact, one
    rounded sum, the same bits as the fused ``rsub`` of :func:`~lnn_core.quant.functional.fake_quant_parts`, which
    any other case calls). Backward: the quantizer's clipping mask, then matmul's two products. The same values and
    observer state as the two nodes bit for bit; the same gradients (``tests/test_softmax_matmul.py``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, out_q: ActQuantizer,  # type: ignore[override]
                cap: int) -> torch.Tensor:
        z = torch.matmul(x, y)
        ctx.save_for_backward(x, y)
        out, ctx.clip, ctx.saved = out_q.observe_fake_quant_(z, cap)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, y = ctx.saved_tensors
        g = ste_gradient(grad, ctx.clip, ctx.saved)
        gx = _matmul_grad(g, y, x, left=True) if ctx.needs_input_grad[0] else None
        gy = _matmul_grad(g, x, y, left=False) if ctx.needs_input_grad[1] else None
        return gx, gy, None, None


def _column_major(t: torch.Tensor) -> bool:
    """A 2-D tensor laid out column by column (a transposed contiguous matrix, as attention's ``k^T``)."""
    return t.dim() == 2 and t.stride(0) == 1 and t.stride(1) == t.shape[0]


def _matmul_grad(g: torch.Tensor, other: torch.Tensor, this: torch.Tensor, *, left: bool) -> torch.Tensor:
    """The gradient of one operand of ``torch.matmul(x, y)`` summed in the order torch's own backward sums it, so
    that the one-node training step gives the same bits as the two nodes: for 2-D operands torch's ``mm`` backward
    returns a column-major operand's gradient column-major (``(other @ g^T)^T`` for x, ``(g^T @ x)^T`` for y);
    batched operands take ``bmm``'s ``g @ y^T`` / ``x^T @ g``. ``this`` is the operand whose gradient is computed."""
    if _column_major(this):
        if left:
            return torch.matmul(other, g.transpose(-1, -2)).transpose(-1, -2)
        return torch.matmul(g.transpose(-1, -2), other).transpose(-1, -2)
    if left:
        return torch.matmul(g, other.transpose(-1, -2))
    return torch.matmul(other.transpose(-1, -2), g)


class QBmm(QModule):
    """``x @ y`` of two quantized activations: the chip's ``BmmInt``."""

    op_id = "builtin.Matmul"

    def __init__(self, *, recipe: Any, act_bits: int, stage: str, path: str) -> None:
        super().__init__(recipe, act_bits=act_bits, stage=stage, clamps=("act",))
        self.path = path
        self.out_q = ActQuantizer(act_bits, recipe, cap=self.output_cap)

    def output_cap(self, exponent_of: Any) -> int:
        """``n_x + n_y``: the cap source of ``out_q``."""
        return exponent_of(self.input_quantizers[0]) + exponent_of(self.input_quantizers[1])

    def _fail(self, what: str, rule: str, limit: Any, actual: Any, hint: str) -> LnnError:
        return LnnError(f"matmul {self.path!r}: {what}", {"rule": rule, "limit": limit, "actual": actual}, hint,
                        rule=rule.split(":")[0], limit=limit, actual=actual, node=self.path)

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The shape rules (shapes are known at the first forward only)."""
        if x.dim() != y.dim() or x.dim() not in (2, 3, 4):
            raise self._fail(f"operands of shapes {tuple(x.shape)} and {tuple(y.shape)}",
                             "csk60xx.bmm.rank: BmmInt multiplies operands of equal rank 2 or 3 (4-D folded to 3-D)",
                             "equal ranks 2, 3 or 4", f"ranks {x.dim()} and {y.dim()}",
                             "reshape both operands to [batch, M, K] and [batch, K, N] (no broadcasting)")
        if x.shape[:-2] != y.shape[:-2]:
            raise self._fail(f"batch dims {tuple(x.shape[:-2])} and {tuple(y.shape[:-2])} differ",
                             "csk60xx.bmm.batch: BmmInt does not broadcast", "equal batch dims",
                             f"{tuple(x.shape[:-2])} vs {tuple(y.shape[:-2])}",
                             "expand the smaller operand to the same batch dims first (x.expand(...))")
        k, n = int(y.shape[-2]), int(y.shape[-1])
        if right_bytes(k, n) > RIGHT_BYTES_MAX:
            raise self._fail(f"the right matrix [{k}, {n}] is too large",
                             "csk60xx.bmm.right_matrix: ALIGN8(K) * ALIGN4(N) of the right matrix fits 32 KB",
                             f"<= {RIGHT_BYTES_MAX} bytes", f"{right_bytes(k, n)} bytes",
                             "shorten the sequence or split the product (e.g. per head or per block of columns)")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.quantizing:
            return self.out_q(self.constrain_act(torch.matmul(x, y)))
        self._check(x, y)
        n_x, n_y = self.in_exponent(0), self.in_exponent(1)
        if self.training:
            if self.fuses_output(x, y):
                return _MatmulQuant.apply(x, y, self.out_q, n_x + n_y)
            return self.finish_train(torch.matmul(x, y), n_x + n_y)
        with torch.no_grad():
            qx = torch.floor(x.double() * 2.0**n_x + 0.5)
            qy = torch.floor(y.double() * 2.0**n_y + 0.5)
            return self.finish_exact(torch.matmul(qx, qy), n_x + n_y, n_x + n_y)

    def shape_attrs(self, input_shapes: Any) -> dict[str, Any]:
        """The operands' shapes as BmmInt has them: 4-D operands folded to 3-D (``[B·H, M, K]``), as the export
        does; other ranks as they are (the rank rule judges them)."""
        if len(input_shapes) != 2 or any(s is None for s in input_shapes):
            return {}
        x, y = (tuple(s) for s in input_shapes)
        if len(x) == len(y) == 4 and x[:2] == y[:2]:
            x, y = (x[0] * x[1], *x[2:]), (y[0] * y[1], *y[2:])
        return {"input_shapes": (x, y)}

    def op_attrs(self) -> dict[str, Any]:
        attrs = {**super().op_attrs(), "n_inputs": 2}
        if self._inputs:  # both operands are judged: the wider one is reported
            attrs["data_bits"] = max(self.in_bits(0), self.in_bits(1))
        return attrs


def _build(ctx: BuildContext) -> Built | None:
    node = ctx.node
    args = list(node.args[:2])
    for key in ("other", "mat2", "input"):
        if key in node.kwargs:
            args.append(node.kwargs[key])
    if "out" in node.kwargs or len(args) != 2:
        return None
    if not all(getattr(a, "op", None) in ("call_module", "call_function", "call_method", "placeholder")
               for a in args):
        return None  # a parameter or constant operand: no chip form for an activation x a weight here
    return Built(QBmm(recipe=ctx.recipe, act_bits=ctx.layer.act_bits, stage=ctx.stage, path=ctx.path), args)


FAMILIES = [
    OpFamily(id="builtin.Matmul", kind="compute", functions=(torch.matmul, operator.matmul, torch.bmm),
             methods=("matmul", "bmm", "__matmul__"), build=_build,
             description="matrix product of two activations, rank 2/3 (4-D folded): BmmInt, int8 out, n_o <= "
                         "n_x + n_y, right matrix ALIGN8(K)*ALIGN4(N) <= 32 KB"),
]


# -- IR ----------------------------------------------------------------------------------------------


def write_bmm(ctx: Any) -> str:
    """``BmmInt(x, y)`` (linger 1.1.1's node, spec 2.9.3); 4-D operands are folded to 3-D by Reshapes."""
    import numpy as np

    m: QBmm = ctx.module
    n_x, n_y = ctx.exponent(0), ctx.exponent(1)
    n_o = m.out_q.eval_exponent(n_x + n_y)
    xs, ys, out_shape = ctx.shape(0), ctx.shape(1), ctx.out_shape
    x, y = ctx.inputs[0], ctx.inputs[1]
    fold = xs is not None and len(xs) == 4
    if fold:
        lead = [-1 if isinstance(d, str) else int(d) for d in xs[:2]]
        b = -1 if -1 in lead else lead[0] * lead[1]

        def reshape(src: str, shape: list[int], exp: int, tag: str, static: tuple[Any, ...] | None) -> str:
            out = ctx.tensor(exp, "int8", static, suffix=f".{tag}")
            ctx.add("Reshape", [src, ctx.initializer(f"{tag}_shape", np.array(shape, dtype=np.int64))], [out],
                    domain="", suffix=f".{tag}")
            return out

        def three(s: tuple[Any, ...]) -> tuple[Any, ...]:
            return ("N" if b == -1 else b, s[2], s[3])

        x = reshape(x, [b, int(xs[2]), int(xs[3])], n_x, "fold_x", three(xs))
        ys = ctx.shape(1)
        y = reshape(y, [b, int(ys[2]), int(ys[3])], n_y, "fold_y", three(ys))
        z3 = ctx.tensor(n_o, "int8", three(out_shape) if out_shape is not None else None, suffix=".bmm")
        ctx.add("BmmInt", [x, y], [z3], {"data_bits": 8, "o_bits": 8}, suffix=".bmm")
        z = ctx.tensor(n_o, "int8")
        ctx.add("Reshape", [z3, ctx.initializer("unfold_shape", np.array(
            [lead[0] if b != -1 else -1, lead[1] if lead[1] != -1 else -1, int(out_shape[2]), int(out_shape[3])],
            dtype=np.int64))], [z], domain="", suffix=".unfold")
    else:
        z = ctx.tensor(n_o, "int8")
        ctx.add("BmmInt", [x, y], [z], {"data_bits": 8, "o_bits": 8})
    clip = m.act_clip_int(n_o)
    return ctx.clip(z, *clip) if clip is not None else z


WRITERS = {"builtin.Matmul": write_bmm}
