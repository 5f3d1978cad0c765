"""Shape and data-movement ops, and dropout: exact on the integer grid, so they are passthroughs
whose output keeps the input's exponent (spec 3.29). Dropout is the identity in eval.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from lnn_core.ops import OpFamily

__all__ = ["FAMILIES"]

FAMILIES = [
    OpFamily(id="builtin.Flatten", kind="passthrough", modules=(nn.Flatten,), functions=(torch.flatten,),
             methods=("flatten",), description="flatten (Flatten/Reshape)"),
    OpFamily(id="builtin.Reshape", kind="passthrough", functions=(torch.reshape,),
             methods=("view", "reshape", "view_as", "reshape_as"), description="view/reshape (Reshape)"),
    OpFamily(id="builtin.Squeeze", kind="passthrough", functions=(torch.squeeze,), methods=("squeeze",),
             description="squeeze"),
    OpFamily(id="builtin.Unsqueeze", kind="passthrough", functions=(torch.unsqueeze,), methods=("unsqueeze",),
             description="unsqueeze"),
    OpFamily(id="builtin.Transpose", kind="passthrough", functions=(torch.transpose, torch.permute, torch.t),
             methods=("transpose", "permute", "t"), description="transpose/permute (Transpose)"),
    OpFamily(id="builtin.Contiguous", kind="passthrough", methods=("contiguous",), description="no-op"),
    OpFamily(id="builtin.Slice", kind="passthrough", functions=(operator.getitem,),
             description="basic slicing x[a:b] (Slice)"),
    OpFamily(id="builtin.Dropout", kind="passthrough",
             modules=(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity),
             functions=(F.dropout, F.dropout1d, F.dropout2d), description="dropout; identity in eval"),
]
