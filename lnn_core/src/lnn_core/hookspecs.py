"""Every hook specification of lnn, grouped by phase. Nothing else lives here.

Plugins implement these with ``@lnn_core.hookimpl``; an implementation may accept fewer arguments
than its specification (pluggy's opt-in arguments). Hooks are never renamed: a replacement is
added beside the old one and the old one is deprecated with ``warn_on_impl``.

Hooks marked firstresult: "Stops at first non-None result, see firstresult".

The host (:class:`lnn_core.plugins.PluginHost`) calls each implementation itself and checks its result
against the return type documented here; an implementation that raises or returns anything else gets its
plugin skipped (warning naming the distribution and entry point, ``host.failed``). At registration, an
implementation named after no hook, or taking an argument its hook does not pass, is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # annotations only: loading the specs imports nothing of lnn's internals
    from .graph import Graph
    from .plugins import PluginHost
    from .registry import (
        CommandRegistry,
        ExporterRegistry,
        OpRegistry,
        RecipeRegistry,
        SimKernelRegistry,
        TargetOpRegistry,
        TargetRegistry,
    )
    from .rules import Rule

hookspec = pluggy.HookspecMarker("lnn")

# ---------------------------------------------------------------------------------------------
# Initialization hooks
# ---------------------------------------------------------------------------------------------


@hookspec(historic=True)
def lnn_configure(host: PluginHost) -> None:
    """Called once per host after all plugins are registered, and replayed for late registrations.

    :param host: the plugin host being configured.
    """


# ---------------------------------------------------------------------------------------------
# Registration hooks (registrar pattern): each receives a registry and calls its ``add`` methods.
# The host calls every implementation separately so that a conflict names both plugins.
# ---------------------------------------------------------------------------------------------


@hookspec
def lnn_register_ops(registry: OpRegistry) -> None:
    """Register operator families (float module/function/method -> constrain and quantized module).

    :param registry: call ``registry.add(OpFamily(...))`` for each family.
    """


@hookspec
def lnn_register_recipes(registry: RecipeRegistry) -> None:
    """Register quantization recipes by name.

    :param registry: call ``registry.add(recipe)``.
    """


@hookspec
def lnn_register_targets(registry: TargetRegistry) -> None:
    """Register deployment targets (chips): limits as data, recipe, planner and packer defaults.

    :param registry: call ``registry.add(Target(...))``.
    """


@hookspec
def lnn_register_exporters(registry: ExporterRegistry) -> None:
    """Register ONNX dialect writers and readers.

    :param registry: call ``registry.add_writer(name, fn)`` / ``registry.add_reader(name, fn)``, and
        ``registry.add_node_writer(dialect, op_type, fn)`` to teach a dialect a new IR op. A dialect
        writer is called as ``fn(graph, host=host)`` and returns an ``onnx.ModelProto``; node writers
        are ``"ir"`` (op id -> IR nodes, ``fn(ctx)`` with a :class:`lnn_core.exporter.ExportContext`, returning
        the IR name of the op's output, or a list of names, one per output), ``"qdq"`` (IR op type -> standard ONNX,
        ``fn(writer, node)``) or a target dialect's schema (e.g. ``"csk60xx"``).
    """


@hookspec
def lnn_register_target_ops(registry: TargetOpRegistry) -> None:
    """Register what a target's backend knows about IR op types, and the package formats it writes.

    A backend registers its built-in op families here, and an op package adds its ops to a target
    through the same call: ``registry.add(target, op)`` (for the CSK60xx an ``OpDef``: dialect schema,
    shape rule, hardware rules, buffer sizes, lowering and, for ops without a C kernel, a Python
    simulator kernel); ``registry.add_format(target, fmt)`` registers a package format.

    :param registry: the registry to add to.
    """


@hookspec(warn_on_impl=DeprecationWarning(
    "lnn_register_sim_kernels is deprecated: give the op's OpDef a kernel= and register it with "
    "lnn_register_target_ops"))
def lnn_register_sim_kernels(registry: SimKernelRegistry) -> None:
    """Register simulator kernels for IR op types that the C simulator does not implement itself.

    Deprecated: a kernel now belongs to the op's definition (``lnn_register_target_ops``); kernels
    registered here are still attached to ops that have none.

    :param registry: call ``registry.add(op_type, kernel)``.
    """


@hookspec
def lnn_register_commands(registry: CommandRegistry) -> None:
    """Contribute subcommands to the ``lnn`` command line.

    :param registry: call ``registry.add(name, help, configure, run)``. ``run(args, host)`` returns the exit code
        (0 ok, 1 problems found) and writes its result to ``lnn_core.cli.result_stream(args)``: with ``--json`` that
        is the only thing that reaches stdout (anything printed elsewhere goes to stderr; docs/cli-json.md).
    """


# ---------------------------------------------------------------------------------------------
# Conformance hooks
# ---------------------------------------------------------------------------------------------


@hookspec
def lnn_op_rules(op_type: str, target: str, host: PluginHost) -> list[Rule] | None:
    """Return the hardware rules that apply to ``op_type`` on ``target``.

    Every implementation is called and the results are concatenated, so a backend and a
    third-party op package can both contribute rules for the same pair.

    :param op_type: the op id (``builtin.Conv2d``) or IR op type (``Conv2dInt``).
    :param target: the target id, e.g. ``csk60xx``.
    :param host: the calling host (a backend also returns the rules of ops other plugins registered
        with ``lnn_register_target_ops``).

    .. versionchanged:: 0.2 ``host`` added.
    :return: a list of :class:`lnn_core.rules.Rule`, or None.
    """


# ---------------------------------------------------------------------------------------------
# Compile pipeline hooks. A target's backend runs its own pipeline (rules, graph rewrites, memory
# plan, package writer); what varies per op or per package format is registered data
# (lnn_register_target_ops), not a hook.
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def lnn_check_graph(graph: Graph, target: str, options: dict[str, Any], host: PluginHost) -> Any:
    """Judge an IR graph for ``target`` at pack time: rules, graph passes and memory fit.

    Stops at first non-None result, see firstresult.

    :param graph: the IR (as exported, before passes).
    :param host: the calling host: its plugins' ops, rules and kernels take part.
    :param target: target id.
    :param options: region sizes and other packer options.
    :return: a report with ``violations`` (list of :class:`lnn_core.rules.Violation`), ``ok`` and
        ``memory`` (a dict summary), or None when the target is not this plugin's.
    """


@hookspec(firstresult=True)
def lnn_simulate(model: Any, inputs: list[Any], target: str, options: dict[str, Any], host: PluginHost) -> Any:
    """Pack ``model`` (an ONNX ModelProto in the target's dialect) and run the target's simulator.

    Stops at first non-None result, see firstresult.

    :param host: the calling host: its plugins' ops and simulator kernels take part.
    :param model: the ONNX model as the target's dialect writer wrote it.
    :param inputs: one numpy array per graph input.
    :param target: target id.
    :param options: region sizes and other packer options.
    :return: ``(outputs, tensors)``: output arrays, and every intermediate tensor by IR name as
        integers (quantized tensors) or floats; None when the target is not this plugin's.
    """
