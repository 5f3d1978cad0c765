"""Embedding lookup: ``Gather`` (spec/int8-seq-ops.md 2.8; thinker ``venus/gather.h``).

Integer semantics (C kernel ``csrc/ops/gather.c``): a row copy, no arithmetic::

    y[j..., :] = table[idx[j...], :]          table int8 [V, E] at n_w, y int8 at n_o = n_w

Dialect (linger 1.1.1 ``EmbeddingInt``, spec 2.8.3): ``thinker::Gather(table, indices)`` with ``scale_w``,
``scale_o`` (= ``scale_w``), ``parameter_bits`` and ``o_bits``; no ``axis`` (0) and no ``platform_quant``. The
indices are an integer graph input (int64 as torch writes them, or int32) without a scale.

Limits (spec 2.8.5): a constant 2-D int8 table (linger's 4-bit nibble-packed table is not supported), int32 or
int64 indices, ``n_o = n_w`` (the kernel copies bytes; tpacker takes the output scale from ``scale_o``). The
vendor kernel narrows int64 indices into a heap copy at every call and checks no bound; here the packer narrows
int64 indices to int32 once (:func:`narrow_indices`; model.bin holds them as int32 at exponent 0), and the
simulator refuses an index outside ``0..V-1`` (``LNN_SIM_E_INPUT`` naming the op and the index) where the chip
would read out of bounds (``-1``, the chip's last row, is refused too: torch refuses it). ``max_norm`` (a
renormalization at every lookup) is refused for the torch op.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lnn_core.errors import ModelFileError
from lnn_core.graph import Graph, Node, TensorInfo
from lnn_core.rules import Finding, OpView, rule

from ..thinker.lowering import ThinkerLowering
from ._rules import at, seq
from .base import AttrSpec, InferContext, Lowering, OpDef

__all__ = ["OPS", "INDEX_DTYPES", "narrow_indices"]

#: the dtypes a Gather's indices may have in the dialect (spec 2.8.5)
INDEX_DTYPES = ("int32", "int64")
#: what model.bin holds: the width the kernel reads
KERNEL_INDEX_DTYPE = "int32"


def _infer(c: InferContext) -> list[TensorInfo]:
    """``idx.shape + [E]``, int8; the output's exponent is the file's ``scale_o`` (a rule requires ``n_w``)."""
    table, idx = c.info(0), c.info(1)
    c.const(0)
    c.dtype(table, ["int8"], "table")
    c.rank(table, [2], "table")
    c.dtype(idx, list(INDEX_DTYPES), "indices")
    return [c.out("int8", tuple(idx.shape) + (table.shape[1],), None)]


@rule("csk60xx.gather.bits", ops=(), wbits="gather.weight_bits", obits="gather.out_bits")
def check_bits(op: OpView, limits: Mapping[str, Any]) -> list[Finding] | None:
    """Gather tables must hold {wbits}-bit integers and write {obits}-bit outputs (the table's bytes; linger's
    nibble-packed 4-bit table is not supported)."""
    found = []
    for key, lim_key, what, option in (("parameter_bits", "gather.weight_bits", "weight", "weight_bits"),
                                       ("o_bits", "gather.out_bits", "output", "weight_bits")):
        v, allowed = op.attrs.get(key), tuple(limits[lim_key])
        if v is not None and v not in allowed:
            found.append(Finding(actual=f"{v}-bit {what}", limit=f"{what} bits in {allowed}",
                                 hint=f"set {option}={allowed[0]} for this embedding (QuantConfig.by_path)"))
    return found or None


@rule("csk60xx.gather.index_dtype", ops=(), dtypes="gather.index_dtypes")
def check_index_dtype(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Gather indices must be {dtypes} (an integer input that is not quantized)."""
    d, allowed = at(seq(op, "input_dtypes"), 1), tuple(limits["gather.index_dtypes"])
    if d is None or d in allowed:
        return None
    return Finding(actual=f"indices {d}", limit=f"indices in {allowed}",
                   hint="feed the token ids as an integer tensor (torch.long): export with integer example inputs "
                        "(lnn export --input-dtype NAME=int64)")


