"""Operator families: what an op package registers through ``lnn_register_ops``. Torch-free.

An :class:`OpFamily` says which float spellings it claims (module types, functions, tensor
methods) and how ``lnn.init`` / ``lnn.constrain`` handle them:

``compute``
    replaced by a quantized module with its own output scale (conv, linear, add, cat, ...).
``stateless``
    replaced by a quantized module whose output keeps the input scale (ReLU6/clamp, avg-pool).
``passthrough``
    left as it is: the op is exact on the integer grid and the output keeps the input scale
    (ReLU, max-pool, reshape/view/flatten/transpose/permute/squeeze/unsqueeze, dropout).
``lowered``
    rewritten, before and while the model is traced, into an exactly float-equivalent graph of other ops
    (``nn.MultiheadAttention`` into Linears, transposes, ``torch.bmm`` and softmax). ``lower`` does it: for a
    module type, ``lower(module)`` returns the replacement module (kept at the same path and traced through), or a
    list of ``(problem, hint)`` pairs when the module's configuration has no lowering (it then stays a float
    module and is reported); for a function, ``lower(*args, **kwargs)`` is called with the traced values and
    computes the result from other ops. ``refusals(target, *args, **kwargs)`` (optional) returns the
    ``(problem, hint)`` pairs of one call (a mask argument, ...): that call is then kept whole, in float, and
    reported like an unsupported op.

``build(ctx)`` returns ``(module, tensor_inputs)``: the module to call and the graph values it is
called with, in order (``ctx`` is a :class:`lnn_core.quant.rewrite.BuildContext`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["OpFamily", "KINDS"]

KINDS = ("compute", "stateless", "passthrough", "lowered")


def _kind(inst: OpFamily, attribute: attrs.Attribute, value: str) -> None:
    if value not in KINDS:
        raise ValueError(f"op family {inst.id!r}: kind must be one of {KINDS}, not {value!r}")


def _id(inst: OpFamily, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or "." not in value:
        raise ValueError(f"op family id {value!r} must be namespaced, e.g. 'acme.GatedConv1d'")


@attrs.frozen
class OpFamily:
    """One operator family.

    :param id: namespaced id, ``builtin.Conv2d`` or ``acme.HardSwish``.
    :param kind: ``compute``, ``stateless``, ``passthrough`` or ``lowered``.
    :param modules: float ``nn.Module`` types it replaces.
    :param functions: functions it replaces (``torch.add``, ``operator.add``, ``F.conv2d``).
    :param methods: tensor method names it replaces (``"add"``, ``"transpose"``).
    :param build: ``build(ctx) -> (module, tensor_inputs)`` for compute/stateless families.
    :param relu: the op is a ReLU (its producer then observes only the positive range).
    :param fuses_bn: ids of the ``foldable`` families (BatchNorm) that are folded into this op when they
        directly follow it. A BatchNorm scales axis 1: list only those whose input has this op's output
        channels on axis 1 whatever the input (``builtin.Conv2d`` lists ``builtin.BatchNorm2d``; a Linear
        lists none, its features are on the last axis, axis 1 only for rank-2 inputs).
    :param foldable: this op (BatchNorm) can be folded into a preceding ``fuses_bn`` op.
    :param describe: ``describe(ctx) -> attrs`` for passthrough ops that hardware rules judge.
    :param description: one line for ``lnn plugins`` and the docs.
    :param lower: for ``lowered`` families: the rewrite into other ops (see the module docstring).
    :param refusals: for ``lowered`` families: ``refusals(target, *args, **kwargs) -> [(problem, hint), ...]``,
        the reasons one call cannot be lowered (``target`` is the replacement module or the function).
    """

    id: str = attrs.field(validator=_id)
    kind: str = attrs.field(validator=_kind)
    modules: tuple[type, ...] = ()
    functions: tuple[Any, ...] = ()
    methods: tuple[str, ...] = ()
    build: Callable[[Any], tuple[Any, list[Any]]] | None = None
    relu: bool = False
    fuses_bn: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    foldable: bool = False
    describe: Callable[[Any], dict[str, Any]] | None = None
    description: str = ""
    lower: Callable[..., Any] | None = None
    refusals: Callable[..., list[tuple[str, str]]] | None = None

    def __attrs_post_init__(self) -> None:
        if self.kind == "lowered":
            if self.lower is None:
                raise ValueError(f"op family {self.id!r} (lowered) needs a lower function")
            return
        if self.kind != "passthrough" and self.build is None:
            raise ValueError(f"op family {self.id!r} ({self.kind}) needs a build function")
