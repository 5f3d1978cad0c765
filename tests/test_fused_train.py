"""The fused training node of the conv family (``_QConvTrain``): one autograd node per conv/linear layer computes
the same forward, the same observer state and the same gradients as the chain of nodes it replaces
(``QConv._forward_train_unfused``: BatchNorm folding, weight/bias fake-quant, the op, the output's fake-quant).

The chain is what a layer runs when its output quantizer has a forward hook, so each case compares a model with
a deep copy of itself whose output quantizers are hooked (the hooks do nothing).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lnn_core as lnn
from lnn_ops_builtin.conv import QConv

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class FunctionalConv(nn.Module):
    """``F.conv2d`` with the weight passed in (the function spelling: the layer does not own the weight)."""

    def __init__(self, cin: int, cout: int, bias: bool) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.3)
        self.b = nn.Parameter(torch.randn(cout) * 0.1) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.w, self.b, padding=1)


def _layer(kind: str, cin: int, cout: int, bias: bool, stride: int, groups: int) -> tuple[nn.Module, tuple[int, ...]]:
    """One layer of ``kind`` and the shape of one input sample."""
    if kind == "conv1d":
        return nn.Conv1d(cin, cout * groups, 3, stride, 1, groups=groups, bias=bias), (cin, 9)
    if kind == "conv2d":
        return nn.Conv2d(cin, cout * groups, 3, stride, 1, dilation=1 + (stride == 1), groups=groups,
                         bias=bias), (cin, 7, 6)
    if kind == "deconv1d":
        return nn.ConvTranspose1d(cin, cout, 3, stride, 1, output_padding=stride - 1, bias=bias), (cin, 5)
    if kind == "deconv2d":
        return nn.ConvTranspose2d(cin, cout, 3, stride, 1, output_padding=stride - 1, bias=bias), (cin, 4, 5)
    if kind == "linear":
        return nn.Linear(cin, cout, bias=bias), (cin,)
    if kind == "linear3d":  # a (N, T, F) input: the encoder's Linears
        return nn.Linear(cin, cout, bias=bias), (4, cin)
    return FunctionalConv(cin, cout, bias), (cin, 5, 5)


def _model(kind: str, cin: int, cout: int, bias: bool, stride: int, groups: int, bn: bool) -> tuple[nn.Module,
                                                                                                     tuple[int, ...]]:
    first, shape = _layer(kind, cin * groups if kind in ("conv1d", "conv2d") else cin, cout, bias, stride, groups)
    layers: list[nn.Module] = [first]
    channels = getattr(first, "out_channels", None)
    if bn and kind in ("conv1d", "conv2d"):
        norm = (nn.BatchNorm1d if kind == "conv1d" else nn.BatchNorm2d)(channels)
        with torch.no_grad():  # running statistics away from the identity, so the folding matters
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
        layers.append(norm)
    layers.append(nn.ReLU())
    if kind not in ("linear", "linear3d"):
        layers.append(nn.Flatten(1))
    return nn.Sequential(*layers), shape


def _pair(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(fused, chain)``: the model and a copy whose conv layers run the chain of nodes."""
    chain = copy.deepcopy(model)
    hooked = 0
    for m in chain.modules():
        if isinstance(m, QConv):
            m.out_q.register_forward_pre_hook(lambda mod, args: None)
            hooked += 1
    assert hooked, "the model has no conv-family layer"
    return model, chain


def _step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One training forward and backward: ``(output, grad of x, grads of the parameters)``."""
    model.train()
    x = x.clone().requires_grad_()
    out = model(x)
    (out * torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out.detach(), x.grad, grads


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@SETTINGS
@given(kind=st.sampled_from(["conv1d", "conv2d", "deconv1d", "deconv2d", "linear", "linear3d", "functional"]),
       cin=st.integers(1, 4), cout=st.integers(1, 5), bias=st.booleans(), stride=st.integers(1, 2),
       groups=st.integers(1, 2), bn=st.booleans(), constrained=st.booleans(), scale=st.sampled_from([0.1, 1.0, 30.0]),
       seed=st.integers(0, 2**16))
def test_fused_layer_equals_the_chain(host, kind, cin, cout, bias, stride, groups, bn, constrained, scale, seed):
    """Same outputs (bit for bit), observer state and gradients (float64, up to the order of sums) over three steps,
    across the family's kinds, with and without bias and folded BatchNorm, with the stage-1 clamps of a constrained
    model and inputs large enough to saturate."""
    torch.manual_seed(seed)
    float_model, shape = _model(kind, cin, cout, bias, stride, groups, bn)
    if constrained:  # stage 1 writes the clamps (weights at 7 x mean|w|, biases and activations at +-8) into stage 2
        stage1 = lnn.constrain(float_model, target="csk60xx", host=host)
        stage1.train()
        stage1(torch.randn(8, *shape) * scale)
        prepared = lnn.init(stage1, host=host)
    else:
        prepared = lnn.init(float_model, target="csk60xx", host=host)
    fused, chain = _pair(prepared.double())
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        x = torch.randn(6, *shape, generator=gen, dtype=torch.float64) * scale
        out_f, gx_f, grads_f = _step(fused, x)
        out_c, gx_c, grads_c = _step(chain, x)
        assert torch.equal(out_f, out_c)
        torch.testing.assert_close(gx_f, gx_c, rtol=1e-12, atol=1e-12)
        assert grads_f.keys() == grads_c.keys()
        for k in grads_f:
            torch.testing.assert_close(grads_f[k], grads_c[k], rtol=1e-12, atol=1e-12, msg=k)
        state_f, state_c = _state(fused), _state(chain)
        for k in state_f:
            assert torch.equal(state_f[k], state_c[k]), k
    fused.eval()
    chain.eval()
    x = torch.randn(6, *shape, generator=gen, dtype=torch.float64) * scale
    assert torch.equal(fused(x), chain(x))


def _node_types(out: torch.Tensor) -> list[str]:
    seen, stack, names = set(), [out.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.append(type(fn).__name__)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("bn", [False, True])
def test_a_conv_layer_is_one_autograd_node(host, bn):
    """Conv (+ folded BatchNorm) -> ReLU -> Linear in training: one node per quantized layer besides the ReLU, the
    flatten and the parameters' accumulators; the chain had eight more for this model (the folding's products and
    sums, the weight and output fake-quants)."""
    layers = [nn.Conv2d(2, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if bn else []) + [nn.ReLU(), nn.Flatten(1),
                                                                                      nn.Linear(4 * 25, 3)]
    model = lnn.init(nn.Sequential(*layers), target="csk60xx", host=host)
    model.train()
    names = _node_types(model(torch.randn(5, 2, 5, 5)))
    assert sorted(n for n in names if n != "AccumulateGrad") == sorted(
        ["_QConvTrainBackward", "ReluBackward0", "ViewBackward0", "_QConvTrainBackward"])
    assert names.count("AccumulateGrad") == 4 + (2 if bn else 0)


def test_a_hooked_output_quantizer_sees_the_output(host):
    """A forward hook on a conv layer's output quantizer still sees each training output (that layer runs the chain
    of nodes), and its values are the fused layer's."""
    model = lnn.init(nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(1)), target="csk60xx", host=host)
    fused, chain = _pair(model)
    seen: list[torch.Tensor] = []
    conv = next(m for m in chain.modules() if isinstance(m, QConv))
    conv.out_q.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
    x = torch.randn(4, 1, 6, 6)
    out_f, _, _ = _step(fused, x)
    out_c, _, _ = _step(chain, x)
    assert len(seen) == 1 and torch.equal(seen[0].flatten(1), out_c) and torch.equal(out_f, out_c)
