"""Eval-mode integers are exact: conv/linear outputs equal an int64 reference computed from the module's frozen
integers, also where float32 accumulation would lose bits, on rounding ties and at saturation, and every eval
output lies on its grid (``q = y * 2**n`` an integer in [-128, 127]).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lnn_core as lnn
from lnn_core.quant.qmodule import QModule
from lnn_core.quant.quantizers import ActQuantizer


class One(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def _reference(ref, layer: nn.Module, q_in: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(acc, y)``: the int64 accumulator and ``RQ_8(acc, n_x + n_w - n_o)`` from the frozen integers."""
    ip = layer.integer_params()
    w = ip["weight"].numpy()
    b = None if ip["bias"] is None else ip["bias"].numpy()
    if isinstance(layer, nn.Linear) or ip["weight"].dim() == 2:
        acc = ref.linear_ref(q_in, w, b)
    else:
        acc = ref.conv_ref(q_in, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
    return acc, ref.rq(acc, ip["n_x"] + ip["n_w"] - ip["n_o"]), ip


# -- (a) partial sums beyond 2**24 ------------------------------------------------------------------------

def test_conv_partial_sums_beyond_float32(host, ref):
    """512 input channels, 3x3, inputs and weights near full scale with matching signs: |acc| > 2**24, and the
    biases put those sums next to rounding boundaries, where a float32 accumulator would round the other way."""
    gen = torch.Generator().manual_seed(7)
    cin, cout = 512, 6
    sign = torch.where(torch.rand(1, cin, 4, 4, generator=gen) < 0.5, -1.0, 1.0)
    x = sign * (0.9 + 0.09 * torch.rand(1, cin, 4, 4, generator=gen))  # at n_x = 7: |q| ~ 115..127
    conv = nn.Conv2d(cin, cout, 3, padding=1)
    with torch.no_grad():
        mag = 0.007 + 0.003 * torch.rand(cout, cin, 3, 3, generator=gen)
        # channels 0..3 follow the input's signs in the window of output pixel (1, 1): a huge, exact sum
        w = sign[0, :, 0:3, 0:3].expand(cout, -1, -1, -1) * mag
        w[1] = -w[1]
        w[4:] = (2 * torch.rand(2, cin, 3, 3, generator=gen) - 1) * 0.01
        w[:, 0, 0, 0] = 0.01
        conv.weight.copy_(w)
        conv.bias.zero_()
    m = lnn.init(One(conv), host=host)
    m.eval()
    n_x = 7
    n_w = ref.floor_rule(conv.weight.detach().numpy())
    q_in = ref.quant_f32(x.numpy(), n_x)
    w_i = ref.round_half_up_int(conv.weight.detach().double().numpy() * 2.0**n_w)
    acc0 = ref.conv_ref(q_in, w_i, None, (1, 1), (1, 1))
    s = int(np.ceil(np.log2(np.abs(acc0).max() / 100.0)))
    assert s >= 17
    ref.set_exponent(m.q_input_x.out_q, n_x)
    ref.set_exponent(m.layer.out_q, n_x + n_w - s)
    # bias: pixel (1, 1) of each channel lands on a tie or one off it (-1, 0, +1), signs of both kinds
    half = 1 << (s - 1)
    centre = acc0[0, :, 1, 1]
    tie = (np.floor_divide(centre, 1 << s) << s) + half
    b_int = tie - centre + np.array([0, -1, 1, 0, -1, 1])
    with torch.no_grad():
        m.layer.bias.copy_(torch.from_numpy(b_int / 2.0 ** (n_x + n_w)).float())
    y = m(x)
    acc, y_ref, ip = _reference(ref, m.layer, q_in)
    assert (ip["n_x"], ip["n_w"], ip["n_x"] + ip["n_w"] - ip["n_o"]) == (n_x, n_w, s)
    np.testing.assert_array_equal(ip["bias"].numpy(), b_int)
    assert np.abs(acc).max() > 2**24
    assert (np.abs(acc) > 2**24).sum() >= 4
    # float32 accumulation of the same integers is not exact here, and rounds some outputs the other way
    acc32 = F.conv2d(torch.from_numpy(q_in).float(), ip["weight"].float(), ip["bias"].float(), padding=1)
    acc32 = acc32.double().numpy().astype(np.int64)
    assert not np.array_equal(acc32, acc)
    assert not np.array_equal(ref.rq(acc32, s), y_ref)
    q = ref.to_int(y, ip["n_o"])
    np.testing.assert_array_equal(q, y_ref)
    assert ((q > -128) & (q < 127)).all()


# -- (b) random configurations against the int64 reference ---------------------------------------------------

KINDS = ("conv2d", "grouped", "depthwise", "conv1d", "linear")


@st.composite
def layer_configs(draw):
    kind = draw(st.sampled_from(KINDS))
    k = draw(st.integers(1, 3))
    cfg = {
        "kind": kind,
        "k": k,
        "stride": draw(st.sampled_from([s for s in (1, 2) if s <= k])),
        "pad": draw(st.integers(0, min(k, 2))),
        "bias": draw(st.booleans()),
        "size": draw(st.integers(3, 6)),
        "batch": draw(st.integers(1, 2)),
        "n_x": draw(st.integers(0, 7)),
        "shift": draw(st.integers(0, 12)),
        "w_log2": draw(st.integers(-7, 3)),
        "inputs": draw(st.sampled_from(["random", "extreme", "small"])),
        "ties": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }
    if kind == "grouped":
        g = draw(st.sampled_from([2, 3]))
        cfg.update(groups=g, cin=g * draw(st.integers(1, 2)), cout=g * draw(st.integers(1, 2)))
    elif kind == "depthwise":
        c = draw(st.integers(1, 4))
        cfg.update(groups=c, cin=c, cout=c * draw(st.integers(1, 2)))
    else:
        cfg.update(groups=1, cin=draw(st.integers(1, 5)), cout=draw(st.integers(1, 5)))
    return cfg


def _make_layer(cfg) -> tuple[nn.Module, tuple[int, ...]]:
    kind, n, c = cfg["kind"], cfg["batch"], cfg["cin"]
    if kind == "linear":
        return nn.Linear(c, cfg["cout"], bias=cfg["bias"]), (n, c)
    if kind == "conv1d":
        return (nn.Conv1d(c, cfg["cout"], cfg["k"], cfg["stride"], cfg["pad"], bias=cfg["bias"]),
                (n, c, cfg["size"] + 2))
    return (nn.Conv2d(c, cfg["cout"], cfg["k"], cfg["stride"], cfg["pad"], groups=cfg["groups"], bias=cfg["bias"]),
            (n, c, cfg["size"], cfg["size"] + 1))


def _input_ints(rng: np.random.Generator, shape, mode: str) -> np.ndarray:
    if mode == "extreme":
        return rng.choice(np.array([-128, 127, -127, 126]), size=shape).astype(np.int64)
    if mode == "small":
        return rng.integers(-3, 4, size=shape).astype(np.int64)
    return rng.integers(-128, 128, size=shape).astype(np.int64)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=layer_configs())
