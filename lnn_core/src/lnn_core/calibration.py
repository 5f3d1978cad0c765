"""``lnn.calibrate``: fill the activation observers of a prepared model from sample data, and the check that
refuses to export, verify or pack a model whose observers never saw any.

A quantizer's ``num_batches`` buffer (in the state_dict since the first release) counts the batches it
observed; it is the "saw data" flag. A model trained with QAT, calibrated here, or loaded from the checkpoint
of such a model has it above zero; a freshly prepared model has it at zero, and its eval exponents are the
recipe's upper bound (``2**-23`` scales: every activation rounds to zero). Old checkpoints carry the same
buffer, so no conversion is needed: a checkpoint saved after training or calibration counts as calibrated, one
saved from an untouched ``lnn.init`` model does not (its scales are meaningless), whatever its age.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, ExportError
from .quant.quantizers import ActQuantizer, WeightQuantizer

__all__ = ["calibrate", "uncalibrated_modules", "require_calibrated", "UncalibratedError", "UncalibratedWarning"]

#: how many module paths the error and the warning name
SHOWN = 5


class UncalibratedError(ExportError):
    """A model whose activation quantizers never saw data is exported, verified or packed.

    Attributes: ``modules`` (every uncalibrated quantizer's module path), ``rule_id``, ``limit``, ``actual``,
    ``node`` (None), ``dialect``.
    """


class UncalibratedWarning(UserWarning):
    """The same finding as :class:`UncalibratedError` when the caller allowed uncalibrated models."""


def _prepared(model: Any, what: str) -> None:
    from .quant.rewrite import LnnInfo

    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "lnn", None), LnnInfo):
        raise ConfigError(
            f"{what} needs a model prepared by lnn.init or lnn.constrain, got {type(model).__name__}",
            {"actual": type(model).__name__}, "call model = lnn.init(model) first, then lnn.calibrate(model, batches)",
            option="model", value=type(model).__name__, valid="a model from lnn.init or lnn.constrain")


def uncalibrated_modules(model: nn.Module) -> list[str]:
    """Module paths of the activation quantizers that decide their scale from data and never saw any.

    A quantizer counts as calibrated once it observed a batch (``num_batches > 0``, what training and
    :func:`calibrate` do and checkpoints keep) or holds a running statistic set by hand. Fixed-exponent
    quantizers (sigmoid/tanh outputs) and quantizers switched off (``quant`` False) need no data.
    """
    found = []
    for path, m in model.named_modules():
        if not isinstance(m, ActQuantizer) or not m.quant or not m.observer.stateful:
            continue
        if int(m.num_batches) == 0 and not float(m.running) > 0.0:
            found.append(path)
    return found


def require_calibrated(model: nn.Module, action: str, *, allow: bool = False, dialect: str = "ir") -> None:
    """Raise :class:`UncalibratedError` (or warn, with ``allow``) when activation quantizers never saw data.

    :param action: what is being done, for the message (``export``, ``verify``, ``pack``).
    """
    missing = uncalibrated_modules(model)
    if not missing:
        return
    total = sum(1 for m in model.modules() if isinstance(m, ActQuantizer) and m.quant and m.observer.stateful)
    shown = ", ".join(missing[:SHOWN]) + (f" (+{len(missing) - SHOWN} more)" if len(missing) > SHOWN else "")
    headline = (f"{action}: {len(missing)} of {total} activation quantizers of {type(model).__name__} never saw "
                f"data: {shown}")
    rule = "every activation scale comes from observed data (QAT training, lnn.calibrate, or a checkpoint of either)"
    hint = ("run lnn.calibrate(model, batches) on a few hundred samples (CLI: --calibrate data.npy), "
            "or load the checkpoint of the trained model")
    if allow:
        warnings.warn(f"{headline}; its scales are the untrained defaults (2**-{_hi(model)}) and every activation "
                      "rounds to zero: the exported integers are meaningless", UncalibratedWarning, stacklevel=3)
        return
    raise UncalibratedError(headline, {"rule": rule, "limit": ">= 1 observed batch per quantizer",
                                       "actual": f"0 batches ({len(missing)} quantizers)"},
                            hint + "; allow_uncalibrated=True (CLI: --allow-uncalibrated) only to test the plumbing",
                            modules=missing, rule_id="calibrated", limit=1, actual=0, node=None, dialect=dialect)


def _hi(model: nn.Module) -> int:
    return max((m.exp_hi for m in model.modules() if isinstance(m, ActQuantizer)), default=0)


def _as_args(batch: Any) -> tuple[Any, ...]:
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def calibrate(model: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """Run ``model`` on ``batches`` so that its activation observers see the data; change nothing else.

    The model runs in training mode (the mode in which observers update) with autograd off; afterwards every
    parameter and every buffer that is not quantizer state (BatchNorm statistics included) holds what it held
    before, and the model is back in the mode it was in. The observers apply their own rule (the default
    ``EmaMax``: an exponential moving average of ``max|x|`` from the first batch), so calibration is the start
    of QAT without the weight updates; calibrate again to add more batches.

    :param model: a model from :func:`lnn_core.init` (or :func:`lnn_core.constrain`).
    :param batches: an iterable of inputs: each a tensor, or a tuple/list of tensors (one per ``forward()``
        argument), e.g. a ``DataLoader`` of inputs or ``[x[i:i + 32] for i in range(0, len(x), 32)]``.
    :return: ``model`` itself, calibrated.
    :raises ConfigError: for a model that lnn did not prepare, or no batch at all.
    """
    from .exporter import ExampleRunner

    _prepared(model, "lnn.calibrate")
    quantizer_state = {id(t) for m in model.modules() if isinstance(m, (ActQuantizer, WeightQuantizer))
                       for t in m.buffers(recurse=False)}
    kept = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if id(v) not in quantizer_state}
    was_training = model.training
    seen = 0
    try:
        model.train()
        with torch.no_grad():
            for batch in batches:
                ExampleRunner(model).run(*_as_args(batch))  # a wrong shape: a ConfigError naming the module
                seen += 1
    finally:
        model.train(was_training)
        own = model.state_dict(keep_vars=True)
        with torch.no_grad():
            for k, v in kept.items():
                own[k].copy_(v)
    if seen == 0:
        raise ConfigError("lnn.calibrate: no batch to calibrate on", {"batches": "empty"},
                          "pass an iterable of input tensors (or tuples of them), e.g. [x[:32], x[32:64]]",
                          option="batches", value="empty", valid="at least one batch")
    return model
