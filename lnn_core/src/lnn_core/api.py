"""The model-level entry points: ``init`` (stage 2, QAT) and ``constrain`` (stage 1)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .plugins import PluginHost
from .quant.config import ConstrainConfig, QuantConfig
from .quant.rewrite import prepare

__all__ = ["init", "constrain"]


def _target(model: nn.Module, target: str | None) -> str:
    """The target asked for; by default the one a prepared model was built for, else ``csk60xx``."""
    if target is not None:
        return target
    return getattr(getattr(model, "lnn", None), "target", None) or "csk60xx"


def init(model: nn.Module, target: str | None = None, config: QuantConfig | None = None, *,
         strict: bool | None = None, host: PluginHost | None = None, example_inputs: Any = None) -> nn.Module:
    """Return a quantization-aware copy of ``model`` for ``target``.

    Every supported op becomes int8 fake-quant with the target's arithmetic; in ``eval()`` the
    model computes exactly the chip's integers. Hardware limits are checked on the way and every
    violation is raised at once as :class:`~lnn_core.errors.HardwareLimitError`.

    :param model: a float model built from supported ops (or a model from :func:`constrain`, which keeps the
        target and config it was constrained with: passing another one raises ConfigError).
    :param target: a registered target id (default: the model's own if it comes from :func:`constrain`,
        else ``csk60xx``).
    :param config: bits/recipe/observers per layer type or path, strictness.
    :param strict: shortcut for ``config.strict``: unsupported ops become an error.
    :param host: the plugin host to use (default: a new one loading the ``lnn`` entry points).
    :param example_inputs: example tensor(s) for the model's forward (a tensor or a tuple). With them the limits that
        depend on shapes (a softmax row over 2048, softmax over a non-last ``dim``, BmmInt's right matrix) are
        reported here, with all other findings; without them, at the first forward. The float model runs once on
        them in eval mode without gradients; nothing in it changes.
    """
    host = host or PluginHost()
    if strict is not None and (config is None or isinstance(config, QuantConfig)):
        import attrs

        base = config or getattr(getattr(model, "lnn", None), "config", None) or QuantConfig()
        config = attrs.evolve(base, strict=strict)
    return prepare(model, stage="quant", host=host, target=_target(model, target), config=config,
                   example_inputs=example_inputs)


def constrain(model: nn.Module, target: str | None = None, config: ConstrainConfig | None = None, *,
              quant_config: QuantConfig | None = None, host: PluginHost | None = None) -> nn.Module:
    """Return a stage-1 copy of ``model``: float, with clamps on weights, biases and activations.

    Its state_dict keys are those of :func:`init`'s model, and its observers already gather the
    activation statistics, so the stage-1 checkpoint loads strictly into the stage-2 model and
    quantization-aware training starts from calibrated scales.

    :param config: the clamps (default: weights at 7 x mean|w|, biases and activations at +-8).
    """
    host = host or PluginHost()
    return prepare(model, stage="constrain", host=host, target=_target(model, target), config=quant_config,
                   constrain=config or ConstrainConfig())
