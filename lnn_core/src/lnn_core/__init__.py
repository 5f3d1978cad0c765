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

The hook specifications are in :mod:`lnn_core.hookspecs`; ``lnn plugins`` lists what is installed.
Functions needing torch (``init``, ``constrain``, ...) import it on first use, so the packing and
simulation side runs without torch.
"""

from __future__ import annotations

from typing import Any

import pluggy

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
from .plugins import PluginHost
from .quant.config import ConstrainConfig, LayerConfig, QuantConfig

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("lnn")

__all__ = [
    "hookimpl",
    "init",
    "constrain",
    "disable_quant",
    "export",
    "to_ir",
    "verify",
    "check",
    "QuantConfig",
    "LayerConfig",
    "ConstrainConfig",
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

_LAZY = {
    "init": ("lnn_core.api", "init"),
    "constrain": ("lnn_core.api", "constrain"),
    "disable_quant": ("lnn_core.quant.rewrite", "disable_quant"),
    "export": ("lnn_core.exporter", "export"),
    "to_ir": ("lnn_core.exporter", "to_ir"),
    "verify": ("lnn_core.verifier", "verify"),
    "check": ("lnn_core.verifier", "check"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'lnn_core' has no attribute {name!r}")
