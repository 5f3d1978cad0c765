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

from .planner import REGION_PSRAM, REGION_SHARE, MemoryPlan
from .rewrites import PassReport

__all__ = ["memory_table", "memory_json", "memory_dict", "write_png", "write_reports"]

log = logging.getLogger("lnn.backend.report")

_REGIONS = (REGION_SHARE, REGION_PSRAM)


def memory_dict(plan: MemoryPlan, passes: PassReport | None = None) -> dict[str, Any]:
    """Everything the reports show, as plain data (the JSON report)."""
    out = plan.to_dict()
    out["live_bytes"] = {r: plan.live_bytes(r) for r in _REGIONS}
    out["ops"] = list(plan.op_names)
    if passes is not None:
        out["passes"] = passes.to_dict()
    return out


def memory_json(plan: MemoryPlan, passes: PassReport | None = None) -> str:
    return json.dumps(memory_dict(plan, passes), indent=2, sort_keys=False)


def _op(plan: MemoryPlan, step: int) -> str:
    return plan.op_names[step] if 0 <= step < len(plan.op_names) else str(step)


def package_line(plan: MemoryPlan) -> str:
    """What a package format's own plan adds (the thinker plan: its constants, DMA, and lnn's plan beside it)."""
    p = plan.package
    lnn = p.get("lnn_share_mem_bytes")
    return (f"{p.get('format')} package: constants {p.get('parameters_bytes')} bytes in {p.get('parameters_in')}, "
            f"{p.get('dma_transfers')} DMA transfers; share-memory {plan.regions[REGION_SHARE].size} bytes "
            f"against {lnn if lnn is not None else 'no fit'} for lnn's model.bin plan of the same graph")


def memory_table(plan: MemoryPlan, passes: PassReport | None = None, *, limit_rows: int | None = None) -> str:
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


def write_png(plan: MemoryPlan, path: str | Path, *, title: str = "memory plan") -> Path:
    """Draw memory over time: share-memory placements (offset vs. op step) and live bytes per region.

    :raises ModuleNotFoundError: matplotlib is not installed (``pip install lnn-backend-csk60xx[report]``).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt
    from matplotlib.patches import Rectangle

    colors = {"tensor": "#4c72b0", "prefetch": "#dd8452", "workspace": "#55a868"}
    fig, (ax_map, ax_live) = plt.subplots(2, 1, figsize=(11, 8), constrained_layout=True)
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
    ax_map.set_ylim(0, max(share.peak, 1) * 1.08)
    ax_map.set_xlabel("op step")
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
    ax_live.set_xlabel("op step")
    ax_live.set_ylabel("live bytes")
    ax_live.legend(loc="upper right", fontsize="small")
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(plan: MemoryPlan, folder: str | Path, *, passes: PassReport | None = None,
                  title: str = "memory plan") -> list[Path]:
    """Write ``memory.txt``, ``memory.json`` and (when matplotlib is installed) ``memory.png`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "memory.txt", folder / "memory.json"]
    written[0].write_text(memory_table(plan, passes), encoding="utf-8")
    written[1].write_text(memory_json(plan, passes), encoding="utf-8")
    try:
        written.append(write_png(plan, folder / "memory.png", title=title))
    except ModuleNotFoundError:
        log.warning("matplotlib is not installed: memory.png not written (pip install lnn-backend-csk60xx[report])")
    return written
