"""The built-in families register cleanly and claim the spellings the docs promise."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

import lnn_ops_builtin.plugin as builtin
from lnn_core.testing import isolated_host


def test_every_family_registers_without_conflicts():
    host = isolated_host([builtin])
    assert len(host.ops) >= 20
    assert all(fid.startswith("builtin.") for fid in host.ops)


def test_spellings_map_to_one_family_each():
    ops = isolated_host([builtin]).ops
    assert ops.by_module[nn.Conv2d] is ops.by_function[F.conv2d]
    assert ops.by_function[operator.add] is ops.by_function[torch.add] is ops.by_method["add"]
    assert ops.by_module[nn.ReLU] is ops.by_function[F.relu] is ops.by_function[torch.relu] is ops.by_method["relu"]
    assert ops.by_function[torch.transpose] is ops.by_method["transpose"]
    assert ops.by_function[torch.cat].id == "builtin.Cat"
    assert ops.by_module[nn.BatchNorm2d].foldable and ops.by_module[nn.Conv2d].fuses_bn == ("builtin.BatchNorm2d",)
    assert ops.by_module[nn.Linear].fuses_bn == ()
    assert ops.by_module[nn.Dropout].kind == "passthrough"
