"""Activation and weight quantizers: the state, the observers that turn it into exponents, the fake-quant.

The observer and the fake-quant are switched independently (``observe`` / ``quant``), as in
torch.ao, but as plain attributes rather than buffers: they describe the stage (constrain or
QAT), not the trained state, so they never travel through a checkpoint. The statistics rule is an
observer object (:mod:`lnn_core.quant.observers`) made from the recipe's factory; the quantizer owns
the state and hands it to the observer.

State of :class:`ActQuantizer` (all buffers, all in the state_dict, versioned through ``_version``):

- ``running``: the observer's running statistic (float32);
- ``exponent``: the exponent used by the latest *training* forward (int64): what the consumers in the
  same training step read;
- ``num_batches``: training steps observed (int64).

Exponents do not depend on call order. Outside an observing training step (eval, or frozen
observers) the exponent is :meth:`ActQuantizer.eval_exponent`, a pure function of ``running``, the
observer and the op's cap; the cap is the owner's ``cap`` callable, which reads the input exponents of
the op and its weights the same pure way. Reading an exponent never writes anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, LnnError
from . import kernels
from .functional import (
    absmax,
    cannot_saturate,
    fake_quant,
    fake_quant_parts,
    fake_quant_parts_into,
    qrange,
    ste_gradient,
    tensor_bounds,
)
from .observers import Bounds, Observer
from .recipes import Recipe

__all__ = ["ActQuantizer", "WeightQuantizer", "CapSource", "share_exponents", "unshare_exponents",
           "param_exponent", "quantize_weight", "quantize_bias", "fake_quant_weight", "fake_quant_bias",
           "fake_quant_weight_bias", "fold_batch_norm", "fold_fake_quant_weight_bias", "fold_kernel_takes",
           "ParamParts"]

ExponentOf = Callable[["ActQuantizer | None"], int]
CapSource = Callable[[ExponentOf], "int | None"]
"""``cap(exponent_of) -> int | None``: the cap of an op's output exponent (``n_x + n_w`` for a conv), computed
from the op's state, reading each input's exponent as ``exponent_of(quantizer)``."""

_AUTO: Any = object()


def _dist_max(value: float) -> float:
    """Max over all ranks when running under torch.distributed (keeps every rank's state identical).

    Every rank calls it once per observed tensor, in the same order, whatever its data (an empty batch
    contributes 0.0), so the collectives always match up.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":  # NCCL reduces GPU tensors only
            device = torch.device("cuda", torch.cuda.current_device())
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())
    return value