@rule("csk60xx.gather.scale", ops=())
def check_scale(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """Gather output exponent must equal the table's (scale_o = scale_w): the kernel copies the table's bytes."""
    n_w, n_o = at(seq(op, "input_exponents"), 0), at(seq(op, "output_exponents"), 0)
    if n_w is None or n_o is None or n_w == n_o:
        return None
    return Finding(actual=f"n_o {n_o}, n_w {n_w}", limit="n_o = n_w",
                   hint=f"write scale_o = scale_w = {2.0 ** n_w:g}: the output holds the table's integers")


@rule("csk60xx.gather.max_norm", ops=())
def check_max_norm(op: OpView, limits: Mapping[str, Any]) -> Finding | None:
    """An embedding must not renormalize its rows (max_norm): the chip's Gather copies table rows unchanged."""
    v = op.attrs.get("max_norm")
    if v is None:
        return None
    return Finding(actual=f"max_norm {v:g}", limit="max_norm None",
                   hint="construct the embedding without max_norm (renormalize the table once before training, "
                        "e.g. with torch.renorm, if the rows must stay bounded)")


def narrow_indices(graph: Graph, ops: Any) -> list[str]:
    """Give every index input (``OpDef.index_inputs``: a Gather's token ids) the kernel's form, int32 integers at
    exponent 0 (real = q, as model.bin records every integer tensor with an exponent): an int64 graph input
    changes its dtype (the simulator narrows the caller's array, refusing values beyond int32), an int64 constant
    is converted. Returns the tensors changed. Int64 indices that an op computes: a :class:`ModelFileError`."""
    done: list[str] = []
    for node in graph.nodes:
        op = ops.get(node.op_type)
        for i in getattr(op, "index_inputs", ()) or ():
            name = node.inputs[i] if i < len(node.inputs) else ""
            info = graph.tensors.get(name) if name else None
            if info is None or name in done or info.dtype not in INDEX_DTYPES:
                continue
            if info.dtype == KERNEL_INDEX_DTYPE:
                info.exponent = 0
                done.append(name)
                continue
            if name in graph.initializers:
                arr = graph.initializers[name]
                if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
                    raise ModelFileError(
                        f"node {node.name!r} ({node.op_type}): constant indices {name!r} do not fit int32",
                        {"rule": "the chip's kernel reads int32 indices", "actual": f"{arr.min()}..{arr.max()}"},
                        "index a table of fewer than 2**31 rows", path=graph.meta.get("source"), node=node.name)
                graph.initializers[name] = arr.astype(np.int32)
            elif name not in graph.inputs:
                raise ModelFileError(
                    f"node {node.name!r} ({node.op_type}): its int64 indices {name!r} are computed by another op",
                    {"rule": "Gather indices are a graph input or a constant (the chip's kernel reads int32)"},
                    "feed the token ids as a graph input", path=graph.meta.get("source"), node=node.name)
            info.dtype, info.exponent = KERNEL_INDEX_DTYPE, 0
            done.append(name)
    return done


def _attrs(node: Node, graph: Graph) -> list[int]:
    return []


_BITS = {
    "parameter_bits": AttrSpec("int", default=8),  # csk60xx.gather.bits judges the widths
    "o_bits": AttrSpec("int", default=8),
}

#: thinker package (spec/thinker-package.md 3.5): table, indices; GatherAttrs {axis 0}; the wrapper forbids temps
_THINKER_GATHER = ThinkerLowering("Gather", attrs=lambda n, g: bytes([0]), workspace=None)

OPS = (
    OpDef("Gather", "thinker", (2, 2), _infer, attrs=_BITS,
          scales={"scale_w": ("in", 0), "scale_o": ("out", 0)}, index_inputs=(1,),
          rules=(check_bits, check_max_norm),
          pack_rules=(check_index_dtype, check_scale), torch_ops=("builtin.Embedding",),
          lowerings={"lnn": Lowering(30, 2, _attrs, "gather.c"), "thinker": _THINKER_GATHER}),
)
