"""Embedding (spec/int8-seq-ops.md 2.8): ``nn.Embedding``, ``F.embedding``; the chip's ``Gather``.

On the chip a Gather copies rows of an int8 table ``[V, E]`` (at the table's exponent ``n_w``, the floor rule on
the table) to the output: ``y[..., :] = table[idx[...], :]``, output exponent ``n_o = n_w``, no arithmetic. The
indices are an integer graph input that is not quantized (int64 or int32 in torch; the chip's kernel reads int32,
``lnn pack`` narrows int64 to int32 once, spec 2.8.4).

The QAT module computes exactly that: the table's exponent ``n_w`` comes from the whole (stage-1 clamped) table,
the gathered rows are fake-quantized at ``n_w`` (straight-through; the same integers as quantizing the table and
copying rows, since the rounding is per element); the output quantizer's exponent is ``n_w``
(:class:`TableExponent`). In eval the output is exactly the table's integers times ``2**-n_w``.

Options: ``padding_idx`` and ``scale_grad_by_freq`` change gradients only, ``sparse=True`` gives sparse gradients
(the fake-quant is per gathered row, so they stay sparse): all supported. ``max_norm`` renormalizes rows of the
table at every lookup, which the chip's copy does not do: refused at ``lnn.init`` (rule
``csk60xx.gather.max_norm``). An index outside ``0..V-1`` is a clear error: torch's at training time, the
simulator's (naming the node) at run time.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import fx, nn

from lnn_core.errors import LnnError
from lnn_core.ops import OpFamily
from lnn_core.quant.functional import qrange
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.quantizers import ActQuantizer, param_exponent
from lnn_core.quant.rewrite import BuildContext, Built

__all__ = ["QEmbedding", "TableExponent", "FAMILIES", "WRITERS", "INDEX_DTYPES"]

#: torch dtypes an embedding's indices may have (what F.embedding accepts)
INDEX_DTYPES = (torch.int64, torch.int32)


@attrs.frozen
class TableExponent:
    """The output exponent of a copy op: the op's cap, which is its table's exponent (``n_o = n_w``)."""

    stateful = False
    needs_data = False

    def step(self, running: float, seen: int, m: float, bits: int, bounds: Any) -> tuple[float, int]:
        return running, self.exponent(running, bits, bounds)

    def exponent(self, running: float, bits: int, bounds: Any, m: float | None = None) -> int:
        if bounds.cap is None:
            raise ValueError("TableExponent needs the op's cap (its table's exponent)")
        return int(bounds.cap)


class _RowFakeQuant(torch.autograd.Function):
    """Rows at exponent ``n``: ``SAT(R(rows * 2**n)) / 2**n`` forward, identity gradient (the floor rule never
    clips the table, so the straight-through gradient has no mask). Keeps a sparse gradient sparse."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, n: int, bits: int) -> torch.Tensor:  # type: ignore[override]
        lo, hi = qrange(bits)
        q = torch.floor(rows.detach().double() * 2.0**n + 0.5).clamp_(lo, hi)
        return (q * 2.0**-n).to(rows.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None, None


class QEmbedding(QModule):
    """``F.embedding`` on an int8 table: the chip's ``Gather`` (a row copy), output at the table's exponent."""

    op_id = "builtin.Embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, *, weight: nn.Parameter | None,
                 padding_idx: int | None, max_norm: float | None, norm_type: float, scale_grad_by_freq: bool,
                 sparse: bool, recipe: Any, weight_bits: int, stage: str, path: str,
                 ref: torch.Tensor | None = None) -> None:
        super().__init__(recipe, act_bits=weight_bits, weight_bits=weight_bits, stage=stage, clamps=("weight",))
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.padding_idx, self.max_norm, self.norm_type = padding_idx, max_norm, float(norm_type)
        self.scale_grad_by_freq, self.sparse = bool(scale_grad_by_freq), bool(sparse)
        self.path = path
        self.own_weight = weight is not None
        if weight is not None:
            self.weight = weight
        self._ref = (ref,)  # F.embedding's table (the owner's parameter), for reads outside forward; no state
        self.out_q = ActQuantizer(weight_bits, recipe, cap=self.output_cap, observer=TableExponent())

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}" + (
            f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")

    def _table(self, params: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.own_weight:
            return self.weight
        if params:
            return params[0]
        if self._ref[0] is None:
            raise RuntimeError(f"{self.path}: F.embedding's table is not a parameter of the model")
        return self._ref[0]

    @torch.no_grad()
    def output_cap(self, exponent_of: Any = None, *params: torch.Tensor) -> int:
        """The table's exponent ``n_w`` (the floor rule on the stage-1 clamped table): the output's exponent."""
        return param_exponent(self.constrain_weight(self._table(params).detach()), self.weight_bits, self.recipe)

    def _check_indices(self, idx: torch.Tensor) -> None:
        if idx.dtype not in INDEX_DTYPES:
            raise LnnError(
                f"embedding {self.path!r}: its indices are {str(idx.dtype).replace('torch.', '')}",
                {"rule": "an embedding reads integer indices (int64 or int32), an input that is not quantized",
                 "actual": str(idx.dtype).replace("torch.", "")},
                "feed token ids as an integer tensor (torch.long); on the command line: --input-dtype NAME=int64",
                module=self.path, actual=str(idx.dtype), limit="int64 or int32")

    def forward(self, idx: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        self._check_indices(idx)
        w = self.constrain_weight(self._table(params))
        opts = dict(padding_idx=self.padding_idx, scale_grad_by_freq=self.scale_grad_by_freq, sparse=self.sparse)
        rows = F.embedding(idx, w, **opts)
        if not self.quantizing:
            return rows
        n = self.output_cap(None, *params)
        if self.training and self.out_q.observe:
            self.out_exponent(rows.detach(), cap=n)  # TableExponent: records n_w for this step's consumers
        if self.training and rows.requires_grad and torch.is_grad_enabled():
            return _RowFakeQuant.apply(rows, n, self.weight_bits)
        with torch.no_grad():
            return _RowFakeQuant.apply(rows, n, self.weight_bits)

    def integer_params(self, *params: torch.Tensor) -> dict[str, Any]:
        w = self.constrain_weight(self._table(params).detach())
        n = param_exponent(w, self.weight_bits, self.recipe)
        lo, hi = qrange(self.weight_bits)
        table = torch.floor(w.double() * 2.0**n + 0.5).clamp_(lo, hi).to(torch.int64)
        return {"table": table, "n_w": n}

    def op_attrs(self) -> dict[str, Any]:
        # the output is the table's bytes: its width is the table's (judged once, as parameter_bits)
        return {"parameter_bits": self.weight_bits, "max_norm": self.max_norm,
                "num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim}


def _embedding_sig(input, weight, padding_idx=None, max_norm=None, norm_type=2.0,  # noqa: A002
                   scale_grad_by_freq=False, sparse=False):
    """Signature of F.embedding."""


def _get_tensor(ctx: BuildContext, node: Any) -> torch.Tensor | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        obj: Any = ctx.node.graph.owning_module
        for part in str(node.target).split("."):
            obj = getattr(obj, part, None)
        return obj if isinstance(obj, torch.Tensor) else None
    return None


def _build(ctx: BuildContext) -> Built | None:
    common = dict(recipe=ctx.recipe, weight_bits=ctx.layer.weight_bits, stage=ctx.stage, path=ctx.path)
    m = ctx.module
    if m is not None:
        idx = ctx.node.args[0] if ctx.node.args else ctx.node.kwargs.get("input")
        if not isinstance(idx, fx.Node):
            return None
        q = QEmbedding(m.num_embeddings, m.embedding_dim, weight=m.weight, padding_idx=m.padding_idx,
                       max_norm=m.max_norm, norm_type=m.norm_type, scale_grad_by_freq=m.scale_grad_by_freq,
                       sparse=m.sparse, **common)
        return Built(q, [], [idx])
    a = ctx.bind(_embedding_sig)
    idx, weight = a["input"], a["weight"]
    table = _get_tensor(ctx, weight)
    if not isinstance(idx, fx.Node) or table is None or table.dim() != 2:
        return None  # a table computed at run time (not a parameter) stays a float op
    pad = a["padding_idx"]
    if isinstance(pad, int) and pad < 0:
        pad += table.shape[0]
    q = QEmbedding(table.shape[0], table.shape[1], weight=None, padding_idx=pad, max_norm=a["max_norm"],
                   norm_type=a["norm_type"], scale_grad_by_freq=a["scale_grad_by_freq"], sparse=a["sparse"],
                   ref=table, **common)
    return Built(q, [], [idx, weight])


FAMILIES = [
    OpFamily(id="builtin.Embedding", kind="compute", modules=(nn.Embedding,), functions=(F.embedding,),
             build=_build, description="embedding: Gather (row copy) from an int8 table, integer indices that are "
                                       "not quantized, output at the table's exponent"),
]


# -- IR ----------------------------------------------------------------------------------------------


def write_embedding(ctx: Any) -> str:
    """``Gather(table int8 [V, E] at n_w, indices) -> int8 at n_w`` (linger 1.1.1's EmbeddingInt node, spec 2.8.3);
    the indices are the graph's integer tensor as the model reads it."""
    m: QEmbedding = ctx.module
    p = m.integer_params(*ctx.params)
    idx = ctx.inputs[0]
    info = ctx.graph.tensors[idx]
    if info.dtype not in ("int64", "int32"):
        raise LnnError(f"embedding {ctx.path!r}: its indices {idx!r} are {info.dtype} in the exported graph",
                       {"rule": "an embedding reads an integer input (int64 or int32) that is not quantized"},
                       "export with integer example inputs for the token ids (torch.long); on the command line: "
                       "--input-dtype NAME=int64", module=ctx.path, actual=info.dtype, limit="int64 or int32")
    if idx not in ctx.graph.inputs:
        raise LnnError(f"embedding {ctx.path!r}: its indices are computed inside the model ({ctx.node.args[0]})",
                       {"rule": "the chip's Gather reads its token ids from a graph input (or a constant); ops on "
                                "the ids (view, slicing, casts) have no integer form"},
                       "pass the token ids to forward() in the shape the embedding reads, and index them there",
                       module=ctx.path, actual=str(ctx.node.args[0]), limit="a graph input")
    table = ctx.initializer("weight", p["table"].numpy().astype("int8"), p["n_w"])
    y = ctx.tensor(p["n_w"], "int8")
    ctx.add("Gather", [table, idx], [y], {"parameter_bits": m.weight_bits, "o_bits": m.weight_bits})
    return y


WRITERS = {"builtin.Embedding": write_embedding}
