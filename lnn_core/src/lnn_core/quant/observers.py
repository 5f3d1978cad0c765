"""Statistics rules: how a quantizer turns what it has seen into a power-of-two exponent. Torch-free.

An *observer* is a small immutable rule object (the torch.ao split: the observer decides the scale, the
quantizer owns the state and applies it). The quantizer keeps the state (``running``, ``num_batches``
buffers, in the state_dict) and hands it to its observer; the observer keeps none, so one instance may
be shared and a model's state is all in its buffers. Configs never hold observers, only *factories*
(``EmaMax``, ``EmaThreshold.with_args(momentum=0.05)``): each quantizer calls its factory once.

The protocol (:class:`Observer`)::

    stateful: bool        # the exponent depends on `running` (False: on the data alone, or on nothing)
    needs_data: bool      # the exponent depends on the current tensor (weights: the floor rule)
    step(running, seen, m, bits, bounds) -> (running', n)   # one training batch with statistic m
    exponent(running, bits, bounds, m=None) -> n            # the frozen exponent: pure, writes nothing

``m`` is the batch statistic the quantizer measured: ``max|x|`` (``max(x, 0)`` for an op feeding a ReLU),
0.0 for an empty tensor; ``seen`` is the number of batches observed before this one. ``bounds`` clamps an
exponent into the recipe's range and under the op's cap (:class:`Bounds`). ``step`` returns the new running
value as a python float (float64: the training exponent is computed from it before the float32 buffer
rounds it) and the exponent this training step uses.

Rules provided (spec/int8-ops.md section 2, spec/int8-seq-ops.md section 1.6):

=====================  =====================================================================================
``EmaMax``              activations, default (linger 3 "MOM"): ``r`` = EMA of ``m`` from the first batch,
                        ``n = R(log2(2**(b-1) / r))`` in training and eval alike
``EmaThreshold``        activations of linger 1 recipes, and RNN weights: training uses the per-batch floor
                        rule ``floor(log2((2**(b-1)-1) / m))``, ``r`` = EMA of the snapped threshold
                        ``(2**(b-1)-1) / 2**n`` (initial 0), eval ``n = R(log2((2**(b-1)-1) / r))``
``FixedExponent(n)``    a fixed exponent whatever the data (sigmoid/tanh write int8 at 2**7)
``MaxFloor``            weights, default: the floor rule on the current tensor, never clips
=====================  =====================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import attrs

from ..errors import ConfigError

__all__ = ["Observer", "Bounds", "EmaMax", "EmaThreshold", "FixedExponent", "MaxFloor", "ObserverFactory",
           "floor_exponent", "round_exponent", "check_factory", "OBSERVERS_BY_RULE"]


def _r(v: float) -> int:
    return math.floor(v + 0.5)


def floor_exponent(m: float, bits: int, lo: int, hi: int) -> int:
    """The floor rule on ``m = max|v|``: ``n = floor(log2((2**(b-1) - 1) / m))``, clamped to ``[lo, hi]``.

    ``m * 2**n <= 2**(b-1) - 1``: the largest value is never clipped. ``m`` zero, NaN or infinite gets ``hi``.
    """
    if not m > 0.0 or not math.isfinite(m):
        return hi
    top = (1 << (bits - 1)) - 1
    n = math.floor(math.log2(top / m))
    while m * 2.0**n > top:  # guard the log2 against rounding at exact powers of two
        n -= 1
    while m * 2.0 ** (n + 1) <= top:
        n += 1
    return max(lo, min(hi, n))


def round_exponent(r: float, top: int) -> int | None:
    """The round rule ``R(log2(top / r))`` on a running value; None when ``r`` is not positive (nothing seen)."""
    if not r > 0.0:
        return None
    return _r(math.log2(top / r))


@attrs.frozen
class Bounds:
    """Where an exponent may lie: the recipe's inclusive range ``[lo, hi]`` and the op's cap (None: no cap)."""

    lo: int
    hi: int
    cap: int | None = None

    def clamp(self, n: int) -> int:
        n = max(self.lo, min(self.hi, n))
        return n if self.cap is None else min(n, self.cap)


@runtime_checkable
class Observer(Protocol):
    """What a quantizer asks of its statistics rule (see the module docstring)."""

    stateful: bool
    needs_data: bool

    def step(self, running: float, seen: int, m: float, bits: int, bounds: Bounds) -> tuple[float, int]: ...

    def exponent(self, running: float, bits: int, bounds: Bounds, m: float | None = None) -> int: ...


ObserverFactory = Callable[[], Observer]


@attrs.frozen
class _Factory:
    """``cls(**kwargs)`` on every call; compared by value, so two configs built alike are equal."""

    cls: type
    kwargs: tuple[tuple[str, Any], ...]

    def __call__(self) -> Any:
        return self.cls(**dict(self.kwargs))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs)
        return f"{self.cls.__name__}.with_args({args})"


class _WithArgs:
    @classmethod
    def with_args(cls, **kwargs: Any) -> _Factory:
        """A factory making ``cls(**kwargs)`` (the torch.ao ``with_args`` habit); arguments checked now."""
        cls(**kwargs)  # validate once, at config time
        return _Factory(cls, tuple(sorted(kwargs.items())))


def _momentum(inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigError(
            f"{type(inst).__name__}: momentum={value!r} is out of range",
            {"option": "momentum", "valid": "0 < momentum <= 1", "actual": repr(value)},
            "use 0.1 (the linger default)", option="momentum", value=value, valid="(0, 1]")


def _int_exponent(inst: Any, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not -64 <= value <= 64:
        raise ConfigError(
            f"{type(inst).__name__}: {attribute.name}={value!r} is not an integer exponent",
            {"option": attribute.name, "valid": "an int in [-64, 64]", "actual": repr(value)},
            "pass the power of two as its exponent, e.g. FixedExponent.with_args(n=7) for a scale of 2**7",
            option=attribute.name, value=value, valid="int in [-64, 64]")


@attrs.frozen
class EmaMax(_WithArgs):
    """EMA of ``max|x|`` from the first batch; ``n = R(log2(2**(b-1) / r))`` (linger 3 "MOM")."""

    momentum: float = attrs.field(default=0.1, validator=_momentum)
    stateful = True
    needs_data = False

    def step(self, running: float, seen: int, m: float, bits: int, bounds: Bounds) -> tuple[float, int]:
        r = m if seen == 0 else (1.0 - self.momentum) * running + self.momentum * m
        return r, self.exponent(r, bits, bounds)

    def exponent(self, running: float, bits: int, bounds: Bounds, m: float | None = None) -> int:
        n = round_exponent(running, 1 << (bits - 1))
        return bounds.clamp(bounds.hi if n is None else n)


@attrs.frozen
class EmaThreshold(_WithArgs):
    """Per-batch floor rule in training; EMA (initial 0) of the snapped threshold; round rule in eval (linger 1)."""

    momentum: float = attrs.field(default=0.1, validator=_momentum)
    stateful = True
    needs_data = False

    def step(self, running: float, seen: int, m: float, bits: int, bounds: Bounds) -> tuple[float, int]:
        top = (1 << (bits - 1)) - 1
        n = bounds.clamp(math.floor(math.log2(top / m)) if m > 0 else bounds.hi)
        return (1.0 - self.momentum) * running + self.momentum * (top / 2.0**n), n

    def exponent(self, running: float, bits: int, bounds: Bounds, m: float | None = None) -> int:
        n = round_exponent(running, (1 << (bits - 1)) - 1)
        return bounds.clamp(bounds.hi if n is None else n)


@attrs.frozen
class FixedExponent(_WithArgs):
    """Exponent ``n`` whatever the data (sigmoid/tanh: int8 at ``2**7``). The op's cap still applies."""

    n: int = attrs.field(default=7, validator=_int_exponent)
    stateful = False
    needs_data = False

    def step(self, running: float, seen: int, m: float, bits: int, bounds: Bounds) -> tuple[float, int]:
        return running, self.exponent(running, bits, bounds)

    def exponent(self, running: float, bits: int, bounds: Bounds, m: float | None = None) -> int:
        return self.n if bounds.cap is None else min(self.n, bounds.cap)


