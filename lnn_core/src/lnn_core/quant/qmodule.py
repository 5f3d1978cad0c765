"""Base class of every quantized module, and the Quant stub placed where float data enters.

A quantized module does not own the exponent of its inputs: the producer of each input does.
``lnn.init`` wires every module to the quantizers that define its inputs (``bind_inputs``), so a
module reads ``n_x`` from its producer instead of re-quantizing, exactly as the chip graph does.
The references are kept in a plain tuple, so they are not submodules and add no state_dict keys.

Outputs and parameters are plural: a module has one output quantizer per quantized output
(:attr:`QModule.out_qs`; ``out_q`` is the single-output spelling) and any number of weight/bias pairs,
each quantized by the one weight/bias path (:meth:`QModule.fake_quant_pairs` in training,
:meth:`QModule.quantize_pairs` in eval), a pair's bias at ``n_x + n_w`` of that pair.

Stages: ``constrain`` (float forward with clamps, observers warm up the statistics) and ``quant``
(fake-quant with straight-through gradients in training, exact integers in eval).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .config import ConstrainConfig
from .functional import qrange, requant
from .quantizers import ActQuantizer, fake_quant_weight_bias, quantize_bias, quantize_weight
from .recipes import Recipe

__all__ = ["QModule", "QuantStub", "STAGES", "set_stage", "OutTree", "output_tree", "tree_leaves"]

STAGES = ("constrain", "quant")

#: how a forward's return value nests its outputs: an output index, or a (nested) tuple of them
OutTree = int | tuple["OutTree", ...]


def tree_leaves(tree: OutTree) -> list[int]:
    """The output indices of ``tree`` in depth-first order."""
    if isinstance(tree, int):
        return [tree]
    return [i for sub in tree for i in tree_leaves(sub)]


def output_tree(module: nn.Module) -> OutTree:
    """How ``module``'s forward nests its outputs: ``0`` for one tensor, ``(0, 1, ...)`` for a flat tuple, or the
    module's own :attr:`QModule.out_tree` (``(0, (1, 2))`` for ``y, (h, c)``).

    :raises ValueError: ``out_tree`` does not list the outputs ``0 .. n-1`` in depth-first order.
    """
    n = len(module.out_qs) if isinstance(module, QModule) else 1
    tree = getattr(module, "out_tree", None)
    if tree is None:
        return 0 if n <= 1 else tuple(range(n))
    if tree_leaves(tree) != list(range(max(n, 1))):
        raise ValueError(f"{type(module).__name__}.out_tree={tree!r} must list the outputs 0..{max(n, 1) - 1} "
                         "in depth-first order, one per output quantizer in out_qs")
    return tree


class QModule(nn.Module):
    """Common machinery of quantized modules.

    Subclasses set ``op_id`` (``builtin.Conv2d``) and implement ``forward``. Outputs: an op with one
    output and its own output scale creates ``self.out_q``; an op with several outputs assigns an
    ``nn.ModuleList`` with one entry per output to ``self.out_qs`` (an ``ActQuantizer``, or None for a
    float output) and, when its forward returns a nested tuple, sets ``out_tree``; an op whose one output
    keeps its input's scale creates neither. ``op_attrs()`` describes the op for hardware rules in the
    vocabulary of the IR (``kernel_shape``, ``strides``, ``pads``, ...).
    """

    op_id: ClassVar[str] = ""
    #: nesting of the forward's outputs (:data:`OutTree`); None: one tensor, or a flat tuple of ``len(out_qs)``
    out_tree: OutTree | None = None

    def __init__(self, recipe: Recipe, *, act_bits: int = 8, weight_bits: int = 8,
                 stage: str = "quant", clamps: tuple[str, ...] = ("weight", "bias", "act")) -> None:
        super().__init__()
        self.recipe = recipe
        self.act_bits = act_bits
        self.weight_bits = weight_bits
        self.stage = stage
        self._inputs: tuple[ActQuantizer | None, ...] = ()
        # the stage-1 clamps travel with the checkpoint so stage 2 applies the same function
        self.clamps = clamps
        for which in clamps:
            self.register_buffer(f"clamp_{which}", torch.zeros((), dtype=torch.float32))

    # -- wiring ---------------------------------------------------------------------------------
    def bind_inputs(self, providers: Sequence[ActQuantizer | None]) -> None:
        self._inputs = tuple(providers)

    @property
    def input_quantizers(self) -> tuple[ActQuantizer | None, ...]:
        return self._inputs

    def in_exponent(self, i: int = 0) -> int:
        q = self._inputs[i] if i < len(self._inputs) else None
        if q is None:
            raise RuntimeError(f"{type(self).__name__}: input {i} has no quantizer bound")
        return q.current()

    def in_bits(self, i: int = 0) -> int:
        q = self._inputs[i] if i < len(self._inputs) else None
        return q.bits if q is not None else 32

    @property
    def out_qs(self) -> tuple[ActQuantizer | None, ...]:
        """The output quantizers, one per output in order (None: a float output); ``()`` when the op's one
        output keeps its input's scale. ``out_q`` (state_dict keys ``out_q.*``) is the single-output
        spelling; an op with several outputs keeps them in an ``nn.ModuleList`` at ``out_qs`` (keys
        ``out_qs.0.*``, ``out_qs.1.*`` ...)."""
        many = self._modules.get("out_qs")
        if many is not None:
            return tuple(many)
        one = self._modules.get("out_q")
        return (one,) if isinstance(one, ActQuantizer) else ()

    def out_quantizer(self, i: int = 0) -> ActQuantizer:
        """The quantizer of output ``i``; raises when that output has none."""
        qs = self.out_qs
        q = qs[i] if i < len(qs) else None
        if q is None:
            raise RuntimeError(f"{type(self).__name__} ({self.op_id}): output {i} has no output quantizer "
                               f"({len(qs)} declared in out_qs)")
        return q

    @property
    def quantizing(self) -> bool:
        return self.stage == "quant"

    def set_constraints(self, cfg: ConstrainConfig | None) -> None:
        cfg = cfg or ConstrainConfig(None, None, None)
        values = {"weight": cfg.weight_factor, "bias": cfg.bias, "act": cfg.activation}
        for which in self.clamps:
            getattr(self, f"clamp_{which}").fill_(values[which] or 0.0)

    def op_attrs(self) -> dict[str, Any]:
        """Attributes that hardware rules judge. Subclasses extend it."""
        attrs: dict[str, Any] = {"data_bits": self.in_bits(0) if self._inputs else self.act_bits,
                                 "o_bits": self.act_bits}
        if hasattr(self, "weight") or getattr(self, "has_weight", False):
            attrs["parameter_bits"] = self.weight_bits
        return attrs

    def shape_attrs(self, input_shapes: Sequence[tuple[int, ...] | None]) -> dict[str, Any]:
        """Attributes for the rules that judge shapes, from the shapes of the op's activation inputs (known at
        ``lnn.init`` when it is given ``example_inputs``), in the vocabulary of the IR node the op exports to
        (``input_shapes`` as the node's inputs have them). Default: none (the op's rules need no shape, or the
        torch op's shapes are not the node's). Ops whose shape limits are otherwise checked at the first forward
        override it."""
        return {}

    # -- shared numerics ------------------------------------------------------------------------
    def fuses_output(self, *inputs: torch.Tensor) -> bool:
        """Whether this training forward may run as one autograd node together with its output quantizer: a
        gradient to carry from ``inputs``, the quantizer :attr:`~.quantizers.ActQuantizer.fusable`, and no stage-1
        activation clamp between the op and the quantizer."""
        return (torch.is_grad_enabled() and any(t.requires_grad for t in inputs) and self.out_quantizer(0).fusable
                and ("act" not in self.clamps or float(self.clamp_act) <= 0.0))

    def constrain_weight(self, w: torch.Tensor) -> torch.Tensor:
        f = float(self.clamp_weight) if "weight" in self.clamps else 0.0
        if f > 0.0:
            a = w.detach().abs()
            c = min(f * float(a.mean()), float(a.max()))
            w = w.clamp(-c, c)
        return w

    def constrain_bias(self, b: torch.Tensor | None) -> torch.Tensor | None:
        c = float(self.clamp_bias) if "bias" in self.clamps else 0.0
        return b.clamp(-c, c) if (b is not None and c > 0.0) else b

    def constrain_act(self, y: torch.Tensor) -> torch.Tensor:
        c = float(self.clamp_act) if "act" in self.clamps else 0.0
        return y.clamp(-c, c) if c > 0.0 else y

    def act_clip_int(self, n: int) -> tuple[int, int] | None:
        """Integer bounds of the activation clamp at exponent ``n`` (None when it cannot bind)."""
        c = float(self.clamp_act) if "act" in self.clamps else 0.0
        if c <= 0.0:
            return None
        lo, hi = qrange(self.act_bits)
        clo = int(torch.floor(torch.tensor(-c * 2.0**n, dtype=torch.float64) + 0.5))
        chi = int(torch.floor(torch.tensor(c * 2.0**n, dtype=torch.float64) + 0.5))
        if clo <= lo and chi >= hi:
            return None
        return max(clo, lo), min(chi, hi)

    def out_exponent(self, z: torch.Tensor, cap: int | None = None, i: int = 0) -> int:
        """Exponent of output ``i`` for this forward (observing ``z`` when training)."""
        q = self.out_quantizer(i)
        if self.training and q.observe:
            return q.update(z, cap)
        return q.eval_exponent(cap)

    def out_bounds(self, n: int) -> tuple[int, int]:
        """Integer bounds of the output at exponent ``n``: saturation and the activation clamp."""
        clip = self.act_clip_int(n)
        return clip if clip is not None else qrange(self.act_bits)

    def finish_train(self, y: torch.Tensor, cap: int | None = None, i: int = 0) -> torch.Tensor:
        """Training tail of output ``i`` with its own output scale: clamp, observe, fake-quantize."""
        y = self.constrain_act(y)
        return self.out_quantizer(i)(y, cap)

    def finish_exact(self, acc: torch.Tensor, acc_exponent: int, cap: int | None = None, i: int = 0) -> torch.Tensor:
        """Eval tail of output ``i``: ``RQ(acc, n_acc - n_o)`` with the activation clamp in the integer domain.

        :param acc: exact accumulator (float64 integers) at exponent ``acc_exponent``.
        :return: float32 tensor ``q / 2**n_o``.
        """
        n_o = self.out_quantizer(i).eval_exponent(cap)
        q = requant(acc, acc_exponent - n_o, self.act_bits)
        clip = self.act_clip_int(n_o)
        if clip is not None:
            q = q.clamp(*clip)
        return (q * 2.0**-n_o).float()

    # -- weight/bias pairs ------------------------------------------------------------------------
    def fake_quant_pairs(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
                         n_xs: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor | None, int]]:
        """Training form of the op's weight/bias pairs: ``(w_q, b_q, n_w)`` per pair, each through
        :func:`~lnn_core.quant.quantizers.fake_quant_weight_bias` (weights at this layer's ``weight_bits`` by the
        floor rule, pair ``k``'s bias at ``n_xs[k] + n_w`` and the recipe's ``bias_bits``; STE gradients).

        :param pairs: ``(weight, bias or None)`` per pair, in the op's IR input order.
        :param n_xs: per pair, the exponent of the activation its weight multiplies (the bias adds to that product).
        """
        if len(pairs) != len(n_xs):
            raise ValueError(f"{type(self).__name__}: {len(pairs)} weight/bias pairs but {len(n_xs)} input exponents")
        return [fake_quant_weight_bias(w, b, n_x, self.weight_bits, self.recipe) for (w, b), n_x in zip(pairs, n_xs)]

    def quantize_pairs(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
                       n_xs: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor | None, int]]:
        """Eval form of :meth:`fake_quant_pairs`: ``(w_i, b_i, n_w)`` per pair, the exact integers (float64
        tensors) that training fake-quantizes to and the export writes; pair ``k``'s bias at ``n_xs[k] + n_w``."""
        if len(pairs) != len(n_xs):
            raise ValueError(f"{type(self).__name__}: {len(pairs)} weight/bias pairs but {len(n_xs)} input exponents")
        out = []
        for (w, b), n_x in zip(pairs, n_xs):
            w_i, n_w = quantize_weight(w, self.weight_bits, self.recipe)
            b_i = quantize_bias(b, n_x + n_w, self.recipe.bias_bits) if b is not None else None
            out.append((w_i, b_i, n_w))
        return out


class QuantStub(QModule):
    """Quantizes float data entering the quantized graph (graph inputs, float-island outputs).

    Exported as the chip's ``Quant`` op: ``q = SAT_8(R(x * 2**n))`` evaluated in float32.
    """

    op_id = "core.Quant"

    def __init__(self, recipe: Recipe, *, act_bits: int = 8, stage: str = "quant") -> None:
        super().__init__(recipe, act_bits=act_bits, stage=stage, clamps=())
        self.out_q = ActQuantizer(act_bits, recipe)

    def op_attrs(self) -> dict[str, Any]:
        return {"data_bits": self.act_bits, "o_bits": self.act_bits}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_q(x)


def set_stage(model: nn.Module, stage: str) -> None:
    """Switch every quantized module and quantizer of ``model`` to ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    for m in model.modules():
        if isinstance(m, QModule):
            m.stage = stage
        elif isinstance(m, ActQuantizer):
            m.observe = True
            m.quant = stage == "quant"
