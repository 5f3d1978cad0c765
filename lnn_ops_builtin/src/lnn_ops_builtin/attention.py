"""Attention: ``nn.MultiheadAttention``, ``F.scaled_dot_product_attention``, ``nn.TransformerEncoderLayer`` and
``nn.TransformerEncoder``, lowered at ``lnn.init`` to the Venus recipe of spec int8-seq-ops.md §2.10.2.

The chip has no attention kernel. Each module is replaced (at its own path, before the model is traced) by a
module that computes exactly the same float function from primitive ops, which then quantize like any other:

- q, k and v are three ordinary ``nn.Linear`` (``q_proj``, ``k_proj``, ``v_proj``), split from
  ``in_proj_weight``/``in_proj_bias``; the ``1/sqrt(head_dim)`` scale is folded into ``q_proj`` (its weight and
  bias are the user's rows times the scale), so no scaling op (and no extra rounding) is left in the graph;
- heads are folded into the batch (reshape/transpose to ``[B·h, T, d]``), scores are ``torch.bmm(q, kᵀ)``,
  probabilities ``torch.softmax(·, -1)`` (then ``nn.Dropout`` with the module's ``dropout``), the output
  ``torch.bmm(p, v)``, reshaped back and passed through ``out_proj`` (a plain ``nn.Linear``);
- the averaged attention weights (``need_weights=True``, the default) are the sum of the heads' probabilities
  times ``1/num_heads``; they are computed only when the caller reads them.

``F.scaled_dot_product_attention`` is decomposed where it is called (no parameters to fold): inputs reshaped to
rank 3, ``bmm``, the scale as a product by a python number (an int8 constant at export), softmax, ``bmm``.

What the chip cannot do is refused per call, with the module path and a hint: masks (``attn_mask``,
``key_padding_mask``, ``is_causal``), ``add_bias_kv``, ``add_zero_attn``, ``kdim``/``vdim`` different from
``embed_dim``, dropout inside ``F.scaled_dot_product_attention``, ``enable_gqa``. Such a call stays a float
module and is reported like any op without a quantized form.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lnn_core.ops import OpFamily

__all__ = ["LoweredMultiheadAttention", "LoweredTransformerEncoderLayer", "LoweredTransformerEncoder",
           "attention_state_dict", "FAMILIES", "WRITERS"]

_MASK_HINT = ("Venus has no masked softmax (spec int8-seq-ops.md §2.10.2): slice the sequence to its valid "
              "length before the attention instead of masking, or keep this module float with lnn.disable_quant")


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    lin.weight.requires_grad_(weight.requires_grad)
    if bias is not None:
        lin.bias.requires_grad_(bias.requires_grad)
    return lin


class LoweredMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` as three Linears, two ``torch.bmm``, a softmax and the output Linear.

    ``q_proj`` holds the user's query rows of ``in_proj_weight``/``in_proj_bias`` times ``1/sqrt(head_dim)``;
    ``k_proj`` and ``v_proj`` the key and value rows; ``out_proj`` the user's ``out_proj``.
    :func:`attention_state_dict` maps the parameters back to ``nn.MultiheadAttention``'s keys.
    """

    lnn_op_name = "MultiheadAttention"  # what messages call it

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        e, h = mha.embed_dim, mha.num_heads
        self.embed_dim, self.num_heads, self.head_dim = e, h, e // h
        self.batch_first = mha.batch_first
        self.scaling = float(self.head_dim) ** -0.5
        w, b = mha.in_proj_weight, mha.in_proj_bias
        with torch.no_grad():
            wq, wk, wv = w[:e].clone(), w[e:2 * e].clone(), w[2 * e:].clone()
            bq, bk, bv = (None, None, None) if b is None else (b[:e].clone(), b[e:2 * e].clone(), b[2 * e:].clone())
            wq.mul_(self.scaling)
            if bq is not None:
                bq.mul_(self.scaling)
        for t in (wq, wk, wv):
            t.requires_grad_(w.requires_grad)
        for t in (bq, bk, bv):
            if t is not None:
                t.requires_grad_(b.requires_grad)
        self.q_proj = _linear(wq, bq)
        self.k_proj = _linear(wk, bk)
        self.v_proj = _linear(wv, bv)
        self.out_proj = _linear(mha.out_proj.weight, mha.out_proj.bias)
        self.dropout = nn.Dropout(mha.dropout)
        self.train(mha.training)

    @property
    def lowering_attrs(self) -> dict[str, Any]:
        """What ``model.lnn.lowered`` keeps of this module (the scale folded into ``q_proj``)."""
        return {"num_heads": self.num_heads, "head_dim": self.head_dim, "scaling": self.scaling}

    def _heads(self, x: torch.Tensor, batch: Any, length: Any) -> torch.Tensor:
        """``[B, T, E]`` (batch_first) or ``[T, B, E]`` -> ``[B·h, T, d]``."""
        h, d = self.num_heads, self.head_dim
        if self.batch_first:
            return x.view(batch, length, h, d).transpose(1, 2).reshape(batch * h, length, d)
        return x.view(length, batch * h, d).transpose(0, 1)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            return self._masked(query, key, value, key_padding_mask, need_weights, attn_mask,
                                average_attn_weights, is_causal)
        h, e = self.num_heads, self.embed_dim
        tb = (1, 0) if self.batch_first else (0, 1)  # (time axis, batch axis)
        batch, t_q, t_k = query.size(tb[1]), query.size(tb[0]), key.size(tb[0])
        q = self._heads(self.q_proj(query), batch, t_q)
        k = self._heads(self.k_proj(key), batch, t_k)
        v = self._heads(self.v_proj(value), batch, t_k)
        p = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)
        p = self.dropout(p)
        o = torch.bmm(p, v)  # [B·h, T_q, d]
        if self.batch_first:
            o = o.view(batch, h, t_q, self.head_dim).transpose(1, 2).reshape(batch, t_q, e)
        else:
            o = o.transpose(0, 1).reshape(t_q, batch, e)
        y = self.out_proj(o)
        if not need_weights:
            return y, None
        w = p.view(batch, h, t_q, t_k)
        if not average_attn_weights:
            return y, w
        mean = w[:, 0:1]  # slices with step 1 (exported as Slice), summed by iqAdd, scaled by an int8 constant
        for i in range(1, h):
            mean = mean + w[:, i:i + 1]
        return y, (mean * (1.0 / h)).squeeze(1)

    def _masked(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: Any,
                need_weights: bool, attn_mask: Any, average_attn_weights: bool,
                is_causal: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The float call with masks (never lowered: ``refusals`` keeps such a call whole and reports it)."""
        qw = self.q_proj.weight / self.scaling
        qb = None if self.q_proj.bias is None else self.q_proj.bias / self.scaling
        in_b = None if qb is None else torch.cat([qb, self.k_proj.bias, self.v_proj.bias])
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        y, w = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, None, in_b, None, None, False, self.dropout.p,
            self.out_proj.weight, self.out_proj.bias, training=self.training, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask, use_separate_proj_weight=True, q_proj_weight=qw,
            k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        return (y.transpose(0, 1) if self.batch_first else y), w


class LoweredTransformerEncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer`` without its fast path: the same children (``self_attn`` lowered), the
    residual adds, LayerNorms, dropouts and feed-forward written out (post-norm or ``norm_first``)."""

    lnn_op_name = "TransformerEncoderLayer"  # what messages call it

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        for name, child in layer.named_children():
            setattr(self, name, child)
        self.norm_first = layer.norm_first
        if not isinstance(layer.activation, nn.Module):
            self.activation = layer.activation  # a function (F.relu for activation="relu")
        self.train(layer.training)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff_block(x))

    def _sa_block(self, x: torch.Tensor, mask: Any, key_padding_mask: Any, is_causal: bool) -> torch.Tensor:
        if mask is None and key_padding_mask is None and not is_causal:
            y = self.self_attn(x, x, x, need_weights=False)[0]
        else:
            y = self.self_attn(x, x, x, attn_mask=mask, key_padding_mask=key_padding_mask, need_weights=False,
                               is_causal=is_causal)[0]
        return self.dropout1(y)

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class LoweredTransformerEncoder(nn.Module):
    """``nn.TransformerEncoder`` without its nested-tensor fast path: the layers in turn, then ``norm``."""

    lnn_op_name = "TransformerEncoder"  # what messages call it

    def __init__(self, encoder: nn.TransformerEncoder) -> None:
        super().__init__()
        self.layers = encoder.layers
        self.num_layers = encoder.num_layers
        self.norm = encoder.norm
        self.train(encoder.training)

    def forward(self, src: torch.Tensor, mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool | None = None) -> torch.Tensor:
        x = src
        for layer in self.layers:
            if mask is None and src_key_padding_mask is None and not is_causal:
                x = layer(x)
            else:
                x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        return x if self.norm is None else self.norm(x)


