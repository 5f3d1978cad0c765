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
  step of the last op that reads it (graph outputs: the last step). Reshape-like ops
  (:data:`~.passes.ALIAS_OPS`) alias their input: the two tensors form one buffer with the union
  of their lifetimes and share one offset. Everything is planned into share-memory first; while
  that plan is larger than share-memory, the buffer that is cheapest to keep in PSRAM is moved
  there and the plan is redone. "Cheapest" = fewest accesses (one write plus one per reading op)
  per byte of share-memory freed, among the buffers live where the share plan overflows; ties go
  to the larger buffer, then the name. Only when the PSRAM plan overflows too does planning fail
  (:class:`~lnn_core.errors.HardwareLimitError`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lnn_core.errors import HardwareLimitError, ModelFileError
from lnn_core.graph import Graph

from .passes import ALIAS_OPS

__all__ = ["GreedyPlanner", "MemoryConfig", "TensorPlacement", "RegionPlan", "MemoryPlan", "plan_memory",
           "REGION_SHARE", "REGION_PSRAM"]

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
    """Region sizes and alignment; defaults come from the target data file (targets/csk60xx.toml)."""

    share_mem: int
    psram: int
    alignment: int = 64

    @classmethod
    def from_target(cls, *, share_mem: int | None = None, psram: int | None = None,
                    alignment: int | None = None) -> MemoryConfig:
        from .target import load_target

        limits = load_target().limits
        return cls(share_mem=int(share_mem if share_mem is not None else limits["memory.share_mem_bytes"]),
                   psram=int(psram if psram is not None else limits["memory.psram_bytes"]),
                   alignment=int(alignment if alignment is not None else limits["memory.align_bytes"]))


@dataclass
class TensorPlacement:
    """Where one activation tensor lives; ``alias_of`` names the tensor whose buffer it shares."""

    name: str
    region: str
    offset: int
    size: int
    first_use: int
    last_use: int
    alias_of: str | None = None


@dataclass
class RegionPlan:
    """The plan of one region.

    :param size: arena bytes (``peak`` rounded up to the alignment).
    :param peak: highest end offset of any tensor in the plan.
    :param lower_bound: largest sum of tensors live at one step.
    :param total: sum of all tensor sizes in the region (what no reuse would need).
    """

    name: str
    limit: int
    size: int = 0
    peak: int = 0
    lower_bound: int = 0
    total: int = 0
    tensors: list[str] = field(default_factory=list)


@dataclass
class MemoryPlan:
    """Result of :func:`plan_memory`: placements per tensor, plans per region, tensors moved to PSRAM."""

    placements: dict[str, TensorPlacement]
    regions: dict[str, RegionPlan]
    spilled: list[str]
    alignment: int
    num_steps: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "alignment": self.alignment,
            "steps": self.num_steps,
            "spilled_to_psram": list(self.spilled),
            "regions": {k: {"limit": r.limit, "size": r.size, "peak": r.peak, "lower_bound": r.lower_bound,
                            "total": r.total, "tensors": list(r.tensors)} for k, r in self.regions.items()},
            "tensors": {k: {"region": p.region, "offset": p.offset, "size": p.size, "first_use": p.first_use,
                            "last_use": p.last_use, "alias_of": p.alias_of} for k, p in self.placements.items()},
        }


@dataclass
class _Group:
    root: str
    members: list[str]
    size: int
    first: int
    last: int
    accesses: int


def _groups(graph: Graph) -> tuple[list[_Group], dict[str, str]]:
    """Activation buffers: one per tensor, merged across reshape-like ops; returns groups and alias map."""
    n_steps = len(graph.nodes)
    root: dict[str, str] = {}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    accesses: dict[str, int] = {}
    for name in graph.inputs:
        root[name], first[name], last[name], accesses[name] = name, 0, 0, 1
    for step, node in enumerate(graph.nodes):
        for t in node.inputs:
            if t and t in root:
                last[t] = max(last[t], step)
                accesses[t] += 1
        for t in node.outputs:
            src = node.inputs[0] if node.inputs else ""
            alias = node.op_type in ALIAS_OPS and src in root
            root[t] = root[src] if alias else t
            first[t], last[t], accesses[t] = step, step, 1
    for t in graph.outputs:
        if t in last:
            last[t] = max(last[t], n_steps - 1, 0)
    groups: dict[str, _Group] = {}
    for name, r in root.items():
        info = graph.tensors.get(name)
        size = info.nbytes if info is not None else None
        if size is None:
            raise ModelFileError(f"tensor {name!r} has no known size, so it cannot be planned", {},
                                 "run shape inference before planning", path=graph.meta.get("source"), node=None)
        g = groups.get(r)
        if g is None:
            groups[r] = _Group(r, [name], size, first[name], last[name], accesses[name])
        else:
            g.members.append(name)
            g.size = max(g.size, size)
            g.first, g.last = min(g.first, first[name]), max(g.last, last[name])
            g.accesses += accesses[name]
    return list(groups.values()), root


