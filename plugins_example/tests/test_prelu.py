"""QPReLU: rewriting, exact eval integers, train/eval agreement, gradients, stage 1 -> stage 2."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _prelu_reference import prelu_int, quantize_slopes
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

import lnn_core as lnn
from lnn_core.quant.quantizers import ActQuantizer
from lnn_core.quant.rewrite import UnsupportedOpWarning
from lnn_ops_example.prelu import OP_ID, QPReLU

CHANNELS = 8
HYP = settings(max_examples=40, deadline=None)


class ConvPReLULinear(nn.Module):
    def __init__(self, num_parameters: int, bn: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, CHANNELS, 3, padding=1)
        self.bn = nn.BatchNorm2d(CHANNELS) if bn else None
        self.act = nn.PReLU(num_parameters)
        self.fc = nn.Linear(CHANNELS * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.bn is not None:
            y = self.bn(y)
        return self.fc(self.act(y).flatten(1))


class FunctionalPReLU(nn.Module):
    def __init__(self, method: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.slope = nn.Parameter(torch.tensor([0.25, -0.5, 1.5, 0.0]))
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y.prelu(self.slope) if self.method else F.prelu(y, self.slope)


def _init(model: nn.Module, host) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedOpWarning)
        return lnn.init(model, host=host)


def _calibrate(q: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    q.train()
    for _ in range(4):
        q(torch.randn(4, 3, 4, 4, generator=gen) * 2)
    return q.eval()


def _reference_of(m: QPReLU, x: torch.Tensor, slopes: torch.Tensor) -> tuple[np.ndarray, int]:
    """Reference integers of ``m`` on input ``x`` (on the grid), and the input exponent."""
    n_x = m.in_exponent(0)
    x_scaled = x.detach().double() * 2.0**n_x
    assert torch.equal(x_scaled, torch.floor(x_scaled)), "the input of the PReLU is on its grid"
    lo, hi = m.recipe.weight_exponent_range
    a_q, n_a = quantize_slopes(slopes.detach().numpy(), m.weight_bits, lo, hi)
    return prelu_int(x_scaled.to(torch.int64).numpy(), a_q, n_a, m.in_bits(0)), n_x


def _run_capturing(q: nn.Module, m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    handle = m.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], y=out))
    try:
        q(x)
    finally:
        handle.remove()
    return seen["x"], seen["y"]


@pytest.fixture(scope="module", params=[1, CHANNELS], ids=["shared-slope", "per-channel"])
def calibrated(request, host):
    return _calibrate(_init(ConvPReLULinear(request.param), host))


def test_prelu_between_conv_and_linear_is_quantized(host):
    q = _init(ConvPReLULinear(CHANNELS), host)
    assert OP_ID in q.lnn.ops.values()
    assert q.lnn.ops["act"] == OP_ID
    assert isinstance(q.act, QPReLU)
    assert q.lnn.unsupported == []
    # it reads its input scale from the conv, and keeps it: the linear reads the same quantizer
    assert q.act.input_quantizers[0] is q.conv.out_q
    assert q.fc.input_quantizers[0] is q.conv.out_q
    assert "act.weight" in q.state_dict()
    assert q.act.op_attrs() == {"data_bits": 8, "o_bits": 8, "parameter_bits": 8,
                                "num_parameters": CHANNELS, "channels": CHANNELS}


@HYP
@given(slopes=st.lists(st.floats(-4, 4, width=32), min_size=CHANNELS, max_size=CHANNELS),
       magnitude=st.sampled_from([2.0**-6, 1.0, 200.0]), seed=st.integers(0, 2**16), amp=st.sampled_from([0.5, 4.0]))
def test_eval_output_equals_integer_reference(calibrated, slopes, magnitude, seed, amp):
    q = calibrated
    n = q.act.weight.numel()
    with torch.no_grad():
        q.act.weight.copy_(torch.tensor(slopes[:n], dtype=torch.float32) * magnitude)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * amp
    x_in, y = _run_capturing(q, q.act, x)
    expected, n_x = _reference_of(q.act, x_in, q.act.weight)
    assert y.dtype == torch.float32
    np.testing.assert_array_equal((y.double() * 2.0**n_x).numpy(), expected)


def test_eval_rounds_half_up_and_saturates(host):
    m = _module(host, [0.25, 4.0, -4.0])
    _source(m, n_x=0)
    x = torch.tensor([[-2.0, -6.0, 5.0], [-128.0, -128.0, 3.0], [-128.0, -1.0, 0.0]]).reshape(1, 3, 3)
    y = m.eval()(x)
    # one exponent for all slopes: max 4.0 -> n_a 4, a_q = [4, 64, -64]
    # channel 0: -2*4/16 = -0.5 -> 0 (half-up), -6*4/16 = -1.5 -> -1
    # channel 1: -128*64/16 = -512 -> -128 (saturated); channel 2: -128*-64/16 = 512 -> 127, -1*-64/16 = 4
    assert m.integer_params()["slope"].tolist() == [4, 64, -64]
    assert m.integer_params()["n_a"] == 4
    assert y.tolist() == [[[0.0, -1.0, 5.0], [-128.0, -128.0, 3.0], [127.0, 4.0, 0.0]]]


def _module(host, slopes: list[float], stage: str = "quant") -> QPReLU:
    return QPReLU(weight=nn.Parameter(torch.tensor(slopes)), num_parameters=len(slopes), channels=None, path="act",
                  recipe=host.recipes["pow2-sym-halfup"], act_bits=8, weight_bits=8, stage=stage)


def _source(m: QPReLU, n_x: int) -> ActQuantizer:
    src = ActQuantizer(8, m.recipe)
    src.exponent.fill_(n_x)
    m.bind_inputs([src])
    return src


@HYP
@given(data=st.data(), shared=st.booleans(), n_x=st.integers(0, 12),
       magnitude=st.sampled_from([2.0**-10, 1.0, 64.0]))
def test_training_equals_eval_on_the_grid_with_straight_through_gradients(host, data, shared, n_x, magnitude):
    c = 4
    slopes = data.draw(st.lists(st.floats(-4, 4, width=32), min_size=1 if shared else c, max_size=1 if shared else c))
    x_q = data.draw(arrays(np.int64, (2, c, 5), elements=st.integers(-128, 127)))
    m = _module(host, [s * magnitude for s in slopes])
    _source(m, n_x)
    x = (torch.from_numpy(x_q).float() * 2.0**-n_x).requires_grad_()
    y_train = m.train()(x)
    y_train.sum().backward()
    y_eval = m.eval()(x.detach())
    assert torch.equal(y_train.detach(), y_eval)

    # gradients: 1 where x >= 0; a_fq[c] where x < 0 and the product did not saturate; dL/da sums x there
    lo, hi = m.recipe.weight_exponent_range
    a_q, n_a = quantize_slopes(m.weight.detach().numpy(), 8, lo, hi)
    a_b = a_q.reshape(()) if a_q.size == 1 else a_q.reshape(1, c, 1)
    rounded = np.floor((x_q * a_b).astype(np.float64) / 2.0**n_a + 0.5)
    live = (x_q < 0) & (rounded >= -128) & (rounded <= 127)
    a_fq = np.broadcast_to(a_b * 2.0**-n_a, x_q.shape)
    np.testing.assert_array_equal(x.grad.numpy(), np.where(x_q >= 0, 1.0, np.where(live, a_fq, 0.0)))
    grad_a = np.where(live, x_q * 2.0**-n_x, 0.0)
    grad_a = grad_a.sum(axis=(0, 1, 2)).reshape(1) if shared else grad_a.sum(axis=(0, 2))
    np.testing.assert_array_equal(m.weight.grad.numpy(), grad_a)


def test_stage_one_is_float_prelu_and_its_checkpoint_loads_strictly_into_stage_two(host):
    model = ConvPReLULinear(CHANNELS)
    s1 = lnn.constrain(model, host=host)
    assert isinstance(s1.act, QPReLU) and s1.act.stage == "constrain"
    x = torch.randn(2, CHANNELS, 4, 4, generator=torch.Generator().manual_seed(1)) * 3
    assert torch.equal(s1.act(x), F.prelu(x, s1.act.weight))

    s1.train()
    s1(torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        s1.act.weight.copy_(torch.linspace(-1, 1, CHANNELS))
    s2 = _init(model, host)
    s2.load_state_dict(s1.state_dict(), strict=True)
    assert torch.equal(s2.act.weight, s1.act.weight)
    assert torch.equal(s2.conv.out_q.running, s1.conv.out_q.running)
    assert s2.act.stage == "quant"


@pytest.mark.parametrize("method", [False, True], ids=["F.prelu", "Tensor.prelu"])
def test_function_and_method_forms_are_quantized_exactly(host, method):
    q = _calibrate(_init(FunctionalPReLU(method), host))
    assert q.lnn.ops["q_prelu"] == OP_ID
    m = q.get_submodule("q_prelu")
    assert m.op_attrs()["num_parameters"] == 4 and m.op_attrs()["channels"] == 4
    x_in, y = _run_capturing(q, m, torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2)
    expected, n_x = _reference_of(m, x_in, q.slope)
    np.testing.assert_array_equal((y.double() * 2.0**n_x).numpy(), expected)
    assert m.integer_params(q.slope)["slope"].tolist() == [16, -32, 96, 0]  # n_a = 6 for max 1.5


def test_slope_count_not_matching_the_input_channels_is_refused_at_forward(host):
    class Unknown(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.slope = nn.Parameter(torch.full((3,), 0.25))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.prelu(x, self.slope)

    q = _init(Unknown(), host)  # channels of a graph input are not known before the first forward
    with pytest.raises(lnn.ConfigError) as info:
        q(torch.randn(2, 5, 4))
    err = info.value
    assert (err.option, err.value, err.valid) == ("num_parameters", 3, (1, 5))
    assert "'q_prelu'" in err.headline
