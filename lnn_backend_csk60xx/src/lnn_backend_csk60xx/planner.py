"""Memory planner: gives every activation tensor a region (share-memory or PSRAM) and an offset.

Two layers, as in TensorFlow Lite Micro:

* :class:`GreedyPlanner` — a region-agnostic offset planner behind a small interface
  (``add_buffer(size, first_use, last_use)``, ``offset(i)``, ``max_size``, ``overlaps()``).
  Algorithm (greedy by size, first fit by offset):

  1. sort the buffers by size, largest first (ties: earlier ``first_use``, then insertion order);
  2. for each buffer, collect the already placed buffers whose lifetimes intersect its own
     (``a.first <= b.last and b.first <= a.last``), sorted by offset;
  3. walk them and place the buffer at the lowest ``alignment``-aligned offset that ends before
     the next conflicting buffer starts (a gap), or after the last one.

  ``max_size`` is the highest end offset; :meth:`GreedyPlanner.lower_bound` is the largest sum
  of (aligned) sizes live at one step — no placement can need less.

* :func:`plan_memory` — builds the buffers of a :class:`~lnn_core.graph.Graph`: op ``i`` runs at
  step ``i``; a tensor lives from the step of the op that writes it (graph inputs: step 0) to the
  step of the last op that reads it (graph outputs: the last step).

  - Reshaping ops (``OpDef.alias``) alias their input: the two tensors form one buffer
    with the union of their lifetimes and share one offset.
  - In-place concatenation: a join (``OpDef.join``) whose inputs have the output's dtype and exponent (no
    rescale), along an axis with only size-1 dimensions before it, gets each input placed *inside*
    the output buffer at its byte offset (when that offset is aligned and the input is an ordinary
    op output read by nothing that needs it elsewhere); the simulator then finds source and
    destination equal and moves nothing. The split rewrite (:mod:`.rewrites`) produces such joins.
  - Per-op buffers in share-memory (sizes in docs/memory.md, "Scratch and prefetch"): a
    *weight prefetch* buffer for every op with weights (``OpDef.prefetch_bytes``; the weights live in
    flash and are DMA'd in, live from ``prefetch_lookahead`` ops before the op through the op), and a
    *workspace* for every operand (``OpDef.workspace``) that lives in PSRAM when the op's engine reads
    share-memory only.

  Everything is planned into share-memory first; while that plan is larger than share-memory, the
  activation buffer that is cheapest to keep in PSRAM is moved there (which may add workspaces) and
  the plan is redone. "Cheapest" = fewest accesses (one write plus one per reading op) per byte,
  among the buffers whose move lowers share-memory at a step where the plan overflows; ties go to the
  larger buffer, then the name. Planning fails (:class:`~lnn_core.errors.HardwareLimitError`) only
  when nothing is left to move, or when the PSRAM plan overflows too.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from lnn_core.errors import HardwareLimitError, ModelFileError
from lnn_core.graph import Graph, Node

from .ops.opset import OpSet
from .sizes import align as _align_up

__all__ = ["GreedyPlanner", "MemoryConfig", "TensorPlacement", "ScratchPlacement", "RegionPlan", "MemoryPlan",
           "plan_memory", "layer_of", "REGION_SHARE", "REGION_PSRAM"]

log = logging.getLogger("lnn.backend.planner")

REGION_SHARE = "share_mem"
REGION_PSRAM = "psram"


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclass
class _Buffer:
    size: int
    first_use: int
    last_use: int
    offset: int | None = None


class GreedyPlanner:
    """Offset planner for buffers with known lifetimes (see the module docstring for the algorithm).

    :param alignment: every offset is a multiple of this many bytes.
    """

    def __init__(self, alignment: int = 64) -> None:
        if alignment < 1:
            raise ValueError(f"alignment must be positive, got {alignment}")
        self.alignment = alignment
        self._buffers: list[_Buffer] = []
        self._planned = False

    def add_buffer(self, size: int, first_use: int, last_use: int) -> int:
        """Register ``size`` bytes live from step ``first_use`` to ``last_use`` (inclusive); returns the buffer id."""
        if size < 0 or first_use > last_use:
            raise ValueError(f"invalid buffer: size {size}, lifetime {first_use}..{last_use}")
        self._buffers.append(_Buffer(int(size), int(first_use), int(last_use)))
        self._planned = False
        return len(self._buffers) - 1

    def __len__(self) -> int:
        return len(self._buffers)

    def _plan(self) -> None:
        if self._planned:
            return
        order = sorted(range(len(self._buffers)),
                       key=lambda i: (-self._buffers[i].size, self._buffers[i].first_use, i))
        placed: list[_Buffer] = []
        for i in order:
            buf = self._buffers[i]
            conflicts = sorted((p for p in placed if p.first_use <= buf.last_use and buf.first_use <= p.last_use),
                               key=lambda p: (p.offset, p.size))
            candidate = 0
            for p in conflicts:
                if candidate + buf.size <= p.offset:
                    break
                candidate = max(candidate, _align(p.offset + p.size, self.alignment))
            buf.offset = candidate
            placed.append(buf)
        self._planned = True

    def offset(self, buffer_id: int) -> int:
        """The planned offset of buffer ``buffer_id``."""
        self._plan()
        return self._buffers[buffer_id].offset

    @property
    def offsets(self) -> list[int]:
        self._plan()
        return [b.offset for b in self._buffers]

    @property
    def max_size(self) -> int:
        """Bytes the plan needs: the highest end offset of any buffer (0 when empty)."""
        self._plan()
        return max((b.offset + b.size for b in self._buffers), default=0)

    def lower_bound(self) -> int:
        """Largest sum of aligned sizes of buffers live at the same step (no plan can need less)."""
        steps = sorted({b.first_use for b in self._buffers})
        return max((sum(_align(b.size, self.alignment) for b in self._buffers if b.first_use <= t <= b.last_use)
                    for t in steps), default=0)

    def live_at(self, step: int) -> list[int]:
        return [i for i, b in enumerate(self._buffers) if b.first_use <= step <= b.last_use]

    def overlaps(self) -> list[tuple[int, int]]:
        """Debug check: pairs of buffers that are live at a common step and share bytes (empty when sound)."""
        self._plan()
        bad = []
        bufs = self._buffers
        for i in range(len(bufs)):
            for j in range(i + 1, len(bufs)):
                a, b = bufs[i], bufs[j]
                if a.size and b.size and a.first_use <= b.last_use and b.first_use <= a.last_use \
                        and a.offset < b.offset + b.size and b.offset < a.offset + a.size:
                    bad.append((i, j))
        return bad


@dataclass(frozen=True)
class MemoryConfig:
    """Region sizes, alignment and the per-op buffer model; defaults come from targets/csk60xx.toml.

    :param share_mem: share-memory bytes available.
    :param psram: PSRAM bytes available.
    :param alignment: every buffer starts at a multiple of this.
    :param scratch: plan the weight-prefetch and workspace buffers (False: activations only).
    :param prefetch_align: the bias of a DMA'd weight blob starts at this alignment after the weights.
    :param prefetch_lookahead: a weight DMA starts this many ops before its op.
    :param workspace_max: largest copy-through workspace of a PSRAM operand.
    :param prefetch_max: largest packed-weight part of a prefetch buffer (the engine's weight buffer; an op
        whose weights are larger is split by the passes or reported by the rules).
    """

    share_mem: int
    psram: int
    alignment: int = 64
    scratch: bool = True
    prefetch_align: int = 16
    prefetch_lookahead: int = 1
    workspace_max: int = 65536
    prefetch_max: int = 32768

    @classmethod
    def from_target(cls, *, share_mem: int | None = None, psram: int | None = None,
                    alignment: int | None = None, scratch: bool = True) -> MemoryConfig:
        from .target import load_target

        limits = load_target().limits
        return cls(share_mem=int(share_mem if share_mem is not None else limits["memory.share_mem_bytes"]),
                   psram=int(psram if psram is not None else limits["memory.psram_bytes"]),
                   alignment=int(alignment if alignment is not None else limits["memory.align_bytes"]),
                   scratch=scratch, prefetch_align=int(limits["memory.prefetch_align"]),
                   prefetch_lookahead=int(limits["memory.prefetch_lookahead"]),
                   workspace_max=int(limits["memory.workspace_bytes_max"]),
                   prefetch_max=int(limits["conv.weight_bytes_max"]))


@dataclass
class TensorPlacement:
    """Where one activation tensor lives.

    ``alias_of`` names the tensor whose buffer it shares (reshape alias or in-place concatenation);
    ``offset`` is its own start (the buffer's offset plus its place inside the buffer).
    """

    name: str
    region: str
    offset: int
    size: int
    first_use: int
    last_use: int
    alias_of: str | None = None


@dataclass
class ScratchPlacement:
    """A per-op buffer in share-memory: ``kind`` is ``prefetch`` (DMA'd weights) or ``workspace``."""

    name: str
    kind: str
    op: str
    region: str
    offset: int
    size: int
    first_use: int
    last_use: int
    detail: str = ""


@dataclass
class RegionPlan:
    """The plan of one region.

    :param size: arena bytes (``peak`` rounded up to the alignment).
    :param peak: highest end offset of any buffer in the plan.
    :param lower_bound: largest sum of buffers live at one step (no placement can need less).
    :param total: sum of all activation tensor sizes in the region (what no reuse would need).
    :param activation_lower_bound: the same lower bound over activation buffers only.
    :param prefetch_total: bytes of weight-prefetch buffers (sum; they are reused like tensors).
    :param workspace_total: bytes of PSRAM-operand workspaces (sum).
    """

    name: str
    limit: int
    size: int = 0
    peak: int = 0
    lower_bound: int = 0
    total: int = 0
    tensors: list[str] = field(default_factory=list)
    scratch: list[str] = field(default_factory=list)
    activation_lower_bound: int = 0
    prefetch_total: int = 0
    workspace_total: int = 0


@dataclass
class MemoryPlan:
    """Result of :func:`plan_memory`: placements per tensor and per scratch buffer, plans per region,
    the tensors moved to PSRAM, and the live bytes per step (``timeline``). ``package`` holds what a package
    format adds to its own plan (the thinker plan: where the constants live and their bytes, the DMA transfers)."""

    placements: dict[str, TensorPlacement]
    regions: dict[str, RegionPlan]
    spilled: list[str]
    alignment: int
    num_steps: int
    scratch: dict[str, ScratchPlacement] = field(default_factory=dict)
    op_names: list[str] = field(default_factory=list)
    package: dict[str, Any] = field(default_factory=dict)

    def live_bytes(self, region: str) -> dict[str, list[int]]:
        """Per step, the bytes live in ``region`` by kind: ``activations``, ``prefetch``, ``workspace``."""
        out = {"activations": [0] * self.num_steps, "prefetch": [0] * self.num_steps,
               "workspace": [0] * self.num_steps}
        for p, size in self.buffers(region):
            for t in range(p.first_use, min(p.last_use, self.num_steps - 1) + 1):
                out["activations"][t] += _align(size, self.alignment)
        for sp in self.scratch.values():
            if sp.region == region:
                for t in range(sp.first_use, min(sp.last_use, self.num_steps - 1) + 1):
                    out[sp.kind][t] += _align(sp.size, self.alignment)
        return out

    def buffers(self, region: str) -> list[tuple[TensorPlacement, int]]:
        """The activation buffers of ``region``: each root tensor with the bytes its buffer spans."""
        roots = {name: p for name, p in self.placements.items() if p.region == region and p.alias_of is None}
        end = {name: p.offset + p.size for name, p in roots.items()}
        for p in self.placements.values():
            if p.alias_of in end:
                end[p.alias_of] = max(end[p.alias_of], p.offset + p.size)
        return [(p, end[name] - p.offset) for name, p in roots.items()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "alignment": self.alignment,
            "steps": self.num_steps,
            "spilled_to_psram": list(self.spilled),
            "package": dict(self.package),
            "regions": {k: {"limit": r.limit, "size": r.size, "peak": r.peak, "lower_bound": r.lower_bound,
                            "total": r.total, "activation_lower_bound": r.activation_lower_bound,
                            "prefetch_total": r.prefetch_total, "workspace_total": r.workspace_total,
                            "tensors": list(r.tensors), "scratch": list(r.scratch)}
                        for k, r in self.regions.items()},
            "tensors": {k: {"region": p.region, "offset": p.offset, "size": p.size, "first_use": p.first_use,
                            "last_use": p.last_use, "alias_of": p.alias_of} for k, p in self.placements.items()},
            "scratch": {k: {"kind": s.kind, "op": s.op, "region": s.region, "offset": s.offset, "size": s.size,
                            "first_use": s.first_use, "last_use": s.last_use, "detail": s.detail}
                        for k, s in self.scratch.items()},
        }


@dataclass
class _Group:
    root: str
    members: list[str]
    rel: dict[str, int]
    size: int
    first: int
    last: int
    accesses: int
    steps: set[int] = field(default_factory=set)


def _inplace_concats(graph: Graph, produced_by: dict[str, Node], alignment: int,
                     ops: OpSet) -> dict[str, tuple[str, int]]:
    """Inputs of no-rescale concatenations that can live inside the output buffer: input -> (output, byte offset)."""
    out: dict[str, tuple[str, int]] = {}
    claimed: set[str] = set()
    for node in graph.nodes:
        if node.op_type not in ops or not ops[node.op_type].join or not node.outputs:
            continue
        y = graph.tensors.get(node.outputs[0])
        if y is None or y.shape is None:
            continue
        rank = len(y.shape)
        axis = node.attrs.get("dim", 0) % rank
        if math.prod(y.shape[:axis]) != 1 or len(set(node.inputs)) != len(node.inputs):
            continue
        item = y.nbytes // max(math.prod(y.shape), 1)
        inner = math.prod(y.shape[axis + 1:])
        pos = 0
        for name in node.inputs:
            x = graph.tensors[name]
            offset = pos * inner * item
            pos += x.shape[axis]
            prod = produced_by.get(name)
            if (x.dtype != y.dtype or x.exponent != y.exponent or offset % alignment or prod is None
                    or _aliases(prod, ops) or name in graph.outputs or name in claimed):
                continue
            claimed.add(name)
            out[name] = (y.name, offset)
    return out


def _aliases(node: Node, ops: OpSet) -> bool:
    return node.op_type in ops and ops[node.op_type].alias


def _groups(graph: Graph, alignment: int, ops: OpSet) -> tuple[list[_Group], dict[str, str]]:
    """Activation buffers: one per tensor, merged across reshape-like ops and in-place concatenations;
    returns the groups and ``tensor -> root`` ."""
    n_steps = len(graph.nodes)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    accesses: dict[str, int] = {}
    steps: dict[str, set[int]] = {}
    parent: dict[str, tuple[str, int]] = {}
    produced_by: dict[str, Node] = {}
    for name in graph.inputs:
        first[name], last[name], accesses[name], steps[name] = 0, 0, 1, {0}
    for step, node in enumerate(graph.nodes):
        for t in node.inputs:
            if t and t in first:
                last[t] = max(last[t], step)
                accesses[t] += 1
                steps[t].add(step)
        for t in node.outputs:
            src = node.inputs[0] if node.inputs else ""
            if _aliases(node, ops) and src in first:
                parent[t] = (src, 0)
            first[t], last[t], accesses[t], steps[t] = step, step, 1, {step}
            produced_by[t] = node
    for t in graph.outputs:
        if t in last:
            last[t] = max(last[t], n_steps - 1, 0)
    for name, target in _inplace_concats(graph, produced_by, alignment, ops).items():
        parent.setdefault(name, target)

    def resolve(name: str) -> tuple[str, int]:
        rel = 0
        while name in parent:
            name, off = parent[name]
            rel += off
        return name, rel

    groups: dict[str, _Group] = {}
    root_of: dict[str, str] = {}
    for name in first:
        info = graph.tensors.get(name)
        size = info.nbytes if info is not None else None
        if size is None:
            raise ModelFileError(f"tensor {name!r} has no known size, so it cannot be planned", {},
                                 "run shape inference before planning", path=graph.meta.get("source"), node=None)
        root, rel = resolve(name)
        root_of[name] = root
        g = groups.get(root)
        if g is None:
            g = groups[root] = _Group(root, [], {}, 0, first[name], last[name], 0)
        g.members.append(name)
        g.rel[name] = rel
        g.size = max(g.size, rel + size)
        g.first, g.last = min(g.first, first[name]), max(g.last, last[name])
        g.accesses += accesses[name]
        g.steps |= steps[name]
    return list(groups.values()), root_of


@dataclass
class _Scratch:
    name: str
    kind: str
    op: str
    size: int
    first: int
    last: int
    detail: str


def _prefetch_buffers(graph: Graph, cfg: MemoryConfig, ops: OpSet) -> list[_Scratch]:
    out = []
    for step, node in enumerate(graph.nodes):
        op = ops.get(node.op_type)
        if op is None or op.prefetch_bytes is None or not op.params:
            continue
        weights = {p.weight for p in op.params}
        if any(w >= len(node.inputs) or node.inputs[w] not in graph.initializers for w in weights):
            continue
        packed = min(op.prefetch_bytes(graph, node), cfg.prefetch_max)
        extra = [graph.tensors[t].nbytes for i, t in enumerate(node.inputs)
                 if i > 0 and i not in weights and t and t in graph.initializers]
        size = _align_up(packed, cfg.prefetch_align) + sum(extra)
        out.append(_Scratch(f"prefetch:{node.name}", "prefetch", node.name, size,
                            max(0, step - cfg.prefetch_lookahead), step,
                            f"{node.op_type} weights {packed} B (packed), then {sum(extra)} B of bias at "
                            f"ALIGN{cfg.prefetch_align}"))
    return out


def _workspace_operands(graph: Graph, node: Node, ops: OpSet) -> list[tuple[Any, str, bool]]:
    """The operands of ``node`` that need a share-memory workspace when they live in PSRAM (``OpDef.workspace``):
    ``(input index or "out", tensor, whole tensor?)``. CPU ops, DMA-only ops and plugin ops have none."""
    op = ops.get(node.op_type)
    return [] if op is None or op.workspace is None else op.workspace(graph, node)


def _workspace_size(graph: Graph, cfg: MemoryConfig, tensor: str, whole: bool) -> int:
    size = graph.tensors[tensor].nbytes
    return size if whole else min(size, cfg.workspace_max)


def _workspace_buffers(graph: Graph, cfg: MemoryConfig, spilled_tensors: set[str], ops: OpSet) -> list[_Scratch]:
    out = []
    for step, node in enumerate(graph.nodes):
        op = ops.get(node.op_type)
        need = op.kernel_workspace(graph, node) if op is not None and op.kernel_workspace is not None else 0
        if need > 0:  # the kernel's own scratch, whatever region its operands live in
            out.append(_Scratch(f"workspace:{node.name}:kernel", "workspace", node.name, need, step, step,
                                f"{node.op_type} kernel scratch"))
        for where, t, whole in _workspace_operands(graph, node, ops):
            if t not in spilled_tensors:
                continue
            out.append(_Scratch(f"workspace:{node.name}:{t}", "workspace", node.name,
                                _workspace_size(graph, cfg, t, whole), step, step,
                                f"{node.op_type} {'output' if where == 'out' else 'input'} {t!r} lives in PSRAM"))
    return out


def _workspace_cost(graph: Graph, cfg: MemoryConfig, g: _Group, step: int, ops: OpSet) -> int:
    """Workspace bytes moving ``g`` to PSRAM adds at ``step`` (its share-memory saving there is size - this):
    exactly the workspaces :func:`_workspace_buffers` would plan for ``g``'s tensors at that step."""
    node = graph.nodes[step] if step < len(graph.nodes) else None
    if node is None or step not in g.steps:
        return 0
    return sum(_workspace_size(graph, cfg, t, whole) for _, t, whole in _workspace_operands(graph, node, ops)
               if t in g.rel)


def _plan_share(groups: list[_Group], scratch: list[_Scratch], alignment: int) -> GreedyPlanner:
    planner = GreedyPlanner(alignment)
    for g in groups:
        planner.add_buffer(g.size, g.first, g.last)
    for sc in scratch:
        planner.add_buffer(sc.size, sc.first, sc.last)
    return planner


def layer_of(graph: Graph) -> dict[str, str]:
    """Tensor name -> the name of the op that writes it (the layer's module path in files lnn exports; a graph
    input maps to ``input``)."""
    out = {name: "input" for name in graph.inputs}
    for node in graph.nodes:
        for name in node.outputs:
            out[name] = node.name
    return out


def _offenders(graph: Graph, groups: list[_Group], scratch: list[_Scratch], steps: set[int] | None,
               count: int = 8) -> list[dict[str, Any]]:
    """The largest buffers (live at ``steps``; all when None) with the layer that writes or uses each, for advice."""
    layers = layer_of(graph)
    rows = [{"layer": layers.get(g.root, g.root), "tensor": g.root, "kind": "activation", "bytes": g.size}
            for g in groups if steps is None or any(g.first <= t <= g.last for t in steps)]
    rows += [{"layer": sc.op, "tensor": sc.name, "kind": sc.kind, "bytes": sc.size}
             for sc in scratch if steps is None or any(sc.first <= t <= sc.last for t in steps)]
    return sorted(rows, key=lambda r: (-r["bytes"], r["tensor"]))[:count]


def _describe(rows: list[dict[str, Any]]) -> str:
    return "\n".join(f"{r['layer']}: {r['kind']} {r['tensor']!r} {r['bytes']} bytes" for r in rows)


def plan_memory(graph: Graph, *, share_mem: int | None = None, psram: int | None = None,
                config: MemoryConfig | None = None, scratch: bool = True, ops: OpSet | None = None) -> MemoryPlan:
    """Plan every activation tensor of ``graph`` (graph inputs and node outputs; not initializers), and
    the per-op prefetch and workspace buffers in share-memory.

    ``graph`` must be topologically sorted with known shapes (:func:`~.passes.infer_shapes`).
    ``share_mem`` / ``psram`` override the target's region sizes in bytes; ``scratch=False`` plans the
    activations only.

    :raises HardwareLimitError: when the buffers do not fit share-memory and PSRAM together.
    """
    cfg = config or MemoryConfig.from_target(share_mem=share_mem, psram=psram, scratch=scratch)
    ops = ops if ops is not None else OpSet.builtin_only()
    groups, root = _groups(graph, cfg.alignment, ops)
    prefetch = _prefetch_buffers(graph, cfg, ops) if cfg.scratch else []
    share = list(groups)
    spilled: list[_Group] = []
    while True:
        spilled_tensors = {m for g in spilled for m in g.members}
        work = _workspace_buffers(graph, cfg, spilled_tensors, ops) if cfg.scratch else []
        planner = _plan_share(share, prefetch + work, cfg.alignment)
        if planner.max_size <= cfg.share_mem:
            break
        offsets = planner.offsets
        sizes = [g.size for g in share] + [sc.size for sc in prefetch + work]
        spans = [(g.first, g.last) for g in share] + [(sc.first, sc.last) for sc in prefetch + work]
        hot_steps = {t for i, (a, b) in enumerate(spans) if offsets[i] + sizes[i] > cfg.share_mem
                     for t in range(a, b + 1)}
        candidates = [g for g in share if any(
            g.first <= t <= g.last and g.size > (_workspace_cost(graph, cfg, g, t, ops) if cfg.scratch else 0)
            for t in hot_steps)]
        if not candidates:
            offenders = _offenders(graph, share, prefetch + work, hot_steps)
            raise HardwareLimitError(
                f"graph {graph.name!r} does not fit the share-memory of target csk60xx",
                {"rule": f"csk60xx.memory.share_mem_bytes: share-memory holds {cfg.share_mem} bytes",
                 "actual": f"{planner.max_size} bytes needed with {len(spilled)} tensors already in PSRAM; "
                           "what is left (weight prefetch, workspaces, tensors the ops at the overflowing "
                           "steps read or write) cannot move",
                 "steps": ", ".join(graph.nodes[t].name for t in sorted(hot_steps)[:5] if t < len(graph.nodes)),
                 "largest there": _describe(offenders)},
                f"shrink the largest layers above (fewer channels, a stride of 2 earlier), or pass a --share-mem "
                f"of at least {planner.max_size}",
                target="csk60xx", rule_id="csk60xx.memory.share_mem_bytes", limit=cfg.share_mem,
                actual=planner.max_size, op_name=offenders[0]["layer"] if offenders else None, violations=[],
                offenders=offenders, steps=[graph.nodes[t].name for t in sorted(hot_steps) if t < len(graph.nodes)])
        victim = min(candidates, key=lambda g: (g.accesses / max(g.size, 1), -g.size, g.root))
        share.remove(victim)
        spilled.append(victim)
        log.info("share-memory plan needs %d bytes > %d: moving %r (%d bytes, %d accesses) to PSRAM",
                 planner.max_size, cfg.share_mem, victim.root, victim.size, victim.accesses)
    psram_planner = _plan_share(spilled, [], cfg.alignment)
    if psram_planner.max_size > cfg.psram:
        offenders = _offenders(graph, spilled, [], None)
        raise HardwareLimitError(
            f"graph {graph.name!r} does not fit the memory of target csk60xx (share-memory + PSRAM)",
            {"rule": f"csk60xx.memory.psram_bytes: activations moved to PSRAM must fit {cfg.psram} bytes",
             "actual": f"{psram_planner.max_size} bytes of PSRAM needed after {planner.max_size} bytes "
                       f"of share-memory ({cfg.share_mem} bytes available)",
             "largest in PSRAM": _describe(offenders)},
            "reduce the input size or the channel counts of the largest layers above",
            target="csk60xx", rule_id="csk60xx.memory.psram_bytes", limit=cfg.psram,
            actual=psram_planner.max_size, op_name=offenders[0]["layer"] if offenders else None, violations=[],
            offenders=offenders, steps=[])

    placements: dict[str, TensorPlacement] = {}
    regions: dict[str, RegionPlan] = {}
    scratch_out: dict[str, ScratchPlacement] = {}
    for region, pl, gs, extra, limit in ((REGION_SHARE, planner, share, prefetch + work, cfg.share_mem),
                                         (REGION_PSRAM, psram_planner, spilled, [], cfg.psram)):
        act_lb = _plan_share(gs, [], cfg.alignment).lower_bound()
        rp = RegionPlan(region, limit, _align(pl.max_size, cfg.alignment), pl.max_size, pl.lower_bound(),
                        sum(g.size for g in gs), activation_lower_bound=act_lb,
                        prefetch_total=sum(sc.size for sc in extra if sc.kind == "prefetch"),
                        workspace_total=sum(sc.size for sc in extra if sc.kind == "workspace"))
        offsets = pl.offsets
        for i, g in enumerate(gs):
            for name in g.members:
                placements[name] = TensorPlacement(name, region, offsets[i] + g.rel[name], graph.tensors[name].nbytes,
                                                   g.first, g.last, None if name == g.root else g.root)
                rp.tensors.append(name)
        for j, sc in enumerate(extra):
            scratch_out[sc.name] = ScratchPlacement(sc.name, sc.kind, sc.op, region, offsets[len(gs) + j], sc.size,
                                                    sc.first, sc.last, sc.detail)
            rp.scratch.append(sc.name)
        regions[region] = rp
    # keep the graph's tensor order in the placement table (deterministic output)
    placements = {name: placements[name] for name in root}
    log.info("memory plan: share-memory %d bytes (lower bound %d; prefetch %d, workspace %d), PSRAM %d bytes, "
             "%d tensors moved", regions[REGION_SHARE].peak, regions[REGION_SHARE].lower_bound,
             regions[REGION_SHARE].prefetch_total, regions[REGION_SHARE].workspace_total,
             regions[REGION_PSRAM].peak, len(spilled))
    return MemoryPlan(placements, regions, [g.root for g in spilled], cfg.alignment, len(graph.nodes),
                      scratch_out, [n.name for n in graph.nodes])