def attention_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every lowered attention mapped back to ``nn.MultiheadAttention``'s keys.

    ``model`` is a model from ``lnn.init``/``lnn.constrain`` (its ``model.lnn.lowered`` names the attentions)
    or any module holding :class:`LoweredMultiheadAttention` modules. ``<path>.q_proj/k_proj/v_proj.weight``
    (and ``.bias``) become ``<path>.in_proj_weight`` (``in_proj_bias``), the query rows divided by the folded
    ``1/sqrt(head_dim)`` again; ``<path>.out_proj.*`` keep their keys, and so does everything else. The result
    loads into the float model with ``strict=False`` (a prepared model also has quantizer buffers).
    """
    scalings = {path: m.scaling for path, m in model.named_modules() if isinstance(m, LoweredMultiheadAttention)}
    info = getattr(model, "lnn", None)
    for path, entry in (getattr(info, "lowered", None) or {}).items():
        if "scaling" in entry:
            scalings[path] = entry["scaling"]
    state = model.state_dict()
    for path, scaling in scalings.items():
        base = f"{path}." if path else ""
        w = [state.pop(f"{base}{n}_proj.weight") for n in "qkv"]
        state[f"{base}in_proj_weight"] = torch.cat([w[0] / scaling, w[1], w[2]])
        if f"{base}q_proj.bias" in state:
            b = [state.pop(f"{base}{n}_proj.bias") for n in "qkv"]
            state[f"{base}in_proj_bias"] = torch.cat([b[0] / scaling, b[1], b[2]])
    return state


# -- lowering and refusals -----------------------------------------------------------------------------

def _lower_mha(mha: nn.MultiheadAttention) -> nn.Module | list[tuple[str, str]]:
    problems = []
    if mha.bias_k is not None:
        problems.append(("add_bias_kv=True: no Venus lowering",
                         "build the module with add_bias_kv=False (append learned key/value rows to the input)"))
    if mha.add_zero_attn:
        problems.append(("add_zero_attn=True: no Venus lowering", "build the module with add_zero_attn=False"))
    if not mha._qkv_same_embed_dim:
        problems.append((f"kdim={mha.kdim}, vdim={mha.vdim} differ from embed_dim={mha.embed_dim}: no Venus "
                         "lowering", "project key and value to embed_dim with nn.Linear before the attention"))
    if problems:
        return problems
    return LoweredMultiheadAttention(mha)


def _mha_refusals(module: nn.Module, query: Any, key: Any, value: Any, key_padding_mask: Any = None,
                  need_weights: bool = True, attn_mask: Any = None, average_attn_weights: bool = True,
                  is_causal: bool = False) -> list[tuple[str, str]]:
    problems = []
    for name, given in (("attn_mask", attn_mask is not None), ("key_padding_mask", key_padding_mask is not None),
                        ("is_causal=True", is_causal is True)):
        if given:
            problems.append((f"{name}: masked attention has no Venus kernel", _MASK_HINT))
    if is_causal not in (True, False):
        problems.append(("is_causal is computed at run time: it must be a python bool", "pass is_causal=False"))
    return problems


def _sdpa_refusals(fn: Any, query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: Any = 0.0,
                   is_causal: Any = False, scale: Any = None, enable_gqa: Any = False) -> list[tuple[str, str]]:
    problems = []
    if attn_mask is not None:
        problems.append(("attn_mask: masked attention has no Venus kernel", _MASK_HINT))
    if is_causal is not False:
        problems.append(("is_causal=True: masked attention has no Venus kernel", _MASK_HINT))
    if not (isinstance(dropout_p, (int, float)) and dropout_p == 0):
        problems.append((f"dropout_p={dropout_p!r}: dropout inside the attention has no quantized form",
                         "pass dropout_p=0.0 (apply nn.Dropout to the attention output instead)"))
    if enable_gqa is not False:
        problems.append(("enable_gqa=True: grouped-query attention has no Venus lowering",
                         "repeat key and value to the query's heads (repeat_interleave) before the call"))
    if scale is None and _last_dim(query) is None:
        problems.append(("scale=None and the head size is not known where the model is traced",
                         "pass scale=1 / math.sqrt(head_dim) explicitly"))
    elif scale is not None and not isinstance(scale, (int, float)):
        problems.append(("scale is computed at run time: it must be a python number",
                         "pass scale=1 / math.sqrt(head_dim) as a number"))
    return problems


def _last_dim(x: Any) -> int | None:
    """The size of the last axis of a traced value when the graph fixes it (a view/reshape to integer sizes, or an
    ``nn.Linear``'s ``out_features``, followed by transposes and permutes), else None."""
    node = getattr(x, "node", None)
    if node is None:
        return x.shape[-1] if isinstance(x, torch.Tensor) else None
    ops = []
    while True:
        if node.op == "call_method" and node.target in ("transpose", "permute", "contiguous"):
            ops.append(node)
            node = node.args[0]
            continue
        if node.op == "call_function" and node.target in (torch.transpose, torch.permute):
            ops.append(node)
            node = node.args[0]
            continue
        break
    shape: list[Any] | None = None
    if node.op == "call_method" and node.target in ("view", "reshape"):
        shape = list(node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list))
                     else node.args[1:])
    elif node.op == "call_function" and node.target is torch.reshape:
        shape = list(node.args[1])
    elif node.op == "call_module" and not ops:
        root = getattr(getattr(x, "tracer", None), "root", None)
        mod = root.get_submodule(str(node.target)) if isinstance(root, nn.Module) else None
        return getattr(mod, "out_features", None)
    if shape is None:
        return None
    for op in reversed(ops):
        name = op.target if isinstance(op.target, str) else op.target.__name__
        if name == "contiguous":
            continue
        dims = list(op.args[1:]) if not (len(op.args) == 2 and isinstance(op.args[1], (tuple, list))) \
            else list(op.args[1])
        if not all(isinstance(d, int) for d in dims):
            return None
        dims = [d % len(shape) for d in dims]
        if name == "transpose":
            a, b = dims
            shape[a], shape[b] = shape[b], shape[a]
        else:
            shape = [shape[d] for d in dims]
    last = shape[-1]
    return last if isinstance(last, int) and last > 0 else None