class ActQuantizer(nn.Module):
    """Per-tensor power-of-two activation quantizer.

    :param bits: integer width of the tensor.
    :param recipe: supplies the observer (``recipe.make_act_observer()``) and the exponent range.
    :param positive: observe only the positive part (the op feeds a ReLU: "ahead-relu").
    :param cap: the owning op's :data:`CapSource` when its output exponent is capped by its inputs
        (``n_o <= n_x + n_w``); consumers then read the capped exponent without a forward.
    :param observer: an observer instance instead of the recipe's.
    """

    _version = 1
    #: resolved eval exponents shared by all quantizers of a model during one eval forward (see
    #: :func:`share_exponents`); None otherwise. Never state: the values equal the pure resolution.
    _memo: dict[int, int] | None = None

    def __init__(self, bits: int, recipe: Recipe, *, positive: bool = False, cap: CapSource | None = None,
                 observer: Observer | None = None) -> None:
        super().__init__()
        self.bits = int(bits)
        self.observer = observer if observer is not None else recipe.make_act_observer()
        self.exp_lo, self.exp_hi = recipe.act_exponent_range
        self.positive = positive
        self.cap_source = cap
        self.observe = True
        self.quant = True
        #: the quantizer's path in the prepared model (``lnn.init`` sets it; errors name it)
        self.path = ""
        self.register_buffer("running", torch.zeros((), dtype=torch.float32))
        self.register_buffer("exponent", torch.tensor(self.exp_hi, dtype=torch.int64))
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.int64))

    @property
    def rule(self) -> str:
        return type(self.observer).__name__

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, observer={self.observer!r}, positive={self.positive}, "
                f"observe={self.observe}, quant={self.quant}")

    def _bounds(self, cap: int | None) -> Bounds:
        return Bounds(self.exp_lo, self.exp_hi, cap)

    def _batch_stat(self, bounds: tuple[float, float] | None) -> float:
        """The statistic of one batch, ``max|x|`` (``max(x, 0)`` when positive), max-reduced over ranks."""
        if bounds is None:
            m = 0.0
        else:
            lo, hi = bounds
            m = max(hi, 0.0) if self.positive else max(-lo, hi)
        return _dist_max(m)

    # -- training -----------------------------------------------------------------------------------
    def observe_bounds(self, bounds: tuple[float, float] | None, cap: int | None = None) -> int:
        """Observe one training batch given its ``(min, max)`` (None when empty); return the exponent it uses.

        A batch holding an infinity or NaN is refused (:class:`~lnn_core.errors.LnnError` naming the quantizer): its
        statistic would make the running value (and every later exponent) meaningless for the rest of the training.
        """
        m = self._batch_stat(bounds)
        if not math.isfinite(m):
            where = f" {self.path!r}" if self.path else ""
            raise LnnError(
                f"activation quantizer{where}: a training batch holds {'NaN' if math.isnan(m) else 'an infinity'}",
                {"rule": "the observer's statistic max|x| must be finite (the running value would keep it for good)",
                 "actual": f"max|x| = {m}"},
                "find where the training diverged (torch.autograd.set_detect_anomaly(True) names the first op that "
                "makes a NaN); a lower learning rate, gradient clipping or normalized inputs usually cure it",
                node=self.path, actual=m)
        views = self._state_views()
        if views is None:
            seen = int(self.num_batches)
            r, n = self.observer.step(float(self.running), seen, m, self.bits, self._bounds(cap))
            self.running.fill_(r)
            self.num_batches.fill_(seen + 1)
            self.exponent.fill_(n)
            return n
        running, num_batches, exponent = views
        seen = int(num_batches)
        r, n = self.observer.step(float(running), seen, m, self.bits, self._bounds(cap))
        running[()] = r  # rounded to float32 as fill_ rounds it
        num_batches[()] = seen + 1
        exponent[()] = n
        return n

    def _state_views(self) -> tuple[Any, Any, Any] | None:
        """numpy views of the three state buffers when they live on the CPU (None otherwise), so that a training step
        reads and writes them without three tensor operations. Kept in the instance's ``__dict__`` (never state)
        with the buffers' data pointers: a buffer replaced (``.to()``, a copy of the module, ``load_state_dict(...,
        assign=True)``) has another address and the views are made again; an in-place load keeps them valid."""
        b = self._buffers
        r, nb, e = b["running"], b["num_batches"], b["exponent"]
        key = (r.data_ptr(), nb.data_ptr(), e.data_ptr())
        cached = self.__dict__.get("_lnn_views")
        if cached is not None and cached[0] == key:
            return cached[1]
        views = None
        if all(t.device.type == "cpu" and type(t) is torch.Tensor and not t.requires_grad for t in (r, nb, e)):
            views = (r.numpy(), nb.numpy(), e.numpy())
        self.__dict__["_lnn_views"] = (key, views)
        return views

    @property
    def fusable(self) -> bool:
        """Whether an op may take this quantizer's training work into its own autograd node
        (:meth:`observe_fake_quant_`): a training forward that observes and fake-quantizes, and no forward hook or
        pre-hook on the quantizer waiting to see its own call."""
        return (self.training and self.quant and self.observe and not self._forward_hooks
                and not self._forward_pre_hooks)

    def observe_fake_quant_(self, y: torch.Tensor, cap: int | None = None, bounds: tuple[float, float] | None = _AUTO
                            ) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """Observe ``y`` and fake-quantize it **in place** where it can: ``(out, clip, saved)`` as
        :func:`~.functional.fake_quant_parts` returns them, for an autograd node that owns ``y`` (a fresh buffer
        of its own forward) and fuses its output quantizer. Same values as :func:`fake_quant_parts` (for float32
        and float64 at ``n >= 0``, where both dtypes hold the integers and the interval form of the mask applies);
        other cases go through it. ``bounds``: ``(min, max)`` of ``y`` when the caller's kernel found them. Call with
        autograd off."""
        if bounds is _AUTO:
            bounds = tensor_bounds(y)
        n = self.observe_bounds(bounds, cap)
        if n < 0 or y.dtype not in (torch.float32, torch.float64):
            return fake_quant_parts(y, n, self.bits, bounds)
        parts = fake_quant_parts_into(y, y, n, self.bits, bounds)  # the same values in one C pass, in place
        if parts is not None:
            return parts
        q = y.mul_(2.0**n).add_(0.5).floor_()
        if cannot_saturate(bounds, n, self.bits):
            return q.mul_(2.0**-n), None, None
        lo, hi = qrange(self.bits)
        return q.clamp(lo, hi).mul_(2.0**-n), (lo - 1.0, hi + 1.0), q

    @torch.no_grad()
    def update(self, x: torch.Tensor, cap: int | None = None) -> int:
        """Observe one training batch and return the exponent this step uses."""
        return self.observe_bounds(tensor_bounds(x), cap)

    # -- reading (pure) -----------------------------------------------------------------------------
    def eval_exponent(self, cap: int | None = _AUTO) -> int:
        """The frozen exponent: a function of ``running``, the observer and the cap only; writes nothing.

        :param cap: the op's cap when the caller has computed it (the op's own forward); by default it
            comes from the owner's cap source.
        """
        if cap is _AUTO:
            return self._resolve(self._memo if self._memo is not None else {})
        if cap is not None and self.cap_source is None:
            free = self.observer.exponent(float(self.running), self.bits, self._bounds(None))
            if free > cap:
                raise LnnError(
                    f"ActQuantizer ({self.bits} bit, {self.rule}): the op caps its output exponent at {cap} "
                    f"but did not give the quantizer that cap",
                    {"rule": "an op whose output exponent is capped passes cap=<callable> to its ActQuantizer, "
                             "so consumers read the capped exponent without running the op",
                     "limit": cap, "actual": free},
                    "construct the quantizer as ActQuantizer(bits, recipe, cap=self.output_cap), output_cap "
                    "computing the cap from exponent_of(input quantizer) and the op's weights",
                    limit=cap, actual=free)
        return self.observer.exponent(float(self.running), self.bits, self._bounds(cap))

    def _resolve(self, memo: dict[int, int]) -> int:
        key = id(self)
        if key not in memo:
            cap = None
            if self.cap_source is not None:
                cap = self.cap_source(lambda q: _exponent_of(q, memo))
            memo[key] = self.observer.exponent(float(self.running), self.bits, self._bounds(cap))
        return memo[key]

    def current(self) -> int:
        """The exponent of the tensor as this quantizer produces it now (what consumers read).

        In an observing training step: the exponent the latest forward used (per batch by nature). Otherwise
        (eval, frozen observers): :meth:`eval_exponent`, pure, the same before and after any forward.
        """
        return _exponent_of(self, self._memo if self._memo is not None else {})

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cap: int | None = None) -> torch.Tensor:
        """Observe/fake-quantize in training; quantize exactly (float32 arithmetic, as the chip's
        Quant op) in eval."""
        if self.training:
            if not self.quant:
                if self.observe:
                    self.update(x, cap)
                return x
            if not self.observe:
                return fake_quant(x, self.eval_exponent(cap), self.bits)
            if x.requires_grad and torch.is_grad_enabled():
                return _ObservedFakeQuant.apply(x, self, cap)
            bounds = tensor_bounds(x)  # no gradient to carry (the model's input): no autograd node needed
            return fake_quant_parts(x, self.observe_bounds(bounds, cap), self.bits, bounds)[0]
        if not self.quant:
            return x
        n = self.eval_exponent(cap)
        lo, hi = qrange(self.bits)
        q = torch.floor(x.float() * (2.0**n) + 0.5).clamp_(lo, hi)
        return q.mul_(2.0**-n).to(x.dtype)


