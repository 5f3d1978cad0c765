"""The C training kernel of the chip's LayerNorm (csrc/layernorm.c) against the torch/numpy path it replaces: every bit
of the value, and the same training step through the module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lnn_core
from lnn_core.quant import kernels
from lnn_core.quant.quantizers import fake_quant_weight_bias
from lnn_core.quant.recipes import Recipe
from lnn_ops_builtin import layernorm as ln

pytestmark = pytest.mark.skipif(ln._lib is None or kernels.ISA is None,
                                reason="the C training kernels are not built here (or switched off)")


def _python_value(x: torch.Tensor, g_q: torch.Tensor, b_q: torch.Tensor, n_x: int) -> torch.Tensor:
    """The module's torch/numpy path: _int_input, normalize_f64, then the value _ChipLayerNormQuant forms."""
    m = ln.QLayerNorm((g_q.numel(),), 1e-5, weight=None, bias=None, has_weight=False, has_bias=False,
                      recipe=Recipe("r"), act_bits=8, stage="quant")
    m.train()
    q, n_k = m._int_input(x, n_x)
    u = ln.normalize_f64(q, n_k, g_q.numel())
    acc = u.view(-1, g_q.numel()).mul_(g_q.double() * 2.0**-ln.NORM_Q).add_(b_q.double())
    return acc.view(x.shape).to(torch.float32)


@st.composite
def cases(draw):
    t = draw(st.sampled_from([4, 5, 16, 31, 64, 100, 362, 1024]))
    rows = draw(st.integers(1, 6))
    n_x = draw(st.integers(0, 23))  # above 15: the kernel's requantization
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "constant", "saturating", "ties", "two-level"]))
    amp = 2.0 ** -n_x * 127
    if kind == "normal":
        x = rng.standard_normal((rows, t)) * amp * draw(st.sampled_from([0.01, 0.3, 1.0]))
    elif kind == "constant":  # D = eps only (or 0): the table's first entry
        x = np.full((rows, t), rng.uniform(-amp, amp))
    elif kind == "saturating":
        x = rng.standard_normal((rows, t)) * amp * 8
    elif kind == "ties":  # on the rounding grid's half points
        x = (rng.integers(-140, 140, (rows, t)) + 0.5) * 2.0**-n_x
    else:  # two levels: large spread, large S1
        x = np.where(rng.random((rows, t)) < 0.5, -128, 127) * 2.0**-n_x
    x = torch.from_numpy(x.astype(np.float32))
    g = torch.from_numpy(rng.standard_normal(t).astype(np.float32) * draw(st.sampled_from([0.01, 1.0, 50.0])))
    b = torch.from_numpy(rng.standard_normal(t).astype(np.float32))
    g_q, b_q, _ = fake_quant_weight_bias(g, b, ln.NORM_Q, ln.GAMMA_BITS, Recipe("r"))
    return x, g_q, b_q, n_x


ISAS = kernels.available_isas()


@settings(max_examples=300, deadline=None)
@given(cases(), st.sampled_from(ISAS))
def test_kernel_equals_the_python_path(case, isa):
    x, g_q, b_q, n_x = case
    assert ln.kernel_takes(x, g_q, b_q)
    y, (lo, hi) = ln.chip_layer_norm_kernel(x, g_q, b_q, n_x, isa=isa)
    ref = _python_value(x, g_q, b_q, n_x)
    np.testing.assert_array_equal(y.numpy().view(np.uint32), ref.numpy().view(np.uint32))
    assert (lo, hi) == (float(ref.min()), float(ref.max()))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 13, 39])  # in the 8-wide blocks and in the row's tail
def test_a_non_finite_input_is_left_to_the_python_path(isa, bad, where):
    x = torch.randn(2, 20)
    x.view(-1)[where] = bad
    g = torch.ones(20)
    y, _ = ln.chip_layer_norm_kernel(x, g, torch.zeros(20), 4, isa=isa)
    assert y is None


def test_which_inputs_the_kernel_takes():
    g = torch.ones(8)
    assert ln.kernel_takes(torch.randn(3, 8), g, g)
    assert not ln.kernel_takes(torch.randn(3, 8).double(), g, g)
    assert not ln.kernel_takes(torch.randn(8, 3).t(), g, g)  # not contiguous
    big = torch.ones(2048)
    assert not ln.kernel_takes(torch.randn(2, 2048), big, big)  # a row longer than the kernel's buffer


def test_training_step_equals_the_python_path(host):
    """One module, two training steps: through the kernel, and through the torch/numpy path (its output quantizer
    hooked, which unfuses it); the same outputs, observer state and gradients."""
    torch.manual_seed(0)
    layer = nn.LayerNorm(48)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2)
        layer.bias.uniform_(-1, 1)
    model = nn.Sequential(nn.Linear(16, 48), layer)
    outs = []
    for hooked in (False, True):
        q = lnn_core.init(model, host=host)
        torch.manual_seed(1)
        lnq = [m for m in q.modules() if isinstance(m, ln.QLayerNorm)][0]
        if hooked:
            lnq.out_q.register_forward_hook(lambda *a: None)
        x = torch.randn(5, 7, 16, requires_grad=True)
        y = q(x)
        assert ("Kernel" in type(y.grad_fn).__name__) == (not hooked)  # the kernel's node, or the python path's
        y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
        outs.append((y.detach(), x.grad, lnq.weight.grad.clone(), lnq.out_q.running.clone(),
                     int(lnq.out_q.exponent)))
    (y0, gx0, gg0, r0, e0), (y1, gx1, gg1, r1, e1) = outs
    assert torch.equal(y0, y1) and torch.equal(r0, r1) and e0 == e1
    torch.testing.assert_close(gx0, gx1, rtol=0, atol=0)
    torch.testing.assert_close(gg0, gg1, rtol=0, atol=0)
