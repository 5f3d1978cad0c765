"""The torch-free chain: CSK60xx ONNX file -> IR -> shape inference -> memory plan -> model.bin bytes."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from lnn_core.graph import Graph

from .dialect import read_onnx
from .packer import pack
from .passes import infer_shapes
from .planner import MemoryPlan, plan_memory

__all__ = ["PackResult", "pack_graph", "pack_onnx"]

log = logging.getLogger("lnn.backend.pipeline")


@dataclass
class PackResult:
    """What packing produced: the model.bin bytes, the graph that was packed and its memory plan."""

    blob: bytes
    graph: Graph
    plan: MemoryPlan


def pack_graph(graph: Graph, *, share_mem: int | None = None, psram: int | None = None) -> PackResult:
    """Infer shapes of ``graph`` (a copy), plan its memory and pack it.

    :param share_mem: share-memory bytes available (default: the target file's 655360).
    :param psram: PSRAM bytes available (default: the target file's 8388608).
    """
    graph = infer_shapes(graph.copy(), path=graph.meta.get("source"))
    plan = plan_memory(graph, share_mem=share_mem, psram=psram)
    return PackResult(pack(graph, plan), graph, plan)


def pack_onnx(source: str | os.PathLike[str] | onnx.ModelProto, *, share_mem: int | None = None,
              psram: int | None = None, input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> bytes:
    """Read a CSK60xx-dialect ONNX file and return its model.bin bytes (read -> shapes -> plan -> pack)."""
    graph = read_onnx(source, input_shapes=input_shapes)
    return pack_graph(graph, share_mem=share_mem, psram=psram).blob
