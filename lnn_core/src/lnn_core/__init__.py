"""lnn: quantization-aware training and deployment of PyTorch models on ListenAI CSK60xx chips.

Typical use::

    import lnn_core as lnn
    model = lnn.init(MyNet(), target="csk60xx")   # every supported op becomes int8 fake-quant
    ...train as usual...; model.eval()              # eval gives exactly the chip's integers

Writing a plugin: a plugin is a module with ``@hookimpl`` functions, published through the
``lnn`` entry-point group of its distribution::

    # pyproject.toml of lnn-ops-acme
    [project.entry-points.lnn]
    acme = "lnn_ops_acme.plugin"

    # lnn_ops_acme/plugin.py
    from lnn_core import hookimpl
    from lnn_core.ops import OpFamily

    @hookimpl
    def lnn_register_ops(registry):
        registry.add(OpFamily(id="acme.HardSwish", kind="compute", modules=(HardSwish,), build=build))

    @hookimpl
    def lnn_op_rules(op_type, target):
        return [check_hardswish_range] if op_type == "acme.HardSwish" and target == "csk60xx" else None

    @hookimpl
    def lnn_register_target_ops(registry):  # the op's IR node on a target: as the backend registers its own
        from lnn_backend_csk60xx.ops import OpDef
        registry.add("csk60xx", OpDef("AcmeHardSwishInt", "acme", (1, 1), infer, kernel=hardswish_kernel))

The hook specifications are in :mod:`lnn_core.hookspecs`; ``lnn plugins`` lists what is installed.
What a hook returns is checked where lnn receives it: a plugin that raises, returns the wrong type or
registers something invalid is skipped by name (a warning, ``host.failed``, ``LNN_DISABLE_PLUGINS``),
never a crash of the command. ``docs/adding-an-op.md`` walks one op through every place it lives.
Plugin modules should import nothing heavy at module level: import torch (and numpy, onnx) inside the
hook that needs it, so that ``lnn --help``, ``lnn pack`` and ``lnn run`` start without torch.

``import lnn_core`` itself imports only pluggy: every other name here (``init``, ``export``, ``PluginHost``,
the errors, ...) is imported on first access (PEP 562), and those needing torch import it then.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and IDEs
    from .api import constrain, init
    from .calibration import UncalibratedError, UncalibratedWarning, calibrate
    from .errors import (
        ConfigError,
        ExportError,
        HardwareLimitError,
        LnnError,
        ModelFileError,
        PluginLoadError,
        RegistryError,
        SimulatorError,
        TraceError,
        UnsupportedOpError,
    )
    from .exporter import export, to_ir
    from .plugins import PluginHost
    from .quant.config import ConstrainConfig, LayerConfig, QuantConfig
    from .quant.observers import EmaMax, EmaThreshold, FixedExponent, MaxFloor
    from .quant.rewrite import disable_quant
    from .verifier import check, verify

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("lnn")

__all__ = [
    "hookimpl",
    "init",
    "constrain",
    "calibrate",
    "UncalibratedError",
    "UncalibratedWarning",
    "disable_quant",
    "analyse",
    "export",
    "to_ir",
    "verify",
    "check",
    "QuantConfig",
    "LayerConfig",
    "ConstrainConfig",
    "EmaMax",
    "EmaThreshold",
    "FixedExponent",
    "MaxFloor",
    "PluginHost",
    "LnnError",
    "ConfigError",
    "ExportError",
    "HardwareLimitError",
    "ModelFileError",
    "PluginLoadError",
    "RegistryError",
    "SimulatorError",
    "TraceError",
    "UnsupportedOpError",
]

# public name -> the module that defines it (imported on first access)
_LAZY = {
    "init": "lnn_core.api",
    "constrain": "lnn_core.api",
    **{name: "lnn_core.calibration" for name in ("calibrate", "UncalibratedError", "UncalibratedWarning")},
    "disable_quant": "lnn_core.quant.rewrite",
    "export": "lnn_core.exporter",
    "to_ir": "lnn_core.exporter",
    "verify": "lnn_core.verifier",
    "check": "lnn_core.verifier",
    "QuantConfig": "lnn_core.quant.config",
    "LayerConfig": "lnn_core.quant.config",
    "ConstrainConfig": "lnn_core.quant.config",
    **{name: "lnn_core.quant.observers" for name in ("EmaMax", "EmaThreshold", "FixedExponent", "MaxFloor")},
    "PluginHost": "lnn_core.plugins",
    **{name: "lnn_core.errors" for name in (
        "LnnError", "ConfigError", "ExportError", "HardwareLimitError", "ModelFileError", "PluginLoadError",
        "RegistryError", "SimulatorError", "TraceError", "UnsupportedOpError")},
}


#: submodules reachable as attributes (``lnn.analyse.weights(model)``), imported on first access
_SUBMODULES = ("analyse",)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # the import binds it as an attribute too
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lnn_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is an ordinary attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
