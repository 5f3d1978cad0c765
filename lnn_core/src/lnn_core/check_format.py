"""How a check reads, the same for ``lnn check FILE.onnx`` (the backend, no torch) and ``lnn check pkg:factory``
(the core's ``lnn.check``): the memory lines and the one verdict line."""

from __future__ import annotations

from typing import Any

__all__ = ["memory_lines", "verdict_line", "spill_line"]


def spill_line(spills: list[dict[str, Any]]) -> str | None:
    """The warning for activations in PSRAM (None when there are none): bytes, the layer that writes each, the ops
    that read it."""
    if not spills:
        return None
    total = sum(int(s.get("bytes", 0)) for s in spills)

    def one(s: dict[str, Any]) -> str:
        where = "graph input" if s.get("layer") == "input" else f"output of {s.get('layer')}"
        readers = s.get("read_by") or []
        return (f"{s.get('tensor')!r} ({where}, {s.get('bytes')} B, "
                + (f"read by {', '.join(readers)})" if readers else "a graph output)"))

    return (f"warning: {total} bytes of activations spill to PSRAM (slower than share-memory): "
            + "; ".join(one(s) for s in spills)
            + "; hint: shrink these layers or pass a larger --share-mem to keep them in share-memory")


def memory_lines(memory: dict[str, Any], fits: bool | None) -> list[str]:
    """The memory part of a check table: bytes against limits, or why there is no plan; spills to PSRAM."""
    if fits is None and not memory:
        return ["memory: not judged (the model could not be exported)"]
    if "share_mem_bytes" not in memory:
        reason = memory.get("reason")
        return ["memory: does not fit" + (f" ({reason})" if reason else "")] + [
            f"  {r.get('layer')}: {r.get('kind')} {r.get('tensor')!r} {r.get('bytes')} bytes"
            for r in memory.get("offenders") or []]
    m = memory
    lines = [f"memory: share-memory {m['share_mem_bytes']} of {m['share_mem_limit']} bytes "
             f"(activations lower bound {m.get('share_mem_activation_lower_bound')}, weight prefetch "
             f"{m.get('prefetch_bytes')}, workspace {m.get('workspace_bytes')}); PSRAM {m.get('psram_bytes')} of "
             f"{m.get('psram_limit')} bytes" + ("" if fits is not False else f"; does not fit: {m.get('reason')}")]
    warning = spill_line(m.get("spills") or [])
    if warning:
        lines.append(warning)
    return lines


def verdict_line(ok: bool, errors: int, problems: int, fits: bool | None) -> str:
    """The last line of a check: one verdict, with what stands in the way when it is no."""
    if ok:
        return "fits: yes"
    why = [f"{errors} rule error{'s' * (errors != 1)}"] if errors else []
    why += [f"{problems} problem{'s' * (problems != 1)}"] if problems else []
    why += ["the memory plan does not fit"] if fits is False else []
    return "fits: NO (" + ", ".join(why or ["see above"]) + ")"
