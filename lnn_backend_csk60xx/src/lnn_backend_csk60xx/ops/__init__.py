"""The CSK60xx backend's op families: one module per family, each holding everything the backend
knows about its IR op types (dialect schema, shape rule, hardware rules, buffer sizes, lowering).

==============  ==============================================================================
module          IR op types
==============  ==============================================================================
``quant``       float <-> int8 and integer re-quantization
``conv``        convolutions and transposed convolutions (conv engine)
``linear``      fully connected layers (matrix engine)
``norm``        un-folded batch normalization
``pool``        average and max pooling
``eltwise``     ReLU, clip, add, subtract, multiply
``shape``       concatenation, reshape-like ops, transpose, slice
``activation``  sigmoid and tanh on int16 (after a Requant)
``layernorm``   layer normalization over the last dimension (or the last two)
``softmax``     softmax and log-softmax over the last dimension (not bit-verified against the vendor)
``bmm``         batched matrix product of two activations
``gather``      embedding lookup (a row copy from an int8 table by integer indices)
``gru``         one-layer GRU on one sequence, either direction, optional lengths and h0 (``GRUInt``)
``lstm``        one-layer LSTM on one sequence, either direction, optional lengths and h0/c0
``pad``         constant zero padding of H and W
==============  ==============================================================================

:data:`FAMILIES` lists the modules; the backend's plugin registers every ``OpDef`` in their ``OPS``
through ``lnn_register_target_ops``, exactly as a third-party op package registers its own.
``docs/adding-an-op.md`` walks through adding one.
"""

from __future__ import annotations

from . import (
    activation,
    bmm,
    conv,
    eltwise,
    gather,
    gru,
    layernorm,
    linear,
    lstm,
    norm,
    pad,
    pool,
    quant,
    shape,
    softmax,
)
from .base import AttrSpec, InferContext, Lowering, OpDef, Params, ReadContext, engine_operands
from .opset import OpSet

__all__ = ["FAMILIES", "builtin_ops", "AttrSpec", "InferContext", "Lowering", "OpDef", "OpSet", "Params",
           "ReadContext", "engine_operands"]

#: the built-in op family modules, in registration order
FAMILIES = (quant, conv, linear, norm, pool, eltwise, shape, activation, layernorm, softmax, bmm, gather, gru, lstm,
            pad)


def builtin_ops() -> tuple[OpDef, ...]:
    """Every built-in :class:`OpDef`, family by family."""
    return tuple(op for family in FAMILIES for op in family.OPS)