def test_conv_linear_match_int64_reference(host, ref, cfg):
    torch.manual_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    layer, shape = _make_layer(cfg)
    with torch.no_grad():
        top = 2.0 ** cfg["w_log2"] * (0.5 + 0.5 * rng.random())  # max|w|: anywhere in a binade
        layer.weight.mul_(top / layer.weight.abs().max().clamp_min(1e-12))
    m = lnn.init(One(layer), host=host)
    m.eval()
    n_x = cfg["n_x"]
    n_w = ref.floor_rule(layer.weight.detach().numpy())
    n_o = max(0, min(23, n_x + n_w - cfg["shift"]))
    ref.set_exponent(m.q_input_x.out_q, n_x)
    ref.set_exponent(m.layer.out_q, n_o)
    q_in = _input_ints(rng, shape, cfg["inputs"])
    w_i = ref.round_half_up_int(layer.weight.detach().double().numpy() * 2.0**n_w)
    if cfg["bias"]:
        with torch.no_grad():
            if cfg["ties"] and n_x + n_w - n_o > 0:
                # choose integer biases that put every output channel of the first pixel on a tie (+-0.5, +-1.5...)
                s = n_x + n_w - n_o
                q_layer = m.layer
                acc0 = (ref.linear_ref(q_in, w_i) if cfg["kind"] == "linear" else
                        ref.conv_ref(q_in, w_i, None, q_layer.stride, q_layer.padding, q_layer.dilation,
                                     q_layer.groups))
                first = acc0.reshape(acc0.shape[0], acc0.shape[1], -1)[0, :, 0]
                odd = rng.integers(-4, 4, size=first.shape) * 2 + 1
                b_int = odd * (1 << (s - 1)) - first
                b_int = np.clip(b_int, -(2**23), 2**23)
                m.layer.bias.copy_(torch.from_numpy(b_int.astype(np.float64) / 2.0 ** (n_x + n_w)).float())
            else:
                m.layer.bias.copy_(torch.randn(cfg["cout"]) * 2.0 ** rng.integers(-6, 4))
    x = torch.from_numpy(q_in.astype(np.float32) / np.float32(2.0**n_x))
    y = m(x)
    acc, y_ref, ip = _reference(ref, m.layer, q_in)
    assert (ip["n_x"], ip["n_w"], ip["n_o"]) == (n_x, n_w, n_o)
    np.testing.assert_array_equal(ip["weight"].numpy(), w_i)
    if cfg["bias"]:
        b_ref = ref.sat(ref.round_half_up_int(m.layer.bias.detach().double().numpy() * 2.0 ** (n_x + n_w)), 32)
        np.testing.assert_array_equal(ip["bias"].numpy(), b_ref)
    else:
        assert ip["bias"] is None
    assert y.dtype == torch.float32
    np.testing.assert_array_equal(ref.to_int(y, n_o), y_ref)


