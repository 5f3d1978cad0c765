"""The lnn error hierarchy.

Every error a user can cause reads the same way (STYLE-ANCHORS section 5):

1. a first line that names the subject, what failed and where;
2. indented ``key: value`` lines with the rule, the limit, the actual value, the cause;
3. a last line ``hint: ...`` with one concrete next step.

The same facts are kept as attributes (``.subject``, ``.rule_id``, ``.limit``, ``.actual``,
``.path``, ``.dist``, ...) so that callers and tests read fields, never parse text.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "LnnError",
    "ConfigError",
    "HardwareLimitError",
    "ModelFileError",
    "PluginLoadError",
    "RegistryError",
    "SimulatorError",
    "UnsupportedOpError",
    "ExportError",
    "TraceError",
    "format_message",
]


def format_message(headline: str, details: dict[str, Any] | None = None, hint: str | None = None) -> str:
    """Build a message in the house shape: headline, aligned ``key: value`` lines, ``hint:`` line."""
    lines = [headline]
    items = [(k, v) for k, v in (details or {}).items() if v is not None]
    if hint:
        items.append(("hint", hint))
    if items:
        width = max(len(k) for k, _ in items) + 1
        for key, value in items:
            text = str(value).splitlines() or [""]
            lines.append(f"  {key + ':':<{width}} {text[0]}")
            lines.extend(f"  {'':<{width}} {more}" for more in text[1:])
    return "\n".join(lines)


class LnnError(Exception):
    """Base class of every error lnn raises on purpose.

    :param headline: the first line: subject, what failed, where.
    :param details: ordered ``key -> value`` facts printed as indented lines (None values skipped).
    :param hint: one concrete next step.
    :param fields: attributes kept on the exception for programmatic use.
    """

    def __init__(
        self,
        headline: str,
        details: dict[str, Any] | None = None,
        hint: str | None = None,
        **fields: Any,
    ) -> None:
        self.headline = headline
        self.details = dict(details or {})
        self.hint = hint
        for key, value in fields.items():
            setattr(self, key, value)
        self.fields = fields
        super().__init__(format_message(headline, self.details, hint))

    def __str__(self) -> str:  # never repr-quoted (the Vela mistake)
        return str(self.args[0]) if self.args else self.headline


class ConfigError(LnnError, ValueError):
    """A configuration value is invalid (bad bit width, unknown recipe, unknown target, ...).

    Attributes: ``option``, ``value``, ``valid``.
    """


class HardwareLimitError(LnnError):
    """One or more ops break a hardware limit of the target.

    Attributes: ``violations`` (list of :class:`lnn_core.rules.Violation`), ``target``; for
    convenience the first violation's ``op_name``, ``rule_id``, ``limit`` and ``actual``.
    """


class ModelFileError(LnnError):
    """A model file (ONNX, model.bin, checkpoint) cannot be read. Attributes: ``path``, ``node``."""


class PluginLoadError(LnnError):
    """A plugin could not be imported or registered.

    Attributes: ``plugin`` (entry-point name), ``dist``, ``version``, ``entry_point``, ``cause``.
    """


class RegistryError(LnnError):
    """A registration conflicts with an earlier one, or names something unknown.

    Attributes: ``kind``, ``key``, ``first``, ``second`` (the two sources).
    """


class SimulatorError(LnnError):
    """The int8 simulator refused its input or failed. Attributes: ``status``, ``op_name``."""


class UnsupportedOpError(LnnError):
    """A float op runs on quantized data and the toolkit has no quantized form of it.

    Attributes: ``op``, ``call_site``, ``ops`` (all such ops when raised in strict mode).
    """


class ExportError(LnnError):
    """A model cannot be written in the requested form. Attributes: ``node``, ``dialect``."""


class TraceError(LnnError):
    """The model could not be traced into a graph. Attributes: ``module``, ``cause``."""
