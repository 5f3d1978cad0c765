"""The plugin host: one pluggy PluginManager plus the registries it fills.

A host is an ordinary object: build as many as you like (tests build isolated ones with
:func:`lnn_core.testing.isolated_host`). Nothing is loaded at import time.

Building a host imports every plugin module (entry points of group ``lnn``) and validates its hook
names, so a plugin that fails to import is reported at once. The registries are filled lazily: the
first access to ``host.ops`` calls every plugin's ``lnn_register_ops``, and so on for each registry.
That is what keeps ``lnn pack`` free of torch: it never touches ``host.ops``, whose families import
torch. A plugin that fails in a registration hook is therefore reported (warning, ``host.failed``) when
that registry is first used; :meth:`PluginHost.load_all` fills every registry now (``lnn plugins --all``).

Environment:
- ``LNN_PLUGIN_AUTOLOAD=0``: do not load entry points at all.
- ``LNN_DISABLE_PLUGINS=name,name``: skip these entry-point names (or distribution names).
- ``LNN_TRACE_HOOKS=1``: log every hook call to the ``lnn.core.hooks`` logger.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import PluginLoadError, RegistryError
from .registry import (
    CommandRegistry,
    ExporterRegistry,
    OpRegistry,
    RecipeRegistry,
    Registry,
    SimKernelRegistry,
    TargetOpRegistry,
    TargetRegistry,
)

__all__ = ["PluginHost", "PluginInfo", "PluginLoadWarning", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "lnn"
log = logging.getLogger("lnn.core.plugins")

_REGISTRATION_HOOKS = {
    "lnn_register_ops": "ops",
    "lnn_register_recipes": "recipes",
    "lnn_register_targets": "targets",
    "lnn_register_exporters": "exporters",
    "lnn_register_sim_kernels": "sim_kernels",
    "lnn_register_target_ops": "target_ops",
    "lnn_register_commands": "commands",
}
_HOOK_OF = {attr: hook for hook, attr in _REGISTRATION_HOOKS.items()}


class PluginLoadWarning(UserWarning):
    """A plugin failed to load and was skipped; the warning text is the full PluginLoadError."""


@attrs.frozen
class PluginInfo:
    """What ``lnn plugins`` shows about one plugin."""

    name: str
    dist: str | None
    version: str | None
    entry_point: str | None
    hooks: tuple[str, ...]
    error: PluginLoadError | None = None


def _env_list(name: str) -> set[str]:
    return {p.strip() for p in os.environ.get(name, "").split(",") if p.strip()}


class PluginHost:
    """Loads plugins and owns the registries they fill.

    :param autoload: load the ``lnn`` entry-point group (default: unless ``LNN_PLUGIN_AUTOLOAD=0``).
    :param plugins: extra plugin modules/objects to register explicitly (tests, embedding apps).
    :param on_error: ``"warn"`` (default) skips a broken plugin with a :class:`PluginLoadWarning`;
        ``"raise"`` raises its :class:`PluginLoadError`.
    """

    def __init__(self, *, autoload: bool | None = None, plugins: Iterable[Any] = (),
                 on_error: str = "warn") -> None:
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', not {on_error!r}")
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.on_error = on_error
        self.failed: list[PluginLoadError] = []
        self._meta: dict[str, tuple[str | None, str | None, str | None]] = {}
        # registry attribute -> its registry, filled on first access (see the module docstring)
        self._registries: dict[str, Registry[Any]] = {}
        self._fill_errors: dict[str, Exception] = {}
        if os.environ.get("LNN_TRACE_HOOKS"):
            self._trace()
        # the host's own defaults are just another plugin (pluggy's eggsample layout)
        from . import _defaults

        self.register(_defaults, name="lnn-core")
        if autoload is None:
            autoload = os.environ.get("LNN_PLUGIN_AUTOLOAD", "1").strip().lower() not in ("0", "false", "no")
        if autoload:
            self.load_entry_points()
        for plugin in plugins:
            self.register(plugin)
        self.pm.hook.lnn_configure.call_historic(kwargs={"host": self})

    # -- loading ----------------------------------------------------------------------------------
    def register(self, plugin: Any, name: str | None = None, *, dist: str | None = None,
                 version: str | None = None, entry_point: str | None = None) -> str:
        """Register a plugin module or object; validate its hook names against the specs."""
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name) if self.pm.has_plugin(name) else None
            raise PluginLoadError(
                f"plugin {name!r} implements a hook lnn does not define, so it was not registered",
                {"distribution": f"{dist} {version}" if dist else None, "cause": str(exc)},
                "check the hook name against lnn_core.hookspecs (hooks are spelled lnn_<verb>_<noun>)",
                plugin=name, dist=dist, version=version, entry_point=entry_point, cause=exc) from exc
        self._meta[name] = (dist, version, entry_point)
        for attr, registry in self._registries.items():  # a late registration fills the filled registries too
            self._fill(_HOOK_OF[attr], registry, only=plugin)
        return name

    def load_entry_points(self) -> None:
        """Load every entry point of group ``lnn``, wrapping each failure in PluginLoadError."""
        blocked = _env_list("LNN_DISABLE_PLUGINS")
        seen: set[str] = set()
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.metadata["Name"] if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            if ep.name in blocked or (dist and dist in blocked) or ep.name in seen:
                log.info("plugin %s (%s) skipped", ep.name, dist)
                continue
            seen.add(ep.name)
            spec = f"{ENTRY_POINT_GROUP}:{ep.name} = {ep.value!r}"
            try:
                module = ep.load()
            except Exception as exc:  # any failure of third-party code is reported, never fatal
                cause = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                err = PluginLoadError(
                    f"plugin {ep.name!r} could not be loaded, so lnn runs without it",
                    {"entry point": spec, "distribution": f"{dist} {version}", "cause": cause},
                    f"reinstall or upgrade {dist}; to run without it set LNN_DISABLE_PLUGINS={ep.name}",
                    plugin=ep.name, dist=dist, version=version, entry_point=spec, cause=exc)
                self._fail(err, exc)
                continue
            try:
                self.register(module, name=ep.name, dist=dist, version=version, entry_point=spec)
            except PluginLoadError as err:
                self._fail(err, err)

    def _fail(self, err: PluginLoadError, exc: BaseException) -> None:
        if self.on_error == "raise":
            raise err from exc
        self.failed.append(err)
        warnings.warn(str(err), PluginLoadWarning, stacklevel=3)

    # -- registries (filled on first access) ------------------------------------------------------
    @property
    def ops(self) -> OpRegistry:
        """Op families (``lnn_register_ops``); op packages import torch when this is first used."""
        return self._registry("ops")

    @property
    def recipes(self) -> RecipeRegistry:
        """Quantization recipes (``lnn_register_recipes``)."""
        return self._registry("recipes")

    @property
    def targets(self) -> TargetRegistry:
        """Deployment targets (``lnn_register_targets``)."""
        return self._registry("targets")

    @property
    def exporters(self) -> ExporterRegistry:
        """Dialect writers/readers and node writers (``lnn_register_exporters``); may import torch."""
        return self._registry("exporters")

    @property
    def sim_kernels(self) -> SimKernelRegistry:
        """Simulator kernels (``lnn_register_sim_kernels``)."""
        return self._registry("sim_kernels")

    @property
    def target_ops(self) -> TargetOpRegistry:
        """What each target's backend knows per IR op type (``lnn_register_target_ops``)."""
        return self._registry("target_ops")

    @property
    def commands(self) -> CommandRegistry:
        """``lnn`` subcommands (``lnn_register_commands``)."""
        return self._registry("commands")

    def load_all(self) -> list[PluginLoadError]:
        """Fill every registry now (importing whatever the plugins' hooks import, torch included).

        :return: :attr:`failed`, every plugin that failed to load or register so far.
        :raises RegistryError: two plugins register the same name.
        """
        for attr in _HOOK_OF:
            self._registry(attr)
        return self.failed

    def _registry(self, attr: str) -> Any:
        registry = self._registries.get(attr)
        if registry is not None:
            return registry
        if attr in self._fill_errors:  # the first fill failed: the same error every time, no half-filled registry
            raise self._fill_errors[attr]
        registry = _REGISTRY_TYPES[attr]()
        try:
            self._fill(_HOOK_OF[attr], registry)
        except Exception as exc:
            self._fill_errors[attr] = exc
            raise
        self._registries[attr] = registry
        return registry

    def _fill(self, hook_name: str, registry: Any, only: Any = None) -> None:
        """Call each implementation of one registration hook, one plugin at a time."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            if only is not None and impl.plugin is not only:
                continue
            plugin_name = impl.plugin_name
            dist, version, _ = self._meta.get(plugin_name, (None, None, None))
            registry.source = f"{plugin_name!r} ({dist} {version})" if dist else repr(plugin_name)
            try:
                impl.function(registry=registry)
            except RegistryError:
                raise
            except Exception as exc:
                err = PluginLoadError(
                    f"plugin {plugin_name!r} failed in {hook_name}, so it was skipped",
                    {"distribution": f"{dist} {version}" if dist else None,
                     "cause": f"{type(exc).__name__}: {exc}"},
                    f"report this to the plugin's authors; to run without it set "
                    f"LNN_DISABLE_PLUGINS={plugin_name}",
                    plugin=plugin_name, dist=dist, version=version, entry_point=None, cause=exc)
                self._fail(err, exc)
            finally:
                registry.source = "<unknown>"

    def _trace(self) -> None:
        hook_log = logging.getLogger("lnn.core.hooks")

        def before(hook_name: str, impls: Any, kwargs: Any) -> None:
            hook_log.debug("call %s -> %s", hook_name, [i.plugin_name for i in impls])

        def after(outcome: Any, hook_name: str, impls: Any, kwargs: Any) -> None:
            hook_log.debug("done %s", hook_name)

        self.pm.add_hookcall_monitoring(before, after)

    # -- queries ---------------------------------------------------------------------------------
    @property
    def hook(self) -> Any:
        return self.pm.hook

    def plugin_infos(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            dist, version, ep = self._meta.get(name, (None, None, None))
            if name == "lnn-core":
                dist, version = "lnn-core", _version("lnn-core")
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))
            infos.append(PluginInfo(name, dist, version, ep, hooks))
        for err in self.failed:
            infos.append(PluginInfo(err.plugin, err.dist, err.version, err.entry_point, (), err))
        return infos

    def rules_for(self, op_type: str, target: str) -> list[Any]:
        """All rules every plugin contributes for ``(op_type, target)``, concatenated."""
        out: list[Any] = []
        for result in self.pm.hook.lnn_op_rules(op_type=op_type, target=target, host=self):
            if result:
                out.extend(result)
        return out


_REGISTRY_TYPES: dict[str, type[Registry[Any]]] = {
    "ops": OpRegistry,
    "recipes": RecipeRegistry,
    "targets": TargetRegistry,
    "exporters": ExporterRegistry,
    "sim_kernels": SimKernelRegistry,
    "target_ops": TargetOpRegistry,
    "commands": CommandRegistry,
}


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def module_of(obj: Any) -> ModuleType | None:
    return sys.modules.get(getattr(obj, "__module__", ""), None)