def _exponent_of(q: ActQuantizer | None, memo: dict[int, int]) -> int:
    """The exponent consumers of ``q`` read (see :meth:`ActQuantizer.current`), memoised within one read."""
    if q is None:
        raise RuntimeError("an op's input has no quantizer bound (lnn.init binds every quantized input)")
    if q.training and q.observe:
        return int(q.exponent)
    return q._resolve(memo)


def share_exponents(model: nn.Module, args: Any = None) -> None:
    """Forward pre-hook of a prepared model: during an eval forward nothing changes the state, so every
    quantizer resolves each exponent once for the whole forward instead of once per reader (a conv reads its
    input's exponent, which reads its input's, ...). Removed by :func:`unshare_exponents`."""
    if model.training:  # a training forward: no shared memo (checked first: it walks no modules)
        return
    quantizers = [m for m in model.modules() if isinstance(m, ActQuantizer)]
    if any(q.training for q in quantizers):
        return
    memo: dict[int, int] = {}
    for q in quantizers:
        q._memo = memo
    model.__dict__["_lnn_memo_holders"] = quantizers  # what unshare_exponents clears (an instance attribute)


def unshare_exponents(model: nn.Module, args: Any = None, output: Any = None) -> None:
    """Forward hook (``always_call``) ending :func:`share_exponents`."""
    for q in model.__dict__.pop("_lnn_memo_holders", ()):
        q._memo = None