def test_linear_ties_and_saturation(host, ref):
    """Engineered: ``acc / 2**s`` lands exactly on +-k.5 (ties go toward +inf, also for negatives) and beyond
    the int8 range (saturation)."""
    fc = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 0.5]]))  # n_w = 6: w_q = [64, 32]
    m = lnn.init(One(fc), host=host)
    m.eval()
    ref.set_exponent(m.q_input_x.out_q, 4)
    ref.set_exponent(m.layer.out_q, 4)  # shift 6: y = R(x1 + x2 / 2)
    q_in = np.array([[-3, -1], [3, 1], [-3, 1], [0, -1], [0, 1], [-1, -1], [127, 127], [-128, -128],
                     [100, 55], [100, 53], [-100, -57], [-100, -55]], dtype=np.int64)
    y = m(torch.from_numpy(q_in.astype(np.float32) / 16.0))
    expected = np.array([[-3], [4], [-2], [0], [1], [-1], [127], [-128], [127], [127], [-128], [-127]])
    np.testing.assert_array_equal(ref.to_int(y, 4), expected)
    np.testing.assert_array_equal(ref.rq(q_in @ np.array([[64], [32]]), 6), expected)


def test_conv_negative_ties_round_up(host, ref):
    """A 1x1 conv with weight 0.5 at shift 1: every odd input is a tie; -1 -> 0, -3 -> -1, 3 -> 2."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(0.5)  # n_w = 7, w_q = 64
    m = lnn.init(One(conv), host=host)
    m.eval()
    ref.set_exponent(m.q_input_x.out_q, 0)
    ref.set_exponent(m.layer.out_q, 0)  # shift 7: y = R(64 x / 128) = R(x / 2)
    q_in = np.arange(-128, 128, dtype=np.int64).reshape(1, 1, 16, 16)
    y = m(torch.from_numpy(q_in.astype(np.float32)))
    expected = np.floor(q_in / 2 + 0.5).astype(np.int64)
    np.testing.assert_array_equal(ref.to_int(y, 0), expected)
    assert ref.to_int(y, 0)[0, 0, 7, 15] == 0  # x = -1: -0.5 -> 0


# -- (c) every eval output lies on its grid ------------------------------------------------------------------

class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.bn2 = nn.BatchNorm2d(24)
        self.fc = nn.Linear(96, 5)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.max_pool2d(y, 2)
        a = self.conv2(y)
        b = self.conv3(y)
        s = F.relu6(a + b)
        p = a * b
        d = s - b
        z = self.bn2(torch.cat([s, p, d], dim=1))
        z = torch.clamp(F.avg_pool2d(z, 2), -1.0, 2.5)
        return self.fc(z.flatten(1)) * 0.75


@pytest.fixture(scope="module")
def mixed(host):
    model = lnn.init(Mixed(), host=host)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(3)
    model.train()
    for _ in range(4):
        loss = model(torch.randn(4, 3, 8, 8, generator=gen)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


class _Recorder(fx.Interpreter):
    """Runs the prepared model node by node and checks every quantized value against its exponent."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.exp: dict[fx.Node, int] = {}
        self.checked = 0

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.op == "call_module":
            mod = self.module.get_submodule(n.target)
            q = getattr(mod, "out_q", None)
            if isinstance(q, ActQuantizer):
                self.exp[n] = q.current()
            elif isinstance(mod, QModule):
                self.exp[n] = mod.in_exponent(0)
        elif n.op in ("call_function", "call_method"):
            src = next((a for a in n.all_input_nodes if a in self.exp), None)
            if src is not None and isinstance(out, torch.Tensor) and out.is_floating_point():
                self.exp[n] = self.exp[src]
        if n in self.exp:
            v = out.detach().double() * 2.0 ** self.exp[n]
            assert torch.equal(v, torch.round(v)), f"{n.name}: not on the 2**-{self.exp[n]} grid"
            assert v.min() >= -128 and v.max() <= 127, f"{n.name}: outside int8"
            self.checked += 1
        return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scale=st.sampled_from([0.05, 1.0, 4.0, 100.0]), seed=st.integers(0, 2**16), batch=st.integers(1, 3))
def test_every_eval_output_on_grid(mixed, scale, seed, batch):
    x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * scale
    rec = _Recorder(mixed)
    with torch.no_grad():
        y = rec.run(x)
    assert torch.equal(y, mixed(x))
    assert rec.checked >= 15
