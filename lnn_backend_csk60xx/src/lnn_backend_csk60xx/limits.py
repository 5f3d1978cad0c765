"""The limits of lnn's model.bin, as the C loader enforces them: one source of truth.

The numbers live in ``csrc/include/lnn_sim.h`` (``LNN_SIM_MAX_*``) and are read here through cffi, so the
packer (which refuses first, naming the node and tensor) and the simulator's loader cannot disagree.
:data:`SIM_LIMITS` is a frozen snapshot of them; :func:`attr_json_depth` measures a plugin op's attributes
the way the loader bounds them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lnn_core.errors import ConfigError, ModelFileError

from ._sim import lib

__all__ = ["SimLimits", "SIM_LIMITS", "attr_json_depth", "check_attr_nesting", "parse_macs"]

_MAC_UNITS = {"": 1, "K": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12}


@dataclass(frozen=True)
class SimLimits:
    """What ``lnn_sim_load`` accepts (``LNN_SIM_MAX_*`` in ``lnn_sim.h``)."""

    max_exponent: int  #: |exponent| of any integer tensor (``real = q / 2**n``)
    max_left_shift: int  #: elementwise add/sub: n_o - n_x and n_o - n_y at most this
    max_pool_shift: int  #: average pooling: |n_o - n_x| at most this
    max_rank: int
    max_attrs: int  #: int32 attributes of one op record
    max_tensors: int
    max_ops: int
    max_op_inputs: int
    max_op_outputs: int
    max_graph_io: int  #: graph inputs, and graph outputs, each
    max_tensor_bytes: int
    max_region_bytes: int
    max_window: int  #: kernel, stride, pad, dilation of conv and pool ops
    max_window_area: int  #: kh * kw
    max_groups: int
    max_attr_json_bytes: int  #: a plugin op's attributes as JSON
    max_attr_json_depth: int  #: nesting of its arrays and objects (the attribute object itself is 1)
    default_max_macs: int  #: the loader's default work limit (``Simulator(max_macs=)``, ``lnn run --max-macs``)

    @classmethod
    def from_c(cls) -> SimLimits:
        return cls(
            max_exponent=lib.LNN_SIM_MAX_EXPONENT, max_left_shift=lib.LNN_SIM_MAX_LEFT_SHIFT,
            max_pool_shift=lib.LNN_SIM_MAX_POOL_SHIFT, max_rank=lib.LNN_SIM_MAX_RANK,
            max_attrs=lib.LNN_SIM_MAX_ATTRS, max_tensors=lib.LNN_SIM_MAX_TENSORS, max_ops=lib.LNN_SIM_MAX_OPS,
            max_op_inputs=lib.LNN_SIM_MAX_OP_INPUTS, max_op_outputs=lib.LNN_SIM_MAX_OP_OUTPUTS,
            max_graph_io=lib.LNN_SIM_MAX_GRAPH_IO, max_tensor_bytes=lib.LNN_SIM_MAX_TENSOR_BYTES,
            max_region_bytes=lib.LNN_SIM_MAX_REGION_BYTES, max_window=lib.LNN_SIM_MAX_WINDOW,
            max_window_area=lib.LNN_SIM_MAX_WINDOW_AREA, max_groups=lib.LNN_SIM_MAX_GROUPS,
            max_attr_json_bytes=lib.LNN_SIM_MAX_ATTR_JSON_BYTES, max_attr_json_depth=lib.LNN_SIM_MAX_ATTR_JSON_DEPTH,
            default_max_macs=int(lib.LNN_SIM_DEFAULT_MAX_MACS))


#: the limits of the simulator this package was built with
SIM_LIMITS = SimLimits.from_c()


def attr_json_depth(value: Any, stop: int | None = None) -> int:
    """How deeply lists/tuples and dicts nest in ``value`` (a scalar is 0, ``{"a": [1]}`` is 2), without recursion;
    counting stops once ``stop`` is passed (so a 100,000-deep value costs ``stop`` steps)."""
    deepest = 0
    stack: list[tuple[Iterator[Any], int]] = []

    def enter(item: Any, depth: int) -> None:
        nonlocal deepest
        if isinstance(item, dict):
            children: Iterator[Any] = iter(item.values())
        elif isinstance(item, (list, tuple)):
            children = iter(item)
        else:
            return
        deepest = max(deepest, depth + 1)
        if stop is None or deepest <= stop:
            stack.append((children, depth + 1))

    enter(value, 0)
    while stack:
        children, depth = stack[-1]
        child = next(children, stack)
        if child is stack:
            stack.pop()
        else:
            enter(child, depth)
    return deepest


def parse_macs(text: str, *, option: str = "--max-macs") -> int:
    """``40000000000``, ``40G``, ``500M`` (K/M/G/T are powers of 1000), ``0`` for no limit -> a MAC count."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]?)\s*", str(text))
    unit = m.group(2).upper() if m else ""
    if m is None or unit not in _MAC_UNITS or int(m.group(1)) * _MAC_UNITS[unit] >= 2 ** 64:
        raise ConfigError(f"option {option} has an invalid MAC count {text!r}",
                          {"expected": "a non-negative count, optionally with K, M, G or T (powers of 1000); "
                           "0 for no limit", "default": f"{SIM_LIMITS.default_max_macs} (40G)"},
                          f"write e.g. {option} 100G", option=option, value=text, valid="MACs")
    return int(m.group(1)) * _MAC_UNITS[unit]


def check_attr_nesting(graph: Any) -> None:
    """Refuse a node whose attributes nest lists/dicts deeper than model.bin holds (``max_attr_json_depth``), before
    anything copies or serializes them recursively (``Graph.copy``, ``json.dumps``)."""
    limit = SIM_LIMITS.max_attr_json_depth
    for node in graph.nodes:
        depth = attr_json_depth(dict(node.attrs), stop=limit)
        if depth > limit:
            raise ModelFileError(
                f"node {node.name!r} ({node.op_type}) has attributes nested deeper than model.bin holds",
                {"rule": "lists and dicts in an op's attributes (the attribute dict counts 1)",
                 "limit": f"{limit} levels", "actual": f"more than {limit} levels"},
                "flatten the op's attributes", path=graph.meta.get("source"), node=node.name, tensor=None,
                limit=limit, actual=depth)