class _ObservedFakeQuant(torch.autograd.Function):
    """Observe + fake-quantize in one autograd node: the training step of an observing ActQuantizer.

    The forward runs with autograd off, so the statistics pass (one ``aminmax``) records nothing, and its
    ``(min, max)`` serve twice: for the running statistic, and to prove that nothing saturates (then the
    fake-quant skips the clamp and the gradient mask). Same result as ``update`` then ``fake_quant``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, quantizer: ActQuantizer, cap: int | None) -> torch.Tensor:  # type: ignore[override]
        bounds = tensor_bounds(x)
        n = quantizer.observe_bounds(bounds, cap)
        out, ctx.clip, saved = fake_quant_parts(x, n, quantizer.bits, bounds)
        ctx.save_for_backward(saved)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (saved,) = ctx.saved_tensors
        return ste_gradient(grad, ctx.clip, saved), None, None


class WeightQuantizer(nn.Module):
    """Per-tensor power-of-two quantizer of an op's parameters (weights, LayerNorm's gamma, RNN matrices).

    Composes an observer: the floor rule on the current tensor by default (:class:`~.observers.MaxFloor`,
    stateless: no buffers, so adding one to an op adds no state_dict keys); a stateful observer such as
    :class:`~.observers.EmaThreshold` (RNN weights, spec/int8-seq-ops.md 2.1.2) gets ``running`` and
    ``num_batches`` buffers: training uses its per-step exponent, eval the one frozen from ``running``,
    and the final weights are then saturated at that exponent (they may clip).

    :param bits: width of the integers (16 for LayerNorm's gamma).
    :param recipe: supplies the observer (``recipe.make_weight_observer()``), exponent range and bias width.
    :param observer: an observer instance instead of the recipe's.
    """

    def __init__(self, bits: int, recipe: Recipe, *, observer: Observer | None = None) -> None:
        super().__init__()
        self.bits = int(bits)
        self.observer = observer if observer is not None else recipe.make_weight_observer()
        self.exp_lo, self.exp_hi = recipe.weight_exponent_range
        self.bias_bits = recipe.bias_bits
        self.observe = True
        if self.observer.stateful:
            self.register_buffer("running", torch.zeros((), dtype=torch.float32))
            self.register_buffer("num_batches", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, observer={self.observer!r}"

    def _running(self) -> float:
        return float(self.running) if self.observer.stateful else 0.0

    def exponent(self, w: torch.Tensor | None = None, bounds: tuple[float, float] | None = None) -> int:
        """The frozen exponent: pure (reads ``running`` or the tensor ``w``, writes nothing).

        :param bounds: ``(min, max)`` of ``w`` when the caller has them.
        """
        m = None
        if self.observer.needs_data:
            if w is None and bounds is None:
                raise ValueError(f"{self.observer!r} needs the tensor to find its exponent")
            m = absmax(bounds if bounds is not None else tensor_bounds(w))
        return self.observer.exponent(self._running(), self.bits, Bounds(self.exp_lo, self.exp_hi), m)

    @torch.no_grad()
    def step(self, w: torch.Tensor, bounds: tuple[float, float] | None = None) -> int:
        """The exponent of one training step: observes ``w`` (stateful rules update ``running``)."""
        if not self.observer.stateful:
            return self.exponent(w, bounds)
        b = bounds if bounds is not None else tensor_bounds(w)
        seen = int(self.num_batches)
        r, n = self.observer.step(float(self.running), seen, absmax(b), self.bits, Bounds(self.exp_lo, self.exp_hi))
        self.running.fill_(r)
        self.num_batches.fill_(seen + 1)
        return n

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(q, n)``: ``SAT_bits(R(w * 2**n))`` as a float64 tensor of integers at the frozen exponent."""
        n = self.exponent(w)
        qlo, qhi = qrange(self.bits)
        return torch.floor(w.detach().double() * 2.0**n + 0.5).clamp_(qlo, qhi), n

    def fake_quant(self, w: torch.Tensor, b: torch.Tensor | None, n_x: int) -> tuple[torch.Tensor,
                                                                                      torch.Tensor | None, int]:
        """Training form: ``(w_q, b_q, n_w)``, the weight at this step's exponent, the bias at ``n_x + n_w``
        and ``bias_bits``, both rounded exactly, straight-through gradients (see :func:`fake_quant_weight_bias`).
        Observes ``w`` when training with ``observe`` on; otherwise uses the frozen exponent."""
        bounds = tensor_bounds(w)
        n_w = self.step(w, bounds) if (self.training and self.observe) else self.exponent(w, bounds)
        return _FakeQuantWeightBias.apply(w, b, n_x, n_w, self.bits, self.bias_bits, bounds)


def _stateless_exponent(w: torch.Tensor, bits: int, recipe: Recipe, bounds: tuple[float, float] | None = None) -> int:
    """The recipe's weight exponent for an op that keeps no weight state (the functions below)."""
    observer = recipe.make_weight_observer()
    if observer.stateful:
        raise ConfigError(
            f"recipe {recipe.name!r}: weight observer {observer!r} keeps running statistics, but this op "
            "quantizes its weights without state",
            {"rule": "stateful weight rules (EMA) need an op that owns a WeightQuantizer (the RNN ops)"},
            "use the floor rule (weight_observer=None or MaxFloor) for this layer",
            option="weight_observer", value=observer, valid="a stateless weight observer")
    m = absmax(bounds if bounds is not None else tensor_bounds(w)) if observer.needs_data else None
    lo, hi = recipe.weight_exponent_range
    return observer.exponent(0.0, bits, Bounds(lo, hi), m)


def param_exponent(w: torch.Tensor, bits: int, recipe: Recipe) -> int:
    """The exponent :func:`quantize_weight` gives ``w`` (no integers made): what an op's cap source reads."""
    return _stateless_exponent(w, bits, recipe)


def quantize_weight(w: torch.Tensor, bits: int, recipe: Recipe) -> tuple[torch.Tensor, int]:
    """``(q, n)``: integer weights (float64 tensor) at the recipe's weight exponent (the floor rule by default)."""
    n = _stateless_exponent(w, bits, recipe)
    qlo, qhi = qrange(bits)
    return torch.floor(w.detach().double() * 2.0**n + 0.5).clamp_(qlo, qhi), n


def quantize_bias(b: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """``SAT_bits(R(b * 2**n))`` as a float64 tensor of integers."""
    qlo, qhi = qrange(bits)
    return torch.floor(b.detach().double() * 2.0**n + 0.5).clamp_(qlo, qhi)


def fake_quant_weight(w: torch.Tensor, bits: int, recipe: Recipe) -> tuple[torch.Tensor, int]:
    """``(w_q, n)``: fake-quantized weights (STE) at the recipe's weight exponent ``n``
    (:func:`fake_quant_weight_bias` without a bias)."""
    w_q, _, n = fake_quant_weight_bias(w, None, 0, bits, recipe)
    return w_q, n


class _FakeQuantWeightBias(torch.autograd.Function):
    """An op's weight and bias fake-quantized in one autograd node (one python round trip, not two):
    :meth:`ParamParts.weight_bias` in a node.

    The exponent ``n_w`` and the weight's ``(min, max)`` come in from the caller (found with autograd off);
    the exponent leaves as a plain ``int`` output (no gradient).
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, b: torch.Tensor | None, n_x: int, n_w: int, bits: int,  # type: ignore[override]
                bias_bits: int, bounds: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        ctx.parts = ParamParts()
        w_q, b_q = ctx.parts.weight_bias(w, b, n_x, n_w, bits, bias_bits, bounds)
        ctx.save_for_backward(*ctx.parts.tensors)
        return w_q, b_q, n_w

    @staticmethod
    def backward(ctx, grad_w: torch.Tensor, grad_b: torch.Tensor | None, _grad_n: None):  # type: ignore[override]
        g_w, g_b, _, _ = ctx.parts.backward(ctx.saved_tensors, grad_w, grad_b, (True, True, False, False))
        return g_w, g_b, None, None, None, None, None


def fake_quant_weight_bias(w: torch.Tensor, b: torch.Tensor | None, n_x: int, bits: int,
                           recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``(w_q, b_q, n_w)``, the training form of :func:`quantize_weight` and :func:`quantize_bias`: the weight at
    the recipe's (stateless) weight exponent ``n_w``, the bias (if any) at ``n_x + n_w`` and the recipe's
    ``bias_bits``, both rounded exactly (the integers eval exports), straight-through gradients, in one autograd
    node. An op with a stateful weight rule uses :meth:`WeightQuantizer.fake_quant` instead."""
    bounds = tensor_bounds(w)
    n_w = _stateless_exponent(w, bits, recipe, bounds)
    return _FakeQuantWeightBias.apply(w, b, n_x, n_w, bits, recipe.bias_bits, bounds)


def fake_quant_bias(b: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """Training form of :func:`quantize_bias` (STE), the same integers as :func:`quantize_bias`."""
    return fake_quant(b, n, bits, exact=True)


def fold_batch_norm(w: torch.Tensor, b: torch.Tensor | None, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A BatchNorm with frozen statistics folded into the op before it: ``(w * inv, beta - mean * inv + b * inv)``,
    ``inv = gamma / sqrt(var + eps)`` per output channel (dim 0 of ``w``). Differentiable in ``w``, ``b`` and the
    BatchNorm's affine parameters; ``bn`` has ``running_mean``, ``running_var``, ``eps`` and ``weight``/``bias``
    (None when not affine). The one expression of the fold: eval, export and (through the C kernel, equal bit for bit)
    training all compute these values."""
    inv = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        inv = inv * bn.weight
    w = w * inv.reshape((-1,) + (1,) * (w.dim() - 1))
    base = -bn.running_mean * inv
    if bn.bias is not None:
        base = base + bn.bias
    return w, (base + b * inv if b is not None else base)


class ParamParts:
    """The training forward of a layer's weight and bias (optionally with a BatchNorm folded in) split from its
    autograd node, for nodes that own more than the parameters (a conv layer with its output quantizer):
    :meth:`forward` gives ``(w_q, b_q, n_w)`` and keeps what :meth:`backward` needs; ``tensors`` must go through the
    node's ``save_for_backward`` and come back to :meth:`backward` as ``saved``.

    With ``bn``: :func:`fold_batch_norm` in C (``lnn_q_fold_f32``; every tensor :func:`kernels.usable`), then the
    weight/bias fake-quant; gradients to ``w``, ``b`` and the BatchNorm's ``weight`` and ``bias``, equal to the torch
    chain's up to float rounding (the BatchNorm scale's per-channel sums run in float64). Without: the weight/bias
    fake-quant of :func:`fake_quant_weight_bias`, straight-through gradients. The per-channel values the fold's
    backward needs are copied out at the forward: a later in-place update of the statistics moves nothing."""

    __slots__ = ("folded", "clips", "tensors")

    def forward(self, w: torch.Tensor, b: torch.Tensor | None, bn: nn.Module | None, n_x: int, bits: int,
                recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        if bn is None:
            bounds = tensor_bounds(w)
            n_w = _stateless_exponent(w, bits, recipe, bounds)
            return (*self.weight_bias(w, b, n_x, n_w, bits, recipe.bias_bits, bounds), n_w)
        self.folded = True
        lib, ptr = kernels.lib, kernels.pointer
        C = w.shape[0]
        wf, bf, aux = torch.empty_like(w), w.new_empty(C), w.new_empty(3 * C)
        out = kernels.ffi.new("float[4]")
        lib.lnn_q_fold_f32(ptr(w), ptr(b), ptr(bn.running_mean), ptr(bn.running_var), bn.eps, ptr(bn.weight),
                           ptr(bn.bias), C, w.numel() // C, ptr(wf), ptr(bf), ptr(aux), out)
        w_bounds, b_bounds = (out[0], out[1]), (out[2], out[3])
        n_w = _stateless_exponent(wf, bits, recipe, w_bounds)
        # rounded in place where the kernel takes it (the common case: no clamp, no mask), fresh tensors otherwise
        w_q, w_clip, w_saved = (fake_quant_parts_into(wf, wf, n_w, bits, w_bounds, exact=True)
                                or fake_quant_parts(wf, n_w, bits, w_bounds, exact=True))
        b_q, b_clip, b_saved = (fake_quant_parts_into(bf, bf, n_x + n_w, recipe.bias_bits, b_bounds, exact=True)
                                or fake_quant_parts(bf, n_x + n_w, recipe.bias_bits, b_bounds, exact=True))
        self.clips = (w_clip, b_clip)
        self.tensors = (w.detach(), aux, w_saved, b_saved)
        return w_q, b_q, n_w

    def weight_bias(self, w: torch.Tensor, b: torch.Tensor | None, n_x: int, n_w: int, bits: int, bias_bits: int,
                    bounds: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(w_q, b_q)`` without a BatchNorm, at a given weight exponent ``n_w`` (a stateful rule's, or the recipe's
        found by :meth:`forward`): the weight at ``n_w`` and ``bits``, the bias at ``n_x + n_w`` and ``bias_bits``,
        both rounded exactly; ``bounds`` are ``w``'s ``(min, max)``."""
        self.folded = False
        w_q, w_clip, w_saved = fake_quant_parts(w, n_w, bits, bounds, exact=True)
        b_q, b_clip, b_saved = None, None, None
        if b is not None:
            b_q, b_clip, b_saved = fake_quant_parts(b, n_x + n_w, bias_bits, None, exact=True)
        self.clips = (w_clip, b_clip)
        self.tensors = (w_saved, b_saved)
        return w_q, b_q

    def backward(self, saved: tuple[torch.Tensor | None, ...], grad_w: torch.Tensor | None,
                 grad_b: torch.Tensor | None, need: tuple[bool, bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
        """``(g_w, g_b, g_gamma, g_beta)`` from the gradients of ``w_q`` and ``b_q``; ``need`` says which are wanted
        (the last two only with a BatchNorm)."""
        w_clip, b_clip = self.clips
        if not self.folded:
            w_saved, b_saved = saved
            g_w = None if grad_w is None or not need[0] else ste_gradient(grad_w, w_clip, w_saved)
            g_b = None if grad_b is None or not need[1] else ste_gradient(grad_b, b_clip, b_saved)
            return g_w, g_b, None, None
        w, aux, w_saved, b_saved = saved
        g_wf = torch.zeros_like(w) if grad_w is None else ste_gradient(grad_w, w_clip, w_saved)
        g_bf = None if grad_b is None else ste_gradient(grad_b, b_clip, b_saved)
        if not kernels.usable(g_wf):  # a gradient of another dtype or layout than the forward's tensors
            g_wf = g_wf.float().contiguous()
        if g_bf is not None and not kernels.usable(g_bf):
            g_bf = g_bf.float().contiguous()
        C = aux.numel() // 3
        g_w = torch.empty_like(w) if need[0] else None
        g_c = aux.new_empty(3, C)  # the three per-channel gradients, written side by side
        ptr, null = kernels.pointer, kernels.ffi.NULL
        gc = ptr(g_c)
        kernels.lib.lnn_q_fold_backward_f32(ptr(g_wf), ptr(g_bf), ptr(w), ptr(aux), C, w.numel() // C, ptr(g_w),
                                            gc if need[1] else null, gc + C if need[2] else null,
                                            gc + 2 * C if need[3] else null)
        g_b, g_gamma, g_beta = g_c.unbind(0)
        return g_w, g_b if need[1] else None, g_gamma if need[2] else None, g_beta if need[3] else None


def fold_kernel_takes(w: torch.Tensor, b: torch.Tensor | None, bn: nn.Module) -> bool:
    """Whether :class:`ParamParts` folds ``bn`` in C: every tensor :func:`kernels.usable`, one statistic per output
    channel (dim 0 of ``w``)."""
    return (w.dim() >= 1 and w.shape[0] == bn.running_var.numel()
            and all(kernels.usable(t) for t in (w, b, bn.weight, bn.bias, bn.running_mean, bn.running_var)
                    if t is not None))


class _FoldFakeQuant(torch.autograd.Function):
    """:func:`fold_batch_norm`, then :func:`fake_quant_weight_bias`, as one autograd node whose fold runs in C
    (:class:`ParamParts`): the training form of a conv or linear layer's parameters with its BatchNorm folded."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, b: torch.Tensor | None, gamma: torch.Tensor | None,  # type: ignore[override]
                beta: torch.Tensor | None, bn: nn.Module, n_x: int, bits: int,
                recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor, int]:
        ctx.parts = ParamParts()
        w_q, b_q, n_w = ctx.parts.forward(w, b, bn, n_x, bits, recipe)
        ctx.save_for_backward(*ctx.parts.tensors)
        return w_q, b_q, n_w

    @staticmethod
    def backward(ctx, grad_w: torch.Tensor, grad_b: torch.Tensor | None, _grad_n: None):  # type: ignore[override]
        grads = ctx.parts.backward(ctx.saved_tensors, grad_w, grad_b, ctx.needs_input_grad[:4])
        return (*grads, None, None, None, None)


def fold_fake_quant_weight_bias(w: torch.Tensor, b: torch.Tensor | None, bn: nn.Module, n_x: int, bits: int,
                                recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``fake_quant_weight_bias(*fold_batch_norm(w, b, bn), n_x, bits, recipe)``: the training form of a layer's
    parameters with a BatchNorm folded in; one autograd node with the fold in C where the kernels take every tensor
    (:mod:`~lnn_core.quant.kernels`), the torch chain otherwise. The same values either way."""
    if fold_kernel_takes(w, b, bn):
        return _FoldFakeQuant.apply(w, b, bn.weight, bn.bias, bn, n_x, bits, recipe)
    w_f, b_f = fold_batch_norm(w, b, bn)
    return fake_quant_weight_bias(w_f, b_f, n_x, bits, recipe)
