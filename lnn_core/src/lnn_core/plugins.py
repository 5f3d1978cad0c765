"""The plugin host: one pluggy PluginManager plus the registries it fills.

A host is an ordinary object: build as many as you like (tests build isolated ones with
:func:`lnn_core.testing.isolated_host`). Nothing is loaded at import time.

Building a host imports every plugin module (entry points of group ``lnn``) and validates its hook
names, so a plugin that fails to import is reported at once. The registries are filled lazily: the
first access to ``host.ops`` calls every plugin's ``lnn_register_ops``, and so on for each registry.
That is what keeps ``lnn pack`` free of torch: it never touches ``host.ops``, whose families import
torch. A plugin that fails in a registration hook is therefore reported (warning, ``host.failed``) when
that registry is first used; :meth:`PluginHost.load_all` fills every registry now (``lnn plugins --all``).

The host calls every hook implementation itself, one plugin at a time, and checks what it gets back at
this boundary: a plugin that raises, registers something that is not what the registry holds (an item
without a name, a duplicate name, an object of the wrong type), or returns garbage from
``lnn_op_rules``/``lnn_check_graph``/``lnn_simulate`` is skipped as a whole (unregistered, a
:class:`PluginLoadWarning` naming its distribution and entry point, an entry in ``host.failed``), and the
registries it had contributed to are rebuilt without it. With ``on_error="raise"`` the error is raised
instead. Use :meth:`PluginHost.rules_for`, :meth:`PluginHost.check_graph` and :meth:`PluginHost.simulate`
rather than ``host.hook.<name>(...)``, which calls the plugins unchecked.

Environment:
- ``LNN_PLUGIN_AUTOLOAD=0``: do not load entry points at all.
- ``LNN_DISABLE_PLUGINS=name,name``: skip these entry-point names (or distribution names).
- ``LNN_TRACE_HOOKS=1``: log every hook call to the ``lnn.core.hooks`` logger.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import LnnError, PluginLoadError, RegistryError, format_message
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
_HOOK_NAMES = tuple(sorted(n for n in vars(hookspecs) if n.startswith("lnn_") and callable(getattr(hookspecs, n))))


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
        self._configured = False
        self._hook_log = logging.getLogger("lnn.core.hooks") if os.environ.get("LNN_TRACE_HOOKS") else None
        if self._hook_log is not None:
            self._trace()
        # the host's own defaults are just another plugin (pluggy's eggsample layout)
        from . import _defaults

        self.register(_defaults, name="lnn-core")
        if autoload is None:
            autoload = os.environ.get("LNN_PLUGIN_AUTOLOAD", "1").strip().lower() not in ("0", "false", "no")
        if autoload:
            self.load_entry_points()
        for plugin in plugins:
            try:
                self.register(plugin)
            except PluginLoadError as err:
                self._fail(err, err)
        # lnn_configure is historic: every plugin registered now, and each one registered later (register())
        self._configured = True
        for impl in self._impls("lnn_configure"):
            self._configure(impl)

    # -- loading ----------------------------------------------------------------------------------
    def register(self, plugin: Any, name: str | None = None, *, dist: str | None = None,
                 version: str | None = None, entry_point: str | None = None) -> str:
        """Register a plugin module or object; validate its hook names against the specs."""
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        where = {"entry point": entry_point, "distribution": f"{dist} {version}" if dist else None}
        ids = {"plugin": name, "dist": dist, "version": version, "entry_point": entry_point}
        self._check_hooks(plugin, name, where, ids)
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except (pluggy.PluginValidationError, ValueError) as exc:  # ValueError: the name is taken
            self.pm.unregister(name=name) if self.pm.get_plugin(name) is plugin else None
            raise PluginLoadError(
                f"plugin {name!r} was refused by the plugin manager, so it was not registered",
                {**where, "cause": str(exc)},
                f"check its hooks against lnn_core.hookspecs; to run without it set LNN_DISABLE_PLUGINS={name}",
                **ids, hook=None, cause=exc) from exc
        self._meta[name] = (dist, version, entry_point)
        if self._configured:  # a late registration: replay the historic lnn_configure for it
            for impl in self._impls("lnn_configure"):
                if impl.plugin is plugin:
                    self._configure(impl)
        for attr in list(self._registries):  # a late registration fills the filled registries too
            registry = self._registries.get(attr)
            if registry is not None and self.pm.get_plugin(name) is plugin:
                self._fill(_HOOK_OF[attr], registry, only=plugin)
        return name

    def _check_hooks(self, plugin: Any, name: str, where: dict[str, Any], ids: dict[str, Any]) -> None:
        """Refuse a plugin whose hook implementations name no lnn hook, or take arguments their hook does not pass."""
        for attr in sorted(dir(plugin)):
            try:
                opts = self.pm.parse_hookimpl_opts(plugin, attr)
            except Exception:  # an attribute that cannot even be read is no hook implementation
                continue
            if opts is None:
                continue
            if attr not in _HOOK_NAMES:
                close = difflib.get_close_matches(attr, _HOOK_NAMES, n=1)
                raise PluginLoadError(
                    f"plugin {name!r} implements {attr!r}, which is not an lnn hook, so it was not registered",
                    {**where, "did you mean": close[0] if close else None},
                    "check the hook name against lnn_core.hookspecs (hooks are spelled lnn_<verb>_<noun>); "
                    f"to run without the plugin set LNN_DISABLE_PLUGINS={name}",
                    **ids, hook=attr, cause=None)
            if opts.get("hookwrapper") or opts.get("wrapper"):
                raise PluginLoadError(
                    f"plugin {name!r} implements {attr} as a hook wrapper, which lnn does not call, so it was "
                    "not registered", {**where},
                    f"implement {attr} as a plain @hookimpl; to run without the plugin set "
                    f"LNN_DISABLE_PLUGINS={name}", **ids, hook=attr, cause=None)
            spec_args = list(inspect.signature(getattr(hookspecs, attr)).parameters)
            impl_args = _required_args(getattr(plugin, attr))
            extra = [a for a in impl_args if a not in spec_args]
            if extra:
                raise PluginLoadError(
                    f"plugin {name!r} implements {attr} with argument names the hook does not pass "
                    f"({', '.join(extra)}), so it was not registered",
                    {**where, "hook": f"{attr}({', '.join(spec_args)})",
                     "implementation": f"{attr}({', '.join(impl_args)})"},
                    f"name the arguments as the hook does (any of {', '.join(spec_args)}); to run without the "
                    f"plugin set LNN_DISABLE_PLUGINS={name}", **ids, hook=attr, cause=None)

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
            if isinstance(exc, RegistryError):  # a registry's own error (duplicate, bad item) as it is
                raise exc
            raise err from (exc if exc is not err else err.__cause__)
        self.failed.append(err)
        warnings.warn(str(err), PluginLoadWarning, stacklevel=3)

    def _skip(self, name: str | None, hook: str, exc: BaseException, *, headline: str | None = None,
              details: dict[str, Any] | None = None) -> None:
        """Plugin ``name`` failed in ``hook``: report it (or raise, on_error="raise") and run without it.

        The plugin is unregistered, so none of its hooks is called again, and every registry it contributed
        to is rebuilt without it on next use.
        """
        if name is None:  # an item registered outside any host: nobody to skip
            raise exc
        dist, version, ep = self._meta.get(name, (None, None, None))
        if isinstance(exc, LnnError):
            cause: Any = f"{type(exc).__name__}: {format_message(exc.headline, exc.details)}"  # its hint: below
            hint = (exc.hint or "").rstrip(".")
        else:
            cause = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            hint = ""
        hint = hint or "report this to the plugin's authors"
        err = PluginLoadError(
            headline or f"plugin {name!r} failed in {hook}, so it was skipped",
            {"entry point": ep, "distribution": f"{dist} {version}" if dist else None, **(details or {}),
             "cause": cause},
            f"{hint}; to run without it set LNN_DISABLE_PLUGINS={name}",
            plugin=name, dist=dist, version=version, entry_point=ep, hook=hook, cause=exc)
        plugin = self.pm.get_plugin(name)
        if self.on_error == "raise":
            self._fail(err, exc)
        hooks = {h.name for h in self.pm.get_hookcallers(plugin) or ()} if plugin is not None else set()
        if plugin is not None:
            self.pm.unregister(name=name)
        for attr in list(self._registries):
            if _HOOK_OF[attr] in hooks:
                del self._registries[attr]
        self._fail(err, exc)

    def _returned(self, name: str, hook: str, result: Any, expected: str) -> None:
        """Plugin ``name`` returned ``result``, which is not what ``hook`` returns: skip it."""
        what = f"{type(result).__name__} {repr(result)[:60]}"
        self._skip(name, hook, TypeError(f"{hook} returned {what}; expected {expected}"),
                   headline=f"plugin {name!r} returned {type(result).__name__} from {hook}, so it was skipped",
                   details={"expected": expected, "got": repr(result)[:80]})

    def _impls(self, hook: str) -> list[Any]:
        """The implementations of ``hook`` in the order pluggy calls them."""
        return list(reversed(getattr(self.pm.hook, hook).get_hookimpls()))

    def _call(self, impl: Any, **kwargs: Any) -> Any:
        """Call one hook implementation with the arguments it asks for (pluggy's opt-in arguments)."""
        if self._hook_log is not None:
            self._hook_log.debug("call %s -> %s", impl.function.__name__, impl.plugin_name)
        return impl.function(*[kwargs[a] for a in impl.argnames])

    def _configure(self, impl: Any) -> None:
        try:
            self._call(impl, host=self)
        except Exception as exc:  # third-party code: reported and skipped, never fatal
            self._skip(impl.plugin_name, "lnn_configure", exc)

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
        while True:  # each failed round skips one plugin, so this ends
            registry = _REGISTRY_TYPES[attr]()
            try:
                complete = self._fill(_HOOK_OF[attr], registry)
            except Exception as exc:  # on_error="raise": no half-filled registry, the same error every time
                self._fill_errors[attr] = exc
                raise
            if complete:
                break
        self._registries[attr] = registry
        return registry

    def _fill(self, hook_name: str, registry: Any, only: Any = None) -> bool:
        """Call each implementation of one registration hook, one plugin at a time.

        :return: False when a plugin failed and was skipped: the registry holds part of its work, so the
            caller builds it again (the plugin is unregistered by then).
        """
        # registration order (the core first, then entry points by name): on a duplicate name the later plugin
        # is the one skipped, so no plugin can take the core's commands or recipes away
        for impl in reversed(self._impls(hook_name)):
            if only is not None and impl.plugin is not only:
                continue
            plugin_name = impl.plugin_name
            dist, version, _ = self._meta.get(plugin_name, (None, None, None))
            registry.source = f"{plugin_name!r} ({dist} {version})" if dist else repr(plugin_name)
            registry.plugin = plugin_name
            try:
                self._call(impl, registry=registry)
            except Exception as exc:  # third-party code, registry errors included: skip the plugin
                self._skip(plugin_name, hook_name, exc)
                return False
            finally:
                registry.source, registry.plugin = "<unknown>", None
        if isinstance(registry, TargetOpRegistry):  # the types each target's backend reads back
            for owner, err in registry.misfits():
                self._skip(owner, hook_name, err)
                return False
        return True

    def _trace(self) -> None:
        hook_log = logging.getLogger("lnn.core.hooks")  # hooks called through self.hook; the host's own: _call

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
        """All rules every plugin contributes for ``(op_type, target)``, concatenated.

        A plugin that raises, or returns anything but None or a list of :class:`lnn_core.rules.Rule`, is skipped.
        """
        from .rules import Rule

        out: list[Any] = []
        for impl in self._impls("lnn_op_rules"):
            try:
                result = self._call(impl, op_type=op_type, target=target, host=self)
            except Exception as exc:
                self._skip(impl.plugin_name, "lnn_op_rules", exc)
                continue
            if result is None:
                continue
            if not isinstance(result, (list, tuple)) or not all(isinstance(r, Rule) for r in result):
                self._returned(impl.plugin_name, "lnn_op_rules", result, "None or a list of lnn_core.rules.Rule")
                continue
            out.extend(result)
        return out

    def check_graph(self, graph: Any, target: str, options: Mapping[str, Any] | None = None) -> Any:
        """The first plugin's report of ``lnn_check_graph`` for ``target`` (None when no plugin judges it).

        A plugin that raises, or returns something without ``violations`` (a list of
        :class:`lnn_core.rules.Violation`), a bool ``ok`` and a dict ``memory``, is skipped.
        """
        from .rules import Violation

        for impl in self._impls("lnn_check_graph"):
            try:
                result = self._call(impl, graph=graph, target=target, options=dict(options or {}), host=self)
            except Exception as exc:
                self._skip(impl.plugin_name, "lnn_check_graph", exc)
                continue
            if result is None:
                continue
            violations = getattr(result, "violations", None)
            memory = getattr(result, "memory", {})
            if (not isinstance(violations, (list, tuple)) or not all(isinstance(v, Violation) for v in violations)
                    or not isinstance(getattr(result, "ok", None), bool)
                    or not (memory is None or isinstance(memory, Mapping))):
                self._returned(impl.plugin_name, "lnn_check_graph", result,
                               "None or a report with violations (list of lnn_core.rules.Violation), ok (bool) "
                               "and memory (dict)")
                continue
            return result
        return None

    def simulate(self, model: Any, inputs: list[Any], target: str, options: Mapping[str, Any] | None = None) -> Any:
        """The first plugin's ``lnn_simulate`` result ``(outputs, tensors)`` for ``target`` (None: no simulator).

        A plugin that raises an error other than an :class:`~lnn_core.errors.LnnError` (the simulator refusing
        the model is an answer), or returns something that is not a list of arrays and a dict of arrays, is skipped.
        """
        for impl in self._impls("lnn_simulate"):
            try:
                result = self._call(impl, model=model, inputs=inputs, target=target, options=dict(options or {}),
                                    host=self)
            except LnnError:
                raise
            except Exception as exc:
                self._skip(impl.plugin_name, "lnn_simulate", exc)
                continue
            if result is None:
                continue
            ok = isinstance(result, tuple) and len(result) == 2
            if ok:
                outputs, tensors = result
                ok = (isinstance(outputs, (list, tuple)) and all(hasattr(o, "shape") for o in outputs)
                      and isinstance(tensors, Mapping) and all(isinstance(k, str) for k in tensors))
            if not ok:
                self._returned(impl.plugin_name, "lnn_simulate", result,
                               "None or (outputs, tensors): a list of arrays and a dict name -> array")
                continue
            return result
        return None


_REGISTRY_TYPES: dict[str, type[Registry[Any]]] = {
    "ops": OpRegistry,
    "recipes": RecipeRegistry,
    "targets": TargetRegistry,
    "exporters": ExporterRegistry,
    "sim_kernels": SimKernelRegistry,
    "target_ops": TargetOpRegistry,
    "commands": CommandRegistry,
}


def _required_args(fn: Any) -> list[str]:
    """The argument names pluggy passes to a hook implementation (those without a default)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    if params and params[0].name == "self":
        params = params[1:]
    return [p.name for p in params if p.default is p.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def module_of(obj: Any) -> ModuleType | None:
    return sys.modules.get(getattr(obj, "__module__", ""), None)
