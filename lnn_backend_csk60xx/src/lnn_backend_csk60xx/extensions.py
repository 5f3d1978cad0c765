"""Ops contributed by other plugins to the CSK60xx backend: dialect schema, shape rule and simulator kernel.

A third-party op package makes its op packable and runnable on this target with two registrations,
both through existing registries of :mod:`lnn_core.registry` (no backend code changes)::

    from lnn_core import hookimpl

    @hookimpl
    def lnn_register_exporters(registry):
        from lnn_backend_csk60xx.dialect import OpSchema
        # teach the csk60xx dialect the IR op: domain, inputs, attributes, scales and the shape rule
        registry.add_node_writer("csk60xx", "TestNeg", OpSchema(
            "acme", (1, 1), scales={"scale_x": ("in", 0), "scale_o": ("out", 0)}, infer=infer_neg))

    @hookimpl
    def lnn_register_sim_kernels(registry):
        registry.add("TestNeg", neg_kernel)   # neg_kernel(call: KernelCall) -> np.ndarray

The packer writes such an op as an external op (``LNN_SIM_OP_EXTERNAL``: its type name and its
non-scale attributes as JSON, both in the strings section); the C loader validates it like any op
(input/output indices, string references), and at run time the C executor calls back into Python
(a cffi ``extern "Python"`` function, see :mod:`.simulator`), which runs the registered kernel and
writes its result at the output's planned offset in the arena.

:class:`PluginOps` gathers what a :class:`~lnn_core.plugins.PluginHost` holds for this target; the
``lnn`` commands build one per run and pass it down (``read_onnx(..., ops=)``, ``pack_graph(..., ops=)``,
``Simulator(..., kernels=ops.kernels)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lnn_core.errors import RegistryError

from .dialect import OP_SCHEMAS, OpSchema
from .target import TARGET_ID

__all__ = ["PluginOps"]


@dataclass(frozen=True)
class PluginOps:
    """Plugin ops known to the backend for one run.

    :param schemas: IR op type -> :class:`~.dialect.OpSchema` (with its ``infer`` shape rule).
    :param kernels: IR op type -> simulator kernel ``kernel(call: KernelCall) -> np.ndarray``.
    """

    schemas: Mapping[str, OpSchema] = field(default_factory=dict)
    kernels: Mapping[str, Callable[..., Any]] = field(default_factory=dict)

    @classmethod
    def from_host(cls, host: Any) -> PluginOps:
        """Collect the ``csk60xx`` node schemas and the simulator kernels registered on ``host``.

        :raises RegistryError: a registered schema is not an :class:`OpSchema`, lacks a shape rule, or
            names a built-in op.
        """
        schemas: dict[str, OpSchema] = {}
        for key, value in host.exporters.node_writers.items():
            dialect, _, op_type = key.partition(":")
            if dialect != TARGET_ID:
                continue
            source = host.exporters.node_writers.source_of(key)
            if op_type in OP_SCHEMAS:
                raise RegistryError(
                    f"plugin {source} redefines the built-in CSK60xx op {op_type!r}",
                    {"rule": "plugins add ops to the dialect; they do not replace built-in ones"},
                    "give the plugin's op its own name (e.g. AcmeNeg)", kind="csk60xx op schema", key=op_type,
                    first="lnn-backend-csk60xx", second=source)
            if not isinstance(value, OpSchema) or value.infer is None:
                raise RegistryError(
                    f"plugin {source} registers {type(value).__name__} for the csk60xx op {op_type!r}",
                    {"expected": "lnn_backend_csk60xx.dialect.OpSchema with a shape rule in 'infer'"},
                    "register OpSchema(domain, (min_inputs, max_inputs), attrs=..., scales=..., infer=...)",
                    kind="csk60xx op schema", key=op_type, first=source, second=None)
            schemas[op_type] = value
        return cls(schemas, dict(host.sim_kernels.items()))

    @property
    def shape_rules(self) -> dict[str, Callable[..., Any]]:
        """IR op type -> shape rule, for :func:`~.passes.infer_shapes`."""
        return {op: schema.infer for op, schema in self.schemas.items() if schema.infer is not None}
