"""The CSK60xx backend's hook implementations (entry point ``lnn:csk60xx``). Only @hookimpl here.

Nothing heavy is imported at module level: each hook imports what it uses when it is called.
"""

from __future__ import annotations

from typing import Any

from lnn_core import hookimpl

TARGET_ID = "csk60xx"


def builtin_op_types() -> frozenset[str]:
    """The IR op types of the backend's own op families."""
    from .ops import builtin_ops

    return frozenset(op.op_type for op in builtin_ops())


@hookimpl
def lnn_register_targets(registry: Any) -> None:
    from .target import load_target

    registry.add(load_target())


@hookimpl
def lnn_register_target_ops(registry: Any) -> None:
    """The built-in op families and lnn's model.bin format, through the registry third-party packages use."""
    from .formats import MODEL_BIN, PackageFormat
    from .ops import OpDef, builtin_ops

    registry.expect(TARGET_ID, op=OpDef, fmt=PackageFormat)  # the host skips a plugin registering other types
    for op in builtin_ops():
        registry.add(TARGET_ID, op)
    registry.add_format(TARGET_ID, MODEL_BIN)
    from .thinker import THINKER, THINKER_SHARE

    registry.add_format(TARGET_ID, THINKER)
    registry.add_format(TARGET_ID, THINKER_SHARE)


def _opset(host: Any) -> Any:
    from .ops.opset import OpSet

    return OpSet.from_host(host) if host is not None else OpSet.builtin_only()


@hookimpl
def lnn_op_rules(op_type: str, target: str, host: Any) -> list[Any] | None:
    """The rules of every op registered for the CSK60xx (built-in and other plugins' ``OpDef.rules``)."""
    if target != TARGET_ID:
        return None
    return _opset(host).rules_for(op_type)


@hookimpl
def lnn_register_commands(registry: Any) -> None:
    from . import commands, demo

    registry.add("demo", "run the whole flow on the bundled digits data (or, lnn demo kws, on synthesized spoken "
                 "keywords) and print float vs int8 accuracy",
                 demo.configure, demo.run)
    registry.add("pack", "check, split, plan and pack a CSK60xx ONNX file into model.bin (+ memory report)",
                 commands.configure_pack, commands.run_pack)
    registry.add("run", "run model.bin in the int8 simulator on .npy/.bin inputs (every tensor with --dump)",
                 commands.configure_run, commands.run_run)
    registry.add("check", "list every hardware-rule violation of a CSK60xx ONNX file and whether it fits memory",
                 commands.configure_check, commands.run_check)
    registry.add("inspect", "print every section of a thinker package (lnn pack --format thinker)",
                 commands.configure_inspect, commands.run_inspect)


@hookimpl
def lnn_register_exporters(registry: Any) -> None:
    def write(graph: Any, host: Any = None) -> Any:
        """The CSK60xx dialect writer, knowing the ops the host's plugins add to the dialect."""
        from .dialect import write_onnx

        return write_onnx(graph, ops=_opset(host))

    def read(source: Any, host: Any = None, **kwargs: Any) -> Any:
        from .dialect import read_onnx

        return read_onnx(source, ops=_opset(host), **kwargs)

    registry.add_writer(TARGET_ID, write)
    registry.add_reader(TARGET_ID, read)


@hookimpl
def lnn_simulate(model: Any, inputs: list[Any], target: str, options: dict[str, Any], host: Any) -> Any:
    """Read the dialect file, pack it and run the C simulator with every tensor dumped."""
    if target != TARGET_ID:
        return None
    from .dialect import read_onnx
    from .pipeline import pack_graph
    from .simulator import Simulator

    # verification compares every tensor: keep each one (no ReLU fusion) and pack what the simulator runs
    ops = _opset(host)
    packed = pack_graph(read_onnx(model, ops=ops), share_mem=options.get("share_mem"), psram=options.get("psram"),
                        check=False, fuse_relu=False, ops=ops)
    return Simulator(packed.blob, kernels=ops.kernels).run(inputs, dump=True)


@hookimpl
def lnn_check_graph(graph: Any, target: str, options: dict[str, Any], host: Any) -> Any:
    """Rules, graph rewrites and the memory plan of an IR graph (see :func:`.check.check_graph`)."""
    if target != TARGET_ID:
        return None
    from .check import check_graph

    rules_for = (lambda op_type: host.rules_for(op_type, TARGET_ID)) if host is not None else None
    return check_graph(graph, share_mem=options.get("share_mem"), psram=options.get("psram"), rules_for=rules_for,
                       ops=_opset(host))
