"""Registrar objects handed to the ``lnn_register_*`` hooks.

Every registry lives on a :class:`~lnn_core.plugins.PluginHost` instance (never at module level).
Each registration remembers which plugin made it, so that a duplicate names both sources.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import attrs

from .errors import RegistryError

__all__ = [
    "Registry",
    "OpRegistry",
    "RecipeRegistry",
    "TargetRegistry",
    "ExporterRegistry",
    "SimKernelRegistry",
    "TargetOpRegistry",
    "CommandRegistry",
    "Command",
]

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> item table that refuses duplicates and records the registering plugin."""

    kind = "item"

    def __init__(self) -> None:
        self._items: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        self.source = "<unknown>"  # set by the host around each plugin's registration call

    def _add(self, key: str, item: T) -> T:
        if not isinstance(key, str) or not key:
            raise RegistryError(
                f"plugin {self.source} registers a {self.kind} without a name",
                {"got": repr(key)}, "pass a non-empty string id", kind=self.kind, key=key,
                first=self.source, second=None)
        if key in self._items:
            raise RegistryError(
                f"{self.kind} {key!r} is registered twice",
                {"first": self._sources[key], "second": self.source},
                "uninstall one of the two, or block one with LNN_DISABLE_PLUGINS",
                kind=self.kind, key=key, first=self._sources[key], second=self.source)
        self._items[key] = item
        self._sources[key] = self.source
        return item

    def get(self, key: str, default: Any = None) -> T | Any:
        return self._items.get(key, default)

    def __getitem__(self, key: str) -> T:
        try:
            return self._items[key]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise RegistryError(
                f"unknown {self.kind} {key!r}", {"registered": known},
                f"check the spelling, or install the plugin that provides {key!r} (`lnn plugins` lists them)",
                kind=self.kind, key=key, first=None, second=None) from None

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def source_of(self, key: str) -> str:
        return self._sources[key]


class OpRegistry(Registry[Any]):
    """Operator families (:class:`lnn_core.ops.OpFamily`), keyed by namespaced id ``builtin.Conv2d``.

    Besides the id table, the registry indexes which float module type, function or tensor
    method each family claims; two families claiming the same one is an error naming both.
    """

    kind = "op family"

    def __init__(self) -> None:
        super().__init__()
        self.by_module: dict[type, Any] = {}
        self.by_function: dict[Any, Any] = {}
        self.by_method: dict[str, Any] = {}
        self.by_ir_op: dict[str, Any] = {}

    def add(self, family: Any) -> Any:
        self._add(family.id, family)
        for table, keys, what in (
            (self.by_module, family.modules, "module"),
            (self.by_function, family.functions, "function"),
            (self.by_method, family.methods, "tensor method"),
        ):
            for key in keys:
                if table.get(key) is family:  # the same object spelled twice (F.relu_ is torch.relu_)
                    continue
                if key in table:
                    other = table[key]
                    raise RegistryError(
                        f"{what} {getattr(key, '__qualname__', key)!r} is claimed by two op families",
                        {"first": f"{other.id} ({self._sources[other.id]})",
                         "second": f"{family.id} ({self.source})"},
                        "uninstall one of the two op packages, or block one with LNN_DISABLE_PLUGINS",
                        kind=self.kind, key=str(key), first=self._sources[other.id], second=self.source)
                table[key] = family
        return family


class RecipeRegistry(Registry[Any]):
    """Quantization recipes (:class:`lnn_core.quant.recipes.Recipe`) by name."""

    kind = "quantization recipe"

    def add(self, recipe: Any) -> Any:
        return self._add(recipe.name, recipe)


class TargetRegistry(Registry[Any]):
    """Deployment targets (:class:`lnn_core.targets.Target`) by id."""

    kind = "target"

    def add(self, target: Any) -> Any:
        return self._add(target.id, target)


class ExporterRegistry(Registry[Any]):
    """ONNX dialect writers and readers, and per-op node writers for each dialect."""

    kind = "exporter"

    def __init__(self) -> None:
        super().__init__()
        self.readers: Registry[Callable[..., Any]] = Registry()
        self.readers.kind = "dialect reader"
        self.node_writers: Registry[Callable[..., Any]] = Registry()
        self.node_writers.kind = "node writer"

    def add_writer(self, dialect: str, writer: Callable[..., Any]) -> Callable[..., Any]:
        return self._add(dialect, writer)

    def add_reader(self, dialect: str, reader: Callable[..., Any]) -> Callable[..., Any]:
        self.readers.source = self.source
        return self.readers._add(dialect, reader)

    def add_node_writer(self, dialect: str, op_type: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        self.node_writers.source = self.source
        return self.node_writers._add(f"{dialect}:{op_type}", fn)

    def node_writer(self, dialect: str, op_type: str) -> Callable[..., Any] | None:
        return self.node_writers.get(f"{dialect}:{op_type}")


class SimKernelRegistry(Registry[Callable[..., Any]]):
    """Simulator kernels contributed by plugins, keyed by IR op type."""

    kind = "simulator kernel"

    def add(self, op_type: str, kernel: Callable[..., Any]) -> Callable[..., Any]:
        return self._add(op_type, kernel)


class TargetOpRegistry(Registry[Any]):
    """What a target's backend knows per IR op type, and the package formats it writes.

    The core stores these objects without looking inside; the target's backend defines their type
    (for the CSK60xx: ``lnn_backend_csk60xx.ops.OpDef`` and ``lnn_backend_csk60xx.formats.PackageFormat``)
    and reads them back with :meth:`ops` and :meth:`formats`. Built-in ops are registered through this
    registry exactly like a third-party package's.
    """

    kind = "target op"

    def __init__(self) -> None:
        super().__init__()
        self.package_formats: Registry[Any] = Registry()
        self.package_formats.kind = "package format"

    def add(self, target: str, op: Any) -> Any:
        """Register ``op`` (an object with an ``op_type``) for ``target``; a second op of the same type is refused."""
        return self._add(f"{target}:{getattr(op, 'op_type', '')}", op)

    def add_format(self, target: str, fmt: Any) -> Any:
        """Register a package format (an object with a ``name``) for ``target``."""
        self.package_formats.source = self.source
        return self.package_formats._add(f"{target}:{getattr(fmt, 'name', '')}", fmt)

    def ops(self, target: str) -> dict[str, Any]:
        """IR op type -> op object, for ``target``, in registration order."""
        prefix = f"{target}:"
        return {k[len(prefix):]: v for k, v in self.items() if k.startswith(prefix)}

    def formats(self, target: str) -> dict[str, Any]:
        """Format name -> package format, for ``target``, in registration order."""
        prefix = f"{target}:"
        return {k[len(prefix):]: v for k, v in self.package_formats.items() if k.startswith(prefix)}


@attrs.frozen
class Command:
    """One ``lnn`` subcommand.

    :param name: the subcommand name.
    :param help: one-line help (``add`` takes it as ``help_text``).
    :param configure: ``configure(parser)`` adds arguments to an argparse parser.
    :param run: ``run(args, host) -> int`` executes it and returns the exit code.
    """

    name: str
    help: str
    configure: Callable[[Any], None]
    run: Callable[[Any, Any], int]


class CommandRegistry(Registry[Command]):
    kind = "command"

    def add(self, name: str, help_text: str, configure: Callable[[Any], None],
            run: Callable[[Any, Any], int]) -> Command:
        return self._add(name, Command(name, help_text, configure, run))
