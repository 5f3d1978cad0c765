"""Quantization recipes: named, validated sets of quantizer choices. Torch-free (pure data).

A recipe is chosen by a target (the CSK60xx target uses ``pow2-sym-halfup``) or named in a
:class:`~lnn_core.quant.config.QuantConfig`. Recipes are registered through
``lnn_register_recipes``; the core registers the two below.

Activation statistics rules (``act_rule``), spec/int8-ops.md section 2:

``ema_max`` (default; linger 3 "MOM")
    Per training step ``m = max|x|`` (``max(x, 0)`` when the op feeds a ReLU). The running value
    starts at the first batch's ``m`` and then follows ``r <- (1 - momentum) * r + momentum * m``.
    The exponent is ``n = R(log2(2**(b-1) / r))`` clamped to ``act_exponent_range``; training and
    eval use the same rule, so the exponent used in training is the one frozen in eval.

``ema_threshold`` (linger 1)
    Training uses the per-batch exponent ``n_b = floor(log2((2**(b-1)-1) / m))`` (never clips);
    the running value is the EMA of the snapped threshold ``(2**(b-1)-1) / 2**n_b`` (initial 0);
    eval uses ``n = R(log2((2**(b-1)-1) / r))``.

The rules are observers (:mod:`lnn_core.quant.observers`); ``act_observer`` replaces the named
``act_rule`` by any observer factory (a fixed exponent, for instance).

Weights use the floor rule ``n_w = floor(log2((2**(b-1)-1) / max|w|))`` (never clips) unless
``weight_observer`` names another rule (RNN weights: ``EmaThreshold``, an EMA kept by the op).
Bias is quantized to ``bias_bits`` at ``n_x + n_w`` with half-up rounding and saturation.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..errors import ConfigError
from .observers import OBSERVERS_BY_RULE, MaxFloor, Observer, check_factory

__all__ = ["Recipe", "ACT_RULES", "DEFAULT_RECIPES"]

ACT_RULES = tuple(OBSERVERS_BY_RULE)


def _check_rule(inst: Recipe, attribute: attrs.Attribute, value: str) -> None:
    if value not in ACT_RULES:
        raise ConfigError(
            f"recipe {inst.name!r}: unknown activation rule {value!r}",
            {"option": "act_rule", "valid": ", ".join(ACT_RULES), "actual": value},
            "use 'ema_max' (linger 3 MOM) or 'ema_threshold' (linger 1)",
            option="act_rule", value=value, valid=ACT_RULES)


def _check_momentum(inst: Recipe, attribute: attrs.Attribute, value: float) -> None:
    if not (0.0 < value <= 1.0):
        raise ConfigError(
            f"recipe {inst.name!r}: momentum {value!r} is out of range",
            {"option": "momentum", "valid": "0 < momentum <= 1", "actual": value},
            "use 0.1 (the linger default)", option="momentum", value=value, valid="(0, 1]")


@attrs.frozen
class Recipe:
    """Per-tensor symmetric power-of-two quantization with half-up rounding and saturation.

    :param name: registry name.
    :param act_rule: ``ema_max`` or ``ema_threshold`` (see module docstring).
    :param momentum: EMA momentum of the activation statistics.
    :param act_exponent_range: inclusive bounds of activation exponents.
    :param weight_exponent_range: inclusive bounds of weight exponents.
    :param bias_bits: width of the integer bias.
    :param act_bits_allowed / weight_bits_allowed: bit widths a config may ask for.
    :param act_observer: observer factory for activations; None: the named ``act_rule`` with ``momentum``.
    :param weight_observer: observer factory for weights; None: the floor rule (:class:`MaxFloor`).
    """

    name: str
    act_rule: str = attrs.field(default="ema_max", validator=_check_rule)
    momentum: float = attrs.field(default=0.1, validator=_check_momentum)
    act_exponent_range: tuple[int, int] = (0, 23)
    weight_exponent_range: tuple[int, int] = (-8, 30)
    bias_bits: int = 32
    act_bits_allowed: tuple[int, ...] = (8, 16)
    weight_bits_allowed: tuple[int, ...] = (4, 8)
    description: str = ""
    act_observer: Any = attrs.field(default=None, validator=lambda i, a, v: check_factory(
        f"recipe {i.name!r}", a.name, v, data_ok=False), kw_only=True)
    weight_observer: Any = attrs.field(default=None, validator=lambda i, a, v: check_factory(
        f"recipe {i.name!r}", a.name, v), kw_only=True)

    def make_act_observer(self) -> Observer:
        """A new observer for one activation quantizer."""
        if self.act_observer is not None:
            return self.act_observer()
        return OBSERVERS_BY_RULE[self.act_rule](self.momentum)

    def make_weight_observer(self) -> Observer:
        """A new observer for one weight quantizer."""
        return self.weight_observer() if self.weight_observer is not None else MaxFloor()


DEFAULT_RECIPES = (
    Recipe(
        "pow2-sym-halfup",
        description="int8 per-tensor symmetric power-of-two, half-up rounding, EMA of max|x| (linger 3 MOM)",
    ),
    Recipe(
        "pow2-sym-halfup-l1",
        act_rule="ema_threshold",
        description="as pow2-sym-halfup, with linger 1 statistics (per-batch exponent in training)",
    ),
)
