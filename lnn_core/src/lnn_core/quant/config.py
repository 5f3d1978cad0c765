"""Configuration objects for ``lnn.init`` and ``lnn.constrain`` (attrs, validated, frozen).

Bad values raise :class:`~lnn_core.errors.ConfigError` at construction, naming the option, the
valid values and the actual value. Torch-free.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ..errors import ConfigError
from .observers import check_factory
from .recipes import ACT_RULES, Recipe

__all__ = ["LayerConfig", "QuantConfig", "ConstrainConfig"]

_BITS = (4, 8, 16, 32)


def _bits(inst: Any, attribute: attrs.Attribute, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value not in _BITS:
        raise ConfigError(
            f"{type(inst).__name__}: {attribute.name}={value!r} is not a supported bit width",
            {"option": attribute.name, "valid": ", ".join(map(str, _BITS)), "actual": repr(value)},
            "use 8 (the chip's native width) unless the target documents another",
            option=attribute.name, value=value, valid=_BITS)


def _positive_or_none(inst: Any, attribute: attrs.Attribute, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(
            f"{type(inst).__name__}: {attribute.name}={value!r} must be a positive number or None",
            {"option": attribute.name, "actual": repr(value)},
            "pass None to switch this clamp off", option=attribute.name, value=value, valid="> 0 or None")


def _act_observer(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_factory(type(inst).__name__, attribute.name, value, data_ok=False)


def _weight_observer(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_factory(type(inst).__name__, attribute.name, value)


def _act_rule(inst: Any, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None and value not in ACT_RULES:
        raise ConfigError(
            f"{type(inst).__name__}: act_rule={value!r} is not a known activation rule",
            {"option": "act_rule", "valid": ", ".join(ACT_RULES), "actual": repr(value)},
            "use 'ema_max' (linger 3 MOM) or 'ema_threshold' (linger 1), or pass act_observer=<factory>",
            option="act_rule", value=value, valid=ACT_RULES)


def _with_observers(recipe: Recipe, act_observer: Any, weight_observer: Any) -> Recipe:
    changes = {}
    if act_observer is not None:
        changes["act_observer"] = act_observer
    if weight_observer is not None:
        changes["weight_observer"] = weight_observer
    return attrs.evolve(recipe, **changes) if changes else recipe


@attrs.frozen
class LayerConfig:
    """Overrides for some layers (by op type or module path).

    :param act_bits: output activation bits.
    :param weight_bits: weight bits.
    :param float: keep these layers in float (same as ``lnn.disable_quant``).
    :param act_observer: observer factory of these layers' output quantizers
        (:mod:`lnn_core.quant.observers`, e.g. ``FixedExponent.with_args(n=7)``).
    :param weight_observer: observer factory of these layers' weight quantizers (e.g. ``EmaThreshold``).
    """

    act_bits: int | None = attrs.field(default=None, validator=_bits)
    weight_bits: int | None = attrs.field(default=None, validator=_bits)
    float: bool = False
    act_observer: Any = attrs.field(default=None, validator=_act_observer)
    weight_observer: Any = attrs.field(default=None, validator=_weight_observer)

    def apply_to(self, recipe: Recipe) -> Recipe:
        """``recipe`` with this layer's observer factories (unchanged when it names none)."""
        return _with_observers(recipe, self.act_observer, self.weight_observer)


_LAYER_FIELDS = ("act_bits", "weight_bits", "float", "act_observer", "weight_observer")


def _layer_map(value: Mapping[Any, Any] | None) -> dict[str, LayerConfig]:
    out: dict[str, LayerConfig] = {}
    for key, cfg in (value or {}).items():
        if isinstance(key, type):
            key = key.__name__
        if isinstance(cfg, Mapping):
            try:
                cfg = LayerConfig(**cfg)
            except TypeError as exc:
                raise ConfigError(
                    f"QuantConfig: override for {key!r} has an unknown field",
                    {"cause": str(exc), "valid": ", ".join(_LAYER_FIELDS)},
                    "spell the fields as LayerConfig names them", option=str(key), value=cfg,
                    valid=_LAYER_FIELDS) from exc
        if not isinstance(cfg, LayerConfig):
            raise ConfigError(
                f"QuantConfig: override for {key!r} is a {type(cfg).__name__}, not a LayerConfig",
                {"actual": repr(cfg)}, "pass LayerConfig(...) or a dict of its fields",
                option=str(key), value=cfg, valid="LayerConfig")
        out[str(key)] = cfg
    return out


