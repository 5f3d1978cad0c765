"""Package formats: what a packed model file is, as a registered object.

A :class:`PackageFormat` says which ops it can hold, how the graph's memory is planned for it and how
the file is written. The checker asks it which ops the chip can run from that file, the planner how
to plan, and ``lnn pack --format NAME`` chooses one. lnn's own ``model.bin`` (:data:`MODEL_BIN`, the
default, loaded by lnn's C simulator) is registered by this backend like any other format, through
``lnn_register_target_ops`` (``registry.add_format("csk60xx", fmt)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lnn_core.graph import Graph

    from .ops.base import OpDef
    from .ops.opset import OpSet
    from .planner import MemoryPlan

__all__ = ["PackageFormat", "MODEL_BIN", "DEFAULT_FORMAT"]

#: the format ``lnn pack`` writes when none is named
DEFAULT_FORMAT = "lnn"


@dataclass(frozen=True)
class PackageFormat:
    """One package format of the CSK60xx target.

    :param name: what ``lnn pack --format`` calls it.
    :param description: one line for ``lnn pack --help`` and reports.
    :param suffix: the usual file name suffix.
    :param supports: ``supports(op: OpDef) -> bool``: the format can hold the op (its lowering, or a
        Python kernel for formats that run plugin ops as external ops).
    :param plan: ``plan(graph, *, share_mem, psram, scratch, ops) -> MemoryPlan``.
    :param write: ``write(graph, plan, ops) -> bytes``.
    :param problems: ``problems(graph, ops) -> [(node name, Problem)]``: every way the graph (after the rewrites)
        breaks what the format's loader and kernels accept (``lnn check --format``); None: the writer's own refusal.
    :param rewrite: ``rewrite(graph, ops) -> [SplitRecord]``: graph rewrites the format needs after the common ones
        (in place; shapes are inferred again after it), e.g. the thinker runtime's lack of grouped convolutions.
    """

    name: str
    description: str
    suffix: str
    supports: Callable[[OpDef], bool]
    plan: Callable[..., MemoryPlan]
    write: Callable[[Graph, MemoryPlan, OpSet], bytes]
    problems: Callable[[Graph, OpSet], list[Any]] | None = None
    rewrite: Callable[[Graph, OpSet], list[Any]] | None = None

    def unsupported(self, graph: Graph, ops: OpSet) -> list[Any]:
        """The nodes of ``graph`` this format cannot hold (unknown ops included)."""
        return [n for n in graph.nodes if n.op_type not in ops or not self.supports(ops[n.op_type])]


def _model_bin_supports(op: OpDef) -> bool:
    return DEFAULT_FORMAT in op.lowerings or op.kernel is not None


def _model_bin_plan(graph: Graph, **kwargs: Any) -> MemoryPlan:
    from .planner import plan_memory

    return plan_memory(graph, **kwargs)


def _model_bin_write(graph: Graph, plan: MemoryPlan, ops: OpSet) -> bytes:
    from .packer import pack

    return pack(graph, plan, ops=ops)


#: lnn's model.bin (layout: the backend README), run by lnn's C simulator; plugin ops become external ops
MODEL_BIN = PackageFormat(DEFAULT_FORMAT, "lnn's model.bin, run by lnn's C simulator (`lnn run`)", ".bin",
                          _model_bin_supports, _model_bin_plan, _model_bin_write)