def _sdpa(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: Any = 0.0, is_causal: Any = False,
          scale: Any = None, enable_gqa: Any = False) -> Any:
    """``F.scaled_dot_product_attention`` (no mask, no dropout) from rank-3 ``bmm``, a product and softmax."""
    if scale is None:
        scale = 1.0 / math.sqrt(_last_dim(query))
    t_q, d = query.size(-2), query.size(-1)
    t_k, d_v = key.size(-2), value.size(-1)
    q = query.reshape(-1, t_q, d)
    k = key.reshape(-1, t_k, d)
    v = value.reshape(-1, t_k, d_v)
    s = torch.bmm(q, k.transpose(1, 2)) * float(scale)
    o = torch.bmm(torch.softmax(s, dim=-1), v)
    return o.reshape(query.shape[:-1] + (d_v,))


FAMILIES = [
    OpFamily(id="builtin.MultiheadAttention", kind="lowered", modules=(nn.MultiheadAttention,), lower=_lower_mha,
             refusals=_mha_refusals,
             description="lowered to Linear q/k/v (scale folded into q), bmm, softmax, bmm, Linear (no masks)"),
    OpFamily(id="builtin.ScaledDotProductAttention", kind="lowered", functions=(F.scaled_dot_product_attention,),
             lower=_sdpa, refusals=_sdpa_refusals,
             description="lowered to bmm, product by the scale, softmax, bmm (no mask, no dropout)"),
    OpFamily(id="builtin.TransformerEncoderLayer", kind="lowered", modules=(nn.TransformerEncoderLayer,),
             lower=LoweredTransformerEncoderLayer,
             description="written out: self-attention (lowered), residual adds, LayerNorms, feed-forward"),
    OpFamily(id="builtin.TransformerEncoder", kind="lowered", modules=(nn.TransformerEncoder,),
             lower=LoweredTransformerEncoder, description="its layers in turn, then its norm"),
]

WRITERS: dict[str, Any] = {}
