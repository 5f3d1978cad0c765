""":class:`OpSet`: the ops and package formats one run of the backend knows, built from a plugin host.

Built-in op families and third-party op packages register the same way (``lnn_register_target_ops``);
an ``OpSet`` is the snapshot the phase modules ask: ``ops[op_type]`` is the op's :class:`~.base.OpDef`,
``ops.rules_for(op_type)`` its hardware rules, ``ops.formats`` the package formats, ``ops.kernels`` the
Python simulator kernels. Without a host, :meth:`OpSet.builtin` holds the built-in families only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import attrs

from lnn_core.errors import RegistryError
from lnn_core.registry import TargetOpRegistry
from lnn_core.rules import Rule

from ..target import TARGET_ID
from .base import OpDef

if TYPE_CHECKING:
    from ..formats import PackageFormat

__all__ = ["OpSet"]


class OpSet(Mapping[str, OpDef]):
    """IR op type -> :class:`~.base.OpDef` for one run, with the rules, kernels and package formats.

    :param ops: op type -> definition, in registration order.
    :param formats: format name -> package format.
    :param sources: op type -> the plugin that registered it (for messages).
    :param builtin: the op types the CSK60xx backend itself registered.
    """

    def __init__(self, ops: Mapping[str, OpDef], formats: Mapping[str, PackageFormat],
                 sources: Mapping[str, str] | None = None, builtin: frozenset[str] = frozenset(),
                 extra_kernels: Mapping[str, Callable[..., Any]] | None = None) -> None:
        # kernels registered through the deprecated lnn_register_sim_kernels hook join their op's definition
        extra = dict(extra_kernels or {})
        self._ops = {t: (replace(op, kernel=extra[t]) if op.kernel is None and t in extra else op)
                     for t, op in ops.items()}
        self.formats = dict(formats)
        self.sources = dict(sources or {})
        self.builtin = builtin
        self._rules, self._rules_by_op = self._bind_rules()

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_registry(cls, registry: TargetOpRegistry, *, builtin: frozenset[str] = frozenset(),
                      extra_kernels: Mapping[str, Callable[..., Any]] | None = None) -> OpSet:
        """Validate and collect the CSK60xx ops and formats of ``registry``.

        :raises RegistryError: a registered op is not an :class:`OpDef` or its op type disagrees with its key.
        """
        ops = registry.ops(TARGET_ID)
        sources = {op: registry.source_of(f"{TARGET_ID}:{op}") for op in ops}
        for op_type, op in ops.items():
            if not isinstance(op, OpDef) or not callable(op.infer):
                raise RegistryError(
                    f"plugin {sources[op_type]} registers {type(op).__name__} for the csk60xx op {op_type!r}",
                    {"expected": "lnn_backend_csk60xx.ops.OpDef with a shape rule in 'infer'"},
                    "register OpDef(op_type, domain, (min_inputs, max_inputs), infer, ...)",
                    kind="target op", key=op_type, first=sources[op_type], second=None)
        return cls(ops, registry.formats(TARGET_ID), sources, builtin, extra_kernels)

    @classmethod
    def from_host(cls, host: Any) -> OpSet:
        """The ops and formats every plugin of ``host`` registered for the CSK60xx (the backend's own included)."""
        from ..plugin import builtin_op_types

        legacy = dict(host.sim_kernels.items()) if hasattr(host, "sim_kernels") else {}
        return cls.from_registry(host.target_ops, builtin=builtin_op_types(), extra_kernels=legacy)

    @classmethod
    def builtin_only(cls) -> OpSet:
        """The backend's built-in op families and formats, registered exactly as the plugin host registers them
        (built once per process: an OpSet is not changed after construction)."""
        return _builtin_opset()

    # -- mapping -----------------------------------------------------------------------------------
    def __getitem__(self, op_type: str) -> OpDef:
        return self._ops[op_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def is_plugin(self, op_type: str) -> bool:
        """Whether ``op_type`` comes from another plugin than the backend itself."""
        return op_type in self._ops and op_type not in self.builtin

    # -- what the phases ask -----------------------------------------------------------------------
    @property
    def kernels(self) -> dict[str, Callable[..., Any]]:
        """IR op type -> Python simulator kernel, for ops that run as external ops."""
        return {t: op.kernel for t, op in self._ops.items() if op.kernel is not None}

    def rules_for(self, op_type: str) -> list[Rule]:
        """Every rule judging ``op_type`` (an IR op type, or a torch op id that exports to one of the ops)."""
        return list(self._rules_by_op.get(op_type, ()))

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every distinct rule, each bound to the op types (IR and torch) it judges: the op rules, then the
        pack-time rules."""
        return self._rules

    def format(self, name: str) -> PackageFormat:
        """The package format called ``name``.

        :raises RegistryError: no installed plugin registers it (the message lists the known ones).
        """
        fmt = self.formats.get(name)
        if fmt is None:
            raise RegistryError(f"package format {name!r} is not known for target {TARGET_ID}",
                                {"known": ", ".join(sorted(self.formats)) or "-"},
                                "choose one of the known formats, or install the plugin that provides it",
                                kind="package format", key=name, first=None, second=None)
        return fmt

    def _bind_rules(self) -> tuple[tuple[Rule, ...], dict[str, tuple[Rule, ...]]]:
        judged: dict[str, list[str]] = {}
        order: dict[str, Rule] = {}
        pack_order: dict[str, Rule] = {}
        for op_type, op in self._ops.items():
            for group, targets in ((op.rules, (op_type, *op.torch_ops)), (op.pack_rules, (op_type,))):
                for r in group:
                    seen = order.get(r.id) or pack_order.get(r.id)
                    if seen is not None and seen is not r:
                        raise RegistryError(
                            f"two different rules have the id {r.id!r}",
                            {"first": self.sources.get(op_type, "?")}, "give each rule its own id",
                            kind="rule", key=r.id, first=self.sources.get(op_type), second=None)
                    (order if group is op.rules else pack_order).setdefault(r.id, r)
                    names = judged.setdefault(r.id, [])
                    names.extend(t for t in targets if t not in names)
        bound = {rid: attrs.evolve(r, ops=tuple(judged[rid])) for rid, r in {**order, **pack_order}.items()}
        ordered = tuple(bound[rid] for rid in [*order, *pack_order])
        by_op: dict[str, list[Rule]] = {}
        for r in ordered:
            for t in r.ops:
                by_op.setdefault(t, []).append(r)
        return ordered, {t: tuple(rs) for t, rs in by_op.items()}


@functools.cache
def _builtin_opset() -> OpSet:
    from ..plugin import builtin_op_types, lnn_register_target_ops

    registry = TargetOpRegistry()
    registry.source = "'csk60xx' (lnn-backend-csk60xx)"
    lnn_register_target_ops(registry)
    return OpSet.from_registry(registry, builtin=builtin_op_types())
