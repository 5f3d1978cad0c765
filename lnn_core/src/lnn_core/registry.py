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
    """A name -> item table that refuses duplicates and records the registering plugin.

    The ``add`` methods check what they are given (a name that is a non-empty string, an item of the
    expected type) and raise :class:`RegistryError` naming the registering plugin: the host then skips
    that plugin (see :class:`~lnn_core.plugins.PluginHost`).
    """

    kind = "item"

    def __init__(self) -> None:
        self._items: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        self._owners: dict[str, str | None] = {}
        self.source = "<unknown>"  # set by the host around each plugin's registration call
        self.plugin: str | None = None  # the registering plugin's name, set with ``source``

    def _refuse(self, got: Any, expected: str, hint: str, key: Any = None) -> RegistryError:
        """The error for an item that is not what this registry holds (returned, for the caller to raise)."""
        text = repr(got)
        return RegistryError(
            f"plugin {self.source} registers {type(got).__name__} {text[:60]} as a {self.kind}",
            {"expected": expected}, hint, kind=self.kind, key=key, first=self.source, second=None)

    def _add(self, key: str, item: T) -> T:
        if not isinstance(key, str) or not key.strip():
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
        self._owners[key] = self.plugin
        return item

    def _share_source(self, other: Registry[Any]) -> Registry[Any]:
        """``other`` (a table inside this registry) credited to the same plugin as this one."""
        other.source, other.plugin = self.source, self.plugin
        return other

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

    def owner_of(self, key: str) -> str | None:
        """The name of the plugin that registered ``key`` (None when registered outside a host)."""
        return self._owners.get(key)


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
        from .ops import OpFamily

        if not isinstance(family, OpFamily):
            raise self._refuse(family, "lnn_core.ops.OpFamily", "register OpFamily(id=..., kind=..., ...) objects")
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
        from .quant.recipes import Recipe

        if not isinstance(recipe, Recipe):
            raise self._refuse(recipe, "lnn_core.quant.recipes.Recipe", "register Recipe(...) objects")
        return self._add(recipe.name, recipe)


class TargetRegistry(Registry[Any]):
    """Deployment targets (:class:`lnn_core.targets.Target`) by id."""

    kind = "target"

    def add(self, target: Any) -> Any:
        from .targets import Target

        if not isinstance(target, Target):
            raise self._refuse(target, "lnn_core.targets.Target", "register Target(...) objects")
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
        _callable(self, writer, "a dialect writer fn(graph, host=host) -> onnx.ModelProto", dialect)
        return self._add(dialect, writer)

    def add_reader(self, dialect: str, reader: Callable[..., Any]) -> Callable[..., Any]:
        readers = self._share_source(self.readers)
        _callable(readers, reader, "a dialect reader fn(source, host=host, **options) -> Graph", dialect)
        return readers._add(dialect, reader)

    def add_node_writer(self, dialect: str, op_type: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        writers = self._share_source(self.node_writers)
        _callable(writers, fn, "a node writer function", op_type)
        for part, what in ((dialect, "dialect"), (op_type, "op type")):
            if not isinstance(part, str) or not part.strip():
                raise RegistryError(
                    f"plugin {self.source} registers a node writer without a {what}", {"got": repr(part)},
                    "pass add_node_writer(dialect, op_type, fn) with non-empty strings", kind="node writer",
                    key=part, first=self.source, second=None)
        return writers._add(f"{dialect}:{op_type}", fn)

    def node_writer(self, dialect: str, op_type: str) -> Callable[..., Any] | None:
        return self.node_writers.get(f"{dialect}:{op_type}")


class SimKernelRegistry(Registry[Callable[..., Any]]):
    """Simulator kernels contributed by plugins, keyed by IR op type."""

    kind = "simulator kernel"

    def add(self, op_type: str, kernel: Callable[..., Any]) -> Callable[..., Any]:
        _callable(self, kernel, "a kernel function", op_type)
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
        self.expected: dict[str, tuple[type | None, type | None]] = {}

    def expect(self, target: str, *, op: type | None = None, fmt: type | None = None) -> None:
        """Declare the types ``target``'s backend reads back: every op (package format) registered for
        ``target`` must be an instance of ``op`` (``fmt``). The host checks this once the registry is
        filled, whatever order the plugins registered in, and skips a plugin that registered another type.
        """
        self.expected[target] = (op, fmt)

    def add(self, target: str, op: Any) -> Any:
        """Register ``op`` (an object with an ``op_type``) for ``target``; a second op of the same type is refused."""
        _target_name(self, target)
        op_type = getattr(op, "op_type", None)
        if not isinstance(op_type, str) or not op_type.strip():
            raise self._refuse(op, f"an op definition of target {target!r} (an object with a non-empty op_type)",
                               "register the target's op type (for the CSK60xx: lnn_backend_csk60xx.ops.OpDef)",
                               key=f"{target}:")
        return self._add(f"{target}:{op_type}", op)

    def add_format(self, target: str, fmt: Any) -> Any:
        """Register a package format (an object with a ``name``) for ``target``."""
        formats = self._share_source(self.package_formats)
        _target_name(formats, target)
        name = getattr(fmt, "name", None)
        if not isinstance(name, str) or not name.strip():
            raise formats._refuse(fmt, f"a package format of target {target!r} (an object with a non-empty name)",
                                  "register the target's package format type", key=f"{target}:")
        return formats._add(f"{target}:{name}", fmt)

    def misfits(self) -> list[tuple[str | None, RegistryError]]:
        """Entries whose type is not the one their target :meth:`expect` s: ``(plugin name, error)`` each."""
        out: list[tuple[str | None, RegistryError]] = []
        for table, index, what in ((self, 0, "op"), (self.package_formats, 1, "package format")):
            for key, item in table.items():
                target, _, name = key.partition(":")
                want = self.expected.get(target, (None, None))[index]
                if want is None or isinstance(item, want):
                    continue
                out.append((table.owner_of(key), RegistryError(
                    f"plugin {table.source_of(key)} registers {type(item).__name__} as the {target} {what} "
                    f"{name!r}, not a {want.__name__}",
                    {"expected": f"{want.__module__}.{want.__qualname__}", "got": repr(item)[:80]},
                    f"register {want.__name__}(...) objects for target {target}",
                    kind=table.kind, key=name, first=table.source_of(key), second=None)))
        return out

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
        if not isinstance(help_text, str):
            raise self._refuse(help_text, "a one-line help text (str)", "pass add(name, help, configure, run)",
                               key=name)
        _callable(self, configure, "configure(parser): adds the command's arguments", name)
        _callable(self, run, "run(args, host) -> exit code", name)
        return self._add(name, Command(name, help_text, configure, run))


def _callable(registry: Registry[Any], fn: Any, expected: str, key: Any) -> None:
    if not callable(fn):
        raise registry._refuse(fn, expected, f"pass a function for {key!r}", key=key)


def _target_name(registry: Registry[Any], target: Any) -> None:
    if not isinstance(target, str) or not target.strip():
        raise RegistryError(
            f"plugin {registry.source} registers a {registry.kind} without a target", {"got": repr(target)},
            "pass the target id first, e.g. registry.add('csk60xx', op)", kind=registry.kind, key=target,
            first=registry.source, second=None)
