"""lnn's IR graph -> a thinker package: the lowering of every node, the runtime's memory plan, the records.

Steps (spec/thinker-package.md):

1. :func:`lower_graph`: each node through its op family's :class:`~.lowering.ThinkerLowering`: the record's inputs
   (constants the runtime wants as inputs are added: clip bounds, slice parameters), its attribute struct, its
   constants re-laid out (spec 6), whether it takes a DMA transfer, and the workspace its kernel needs. A constant
   that a second DMA op (or a second re-layout) reads is duplicated: each weight op's constants must be adjacent
   in the blob, in input order.
2. :func:`plan_thinker`: every activation, workspace and DMA buffer in share-memory (the NPU kernels read
   share-memory; the constants stay in the PSRAM blob and are all prefetched, spec 4.4). Buffers live from the op
   that writes them to the last op that reads them; reshape-like ops alias their input (the squeeze ops must);
   a workspace lives during its op; the DMA buffer of the k-th weight op lives from the (k-1)-th weight op's
   step (transfer k starts inside it) through its own step. Offsets by lnn's greedy planner, 16-byte aligned.
3. :func:`write_package`: tensors in the order graph inputs, constants (first use), activations (production
   order), temps (per op: workspace, then DMA buffer); the records and the DMA list (one entry per weight op in
   execution order); :func:`.package.serialize`.

:func:`contract_problems` lists every way a graph breaks the runtime's contract (``lnn check --format thinker``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from lnn_core.errors import HardwareLimitError, ModelFileError
from lnn_core.graph import Graph, Node
from lnn_core.rules import Violation

from ..ops.opset import OpSet
from ..planner import (
    REGION_PSRAM,
    REGION_SHARE,
    GreedyPlanner,
    MemoryPlan,
    RegionPlan,
    ScratchPlacement,
    TensorPlacement,
    plan_memory,
)
from ..target import TARGET_ID, load_target
from .lowering import Problem, ThinkerLowering
from .package import MAX_DMA, MAX_IDS, MEM_PSRAM, MEM_SHARE, Dma, Op, Package, Tensor, a16, serialize

__all__ = ["FORMAT_NAME", "lower_graph", "plan_thinker", "write_package", "build_package", "contract_problems",
           "Lowered", "ALIGN"]

log = logging.getLogger("lnn.backend.thinker")

FORMAT_NAME = "thinker"
#: ``plan_thinker(params=...)``: constants prefetched from PSRAM (the default) or read in place in share-memory
PARAMS_PSRAM, PARAMS_SHARE = "psram", "share_mem"
ALIGN = 16


@dataclass
class _Const:
    key: str
    array: np.ndarray
    layout: int
    scale: float


@dataclass
class _Rec:
    node: Node
    low: ThinkerLowering
    inputs: list[str]
    attrs: bytes
    workspace: int
    dma_bytes: int  # 0: no DMA transfer
    dma: bool = False  # the record takes a DMA transfer (its lowering's dma, in a package with DMA)


@dataclass
class Lowered:
    """A graph lowered to thinker records (before placement)."""

    recs: list[_Rec]
    consts: dict[str, _Const]
    weight_steps: list[int] = field(default_factory=list)


def _lowering(ops: OpSet, node: Node) -> ThinkerLowering | None:
    op = ops.get(node.op_type)
    low = op.lowerings.get(FORMAT_NAME) if op is not None else None
    return low if isinstance(low, ThinkerLowering) else None


def _unsupported(graph: Graph, node: Node, ops: OpSet) -> ModelFileError:
    known = sorted(t for t, o in ops.items() if isinstance(o.lowerings.get(FORMAT_NAME), ThinkerLowering))
    return ModelFileError(f"node {node.name!r} ({node.op_type}) cannot be packed into a thinker package",
                          {"supported": ", ".join(known)}, "replace the op, or pack for lnn's simulator (--format lnn)",
                          path=graph.meta.get("source"), node=node.name)


def lower_graph(graph: Graph, ops: OpSet, *, dma: bool = True) -> Lowered:
    """Lower every node (see the module docstring, step 1); ``dma=False``: constants in share-memory, no op takes
    a DMA transfer.

    :raises ModelFileError: a node whose op has no thinker lowering.
    """
    consts: dict[str, _Const] = {}
    owner: dict[str, str] = {}  # IR constant -> the key of its first stored copy
    recs: list[_Rec] = []
    for node in graph.nodes:
        low = _lowering(ops, node)
        if low is None:
            raise _unsupported(graph, node, ops)
        op = ops[node.op_type]
        biases = {node.inputs[j] for j in op.bias_inputs() if j < len(node.inputs)}  # by name: records may reorder
        raw = list(low.inputs(node, graph)) if low.inputs is not None else list(node.inputs)
        names: list[str] = []
        dma_bytes = 0
        dma_from = 0 if low.dma_last is None else len(raw) - low.dma_last
        for i, item in enumerate(raw):
            carried = dma and low.dma and i >= dma_from
            if isinstance(item, np.ndarray):
                key = f"{node.name}/c{i}"
                consts[key] = _Const(key, np.ascontiguousarray(item), 0, -1.0)
                names.append(key)
                dma_bytes += a16(item.nbytes) if carried else 0
                continue
            if item not in graph.initializers:
                names.append(item)
                continue
            arr = np.asarray(graph.initializers[item])
            layout = 0
            if i in low.relayout:
                arr, layout = low.relayout[i](arr, node, graph)
            if item in biases and arr.dtype != np.int32:
                arr = arr.astype(np.int32)
            info = graph.tensors.get(item)
            scale = -1.0 if item in biases or info is None or info.exponent is None else float(info.exponent)
            key = item
            if item in owner and (carried or i in low.relayout):
                key = f"{item}@{node.name}"
            if key not in consts:
                consts[key] = _Const(key, np.array(arr, order="C"), layout, scale)  # keeps rank 0
                owner.setdefault(item, key)
            elif item in owner:
                key = owner[item]
            names.append(key)
            dma_bytes += a16(consts[key].array.nbytes) if carried else 0
        attrs = low.attrs(node, graph) if low.attrs is not None else b""
        work = low.workspace(node, graph) if low.workspace is not None else 0
        uses_dma = dma and low.dma
        recs.append(_Rec(node, low, names, attrs, int(work), dma_bytes if uses_dma else 0, uses_dma))
    return Lowered(recs, consts, [k for k, r in enumerate(recs) if r.dma])


def _temps(lowered: Lowered) -> list[tuple[str, str, int, int, int, str]]:
    """(name, kind, size, first step, last step, op) of every workspace and DMA buffer, in tensor-id order."""
    out = []
    prev = 0
    n_dma = 0
    for step, rec in enumerate(lowered.recs):
        if rec.workspace:
            out.append((f"workspace:{rec.node.name}", "workspace", rec.workspace, step, step, rec.node.name))
        if rec.dma:
            n_dma += 1
            out.append((f"dma_buffer{n_dma}", "prefetch", rec.dma_bytes, prev, step, rec.node.name))
            prev = step
    return out


def _activation_groups(graph: Graph, lowered: Lowered, ops: OpSet) -> tuple[dict[str, str], dict[str, list[int]]]:
    """tensor -> root buffer (reshape-like ops alias their input) and root -> [first step, last step]."""
    root: dict[str, str] = {}
    span: dict[str, list[int]] = {}
    last_step = max(len(lowered.recs) - 1, 0)
    for name in graph.inputs:
        root[name] = name
        span[name] = [0, 0]
    for step, rec in enumerate(lowered.recs):
        for t in rec.inputs:
            if t in root:
                r = root[t]
                span[r][1] = max(span[r][1], step)
        op = ops[rec.node.op_type]
        for t in rec.node.outputs:
            src = rec.node.inputs[0] if rec.node.inputs else ""
            if op.alias and src in root:
                root[t] = root[src]
                span[root[t]][1] = max(span[root[t]][1], step)
            else:
                root[t] = t
                span[t] = [step, step]
    for t in graph.outputs:
        if t in root:
            span[root[t]][1] = last_step
    return root, span


def plan_thinker(graph: Graph, *, share_mem: int | None = None, psram: int | None = None, scratch: bool = True,
                 ops: OpSet | None = None, params: str = "psram") -> MemoryPlan:
    """The runtime's memory plan of ``graph`` (module docstring, step 2) as a :class:`~..planner.MemoryPlan`.

    :param params: where the constants live: ``"psram"`` (prefetched by DMA into share-memory buffers) or
        ``"share_mem"`` (read in place: no DMA list, no DMA buffers; the application keeps the package's
        parameter section in share-memory, which the plan counts with the activations).
    :raises HardwareLimitError: the buffers do not fit share-memory (the thinker plan keeps every activation
        there; PSRAM holds the constants).
    """
    ops = ops if ops is not None else OpSet.builtin_only()
    limits = load_target().limits
    share_limit = int(share_mem if share_mem is not None else limits["memory.share_mem_bytes"])
    psram_limit = int(psram if psram is not None else limits["memory.psram_bytes"])
    in_share = params == PARAMS_SHARE
    lowered = lower_graph(graph, ops, dma=not in_share)
    root, span = _activation_groups(graph, lowered, ops)
    sizes: dict[str, int] = {}
    for t, r in root.items():
        sizes[r] = max(sizes.get(r, 0), graph.tensors[t].nbytes)
    planner = GreedyPlanner(ALIGN)
    roots = list(span)
    ids = {r: planner.add_buffer(sizes[r], *span[r]) for r in roots}
    temps = _temps(lowered)
    temp_ids = [planner.add_buffer(size, a, b) for _, _, size, a, b, _ in temps]
    need = planner.max_size
    blob = sum(a16(c.array.nbytes) for c in lowered.consts.values())
    share_need = need + (blob if in_share else 0)
    if share_need > share_limit or (blob > psram_limit and not in_share):
        region, have, limit = (("share-memory", share_need, share_limit) if share_need > share_limit
                               else ("PSRAM", blob, psram_limit))
        rule_id = "csk60xx.thinker.share_mem" if share_need > share_limit else "csk60xx.thinker.psram"
        v = Violation(graph.name, "graph", rule_id, f"the thinker plan needs {have} bytes of {region}", limit, have,
                      "shrink the largest layers, or pack for lnn's simulator (which can move tensors to PSRAM)",
                      TARGET_ID)
        raise HardwareLimitError(f"graph {graph.name!r} does not fit the {region} of a thinker package",
                                 {"rule": f"{rule_id}: the runtime holds {limit} bytes of {region}",
                                  "actual": f"{have} bytes"},
                                 "every activation of a thinker package lives in share-memory: shrink the largest "
                                 "layers" + (", or keep the constants in PSRAM (--format thinker)" if in_share else ""),
                                 target=TARGET_ID, rule_id=rule_id, limit=limit, actual=have, op_name=None,
                                 violations=[v])
    offsets = planner.offsets
    placements: dict[str, TensorPlacement] = {}
    for t, r in root.items():
        placements[t] = TensorPlacement(t, REGION_SHARE, offsets[ids[r]], graph.tensors[t].nbytes, span[r][0],
                                        span[r][1], None if t == r else r)
    scratch_out = {name: ScratchPlacement(name, kind, op, REGION_SHARE, offsets[i], size, a, b,
                                          "DMA'd weights" if kind == "prefetch" else "kernel workspace")
                   for (name, kind, size, a, b, op), i in zip(temps, temp_ids)}
    share = RegionPlan(REGION_SHARE, share_limit, a16(need), need, planner.lower_bound(),
                       sum(sizes.values()), list(placements), list(scratch_out),
                       prefetch_total=sum(s[2] for s in temps if s[1] == "prefetch"),
                       workspace_total=sum(s[2] for s in temps if s[1] == "workspace"))
    act = GreedyPlanner(ALIGN)
    for r in roots:
        act.add_buffer(sizes[r], *span[r])
    share.activation_lower_bound = act.lower_bound()
    regions = {REGION_SHARE: share, REGION_PSRAM: RegionPlan(REGION_PSRAM, psram_limit)}
    plan = MemoryPlan(placements, regions, [], ALIGN, len(graph.nodes), scratch_out, [n.name for n in graph.nodes])
    try:  # lnn's own plan of the same graph, for the comparison in the reports
        own = plan_memory(graph, share_mem=share_mem, psram=psram, scratch=scratch, ops=ops)
        own_share: int | None = own.regions[REGION_SHARE].size
    except HardwareLimitError:
        own_share = None
    plan.package = {"format": FORMAT_NAME, "parameters_bytes": blob, "parameters_in": params,
                    "dma_transfers": len(lowered.weight_steps),
                    "dma_buffer_bytes": share.prefetch_total, "lnn_share_mem_bytes": own_share}
    return plan


def build_package(graph: Graph, plan: MemoryPlan, ops: OpSet) -> Package:
    """The records of ``graph`` placed by ``plan`` (module docstring, step 3)."""
    in_share = (plan.package or {}).get("parameters_in") == PARAMS_SHARE
    lowered = lower_graph(graph, ops, dma=not in_share)
    order: list[str] = []
    seen: set[str] = set()

    def add(name: str) -> None:
        if name and name not in seen:
            seen.add(name)
            order.append(name)

    for t in graph.inputs:
        add(t)
    for rec in lowered.recs:
        for t in rec.inputs:
            if t in lowered.consts:
                add(t)
    for rec in lowered.recs:
        for t in rec.node.outputs:
            add(t)
    temps = _temps(lowered)
    param_type = MEM_SHARE if in_share else MEM_PSRAM
    producers = {t for rec in lowered.recs for t in rec.node.outputs}
    tensors: list[Tensor] = []
    for name in order:
        if name in lowered.consts:
            c = lowered.consts[name]
            tensors.append(Tensor(name, str(c.array.dtype), tuple(int(d) for d in c.array.shape), param_type, 0,
                                  c.scale, 0, c.layout, c.array))
            continue
        info = graph.tensors[name]
        p = plan.placements.get(name)
        if p is None:
            raise ModelFileError(f"tensor {name!r} has no place in the thinker memory plan", {},
                                 "plan the graph that is being packed", path=graph.meta.get("source"), node=None)
        if info.exponent is not None:
            scale = float(info.exponent)
        else:
            scale = 1.0 if name in producers else -1.0
        tensors.append(Tensor(name, info.dtype, tuple(int(d) for d in info.shape), MEM_SHARE, 1, scale, p.offset))
    ids = {t.name: i for i, t in enumerate(tensors)}
    temp_ids: dict[str, int] = {}
    for name, _, size, _, _, _ in temps:
        sp = plan.scratch[name]
        temp_ids[name] = len(tensors)
        tensors.append(Tensor(name, "int8", (size,), MEM_SHARE, 1, -1.0, sp.offset))
    records = []
    dma = []
    n_dma = 0
    for rec in lowered.recs:
        tmp = []
        if rec.workspace:
            tmp += [temp_ids[f"workspace:{rec.node.name}"]] * (1 + rec.low.workspace_repeats)
        if rec.dma:
            n_dma += 1
            buf = temp_ids[f"dma_buffer{n_dma}"]
            tmp.append(buf)
            carried = rec.inputs if rec.low.dma_last is None else rec.inputs[len(rec.inputs) - rec.low.dma_last:]
            first = next(t for t in carried if t in lowered.consts)
            dma.append(Dma(ids[first], buf, rec.dma_bytes))
        records.append(Op(rec.low.name, rec.attrs, [ids[t] for t in rec.inputs],
                          [ids[t] for t in rec.node.outputs], tmp, rec.node.name))
    arena = max([t.offset + t.nbytes for t in tensors if not t.constant] + [0])
    return Package(tensors, records, [ids[t] for t in graph.inputs], [ids[t] for t in graph.outputs],
                   {MEM_SHARE: a16(arena)}, dma, param_type)


def write_package(graph: Graph, plan: MemoryPlan, ops: OpSet) -> bytes:
    """``graph`` and its thinker ``plan`` as package bytes; refuses what the runtime cannot hold.

    :raises ModelFileError: an op without a thinker lowering, or a broken runtime contract (the first problem;
        ``lnn check --format thinker`` lists them all).
    """
    problems = contract_problems(graph, ops)
    if problems:
        node, p = problems[0]
        raise ModelFileError(f"node {node!r} cannot be written into a thinker package: {p.what}",
                             {"rule": p.rule, "limit": p.limit, "actual": p.actual,
                              "problems": len(problems)}, p.hint, path=graph.meta.get("source"), node=node,
                             limit=p.limit, actual=p.actual, rule_id=p.rule)
    blob = serialize(build_package(graph, plan, ops))
    log.info("thinker package: %d bytes", len(blob))
    return blob


def contract_problems(graph: Graph, ops: OpSet) -> list[tuple[str, Problem]]:
    """Every way ``graph`` (after the rewrites) breaks the thinker runtime's contract: (node name, problem)."""
    out: list[tuple[str, Problem]] = []
    lowerable = True
    for node in graph.nodes:
        low = _lowering(ops, node)
        if low is None:
            lowerable = False
            out.append((node.name, Problem("csk60xx.thinker.op", f"{node.op_type} has no thinker operator",
                                           "an op the thinker runtime runs", node.op_type,
                                           "replace the op, or pack for lnn's simulator (--format lnn)")))
            continue
        if low.check is not None:
            out.extend((node.name, p) for p in low.check(node, graph))
    if not lowerable or out:
        return out
    lowered = lower_graph(graph, ops)
    if len(lowered.weight_steps) > MAX_DMA:
        out.append((graph.name, Problem("csk60xx.thinker.dma_entries", "too many weight ops for the DMA table",
                                        MAX_DMA, len(lowered.weight_steps), "split the model into several packages")))
    for rec in lowered.recs:
        n = len(rec.inputs) + len(rec.node.outputs) + 2
        if n > MAX_IDS:
            out.append((rec.node.name, Problem("csk60xx.thinker.op_tensors", "too many tensors for one op",
                                               MAX_IDS, n, "concatenate in stages")))
    return out
