"""A conv or linear layer's training forward as one autograd node (lnn_ops_builtin.conv._LayerTrain) against the chain
of nodes it replaces: the same outputs and observer state bit for bit, the same gradients up to float rounding.

The chain is what the layer runs when its output quantizer carries a forward hook (the quantizer must then see its own
call), so one model trains both ways in turn from the same state.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lnn_core as lnn
from lnn_backend_csk60xx import plugin as backend_plugin
from lnn_core.quant import kernels
from lnn_core.testing import isolated_host
from lnn_ops_builtin import plugin
from lnn_ops_builtin.conv import QConv

pytestmark = pytest.mark.skipif(kernels.ISA is None, reason="the C kernels are not built here (or switched off)")


class Net(nn.Module):
    def __init__(self, layer: nn.Module, bn: nn.Module | None, act: bool) -> None:
        super().__init__()
        self.layer, self.bn, self.act = layer, bn, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        if self.bn is not None:
            y = self.bn(y)
        return torch.relu(y) if self.act else y


@st.composite
def layers(draw):
    kind = draw(st.sampled_from(["conv2d", "conv1d", "linear"]))
    bias = draw(st.booleans())
    if kind == "linear":
        cin, cout = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        layer = nn.Linear(cin, cout, bias=bias)
        lead = draw(st.sampled_from([(5,), (3, 4), (2, 1, 3)]))  # 2-D and 3-D+ inputs
        shape = (*lead, cin)
        bn = None  # a BatchNorm after a linear layer stays its own op (not folded)
    else:
        cin, cout = draw(st.integers(1, 12)), draw(st.integers(1, 16))
        groups = 1
        if draw(st.booleans()):  # depthwise
            cout = groups = cin
        k = draw(st.sampled_from([1, 3]))
        stride, pad, dil = draw(st.integers(1, min(k, 2))), draw(st.integers(0, k // 2)), 1  # kernel >= stride
        conv = nn.Conv2d if kind == "conv2d" else nn.Conv1d
        layer = conv(cin, cout, k, stride=stride, padding=pad, dilation=dil, groups=groups, bias=bias)
        size = draw(st.integers(5, 9))
        shape = (draw(st.integers(1, 4)), cin, size, size) if kind == "conv2d" else (draw(st.integers(1, 4)), cin, size)
        bn = (nn.BatchNorm2d if kind == "conv2d" else nn.BatchNorm1d)(cout) if draw(st.booleans()) else None
        if bn is not None and draw(st.booleans()):
            bn.affine = False
            bn.weight = bn.bias = None
    if bn is not None:
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.2)
    return Net(layer, bn, draw(st.booleans())), shape, draw(st.integers(0, 2**31 - 1))


def _step(model: nn.Module, q: QConv, x: torch.Tensor, gy: torch.Tensor, hooked: bool):
    handle = q.out_q.register_forward_hook(lambda *a: None) if hooked else None
    xr = x.clone().requires_grad_()
    y = model(xr)
    node = type(y.grad_fn).__name__
    (y * gy).sum().backward()
    if handle is not None:
        handle.remove()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for p in model.parameters():
        p.grad = None
    state = {n: b.clone() for n, b in q.out_q.named_buffers()}
    return y.detach(), xr.grad, grads, state, node


@settings(max_examples=60, deadline=None)
@given(layers())
def test_the_one_node_layer_equals_the_chain(case):
    net, shape, seed = case
    torch.manual_seed(seed)
    host = isolated_host([plugin, backend_plugin])  # a hypothesis test takes no function-scoped fixture
    model = lnn.init(net, host=host)
    twin = copy.deepcopy(model)
    (q,) = [m for m in model.modules() if isinstance(m, QConv)]
    (q2,) = [m for m in twin.modules() if isinstance(m, QConv)]
    for _ in range(3):  # three steps: the observers' states carry over
        x = torch.randn(shape) * 2
        with torch.no_grad():
            gy = torch.empty_like(copy.deepcopy(twin).eval()(x)).uniform_(-1, 1)  # the output's shape
        y1, gx1, g1, s1, node1 = _step(model, q, x, gy, hooked=False)
        y2, gx2, g2, s2, node2 = _step(twin, q2, x, gy, hooked=True)
        assert "LayerTrain" in node1 or net.act and "Relu" in node1
        assert "LayerTrain" not in node2
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
        for name in s1:
            assert torch.equal(s1[name], s2[name]), name
        assert g1.keys() == g2.keys()
        for name in g1:
            torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-5 * float(g2[name].abs().max() + 1))
        torch.testing.assert_close(gx1, gx2, rtol=1e-4, atol=1e-5 * float(gx2.abs().max() + 1))


def test_the_chain_runs_where_the_one_node_cannot(host):
    """A hooked output quantizer, float64 and a transposed conv each take the chain of nodes; a plain float32 conv
    takes the one node."""
    def kind(model, x):
        return type(model(x).grad_fn).__name__

    conv = lnn.init(Net(nn.Conv2d(2, 4, 3, padding=1), None, False), host=host)
    x = torch.randn(2, 2, 6, 6, requires_grad=True)
    assert kind(conv, x) == "_LayerTrainBackward"
    (q,) = [m for m in conv.modules() if isinstance(m, QConv)]
    handle = q.out_q.register_forward_hook(lambda *a: None)
    assert kind(conv, x) != "_LayerTrainBackward"
    handle.remove()
    assert kind(conv.double(), x.double()) != "_LayerTrainBackward"
    deconv = lnn.init(Net(nn.ConvTranspose2d(2, 4, 3), None, False), host=host)
    assert kind(deconv, x) != "_LayerTrainBackward"


def test_a_diverged_training_step_names_the_quantizer(host):
    """An overflow in training reaches an observer: the error names the quantizer's path in the prepared model."""
    from lnn_core.errors import LnnError

    model = lnn.init(Net(nn.Conv2d(2, 4, 3, padding=1), None, True), host=host)
    x = torch.randn(2, 2, 6, 6)
    model(x)
    x[1, 0, 2, 3] = float("inf")
    with pytest.raises(LnnError) as e:
        model(x)
    assert e.value.node == "q_input_x.out_q" and "'q_input_x.out_q'" in str(e.value).splitlines()[0]
