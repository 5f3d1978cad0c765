"""Convolution family: Conv1d/Conv2d (groups and depthwise included), ConvTranspose1d/2d, Linear.

Integer semantics (spec/int8-ops.md 3.4-3.7)::

    acc = sum(x_q * w_q) + b_q              exact (float64 holding integers, or int64)
    y_q = RQ_8(acc, n_x + n_w - n_o)        n_o <= n_x + n_w (the chip's shift is unsigned)

with ``n_w`` from the floor rule on the weights and ``b_q = SAT_32(R(b * 2**(n_x + n_w)))``.
A BatchNorm of the same rank directly after a conv (BatchNorm1d after Conv1d, BatchNorm2d after
Conv2d) is folded into it: ``w' = w * g / sqrt(var + eps)``,
``b' = beta + (b - mean) * g / sqrt(var + eps)`` with the running statistics. The forward uses the
folded weights (one conv, quantized once, as on the chip); gradients flow to the conv weight and
to the BatchNorm's gamma and beta separately ("forward fused, backward unfused"). In stage 1
(constrain) the BatchNorm runs unfused with batch statistics, so its running statistics are
learned there; stage 2 keeps them frozen. A BatchNorm after a Linear stays its own op: it scales
axis 1 and the Linear's features lie on the last axis, the same axis only for (N, F) inputs, which
the rewrite (done before any forward) cannot know.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lnn_core.ops import OpFamily
from lnn_core.quant import kernels
from lnn_core.quant.functional import ste_gradient
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.quantizers import (
    ActQuantizer,
    ParamParts,
    fold_batch_norm,
    fold_fake_quant_weight_bias,
    fold_kernel_takes,
    param_exponent,
)
from lnn_core.quant.rewrite import BuildContext, Built

__all__ = ["QConv", "FAMILIES"]


def _ntuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        if len(v) == 1 and n > 1:
            return tuple(int(v[0]) for _ in range(n))
        return tuple(int(i) for i in v)
    return tuple(int(v) for _ in range(n))


_FN = {
    ("conv", 1): F.conv1d,
    ("conv", 2): F.conv2d,
    ("deconv", 1): F.conv_transpose1d,
    ("deconv", 2): F.conv_transpose2d,
    ("linear", 0): None,
}


class QConv(QModule):
    """Quantized convolution, transposed convolution or linear layer (one class for all dims).

    Called as ``m(x)`` when built from a module (it owns ``weight``/``bias`` under the same
    names), or ``m(x, weight[, bias])`` when built from ``F.conv2d``/``F.linear`` calls.
    """

    def __init__(self, op_id: str, kind: str, dims: int, *, weight: nn.Parameter | None,
                 bias: nn.Parameter | None, has_bias: bool, stride: Sequence[int] = (), padding: Sequence[int] = (),
                 dilation: Sequence[int] = (), groups: int = 1, output_padding: Sequence[int] = (),
                 padding_mode: str = "zeros", weight_shape: Sequence[int] | None = None, bn: nn.Module | None = None,
                 recipe: Any, act_bits: int, weight_bits: int, stage: str,
                 weight_ref: torch.Tensor | None = None) -> None:
        super().__init__(recipe, act_bits=act_bits, weight_bits=weight_bits, stage=stage)
        self.op_id = op_id  # type: ignore[misc]
        self.kind, self.dims = kind, dims
        self.owns_weight = weight is not None
        if weight is not None:
            self.weight = weight
            if bias is not None:
                self.bias = bias
            else:
                self.register_parameter("bias", None)
        self.has_bias = has_bias
        self.has_weight = True
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.groups, self.output_padding, self.padding_mode = groups, tuple(output_padding), padding_mode
        shape = weight.shape if weight is not None else weight_shape
        self.weight_shape = tuple(shape) if shape is not None else None
        self._bn: tuple[nn.Module, ...] = (bn,) if bn is not None else ()
        # a weight passed in by the graph (F.conv2d(x, self.w)): kept by reference for output_cap
        self._weight_ref: tuple[torch.Tensor, ...] = (weight_ref,) if weight_ref is not None else ()
        self.out_q = ActQuantizer(act_bits, recipe, cap=self.output_cap)

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def bn(self) -> nn.Module | None:
        return self._bn[0] if self._bn else None

    def extra_repr(self) -> str:
        parts = [self.op_id]
        if self.kind != "linear":
            parts += [f"stride={self.stride}", f"padding={self.padding}"]
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.bn is not None:
            parts.append("bn=folded")
        return ", ".join(parts) + f", stage={self.stage}"

    def _run_op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "linear":
            return F.linear(x, w, b)
        fn = _FN[(self.kind, self.dims)]
        if self.kind == "conv":
            if self.padding_mode != "zeros":
                pad = [p for p in reversed(self.padding) for _ in range(2)]
                x = F.pad(x, pad, mode=self.padding_mode)
                return fn(x, w, b, self.stride, 0, self.dilation, self.groups)
            return fn(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        return fn(x, w, b, self.stride, self.padding, self.output_padding, self.groups, self.dilation)

    def _params(self, params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.owns_weight:
            return self.weight, self.bias
        w = params[0]
        b = params[1] if len(params) > 1 else None
        return w, b

    def folded_weight_bias(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Clamp weight and bias (stage-1 settings, as stage 1 applies them: before the BatchNorm),
        then fold the BatchNorm with its running statistics."""
        w = self.constrain_weight(w)
        b = self.constrain_bias(b)
        bn = self.bn
        return fold_batch_norm(w, b, bn) if bn is not None else (w, b)

    @torch.no_grad()
    def output_cap(self, exponent_of: Any) -> int:
        """``n_x + n_w`` from the current state: the cap source of ``out_q`` (what consumers read in eval)."""
        w = self.weight if self.owns_weight else (self._weight_ref[0] if self._weight_ref else None)
        if w is None:
            raise RuntimeError(f"{self.op_id}: the weight is computed in forward, not a parameter, so the output "
                               "exponent cap n_x + n_w cannot be known without running the op; make it a parameter")
        w, _ = self.folded_weight_bias(w, None)
        return exponent_of(self.input_quantizers[0]) + param_exponent(w, self.weight_bits, self.recipe)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        w, b = self._params(params)
        if not self.quantizing:
            return self._forward_float(x, w, b)
        if self.training:
            return self._forward_train(x, w, b)
        return self._forward_exact(x, w, b)

    def _forward_float(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        w = self.constrain_weight(w)
        b = self.constrain_bias(b)
        y = self._run_op(x, w, b)
        bn = self.bn
        if bn is not None:
            from .norm import train_batch_norm

            y = train_batch_norm(y, bn, self.training)
        y = self.constrain_act(y)
        return self.out_q(y)

    def _forward_train(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        n_x = self.in_exponent(0)
        bn = self.bn
        w_c, b_c = self.constrain_weight(w), self.constrain_bias(b)
        clamped = w_c is not w or b_c is not b  # stage-1 clamps: the torch chain below applies them
        if not clamped and self._one_node(x, w, b, bn):
            gamma, beta = (bn.weight, bn.bias) if bn is not None else (None, None)
            return _LayerTrain.apply(x, w, b, gamma, beta, self, n_x)
        if bn is not None and not clamped:
            w_q, b_q, n_w = fold_fake_quant_weight_bias(w, b, bn, n_x, self.weight_bits, self.recipe)
        else:
            ((w_q, b_q, n_w),) = self.fake_quant_pairs([self.folded_weight_bias(w, b)], [n_x])
        y = self._run_op(x, w_q, b_q)
        return self.finish_train(y, cap=n_x + n_w)

    def _one_node(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, bn: nn.Module | None) -> bool:
        """Whether this training forward runs as :class:`_LayerTrain`: a conv (zero padding) or linear layer, the
        C kernels take the input and the parameters, and the output quantizer may fuse (no hook, no clamp)."""
        return (self.kind in ("conv", "linear") and self.padding_mode == "zeros" and kernels.usable(x)
                and (fold_kernel_takes(w, b, bn) if bn is not None else
                     kernels.usable(w) and (b is None or kernels.usable(b)))
                and self.fuses_output(x, w, *(t for t in (b,) + ((bn.weight, bn.bias) if bn is not None else ())
                                               if t is not None)))

    @torch.no_grad()
    def _forward_exact(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        n_x = self.in_exponent(0)
        ((w_i, b_i, n_w),) = self.quantize_pairs([self.folded_weight_bias(w, b)], [n_x])
        acc = self._run_op(x.double() * 2.0**n_x, w_i, b_i)
        return self.finish_exact(acc, n_x + n_w, cap=n_x + n_w)

    # -- what export and rules read ------------------------------------------------------------
    def integer_params(self, *params: torch.Tensor) -> dict[str, Any]:
        """The frozen integers the eval forward uses: ``w_q``, ``n_w``, ``b_q`` (int32), ``n_o``."""
        w, b = self._params(params)
        n_x = self.in_exponent(0)
        pair = self.folded_weight_bias(w.detach(), b.detach() if b is not None else None)
        ((w_i, b_i, n_w),) = self.quantize_pairs([pair], [n_x])
        return {"weight": w_i.to(torch.int64), "n_w": n_w, "bias": None if b_i is None else b_i.to(torch.int64),
                "n_x": n_x, "n_o": self.out_q.eval_exponent(cap=n_x + n_w)}

    def op_attrs(self) -> dict[str, Any]:
        attrs = super().op_attrs()
        ws = self.weight_shape
        attrs["has_bias"] = self.has_bias or self.bn is not None
        if self.kind == "linear":
            if ws:
                attrs.update(out_features=ws[0], in_features=ws[1])
            return attrs
        k = tuple(ws[2:]) if ws else ()
        attrs.update(kernel_shape=list(k), strides=list(self.stride), pads=list(self.padding) * 2,
                     dilations=list(self.dilation), group=self.groups, padding_mode=self.padding_mode)
        if ws:
            if self.kind == "conv":
                attrs.update(out_channels=ws[0], in_channels=ws[1] * self.groups)
            else:
                attrs.update(in_channels=ws[0], out_channels=ws[1] * self.groups,
                             output_padding=list(self.output_padding))
        return attrs


class _LayerTrain(torch.autograd.Function):
    """A conv or linear layer's whole training forward as one autograd node: the parameters' fake-quant (a BatchNorm
    folded in C, :class:`~lnn_core.quant.quantizers.ParamParts`), the op on the fake-quantized parameters, and the
    output quantizer's observe + fake-quant in place (C kernels); one backward: the output's clipping mask, torch's
    own kernels of the op's gradient (``convolution_backward``; the linear layer's two products and its bias sum),
    then the parameters'. The same values and observer state as the chain of nodes it replaces (conv, weight/bias or
    fold node, quantizer node), gradients equal up to the float rounding of the products' summation order."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, gamma: torch.Tensor | None,  # type: ignore[override]
                beta: torch.Tensor | None, layer: QConv, n_x: int) -> torch.Tensor:
        parts = ParamParts()
        w_q, b_q, n_w = parts.forward(w, b, layer.bn, n_x, layer.weight_bits, layer.recipe)
        y = layer._run_op(x, w_q, b_q)
        out, ctx.clip, saved = layer.out_q.observe_fake_quant_(y, n_x + n_w)
        ctx.parts, ctx.layer, ctx.has_bias = parts, layer, b_q is not None
        ctx.save_for_backward(x, w_q, saved, *parts.tensors)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, w_q, saved, *param_saved = ctx.saved_tensors
        layer: QConv = ctx.layer
        need_x, need_w, need_b, need_gamma, need_beta = ctx.needs_input_grad[:5]
        want_w = need_w or need_gamma or need_beta or (need_b and layer.bn is not None)
        want_b = ctx.has_bias and (need_b or need_beta)
        linear = layer.kind == "linear"
        channels = w_q.shape[0]
        # the output's clipping mask and the bias gradient (its per-channel sum) in one C pass where it applies
        g_bq = grad.new_empty(channels) if want_b else None
        g = kernels.ste_into(grad, ctx.clip, saved, channels, 1 if linear else grad[0, 0].numel(),
                             g_bq) if kernels.usable(grad) else None
        if g is None:
            g = ste_gradient(grad, ctx.clip, saved)
            if want_b:
                g_bq = g.reshape(-1, channels).sum(0) if linear else g.sum([0, *range(2, g.dim())])
        if linear:
            g2, x2 = g.reshape(-1, channels), x.reshape(-1, x.shape[-1])
            g_x = g.matmul(w_q) if need_x else None
            g_wq = g2.t().mm(x2) if want_w else None
        else:
            g_x, g_wq, _ = torch.ops.aten.convolution_backward(
                g, x, w_q, None, list(layer.stride), list(layer.padding), list(layer.dilation), False,
                [0] * layer.dims, layer.groups, [need_x, want_w, False])
        g_w, g_b, g_gamma, g_beta = ctx.parts.backward(tuple(param_saved), g_wq, g_bq,
                                                       (need_w, need_b, need_gamma, need_beta))
        return g_x, g_w, g_b, g_gamma, g_beta, None, None


# -- building -----------------------------------------------------------------------------------


def _same_padding(kernel: Sequence[int], dilation: Sequence[int], path: str) -> tuple[int, ...]:
    pads = []
    for k, d in zip(kernel, dilation):
        total = d * (k - 1)
        if total % 2:
            from lnn_core.errors import ConfigError

            raise ConfigError(
                f"layer {path!r}: padding='same' with kernel {k} and dilation {d} needs asymmetric padding",
                {"rule": "the chip pads both sides equally", "actual": f"total padding {total}"},
                "use an odd kernel size, or pad asymmetrically in front with nn.ZeroPad2d((left, right, top, "
                "bottom)) / F.pad (the chip's iqPad) and give the conv padding=0",
                option="padding", value="same", valid="symmetric padding")
        pads.append(total // 2)
    return tuple(pads)



def _build_module(op_id: str, kind: str, dims: int):
    def build(ctx: BuildContext) -> Built:
        m = ctx.module
        common = dict(recipe=ctx.recipe, act_bits=ctx.layer.act_bits, weight_bits=ctx.layer.weight_bits,
                      stage=ctx.stage, bn=ctx.bn)
        if kind == "linear":
            q = QConv(op_id, "linear", 0, weight=m.weight, bias=m.bias, has_bias=m.bias is not None, **common)
        else:
            k = tuple(m.kernel_size)
            dil = tuple(m.dilation)
            pad = m.padding
            if isinstance(pad, str):
                pad = (0,) * dims if pad == "valid" else _same_padding(k, dil, ctx.path)
            q = QConv(op_id, kind, dims, weight=m.weight, bias=m.bias, has_bias=m.bias is not None,
                      stride=tuple(m.stride), padding=tuple(pad), dilation=dil, groups=m.groups,
                      output_padding=tuple(getattr(m, "output_padding", ())), padding_mode=m.padding_mode, **common)
        return Built(q, [ctx.node.args[0]])

    return build


def _conv_sig(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """Signature of F.convNd."""


def _deconv_sig(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):  # noqa: A002
    """Signature of F.conv_transposeNd."""


def _linear_sig(input, weight, bias=None):  # noqa: A002
    """Signature of F.linear."""


def _build_function(op_id: str, kind: str, dims: int):
    def build(ctx: BuildContext) -> Built:
        sig = {"conv": _conv_sig, "deconv": _deconv_sig, "linear": _linear_sig}[kind]
        a = ctx.bind(sig)
        w_t = ctx.param_tensor(a["weight"])
        params = [a["weight"]] + ([a["bias"]] if a["bias"] is not None else [])
        common = dict(recipe=ctx.recipe, act_bits=ctx.layer.act_bits, weight_bits=ctx.layer.weight_bits,
                      stage=ctx.stage, bn=ctx.bn, weight_shape=None if w_t is None else tuple(w_t.shape),
                      weight_ref=w_t)
        if kind == "linear":
            q = QConv(op_id, "linear", 0, weight=None, bias=None, has_bias=a["bias"] is not None, **common)
        else:
            k = tuple(w_t.shape[2:]) if w_t is not None else (1,) * dims
            dil = _ntuple(a["dilation"], dims)
            pad = a["padding"]
            if isinstance(pad, str):
                pad = (0,) * dims if pad == "valid" else _same_padding(k, dil, ctx.path)
            q = QConv(op_id, kind, dims, weight=None, bias=None, has_bias=a["bias"] is not None,
                      stride=_ntuple(a["stride"], dims), padding=_ntuple(pad, dims), dilation=dil,
                      groups=int(a["groups"]), output_padding=_ntuple(a.get("output_padding", 0), dims), **common)
        return Built(q, [a["input"]], params)

    return build


def _family(op_id: str, kind: str, dims: int, module: type, function: Any, description: str) -> OpFamily:
    build_m = _build_module(op_id, kind, dims)
    build_f = _build_function(op_id, kind, dims)

    def build(ctx: BuildContext) -> Built:
        return build_m(ctx) if ctx.module is not None else build_f(ctx)

    return OpFamily(id=op_id, kind="compute", modules=(module,), functions=(function,), build=build,
                    fuses_bn=(f"builtin.BatchNorm{dims}d",) if kind == "conv" else (), description=description)


FAMILIES = [
    _family("builtin.Conv1d", "conv", 1, nn.Conv1d, F.conv1d, "1-D convolution (groups, depthwise), BN folded"),
    _family("builtin.Conv2d", "conv", 2, nn.Conv2d, F.conv2d, "2-D convolution (groups, depthwise), BN folded"),
    _family("builtin.ConvTranspose1d", "deconv", 1, nn.ConvTranspose1d, F.conv_transpose1d,
            "1-D transposed convolution"),
    _family("builtin.ConvTranspose2d", "deconv", 2, nn.ConvTranspose2d, F.conv_transpose2d,
            "2-D transposed convolution"),
    _family("builtin.Linear", "linear", 0, nn.Linear, F.linear, "fully connected layer"),
]


# -- IR ------------------------------------------------------------------------------------------------

OBITS_DTYPE = {8: "int8", 16: "int16", 32: "int32"}


def write_ir(ctx: Any) -> str:
    """Conv1dInt / Conv2dInt / ConvTranspose2dInt / LinearInt with int8 weights and int32 bias.

    ConvTranspose1d is written as Unsqueeze -> ConvTranspose2dInt (kernel 1 x k) -> Squeeze.
    A binding activation clamp becomes a Clip with int8 bounds after the op.
    """
    import numpy as np

    from lnn_core.errors import ExportError

    m: QConv = ctx.module
    p = m.integer_params(*ctx.params)
    n_x, n_w, n_o = p["n_x"], p["n_w"], p["n_o"]
    if n_x != ctx.exponent(0):
        raise ExportError(f"op {ctx.path!r}: input exponent {ctx.exponent(0)} != the module's {n_x}", {},
                          "this is a bug in lnn's graph wiring; please report it", node=ctx.path, dialect="ir")
    w = p["weight"].numpy().astype(np.int8)
    x = ctx.inputs[0]
    qbits = {"data_bits": 8, "o_bits": m.act_bits, "parameter_bits": m.weight_bits}
    one_d_deconv = m.kind == "deconv" and m.dims == 1
    if one_d_deconv:
        w = w[:, :, None, :]
        shape = ctx.shape(0)
        sq = ctx.tensor(n_x, "int8", None if shape is None else (*shape[:2], 1, shape[2]), suffix=".unsqueeze")
        ctx.add("Unsqueeze", [x], [sq], {"axes": [2]}, domain="", suffix=".unsqueeze")
        x = sq
    inputs = [x, ctx.initializer("weight", w, n_w)]
    if p["bias"] is not None:
        inputs.append(ctx.initializer("bias", p["bias"].numpy().astype(np.int32), n_x + n_w))
    if m.kind == "linear":
        op, attrs = "LinearInt", dict(qbits)
    else:
        dims = 2 if one_d_deconv else m.dims
        lift = (lambda v, fill: [fill] + list(v)) if one_d_deconv else (lambda v, fill: list(v))
        k = list(w.shape[2:])
        pads = lift(m.padding, 0)
        attrs = {"kernel_shape": k, "strides": lift(m.stride, 1), "pads": pads + pads,
                 "dilations": lift(m.dilation, 1), "group": m.groups, **qbits}
        if m.kind == "conv":
            op = "Conv2dInt" if dims == 2 else "Conv1dInt"
        else:
            op = "ConvTranspose2dInt"
            attrs["output_padding"] = lift(m.output_padding, 0)
    out_shape = ctx.out_shape
    if one_d_deconv and out_shape is not None:
        out_shape = (*out_shape[:2], 1, out_shape[2])
    y = ctx.tensor(n_o, OBITS_DTYPE[m.act_bits], out_shape, suffix=".out" if one_d_deconv else "")
    ctx.add(op, inputs, [y], attrs)
    if one_d_deconv:
        y2 = ctx.tensor(n_o, OBITS_DTYPE[m.act_bits])
        ctx.add("Squeeze", [y], [y2], {"axes": [2]}, domain="", suffix=".squeeze")
        y = y2
    clip = m.act_clip_int(n_o)
    return ctx.clip(y, *clip) if clip is not None else y


WRITERS = {f.id: write_ir for f in FAMILIES}
