"""PReLU: ``nn.PReLU`` (one slope, or one per channel), ``F.prelu`` / ``torch.prelu`` and ``Tensor.prelu``.

Integer semantics (channel axis 1; the output keeps the input's exponent ``n_x`` and width ``b``)::

    a_q, n_a = floor rule on the slopes        per tensor: n_a = floor(log2((2**(wb-1) - 1) / max|a|))
    y_q = x_q                                  if x_q >= 0
    y_q = SAT_b(SHR(x_q * a_q[c], n_a))        otherwise

``SHR`` is the half-up shift of spec/int8-ops.md 1.2 (``s <= 0`` shifts left, exactly); ``b`` is the
width of the input tensor (8 on CSK60xx, see the rule ``csk60xx.prelu.bits``), ``wb`` the layer's
weight bits. A single slope (``num_parameters=1``) applies to every channel.

Training (stage 2) computes the same values on the fake-quant grid, with straight-through
gradients to ``x`` and ``a``::

    y = where(x >= 0, x, fake_quant(x * fake_quant(a, n_a), n_x))

The slope is fake-quantized in float64, so it equals the eval integers bit for bit; the product of
two values on 8-bit grids is exact in float32, so training and eval agree exactly. Stage 1
(constrain) is the plain float ``F.prelu``. The slopes stay where the float model keeps them
(``<path>.weight`` for ``nn.PReLU``), so a stage-1 checkpoint loads strictly into stage 2.

:meth:`QPReLU.integer_params` returns the frozen integers the eval forward uses, for exporters and
simulator kernels.

Export: :func:`write_ir` (the IR writer of ``example.PReLU``) writes one node ``PReluInt`` (domain
:data:`lnn_core.graph.IR_DOMAIN`) with inputs ``[x, slope]``: ``x`` the int8 input at ``n_x``, ``slope`` an int8
initializer of shape ``[num_parameters]`` at ``n_a`` (int16 for weight bits above 8); its output is int8 at
``n_x``. Attributes: ``data_bits``, ``parameter_bits``, ``o_bits``. The CSK60xx dialect writes it in domain
``thinker`` and adds ``scale_x``, ``scale_w``, ``scale_o`` from those exponents and ``platform_quant``
(:mod:`lnn_ops_example.csk60xx`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from lnn_core.errors import ConfigError, ExportError
from lnn_core.ops import OpFamily
from lnn_core.quant.functional import fake_quant, requant, weight_exponent
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.quantizers import quantize_weight
from lnn_core.quant.recipes import Recipe
from lnn_core.quant.rewrite import BuildContext, Built

from . import IR_OP, OP_ID

__all__ = ["OP_ID", "IR_OP", "QPReLU", "FAMILY", "write_ir"]


def _per_channel(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a`` shaped to broadcast along axis 1 of ``x`` (a single slope broadcasts everywhere)."""
    if a.numel() == 1:
        return a.reshape(())
    return a.reshape((1, a.numel()) + (1,) * (x.dim() - 2))


