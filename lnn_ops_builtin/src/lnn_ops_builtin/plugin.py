"""The built-in op families, registered through the ``lnn`` entry point ``builtin``.

The family modules import torch, so this module imports them inside the hooks: loading the plugin
(every ``lnn`` command does) costs nothing, and only the commands that use op families or the
torch-side exporters (``lnn export``, ``lnn verify``, ...) import torch.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from lnn_core import hookimpl


def _families() -> tuple[ModuleType, ...]:
    """The family modules, in registration order (imported here: they import torch)."""
    from . import (
        activations,
        attention,
        bmm,
        conv,
        elementwise,
        embedding,
        layernorm,
        norm,
        pool,
        rnn,
        shape,
        sigmoid,
        softmax,
    )

    return (conv, norm, elementwise, pool, activations, shape, sigmoid, layernorm, softmax, bmm, embedding, attention,
            rnn)


@hookimpl
def lnn_register_ops(registry: Any) -> None:
    for module in _families():
        for family in module.FAMILIES:
            registry.add(family)


@hookimpl
def lnn_register_exporters(registry: Any) -> None:
    for module in _families():
        for op_id, writer in module.WRITERS.items():
            registry.add_node_writer("ir", op_id, writer)
    from .onnx_qdq import write_qdq

    def write(graph: Any, host: Any = None, **options: Any) -> Any:
        """The QDQ writer, with the lowerings the host's plugins register for their own IR ops."""
        lowerings = {}
        if host is not None:
            for key, fn in host.exporters.node_writers.items():
                dialect, _, op_type = key.partition(":")
                if dialect == "qdq":
                    lowerings[op_type] = fn
        return write_qdq(graph, lowerings=lowerings, **options)

    registry.add_writer("qdq", write)
