"""The torch-free chain: CSK60xx ONNX file -> IR -> shapes -> rules -> graph passes -> memory plan -> model.bin.

The order (documented once, in :mod:`.graph_passes`): shape inference; every rule on the graph as
written (a violation stops packing with a :class:`~lnn_core.errors.HardwareLimitError` that lists them
all); Relu fusion; splits of ops that exceed the engine buffers; the memory plan (aliases, in-place
concatenations, weight prefetch and workspaces); the packer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import onnx

from lnn_core.graph import Graph
from lnn_core.rules import Rule, RuleReport

from .check import CheckReport, check_graph, infer_and_judge
from .dialect import read_onnx
from .extensions import PluginOps
from .graph_passes import PassReport, run_passes
from .packer import pack
from .planner import MemoryPlan, plan_memory
from .target import load_target

__all__ = ["PackResult", "pack_graph", "pack_onnx", "check_graph", "CheckReport"]

log = logging.getLogger("lnn.backend.pipeline")


@dataclass
class PackResult:
    """What packing produced: the model.bin bytes, the graph that was packed (after the passes), its
    memory plan, what the passes changed and the rule report (warnings; None when not checked)."""

    blob: bytes
    graph: Graph
    plan: MemoryPlan
    passes: PassReport = field(default_factory=PassReport)
    rules: RuleReport | None = None


def pack_graph(graph: Graph, *, share_mem: int | None = None, psram: int | None = None, check: bool = True,
               fuse_relu: bool = True, split: bool = True, scratch: bool = True, ops: PluginOps | None = None,
               rules_for: Callable[[str], list[Rule]] | None = None,
               progress: Callable[[str], None] | None = None) -> PackResult:
    """Infer shapes of ``graph`` (a copy), check the rules, run the passes, plan its memory and pack it.

    :param share_mem: share-memory bytes available (default: the target file's 655360).
    :param psram: PSRAM bytes available (default: the target file's 8388608).
    :param check: run every rule first and raise :class:`~lnn_core.errors.HardwareLimitError` listing all
        violations (False: pack whatever the simulator can run, e.g. to test simulator features).
    :param fuse_relu: fold Relu into the conv before it (False keeps every tensor, for ``lnn verify``).
    :param split: cut ops that exceed the engine buffers.
    :param scratch: plan the weight-prefetch and workspace buffers.
    :param ops: plugin ops (schemas, shape rules) to accept and write as external ops.
    :param rules_for: ``op_type -> rules`` (default: this backend's rules).
    :param progress: called with the name of each stage as it starts (for progress bars).
    """
    limits = load_target().limits
    step = progress or (lambda _stage: None)
    g = graph.copy()
    step("rules")
    report, complete = infer_and_judge(g, rules_for=rules_for, ops=ops, limits=limits)
    if check or not complete:
        report.raise_if_errors(f"graph '{g.name}'")
    step("passes")
    passes = run_passes(g, limits, fuse=fuse_relu, split=split, shape_rules=ops.shape_rules if ops else None)
    step("plan")
    plan = plan_memory(g, share_mem=share_mem, psram=psram, scratch=scratch)
    step("pack")
    return PackResult(pack(g, plan, ops=ops), g, plan, passes, report if check else None)


def pack_onnx(source: str | os.PathLike[str] | onnx.ModelProto, *, share_mem: int | None = None,
              psram: int | None = None, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
              check: bool = True, ops: PluginOps | None = None) -> bytes:
    """Read a CSK60xx-dialect ONNX file and return its model.bin bytes (read -> check -> passes -> plan -> pack)."""
    graph = read_onnx(source, input_shapes=input_shapes, ops=ops)
    return pack_graph(graph, share_mem=share_mem, psram=psram, check=check, ops=ops).blob