def _plan_region(groups: Iterable[_Group], alignment: int) -> tuple[GreedyPlanner, list[_Group]]:
    planner = GreedyPlanner(alignment)
    gs = list(groups)
    for g in gs:
        planner.add_buffer(g.size, g.first, g.last)
    return planner, gs


def plan_memory(graph: Graph, *, share_mem: int | None = None, psram: int | None = None,
                config: MemoryConfig | None = None) -> MemoryPlan:
    """Plan every activation tensor of ``graph`` (graph inputs and node outputs; not initializers).

    ``graph`` must be topologically sorted with known shapes (:func:`~.passes.infer_shapes`).
    ``share_mem`` / ``psram`` override the target's region sizes in bytes.

    :raises HardwareLimitError: when the tensors do not fit share-memory and PSRAM together.
    """
    cfg = config or MemoryConfig.from_target(share_mem=share_mem, psram=psram)
    groups, root = _groups(graph)
    share = list(groups)
    spilled: list[_Group] = []
    while True:
        planner, share = _plan_region(share, cfg.alignment)
        if planner.max_size <= cfg.share_mem:
            break
        offsets = planner.offsets
        hot_steps = {t for i, g in enumerate(share) if offsets[i] + g.size > cfg.share_mem
                     for t in range(g.first, g.last + 1)}
        candidates = [g for g in share if any(g.first <= t <= g.last for t in hot_steps)]
        victim = min(candidates, key=lambda g: (g.accesses / max(g.size, 1), -g.size, g.root))
        share.remove(victim)
        spilled.append(victim)
        log.info("share-memory plan needs %d bytes > %d: moving %r (%d bytes, %d accesses) to PSRAM",
                 planner.max_size, cfg.share_mem, victim.root, victim.size, victim.accesses)
    psram_planner, spilled = _plan_region(spilled, cfg.alignment)
    if psram_planner.max_size > cfg.psram:
        biggest = sorted(groups, key=lambda g: -g.size)[:3]
        raise HardwareLimitError(
            f"graph {graph.name!r} does not fit the memory of target csk60xx (share-memory + PSRAM)",
            {"rule": f"csk60xx.memory.psram_bytes: activations moved to PSRAM must fit {cfg.psram} bytes",
             "actual": f"{psram_planner.max_size} bytes of PSRAM needed after {planner.max_size} bytes "
                       f"of share-memory ({cfg.share_mem} bytes available)",
             "largest": ", ".join(f"{g.root} ({g.size} bytes)" for g in biggest)},
            "reduce the input size or the channel counts of the largest layers",
            target="csk60xx", rule_id="csk60xx.memory.psram_bytes", limit=cfg.psram,
            actual=psram_planner.max_size, op_name=None, violations=[])

    placements: dict[str, TensorPlacement] = {}
    regions: dict[str, RegionPlan] = {}
    for region, pl, gs, limit in ((REGION_SHARE, planner, share, cfg.share_mem),
                                  (REGION_PSRAM, psram_planner, spilled, cfg.psram)):
        rp = RegionPlan(region, limit, _align(pl.max_size, cfg.alignment), pl.max_size, pl.lower_bound(),
                        sum(g.size for g in gs))
        for i, g in enumerate(gs):
            for name in g.members:
                size = graph.tensors[name].nbytes
                placements[name] = TensorPlacement(name, region, pl.offset(i), size, g.first, g.last,
                                                   None if name == g.root else g.root)
                rp.tensors.append(name)
        regions[region] = rp
    # keep the graph's tensor order in the placement table (deterministic output)
    placements = {name: placements[name] for name in root}
    log.info("memory plan: share-memory %d bytes (lower bound %d), PSRAM %d bytes, %d tensors moved",
             regions[REGION_SHARE].peak, regions[REGION_SHARE].lower_bound, regions[REGION_PSRAM].peak, len(spilled))
    return MemoryPlan(placements, regions, [g.root for g in spilled], cfg.alignment, len(graph.nodes))
