"""The model-level entry points: ``init`` (stage 2, QAT) and ``constrain`` (stage 1)."""

from __future__ import annotations

from torch import nn

from .plugins import PluginHost
from .quant.config import ConstrainConfig, QuantConfig
from .quant.rewrite import prepare

__all__ = ["init", "constrain"]


def init(model: nn.Module, target: str = "csk60xx", config: QuantConfig | None = None, *,
         strict: bool | None = None, host: PluginHost | None = None) -> nn.Module:
    """Return a quantization-aware copy of ``model`` for ``target``.

    Every supported op becomes int8 fake-quant with the target's arithmetic; in ``eval()`` the
    model computes exactly the chip's integers. Hardware limits are checked on the way and every
    violation is raised at once as :class:`~lnn_core.errors.HardwareLimitError`.

    :param model: a float model built from supported ops (or a model from :func:`constrain`).
    :param target: a registered target id.
    :param config: bits/recipe per layer type or path, strictness.
    :param strict: shortcut for ``config.strict``: unsupported ops become an error.
    :param host: the plugin host to use (default: a new one loading the ``lnn`` entry points).
    """
    host = host or PluginHost()
    config = config or QuantConfig()
    if strict is not None and isinstance(config, QuantConfig):
        import attrs

        config = attrs.evolve(config, strict=strict)
    return prepare(model, stage="quant", host=host, target=target, config=config)


def constrain(model: nn.Module, target: str = "csk60xx", config: ConstrainConfig | None = None, *,
              quant_config: QuantConfig | None = None, host: PluginHost | None = None) -> nn.Module:
    """Return a stage-1 copy of ``model``: float, with clamps on weights, biases and activations.

    Its state_dict keys are those of :func:`init`'s model, and its observers already gather the
    activation statistics, so the stage-1 checkpoint loads strictly into the stage-2 model and
    quantization-aware training starts from calibrated scales.

    :param config: the clamps (default: weights at 7 x mean|w|, biases and activations at +-8).
    """
    host = host or PluginHost()
    return prepare(model, stage="constrain", host=host, target=target, config=quant_config,
                   constrain=config or ConstrainConfig())