@attrs.frozen
class QuantConfig:
    """What ``lnn.init`` quantizes and how.

    :param recipe: recipe name; None takes the target's default recipe.
    :param act_bits: default activation bits.
    :param weight_bits: default weight bits.
    :param act_rule: override the recipe's activation statistics rule by name (``ema_max``/``ema_threshold``).
    :param act_observer: override it by an observer factory (``lnn.EmaMax.with_args(momentum=0.05)``);
        wins over ``act_rule``.
    :param weight_observer: observer factory for weights (default: the floor rule on the current weights).
    :param by_type: overrides per op type: keys are op ids (``builtin.Conv2d``) or float class names
        (``Conv2d``, ``Linear``).
    :param by_path: overrides per module path; keys may use shell wildcards (``backbone.*.conv``).
        A ``by_type`` key or ``by_path`` pattern that matches no quantized layer is a :class:`ConfigError`
        at ``lnn.init`` (:meth:`check_matches`).
    :param strict: unsupported ops on quantized tensors are errors instead of warnings.
    """

    recipe: str | None = None
    act_bits: int = attrs.field(default=8, validator=_bits)
    weight_bits: int = attrs.field(default=8, validator=_bits)
    act_rule: str | None = attrs.field(default=None, validator=_act_rule)
    by_type: dict[str, LayerConfig] = attrs.field(factory=dict, converter=_layer_map)
    by_path: dict[str, LayerConfig] = attrs.field(factory=dict, converter=_layer_map)
    strict: bool = False
    act_observer: Any = attrs.field(default=None, validator=_act_observer, kw_only=True)
    weight_observer: Any = attrs.field(default=None, validator=_weight_observer, kw_only=True)

    def apply_to(self, recipe: Recipe) -> Recipe:
        """``recipe`` with this config's rule choices (``act_rule``, ``act_observer``, ``weight_observer``)."""
        if self.act_rule is not None:
            recipe = attrs.evolve(recipe, act_rule=self.act_rule, act_observer=None)
        return _with_observers(recipe, self.act_observer, self.weight_observer)

    def for_layer(self, path: str, op_id: str, float_type: str | None) -> LayerConfig:
        """Resolve the settings of one layer: path overrides beat type overrides beat defaults.

        Observer factories are resolved the same way; the config-wide ones are already in the recipe
        (:meth:`apply_to`), so the result names only a layer's own.
        """
        act, wbits, flt = self.act_bits, self.weight_bits, False
        act_obs = weight_obs = None
        layers: list[LayerConfig] = []
        for key in _type_keys(op_id, float_type):
            if key in self.by_type:
                layers.append(self.by_type[key])
                break
        for pattern, cfg in self.by_path.items():
            if _path_matches(path, pattern):
                layers.append(cfg)
        for cfg in layers:
            act = cfg.act_bits if cfg.act_bits is not None else act
            wbits = cfg.weight_bits if cfg.weight_bits is not None else wbits
            flt = flt or cfg.float
            act_obs = cfg.act_observer if cfg.act_observer is not None else act_obs
            weight_obs = cfg.weight_observer if cfg.weight_observer is not None else weight_obs
        return LayerConfig(act_bits=act, weight_bits=wbits, float=flt, act_observer=act_obs,
                           weight_observer=weight_obs)

    def check_matches(self, layers: Iterable[tuple[str, str, str | None]], model: str | None = None) -> None:
        """Refuse a ``by_path`` pattern or ``by_type`` key that matches none of ``layers`` (a typo would
        otherwise leave the layers it meant with the defaults, silently).

        :param layers: ``(path, op id, float class name or None)`` of every layer :meth:`for_layer` was asked about.
        :param model: the model's class name, for the message.
        :raises ConfigError: naming the first pattern that matches nothing (``option``, ``value``; ``unmatched``
            lists all of them), the layers there are and the closest spelling.
        """
        layers = list(layers)
        paths = list(dict.fromkeys(p for p, _, _ in layers))
        types = sorted({k for _, op_id, ft in layers for k in _type_keys(op_id, ft)})
        bad_paths = [p for p in self.by_path if not any(_path_matches(path, p) for path in paths)]
        bad_types = [k for k in self.by_type if k not in types]
        if not bad_paths and not bad_types:
            return
        where = f" of model {model!r}" if model else ""
        unmatched = [("by_path", p) for p in bad_paths] + [("by_type", k) for k in bad_types]
        option, value = unmatched[0]
        others = ", ".join(f"{o}[{v!r}]" for o, v in unmatched[1:]) or None
        if option == "by_path":
            close = difflib.get_close_matches(value, paths, n=3, cutoff=0.6)
            inside = [p for p in paths if p.startswith(value + ".")]
            if inside:
                hint = f"{value!r} holds layers ({', '.join(inside[:3])}): match them with '{value}.*'"
            elif close:
                hint = f"did you mean {close[0]!r}? Paths are as model.named_modules() lists them"
            else:
                hint = "spell the path as model.named_modules() lists it (wildcards match: 'backbone.*.conv')"
            shown = close + [p for p in paths if p not in close]
            listed = ", ".join(shown[:8]) + (f", ... ({len(paths)} in all)" if len(shown) > 8 else "")
            raise ConfigError(
                f"QuantConfig: by_path pattern {value!r} matches no quantized layer{where}",
                {"layers": listed or "none", "also unmatched": others},
                hint, option=option, value=value, valid=tuple(paths), unmatched=unmatched)
        close = difflib.get_close_matches(value, types, n=1, cutoff=0.6)
        raise ConfigError(
            f"QuantConfig: by_type key {value!r} matches no quantized layer{where}",
            {"types": ", ".join(types) or "none", "also unmatched": others},
            f"did you mean {close[0]!r}?" if close else
            "keys are op ids ('builtin.Conv2d') or float class names ('Conv2d') of layers the model has; "
            "remove the entry or fix its spelling", option=option, value=value, valid=tuple(types),
            unmatched=unmatched)


def _type_keys(op_id: str, float_type: str | None) -> tuple[str, ...]:
    """The ``by_type`` keys that name a layer, in the order :meth:`QuantConfig.for_layer` tries them."""
    return tuple(k for k in (op_id, op_id.split(".", 1)[-1], float_type) if k)


def _path_matches(path: str, pattern: str) -> bool:
    return path == pattern or fnmatch.fnmatchcase(path, pattern)


@attrs.frozen
class ConstrainConfig:
    """Stage-1 clamps (spec section 6.2). Each may be None (off).

    :param weight_factor: clip weights at ``factor * mean|w|`` (never above ``max|w|``); default 7.
    :param bias: clip biases to ``[-bias, bias]``; default 8.
    :param activation: clip op outputs to ``[-activation, activation]``; default 8.
    """

    weight_factor: float | None = attrs.field(default=7.0, validator=_positive_or_none)
    bias: float | None = attrs.field(default=8.0, validator=_positive_or_none)
    activation: float | None = attrs.field(default=8.0, validator=_positive_or_none)