class QPReLU(QModule):
    """Quantized PReLU; the output keeps the input's exponent (no output quantizer).

    Called as ``m(x)`` when built from ``nn.PReLU`` (it owns ``weight`` under the same name), or
    ``m(x, weight)`` when built from ``F.prelu``/``Tensor.prelu`` calls.

    :param weight: the slopes of the replaced ``nn.PReLU``; None for the function form.
    :param num_parameters: number of slopes, when known before the first forward.
    :param channels: channel count (axis 1) of the input, when known before the first forward.
    :param path: module path in the model, for error messages.
    """

    op_id: ClassVar[str] = OP_ID

    def __init__(self, *, weight: nn.Parameter | None, num_parameters: int | None, channels: int | None,
                 path: str, recipe: Recipe, act_bits: int, weight_bits: int, stage: str) -> None:
        super().__init__(recipe, act_bits=act_bits, weight_bits=weight_bits, stage=stage, clamps=())
        self.owns_weight = weight is not None
        if weight is not None:
            self.weight = weight
        self.has_weight = True
        self.num_parameters = num_parameters
        self.channels = channels
        self.path = path

    def extra_repr(self) -> str:
        return f"{self.op_id}, num_parameters={self.num_parameters}, stage={self.stage}"

    # -- helpers -----------------------------------------------------------------------------------
    def _slope(self, params: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.weight if self.owns_weight else params[0]

    def _check_channels(self, x: torch.Tensor, a: torch.Tensor) -> None:
        slopes = a.numel()
        channels = x.shape[1] if x.dim() >= 2 else 1
        if slopes != 1 and slopes != channels:
            raise ConfigError(
                f"PReLU {self.path!r} ({self.op_id}) has {slopes} slopes but its input has {channels} channels",
                {"rule": "num_parameters must be 1 or the channel count of the input (axis 1)",
                 "input shape": tuple(x.shape)},
                f"construct it as nn.PReLU(num_parameters=1) or nn.PReLU(num_parameters={channels})",
                option="num_parameters", value=slopes, valid=(1, channels))

    def _integers(self, a: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(a_q, n_a)``: the slopes as float64 integers by the floor rule, and their exponent."""
        return quantize_weight(a, self.weight_bits, self.recipe)

    def _fake_slope(self, a: torch.Tensor) -> torch.Tensor:
        """``a_q / 2**n_a`` with a straight-through gradient, rounded exactly so that it equals
        :meth:`_integers` (a float32 ``+ 0.5`` can round up just below a tie)."""
        lo, hi = self.recipe.weight_exponent_range
        n_a = weight_exponent(a, self.weight_bits, lo, hi)
        return fake_quant(a, n_a, self.weight_bits, exact=True)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        a = self._slope(params)
        self._check_channels(x, a)
        if not self.quantizing:
            return F.prelu(x, a)
        if self.training:
            return self._forward_train(x, a)
        return self._forward_exact(x, a)

    def _forward_train(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        n_x = self.in_exponent(0)
        neg = fake_quant(x * _per_channel(self._fake_slope(a), x), n_x, self.in_bits(0))
        return torch.where(x >= 0, x, neg)

    @torch.no_grad()
    def _forward_exact(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        n_x = self.in_exponent(0)
        a_i, n_a = self._integers(a)
        x_i = torch.floor(x.double() * 2.0**n_x + 0.5)
        neg = requant(x_i * _per_channel(a_i, x_i), n_a, self.in_bits(0))
        return (torch.where(x_i >= 0, x_i, neg) * 2.0**-n_x).float()

    # -- what export and rules read ------------------------------------------------------------
    def integer_params(self, *params: torch.Tensor) -> dict[str, Any]:
        """The frozen integers the eval forward uses.

        :return: ``slope`` (int64, one per slope), ``n_a`` (slope exponent, the shift), ``n_x`` and
            ``n_o`` (equal: the output keeps the input exponent), ``bits`` (saturation width).
        """
        a_i, n_a = self._integers(self._slope(params).detach())
        n_x = self.in_exponent(0)
        return {"slope": a_i.to(torch.int64), "n_a": n_a, "n_x": n_x, "n_o": n_x, "bits": self.in_bits(0)}

    def op_attrs(self) -> dict[str, Any]:
        attrs = super().op_attrs()
        attrs.update(o_bits=attrs["data_bits"], num_parameters=self.num_parameters, channels=self.channels)
        return attrs


# -- building -----------------------------------------------------------------------------------


def _prelu_sig(input, weight):  # noqa: A002
    """Signature of F.prelu / Tensor.prelu."""


def _channels_of(ctx: BuildContext, src: fx.Node) -> int | None:
    """Channel count of ``src`` when its producer states it (a conv or a BatchNorm), else None."""
    if src.op != "call_module":
        return None
    producer = ctx.node.graph.owning_module.get_submodule(str(src.target))
    attrs = producer.op_attrs() if isinstance(producer, QModule) else {}
    for key in ("out_channels", "num_features"):
        value = attrs.get(key, getattr(producer, key, None))
        if isinstance(value, int):
            return value
    return None


def _weight_numel(ctx: BuildContext, node: fx.Node) -> int | None:
    """Number of slopes when the weight is a tensor attribute of the model (a get_attr node)."""
    if node.op != "get_attr":
        return None
    obj: Any = ctx.node.graph.owning_module
    for part in str(node.target).split("."):
        obj = getattr(obj, part, None)
    return obj.numel() if isinstance(obj, torch.Tensor) else None


def build(ctx: BuildContext) -> Built | None:
    common = dict(path=ctx.path, recipe=ctx.recipe, act_bits=ctx.layer.act_bits,
                  weight_bits=ctx.layer.weight_bits, stage=ctx.stage)
    if ctx.module is not None:
        src = ctx.node.args[0] if ctx.node.args else ctx.node.kwargs["input"]
        channels = _channels_of(ctx, src) if isinstance(src, fx.Node) else None
        q = QPReLU(weight=ctx.module.weight, num_parameters=ctx.module.num_parameters, channels=channels, **common)
        return Built(q, [src])
    a = ctx.bind(_prelu_sig)
    src, weight = a["input"], a["weight"]
    if not isinstance(src, fx.Node) or not isinstance(weight, fx.Node):
        return None
    q = QPReLU(weight=None, num_parameters=_weight_numel(ctx, weight), channels=_channels_of(ctx, src), **common)
    return Built(q, [src], [weight])


# -- export ----------------------------------------------------------------------------------------


def write_ir(ctx: Any) -> str:
    """``PReluInt(x, slope) -> y``: the eval forward's integers (module docstring); returns the output tensor.

    :param ctx: the :class:`lnn_core.exporter.ExportContext` of one ``QPReLU`` call.
    :raises ExportError: the input tensor's exponent is not the one the module reads.
    """
    m: QPReLU = ctx.module
    p = m.integer_params(*ctx.params)
    n_x = p["n_x"]
    if ctx.exponent(0) != n_x:
        raise ExportError(f"op {ctx.path!r} ({OP_ID}): input exponent {ctx.exponent(0)} != the module's {n_x}",
                          {"input": ctx.inputs[0]}, "this is a bug in the graph wiring of lnn-ops-example; "
                          "please report it", node=ctx.path, dialect="ir")
    dtype = np.int8 if m.weight_bits <= 8 else np.int16  # the CSK60xx dialect takes int8 only
    slope = ctx.initializer("slope", p["slope"].numpy().astype(dtype).reshape(-1), p["n_a"])
    y = ctx.tensor(p["n_o"], ctx.info(0).dtype)
    attrs = {"data_bits": p["bits"], "parameter_bits": m.weight_bits, "o_bits": p["bits"]}
    ctx.add(IR_OP, [ctx.inputs[0], slope], [y], attrs)
    return y


# F.prelu is torch.prelu (one object), so one entry claims both spellings
FAMILY = OpFamily(
    id=OP_ID, kind="stateless", modules=(nn.PReLU,), functions=(F.prelu,), methods=("prelu",),
    build=build, description="PReLU with one slope or one per channel; keeps the input scale (int8 slopes)",
)


def lower_qdq(w: Any, node: Any) -> None:
    """QDQ lowering of PReluInt for onnxruntime: ``PRelu`` between DequantizeLinear and
    QuantizeLinear, rounded half-up on the product's grid ``2**-(n_x + n_a)`` as the chip does."""
    x, slope = node.inputs[:2]
    arr = w.g.initializers[slope]
    rank = len(w.info(x).shape)
    if arr.size > 1 and rank > 2:  # per-channel slope: broadcast over the spatial axes
        slope = w.derived(f"{slope}.per_channel", arr.reshape((-1,) + (1,) * (rank - 2)), slope)
    w.result("PRelu", [w.dq(x), w.dq(slope)], grid=w.exponent(x) + w.exponent(slope))