@attrs.frozen
class MaxFloor(_WithArgs):
    """The floor rule on the current tensor, ``floor(log2((2**(b-1)-1) / max|w|))``: weights, never clipped."""

    stateful = False
    needs_data = True

    def step(self, running: float, seen: int, m: float, bits: int, bounds: Bounds) -> tuple[float, int]:
        return running, self.exponent(running, bits, bounds, m)

    def exponent(self, running: float, bits: int, bounds: Bounds, m: float | None = None) -> int:
        if m is None:
            raise ValueError("MaxFloor needs the current tensor's max|v| (it keeps no statistics)")
        n = floor_exponent(m, bits, bounds.lo, bounds.hi)
        return n if bounds.cap is None else min(n, bounds.cap)


OBSERVERS_BY_RULE: Mapping[str, Callable[[float], Observer]] = MappingProxyType({
    "ema_max": lambda momentum: EmaMax(momentum),
    "ema_threshold": lambda momentum: EmaThreshold(momentum),
})
"""The recipes' named activation rules (``Recipe.act_rule``) as observers, given the recipe's momentum."""


def check_factory(owner: str, option: str, value: Any, *, data_ok: bool = True) -> Any:
    """Validate an observer factory from a config: None, or a callable making an :class:`Observer`.

    :param data_ok: whether an observer that needs the current tensor (:class:`MaxFloor`) fits here
        (weights yes, activations no: eval has no batch to measure).
    :raises ConfigError: naming ``owner.option``, the protocol and the actual value.
    """
    if value is None:
        return None
    hint = ("pass a factory: a class such as lnn.EmaMax, or EmaMax.with_args(momentum=0.05); "
            "not an instance and not a global")
    made: Any = None
    if callable(value) and (isinstance(value, type) or not isinstance(value, Observer)):
        try:
            made = value()
        except ConfigError:
            raise
        except Exception as exc:  # a factory that cannot be called without arguments
            raise ConfigError(
                f"{owner}: {option}={value!r} cannot be called without arguments",
                {"option": option, "cause": f"{type(exc).__name__}: {exc}"}, hint,
                option=option, value=value, valid="observer factory") from exc
    if not isinstance(made, Observer):
        raise ConfigError(
            f"{owner}: {option}={value!r} is not an observer factory",
            {"option": option, "rule": "a zero-argument callable returning an object with stateful, needs_data, "
             "step() and exponent()", "actual": f"an instance of {type(value).__name__}" if made is None else
             f"its call returned a {type(made).__name__}"}, hint, option=option, value=value,
            valid="observer factory")
    if made.needs_data and not data_ok:
        raise ConfigError(
            f"{owner}: {option}={value!r} needs the current tensor, which activations do not have in eval",
            {"option": option, "rule": "activation observers keep running statistics (or a fixed exponent)"},
            "use EmaMax, EmaThreshold or FixedExponent for activations; MaxFloor is a weight rule",
            option=option, value=value, valid="EmaMax, EmaThreshold, FixedExponent")
    return value

