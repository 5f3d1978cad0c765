"""The torch-free chain: CSK60xx ONNX file -> IR -> shapes -> rules -> graph rewrites -> memory plan -> package.

The order (documented once, in :mod:`.rewrites`): shape inference; every rule on the graph as
written (a violation stops packing with a :class:`~lnn_core.errors.HardwareLimitError` that lists them
all); ReLU fusion; splits of ops that exceed the engine buffers; the package format's memory plan
(aliases, in-place concatenations, weight prefetch and workspaces); the package format's writer
(:mod:`.formats`; lnn's model.bin by default).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import onnx

from lnn_core.errors import ModelFileError
from lnn_core.graph import Graph
from lnn_core.rules import Rule, RuleReport

from .check import CheckReport, check_graph, infer_and_judge
from .dialect import read_onnx
from .formats import DEFAULT_FORMAT
from .inference import infer_shapes
from .limits import check_attr_nesting
from .ops.opset import OpSet
from .planner import MemoryPlan
from .rewrites import PassReport, run_rewrites
from .target import load_target

__all__ = ["PackResult", "pack_graph", "pack_onnx", "check_graph", "CheckReport"]

log = logging.getLogger("lnn.backend.pipeline")


@dataclass
class PackResult:
    """What packing produced: the package bytes, the graph that was packed (after the rewrites), its
    memory plan, what the rewrites changed, the rule report (warnings; None when not checked) and the
    package format's name."""

    blob: bytes
    graph: Graph
    plan: MemoryPlan
    passes: PassReport = field(default_factory=PassReport)
    rules: RuleReport | None = None
    format: str = DEFAULT_FORMAT


def pack_graph(graph: Graph, *, share_mem: int | None = None, psram: int | None = None, check: bool = True,
               fuse_relu: bool = True, split: bool = True, scratch: bool = True, ops: OpSet | None = None,
               rules_for: Callable[[str], list[Rule]] | None = None,
               progress: Callable[[str], None] | None = None, package_format: str = DEFAULT_FORMAT) -> PackResult:
    """Infer shapes of ``graph`` (a copy), check the rules, run the rewrites, plan its memory and pack it.

    :param share_mem: share-memory bytes available (default: the target file's 655360).
    :param psram: PSRAM bytes available (default: the target file's 8388608).
    :param check: run every rule first and raise :class:`~lnn_core.errors.HardwareLimitError` listing all
        violations (False: pack whatever the simulator can run, e.g. to test simulator features).
    :param fuse_relu: fold ReLU into the conv before it (False keeps every tensor, for ``lnn verify``).
    :param split: cut ops that exceed the engine buffers.
    :param scratch: plan the weight-prefetch and workspace buffers.
    :param ops: the ops of this run (default: the built-in ones; ``OpSet.from_host(host)`` adds plugins').
    :param rules_for: ``op_type -> rules`` (default: ``ops.rules_for``).
    :param progress: called with the name of each stage as it starts (for progress bars).
    :param package_format: the package format to write (``ops.formats``; default lnn's model.bin).
    :raises RegistryError: an unknown package format.
    :raises ModelFileError: an op the format cannot hold.
    """
    limits = load_target().limits
    ops = ops if ops is not None else OpSet.builtin_only()
    fmt = ops.format(package_format)
    step = progress or (lambda _stage: None)
    check_attr_nesting(graph)  # before the copy: deepcopy of a 100,000-deep attribute ends in RecursionError
    g = graph.copy()
    step("rules")
    report, complete = infer_and_judge(g, rules_for=rules_for, ops=ops, limits=limits)
    if check or not complete:
        report.raise_if_errors(f"graph '{g.name}'")
    step("passes")
    passes = run_rewrites(g, limits, ops, fuse=fuse_relu, split=split)
    if fmt.rewrite is not None:
        passes.splits += fmt.rewrite(g, ops)
        infer_shapes(g, ops, path=g.meta.get("source"))
    unsupported = fmt.unsupported(g, ops)
    if unsupported:
        node = unsupported[0]
        raise ModelFileError(
            f"node {node.name!r} ({node.op_type}) cannot be packed into the {fmt.name!r} package format",
            {"unsupported ops": ", ".join(sorted({n.op_type for n in unsupported})),
             "format": fmt.description},
            "choose another --format, or replace the op", path=g.meta.get("source"), node=node.name)
    step("plan")
    plan = fmt.plan(g, share_mem=share_mem, psram=psram, scratch=scratch, ops=ops)
    step("pack")
    return PackResult(fmt.write(g, plan, ops), g, plan, passes, report if check else None, fmt.name)


def pack_onnx(source: str | os.PathLike[str] | onnx.ModelProto, *, share_mem: int | None = None,
              psram: int | None = None, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
              check: bool = True, ops: OpSet | None = None, package_format: str = DEFAULT_FORMAT) -> bytes:
    """Read a CSK60xx-dialect ONNX file and return its package bytes (read -> check -> rewrites -> plan -> pack)."""
    graph = read_onnx(source, input_shapes=input_shapes, ops=ops)
    return pack_graph(graph, share_mem=share_mem, psram=psram, check=check, ops=ops,
                      package_format=package_format).blob
