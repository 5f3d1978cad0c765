"""Memory report of a plan: a text table, JSON, and a picture of memory over time.

Kept apart from the planner (Vela's ``stats_writer`` habit): the planner computes, this module only
presents. Per region it gives the arena size, the peak, the lower bound (the largest sum of buffers
live at one step: no placement can need less) and the totals by kind (activations, weight prefetch,
workspace); per buffer its region, offset, size and lifetime; and the tensors moved to PSRAM.

The PNG needs matplotlib (the optional extra ``report``); it is imported only by :func:`write_png`
and drawn with the Agg backend, so no display is needed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lnn_core.graph import Graph

from .planner import REGION_PSRAM, REGION_SHARE, MemoryPlan, layer_of
from .rewrites import PassReport

__all__ = ["memory_table", "memory_json", "memory_dict", "write_png", "write_reports", "spill_advice",
           "spill_warning", "write_failure_reports", "short_label"]

log = logging.getLogger("lnn.backend.report")

_REGIONS = (REGION_SHARE, REGION_PSRAM)


def spill_advice(plan: MemoryPlan, graph: Graph | None) -> list[dict[str, Any]]:
    """One entry per activation moved to PSRAM: the tensor, the layer that writes it, its bytes and the ops that
    read it (each read goes through the slower PSRAM path)."""
    layers = layer_of(graph) if graph is not None else {}
    readers: dict[str, list[str]] = {}
    for node in graph.nodes if graph is not None else []:
        for name in node.inputs:
            if name:
                readers.setdefault(name, []).append(node.name)
    out = []
    for name in plan.spilled:
        group = [p for p in plan.placements.values() if p.name == name or p.alias_of == name]
        size = max((p.offset + p.size for p in group), default=0) - min((p.offset for p in group), default=0)
        read = sorted({r for p in group for r in readers.get(p.name, [])})
        out.append({"tensor": name, "layer": layers.get(name, name), "bytes": size, "read_by": read})
    return out


def spill_warning(spills: list[dict[str, Any]]) -> str | None:
    """One line for the user when activations live in PSRAM (None when none do)."""
    from lnn_core.check_format import spill_line

    return spill_line(spills)


def memory_dict(plan: MemoryPlan, passes: PassReport | None = None, graph: Graph | None = None) -> dict[str, Any]:
    """Everything the reports show, as plain data (the JSON report)."""
    out = plan.to_dict()
    out["live_bytes"] = {r: plan.live_bytes(r) for r in _REGIONS}
    out["ops"] = list(plan.op_names)
    out["spills"] = spill_advice(plan, graph)
    if passes is not None:
        out["passes"] = passes.to_dict()
    return out


def memory_json(plan: MemoryPlan, passes: PassReport | None = None, graph: Graph | None = None) -> str:
    return json.dumps(memory_dict(plan, passes, graph), indent=2, sort_keys=False)


def _op(plan: MemoryPlan, step: int) -> str:
    return plan.op_names[step] if 0 <= step < len(plan.op_names) else str(step)


def package_line(plan: MemoryPlan) -> str:
    """What a package format's own plan adds (the thinker plan: its constants, DMA, and lnn's plan beside it)."""
    p = plan.package
    lnn = p.get("lnn_share_mem_bytes")
    return (f"{p.get('format')} package: constants {p.get('parameters_bytes')} bytes in {p.get('parameters_in')}, "
            f"{p.get('dma_transfers')} DMA transfers; share-memory {plan.regions[REGION_SHARE].size} bytes "
            f"against {lnn if lnn is not None else 'no fit'} for lnn's model.bin plan of the same graph")


def memory_table(plan: MemoryPlan, passes: PassReport | None = None, *, limit_rows: int | None = None,
                 graph: Graph | None = None) -> str:
    """The plan as text: a summary per region, the moved tensors, the splits, then one row per buffer."""
    lines = ["region       arena      peak  lower bound  activations  prefetch(max live)  workspace(max live)  limit"]
    for r in _REGIONS:
        rp = plan.regions[r]
        live = plan.live_bytes(r)
        lines.append(f"{r:<10} {rp.size:>8} {rp.peak:>9} {rp.lower_bound:>12} {rp.total:>12} "
                     f"{max(live['prefetch'], default=0):>19} {max(live['workspace'], default=0):>20} {rp.limit:>7}")
    share = plan.regions[REGION_SHARE]
    lines.append(f"share-memory lower bound over activations alone: {share.activation_lower_bound} bytes; "
                 f"weight prefetch buffers {share.prefetch_total} bytes and workspaces {share.workspace_total} "
                 "bytes in all (reused over time like tensors)")
    lines.append("moved to PSRAM: " + (", ".join(plan.spilled) if plan.spilled else "none"))
    if plan.package:
        lines.append(package_line(plan))
    warning = spill_warning(spill_advice(plan, graph)) if graph is not None else None
    if warning:
        lines.append(warning)
    if passes is not None:
        for f in passes.fused:
            lines.append(f"fused: {f.relu} into {f.conv}")
        for s in passes.splits:
            lines.append(f"split: {s.node} ({s.op_type}) along {s.axis} into {len(s.parts)} parts {list(s.parts)}: "
                         f"{s.reason}")
    rows = [("buffer", "kind", "region", "offset", "size", "first", "last", "note")]
    for p in plan.placements.values():
        rows.append((p.name, "tensor", p.region, str(p.offset), str(p.size), _op(plan, p.first_use),
                     _op(plan, p.last_use), f"inside {p.alias_of}" if p.alias_of else ""))
    for s in plan.scratch.values():
        rows.append((s.name, s.kind, s.region, str(s.offset), str(s.size), _op(plan, s.first_use),
                     _op(plan, s.last_use), s.detail))
    shown = rows if limit_rows is None else rows[:limit_rows + 1]
    widths = [min(max(len(r[i]) for r in shown), 44) for i in range(7)]
    lines.append("")
    for i, r in enumerate(shown):
        lines.append("  ".join(r[j][:widths[j]].ljust(widths[j]) for j in range(7)) + "  " + r[7])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  ----")
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more buffers (see memory.json)")
    return "\n".join(lines).rstrip() + "\n"


def short_label(name: str, width: int = 18) -> str:
    """A layer name short enough for an axis: the last parts of a module path, elided in the middle if need be."""
    if len(name) <= width:
        return name
    tail = name
    parts = name.split(".")
    for i in range(1, len(parts)):
        tail = "…" + ".".join(parts[i:])
        if len(tail) <= width:
            return tail
    half = (width - 1) // 2
    return name[:half] + "…" + name[-(width - 1 - half):]


def _label_steps(ax: Any, plan: MemoryPlan, most: int = 60) -> None:
    """The layer names under the x axis, rotated; at most ``most`` of them (every k-th) so they stay readable."""
    n = len(plan.op_names)
    if not n:
        return
    every = max(1, -(-n // most))
    ticks = list(range(0, n, every))
    ax.set_xticks(ticks)
    ax.set_xticklabels([short_label(plan.op_names[t]) for t in ticks], rotation=60, ha="right",
                       fontsize="x-small" if len(ticks) > 20 else "small")


def write_png(plan: MemoryPlan, path: str | Path, *, title: str = "memory plan") -> Path:
    """Draw memory over time: share-memory placements (offset vs. op step) and live bytes per region.

    :raises ModuleNotFoundError: matplotlib is not installed (``pip install lnn-backend-csk60xx[report]``).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt
    from matplotlib.patches import Rectangle

    colors = {"tensor": "#4c72b0", "prefetch": "#dd8452", "workspace": "#55a868"}
    fig, (ax_map, ax_live) = plt.subplots(2, 1, figsize=(max(11, 0.2 * len(plan.op_names)), 9),
                                          constrained_layout=True)
    steps = max(plan.num_steps, 1)
    share = plan.regions[REGION_SHARE]
    for p, size in plan.buffers(REGION_SHARE):
        ax_map.add_patch(Rectangle((p.first_use - 0.45, p.offset), p.last_use - p.first_use + 0.9, size,
                                   facecolor=colors["tensor"], edgecolor="black", linewidth=0.3, alpha=0.8))
    for s in plan.scratch.values():
        ax_map.add_patch(Rectangle((s.first_use - 0.45, s.offset), s.last_use - s.first_use + 0.9, s.size,
                                   facecolor=colors[s.kind], edgecolor="black", linewidth=0.3, alpha=0.8))
    ax_map.axhline(share.limit, color="red", linewidth=1, linestyle="--", label=f"limit {share.limit} B")
    ax_map.axhline(share.peak, color="black", linewidth=1, linestyle=":", label=f"peak {share.peak} B")
    ax_map.set_xlim(-1, steps)
    _label_steps(ax_map, plan)
    ax_map.set_ylim(0, max(share.peak, 1) * 1.08)
    ax_map.set_xlabel("layer (op step)")
    ax_map.set_ylabel("share-memory offset (bytes)")
    ax_map.set_title(f"{title}: share-memory placements (blue tensors, orange weight prefetch, green workspace)")
    ax_map.legend(loc="upper right")
    xs = list(range(plan.num_steps))
    live = plan.live_bytes(REGION_SHARE)
    ax_live.stackplot(xs, live["activations"], live["prefetch"], live["workspace"],
                      labels=["share-memory activations", "weight prefetch", "workspace"],
                      colors=[colors["tensor"], colors["prefetch"], colors["workspace"]], alpha=0.8)
    psram = plan.live_bytes(REGION_PSRAM)["activations"]
    if any(psram):
        ax_live.plot(xs, psram, color="purple", label="PSRAM activations")
    ax_live.axhline(share.lower_bound, color="black", linewidth=1, linestyle=":",
                    label=f"share-memory lower bound {share.lower_bound} B")
    ax_live.set_xlim(-1, steps)
    _label_steps(ax_live, plan)
    ax_live.set_xlabel("layer (op step)")
    ax_live.set_ylabel("live bytes")
    ax_live.legend(loc="upper right", fontsize="small")
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(plan: MemoryPlan, folder: str | Path, *, passes: PassReport | None = None,
                  title: str = "memory plan", graph: Graph | None = None) -> list[Path]:
    """Write ``memory.txt``, ``memory.json`` and (when matplotlib is installed) ``memory.png`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "memory.txt", folder / "memory.json"]
    written[0].write_text(memory_table(plan, passes, graph=graph), encoding="utf-8")
    written[1].write_text(memory_json(plan, passes, graph), encoding="utf-8")
    try:
        written.append(write_png(plan, folder / "memory.png", title=title))
    except ModuleNotFoundError:
        log.warning("matplotlib is not installed: memory.png not written (pip install lnn-backend-csk60xx[report])")
    return written


def write_failure_reports(exc: Any, folder: str | Path) -> list[Path]:
    """When packing is refused: ``memory.txt`` and ``memory.json`` with the reason, the rule violations and the
    largest buffers with the layers that hold them (what to shrink); no plan, so no picture."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    offenders = list(getattr(exc, "offenders", None) or [])
    violations = [v.to_dict() for v in getattr(exc, "violations", None) or []]
    data = {"ok": False, "error": exc.headline, "rule_id": getattr(exc, "rule_id", None),
            "limit": getattr(exc, "limit", None), "actual": getattr(exc, "actual", None),
            "steps": list(getattr(exc, "steps", None) or []), "offenders": offenders, "violations": violations}
    lines = ["packing refused: " + str(exc), ""]
    if offenders:
        lines.append("largest buffers (what to shrink first):")
        lines.append(f"{'layer':<40} {'kind':<11} {'bytes':>9}  tensor")
        lines += [f"{r['layer'][:40]:<40} {r['kind']:<11} {r['bytes']:>9}  {r['tensor']}" for r in offenders]
    for v in violations:
        lines.append(f"violation: {v.get('op_name')} ({v.get('op_type')}): {v.get('rule_id')}: {v.get('actual')}")
    written = [folder / "memory.txt", folder / "memory.json"]
    written[0].write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    written[1].write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    return written
